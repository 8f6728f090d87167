"""Checkpoint conversion: Hugging Face <-> ours, official ``.ckpt`` -> ours, and our format.

Everything is a pure function over state dicts driven by explicit rename tables; the loaders
then check shapes, load with ``strict`` semantics and report what did not match
(:class:`LoadReport`, also logged) instead of dropping it silently.

Three formats:

* **ours** (default of ``save_pretrained``): a directory with ``config.json``
  (``{"format": "bridgetower", "task": ..., "config": <BridgeTowerConfig>}``) and
  ``model.safetensors`` holding our parameter names.
* **Hugging Face** ``transformers`` BridgeTower: ``config.json`` (``model_type
  "bridgetower"``) + ``model.safetensors`` (or ``pytorch_model.bin``, read with
  ``torch.load(weights_only=True)``); also a hub name (needs network) or an in-memory
  ``transformers`` model.  Written back by ``save_pretrained(dir, format="hf")``.
* **official** BridgeTower (Lightning ``.ckpt`` whose ``state_dict`` holds the official
  module names, read with ``torch.load(weights_only=True)``, or a ``.safetensors`` state dict),
  with the official ``config.json`` (``bt_config`` ...) beside it or passed in.

Modules: :mod:`.keys` (every rename table), :mod:`.configs` (config translation),
:mod:`.io` (validated file reading), :mod:`.adapt` (the one weight copy with shape
adaptation), :mod:`.load` and :mod:`.save`.
"""

from .adapt import WeightCopyReport, adapt_tensor, copy_weights
from .configs import config_from_hf, config_from_official, config_to_hf
from .io import LazyTensor, hf_weights_in, read_safetensors_lazy, read_state_dict
from .keys import (
    ConvertedStateDict,
    convert_hf_state_dict,
    convert_official_state_dict,
    convert_to_hf_state_dict,
)
from .load import (
    LOAD_KEYWORDS,
    LoadReport,
    load_converted_state_dict,
    load_official_checkpoint,
    load_pretrained,
)
from .save import push_to_hub, save_pretrained, write_weights
from .sources import HubOptions, looks_local, read_weights

__all__ = [
    "LOAD_KEYWORDS",
    "ConvertedStateDict",
    "HubOptions",
    "LazyTensor",
    "LoadReport",
    "WeightCopyReport",
    "adapt_tensor",
    "config_from_hf",
    "config_from_official",
    "config_to_hf",
    "convert_hf_state_dict",
    "convert_official_state_dict",
    "convert_to_hf_state_dict",
    "copy_weights",
    "hf_weights_in",
    "load_converted_state_dict",
    "load_official_checkpoint",
    "load_pretrained",
    "looks_local",
    "push_to_hub",
    "read_safetensors_lazy",
    "read_state_dict",
    "read_weights",
    "save_pretrained",
    "write_weights",
]
