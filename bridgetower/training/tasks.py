"""The fine-tuning task registry: one :class:`TaskSpec` per task in :data:`TASKS`.

A task names its model class, its objective (:mod:`~bridgetower.training.task_objectives`),
how to build its data (the synthetic scene sets of :mod:`bridgetower.data.downstream` /
:mod:`bridgetower.data.unimodal`, or the official pyarrow tables of
:mod:`bridgetower.data.arrow`), its collate function and how its model is built.  Its
recipes are in :data:`~bridgetower.training.recipes.OFFICIAL_RECIPES` /
:data:`~bridgetower.training.recipes.SYNTHETIC_RECIPES` under the same name.

Registered here:

===================== ============================================== =========================
task                  synthetic data                                 model
===================== ============================================== =========================
``vqa``               questions on colour, shape, count, position    VQA head over an answer
                                                                     vocabulary
``nlvr2``             a statement about two scenes, true or false    two-image classifier
``snli-ve``           hypotheses: contradiction / neutral / entail   3-way classifier
``irtr``              captions with false captions                   ranking head
``image-cls``         single-object scenes, label = shape (3)        vision tower + linear head
``image-cls-colour``  single-object scenes, label = colour (6)       vision tower + linear head
``text-cls``          "does it mention a red object" (2)             text tower + RoBERTa head
``text-cls-pair``     "do A and B describe the same scene" (2)       text tower + RoBERTa head
===================== ============================================== =========================

Task names are spelled with hyphens; :func:`get_task` also accepts underscores
(``"snli_ve"``).  Add a task with :func:`register_task`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .recipes import (
    OFFICIAL_RECIPES,
    SYNTHETIC_RECIPES,
    UNIMODAL_OFFICIAL_RECIPES,
    UNIMODAL_SYNTHETIC_RECIPES,
)
from .task_models import build_unimodal_model
from .task_objectives import (
    ImageClassificationObjective,
    IRTRObjective,
    NLVR2Objective,
    SNLIVEObjective,
    TextClassificationObjective,
    VQAObjective,
)

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "TaskSpec",
    "UniModalTaskSpec",
    "canonical_task_name",
    "get_task",
    "register_task",
    "register_unimodal_tasks",
]


@dataclass
class TaskSpec:
    """Everything :func:`~bridgetower.training.finetune.finetune` needs to know about a task.

    Attributes:
        name: the CLI name (``bridgetower finetune NAME``), hyphenated.
        model_cls: the task model class.
        objective: a zero-argument factory of the objective (``metric`` attribute: the key of
            the held-out metric in its metrics).
        synthetic: ``synthetic(size, *, seed, transform, tokenizer, max_length, recipe, config)`` ->
            a map-style dataset of the bundled scenes, or ``None``.
        arrow: ``arrow(paths, *, transform, tokenizer, max_length, recipe, num_answers)`` -> an
            official-table dataset, or ``None``.
        collate: ``collate(tokenizer, max_length, recipe)`` -> the collate function.
        config_overrides: ``config_overrides(num_answers)`` -> model config overrides.
        init_from_source: ``init_from_source(model, source_model)`` after the encoder copy
            (e.g. the IRTR head from the ITM head), or ``None``.
        description: one line for ``--help``.
        build_model: ``build_model(*, pretrained, config, vocab_size, image_size, num_answers)``
            -> ``(model, report)`` replacing the vision-language encoder copy (e.g. a model
            with one tower), or ``None``.
    """

    name: str
    model_cls: type
    objective: Callable[[], Callable]
    synthetic: Callable[..., Any] | None
    arrow: Callable[..., Any] | None
    collate: Callable[..., Callable]
    config_overrides: Callable[[int | None], dict] = field(default=lambda num_answers: {})
    init_from_source: Callable[[nn.Module, nn.Module], None] | None = None
    description: str = ""
    build_model: Callable[..., tuple[nn.Module, dict]] | None = None


@dataclass
class UniModalTaskSpec(TaskSpec):
    """A :class:`TaskSpec` whose model holds one tower (its ``build_model`` replaces the
    encoder copy of the vision-language tasks); ``num_labels`` is the head size."""

    num_labels: int = 2


TASKS: dict[str, TaskSpec] = {}


def canonical_task_name(name: str) -> str:
    """The registry spelling of a task name: hyphens, not underscores (``snli_ve`` -> ``snli-ve``)."""
    if not isinstance(name, str):
        raise TypeError(f"a task name is a str, got {type(name).__name__}")
    return name.replace("_", "-")


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (``overwrite`` to replace an existing name)."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    if spec.name != canonical_task_name(spec.name):
        raise ValueError(f"task names are spelled with hyphens: {canonical_task_name(spec.name)!r}, not {spec.name!r}")
    if spec.name in TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered (pass overwrite=True to replace it)")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown name is a ``ValueError`` listing the tasks."""
    key = canonical_task_name(name)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    return TASKS[key]


# ------------------------------------------------------------------------------ builders
# (data modules are imported on use: registering the tasks loads no data code)


def _scene_set(cls_name: str, **extra: Callable[[Any], Any]):
    """``synthetic`` of a scene set of :mod:`bridgetower.data.downstream`; ``extra`` values are
    functions of the recipe (e.g. the IRTR false-text count)."""

    def build(size, *, seed, transform, tokenizer, max_length, recipe, config=None):
        from ..data import downstream

        kw = {k: v(recipe) for k, v in extra.items()}
        return getattr(downstream, cls_name)(size, seed=seed, config=config, transform=transform,
                                             tokenizer=tokenizer, max_length=max_length, **kw)

    return build


def _table_set(cls_name: str, *, answers: bool = False):
    """``arrow`` of an official-table dataset of :mod:`bridgetower.data.arrow`."""

    def build(paths, *, transform, tokenizer, max_length, recipe, num_answers=None):
        from ..data import arrow

        kw = {"num_answers": num_answers} if answers else {}
        return getattr(arrow, cls_name)(paths, transform=transform, tokenizer=tokenizer, max_length=max_length, **kw)

    return build


def _irtr_tables(paths, *, transform, tokenizer, max_length, recipe, num_answers=None):
    from ..data.arrow import ArrowRetrievalDataset
    from ..data.downstream import InStreamFalseTexts

    base = ArrowRetrievalDataset(paths, transform=transform, tokenizer=tokenizer, max_length=max_length)
    return InStreamFalseTexts(base, num_false_texts=recipe.false_texts)


def _pair_collate(tokenizer, max_length, recipe):
    from ..data import PretrainingCollator, TaskCollator

    return TaskCollator(PretrainingCollator.from_tokenizer(tokenizer, max_length=max_length))


def _irtr_collate(tokenizer, max_length, recipe):
    from ..data.downstream import IRTRCollator

    return IRTRCollator(tokenizer.pad_token_id)


def _init_irtr(model: nn.Module, source: nn.Module) -> None:
    from ..models import BridgeTowerForIRTR

    itm = getattr(source, "itm_score", None)
    if itm is not None and not isinstance(source, BridgeTowerForIRTR):
        model.init_from_itm(itm)
        logger.info("IRTR ranking head initialised from the ITM head's match row")


def _image_set(attribute: str):
    def build(size, *, seed, transform, tokenizer=None, max_length=50, recipe=None, config=None):
        from ..data.unimodal import SceneImageClassification

        return SceneImageClassification(size, seed=seed, attribute=attribute, config=config, transform=transform)

    return build


def _text_set(pair: bool):
    def build(size, *, seed, transform=None, tokenizer, max_length, recipe=None, config=None):
        from ..data.unimodal import CaptionMentionDataset, CaptionPairDataset

        cls = CaptionPairDataset if pair else CaptionMentionDataset
        return cls(size, seed=seed, config=config, tokenizer=tokenizer, max_length=max_length)

    return build


def _image_collate(tokenizer, max_length, recipe):
    from ..data.unimodal import ImageClassificationCollator

    return ImageClassificationCollator()


def _text_collate(tokenizer, max_length, recipe):
    from ..data.unimodal import TextClassificationCollator

    return TextClassificationCollator(tokenizer.pad_token_id)


def _unimodal_builder(model_cls: type, num_labels: int):
    def build(*, pretrained=None, config=None, vocab_size=None, image_size=None, num_answers=None):
        return build_unimodal_model(
            model_cls, num_labels, pretrained=pretrained, config=config, vocab_size=vocab_size, image_size=image_size
        )

    return build


def _unimodal_spec(name: str, *, model_cls: type, num_labels: int, **kw: Any) -> UniModalTaskSpec:
    return UniModalTaskSpec(name=name, model_cls=model_cls, arrow=None, num_labels=num_labels,
                            build_model=_unimodal_builder(model_cls, num_labels), **kw)


def _register_pair_tasks() -> None:
    from ..models import (
        BridgeTowerForIRTR,
        BridgeTowerForNLVR2,
        BridgeTowerForSNLIVE,
        BridgeTowerForVisualQuestionAnswering,
    )

    pair_tasks = [
        TaskSpec("vqa", BridgeTowerForVisualQuestionAnswering, VQAObjective, synthetic=_scene_set("SceneVQADataset"),
                 arrow=_table_set("ArrowVQADataset", answers=True), collate=_pair_collate,
                 config_overrides=lambda num_answers: {"vqa_num_labels": num_answers} if num_answers else {},
                 description="visual question answering: soft-score BCE over an answer vocabulary"),
        TaskSpec("nlvr2", BridgeTowerForNLVR2, NLVR2Objective, synthetic=_scene_set("SceneNLVR2Dataset"),
                 arrow=_table_set("ArrowNLVR2Dataset"), collate=_pair_collate,
                 description="a statement about two images, true or false (image token types 1 and 2)"),
        TaskSpec("snli-ve", BridgeTowerForSNLIVE, SNLIVEObjective, synthetic=_scene_set("SceneSNLIVEDataset"),
                 arrow=_table_set("ArrowSNLIVEDataset"), collate=_pair_collate,
                 description="visual entailment: contradiction / neutral / entailment of a hypothesis"),
        TaskSpec("irtr", BridgeTowerForIRTR, IRTRObjective,
                 synthetic=_scene_set("SceneIRTRDataset", num_false_texts=lambda r: r.false_texts),
                 arrow=_irtr_tables, collate=_irtr_collate, init_from_source=_init_irtr,
                 description="image-text retrieval ranking: each image against its caption and K false ones"),
    ]
    for spec in pair_tasks:
        register_task(spec, overwrite=True)


def register_unimodal_tasks(*, overwrite: bool = False) -> list[str]:
    """Register ``image-cls``, ``image-cls-colour``, ``text-cls`` and ``text-cls-pair`` with
    their recipes (:data:`~bridgetower.training.recipes.UNIMODAL_OFFICIAL_RECIPES` /
    ``UNIMODAL_SYNTHETIC_RECIPES``); returns the names registered.  Done on import; names
    already registered are left alone unless ``overwrite``."""
    from ..data.scenes import COLOURS, SHAPES
    from ..models import BridgeTowerForImageClassification, BridgeTowerForTextClassification

    img, txt = BridgeTowerForImageClassification, BridgeTowerForTextClassification
    image = {"model_cls": img, "objective": ImageClassificationObjective, "collate": _image_collate}
    text = {"model_cls": txt, "objective": TextClassificationObjective, "collate": _text_collate, "num_labels": 2}
    specs = [
        (_unimodal_spec("image-cls", num_labels=len(SHAPES), synthetic=_image_set("shape"), **image,
                        description="vision tower + linear head (official CIFAR recipe); synthetic: shape of one object"),
         "image"),
        (_unimodal_spec("image-cls-colour", num_labels=len(COLOURS), synthetic=_image_set("colour"), **image,
                        description="as image-cls; synthetic: colour of one object"), "image"),
        (_unimodal_spec("text-cls", synthetic=_text_set(pair=False), **text,
                        description="text tower + RoBERTa head (official GLUE recipe); synthetic: a red object mentioned?"),
         "text"),
        (_unimodal_spec("text-cls-pair", synthetic=_text_set(pair=True), **text,
                        description="as text-cls, sentence pairs: do captions A and B describe the same scene?"), "text"),
    ]
    names = []
    for spec, kind in specs:
        if spec.name in TASKS and not overwrite:
            continue
        register_task(spec, overwrite=overwrite)
        OFFICIAL_RECIPES[spec.name] = UNIMODAL_OFFICIAL_RECIPES[kind]
        SYNTHETIC_RECIPES[spec.name] = UNIMODAL_SYNTHETIC_RECIPES[kind]
        names.append(spec.name)
    return names


_register_pair_tasks()
register_unimodal_tasks()
