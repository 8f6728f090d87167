"""``argparse`` value types shared by every sub-command: numbers with a lower bound, and
probabilities, each rejecting bad text with a message that names it."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_float", "non_negative_int", "positive_float", "positive_int", "probability"]


def _bounded(text: str, cast: type, *, minimum: float, strict: bool, what: str):
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if (v <= minimum) if strict else (v < minimum):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return v


def positive_int(text: str) -> int:
    return _bounded(text, int, minimum=1, strict=False, what="a positive integer")


def non_negative_int(text: str) -> int:
    return _bounded(text, int, minimum=0, strict=False, what="an integer >= 0")


def positive_float(text: str) -> float:
    return _bounded(text, float, minimum=0.0, strict=True, what="a number > 0")


def non_negative_float(text: str) -> float:
    return _bounded(text, float, minimum=0.0, strict=False, what="a number >= 0")


def probability(text: str) -> float:
    v = non_negative_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return v
