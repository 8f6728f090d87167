"""Attention with a capability-based choice among four implementations.

:func:`attention` computes ``softmax(q k^T * scale + bias + pad) v`` on ``(B, H, L, Dh)``
tensors, for self-attention (``Lq == Lk``) and cross-attention (``Lq != Lk``), with

* a *key padding mask* ``(B, Lk)``, bool or integer, **True/1 = a real token**;
* an optional additive *attention bias* broadcastable to ``(B, H, Lq, Lk)``;
* dropout on the attention probabilities (``dropout_p``, pass 0 in eval).

A query row whose keys are all masked (by the padding mask, or ``-inf`` in the bias) gives
a zero output row and zero gradients, never NaN, whichever backend runs.

Backends, in the order the dispatcher tries them (the first that fits runs):

``xformers``
    ``xformers.ops.memory_efficient_attention`` (BMHK layout). CUDA only: xformers imports
    on a CPU machine but has no CPU operators, and a wheel built for another torch imports
    without working operators; both are detected (an import check, then one tiny probe
    call per device) and the backend refuses with the reason.
``sdpa``
    ``torch.nn.functional.scaled_dot_product_attention``. On CPU with ``dropout_p > 0`` it
    leaves its flash kernel for an ``O(Lq*Lk)``-memory math kernel, so automatic dispatch
    passes it over in that case (it can still be forced).
``chunked``
    Query-chunked attention, an ``autograd.Function`` that keeps only the row log-sum-exp
    and, in the backward, recomputes each chunk's probabilities and regenerates its
    dropout mask from a seed (the recompute idea of FlashAttention). Memory beyond the
    inputs and outputs is one chunk of ``(B, H, chunk, Lk)`` scores, so training memory
    grows linearly with the sequence length, with dropout, on any device.
``math``
    The explicit reference (:func:`attention_math`): materialises the ``(B, H, Lq, Lk)``
    probabilities. Always fits; last in priority.

Each backend declares what it supports and says *why* it does not fit given inputs
(:meth:`AttentionBackend.unsupported_reasons`, the protocol of
:mod:`bridgetower.kernels.dispatch`). ``backend="name"`` forces one: if it does not fit, a
``ValueError`` lists the reasons. Automatic fallbacks are logged once at ``DEBUG`` level.
Nothing global is switched: the choice is made per call.

One module per backend (``math.py``, ``sdpa.py``, ``chunked.py``, ``xformers.py``), the mask
helpers in ``masks.py``, the call description and backend interface in ``base.py``, and
the dispatch glue and the public entry point :func:`attention` in ``api.py``.
"""

from .api import (
    ATTENTION_BACKENDS,
    attention,
    available_attention_backends,
    check_attention_backend,
    select_attention_backend,
)
from .base import AttentionBackend, AttentionCall
from .chunked import (
    DROPOUT_MASK_KEEP_LIMIT,
    ChunkedBackend,
    chunked_dropout_keep_mask,
    default_chunk_size,
)
from .math import MathBackend, attention_math
from .sdpa import SDPABackend
from .xformers import XFormersBackend

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "AttentionCall",
    "ChunkedBackend",
    "DROPOUT_MASK_KEEP_LIMIT",
    "MathBackend",
    "SDPABackend",
    "XFormersBackend",
    "attention",
    "attention_math",
    "available_attention_backends",
    "check_attention_backend",
    "chunked_dropout_keep_mask",
    "default_chunk_size",
    "select_attention_backend",
]
