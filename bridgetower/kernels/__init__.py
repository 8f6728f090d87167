"""Fused kernels (Triton) with their pure-PyTorch references."""

from .bridge_norm import (
    BRIDGE_NORM_BACKENDS,
    BridgeNormFn,
    bridge_norm,
    bridge_norm_backend_reasons,
    select_bridge_norm_backend,
)
from .reference import BRIDGE_NORM_MODES, bridge_norm_eager, bridge_norm_ref

__all__ = [
    "BRIDGE_NORM_BACKENDS",
    "BRIDGE_NORM_MODES",
    "BridgeNormFn",
    "bridge_norm",
    "bridge_norm_backend_reasons",
    "bridge_norm_eager",
    "bridge_norm_ref",
    "select_bridge_norm_backend",
]
