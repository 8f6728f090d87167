"""The image preprocessing of BridgeTower: :class:`ImageProcessor`.

It reproduces Hugging Face's ``BridgeTowerImageProcessor`` with Pillow and NumPy, step for
step (the PIL backend ``BridgeTowerImageProcessorPil`` bit for bit; the torchvision backend,
which resamples with its own bicubic kernel, to within a few uint8 levels):

1. convert to RGB (transparency composited onto white; 16-bit grayscale scaled to 8 bits);
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

Every option can be given per call (``processor(images, size={"shortest_edge": 180},
do_center_crop=False)``), as an int or in ``transformers``' dict form; unknown options raise
``TypeError`` naming them.  Pixel formats: 8-bit PIL modes, 16-bit grayscale (``I;16``, scaled
to 8 bits), uint8 arrays and tensors; 32-bit integer and float images (PIL ``I``, ``F``; float
arrays) have no known value range and are refused, as ``transformers`` refuses them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from math import ceil
from typing import Any

import numpy as np
import torch

from .image_ops import CLIP_MEAN, CLIP_STD, pad_images

__all__ = ["IMAGE_OPTIONS", "PREPROCESSOR_CONFIG", "ImageProcessor", "resize_output_size"]

#: The file holding an image processor's options (``transformers``' name).
PREPROCESSOR_CONFIG = "preprocessor_config.json"

_RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
_PIL_IDS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

#: The options of :class:`ImageProcessor` (constructor and per-call), ``transformers``' names.
IMAGE_OPTIONS: tuple[str, ...] = (
    "size", "size_divisor", "crop_size", "do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_pad", "do_convert_rgb",
)


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


def _longest_edge(name: str, shortest: Any) -> Any:
    """The ``longest_edge`` that ``size`` / ``crop_size`` imply: the resize caps the longer side at
    ``int(1333 / 800 * size)``; the crop is square."""
    if name == "size" and isinstance(shortest, int):
        return int(1333 / 800 * shortest)
    return shortest


def _edge(name: str, value: Any) -> Any:
    """``size`` / ``crop_size`` as an int: an int, ``{"shortest_edge": n}`` (with a
    ``longest_edge`` only when it is the one the resize or crop implies: ``transformers`` reads
    ``shortest_edge`` alone) or a square ``{"height": n, "width": n}`` (``transformers``' forms)."""
    if isinstance(value, Mapping):
        keys = set(value)
        if keys == {"shortest_edge"} or (
            keys == {"shortest_edge", "longest_edge"}
            and value["longest_edge"] == _longest_edge(name, value["shortest_edge"])
        ):
            return value["shortest_edge"]
        if keys == {"height", "width"} and value["height"] == value["width"]:
            return value["height"]
        implied = "int(1333 / 800 * n)" if name == "size" else "n (the crop is square)"
        raise ValueError(
            f"ImageProcessor: {name} must be an int, {{'shortest_edge': n}} (a 'longest_edge' may be given only as "
            f"{implied}) or a square {{'height': n, 'width': n}}, got {dict(value)!r}"
        )
    return value


def _eight_bit(pil: Any, index: int) -> Any:
    """16-bit grayscale scaled to 8 bits; images of unknown value range refused."""
    from PIL import Image

    if pil.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(pil).astype(np.uint32)  # 0..65535
        return Image.fromarray(((arr + 128) // 257).astype(np.uint8), mode="L")
    if pil.mode in ("I", "F"):
        kind = "32-bit integer" if pil.mode == "I" else "32-bit float"
        raise ValueError(
            f"ImageProcessor: image {index} has PIL mode {pil.mode!r} ({kind} pixels), whose value range is not "
            "known; convert it to 8 bits first (e.g. scale to 0..255 and .convert('L') or 'RGB'), or pass a uint8 array"
        )
    return pil


@dataclasses.dataclass(frozen=True)
class _Options:
    """The validated options of one :class:`ImageProcessor` (see its docstring)."""

    size: int = 288
    size_divisor: int = 32
    crop_size: int | None = None
    do_resize: bool = True
    resample: str = "bicubic"
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    do_pad: bool = True
    do_convert_rgb: bool = True

    def __post_init__(self) -> None:
        def put(name, value):
            object.__setattr__(self, name, value)

        put("size", _edge("size", self.size))
        put("crop_size", _edge("crop_size", self.crop_size))
        for name in ("size", "size_divisor"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"ImageProcessor: {name} must be a positive int, got {v!r}")
        if self.crop_size is None:
            put("crop_size", self.size)
        if not isinstance(self.crop_size, int) or isinstance(self.crop_size, bool) or self.crop_size <= 0:
            raise ValueError(f"ImageProcessor: crop_size must be a positive int or None, got {self.crop_size!r}")
        if isinstance(self.resample, int) and not isinstance(self.resample, bool):
            put("resample", {i: n for n, i in _PIL_IDS.items()}.get(self.resample, self.resample))
        if self.resample not in _RESAMPLE_NAMES:
            raise ValueError(f"ImageProcessor: resample must be one of {_RESAMPLE_NAMES}, got {self.resample!r}")
        for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_pad", "do_convert_rgb"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"ImageProcessor: {name} must be True or False, got {getattr(self, name)!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError(
                f"ImageProcessor: image_mean and image_std need 3 values, got {self.image_mean!r}, {self.image_std!r}"
            )
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"ImageProcessor: image_std must be non-zero, got {self.image_std!r}")
        put("image_mean", tuple(float(m) for m in self.image_mean))
        put("image_std", tuple(float(s) for s in self.image_std))
        put("rescale_factor", float(self.rescale_factor))


def _check_option_names(names, where: str) -> None:
    unknown = sorted(k for k in names if k not in IMAGE_OPTIONS)
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {unknown}; valid: {', '.join(IMAGE_OPTIONS)}")


class ImageProcessor:
    """BridgeTower image preprocessing (see the module docstring for the exact steps).

    ``__call__(images, return_tensors="pt", **options)`` takes a PIL image, an ``(H, W, 3)`` /
    ``(H, W)`` uint8 NumPy array, a ``(3, H, W)`` uint8 torch tensor, or a list of them, and
    returns a ``transformers.BatchFeature`` with ``pixel_values`` (B, 3, H, W) float32 and
    ``pixel_mask`` (B, H, W) int64 (torch tensors with ``return_tensors="pt"``, NumPy arrays
    with ``"np"``, lists with ``None``).  ``options``: any of :data:`IMAGE_OPTIONS`, for this
    call only.  ``size`` and ``crop_size`` are the shortest edge (an int or
    ``{"shortest_edge": n}``); ``crop_size`` defaults to ``size`` when the processor is
    built, and stays what it is when ``size`` changes per call, as in ``transformers``.
    """

    def __init__(self, size: int | Mapping[str, int] = 288, **options: Any) -> None:
        _check_option_names(options, "ImageProcessor")
        self._options = _Options(size=size, **options)

    def __getattr__(self, name: str) -> Any:  # the options read as attributes: proc.size
        options = self.__dict__.get("_options")
        if options is not None and name in IMAGE_OPTIONS:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def replace(self, **options: Any) -> ImageProcessor:
        """A copy with ``options`` changed (names of :data:`IMAGE_OPTIONS`)."""
        _check_option_names(options, "ImageProcessor")
        new = object.__new__(type(self))
        new._options = _Options(**{**dataclasses.asdict(self._options), **options})
        return new

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
                raise TypeError(
                    f"ImageProcessor: image {index} must be uint8 (0..255), got dtype {arr.dtype}; scale other "
                    "ranges to 0..255 and convert to uint8 first"
                )
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
        pil = _eight_bit(pil, index)
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

    def __call__(self, images: Any, *, return_tensors: str | None = "pt", **options: Any):
        from transformers import BatchFeature

        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"ImageProcessor: return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        proc = self.replace(**options) if options else self
        batch = list(images) if isinstance(images, (list, tuple)) else [images]
        if not batch:
            raise ValueError("ImageProcessor: got an empty list of images")
        arrays = [proc.preprocess_image(im, index=i) for i, im in enumerate(batch)]
        if not proc.do_pad:
            if len({a.shape for a in arrays}) > 1 and return_tensors is not None:
                raise ValueError(
                    "ImageProcessor: images have different sizes "
                    f"{sorted({a.shape[1:] for a in arrays})}; use do_pad=True or return_tensors=None"
                )
            if return_tensors is None:
                return BatchFeature({"pixel_values": arrays})
            values = np.stack(arrays)
            return BatchFeature({"pixel_values": torch.from_numpy(values) if return_tensors == "pt" else values})
        values, mask = proc.pad(arrays)
        if return_tensors == "pt":
            return BatchFeature({"pixel_values": torch.from_numpy(values), "pixel_mask": torch.from_numpy(mask)})
        if return_tensors is None:
            return BatchFeature({"pixel_values": list(values), "pixel_mask": list(mask)})
        return BatchFeature({"pixel_values": values, "pixel_mask": mask})

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

    def to_json_string(self) -> str:
        """:meth:`to_dict` as JSON (``preprocessor_config.json``'s text)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **options: Any) -> ImageProcessor:
        """Build from an HF ``preprocessor_config.json`` dict, ``options`` (of
        :data:`IMAGE_OPTIONS`) overriding it, as ``transformers``' ``from_dict(d, **kwargs)``;
        unknown option keys raise."""
        cfg = {k: v for k, v in config.items() if v is not None}
        for key in ("image_processor_type", "processor_class", "feature_extractor_type", "image_processor_backend"):
            cfg.pop(key, None)
        unknown = sorted(set(cfg) - set(IMAGE_OPTIONS))
        if unknown:
            raise ValueError(f"ImageProcessor.from_dict: unknown options {unknown}; known: {sorted(IMAGE_OPTIONS)}")
        _check_option_names(options, "ImageProcessor.from_dict")
        return cls(**{**cfg, **options})

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``preprocessor_config.json`` (:meth:`to_dict`, which ``transformers`` reads) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, PREPROCESSOR_CONFIG), "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> ImageProcessor:
        """The image options of a checkpoint directory or Hub repository: its
        ``processor_config.json`` / ``preprocessor_config.json``, else the image size of its model
        ``config.json``.  ``kwargs``: the Hub keywords of
        :meth:`~bridgetower.models.BridgeTowerProcessor.from_pretrained` and image options
        (:data:`IMAGE_OPTIONS`) overriding the stored ones."""
        from .processor import load_image_processor

        return load_image_processor(name_or_path, **kwargs)
