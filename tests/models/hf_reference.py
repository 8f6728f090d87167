"""Shared by the tests that compare with ``transformers``' BridgeTower: tiny random HF configs,
models with perturbed weights (no LayerNorm is the identity, no bias zero) and padded batches."""

from __future__ import annotations

import torch
import transformers

from bridgetower.models import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
)

#: task -> (the transformers class, ours)
PAIRS = {
    "base": (transformers.BridgeTowerModel, BridgeTowerModel),
    "itm": (transformers.BridgeTowerForImageAndTextRetrieval, BridgeTowerForImageAndTextRetrieval),
    "mlm": (transformers.BridgeTowerForMaskedLM, BridgeTowerForMaskedLM),
    "contrastive": (transformers.BridgeTowerForContrastiveLearning, BridgeTowerForContrastiveLearning),
}



def hf_config(hidden=64, heads=4, text_layers=3, vision_layers=3, cross=2, link="add", vision_width=None, image=32,
              **vision_extra):
    # contrastive_hidden_size / logit_scale_init_value: HF's config has no defaults for them
    return transformers.BridgeTowerConfig(
        hidden_size=hidden,
        num_hidden_layers=cross,
        num_attention_heads=heads,
        link_tower_type=link,
        contrastive_hidden_size=32,
        logit_scale_init_value=2.6592,
        text_config=dict(
            vocab_size=99, hidden_size=hidden, num_hidden_layers=text_layers, num_attention_heads=heads,
            intermediate_size=2 * hidden, max_position_embeddings=40,
        ),
        vision_config=dict(
            hidden_size=vision_width or hidden, num_hidden_layers=vision_layers, patch_size=16, image_size=image,
            **vision_extra,
        ),
    )


def perturbed(cls, config):
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.ndim else 0.2))
    return model


def batch(b=3, length=10, image=32, vocab=99):
    ids = torch.randint(3, vocab, (b, length))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 1
    ids[:, 0] = 0
    return ids, mask, torch.randn(b, 3, image, image)
