"""``nn.Module`` s of BridgeTower, one concept per file, over the ops of :mod:`bridgetower.kernels`.

==================  ===========================================================================
module              holds
==================  ===========================================================================
``norm``            ``AddLayerNorm``: ``LayerNorm(x + residual)`` on the fused bridge-norm op
``dropout``         ``Dropout`` with cheap CPU masks
``attention``       ``MultiHeadAttention`` (and, for compatibility, the functional names)
``bridge``          the bridges between cross-modal layers, ``create_bridge``
``co_attention``    ``CoAttentionLayer``, ``CoAttentionFusion`` (incl. the CLS-only last layer)
``heads``           task heads (pooler, MLM, ITM, ITC, contrastive, VQA, NLVR2, SNLI-VE, IRTR)
``losses``          the loss of every task
==================  ===========================================================================
"""

# (the functional ``attention`` is not exported here: it would shadow the
# ``bridgetower.layers.attention`` submodule; it is ``bridgetower.kernels.attention``)
from ._compat import moved_names
from .attention import ATTENTION_BACKENDS, MultiHeadAttention, attention_math
from .bridge import BRIDGES, Bridge, bridge_names, create_bridge
from .co_attention import CoAttentionFusion, CoAttentionLayer
from .dropout import Dropout
from .heads import (
    ContrastiveHeads,
    IRTRHead,
    ITCHead,
    ITMHead,
    MLMHead,
    NLVR2Head,
    Pooler,
    SNLIVEHead,
    VQAHead,
)
from .losses import (
    contrastive_loss,
    irtr_loss,
    itc_loss,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)
from .norm import AddLayerNorm

__all__ = [
    "ATTENTION_BACKENDS",
    "AddLayerNorm",
    "BRIDGES",
    "Bridge",
    "CoAttentionFusion",
    "CoAttentionLayer",
    "ContrastiveHeads",
    "Dropout",
    "IRTRHead",
    "ITCHead",
    "ITMHead",
    "MLMHead",
    "MultiHeadAttention",
    "NLVR2Head",
    "Pooler",
    "SNLIVEHead",
    "VQAHead",
    "attention_math",
    "bridge_names",
    "contrastive_loss",
    "create_bridge",
    "irtr_loss",
    "itc_loss",
    "itm_loss",
    "mlm_loss",
    "nlvr2_loss",
    "snli_loss",
    "vqa_loss",
]


# The Hugging Face key tables moved to bridgetower.models.layer_keys (a layer holds no other
# library's names); the old import paths still resolve, with a DeprecationWarning.
__getattr__ = moved_names(__name__, "bridgetower.models.layer_keys", (
    "convert_hf_link_tower_state_dict",
    "hf_link_tower_key_map",
    "rename_hf_link_tower_key",
    "convert_hf_cross_layer_state_dict",
    "hf_cross_layer_key_map",
    "rename_hf_cross_layer_key",
), warn=True)
