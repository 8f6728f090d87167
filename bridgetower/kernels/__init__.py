"""Fused kernels (Triton) with their pure-PyTorch references."""

from .bridge_norm import bridge_norm
from .reference import BRIDGE_NORM_MODES, bridge_norm_ref

__all__ = ["BRIDGE_NORM_MODES", "bridge_norm", "bridge_norm_ref"]
