"""Construction-time argument checks shared by the layers (forward passes check nothing:
the ops they call validate their inputs once)."""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(who: str, **values: object) -> None:
    """``ValueError`` naming ``who`` and the argument unless each value is an int > 0
    (bools refused): ``check_positive_int("Pooler", hidden_size=768)``."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")
