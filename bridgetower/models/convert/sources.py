"""Where a checkpoint's files come from: a local directory or a Hugging Face Hub repository.

:class:`HubOptions` carries the download keywords of ``transformers``' ``from_pretrained``
(``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``force_download``) to
``huggingface_hub.hf_hub_download``.  :func:`read_weights` reads the weights of a checkpoint
whichever way they are stored: one ``model.safetensors``, the shards listed by
``model.safetensors.index.json``, or the pickled ``pytorch_model.bin`` (and its index), read
with ``torch.load(weights_only=True)``.  :func:`looks_local` decides, without touching the
network, whether a name that is neither a file nor a directory was meant as a local path (so
``runs/typo`` fails at once instead of being tried as a Hub repository).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import read_state_dict

__all__ = ["HubOptions", "hub_locator", "local_locator", "looks_local", "read_weights"]

# (single file, shard index) in the order they are looked for
_WEIGHT_LAYOUTS = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
_LOCAL_SUFFIXES = (".ckpt", ".safetensors", ".bin", ".pt", ".pth", ".json")

Locator = Callable[[str], "Path | None"]


@dataclass(frozen=True)
class HubOptions:
    """The Hub download keywords of ``from_pretrained`` (ignored for local sources)."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None
    force_download: bool = False

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"local_files_only": self.local_files_only, "force_download": self.force_download}
        for name in ("revision", "token"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.cache_dir is not None:
            kw["cache_dir"] = os.fspath(self.cache_dir)
        return kw


def looks_local(name: str) -> bool:
    """Whether ``name`` (neither an existing file nor directory) was meant as a local path:
    absolute or relative-looking (``/``, ``.``, ``~``), not of the Hub's ``org/name`` form, a
    checkpoint file name, or a path under an existing local directory (``runs/typo`` when
    ``runs/`` exists)."""
    if name.startswith(("/", ".", "~", "\\")) or name.count("/") != 1 or os.sep != "/" and os.sep in name:
        return True
    if name.endswith(_LOCAL_SUFFIXES):
        return True
    return Path(name.split("/", 1)[0]).is_dir()


def local_locator(directory: Path) -> Locator:
    """``locate(filename)`` -> the file in ``directory``, or None."""

    def locate(filename: str) -> Path | None:
        path = directory / filename
        return path if path.is_file() else None

    return locate


def hub_locator(repo_id: str, hub: HubOptions, misses: list[BaseException] | None = None) -> Locator:
    """``locate(filename)`` -> the file of Hub repository ``repo_id`` (downloaded, or from the
    local cache), or None when the repository has no such file.  Files that are neither cached
    nor reachable (offline) are None too, their errors appended to ``misses``; any other
    failure (unknown repository or revision, no network) raises ``OSError`` naming the repository."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def locate(filename: str) -> Path | None:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, filename, **hub.kwargs()))
        except LocalEntryNotFoundError as err:  # offline / local_files_only, and not cached
            if misses is not None:
                misses.append(err)
            return None
        except EntryNotFoundError:
            return None
        except Exception as err:  # noqa: BLE001 - unknown repo, revision, network: one clear error
            raise hub_error(repo_id, filename, err) from err

    return locate


def hub_error(repo_id: str, what: str, err: BaseException) -> OSError:
    from huggingface_hub import constants

    offline = " (HF_HUB_OFFLINE is set and it is not in the local Hub cache)" if constants.HF_HUB_OFFLINE else ""
    return OSError(
        f"cannot load {what} of {repo_id!r} from the Hugging Face Hub{offline}: {type(err).__name__}: {err}. "
        "Pass a local checkpoint directory, or fetch it first with network access."
    )


def read_weights(locate: Locator, where: str) -> dict[str, Any]:
    """The state dict of a checkpoint: ``model.safetensors`` (tensors read lazily), the shards
    of ``model.safetensors.index.json``, or ``pytorch_model.bin`` (and its index).
    ``FileNotFoundError`` naming ``where`` when there is none; ``ValueError`` when an index
    and its shards disagree."""
    for single, index in _WEIGHT_LAYOUTS:
        path = locate(single)
        if path is not None:
            return read_state_dict(path, lazy=path.suffix == ".safetensors")
        path = locate(index)
        if path is not None:
            return _read_sharded(path, locate, where)
    names = ", ".join(n for pair in _WEIGHT_LAYOUTS for n in pair)
    raise FileNotFoundError(f"{where}: no weights found (looked for {names})")


def _read_sharded(index_path: Path, locate: Locator, where: str) -> dict[str, Any]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{where}: {index_path.name} is not a shard index with a 'weight_map': {err}") from None
    out: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        path = locate(shard)
        if path is None:
            raise FileNotFoundError(f"{where}: shard {shard!r} listed in {index_path.name} is missing")
        tensors = read_state_dict(path, lazy=path.suffix == ".safetensors")
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != listed:
            raise ValueError(
                f"{where}: shard {shard!r} holds {sorted(set(tensors) ^ listed)[:5]} contrary to {index_path.name}"
            )
        out.update(tensors)
    return out
