"""Saving models: our format (safetensors + JSON config) or the Hugging Face format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..config import BridgeTowerConfig
from .configs import config_to_hf
from .keys import CONFIG_NAME, FORMAT_NAME, WEIGHTS_NAME, convert_to_hf_state_dict
from .load import encoder_prefix

logger = logging.getLogger(__name__)

__all__ = ["save_pretrained"]


_HF_ARCHITECTURES = {
    "base": ["BridgeTowerModel"],
    "itm": ["BridgeTowerForImageAndTextRetrieval"],
    "mlm": ["BridgeTowerForMaskedLM"],
    "contrastive": ["BridgeTowerForContrastiveLearning"],
    "pretraining": ["BridgeTowerForMaskedLM", "BridgeTowerForImageAndTextRetrieval"],
}


def save_pretrained(model: nn.Module, directory: str | Path, *, format: str = FORMAT_NAME) -> None:
    """Write ``model`` to ``directory`` in our format (default) or ``format="hf"``.

    The HF export writes only what ``transformers`` has: the encoder and the MLM, ITM and HF
    contrastive heads; the official ITC head of the pre-training model is left out (logged),
    models with downstream classifiers raise.  The text tower's pooler (unused by BridgeTower) is written as
    zeros so ``transformers`` loads without missing keys.
    """
    from safetensors.torch import save_file

    from ..tasks import task_name_of

    if format not in (FORMAT_NAME, "hf"):
        raise ValueError(f"format must be {FORMAT_NAME!r} or 'hf', got {format!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: BridgeTowerConfig = model.config
    task = task_name_of(type(model))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if format == FORMAT_NAME:
        save_file(sd, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {"format": FORMAT_NAME, "task": task, "config": config.to_dict()}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return
    if task not in _HF_ARCHITECTURES:
        raise ValueError(f"{type(model).__name__} has no transformers counterpart; save it in our format")
    prefix = encoder_prefix(type(model))
    converted = convert_to_hf_state_dict(sd, encoder_prefix=prefix, hf_prefix=prefix)
    itc_only = [k for k in converted.unknown if k.startswith("itc.")]
    if itc_only:
        logger.warning("HF format has no official ITC head; not exported: %s", itc_only)
    rest = [k for k in converted.unknown if not k.startswith("itc.")]
    if rest:
        raise ValueError(f"no HF names for: {rest}")
    out = converted.state_dict
    h = config.text.hidden_size
    ref = next(iter(out.values()))
    out[f"{prefix}text_model.pooler.dense.weight"] = torch.zeros(h, h, dtype=ref.dtype)
    out[f"{prefix}text_model.pooler.dense.bias"] = torch.zeros(h, dtype=ref.dtype)
    hf_config = config_to_hf(config, architectures=_HF_ARCHITECTURES[task])
    hf_config.save_pretrained(str(directory))
    save_file(out, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
