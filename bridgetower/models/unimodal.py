"""Uni-modal task models: one tower of a vision-language BridgeTower with a classifier.

The official repository evaluates how much vision-language pre-training helps each tower on
its own (``run_cifar.py`` and ``run_glue.py``): the CLIP vision tower of a pre-trained
BridgeTower fine-tuned on CIFAR-10/100, and its RoBERTa text tower on GLUE.  These two
classes are that setting on our encoders:

=============================================== ======================= ==================
class                                           features fed to head    head
=============================================== ======================= ==================
:class:`BridgeTowerForImageClassification`      CLS token of the last   ``image_classifier``:
                                                vision layer after      ``Linear(W, C)``,
                                                ``ln_post`` (B, W)      N(0, 0.02), bias 0
:class:`BridgeTowerForTextClassification`       ``<s>`` token of the    ``text_classifier``:
                                                last text layer (B, H)  dropout -> ``Linear(H, H)``
                                                                        -> tanh -> dropout ->
                                                                        ``Linear(H, C)``
=============================================== ======================= ==================

(the official CIFAR head; the official GLUE script uses ``transformers``'
``RobertaForSequenceClassification``, whose head is the second one).  ``num_labels == 1``
makes the text model a regressor (GLUE STS-B): the loss is then the mean squared error.

Only the needed tower is built -- no fusion, no other tower, no VL heads -- so the models are
as small as the uni-modal baselines they are compared with.  ``config`` is still the full
:class:`~bridgetower.models.BridgeTowerConfig` of the source model (so a saved classifier
records where it came from); only its ``vision`` (resp. ``text``) part is used.

Build one from a vision-language model with :meth:`~_UniModalClassifier.from_bridgetower`
(an in-memory :class:`~bridgetower.models.BridgeTowerModel` or any task model holding one as
``bridgetower``), or from a checkpoint with :meth:`~_UniModalClassifier.from_pretrained`
(our directories of any task model, a Hugging Face BridgeTower, an official ``.ckpt``, or a
saved classifier of the same class).  :meth:`~_UniModalClassifier.save_pretrained` writes our
format (``config.json`` with ``task`` ``"image-cls"`` / ``"text-cls"`` and ``num_labels``,
plus ``model.safetensors``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .base import BatchSpec, BridgeTowerPreTrainedModel
from .config import BridgeTowerConfig, check_allocation
from .convert.adapt import copy_weights
from .task_base import normalize_task_name
from .towers.text import TransformersTextEncoder
from .towers.vision import OpenCLIPVisionEncoder, resize_pos_embed

logger = logging.getLogger(__name__)

__all__ = [
    "UNIMODAL_TASKS",
    "BridgeTowerForImageClassification",
    "BridgeTowerForTextClassification",
    "ClassificationOutput",
    "ImageClassificationHead",
    "TextClassificationHead",
    "classification_loss",
]

_FORMAT = "bridgetower"
_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "model.safetensors"


# ---------------------------------------------------------------- heads and loss


class ImageClassificationHead(nn.Module):
    """The official CIFAR head: ``Linear(in_features, num_labels)`` on the image CLS feature,
    weight N(0, 0.02), bias 0.  ``forward(features (B, W)) -> logits (B, num_labels)``."""

    def __init__(self, in_features: int, num_labels: int, *, device=None, dtype=None) -> None:
        super().__init__()
        _check_sizes(in_features=in_features, num_labels=num_labels)
        self.fc = nn.Linear(in_features, num_labels, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def extra_repr(self) -> str:
        return f"in_features={self.fc.in_features}, num_labels={self.fc.out_features}"


class TextClassificationHead(nn.Module):
    """The RoBERTa sequence-classification head (the official GLUE recipe) on the ``<s>``
    feature: ``dropout -> dense (H, H) -> tanh -> dropout -> out_proj (H, num_labels)``;
    Linear weights N(0, 0.02), biases 0.  ``forward(features (B, H)) -> logits (B, C)``."""

    def __init__(
        self, hidden_size: int, num_labels: int, *, dropout: float = 0.1, device=None, dtype=None
    ) -> None:
        super().__init__()
        _check_sizes(hidden_size=hidden_size, num_labels=num_labels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dense = nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype)
        self.out_proj = nn.Linear(hidden_size, num_labels, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.dense, self.out_proj):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(features)))  # (B, H)
        return self.out_proj(self.dropout(x))  # (B, C)

    def extra_repr(self) -> str:
        return f"hidden_size={self.dense.in_features}, num_labels={self.out_proj.out_features}, dropout={self.dropout.p}"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for ``logits`` (B, C > 1) and integer ``labels`` (B,); the mean squared
    error of ``logits[:, 0]`` against float ``labels`` (B,) for a single output (regression)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (B={logits.shape[0]},), got shape {tuple(labels.shape)}")
    if logits.shape[1] == 1:
        return F.mse_loss(logits[:, 0].float(), labels.float())
    if labels.dtype.is_floating_point:
        raise TypeError(f"classification labels must be integers, got {labels.dtype}")
    return F.cross_entropy(logits.float(), labels)


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


@dataclass
class ClassificationOutput(ModelOutput):
    """``loss`` when labels were given, ``logits`` (B, num_labels), and ``features`` (B, D):
    the CLS feature the head read.  Behaves like ``transformers``' ``ModelOutput``."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


# ---------------------------------------------------------------- base


class _UniModalClassifier(BridgeTowerPreTrainedModel):
    """Shared construction, loading and saving of the two uni-modal classifiers."""

    #: ``task`` written to ``config.json``.
    task_name: str = ""
    #: name of the tower attribute (also the state-dict prefix shared with BridgeTowerModel).
    tower_name: str = ""

    def __init__(self, config: BridgeTowerConfig, *, num_labels: int) -> None:
        super().__init__()
        if not isinstance(config, BridgeTowerConfig):
            raise TypeError(f"config must be a BridgeTowerConfig, got {type(config).__name__}")
        _check_sizes(num_labels=num_labels)
        check_allocation(config, parts=(self.tower_name.split("_")[0],))
        self.config = config
        self.num_labels = num_labels

    @property
    def tower(self) -> nn.Module:
        return getattr(self, self.tower_name)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute the tower's blocks in the backward pass (less memory)."""
        self.tower.set_gradient_checkpointing(enable)

    def parameter_roles(self) -> dict[str, str]:
        """The tower is ``"uni_modal"``, the classifier ``"head"``."""
        prefix = self.tower_name + "."
        return {n: "uni_modal" if n.startswith(prefix) else "head" for n, _ in self.named_parameters()}

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        return self.tower.block_types()

    # ------------------------------------------------------------------ building

    @classmethod
    def from_bridgetower(
        cls,
        source: nn.Module,
        *,
        num_labels: int,
        vocab_size: int | None = None,
        image_size: int | None = None,
        **head_kwargs: Any,
    ):
        """A classifier whose tower is a copy of ``source``'s (a
        :class:`~bridgetower.models.BridgeTowerModel` or a task model holding one as
        ``bridgetower``); the head is freshly initialised.

        ``vocab_size`` (text) larger than the source's keeps the source's embedding rows for the
        old ids (a tokenizer extended with new words); ``image_size`` (vision) resizes the
        position table bicubically.  The returned model has ``load_report``: ``{"copied":
        [...], "extended": [...], "resized": [...]}``.
        """
        encoder = _encoder_of(source)
        config = encoder.config
        over: dict[str, Any] = {}
        if vocab_size is not None and cls.tower_name == "text_model":
            if vocab_size < config.text.vocab_size:
                raise ValueError(
                    f"vocab_size {vocab_size} is smaller than the pretrained vocabulary ({config.text.vocab_size})"
                )
            over["text.vocab_size"] = vocab_size
        if image_size is not None and cls.tower_name == "vision_model":
            over["vision.image_size"] = image_size
        model = cls(config.replace(**over) if over else config, num_labels=num_labels, **head_kwargs)
        tower = getattr(encoder, cls.tower_name)
        model.load_report = copy_weights(model.tower, tower.state_dict(), what=cls.tower_name).as_dict()
        return model

    @classmethod
    def from_pretrained(
        cls,
        source: Any,
        *,
        num_labels: int | None = None,
        strict: bool = True,
        **overrides: Any,
    ):
        """Load a classifier.

        ``source``: a directory saved by :meth:`save_pretrained` of this class (the head is
        loaded too; ``num_labels`` must then match or be ``None``), or any vision-language
        source that :meth:`bridgetower.models.BridgeTowerModel.from_pretrained` reads (our
        directory of any task model, a Hugging Face BridgeTower directory / hub name /
        in-memory model, an official ``.ckpt``) or an in-memory BridgeTower model of ours --
        then only the tower is taken, the head is new and ``num_labels`` is required.
        ``overrides`` are config overrides (e.g. ``**{"vision.image_size": 96}``).  The model
        is returned in eval mode, like every ``from_pretrained`` of the package.
        """
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            meta = _read_meta(Path(source))
            saved_task = normalize_task_name(meta.get("task") or "")
            if meta.get("format") == _FORMAT and saved_task == cls.task_name:
                return cls._load_own(Path(source), meta, num_labels, strict, overrides).eval()
            if meta.get("format") == _FORMAT and saved_task in UNIMODAL_TASKS:
                raise ValueError(
                    f"{source}: a saved {UNIMODAL_TASKS[saved_task].__name__} has no "
                    f"{cls.tower_name.replace('_model', '')} tower to build a {cls.__name__} from"
                )
        if num_labels is None:
            raise ValueError(
                f"{cls.__name__}.from_pretrained: num_labels is required when starting from a "
                "vision-language checkpoint (the classifier head is new)"
            )
        overrides = dict(overrides)
        image_size = overrides.pop("vision.image_size", None)
        vocab_size = overrides.pop("text.vocab_size", None)
        if isinstance(source, nn.Module) and not _is_hf_model(source):
            if overrides:
                raise ValueError(
                    f"config overrides {sorted(overrides)} cannot apply to an in-memory model "
                    "(only vision.image_size and text.vocab_size)"
                )
            vl = source
        else:
            vl = _load_vl(source, strict, overrides)
        return cls.from_bridgetower(vl, num_labels=num_labels, image_size=image_size, vocab_size=vocab_size).eval()

    @classmethod
    def _load_own(cls, directory: Path, meta: dict, num_labels: int | None, strict: bool, overrides: dict):
        from safetensors.torch import load_file

        saved = int(meta.get("num_labels", 0))
        if num_labels is not None and num_labels != saved:
            raise ValueError(
                f"{directory} holds a {saved}-label {cls.__name__}; got num_labels={num_labels} "
                f"(use {cls.__name__}.from_bridgetower(...) for a new head)"
            )
        config = BridgeTowerConfig.from_dict(meta["config"])
        if overrides:
            config = config.replace(**overrides)
        model = cls(config, num_labels=saved, **meta.get("head", {}))
        state = load_file(str(directory / _WEIGHTS_NAME))
        own = model.state_dict()
        report: dict[str, list] = {"copied": [], "extended": [], "resized": []}
        pos_key = "vision_model.visual.positional_embedding"
        if pos_key in state and pos_key in own and state[pos_key].shape != own[pos_key].shape:
            g = config.vision.image_size // config.vision.patch_size
            state[pos_key] = resize_pos_embed(state[pos_key], (g, g))
            report["resized"].append(pos_key)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if (missing or unexpected) and strict:
            raise ValueError(
                f"{directory} does not match {cls.__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        model.load_state_dict(state, strict=strict)
        report["copied"] = sorted(set(own) & set(state))
        model.load_report = report
        return model

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, directory: str | Path, *, format: str = _FORMAT) -> None:
        """Write ``config.json`` (format, task, num_labels, head options, the full config) and
        ``model.safetensors`` into ``directory``.  Only our format exists for these models."""
        from safetensors.torch import save_file

        if format != _FORMAT:
            raise ValueError(f"{type(self).__name__} has no {format!r} export; only format={_FORMAT!r}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(sd, str(directory / _WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {
            "format": _FORMAT,
            "task": self.task_name,
            "num_labels": self.num_labels,
            "head": self._head_options(),
            "config": self.config.to_dict(),
        }
        (directory / _CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    def _head_options(self) -> dict[str, Any]:
        return {}


def _read_meta(directory: Path) -> dict:
    f = directory / _CONFIG_NAME
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None


def _is_hf_model(obj: Any) -> bool:
    return getattr(getattr(obj, "config", None), "model_type", None) == "bridgetower"


def _encoder_of(source: nn.Module) -> nn.Module:
    from .model import BridgeTowerModel

    enc = getattr(source, "bridgetower", source)
    if not isinstance(enc, BridgeTowerModel):
        raise TypeError(
            "expected a BridgeTowerModel or a task model holding one as `bridgetower`, got "
            f"{type(source).__name__}"
        )
    return enc


def _load_vl(source: Any, strict: bool, overrides: dict) -> nn.Module:
    """A vision-language model of ours from any checkpoint source (the saved task class for
    our own directories, so every key is accounted for)."""
    from .model import BridgeTowerModel
    from .tasks import TASK_MODELS

    if isinstance(source, nn.Module):  # a transformers BridgeTower model
        return BridgeTowerModel.from_pretrained(source, strict=strict, **overrides)
    path = Path(source)
    cls = BridgeTowerModel
    if path.is_dir():
        meta = _read_meta(path)
        if meta.get("format") == _FORMAT:
            cls = TASK_MODELS.get(normalize_task_name(meta.get("task") or "base"), BridgeTowerModel)
    return cls.from_pretrained(source, strict=strict, **overrides)


# ---------------------------------------------------------------- the two models


class BridgeTowerForImageClassification(_UniModalClassifier):
    """The vision tower of a BridgeTower with the official CIFAR head (see the module doc).

    Args:
        config: the architecture (only ``config.vision`` is used).
        num_labels: classes.
        device, dtype: of the parameters.

    ``forward(pixel_values (B, 3, H, W), labels=None) -> ClassificationOutput`` with
    ``logits`` (B, num_labels), ``features`` the CLS token of the last vision layer after
    ``ln_post`` (B, W), and the cross-entropy ``loss`` when ``labels`` (B,) are given.
    """

    task_name = "image-cls"
    tower_name = "vision_model"
    batch_spec = BatchSpec(keys=("pixel_values", "labels"), image_keys=("pixel_values",))

    def __init__(self, config: BridgeTowerConfig, *, num_labels: int, device=None, dtype=None) -> None:
        super().__init__(config, num_labels=num_labels)
        self.vision_model = OpenCLIPVisionEncoder(config.vision, num_outputs=1, device=device, dtype=dtype)
        self.image_classifier = ImageClassificationHead(config.vision.width, num_labels, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.vision_model.reset_parameters()
        self.image_classifier.reset_parameters()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CLS token of the last vision layer after ``ln_post``: (B, W)."""
        return self.vision_model(pixel_values)[-1][:, 0]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ClassificationOutput:
        features = self.image_features(pixel_values)  # (B, W)
        logits = self.image_classifier(features)  # (B, C)
        loss = classification_loss(logits, labels) if labels is not None else None
        return ClassificationOutput(logits=logits, loss=loss, features=features)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"


class BridgeTowerForTextClassification(_UniModalClassifier):
    """The text tower of a BridgeTower with the RoBERTa classification head (the official GLUE
    recipe; see the module doc).  Sentence pairs are one sequence ``<s> A </s></s> B </s>``
    (the tokenizer's pair template), as in RoBERTa.

    Args:
        config: the architecture (only ``config.text`` is used).
        num_labels: classes; 1 = regression (MSE loss on ``logits[:, 0]``).
        dropout: of the head (default: the text tower's ``config.text.dropout``).
        device, dtype: of the parameters.

    ``forward(input_ids (B, L), attention_mask=None, labels=None) -> ClassificationOutput``
    with ``logits`` (B, num_labels) and ``features`` the ``<s>`` token of the last layer (B, H).
    """

    task_name = "text-cls"
    tower_name = "text_model"
    batch_spec = BatchSpec(keys=("input_ids", "attention_mask", "labels"))

    def __init__(
        self,
        config: BridgeTowerConfig,
        *,
        num_labels: int,
        dropout: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(config, num_labels=num_labels)
        self.text_model = TransformersTextEncoder(config.text, num_outputs=1, device=device, dtype=dtype)
        self.head_dropout = float(config.text.dropout if dropout is None else dropout)
        self.text_classifier = TextClassificationHead(
            config.text.hidden_size, num_labels, dropout=self.head_dropout, device=device, dtype=dtype
        )

    def _head_options(self) -> dict[str, Any]:
        return {"dropout": self.head_dropout}

    def reset_parameters(self) -> None:
        self.text_model.reset_parameters()
        self.text_classifier.reset_parameters()

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The ``<s>`` token of the last text layer: (B, H).  The input is checked as every
        text entry point checks it (ids in the vocabulary, length, empty texts)."""
        self.text_model.check_inputs(input_ids, attention_mask)
        return self.text_model(input_ids, attention_mask)[-1][:, 0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ClassificationOutput:
        features = self.text_features(input_ids, attention_mask)  # (B, H)
        logits = self.text_classifier(features)  # (B, C)
        loss = classification_loss(logits, labels) if labels is not None else None
        return ClassificationOutput(logits=logits, loss=loss, features=features)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}"


#: ``config.json`` task name -> class.
UNIMODAL_TASKS: dict[str, type[_UniModalClassifier]] = {
    "image-cls": BridgeTowerForImageClassification,
    "text-cls": BridgeTowerForTextClassification,
}
