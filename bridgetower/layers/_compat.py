"""Old import paths of names that moved out of a layers module: a module ``__getattr__``
that resolves them from their new home on first use (nothing is imported before)."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def moved_names(module: str, target: str, names: Iterable[str], *, warn: bool) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that serves ``names`` from ``target``
    (with a ``DeprecationWarning`` when ``warn``)."""
    moved = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if warn:
            warnings.warn(f"{module}.{name} moved to {target}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(target), name)

    return __getattr__
