"""Image preprocessing and the image + text processor of BridgeTower.

:class:`ImageProcessor` reproduces Hugging Face's ``BridgeTowerImageProcessor`` with Pillow and
NumPy, step for step (the PIL backend ``BridgeTowerImageProcessorPil`` bit for bit; the
torchvision backend, which resamples with its own bicubic kernel, to within a few uint8 levels):

1. convert to RGB (transparency composited onto white);
2. resize (Pillow bicubic) so the shorter side is ``size`` and the longer side at most
   ``int(1333 / 800 * size)``, each side rounded (``int(x + 0.5)``) then floored to a
   multiple of ``size_divisor``;
3. centre-crop to ``crop_size`` x ``crop_size`` (default ``size``); an image smaller than the
   crop is zero-padded around its centre first (in uint8, so those pixels become
   ``-mean/std`` after normalisation), as HF does;
4. rescale by 1/255 (in float64, then float32) and normalise with the CLIP mean and std;
5. pad every image of the batch at the bottom/right with zeros to the largest height and
   width, and return ``pixel_mask`` (1 = real pixel).

Centre-crop: older ``transformers`` releases skipped step 3 when the image processor was
called on its own and applied it only through ``BridgeTowerProcessor``.  We match the
processor (and current ``transformers``, where both crop): ``do_center_crop=True`` by
default; pass ``do_center_crop=False`` for the crop-less behaviour, in which images keep
their resized, aspect-preserving sizes and step 5 pads them.

:class:`BridgeTowerProcessor` pairs it with any ``transformers`` tokenizer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from math import ceil
from typing import Any

import numpy as np
import torch

from .image_ops import CLIP_MEAN, CLIP_STD, pad_images

__all__ = ["CLIP_MEAN", "CLIP_STD", "BridgeTowerProcessor", "ImageProcessor", "resize_output_size"]

_RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_PIL_IDS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_PREPROCESSOR_CONFIG = "preprocessor_config.json"


def resize_output_size(height: int, width: int, size: int = 288, size_divisor: int = 32) -> tuple[int, int]:
    """``(new_height, new_width)`` of the BridgeTower resize (step 2 of the module docstring)."""
    shorter, longer = size, int(1333 / 800 * size)
    scale = shorter / min(height, width)
    if height < width:
        new_h, new_w = float(shorter), scale * width
    else:
        new_h, new_w = scale * height, float(shorter)
    if max(new_h, new_w) > longer:
        scale = longer / max(new_h, new_w)
        new_h, new_w = scale * new_h, scale * new_w
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    return new_h // size_divisor * size_divisor, new_w // size_divisor * size_divisor


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """Centre crop of a (C, H, W) array, zero-padding around the centre when it is too small."""
    _, h, w = image.shape
    if h >= crop_h and w >= crop_w:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
        return image[:, top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(h, crop_h), max(w, crop_w)
    canvas = np.zeros((image.shape[0], new_h, new_w), dtype=image.dtype)
    top_pad, left_pad = ceil((new_h - h) / 2), ceil((new_w - w) / 2)
    canvas[:, top_pad : top_pad + h, left_pad : left_pad + w] = image
    top, left = (h - crop_h) // 2 + top_pad, (w - crop_w) // 2 + left_pad
    return canvas[:, max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


class ImageProcessor:
    """BridgeTower image preprocessing (see the module docstring for the exact steps).

    ``__call__(images)`` takes a PIL image, an ``(H, W, 3)`` / ``(H, W)`` uint8 NumPy array, a
    ``(3, H, W)`` uint8 torch tensor, or a list of them, and returns ``{"pixel_values": (B, 3,
    H, W) float32, "pixel_mask": (B, H, W) int64}`` (torch tensors with ``return_tensors="pt"``,
    NumPy arrays with ``"np"``).  Per-call keyword overrides: ``do_center_crop``, ``do_pad``.
    """

    def __init__(
        self,
        size: int = 288,
        *,
        size_divisor: int = 32,
        crop_size: int | None = None,
        do_resize: bool = True,
        resample: str = "bicubic",
        do_center_crop: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        do_pad: bool = True,
        do_convert_rgb: bool = True,
    ) -> None:
        for name, v in (("size", size), ("size_divisor", size_divisor)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ImageProcessor: {name} must be a positive int, got {v!r}")
        if crop_size is not None and (not isinstance(crop_size, int) or crop_size <= 0):
            raise ValueError(f"ImageProcessor: crop_size must be a positive int or None, got {crop_size!r}")
        if resample not in _RESAMPLE_NAMES:
            raise ValueError(f"ImageProcessor: resample must be one of {_RESAMPLE_NAMES}, got {resample!r}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"ImageProcessor: image_mean and image_std need 3 values, got {image_mean!r}, {image_std!r}")
        if any(s == 0 for s in image_std):
            raise ValueError(f"ImageProcessor: image_std must be non-zero, got {image_std!r}")
        self.size = size
        self.size_divisor = size_divisor
        self.crop_size = size if crop_size is None else crop_size
        self.do_resize = do_resize
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.do_pad = do_pad
        self.do_convert_rgb = do_convert_rgb

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, size_divisor={self.size_divisor}, crop_size={self.crop_size}, "
            f"do_center_crop={self.do_center_crop}, resample={self.resample!r}, do_pad={self.do_pad})"
        )

    # -------------------------------------------------------------- single image

    def _to_pil(self, image: Any, index: int):
        from PIL import Image

        if isinstance(image, Image.Image):
            pil = image
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
            if arr.dtype != np.uint8:
                raise TypeError(f"ImageProcessor: image {index} must be uint8 (0..255), got dtype {arr.dtype}")
            if isinstance(image, torch.Tensor) and arr.ndim == 3:
                arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
            if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
                kind = "(3, H, W) tensor" if isinstance(image, torch.Tensor) else "(H, W, 3) or (H, W) array"
                raise ValueError(f"ImageProcessor: image {index} must be a {kind}, got shape {tuple(image.shape)}")
            pil = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        else:
            raise TypeError(
                f"ImageProcessor: image {index} must be a PIL.Image, a uint8 numpy array or a uint8 torch "
                f"tensor, got {type(image).__name__}"
            )
        if pil.width < 1 or pil.height < 1:
            raise ValueError(f"ImageProcessor: image {index} is empty ({pil.width}x{pil.height})")
        if self.do_convert_rgb and pil.mode != "RGB":
            if "A" in pil.getbands() or pil.info.get("transparency") is not None:
                rgba = pil.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                pil = Image.alpha_composite(white, rgba).convert("RGB")
            else:
                pil = pil.convert("RGB")
        if pil.mode != "RGB":
            raise ValueError(f"ImageProcessor: image {index} has mode {pil.mode!r}; pass do_convert_rgb=True or RGB images")
        return pil

    def preprocess_image(self, image: Any, *, do_center_crop: bool | None = None, index: int = 0) -> np.ndarray:
        """One image -> ``(3, H, W)`` float32 array (steps 1-4)."""
        from PIL import Image

        pil = self._to_pil(image, index)
        if self.do_resize:
            h, w = resize_output_size(pil.height, pil.width, self.size, self.size_divisor)
            if h == 0 or w == 0:
                raise ValueError(
                    f"ImageProcessor: image {index} of {pil.width}x{pil.height} (WxH) is too elongated: the resize "
                    f"to shorter side {self.size}, longer side <= {int(1333 / 800 * self.size)}, multiple of "
                    f"{self.size_divisor}, gives {w}x{h}"
                )
            pil = pil.resize((w, h), resample=Image.Resampling(_PIL_IDS[self.resample]))
        arr = np.moveaxis(np.asarray(pil), -1, 0)  # (3, H, W) uint8
        if self.do_center_crop if do_center_crop is None else do_center_crop:
            arr = _center_crop(arr, self.crop_size, self.crop_size)
        out = arr.astype(np.float64) * self.rescale_factor if self.do_rescale else arr.astype(np.float64)
        out = out.astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            out = (out - mean) / std
        return np.ascontiguousarray(out, dtype=np.float32)

    # -------------------------------------------------------------- batch

    def pad(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Zero-pad (3, H_i, W_i) arrays at the bottom/right to the batch maximum; returns
        ``(pixel_values (B, 3, H, W), pixel_mask (B, H, W) int64)``."""
        values, mask = pad_images(images, dtype=torch.float32)
        return values.numpy(), mask.numpy()

    def __call__(
        self,
        images: Any,
        *,
        return_tensors: str | None = "pt",
        do_center_crop: bool | None = None,
        do_pad: bool | None = None,
    ) -> dict[str, Any]:
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"ImageProcessor: return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("ImageProcessor: got an empty list of images")
        arrays = [self.preprocess_image(im, do_center_crop=do_center_crop, index=i) for i, im in enumerate(batch)]
        if not (self.do_pad if do_pad is None else do_pad):
            if len({a.shape for a in arrays}) > 1 and return_tensors is not None:
                raise ValueError(
                    "ImageProcessor: images have different sizes "
                    f"{sorted({a.shape[1:] for a in arrays})}; use do_pad=True or return_tensors=None"
                )
            if return_tensors is None:
                return {"pixel_values": arrays}
            values = np.stack(arrays)
            return {"pixel_values": torch.from_numpy(values) if return_tensors == "pt" else values}
        values, mask = self.pad(arrays)
        if return_tensors == "pt":
            return {"pixel_values": torch.from_numpy(values), "pixel_mask": torch.from_numpy(mask)}
        if return_tensors is None:
            return {"pixel_values": list(values), "pixel_mask": list(mask)}
        return {"pixel_values": values, "pixel_mask": mask}

    # -------------------------------------------------------------- HF-format config

    def to_dict(self) -> dict[str, Any]:
        """The options in HF ``preprocessor_config.json`` form (loadable by ``transformers``)."""
        return {
            "image_processor_type": "BridgeTowerImageProcessor",
            "size": {"shortest_edge": self.size},
            "size_divisor": self.size_divisor,
            "crop_size": {"shortest_edge": self.crop_size},
            "do_resize": self.do_resize,
            "resample": _PIL_IDS[self.resample],
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_pad": self.do_pad,
            "do_convert_rgb": self.do_convert_rgb,
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageProcessor:
        """Build from an HF ``preprocessor_config.json`` dict; unknown option keys raise."""
        cfg = dict(config)
        for key in ("image_processor_type", "processor_class", "feature_extractor_type", "image_processor_backend"):
            cfg.pop(key, None)
        kwargs: dict[str, Any] = {}
        for key in ("size", "crop_size"):
            if key in cfg:
                v = cfg.pop(key)
                if isinstance(v, dict):
                    if set(v) != {"shortest_edge"}:
                        raise ValueError(f"ImageProcessor.from_dict: {key} must be {{'shortest_edge': int}}, got {v!r}")
                    v = v["shortest_edge"]
                kwargs[key] = v
        if "resample" in cfg:
            r = cfg.pop("resample")
            names = {i: n for n, i in _PIL_IDS.items()}
            kwargs["resample"] = names.get(r, r)
        known = {
            "size_divisor", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "do_pad", "do_convert_rgb",
        }
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"ImageProcessor.from_dict: unknown options {unknown}; known: {sorted(known)}")
        for key in known & set(cfg):
            if cfg[key] is not None:
                kwargs[key] = cfg[key]
        return cls(**kwargs)


_PROCESSOR_CONFIG_V5 = "processor_config.json"
# a Hub repository id: "name" or "namespace/name" (letters, digits, "-", "_", ".")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _local_file(directory: str, fname: str) -> str | None:
    path = os.path.join(directory, fname)
    return path if os.path.isfile(path) else None


def _hub_error(name: str, what: str, err: BaseException) -> OSError:
    from huggingface_hub import constants

    offline = ""
    if constants.HF_HUB_OFFLINE:
        offline = " (HF_HUB_OFFLINE is set and it is not in the local Hub cache)"
    return OSError(
        f"BridgeTowerProcessor.from_pretrained: cannot load {what} of {name!r} from the Hugging "
        f"Face Hub{offline}: {type(err).__name__}: {err}. Pass a local checkpoint directory, or "
        "fetch it first with network access."
    )


def _hub_file(
    name: str, fname: str, hub_kw: dict[str, Any], local_misses: list[BaseException]
) -> str | None:
    """Path of ``fname`` of Hub repository ``name`` (downloaded or cached).

    None when the repository has no such file, or (appended to ``local_misses``) when it is
    not in the local cache and cannot be fetched (offline) -- old repositories have only one
    of the two config files, so one miss alone is no error.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(name, fname, **hub_kw)
    except LocalEntryNotFoundError as err:
        local_misses.append(err)
        return None
    except EntryNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, network: one clear error
        raise _hub_error(name, fname, err) from err


def _read_image_config(locate) -> dict[str, Any] | None:
    """The image-processor dict: nested in ``processor_config.json``, else
    ``preprocessor_config.json``; ``{}`` when neither exists, None when neither could be found."""
    found = False
    path = locate(_PROCESSOR_CONFIG_V5)
    if path is not None:
        found = True
        with open(path, encoding="utf-8") as f:
            nested = json.load(f).get("image_processor")
        if isinstance(nested, dict):
            return nested
    path = locate(_PREPROCESSOR_CONFIG)
    if path is None:
        return {} if found else None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_tokenizer(name: str, hub_kw: dict[str, Any]):
    from transformers import AutoTokenizer

    if os.path.isdir(name):
        return AutoTokenizer.from_pretrained(name)
    try:
        kw = {k: v for k, v in hub_kw.items() if v is not None}
        return AutoTokenizer.from_pretrained(name, **kw)
    except Exception as err:  # noqa: BLE001
        raise _hub_error(name, "the tokenizer", err) from err


class BridgeTowerProcessor:
    """Image processor + ``transformers`` tokenizer.

    ``__call__(images, text, ...)`` returns ``input_ids``, ``attention_mask`` (and whatever else
    the tokenizer returns), ``pixel_values`` and ``pixel_mask``.  ``from_pretrained(name_or_path)``
    loads a Hugging Face format checkpoint (local directory or Hub id): the tokenizer with
    ``AutoTokenizer`` and the image options from its processor config; ``save_pretrained``
    writes the tokenizer and ``preprocessor_config.json``, which ``transformers`` reads.
    """

    def __init__(self, image_processor: ImageProcessor | None = None, tokenizer: Any = None) -> None:
        self.image_processor = ImageProcessor() if image_processor is None else image_processor
        if not isinstance(self.image_processor, ImageProcessor):
            raise TypeError(
                f"BridgeTowerProcessor: image_processor must be an ImageProcessor, got {type(image_processor).__name__}"
            )
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **image_kwargs: Any,
    ) -> BridgeTowerProcessor:
        """Load the tokenizer and the image options of a checkpoint, as ``transformers`` does.

        ``name_or_path``: a local directory, or a Hugging Face Hub id (``"org/name"``; needs
        the network or the local Hub cache, see ``HF_HUB_OFFLINE``).  The image options come
        from the ``image_processor`` entry of ``processor_config.json`` (what ``transformers``
        5 writes) or else ``preprocessor_config.json`` (older checkpoints, and ours); without
        either the defaults are used.  ``revision``, ``cache_dir`` and ``local_files_only`` are
        passed on to the Hub download.  ``image_kwargs`` override the stored image options.

        Raises ``ValueError`` for a local path that does not exist or a malformed name, and
        ``OSError`` naming the id when a Hub checkpoint cannot be fetched (offline, unknown).
        """
        if not isinstance(name_or_path, (str, os.PathLike)):
            raise TypeError(
                "BridgeTowerProcessor.from_pretrained: expected a directory or a Hub id, got "
                f"{type(name_or_path).__name__}"
            )
        name = os.fspath(name_or_path)
        if os.path.isdir(name):
            cfg = _read_image_config(lambda fname: _local_file(name, fname)) or {}
            tokenizer = _load_tokenizer(name, {})
        else:
            if not _HUB_ID.match(name) or os.path.exists(name):
                raise ValueError(
                    f"BridgeTowerProcessor.from_pretrained: {name!r} is neither a local directory "
                    "nor a Hugging Face Hub id ('org/name')"
                )
            hub_kw: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
            if cache_dir is not None:
                hub_kw["cache_dir"] = os.fspath(cache_dir)
            misses: list[BaseException] = []
            cfg = _read_image_config(lambda fname: _hub_file(name, fname, hub_kw, misses))
            if cfg is None and misses:  # neither config reachable: offline and not cached
                what = f"{_PROCESSOR_CONFIG_V5} / {_PREPROCESSOR_CONFIG}"
                raise _hub_error(name, what, misses[-1]) from misses[-1]
            tokenizer = _load_tokenizer(name, hub_kw)
            cfg = cfg or {}
        image_processor = ImageProcessor.from_dict(cfg)
        if image_kwargs:
            merged = image_processor.to_dict()
            merged.update({k: ({"shortest_edge": v} if k in ("size", "crop_size") else v) for k, v in image_kwargs.items()})
            image_processor = ImageProcessor.from_dict(merged)
        return cls(image_processor, tokenizer)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the tokenizer and ``preprocessor_config.json`` into ``path``.

        A ``processor_config.json`` already there (``transformers`` 5 format) gets the same image
        options in its ``image_processor`` entry, since loaders read that entry first.
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        options = self.image_processor.to_dict()
        with open(os.path.join(path, _PREPROCESSOR_CONFIG), "w", encoding="utf-8") as f:
            json.dump(options, f, indent=2)
        v5 = os.path.join(path, _PROCESSOR_CONFIG_V5)
        if os.path.isfile(v5):
            with open(v5, encoding="utf-8") as f:
                nested = json.load(f)
            if isinstance(nested.get("image_processor"), dict):
                nested["image_processor"] = options
                with open(v5, "w", encoding="utf-8") as f:
                    json.dump(nested, f, indent=2)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        *,
        return_tensors: str | None = "pt",
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        do_center_crop: bool | None = None,
        **tokenizer_kwargs: Any,
    ) -> dict[str, Any]:
        if images is None and text is None:
            raise ValueError("BridgeTowerProcessor: pass images, text, or both")
        out: dict[str, Any] = {}
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("BridgeTowerProcessor: no tokenizer set, cannot process text")
            if not isinstance(text, str) and not (
                isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text)
            ):
                raise TypeError("BridgeTowerProcessor: text must be a str or a non-empty list of str")
            out.update(
                self.tokenizer(
                    text,
                    return_tensors=return_tensors,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length,
                    add_special_tokens=add_special_tokens,
                    **tokenizer_kwargs,
                )
            )
        if images is not None:
            if text is not None:
                n_img = len(images) if isinstance(images, (list, tuple)) else 1
                n_txt = 1 if isinstance(text, str) else len(text)
                if n_img != n_txt:
                    raise ValueError(
                        f"BridgeTowerProcessor: got {n_img} image(s) and {n_txt} text(s); pass one text per image"
                    )
            out.update(self.image_processor(images, return_tensors=return_tensors, do_center_crop=do_center_crop))
        return out

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """``tokenizer.decode``."""
        if self.tokenizer is None:
            raise ValueError("BridgeTowerProcessor: no tokenizer set")
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """``tokenizer.batch_decode``."""
        if self.tokenizer is None:
            raise ValueError("BridgeTowerProcessor: no tokenizer set")
        return self.tokenizer.batch_decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        names = list(getattr(self.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        return names + ["pixel_values", "pixel_mask"]
