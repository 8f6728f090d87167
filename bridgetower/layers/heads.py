"""Task heads of BridgeTower (their losses are in :mod:`bridgetower.layers.losses`).

``H`` below is the cross-modal width; the *pooled* feature is the concatenation of the text
and image poolers, ``(B, 2H)``.  Heads are sized by ``hidden_size = H`` and read their input
width from it (``ITMHead(H)`` holds ``Linear(2H, 2)``).

====================  ==========================================  =====================
head                  computes                                    loss
====================  ==========================================  =====================
:class:`Pooler`       ``tanh(dense(x[:, 0]))``, (B, L, H) -> (B, H)
:class:`MLMHead`      ``Linear -> GELU -> LN -> Linear + bias``    :func:`mlm_loss`
:class:`ITMHead`      ``fc``: Linear(2H, 2); index 1 = match       :func:`itm_loss`
:class:`ITCHead`      official ITC: Linear(H, 256) + L2 norm,      :func:`itc_loss`
                      learnable temperature in [0.001, 0.5]
:class:`ContrastiveHeads`  HF: text, image (H) and cross (2H)      :func:`contrastive_loss`
                      heads to 512, ``logit_scale``
:class:`VQAHead`      2H -> 4H -> LN -> GELU -> num_answers        :func:`vqa_loss`
:class:`NLVR2Head`    4H -> 3H -> LN -> GELU -> 2                  :func:`nlvr2_loss`
:class:`SNLIVEHead`   2H -> 2H -> LN -> GELU -> 3                  :func:`snli_loss`
:class:`IRTRHead`     ``fc``: Linear(2H, 1), init from ITM row 1   :func:`irtr_loss`
====================  ==========================================  =====================

Parameter names follow the checkpoints so that conversion is a prefix rename:
``MLMHead`` matches HF/official ``mlm_score.{transform.dense, transform.LayerNorm, decoder,
bias}``; ``ITMHead.fc`` matches ``itm_score.fc``; ``ITCHead.{itc_text_head.fc,
itc_image_head.fc, temperature}`` the official ITC names; ``ContrastiveHeads.{itc_text_head.fc,
itc_image_head.fc, itc_cross_modal_head.fc, logit_scale}`` the HF names; the
``classifier.{0,1,3}`` of the VQA/NLVR2/SNLI-VE heads the official ``vqa_classifier``,
``nlvr2_classifier``, ``snli_classifier``; ``IRTRHead.fc`` the official ``rank_output``.

``reset_parameters()`` applies the BridgeTower initialisation: Linear weights N(0, 0.02), biases
zero, LayerNorm (1, 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as _losses
from ._compat import moved_names
from .validation import check_positive_int

__all__ = ["ContrastiveHeads", "ContrastiveOutput", "IRTRHead", "ITCHead", "ITMHead", "MLMHead",
           "NLVR2Head", "Pooler", "SNLIVEHead", "VQAHead", *_losses.__all__]


# The losses lived here before bridgetower.layers.losses: they still resolve.
__getattr__ = moved_names(__name__, _losses.__name__, _losses.__all__, warn=False)


# ------------------------------------------------------------------ helpers


def _init_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def _init_tree(module: nn.Module, std: float) -> None:
    """BridgeTower init on every Linear / LayerNorm inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            _init_linear(m, std)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_features(x: torch.Tensor, width: int, who: str, what: str, ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{who}: {what} must have {ndim} dims (..., {width}), got shape {tuple(x.shape)}")
    if x.ndim == 0 or x.shape[-1] != width:
        raise ValueError(f"{who}: {what} must have last dimension {width}, got shape {tuple(x.shape)}")


# ------------------------------------------------------------------ pooler


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the first token of ``(B, L, H)`` -> ``(B, H)``."""

    def __init__(self, hidden_size: int, *, init_std: float = 0.02, device=None, dtype=None) -> None:
        super().__init__()
        check_positive_int("Pooler", hidden_size=hidden_size)
        self.hidden_size = hidden_size
        self.init_std = init_std
        self.dense = nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_linear(self.dense, self.init_std)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _check_features(hidden_states, self.hidden_size, "Pooler", "hidden_states", ndim=3)
        return torch.tanh(self.dense(hidden_states[:, 0]))  # (B, H)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}"


# ------------------------------------------------------------------ MLM


class MLMTransform(nn.Module):
    """``LN(GELU(dense(x)))`` -- names ``dense``, ``LayerNorm`` as in the checkpoints."""

    def __init__(self, hidden_size: int, *, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """Masked-language-model head: ``decoder(transform(x)) + bias``, (..., H) -> (..., V).

    ``eps`` is the transform's LayerNorm eps: 1e-12 for official checkpoints, 1e-5 for HF.
    ``weight`` (a ``(V, H)`` parameter, e.g. the word embeddings) ties the decoder; see
    :meth:`tie_weights`.  The official model trains the MLM head untied.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        eps: float = 1e-5,
        weight: nn.Parameter | None = None,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int("MLMHead", hidden_size=hidden_size, vocab_size=vocab_size)
        self.hidden_size, self.vocab_size, self.eps, self.init_std = hidden_size, vocab_size, eps, init_std
        self.transform = MLMTransform(hidden_size, eps=eps, device=device, dtype=dtype)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(vocab_size, device=device, dtype=dtype))  # (V,)
        self.reset_parameters()
        if weight is not None:
            self.tie_weights(weight)

    def reset_parameters(self) -> None:
        _init_tree(self.transform, self.init_std)
        if not self.is_tied:
            nn.init.normal_(self.decoder.weight, std=self.init_std)
        nn.init.zeros_(self.bias)

    @property
    def is_tied(self) -> bool:
        return getattr(self, "_tied", False)

    def tie_weights(self, weight: nn.Parameter) -> None:
        """Share ``weight`` (shape ``(V, H)``, e.g. ``word_embeddings.weight``) as the decoder."""
        if not isinstance(weight, nn.Parameter):
            raise TypeError(f"MLMHead.tie_weights: expected an nn.Parameter, got {type(weight).__name__}")
        if tuple(weight.shape) != (self.vocab_size, self.hidden_size):
            raise ValueError(
                f"MLMHead.tie_weights: weight must be (vocab_size, hidden_size) = "
                f"({self.vocab_size}, {self.hidden_size}), got {tuple(weight.shape)}"
            )
        self.decoder.weight = weight
        self._tied = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, L, H) text features -> (B, L, V) logits."""
        _check_features(x, self.hidden_size, "MLMHead", "x")
        return self.decoder(self.transform(x)) + self.bias

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, vocab_size={self.vocab_size}, eps={self.eps:g}, tied={self.is_tied}"


# ------------------------------------------------------------------ ITM


class _PooledLinear(nn.Module):
    """``fc`` = Linear(2H, ``out_features``) on the pooled (B, 2H) feature."""

    out_features: int = 1

    def __init__(self, hidden_size: int, *, init_std: float = 0.02,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_positive_int(type(self).__name__, hidden_size=hidden_size)
        self.hidden_size, self.init_std = hidden_size, init_std
        self.fc = nn.Linear(2 * hidden_size, self.out_features, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_linear(self.fc, self.init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (B, 2H) -> (B, out_features)."""
        _check_features(pooled, 2 * self.hidden_size, type(self).__name__, "pooled", ndim=2)
        return self.fc(pooled)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}"


class ITMHead(_PooledLinear):
    """Image-text matching: ``fc`` = Linear(2H, 2) on the pooled feature; index 1 = match."""

    out_features = 2


# ------------------------------------------------------------------ contrastive


class _Projection(nn.Module):
    """``fc``: one Linear, named as the checkpoints' contrastive heads."""

    def __init__(self, in_dim: int, out_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ITCHead(nn.Module):
    """Official image-text contrastive head.

    ``itc_text_head.fc`` and ``itc_image_head.fc``: Linear(H, embed_dim) on the uni-modal CLS
    features (last text layer; last vision layer after ``ln_post``), L2-normalised.  ``H`` is
    the text width; ``image_hidden_size`` (default ``H``) the vision width.
    ``temperature`` (init 0.07) is learnable and used clamped to ``[min_temperature,
    max_temperature]``; :meth:`clamp_temperature_` clamps the stored value in place as the
    official training step does.
    """

    def __init__(
        self,
        hidden_size: int,
        embed_dim: int = 256,
        *,
        image_hidden_size: int | None = None,
        temperature: float = 0.07,
        min_temperature: float = 0.001,
        max_temperature: float = 0.5,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int("ITCHead", hidden_size=hidden_size, embed_dim=embed_dim)
        if not 0 < min_temperature <= temperature <= max_temperature:
            raise ValueError(
                f"ITCHead: need 0 < min_temperature <= temperature <= max_temperature, got "
                f"{min_temperature}, {temperature}, {max_temperature}"
            )
        self.hidden_size = hidden_size
        self.image_hidden_size = hidden_size if image_hidden_size is None else image_hidden_size
        self.embed_dim = embed_dim
        self.temperature_init, self.min_temperature, self.max_temperature = temperature, min_temperature, max_temperature
        self.init_std = init_std
        factory = {"device": device, "dtype": dtype}
        self.itc_text_head = _Projection(hidden_size, embed_dim, **factory)
        self.itc_image_head = _Projection(self.image_hidden_size, embed_dim, **factory)
        self.temperature = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_tree(self.itc_text_head, self.init_std)
        _init_tree(self.itc_image_head, self.init_std)
        nn.init.constant_(self.temperature, self.temperature_init)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Clamp the stored temperature into ``[min_temperature, max_temperature]`` in place."""
        self.temperature.clamp_(self.min_temperature, self.max_temperature)

    def effective_temperature(self) -> torch.Tensor:
        """The temperature used by :meth:`loss`: clamped (gradient zero outside the range)."""
        return self.temperature.clamp(self.min_temperature, self.max_temperature)

    def forward(self, text_cls: torch.Tensor, image_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``text_cls`` (B, H), ``image_cls`` (B, H_img) -> L2-normalised (B, E) each."""
        _check_features(text_cls, self.hidden_size, "ITCHead", "text_cls", ndim=2)
        _check_features(image_cls, self.image_hidden_size, "ITCHead", "image_cls", ndim=2)
        if text_cls.shape[0] != image_cls.shape[0]:
            raise ValueError(f"ITCHead: batch sizes differ, text {tuple(text_cls.shape)} vs image {tuple(image_cls.shape)}")
        text = F.normalize(self.itc_text_head(text_cls), dim=-1, p=2)
        image = F.normalize(self.itc_image_head(image_cls), dim=-1, p=2)
        return text, image

    def loss(
        self,
        text_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        *,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rank: int = 0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`itc_loss` with this head's clamped temperature."""
        return _losses.itc_loss(text_embeds, image_embeds, self.effective_temperature(), gather=gather, rank=rank,
                                labels=labels)

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, embed_dim={self.embed_dim}, temperature in "
            f"[{self.min_temperature:g}, {self.max_temperature:g}]"
        )


class ContrastiveOutput(NamedTuple):
    text_embeds: torch.Tensor  # (B, E), L2-normalised
    image_embeds: torch.Tensor  # (B, E)
    cross_embeds: torch.Tensor  # (B, E)
    logits: torch.Tensor  # (B, 3, E): the three stacked as HF returns them


class ContrastiveHeads(nn.Module):
    """HF-style contrastive heads: ``itc_text_head.fc`` (H -> E), ``itc_image_head.fc`` (H -> E),
    ``itc_cross_modal_head.fc`` (2H -> E), ``logit_scale`` (init 2.6592, i.e. ``log(1/0.07)``).

    ``forward(text_cls, image_cls, pooled)`` takes the text CLS feature, the image CLS feature
    after the cross-modal projection plus the image token-type row, and the pooled (B, 2H)
    output, and returns a :class:`ContrastiveOutput` of L2-normalised embeddings.
    """

    def __init__(
        self,
        hidden_size: int,
        embed_dim: int = 512,
        *,
        logit_scale_init: float = 2.6592,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_int("ContrastiveHeads", hidden_size=hidden_size, embed_dim=embed_dim)
        self.hidden_size, self.embed_dim = hidden_size, embed_dim
        self.logit_scale_init, self.init_std = logit_scale_init, init_std
        factory = {"device": device, "dtype": dtype}
        self.itc_text_head = _Projection(hidden_size, embed_dim, **factory)
        self.itc_image_head = _Projection(hidden_size, embed_dim, **factory)
        self.itc_cross_modal_head = _Projection(2 * hidden_size, embed_dim, **factory)
        self.logit_scale = nn.Parameter(torch.empty((), **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for head in (self.itc_text_head, self.itc_image_head, self.itc_cross_modal_head):
            _init_tree(head, self.init_std)
        nn.init.constant_(self.logit_scale, self.logit_scale_init)

    def forward(self, text_cls: torch.Tensor, image_cls: torch.Tensor, pooled: torch.Tensor) -> ContrastiveOutput:
        who = "ContrastiveHeads"
        _check_features(text_cls, self.hidden_size, who, "text_cls", ndim=2)
        _check_features(image_cls, self.hidden_size, who, "image_cls", ndim=2)
        _check_features(pooled, 2 * self.hidden_size, who, "pooled", ndim=2)
        if not (text_cls.shape[0] == image_cls.shape[0] == pooled.shape[0]):
            raise ValueError(
                f"{who}: batch sizes differ: text_cls {tuple(text_cls.shape)}, image_cls "
                f"{tuple(image_cls.shape)}, pooled {tuple(pooled.shape)}"
            )
        text = F.normalize(self.itc_text_head(text_cls), dim=-1, p=2)
        image = F.normalize(self.itc_image_head(image_cls), dim=-1, p=2)
        cross = F.normalize(self.itc_cross_modal_head(pooled), dim=-1, p=2)
        return ContrastiveOutput(text, image, cross, torch.stack([text, image, cross], dim=-2))

    def loss(self, out: ContrastiveOutput) -> torch.Tensor:
        """:func:`contrastive_loss` of a forward output with this head's ``logit_scale``."""
        return _losses.contrastive_loss(out.text_embeds, out.image_embeds, out.cross_embeds, self.logit_scale)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, embed_dim={self.embed_dim}"


# ------------------------------------------------------------------ classifiers


class _PooledClassifier(nn.Module):
    """``classifier`` = Sequential(Linear(in, hidden), LayerNorm, GELU, Linear(hidden, out))
    on pooled features: ``in = in_mult * H`` and ``hidden = hidden_mult * H`` by default.

    Args (of every subclass):
        hidden_size: the cross-modal width ``H``.
        num_outputs: classes (the subclasses name it and give it a default).
        hidden_dim: the hidden width (default ``hidden_mult * H``).
        eps: the LayerNorm eps; init_std: std of the Linear weights.
        device, dtype: of the parameters.
    """

    in_mult: int = 2
    hidden_mult: int = 2

    def __init__(
        self,
        hidden_size: int,
        num_outputs: int,
        *,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        init_std: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        check_positive_int(who, hidden_size=hidden_size)
        hidden_dim = self.hidden_mult * hidden_size if hidden_dim is None else hidden_dim
        check_positive_int(who, hidden_dim=hidden_dim, num_outputs=num_outputs)
        self.hidden_size, self.eps, self.init_std = hidden_size, eps, init_std
        self.in_dim, self.hidden_dim, self.out_dim = self.in_mult * hidden_size, hidden_dim, num_outputs
        factory = {"device": device, "dtype": dtype}
        self.classifier = nn.Sequential(
            nn.Linear(self.in_dim, hidden_dim, **factory),
            nn.LayerNorm(hidden_dim, eps=eps, **factory),
            nn.GELU(),
            nn.Linear(hidden_dim, num_outputs, **factory),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_tree(self.classifier, self.init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (B, in_dim) -> (B, num_outputs) logits."""
        _check_features(pooled, self.in_dim, type(self).__name__, "pooled", ndim=2)
        return self.classifier(pooled)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"


class VQAHead(_PooledClassifier):
    """VQA: (B, 2H) -> Linear(2H, 4H) -> LN -> GELU -> Linear(4H, num_answers) (3129 for VQAv2)."""

    in_mult, hidden_mult = 2, 4

    def __init__(self, hidden_size: int, num_answers: int = 3129, **kwargs) -> None:
        super().__init__(hidden_size, num_answers, **kwargs)
        self.num_answers = num_answers


class NLVR2Head(_PooledClassifier):
    """NLVR2: the two pooled pairs concatenated, (B, 4H) -> Linear(4H, 3H) -> LN -> GELU -> 2.

    ``forward(pooled)`` with ``pooled`` (B, 4H), or ``forward(pooled_1, pooled_2)`` with two
    (B, 2H) tensors (image token types 1 and 2), concatenated in that order.
    """

    in_mult, hidden_mult = 4, 3

    def __init__(self, hidden_size: int, **kwargs) -> None:
        super().__init__(hidden_size, 2, **kwargs)

    def forward(self, pooled: torch.Tensor, pooled_2: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_2 is not None:
            for name, t in (("pooled", pooled), ("pooled_2", pooled_2)):
                _check_features(t, 2 * self.hidden_size, "NLVR2Head", name, ndim=2)
            if pooled.shape != pooled_2.shape:
                raise ValueError(f"NLVR2Head: pair shapes differ: {tuple(pooled.shape)} vs {tuple(pooled_2.shape)}")
            pooled = torch.cat([pooled, pooled_2], dim=-1)  # (B, 4H)
        return super().forward(pooled)


class SNLIVEHead(_PooledClassifier):
    """SNLI-VE: (B, 2H) -> Linear(2H, 2H) -> LN -> GELU -> Linear(2H, 3)."""

    in_mult, hidden_mult = 2, 2

    def __init__(self, hidden_size: int, num_classes: int = 3, **kwargs) -> None:
        super().__init__(hidden_size, num_classes, **kwargs)


# ------------------------------------------------------------------ IRTR


class IRTRHead(_PooledLinear):
    """Image-text retrieval ranking score: ``fc`` = Linear(2H, 1); (N, 2H) -> (N,) scores.

    :meth:`init_from_itm` copies the ITM head's "match" row (row 1), as the official
    fine-tuning does.
    """

    out_features = 1

    @torch.no_grad()
    def init_from_itm(self, itm_head: ITMHead) -> None:
        """Copy ``itm_head.fc`` row 1 (weight (1, 2H) and bias (1,)) into ``fc``."""
        if not isinstance(itm_head, ITMHead):
            raise TypeError(f"IRTRHead.init_from_itm: expected an ITMHead, got {type(itm_head).__name__}")
        if itm_head.hidden_size != self.hidden_size:
            raise ValueError(
                f"IRTRHead.init_from_itm: hidden sizes differ ({itm_head.hidden_size} vs {self.hidden_size})"
            )
        self.fc.weight.copy_(itm_head.fc.weight[1:2])
        self.fc.bias.copy_(itm_head.fc.bias[1:2])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (N, 2H) -> (N,) ranking scores."""
        return super().forward(pooled)[:, 0]
