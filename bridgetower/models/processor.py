"""The image + text processor of BridgeTower, as ``transformers``' ``BridgeTowerProcessor``.

:class:`BridgeTowerProcessor` pairs the :class:`~bridgetower.models.ImageProcessor` (see
:mod:`bridgetower.models.image_processor` for the image steps) with any ``transformers``
tokenizer.  A call routes each keyword to the component that owns it: image options
(``size``, ``crop_size``, ``do_center_crop``, ``do_resize`` ... also as
``images_kwargs={...}``) to the image processor, tokenizer options (``padding``,
``truncation``, ``max_length`` ... also as ``text_kwargs={...}``) to the tokenizer,
``return_tensors`` (also in ``common_kwargs={...}``) to both; an unknown keyword raises
``TypeError`` naming it.  It returns a ``transformers.BatchFeature`` (``.to(device)``,
``.to(dtype)``).

Two differences from ``transformers``, both on the safe side: texts are truncated to what the
model's position table holds by default (``truncation=False`` turns it off), and a text whose
words are mostly unknown to the tokenizer gets a warning (:func:`check_unknown_tokens`).

``from_pretrained`` reads a checkpoint directory or Hub repository written by either library:
the tokenizer (a directory without tokenizer files is refused, never a tokenizer invented),
the image options from ``processor_config.json`` / ``preprocessor_config.json``, or else the
image size of the model's own ``config.json``, and the text length limit from that config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .convert.sources import HubOptions, hub_error, hub_locator, local_locator, looks_local
from .image_ops import CLIP_MEAN, CLIP_STD
from .image_processor import IMAGE_OPTIONS, PREPROCESSOR_CONFIG, ImageProcessor, resize_output_size

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TEXT_OPTIONS",
    "BridgeTowerProcessor",
    "ImageProcessor",
    "check_unknown_tokens",
    "load_image_processor",
    "resize_output_size",
]

#: The tokenizer keywords a processor call accepts (``transformers``' ``TextKwargs``).
TEXT_OPTIONS: tuple[str, ...] = (
    "text_pair", "add_special_tokens", "padding", "truncation", "max_length", "stride", "is_split_into_words",
    "pad_to_multiple_of", "padding_side", "return_token_type_ids", "return_attention_mask",
    "return_overflowing_tokens", "return_special_tokens_mask", "return_offsets_mapping", "return_length", "verbose",
)
_COMMON_OPTIONS = ("return_tensors",)
_PROCESSOR_CONFIG_V5 = "processor_config.json"
# files that mark a saved tokenizer (special_tokens_map.json alone is not one)
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model",
                      "sentencepiece.bpe.model")
# a Hub repository id: "name" or "namespace/name" (letters, digits, "-", "_", ".")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
# RoBERTa-style embeddings number positions from pad_token_id + 1
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "bridgetower_text_model")


def check_unknown_tokens(
    tokenizer: Any, input_ids: Any, texts: Sequence[str] | None = None, *, threshold: float = 0.5
) -> list[int]:
    """Warn (``UserWarning``) about the texts whose tokens are mostly unknown to ``tokenizer``
    (more than ``threshold`` of their non-special tokens are ``unk_token_id``: usually a
    tokenizer that does not belong to the model, or another language); returns their indices.
    ``input_ids``: a tensor, array or list of id lists, one row per text."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    special = set(getattr(tokenizer, "all_special_ids", ())) - {unk}
    rows = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
    if rows and not isinstance(rows[0], (list, tuple)):
        rows = [rows]
    bad = []
    for i, row in enumerate(rows):
        words = [t for t in row if t not in special]
        if words and sum(t == unk for t in words) > threshold * len(words):
            bad.append(i)
    if bad:
        shown = [texts[i] if texts is not None and i < len(texts) else f"#{i}" for i in bad[:5]]
        warnings.warn(
            f"{len(bad)} text(s) are mostly tokens unknown to the tokenizer (e.g. {shown}): is this the model's "
            "tokenizer? Their scores are not meaningful.",
            UserWarning,
            stacklevel=3,
        )
    return bad


def _model_config_facts(meta: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(image size, text length limit)`` of a model ``config.json`` (ours or HF), or Nones."""
    if meta.get("format") == "bridgetower" and isinstance(meta.get("config"), Mapping):
        vision, text = meta["config"].get("vision", {}), meta["config"].get("text", {})
        model_type = text.get("model_type", "roberta")
    elif meta.get("model_type") == "bridgetower":
        vision, text = meta.get("vision_config") or {}, meta.get("text_config") or {}
        model_type = "roberta"
    else:
        return None, None
    size = vision.get("image_size")
    positions = text.get("max_position_embeddings")
    if positions is not None and model_type in _OFFSET_POSITIONS:
        positions -= text.get("pad_token_id", 1) + 1
    return size, positions


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_image_config(locate) -> dict[str, Any] | None:
    """The image-processor dict: nested in ``processor_config.json``, else
    ``preprocessor_config.json``; None when neither holds one."""
    nested = _read_json(locate(_PROCESSOR_CONFIG_V5))
    if isinstance(nested, dict) and isinstance(nested.get("image_processor"), dict):
        return nested["image_processor"]
    return _read_json(locate(PREPROCESSOR_CONFIG))


def _open_checkpoint(name_or_path: Any, hub: HubOptions, who: str):
    """``(name, locate, misses)`` of a local directory or a Hub repository id."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{who}.from_pretrained: expected a directory or a Hub id, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    misses: list[BaseException] = []
    if os.path.isdir(name):
        return name, local_locator(Path(name)), misses
    if looks_local(name) or not _HUB_ID.match(name):
        raise ValueError(f"{who}.from_pretrained: {name!r} is neither a local directory nor a Hugging Face Hub id ('org/name')")
    return name, hub_locator(name, hub, misses), misses


def _image_processor_of(name: str, locate, misses: list[BaseException], image_options: Mapping[str, Any]):
    """``(ImageProcessor, text length limit)`` of a checkpoint: the image options of
    ``processor_config.json`` / ``preprocessor_config.json``, else the image size of the model's
    ``config.json``; ``image_options`` override them."""
    image_config = _read_image_config(locate)
    meta = _read_json(locate("config.json")) or {}
    if image_config is None and not meta and misses:  # nothing reachable: offline and not cached
        what = f"{_PROCESSOR_CONFIG_V5} / {PREPROCESSOR_CONFIG}"
        raise hub_error(name, what, misses[-1]) from misses[-1]
    size, max_text_length = _model_config_facts(meta)
    if image_config is None:
        image_config = {"size": size} if size is not None else {}
    image_processor = ImageProcessor.from_dict(image_config, **image_options)
    return image_processor, max_text_length


def load_image_processor(name_or_path: str | os.PathLike, **kwargs: Any) -> ImageProcessor:
    """:meth:`ImageProcessor.from_pretrained`: the image options of a checkpoint, as
    :meth:`BridgeTowerProcessor.from_pretrained` reads them (no tokenizer needed); ``kwargs``:
    its Hub keywords, and image options overriding the stored ones."""
    hub = HubOptions(**{k: kwargs.pop(k) for k in [f.name for f in dataclasses.fields(HubOptions)] if k in kwargs})
    name, locate, misses = _open_checkpoint(name_or_path, hub, "ImageProcessor")
    return _image_processor_of(name, locate, misses, kwargs)[0]


class BridgeTowerProcessor:
    """Image processor + ``transformers`` tokenizer (see the module docstring).

    ``__call__(images=None, text=None, **options)`` returns a ``transformers.BatchFeature``
    with ``input_ids``, ``attention_mask`` (and whatever else the tokenizer returns),
    ``pixel_values`` and ``pixel_mask``.  ``max_text_length`` (set by :meth:`from_pretrained`
    from the model's config) is where texts are truncated by default.
    """

    def __init__(
        self, image_processor: ImageProcessor | None = None, tokenizer: Any = None, *, max_text_length: int | None = None
    ) -> None:
        self.image_processor = ImageProcessor() if image_processor is None else image_processor
        if not isinstance(self.image_processor, ImageProcessor):
            raise TypeError(
                f"BridgeTowerProcessor: image_processor must be an ImageProcessor, got {type(image_processor).__name__}"
            )
        if max_text_length is not None and (not isinstance(max_text_length, int) or max_text_length < 2):
            raise ValueError(f"BridgeTowerProcessor: max_text_length must be an int >= 2, got {max_text_length!r}")
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        tokenizer: Any = None,
        **image_options: Any,
    ) -> BridgeTowerProcessor:
        """Load the tokenizer and the image options of a checkpoint, as ``transformers`` does.

        ``name_or_path``: a local directory, or a Hugging Face Hub id (``"org/name"``; needs
        the network or the local Hub cache, see ``HF_HUB_OFFLINE``).  The image options come
        from the ``image_processor`` entry of ``processor_config.json`` (what ``transformers``
        5 writes), else ``preprocessor_config.json``, else the image size in the model's
        ``config.json`` (a model saved by ``bridgetower`` or ``transformers``); the text length
        limit from that config too.  ``tokenizer`` replaces the saved one; without either the
        directory is refused (``ValueError``).  The Hub keywords are passed on to the download;
        ``image_options`` (:data:`~bridgetower.models.image_processor.IMAGE_OPTIONS`) override
        the stored image options.

        Raises ``ValueError`` for a local path that does not exist or a malformed name, and
        ``OSError`` naming the id when a Hub checkpoint cannot be fetched (offline, unknown).
        """
        hub = HubOptions(revision, cache_dir, local_files_only, token, force_download)
        name, locate, misses = _open_checkpoint(name_or_path, hub, "BridgeTowerProcessor")
        image_processor, max_text_length = _image_processor_of(name, locate, misses, image_options)
        if tokenizer is None:
            tokenizer = _load_tokenizer(name, locate, hub, misses)
        return cls(image_processor, tokenizer, max_text_length=max_text_length)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the tokenizer and ``preprocessor_config.json`` into ``path``.

        A ``processor_config.json`` already there (``transformers`` 5 format) gets the same image
        options in its ``image_processor`` entry, since loaders read that entry first.
        """
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        options = self.image_processor.to_dict()
        v5 = os.path.join(path, _PROCESSOR_CONFIG_V5)
        if os.path.isfile(v5):
            with open(v5, encoding="utf-8") as f:
                nested = json.load(f)
            if isinstance(nested.get("image_processor"), dict):
                nested["image_processor"] = options
                with open(v5, "w", encoding="utf-8") as f:
                    json.dump(nested, f, indent=2)

    # -------------------------------------------------------------- the call

    def _route(self, kwargs: dict[str, Any], nested: dict[str, Any]) -> tuple[dict, dict, str | None]:
        """``(image options, tokenizer options, return_tensors)`` from the flat keywords and the
        ``images_kwargs`` / ``text_kwargs`` / ``common_kwargs`` dicts; unknown names raise."""
        image_kw: dict[str, Any] = {}
        text_kw: dict[str, Any] = {}
        common: dict[str, Any] = {"return_tensors": "pt"}
        unknown: list[str] = []
        for key, value in kwargs.items():
            if key in _COMMON_OPTIONS:
                common[key] = value
            elif key in IMAGE_OPTIONS:
                image_kw[key] = value
            elif key in TEXT_OPTIONS:
                text_kw[key] = value
            else:
                unknown.append(key)
        for group, valid, target in (
            ("images_kwargs", IMAGE_OPTIONS, image_kw),
            ("text_kwargs", TEXT_OPTIONS, text_kw),
            ("common_kwargs", (), common),
        ):
            given = nested.get(group) or {}
            if not isinstance(given, Mapping):
                raise TypeError(f"BridgeTowerProcessor: {group} must be a dict, got {type(given).__name__}")
            for key, value in given.items():
                if key not in valid and key not in _COMMON_OPTIONS:
                    unknown.append(f"{group}[{key!r}]")
                elif key in kwargs:
                    raise ValueError(f"BridgeTowerProcessor: {key!r} was passed twice, in {group} and as a keyword")
                else:
                    target[key] = value
        if unknown:
            raise TypeError(
                f"BridgeTowerProcessor: unknown keyword(s) {unknown}. Image options: {', '.join(IMAGE_OPTIONS)}; "
                f"tokenizer options: {', '.join(TEXT_OPTIONS)}; common: return_tensors (each also in "
                "images_kwargs / text_kwargs / common_kwargs)"
            )
        return image_kw, text_kw, common["return_tensors"]

    def _text_defaults(self, text_kw: dict[str, Any]) -> dict[str, Any]:
        """Truncate to the model's text limit unless told otherwise."""
        limit = self.max_text_length
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 2 <= model_max < 1_000_000:
            limit = model_max if limit is None else min(limit, model_max)
        if limit is not None and "truncation" not in text_kw:
            text_kw = {"truncation": True, **text_kw}
            if "max_length" not in text_kw:
                text_kw["max_length"] = limit
        return text_kw

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        *,
        images_kwargs: Mapping[str, Any] | None = None,
        text_kwargs: Mapping[str, Any] | None = None,
        common_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        from transformers import BatchFeature

        if images is None and text is None:
            raise ValueError("BridgeTowerProcessor: pass images, text, or both")
        image_kw, text_kw, return_tensors = self._route(
            kwargs, {"images_kwargs": images_kwargs, "text_kwargs": text_kwargs, "common_kwargs": common_kwargs}
        )
        image_return = image_kw.pop("return_tensors", return_tensors)
        image_processor = self.image_processor.replace(**image_kw) if image_kw else self.image_processor  # validated
        out: dict[str, Any] = {}
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("BridgeTowerProcessor: no tokenizer set, cannot process text")
            if not isinstance(text, str) and not (
                isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text)
            ):
                raise TypeError("BridgeTowerProcessor: text must be a str or a non-empty list of str")
            tk = self._text_defaults(text_kw)
            encoding = self.tokenizer(text, return_tensors=tk.pop("return_tensors", return_tensors), **tk)
            check_unknown_tokens(self.tokenizer, encoding["input_ids"], [text] if isinstance(text, str) else text)
            out.update(encoding)
        if images is not None:
            if text is not None:
                n_img = len(images) if isinstance(images, (list, tuple)) else 1
                n_txt = 1 if isinstance(text, str) else len(text)
                if n_img != n_txt:
                    raise ValueError(
                        f"BridgeTowerProcessor: got {n_img} image(s) and {n_txt} text(s); pass one text per image"
                    )
            out.update(image_processor(images, return_tensors=image_return))
        return BatchFeature(out)

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


def _load_tokenizer(name: str, locate, hub: HubOptions, misses: list[BaseException]):
    """``AutoTokenizer`` of a directory or Hub repository that has tokenizer files; refuses one
    without (``AutoTokenizer`` would otherwise build a tokenizer from the model config alone)."""
    from transformers import AutoTokenizer

    if not any(locate(f) is not None for f in _TOKENIZER_MARKERS):
        if misses and not os.path.isdir(name):
            raise hub_error(name, "the tokenizer", misses[-1]) from misses[-1]
        raise ValueError(
            f"BridgeTowerProcessor.from_pretrained: {name!r} has no tokenizer files (one of "
            f"{', '.join(_TOKENIZER_MARKERS)}); pass tokenizer=..., or save the model with its tokenizer "
            "(model.save_pretrained(dir, tokenizer=tok) or processor.save_pretrained(dir))"
        )
    try:
        kw = hub.kwargs() if not os.path.isdir(name) else {}
        return AutoTokenizer.from_pretrained(name, **kw)
    except Exception as err:  # noqa: BLE001
        raise hub_error(name, "the tokenizer", err) from err
