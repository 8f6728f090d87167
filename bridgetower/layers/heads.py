"""Task heads of BridgeTower and their losses.

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

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "ContrastiveHeads",
    "ContrastiveOutput",
    "IRTRHead",
    "ITCHead",
    "ITMHead",
    "MLMHead",
    "NLVR2Head",
    "Pooler",
    "SNLIVEHead",
    "VQAHead",
    "contrastive_loss",
    "irtr_loss",
    "itc_loss",
    "itm_loss",
    "mlm_loss",
    "nlvr2_loss",
    "snli_loss",
    "vqa_loss",
]


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


def _check_positive(name: str, value: int, who: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")


def _check_tensor(x, who: str, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: {what} must be a torch.Tensor, got {type(x).__name__}")


def _check_features(x: torch.Tensor, width: int, who: str, what: str, ndim: int | None = None) -> None:
    _check_tensor(x, who, what)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{who}: {what} must have {ndim} dims (..., {width}), got shape {tuple(x.shape)}")
    if x.ndim == 0 or x.shape[-1] != width:
        raise ValueError(f"{who}: {what} must have last dimension {width}, got shape {tuple(x.shape)}")


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None, who: str) -> None:
    _check_tensor(logits, who, "logits")
    _check_tensor(labels, who, "labels")
    if logits.ndim != 2:
        raise ValueError(f"{who}: logits must be (N, C), got shape {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"{who}: logits must have {num_classes} classes, got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{who}: labels must be (N,) = ({logits.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{who}: labels must be an integer tensor of class indices, got {labels.dtype}")


# ------------------------------------------------------------------ pooler


class Pooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the first token of ``(B, L, H)`` -> ``(B, H)``."""

    def __init__(self, hidden_size: int, *, init_std: float = 0.02, device=None, dtype=None) -> None:
        super().__init__()
        _check_positive("hidden_size", hidden_size, "Pooler")
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
        _check_positive("hidden_size", hidden_size, "MLMHead")
        _check_positive("vocab_size", vocab_size, "MLMHead")
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


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy over the masked positions: ``logits`` (..., V), ``labels`` (...).

    Positions with ``labels == ignore_index`` do not count.  If no position counts, the loss is
    a zero that still depends on ``logits`` (instead of PyTorch's NaN).
    """
    _check_tensor(logits, "mlm_loss", "logits")
    _check_tensor(labels, "mlm_loss", "labels")
    if logits.ndim < 2 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"mlm_loss: labels must have the shape of logits without the vocab dim; "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"mlm_loss: labels must be integer token ids, got {labels.dtype}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    if not (flat_labels != ignore_index).any():
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=ignore_index)


# ------------------------------------------------------------------ ITM


class ITMHead(nn.Module):
    """Image-text matching: ``fc`` = Linear(2H, 2) on the pooled feature; index 1 = match."""

    def __init__(self, hidden_size: int, *, init_std: float = 0.02, device=None, dtype=None) -> None:
        super().__init__()
        _check_positive("hidden_size", hidden_size, "ITMHead")
        self.hidden_size, self.init_std = hidden_size, init_std
        self.fc = nn.Linear(2 * hidden_size, 2, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_linear(self.fc, self.init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (B, 2H) -> (B, 2) logits."""
        _check_features(pooled, 2 * self.hidden_size, "ITMHead", "pooled", ndim=2)
        return self.fc(pooled)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}"


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ITM logits ``(N, 2)`` with labels ``(N,)`` (1 = match, 0 = no match)."""
    _check_logits_labels(logits, labels, 2, "itm_loss")
    return F.cross_entropy(logits.float(), labels)


# ------------------------------------------------------------------ contrastive


class _Projection(nn.Module):
    """``fc``: one Linear, named as the checkpoints' contrastive heads."""

    def __init__(self, in_dim: int, out_dim: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _resolve_rank(rank: int | None) -> int:
    if rank is not None:
        return int(rank)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def itc_loss(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric image-text contrastive loss (official BridgeTower / ALBEF form).

    ``text_embeds``, ``image_embeds``: (B, E) L2-normalised local features.  ``gather`` maps a
    local (B, E) tensor to the (W*B, E) concatenation over ranks (e.g. an all-gather that keeps
    the local gradient); the local block must sit at rows ``rank*B : (rank+1)*B``.  Logits are
    ``image @ all_text.T / temperature`` and ``text @ all_image.T / temperature``; the loss is
    the mean of the two cross-entropies.  ``labels``: (B,) indices into the gathered axis
    (default ``arange(B) + rank*B``) or (B, W*B) soft targets (e.g. for several captions of
    one image).
    """
    who = "itc_loss"
    _check_tensor(text_embeds, who, "text_embeds")
    _check_tensor(image_embeds, who, "image_embeds")
    if text_embeds.ndim != 2 or text_embeds.shape != image_embeds.shape:
        raise ValueError(
            f"{who}: text_embeds and image_embeds must both be (B, E), got {tuple(text_embeds.shape)} "
            f"and {tuple(image_embeds.shape)}"
        )
    b = text_embeds.shape[0]
    if gather is None:
        all_text, all_image, offset = text_embeds, image_embeds, 0
    else:
        all_text, all_image = gather(text_embeds), gather(image_embeds)
        for name, t in (("text", all_text), ("image", all_image)):
            if t.ndim != 2 or t.shape[1] != text_embeds.shape[1] or t.shape[0] % b:
                raise ValueError(
                    f"{who}: gather must return (W*B, E) with B={b}, E={text_embeds.shape[1]}; "
                    f"got {tuple(t.shape)} for {name}"
                )
        offset = _resolve_rank(rank) * b
        if offset + b > all_text.shape[0]:
            raise ValueError(f"{who}: rank {offset // b} out of range for {all_text.shape[0] // b} gathered blocks")
    n = all_text.shape[0]
    if labels is None:
        labels = torch.arange(b, device=text_embeds.device) + offset
    elif labels.shape not in ((b,), (b, n)):
        raise ValueError(f"{who}: labels must be ({b},) or ({b}, {n}), got {tuple(labels.shape)}")
    if isinstance(temperature, torch.Tensor) and temperature.numel() != 1:
        raise ValueError(f"{who}: temperature must be a scalar, got shape {tuple(temperature.shape)}")
    logits_i2t = image_embeds.float() @ all_text.float().t() / temperature  # (B, W*B)
    logits_t2i = text_embeds.float() @ all_image.float().t() / temperature  # (B, W*B)
    return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2


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
        _check_positive("hidden_size", hidden_size, "ITCHead")
        _check_positive("embed_dim", embed_dim, "ITCHead")
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
        rank: int | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`itc_loss` with this head's clamped temperature."""
        return itc_loss(text_embeds, image_embeds, self.effective_temperature(), gather=gather, rank=rank, labels=labels)

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


def contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, cross_embeds: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """HF ``BridgeTowerForContrastiveLearning`` loss.

    With ``s = exp(logit_scale)`` and targets ``arange(B)``: the mean of the cross-entropies of
    ``s * text @ image.T``, ``s * text @ cross.T`` and ``s * image @ cross.T`` (rows only).
    """
    who = "contrastive_loss"
    for name, t in (("text_embeds", text_embeds), ("image_embeds", image_embeds), ("cross_embeds", cross_embeds)):
        _check_tensor(t, who, name)
    if text_embeds.ndim != 2 or not (text_embeds.shape == image_embeds.shape == cross_embeds.shape):
        raise ValueError(
            f"{who}: text, image and cross embeds must all be (B, E), got {tuple(text_embeds.shape)}, "
            f"{tuple(image_embeds.shape)}, {tuple(cross_embeds.shape)}"
        )
    scale = logit_scale.exp()
    labels = torch.arange(text_embeds.shape[0], device=text_embeds.device)
    t, i, c = text_embeds.float(), image_embeds.float(), cross_embeds.float()
    losses = [F.cross_entropy(a @ b.t() * scale, labels) for a, b in ((t, i), (t, c), (i, c))]
    return (losses[0] + losses[1] + losses[2]) / 3.0


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
        _check_positive("hidden_size", hidden_size, "ContrastiveHeads")
        _check_positive("embed_dim", embed_dim, "ContrastiveHeads")
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
        return contrastive_loss(out.text_embeds, out.image_embeds, out.cross_embeds, self.logit_scale)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, embed_dim={self.embed_dim}"


# ------------------------------------------------------------------ classifiers


class _MLPClassifier(nn.Module):
    """``classifier`` = Sequential(Linear(in, hidden), LayerNorm, GELU, Linear(hidden, out))."""

    who = "classifier"

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        *,
        eps: float = 1e-5,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            _check_positive(name, v, type(self).__name__)
        self.in_dim, self.hidden_dim, self.out_dim, self.eps, self.init_std = in_dim, hidden_dim, out_dim, eps, init_std
        factory = {"device": device, "dtype": dtype}
        self.classifier = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, **factory),
            nn.LayerNorm(hidden_dim, eps=eps, **factory),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim, **factory),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_tree(self.classifier, self.init_std)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: (B, in_dim) -> (B, out_dim) logits."""
        _check_features(pooled, self.in_dim, type(self).__name__, "pooled", ndim=2)
        return self.classifier(pooled)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden_dim={self.hidden_dim}, out_dim={self.out_dim}"


class VQAHead(_MLPClassifier):
    """VQA: (B, 2H) -> Linear(2H, 4H) -> LN -> GELU -> Linear(4H, num_answers) (3129 for VQAv2)."""

    def __init__(
        self,
        hidden_size: int,
        num_answers: int = 3129,
        *,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        _check_positive("hidden_size", hidden_size, "VQAHead")
        hd = 4 * hidden_size if hidden_dim is None else hidden_dim
        super().__init__(2 * hidden_size, hd, num_answers, eps=eps, init_std=init_std, device=device, dtype=dtype)
        self.hidden_size, self.num_answers = hidden_size, num_answers


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against soft answer scores, mean over all entries, times ``num_answers``.

    ``logits``, ``targets``: (B, num_answers); targets in [0, 1].
    """
    _check_tensor(logits, "vqa_loss", "logits")
    _check_tensor(targets, "vqa_loss", "targets")
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"vqa_loss: logits and targets must both be (B, num_answers), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if not targets.dtype.is_floating_point:
        raise TypeError(f"vqa_loss: targets must be floating-point soft scores, got {targets.dtype}")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


class NLVR2Head(_MLPClassifier):
    """NLVR2: the two pooled pairs concatenated, (B, 4H) -> Linear(4H, 3H) -> LN -> GELU -> 2.

    ``forward(pooled)`` with ``pooled`` (B, 4H), or ``forward(pooled_1, pooled_2)`` with two
    (B, 2H) tensors (image token types 1 and 2), concatenated in that order.
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        _check_positive("hidden_size", hidden_size, "NLVR2Head")
        hd = 3 * hidden_size if hidden_dim is None else hidden_dim
        super().__init__(4 * hidden_size, hd, 2, eps=eps, init_std=init_std, device=device, dtype=dtype)
        self.hidden_size = hidden_size

    def forward(self, pooled: torch.Tensor, pooled_2: torch.Tensor | None = None) -> torch.Tensor:
        if pooled_2 is not None:
            for name, t in (("pooled", pooled), ("pooled_2", pooled_2)):
                _check_features(t, 2 * self.hidden_size, "NLVR2Head", name, ndim=2)
            if pooled.shape != pooled_2.shape:
                raise ValueError(f"NLVR2Head: pair shapes differ: {tuple(pooled.shape)} vs {tuple(pooled_2.shape)}")
            pooled = torch.cat([pooled, pooled_2], dim=-1)  # (B, 4H)
        return super().forward(pooled)


class SNLIVEHead(_MLPClassifier):
    """SNLI-VE: (B, 2H) -> Linear(2H, 2H) -> LN -> GELU -> Linear(2H, 3)."""

    def __init__(
        self,
        hidden_size: int,
        num_classes: int = 3,
        *,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        init_std: float = 0.02,
        device=None,
        dtype=None,
    ) -> None:
        _check_positive("hidden_size", hidden_size, "SNLIVEHead")
        hd = 2 * hidden_size if hidden_dim is None else hidden_dim
        super().__init__(2 * hidden_size, hd, num_classes, eps=eps, init_std=init_std, device=device, dtype=dtype)
        self.hidden_size = hidden_size


def nlvr2_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of NLVR2 logits (N, 2) with labels (N,) in {0, 1}."""
    _check_logits_labels(logits, labels, 2, "nlvr2_loss")
    return F.cross_entropy(logits.float(), labels)


def snli_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of SNLI-VE logits (N, 3) with labels (N,) in {0, 1, 2}."""
    _check_logits_labels(logits, labels, 3, "snli_loss")
    return F.cross_entropy(logits.float(), labels)


# ------------------------------------------------------------------ IRTR


class IRTRHead(nn.Module):
    """Image-text retrieval ranking score: ``fc`` = Linear(2H, 1); (N, 2H) -> (N,) scores.

    :meth:`init_from_itm` copies the ITM head's "match" row (row 1), as the official
    fine-tuning does.
    """

    def __init__(self, hidden_size: int, *, init_std: float = 0.02, device=None, dtype=None) -> None:
        super().__init__()
        _check_positive("hidden_size", hidden_size, "IRTRHead")
        self.hidden_size, self.init_std = hidden_size, init_std
        self.fc = nn.Linear(2 * hidden_size, 1, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_linear(self.fc, self.init_std)

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
        _check_features(pooled, 2 * self.hidden_size, "IRTRHead", "pooled", ndim=2)
        return self.fc(pooled)[:, 0]

    def extra_repr(self) -> str:
        return f"{self.hidden_size}"


def irtr_loss(scores: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Ranking loss over groups of 1 positive + K negatives: cross-entropy with target 0.

    ``scores``: (B, 1+K) with the positive text first in every row, or flat (B*(1+K),) grouped
    consecutively (then give ``group_size = 1+K``).
    """
    _check_tensor(scores, "irtr_loss", "scores")
    if scores.ndim == 1:
        if group_size is None or group_size < 2 or scores.shape[0] % group_size:
            raise ValueError(
                f"irtr_loss: flat scores of shape {tuple(scores.shape)} need group_size >= 2 dividing "
                f"{scores.shape[0]}, got group_size={group_size!r}"
            )
        scores = scores.view(-1, group_size)  # (B, 1+K)
    elif scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"irtr_loss: scores must be (B, 1+K) with K >= 1, got shape {tuple(scores.shape)}")
    elif group_size is not None and group_size != scores.shape[1]:
        raise ValueError(f"irtr_loss: group_size={group_size} disagrees with scores {tuple(scores.shape)}")
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(scores.float(), target)
