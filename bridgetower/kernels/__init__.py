"""Ops with hand-written kernels or backward passes, each beside its pure-PyTorch reference.

==============================  ===========================================================
module                          holds
==============================  ===========================================================
``dispatch``                    the backend-dispatch protocol shared by the ops below
``modes``                       the bridge mode table (name -> coefficients, kernel code)
``reference``                   pure-PyTorch ``bridge_norm_ref`` / ``bridge_norm_eager``
``fused_bridge_norm``           ``bridge_norm()``, ``BridgeNormFn``, its backends (Triton lazy)
``bridge_norm_triton``          the ``@triton.jit`` kernels and ops, imported on first use
``attention_backends``          ``attention()`` and its math / sdpa / chunked / xformers
``fused_mlp``                   ``act_linear``, ``layer_norm_linear``, ``quick_gelu``
``dropout_mask``                ``random_keep_mask`` (16-bit CPU dropout masks)
``collectives``                 ``all_gather_with_grad`` (ITC across ranks; not imported here)
==============================  ===========================================================

Importing this package imports no Triton (see :mod:`.fused_bridge_norm`).
"""

from .attention_backends import (
    ATTENTION_BACKENDS,
    AttentionCall,
    attention,
    attention_math,
    available_attention_backends,
    check_attention_backend,
    select_attention_backend,
)
from .dropout_mask import random_keep_mask
from .fused_bridge_norm import (
    BRIDGE_NORM_BACKENDS,
    MAX_FUSED_ROW_BYTES,
    BridgeNormFn,
    bridge_norm,
    bridge_norm_backend_reasons,
    check_bridge_norm_backend,
    select_bridge_norm_backend,
)
from .fused_mlp import ACTIVATIONS, act_linear, check_activation, layer_norm_linear, quick_gelu
from .modes import BRIDGE_MODES, BRIDGE_NORM_MODES, BridgeMode
from .reference import bridge_norm_eager, bridge_norm_ref

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_BACKENDS",
    "AttentionCall",
    "BRIDGE_MODES",
    "BRIDGE_NORM_BACKENDS",
    "BRIDGE_NORM_MODES",
    "BridgeMode",
    "BridgeNormFn",
    "MAX_FUSED_ROW_BYTES",
    "act_linear",
    "attention",
    "attention_math",
    "available_attention_backends",
    "bridge_norm",
    "bridge_norm_backend_reasons",
    "bridge_norm_eager",
    "bridge_norm_ref",
    "check_activation",
    "check_attention_backend",
    "check_bridge_norm_backend",
    "layer_norm_linear",
    "quick_gelu",
    "random_keep_mask",
    "select_attention_backend",
    "select_bridge_norm_backend",
]
