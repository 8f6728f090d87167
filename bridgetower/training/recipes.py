"""Training recipes: the hyper-parameters of pretraining and of every fine-tuning task.

A recipe is a frozen dataclass; each tunable field is a *knob* declared once, with its help
text and its value domain (``kind``: ``"positive_int"``, ``"probability"``, ``"warmup"``
...).  The command line makes one flag per knob from that declaration
(:mod:`bridgetower.cli.common`), so adding a knob means adding one field here.

* :class:`PretrainRecipe` -- :data:`PRETRAIN_RECIPES` ``"official"`` (the published
  BridgeTower recipe, paper section 4.1 and the official code) and ``"demo"`` (the bundled
  demo, measured on a 2-core CPU; see :mod:`bridgetower.training.demo`).
* :class:`FinetuneRecipe` -- :data:`OFFICIAL_RECIPES` (the official
  ``scripts/ftfpt_base_*.sh``, ``run_cifar.py``, ``run_glue.py``) and
  :data:`SYNTHETIC_RECIPES` (short CPU runs of the tiny model on the bundled synthetic
  sets), one entry per registered task (:mod:`bridgetower.training.tasks`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OFFICIAL_RECIPES",
    "PRETRAIN_RECIPES",
    "SYNTHETIC_RECIPES",
    "UNIMODAL_OFFICIAL_RECIPES",
    "UNIMODAL_SYNTHETIC_RECIPES",
    "FinetuneRecipe",
    "PretrainRecipe",
    "knob",
    "knobs",
    "recipe_from_dict",
]


def knob(help: str, kind: str, default: Any = dataclasses.MISSING, *, pair: bool = False) -> Any:
    """A recipe field that is also a command-line flag: ``help`` (one line), ``kind`` (the
    value domain, a name of :data:`bridgetower.cli.common.VALUE_TYPES`), ``pair`` (two
    values, e.g. AdamW's betas)."""
    return dataclasses.field(default=default, metadata={"help": help, "kind": kind, "pair": pair})


def knobs(recipe_cls: type) -> list[dataclasses.Field]:
    """The fields of ``recipe_cls`` declared with :func:`knob`, in declaration order."""
    return [f for f in dataclasses.fields(recipe_cls) if "kind" in f.metadata]


def recipe_from_dict(recipe_cls: type, values: dict[str, Any]) -> Any:
    """A recipe from the dict a run recorded (pairs stored as lists become tuples again); a
    ``ValueError`` for fields this version does not know."""
    pairs = {f.name for f in knobs(recipe_cls) if f.metadata["pair"]}
    try:
        return recipe_cls(**{k: (tuple(v) if k in pairs and v is not None else v) for k, v in values.items()})
    except TypeError as e:
        raise ValueError(f"the recorded recipe does not fit {recipe_cls.__name__}: {e}") from None


class _Replace:
    def replace(self, **overrides: Any) -> Any:
        """A copy with the given fields changed (``None`` values keep the current one); an
        unknown field is a ``ValueError`` listing the valid ones."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; valid: {names}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[type-var]


# ------------------------------------------------------------------------------ pretraining


@dataclass(frozen=True)
class PretrainRecipe(_Replace):
    """Hyper-parameters of a pretraining run (``name``: which recipe they started from).

    ``warmup`` is a fraction of ``steps`` when < 1, else a number of steps.  ``clip`` 0
    disables gradient clipping.  ``attribute_mask_prob`` and ``text_negatives`` apply to
    the synthetic scenes only.
    """

    name: str = "official"
    lr: float = knob("peak learning rate of the uni-modal towers", "non_negative_float", 1e-5)
    betas: tuple[float, float] = knob("AdamW betas", "float", (0.9, 0.98), pair=True)
    eps: float = knob("AdamW eps", "non_negative_float", 1e-8)
    weight_decay: float = knob("AdamW weight decay (never on biases and LayerNorm weights)", "non_negative_float", 0.01)
    warmup: float | int = knob(
        "linear warm-up: a fraction of --steps if < 1, else a number of steps; then linear decay to 0", "warmup", 0.1
    )
    steps: int = knob("optimizer steps", "positive_int", 100_000)
    batch_size: int = knob("image-caption pairs per micro-batch", "positive_int", 64)
    grad_accum: int = knob(  # 64 x 64 = the published global batch of 4096
        "micro-batches per optimizer step (effective batch = batch size x this)", "positive_int", 64
    )
    clip: float = knob("gradient-norm clipping threshold (0 = off)", "non_negative_float", 0.0)  # the official trainer does not clip
    cross_modal_lr_mult: float = knob(
        "lr multiplier of the cross-modal (fusion, cross_modal_*) parameters", "non_negative_float", 5.0
    )
    head_lr_mult: float = knob("lr multiplier of the MLM / ITM / ITC heads", "non_negative_float", 5.0)
    mlm_prob: float = knob("MLM masking probability of a token", "probability", 0.15)
    attribute_mask_prob: float = knob(  # = mlm_prob: no boost
        "synthetic scenes only: masking probability of colour, shape and position words", "probability", 0.15
    )
    max_text_len: int = knob("captions are truncated to this many tokens", "positive_int", 50)
    mlm_weight: float = knob("weight of the MLM loss", "non_negative_float", 1.0)
    itm_weight: float = knob("weight of the ITM loss", "non_negative_float", 1.0)
    itc_weight: float = knob("weight of the ITC (contrastive) loss", "non_negative_float", 0.0)
    itm_negatives: float = knob("share of each batch paired with a wrong image for ITM", "probability", 0.5)
    text_negatives: float = knob(
        "synthetic scenes only: share of the ITM negatives replaced by the true image with its caption "
        "altered in one attribute (colour, shape or positions)", "probability", 0.0,
    )
    checkpoint_every: int = knob("write a checkpoint every N steps (0 = only at the end)", "non_negative_int", 1000)
    eval_every: int = knob(
        "held-out evaluation every N steps (demo data only; 0 = before and after only)", "non_negative_int", 0
    )
    log_every: int = knob("log the averaged metrics every N steps", "positive_int", 50)

    def knob_values(self) -> dict[str, Any]:
        """Every knob's value (the recipe without its name), as the run config records it."""
        return {f.name: getattr(self, f.name) for f in knobs(type(self))}


#: ``"official"``: the published BridgeTower pretraining recipe (paper section 4.1; official
#: code).  ``"demo"``: the demo's own settings (measured on a 2-core CPU).
PRETRAIN_RECIPES: dict[str, PretrainRecipe] = {"official": PretrainRecipe()}
PRETRAIN_RECIPES["demo"] = PRETRAIN_RECIPES["official"].replace(
    name="demo", lr=1e-3, warmup=100, steps=1400, batch_size=32, grad_accum=1, clip=1.0,
    cross_modal_lr_mult=1.0, head_lr_mult=1.0, attribute_mask_prob=0.5, itc_weight=1.0,
    text_negatives=0.5, checkpoint_every=700, eval_every=350, log_every=25,
)


# ------------------------------------------------------------------------------ fine-tuning


@dataclass(frozen=True)
class FinetuneRecipe(_Replace):
    """Hyper-parameters of a fine-tuning run.

    ``steps`` (when set) wins over ``epochs``; ``warmup`` is a fraction of the steps when a
    float < 1, else a number of steps.  ``image_size`` None keeps the pretrained model's.
    ``clip`` 0 disables gradient clipping.  ``false_texts``: IRTR false captions per image.
    """

    lr: float = knob("peak learning rate of the uni-modal towers", "positive_float")
    batch_size: int = knob("samples per optimizer step", "positive_int")
    epochs: float = knob("passes over the training data (ignored when --steps is given)", "positive_float")
    warmup: float | int = knob(
        "linear warm-up: a fraction of the steps if < 1, else a number of steps; then linear decay to 0", "warmup"
    )
    weight_decay: float = knob("AdamW weight decay (never on biases and LayerNorm weights)", "non_negative_float")
    head_lr_mult: float = knob("learning-rate multiplier of the task head", "positive_float")
    cross_modal_lr_mult: float = knob("learning-rate multiplier of the cross-modal (fusion) parameters", "positive_float")
    image_size: int | None = knob(
        "image side in pixels (position tables are resized; default: the pretrained model's)", "positive_int", None
    )
    betas: tuple[float, float] = knob("AdamW betas", "beta", (0.9, 0.98), pair=True)
    eps: float = knob("AdamW eps", "positive_float", 1e-8)
    max_text_len: int = knob("texts are truncated to this many tokens", "positive_int", 50)
    clip: float = knob("gradient-norm clipping threshold (0 = off)", "non_negative_float", 0.0)
    false_texts: int = knob("irtr: false captions ranked against each image's true one", "positive_int", 15)
    steps: int | None = knob("optimizer steps (overrides --epochs)", "positive_int", None)


#: The published base-model fine-tuning recipes (official ``scripts/ftfpt_base_*.sh``):
#: learning rate, global batch, epochs, warm-up fraction, weight decay, head and cross-modal
#: lr multipliers, image size.  The uni-modal tasks (added by :mod:`~bridgetower.training.tasks`)
#: take :data:`UNIMODAL_OFFICIAL_RECIPES`.
OFFICIAL_RECIPES: dict[str, FinetuneRecipe] = {
    "vqa": FinetuneRecipe(lr=1e-5, batch_size=512, epochs=10, warmup=0.06, weight_decay=0.05,
                          head_lr_mult=50, cross_modal_lr_mult=5, image_size=576),
    "nlvr2": FinetuneRecipe(lr=5e-6, batch_size=64, epochs=10, warmup=0.1, weight_decay=0.008,
                            head_lr_mult=10, cross_modal_lr_mult=5, image_size=384),
    "snli-ve": FinetuneRecipe(lr=3e-6, batch_size=64, epochs=5, warmup=0.06, weight_decay=0.01,
                              head_lr_mult=10, cross_modal_lr_mult=5, image_size=384),
    "irtr": FinetuneRecipe(lr=1.1e-5, batch_size=2048, epochs=20, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=5, cross_modal_lr_mult=5, image_size=384, false_texts=15),
}

#: Short runs of the tiny model on the bundled synthetic sets (2-core CPU, about a minute;
#: NLVR2-style about four).
SYNTHETIC_RECIPES: dict[str, FinetuneRecipe] = {
    "vqa": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                          head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    # 600 steps: two images per item and a binary label; in 200 steps neither the pretrained
    # nor the scratch model gets past chance (docs/downstream.md)
    "nlvr2": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=600, warmup=0.1, weight_decay=0.01,
                            head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    "snli-ve": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                              head_lr_mult=10, cross_modal_lr_mult=5, clip=1.0),
    "irtr": FinetuneRecipe(lr=2e-4, batch_size=8, epochs=1, steps=150, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=5, cross_modal_lr_mult=5, clip=1.0, false_texts=7),
}

#: The official uni-modal recipes: CIFAR (``run_cifar.py``: AdamW lr 2e-5, swept 1e-5 / 2e-5,
#: batch 512, 10 epochs, 6% warm-up, image 224) and GLUE (``run_glue.py``: lr 1e-5, batch 32,
#: eps 1e-6, weight decay 0.1, 10 epochs, 6% warm-up, max length 512).  The official runs use
#: one learning rate for every parameter (multipliers 1).
UNIMODAL_OFFICIAL_RECIPES: dict[str, FinetuneRecipe] = {
    "image": FinetuneRecipe(lr=2e-5, batch_size=512, epochs=10, warmup=0.06, weight_decay=0.01,
                            head_lr_mult=1, cross_modal_lr_mult=1, image_size=224, eps=1e-8),
    "text": FinetuneRecipe(lr=1e-5, batch_size=32, epochs=10, warmup=0.06, weight_decay=0.1,
                           head_lr_mult=1, cross_modal_lr_mult=1, eps=1e-6, max_text_len=512),
}

#: Short CPU runs of the tiny model on the synthetic uni-modal sets.
UNIMODAL_SYNTHETIC_RECIPES: dict[str, FinetuneRecipe] = {
    "image": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=200, warmup=0.1, weight_decay=0.01,
                            head_lr_mult=10, cross_modal_lr_mult=1, clip=1.0),
    "text": FinetuneRecipe(lr=2e-4, batch_size=32, epochs=1, steps=300, warmup=0.1, weight_decay=0.01,
                           head_lr_mult=10, cross_modal_lr_mult=1, clip=1.0),
}
