"""The bridge mode table: the one place that says what each ``bridge_norm`` mode computes.

``bridge_norm(x, z, ..., mode=name)`` computes ``LayerNorm(a*x + b*z)``; the mode fixes
``(a, b)`` from a learnable coefficient ``coef``:

====================== ====== =========== ============ ======================= ==========
mode                   kernel per channel coef shape   (a, b)                  parameter
====================== ====== =========== ============ ======================= ==========
``add``                0      --          none         (1, 1)                  --
``scaled_add``         1      no          ``()``       (coef, 1)               scale = 1.0
``interpolate``        2      no          ``()``       (1 - coef, coef)        beta = 0.5
``scaled_add_tensor``  1      yes         ``(D,)``     (coef, 1)               scale = 1.0
``interpolate_tensor`` 2      yes         ``(D,)``     (1 - coef, coef)        beta = 0.5
====================== ====== =========== ============ ======================= ==========

*kernel* is the ``MODE`` constexpr of the Triton kernels; *parameter* the name and initial
value of the coefficient in the bridge layers (``bridgetower.layers.bridge``), named as in
the Hugging Face port (``scaled_factor`` there is renamed to ``scale`` on load). The
reference implementation, the Triton launchers, the input validation of ``bridge_norm`` and
the coefficient bridges all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BRIDGE_MODES", "BRIDGE_NORM_MODES", "BridgeMode", "bridge_mode"]


@dataclass(frozen=True)
class BridgeMode:
    """One row of the mode table (see the module docstring)."""

    name: str
    code: int  # kernel MODE: 0 add (a=b=1), 1 scaled (a=coef, b=1), 2 interpolate (a=1-coef, b=coef)
    per_channel: bool  # coef has shape (D,) instead of ()
    coef_name: str | None  # parameter name in the bridge layers; None: no coefficient
    coef_init: float | None  # its initial value

    @property
    def has_coef(self) -> bool:
        return self.coef_name is not None

    def coef_shape(self, dim: int) -> tuple[int, ...] | None:
        """Shape of ``coef`` for features of width ``dim`` (None: this mode takes none)."""
        if not self.has_coef:
            return None
        return (dim,) if self.per_channel else ()

    def coefficients(
        self, coef: torch.Tensor | None
    ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(a, b)`` of ``s = a*x + b*z`` (differentiable in ``coef``)."""
        if self.code == 0:
            return 1.0, 1.0
        if self.code == 1:
            return coef, 1.0
        return 1.0 - coef, coef


BRIDGE_MODES: dict[str, BridgeMode] = {
    m.name: m
    for m in (
        BridgeMode("add", 0, False, None, None),
        BridgeMode("scaled_add", 1, False, "scale", 1.0),
        BridgeMode("interpolate", 2, False, "beta", 0.5),
        BridgeMode("scaled_add_tensor", 1, True, "scale", 1.0),
        BridgeMode("interpolate_tensor", 2, True, "beta", 0.5),
    )
}
"""Mode name -> :class:`BridgeMode`."""

BRIDGE_NORM_MODES: tuple[str, ...] = tuple(BRIDGE_MODES)
"""The valid ``mode`` names of ``bridge_norm``."""


def bridge_mode(name: str) -> BridgeMode:
    """The table row of ``name``; ``ValueError`` listing the valid modes if there is none."""
    mode = BRIDGE_MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise ValueError(
            f"unknown bridge_norm mode {name!r}; valid modes: {', '.join(BRIDGE_NORM_MODES)}"
        )
    return mode
