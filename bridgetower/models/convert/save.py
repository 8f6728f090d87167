"""Saving models: our format (safetensors + JSON config) or the Hugging Face format, in one file
or in shards, with the processor beside the weights, and the upload to the Hub.

Both formats write ``preprocessor_config.json`` (the image size of the model's config) and,
when a tokenizer or processor is given (or the model was loaded from a local directory that
has tokenizer files), the tokenizer files: every export is a directory
``BridgeTowerProcessor.from_pretrained`` reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import BridgeTowerConfig
from .configs import config_to_hf
from .keys import CONFIG_NAME, FORMAT_NAME, WEIGHTS_NAME, convert_to_hf_state_dict
from .load import encoder_prefix

logger = logging.getLogger(__name__)

__all__ = ["TOKENIZER_FILES", "push_to_hub", "save_pretrained", "write_weights"]


_HF_ARCHITECTURES = {
    "base": ["BridgeTowerModel"],
    "itm": ["BridgeTowerForImageAndTextRetrieval"],
    "mlm": ["BridgeTowerForMaskedLM"],
    "contrastive": ["BridgeTowerForContrastiveLearning"],
    "pretraining": ["BridgeTowerForMaskedLM", "BridgeTowerForImageAndTextRetrieval"],
    # no transformers class: the encoder as transformers' BridgeTowerModel, the head beside it
    "vqa": ["BridgeTowerModel"],
    "snli-ve": ["BridgeTowerModel"],
    "irtr": ["BridgeTowerModel"],
}
#: Tokenizer files copied from the directory a model was loaded from (when no tokenizer is given).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "sentencepiece.bpe.model", "spiece.model",
)
_SHARD_PATTERN = "model{suffix}.safetensors"


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    format: str = FORMAT_NAME,
    max_shard_size: int | str = "5GB",
    safe_serialization: bool = True,
    processor: Any = None,
    tokenizer: Any = None,
) -> None:
    """Write ``model`` to ``directory`` in our format (default) or ``format="hf"``.

    The HF export writes what ``transformers`` has: the encoder and the MLM, ITM and HF
    contrastive heads; the official ITC head of the pre-training model is left out (logged).
    ``transformers`` has no class for VQA, SNLI-VE and IRTR: their HF export is the encoder as
    a ``transformers`` ``BridgeTowerModel`` checkpoint with the head's tensors beside it under
    their own names (``transformers`` loads the encoder and reports the head unused;
    ``bridgetower`` loads both).  NLVR2 (three token types) has no HF form.  The text tower's
    pooler (unused by BridgeTower) is written as zeros so ``transformers`` loads without
    missing keys.  Weights tied to each other (``MLMHead.tie_weights``) are stored once in our
    format and tied again on load; the HF export sets ``tie_word_embeddings``.
    ``max_shard_size`` (bytes or ``"500MB"``-style) splits larger state dicts into
    ``model-0000k-of-0000n.safetensors`` shards with a ``model.safetensors.index.json``.
    """
    from ..tasks import task_name_of

    if format not in (FORMAT_NAME, "hf"):
        raise ValueError(f"format must be {FORMAT_NAME!r} or 'hf', got {format!r}")
    if not safe_serialization:
        raise ValueError("safe_serialization=False: bridgetower writes safetensors only")
    directory = Path(directory)
    config: BridgeTowerConfig = model.config
    task = task_name_of(type(model))
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    tied = _tied_names(sd)
    if format == FORMAT_NAME:
        directory.mkdir(parents=True, exist_ok=True)
        write_weights({k: v for k, v in sd.items() if k not in tied}, directory, max_shard_size)
        meta: dict[str, Any] = {"format": FORMAT_NAME, "task": task, "config": config.to_dict()}
        if getattr(model, "mask_image_padding", None) is not None:
            meta["mask_image_padding"] = bool(model.mask_image_padding)
        if tied:
            meta["tied"] = tied
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    else:
        hf_config, out = _hf_export(model, config, task, sd)
        directory.mkdir(parents=True, exist_ok=True)
        hf_config.save_pretrained(str(directory))
        write_weights(out, directory, max_shard_size)
    _save_processor(model, directory, processor, tokenizer)


def _hf_export(model: nn.Module, config: BridgeTowerConfig, task: str, sd: dict):
    if task not in _HF_ARCHITECTURES:
        raise ValueError(
            f"{type(model).__name__} has no transformers form (transformers' BridgeTower has 2 token types; NLVR2 "
            "uses 3): save it in our format (the default), which bridgetower loads with from_pretrained"
        )
    prefix = encoder_prefix(type(model))
    converted = convert_to_hf_state_dict(sd, encoder_prefix=prefix, hf_prefix=prefix)
    itc_only = [k for k in converted.unknown if k.startswith("itc.")]
    if itc_only:
        logger.warning("HF format has no official ITC head; not exported: %s", itc_only)
    rest = [k for k in converted.unknown if not k.startswith("itc.")]
    if rest:
        raise ValueError(f"no HF names for: {rest}")
    out = _unshare(converted.state_dict)  # a tied tensor is written under both HF names
    h = config.text.hidden_size
    ref = next(iter(out.values()))
    out[f"{prefix}text_model.pooler.dense.weight"] = torch.zeros(h, h, dtype=ref.dtype)
    out[f"{prefix}text_model.pooler.dense.bias"] = torch.zeros(h, dtype=ref.dtype)
    mlm = getattr(model, "mlm_score", None)
    hf_config = config_to_hf(
        config, architectures=_HF_ARCHITECTURES[task], tie_word_embeddings=bool(getattr(mlm, "is_tied", False))
    )
    if task in ("vqa", "snli-ve", "irtr"):
        hf_config.bridgetower_task = task  # read back by config_from_hf (head sizes)
        hf_config.vqa_num_labels, hf_config.snli_num_labels = config.vqa_num_labels, config.snli_num_labels
    return hf_config, out


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _tied_names(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{name: first name}`` for every tensor sharing storage with an earlier one (tied weights).
    Tensors that share storage without being the same tensor (views of one another) raise."""
    first: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for name, t in sd.items():
        if t.device.type == "meta" or t.numel() == 0:
            continue
        key = _storage_key(t)
        if key in first:
            src = sd[first[key]]
            if (t.shape, t.stride(), t.storage_offset()) != (src.shape, src.stride(), src.storage_offset()):
                raise ValueError(f"{name} and {first[key]} share memory without being the same tensor; cannot save")
            tied[name] = first[key]
        else:
            first[key] = name
    return tied


def _unshare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[tuple] = set()
    out = {}
    for k, v in sd.items():
        key = _storage_key(v)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out


def write_weights(sd: Mapping[str, torch.Tensor], directory: Path, max_shard_size: int | str = "5GB") -> list[str]:
    """Write ``sd`` as ``model.safetensors``, or as shards of at most ``max_shard_size`` with
    ``model.safetensors.index.json``; weight files of an earlier save in ``directory`` that
    this one does not write are removed.  Returns the file names written."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in sd.items()}
    try:
        split = split_torch_state_dict_into_shards(sd, filename_pattern=_SHARD_PATTERN, max_shard_size=max_shard_size)
    except ValueError as err:
        raise ValueError(f"max_shard_size={max_shard_size!r}: {err}") from None
    written = []
    for filename, names in split.filename_to_tensors.items():
        save_file({k: sd[k] for k in names}, str(directory / filename), metadata={"format": "pt"})
        written.append(filename)
    index = directory / (WEIGHTS_NAME + ".index.json")
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in sd.values())
        index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename},
                                    indent=2) + "\n")
        written.append(index.name)
    for stale in [*directory.glob("model*.safetensors"), index]:
        if stale.name not in written and stale.is_file():
            stale.unlink()
    return written


def _save_processor(model: nn.Module, directory: Path, processor: Any, tokenizer: Any) -> None:
    """``preprocessor_config.json`` with the model's image size, and the tokenizer files: of
    ``processor`` / ``tokenizer`` when given, else copied from the local directory the model
    was loaded from (when it has them)."""
    from ..processor import BridgeTowerProcessor, ImageProcessor

    size = model.config.vision.image_size
    if processor is not None:
        if not isinstance(processor, BridgeTowerProcessor):
            raise TypeError(f"processor must be a BridgeTowerProcessor, got {type(processor).__name__}")
        if processor.image_processor.crop_size != size:
            logger.warning("the processor crops to %d px, the model's config says %d px", processor.image_processor.crop_size, size)
        processor.save_pretrained(directory)
        return
    BridgeTowerProcessor(ImageProcessor(size), tokenizer).save_pretrained(directory)
    if tokenizer is not None:
        return
    source = getattr(model, "name_or_path", None)
    if source and Path(source).is_dir() and Path(source).resolve() != directory.resolve():
        if _vocab_size_of(Path(source)) not in (None, model.config.text.vocab_size):
            logger.info("not copying the tokenizer of %s: the model's vocabulary has changed since", source)
            return
        copied = [f for f in TOKENIZER_FILES if (Path(source) / f).is_file()]
        for f in copied:
            shutil.copyfile(Path(source) / f, directory / f)
        if copied:
            logger.info("copied the tokenizer files of %s: %s", source, copied)


def _vocab_size_of(directory: Path) -> int | None:
    """The text vocabulary size in a checkpoint directory's ``config.json`` (ours or HF)."""
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    text = meta.get("config", {}).get("text", {}) if meta.get("format") == FORMAT_NAME else meta.get("text_config") or {}
    return text.get("vocab_size")


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    format: str = FORMAT_NAME,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "5GB",
    processor: Any = None,
    tokenizer: Any = None,
):
    """Save ``model`` (with its processor, see :func:`save_pretrained`) to a temporary directory
    and upload it to the Hub repository ``repo_id`` (created when missing) with
    ``huggingface_hub``; returns the commit information."""
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty 'org/name' string, got {repo_id!r}")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, format=format, max_shard_size=max_shard_size, processor=processor,
                        tokenizer=tokenizer)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or f"Upload {type(model).__name__}",
            revision=revision,
            create_pr=create_pr,
        )
