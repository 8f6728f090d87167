"""Optional dependencies: import one, or raise an ``ImportError`` naming the extra to install.

``pip install bridgetower`` brings what every model needs; the packages of a few features
are extras (``pyproject.toml``, ``docs/install.md``)::

    arrow        pyarrow                  the official Arrow tables
    webdataset   webdataset, braceexpand  WebDataset shards, shard URL patterns
    plot         matplotlib               the curves plot of a training run
    tracking     tensorboard, wandb       --tracker tensorboard / wandb
    xformers     xformers                 the xformers attention backend (CUDA)
    augment      torchvision              RandAugment fine-tuning augmentation (--augment)
    search       faiss-cpu                the vector index of ``bridgetower index`` / ``search``

Each import site calls :func:`require` instead of a bare ``import``, so a missing package
fails with the same message everywhere: what needed it, and ``pip install
'bridgetower[EXTRA]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingOptionalDependency", "require"]

#: extra -> the packages it installs, by import name (`faiss` is the distribution `faiss-cpu`)
EXTRAS: dict[str, tuple[str, ...]] = {
    "arrow": ("pyarrow",),
    "augment": ("torchvision",),
    "plot": ("matplotlib",),
    "search": ("faiss",),
    "tracking": ("tensorboard", "wandb"),
    "webdataset": ("webdataset", "braceexpand"),
    "xformers": ("xformers",),
}


class MissingOptionalDependency(ImportError):
    """An optional package that a feature needs is not installed."""


def require(
    module: str,
    extra: str,
    *,
    needed_for: str,
    package: str | None = None,
    hint: str | None = None,
    error: type[ImportError] = MissingOptionalDependency,
) -> ModuleType:
    """Import and return ``module``; when it cannot be imported, raise ``error`` (an
    ``ImportError`` whose ``name`` is ``module``) saying that ``needed_for`` needs the package
    and that ``pip install 'bridgetower[extra]'`` installs it.

    Args:
        module: the (dotted) module to import.
        extra: the extra of ``pyproject.toml`` that installs it (a key of :data:`EXTRAS`).
        needed_for: what needs it, the start of the message.
        package: the package to name (default: the top-level name of ``module``).
        hint: another way out, appended as ``", or <hint>"``.
        error: the ``ImportError`` subclass to raise.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; valid: {sorted(EXTRAS)}")
    if not (isinstance(error, type) and issubclass(error, ImportError)):
        raise TypeError(f"error must be an ImportError subclass, got {error!r}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = package or module.split(".")[0]
        message = (
            f"{needed_for} needs the {package!r} package, which is not installed ({e}); "
            f"install it with `pip install 'bridgetower[{extra}]'` (or `pip install {package}`)"
        )
        if hint:
            message += f", or {hint}"
        raise error(message, name=module) from e
