"""See docs/architecture.md."""

# (the functional ``attention`` stays in its module: exporting it here would shadow the
# ``bridgetower.layers.attention`` submodule)
from .attention import ATTENTION_BACKENDS, MultiHeadAttention, attention_math  # noqa: E402
from .bridge import BRIDGES, Bridge, bridge_names, create_bridge, hf_link_tower_key_map  # noqa: E402
from .co_attention import (  # noqa: E402
    CoAttentionFusion,
    CoAttentionLayer,
    convert_hf_cross_layer_state_dict,
    hf_cross_layer_key_map,
)
from .heads import (  # noqa: E402
    ContrastiveHeads,
    IRTRHead,
    ITCHead,
    ITMHead,
    MLMHead,
    NLVR2Head,
    Pooler,
    SNLIVEHead,
    VQAHead,
    contrastive_loss,
    irtr_loss,
    itc_loss,
    itm_loss,
    mlm_loss,
    nlvr2_loss,
    snli_loss,
    vqa_loss,
)
from .norm import AddLayerNorm  # noqa: E402

__all__ = [
    "ATTENTION_BACKENDS",
    "AddLayerNorm",
    "BRIDGES",
    "Bridge",
    "CoAttentionFusion",
    "CoAttentionLayer",
    "ContrastiveHeads",
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
    "convert_hf_cross_layer_state_dict",
    "create_bridge",
    "hf_cross_layer_key_map",
    "hf_link_tower_key_map",
    "irtr_loss",
    "itc_loss",
    "itm_loss",
    "mlm_loss",
    "nlvr2_loss",
    "snli_loss",
    "vqa_loss",
]
