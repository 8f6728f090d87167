"""Backend dispatch by declared capability, shared by every op with several implementations.

An op (``bridge_norm``, ``attention``) has a priority-ordered list of :class:`Backend`
objects. Each backend declares what it supports by listing, for a given call, the reasons it
cannot run it:

* :meth:`Backend.unsupported_reasons`: hard limits (wrong device or dtype, a row wider than
  the kernel's block, a feature the implementation lacks). A forced backend with such a
  reason is refused.
* :meth:`Backend.auto_skip_reasons`: soft preferences. The backend could run the call but
  automatic dispatch should prefer a later one (e.g. it would fall back to an
  ``O(L^2)``-memory kernel). A forced backend ignores them.

:func:`select_backend` walks the list and takes the first backend with no reason of either
kind (the last backend of every op always fits); a forced name is checked and, if it does not
fit, refused with ONE ``ValueError`` that lists every reason. Automatic fallbacks are logged
once per distinct message at ``DEBUG``. Nothing global is switched: the choice is per call.

``call`` is whatever the op uses to describe one invocation (a tensor for ``bridge_norm``,
an :class:`~bridgetower.kernels.attention_backends.AttentionCall` for ``attention``); the
dispatcher only hands it to the backends and to ``describe``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Backend", "backend_reasons", "check_backend_name", "select_backend"]

logger = logging.getLogger(__name__)


class Backend:
    """One implementation of an op and the inputs it declares it supports.

    Subclasses set ``name`` and override :meth:`unsupported_reasons` (and, for soft
    preferences, :meth:`auto_skip_reasons`); an empty list means "fits".
    """

    name: str = ""

    def unsupported_reasons(self, call: Any) -> list[str]:
        """Why this backend cannot run ``call`` (hard limits); ``[]`` when it can."""
        return []

    def auto_skip_reasons(self, call: Any) -> list[str]:
        """Why automatic dispatch should prefer a later backend although this one could run."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _valid_names(backends: Sequence[Backend]) -> str:
    return "None (automatic), " + ", ".join(repr(b.name) for b in backends)


def check_backend_name(op: str, backends: Sequence[Backend], name: str | None) -> None:
    """Raise ``ValueError`` unless ``name`` is None or the name of one of ``backends``."""
    if name is None:
        return
    for b in backends:
        if b.name == name:
            return
    raise ValueError(f"unknown {op} backend {name!r}; valid: {_valid_names(backends)}")


def backend_reasons(backends: Sequence[Backend], call: Any, *, hard_only: bool = False
                    ) -> dict[str, list[str]]:
    """For each backend, in priority order, why it would not be chosen for ``call``
    (``[]`` = it would run). ``hard_only`` leaves out the soft auto-skip reasons."""
    return {
        b.name: b.unsupported_reasons(call) + ([] if hard_only else b.auto_skip_reasons(call))
        for b in backends
    }


@functools.lru_cache(maxsize=256)
def _log_once(message: str) -> None:
    logger.debug(message)


def select_backend(
    op: str,
    backends: Sequence[Backend],
    call: Any,
    forced: str | None,
    describe: Callable[[Any], str],
) -> Backend:
    """The backend that runs ``call``: the forced one (checked) or the first that fits.

    Args:
        op: the op's name, for messages (``"bridge_norm"``, ``"attention"``).
        backends: candidates in priority order; the last must fit every call.
        call: the description of this invocation handed to the backends.
        forced: None for automatic dispatch, else the name of the backend to use.
        describe: ``call -> str`` for messages (shapes, dtype, device ...).

    Raises:
        ValueError: ``forced`` is not a backend name, or that backend cannot run ``call``
            (the message lists every reason).
    """
    check_backend_name(op, backends, forced)
    if forced is not None:
        for chosen in backends:
            if chosen.name == forced:
                reasons = chosen.unsupported_reasons(call)
                if reasons:
                    raise ValueError(f"{op} backend {forced!r} does not fit these inputs "
                                     f"({describe(call)}): " + "; ".join(reasons))
                return chosen
    skipped = []
    for cand in backends:
        reasons = cand.unsupported_reasons(call) + cand.auto_skip_reasons(call)
        if not reasons:
            if skipped and not torch.compiler.is_compiling():
                _log_once(f"{op}: using {cand.name!r} for {describe(call)}; skipped "
                          + "; ".join(f"{n}: {', '.join(r)}" for n, r in skipped))
            return cand
        skipped.append((cand.name, reasons))
    raise AssertionError(f"{op}: the last backend must fit every call")  # pragma: no cover
