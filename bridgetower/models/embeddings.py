"""Text, image and joint embeddings of a task model: :class:`EmbeddingsMixin`.

``embed_text`` runs the text tower only, ``embed_image`` the vision tower only, and
``embed_pair`` the whole model (the joint, cross-modal embedding).  Every result is
L2-normalised, ``(N, E)``, in the model's dtype.  A model using the mixin says which head
turns the tower features into embeddings:

==========================================  ================================  =====================================
model                                       ``embed_text`` / ``embed_image``  ``embed_pair``
==========================================  ================================  =====================================
:class:`BridgeTowerForContrastiveLearning`  ``text_embeds`` / ``image_embeds``  ``cross_embeds`` (as ``transformers``)
:class:`BridgeTowerForPretraining`          the official ITC embeddings         the normalised pooled output (2H)
==========================================  ================================  =====================================

:meth:`~EmbeddingsMixin.embed_texts` and :meth:`~EmbeddingsMixin.embed_images` take strings and
PIL images (or image paths) directly, in batches, with a progress bar for long lists.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["EmbeddingsMixin"]


def _check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    return batch_size


def _chunks(n: int, batch_size: int | None):
    step = batch_size or max(n, 1)
    for s in range(0, n, step):
        yield slice(s, min(s + step, n))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """L2 rows in float32, returned in ``x``'s dtype."""
    return F.normalize(x.float(), dim=-1, p=2).to(x.dtype)


def _progress(total: int, enabled: bool | None, desc: str, batch_size: int):
    """A tqdm bar over ``total`` items (shown when ``enabled``; ``None``: when there are more
    than four batches)."""
    from tqdm.auto import tqdm

    show = (total > 4 * batch_size) if enabled is None else bool(enabled)
    return tqdm(total=total, desc=desc, unit="item", disable=not show, leave=False)


class EmbeddingsMixin:
    """``embed_text``, ``embed_image``, ``embed_pair`` and the string / image conveniences.

    A class using it implements ``_text_embedding(text_states)``, ``_image_embedding(image_states)``
    and ``_pair_embedding(pooler_output)`` (unnormalised ``(B, E)``), and holds the encoder as
    ``bridgetower`` (every :class:`~bridgetower.models.task_base.TaskModel` does).
    """

    # ------------------------------------------------------------------ what a model declares

    def _text_embedding(self, text_states: Sequence[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _image_embedding(self, image_states: Sequence[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _pair_embedding(self, pooler_output: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ tensors in, embeddings out

    def _param(self) -> torch.Tensor:
        return next(self.parameters())

    def _pixels(self, pixel_values: Any, name: str = "pixel_values") -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (B, 3, H, W), got {type(pixel_values).__name__}")
        if pixel_values.ndim == 3:
            pixel_values = pixel_values.unsqueeze(0)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty (B, 3, H, W) tensor, got shape {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {pixel_values.dtype}")
        p = self._param()
        return pixel_values.to(device=p.device, dtype=p.dtype)

    def _texts(self, input_ids: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor (B, L), got {type(input_ids).__name__}")
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
            attention_mask = attention_mask.unsqueeze(0) if isinstance(attention_mask, torch.Tensor) else attention_mask
        dev = self._param().device
        self.bridgetower.text_model.check_inputs(input_ids, attention_mask)
        return input_ids.to(dev), (attention_mask.to(dev) if attention_mask is not None else None)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised text embeddings ``(B, E)`` from the text tower alone (no image)."""
        batch_size = _check_batch_size(batch_size)
        ids, mask = self._texts(input_ids, attention_mask)
        out = []
        for sl in _chunks(ids.shape[0], batch_size):
            states = self.bridgetower.encode_text(ids[sl], mask[sl] if mask is not None else None)
            out.append(_normalise(self._text_embedding(states)))
        return torch.cat(out, 0)

    def embed_image(self, pixel_values: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, E)`` from the vision tower alone (no text)."""
        batch_size = _check_batch_size(batch_size)
        px = self._pixels(pixel_values)
        out = []
        for sl in _chunks(px.shape[0], batch_size):
            out.append(_normalise(self._image_embedding(self.bridgetower.encode_image(px[sl]))))
        return torch.cat(out, 0)

    def embed_pair(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor,
                   pixel_mask: torch.Tensor | None = None, *, batch_size: int | None = None) -> torch.Tensor:
        """L2-normalised joint embeddings ``(B, E)`` of the pairs (text ``i``, image ``i``)."""
        batch_size = _check_batch_size(batch_size)
        ids, mask = self._texts(input_ids, attention_mask)
        px = self._pixels(pixel_values)
        if px.shape[0] != ids.shape[0]:
            raise ValueError(f"embed_pair: {ids.shape[0]} texts (input_ids) but {px.shape[0]} images (pixel_values)")
        if pixel_mask is not None:
            pixel_mask = pixel_mask.to(px.device)
        out = []
        for sl in _chunks(ids.shape[0], batch_size):
            enc = self.bridgetower(
                ids[sl], mask[sl] if mask is not None else None, px[sl],
                pixel_mask[sl] if pixel_mask is not None else None, pooled_only=True,
                output_attentions=False, output_hidden_states=False, return_dict=True,
            )
            out.append(_normalise(self._pair_embedding(enc.pooler_output)))
        return torch.cat(out, 0)

    @property
    def embedding_dim(self) -> int:
        """The width ``E`` of :meth:`embed_text` and :meth:`embed_image`."""
        p = self._param()
        with torch.no_grad():
            n = self.bridgetower.num_layers
            h = self.config.text.hidden_size
            return int(self._text_embedding([torch.zeros(1, 1, h, device=p.device, dtype=p.dtype)] * n).shape[-1])

    # ------------------------------------------------------------------ strings and images

    def embed_texts(self, texts: Sequence[str], tokenizer: Any, *, batch_size: int = 64,
                    max_length: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """:meth:`embed_text` of strings, tokenised by ``tokenizer`` (a ``transformers``
        tokenizer or a :class:`~bridgetower.models.BridgeTowerProcessor`), ``batch_size`` at a
        time, without gradients.  ``progress``: a tqdm bar (default: for more than four batches)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts is empty: pass at least one string")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"texts must be non-empty strings; items {bad[:5]} are not ({texts[bad[0]]!r})")
        batch_size = _check_batch_size(batch_size) or 64
        tok = getattr(tokenizer, "tokenizer", tokenizer)
        if not callable(tok):
            raise TypeError(f"tokenizer must be a transformers tokenizer or a processor, got {type(tokenizer).__name__}")
        limit = self.bridgetower.text_model.max_length
        max_length = min(limit, max_length) if max_length else limit
        out = []
        with torch.no_grad(), _progress(len(texts), progress, "embed texts", batch_size) as bar:
            for sl in _chunks(len(texts), batch_size):
                enc = tok(list(texts[sl]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                out.append(self.embed_text(enc["input_ids"], enc["attention_mask"]))
                bar.update(sl.stop - sl.start)
        return torch.cat(out, 0)

    def embed_images(self, images: Sequence[Any], *, image_processor: Any = None, batch_size: int = 32,
                     progress: bool | None = None) -> torch.Tensor:
        """:meth:`embed_image` of PIL images or image paths, preprocessed by ``image_processor``
        (an :class:`~bridgetower.models.ImageProcessor`, a processor holding one, or any callable
        image -> ``(3, H, W)`` tensor; default: resize and crop to the model's image size),
        ``batch_size`` at a time, without gradients."""
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of PIL images or paths, got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("images is empty: pass at least one image")
        batch_size = _check_batch_size(batch_size) or 32
        prep = self._image_preprocessor(image_processor)
        out = []
        with torch.no_grad(), _progress(len(images), progress, "embed images", batch_size) as bar:
            for sl in _chunks(len(images), batch_size):
                px = torch.stack([prep(_open_image(im, f"images[{i}]")) for i, im in
                                  zip(range(sl.start, sl.stop), images[sl], strict=True)])
                out.append(self.embed_image(px))
                bar.update(sl.stop - sl.start)
        return torch.cat(out, 0)

    def _image_preprocessor(self, image_processor: Any) -> Callable[[Any], torch.Tensor]:
        from .image_processor import ImageProcessor

        proc = getattr(image_processor, "image_processor", image_processor)
        if proc is None:
            proc = ImageProcessor(self.config.vision.image_size)
        if isinstance(proc, ImageProcessor):
            return lambda im: torch.from_numpy(proc.preprocess_image(im))
        if callable(proc):
            return lambda im: torch.as_tensor(proc(im))
        raise TypeError(f"image_processor must be an ImageProcessor or a callable, got {type(image_processor).__name__}")


def _open_image(image: Any, name: str):
    """A PIL RGB image from a PIL image or a path (``ValueError`` naming ``name`` otherwise)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{name}: no image file at {os.fspath(image)!r}")
        with Image.open(image) as im:
            im.load()
            return im.convert("RGB")
    raise TypeError(f"{name} must be a PIL image or a path, got {type(image).__name__}")
