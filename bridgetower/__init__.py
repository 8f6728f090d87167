"""bridgetower: BridgeTower vision-language models from reusable layers on fused kernels.

The model classes, the processor and :func:`create_model` are importable from the top level,
with the names of ``transformers`` (so the Hugging Face model card runs with only its import
line changed)::

    from bridgetower import BridgeTowerProcessor, BridgeTowerForImageAndTextRetrieval

They are imported on first use: ``import bridgetower`` alone loads neither torch nor
``transformers``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one source of the version: pyproject.toml reads it (``[tool.setuptools.dynamic]``), the
# ``bridgetower --version`` command prints it; CHANGELOG.md says what each release changed.
__version__ = "0.2.0.dev0"

# public name -> submodule that defines it (imported lazily by __getattr__)
_LAZY: dict[str, str] = {
    name: "bridgetower.models"
    for name in (
        "BridgeTowerConfig",
        "BridgeTowerContrastiveOutput",
        "BridgeTowerForContrastiveLearning",
        "BridgeTowerForIRTR",
        "BridgeTowerForImageAndTextRetrieval",
        "BridgeTowerForMaskedLM",
        "BridgeTowerForNLVR2",
        "BridgeTowerForPretraining",
        "BridgeTowerForSNLIVE",
        "BridgeTowerForVisualQuestionAnswering",
        "BridgeTowerModel",
        "BridgeTowerOutput",
        "BridgeTowerPretrainingOutput",
        "BridgeTowerProcessor",
        "ImageProcessor",
        "TaskOutput",
        "build_test_tokenizer",
        "build_wordlevel_tokenizer",
        "create_model",
        "get_config",
        "list_models",
        "register_config",
    )
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from .models import *  # noqa: F403


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridgetower' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
