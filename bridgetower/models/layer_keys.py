"""Hugging Face key names of the two layer kinds whose parameter names differ from ours.

``BridgeTowerBertCrossLayer`` (HF) -> :class:`~bridgetower.layers.CoAttentionLayer` and
``BridgeTowerLinkTower`` (HF) -> the elementwise bridges of :mod:`bridgetower.layers.bridge`.
Fixed renames, both directions; nothing unknown is dropped silently.  The layers themselves
know no other library's names: the checkpoint converters (:mod:`bridgetower.models.convert`)
apply these tables.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = [
    "convert_hf_cross_layer_state_dict",
    "convert_hf_link_tower_state_dict",
    "hf_cross_layer_key_map",
    "hf_link_tower_key_map",
    "rename_hf_cross_layer_key",
    "rename_hf_link_tower_key",
]

# ---------------------------------------------------------------- cross layers (CoAttentionLayer)

_HF_CROSS_LAYER_RENAMES: dict[str, str] = {
    "attention.self.query": "self_attn.query",
    "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value",
    "attention.output.dense": "self_attn.proj",
    "attention.output.LayerNorm": "self_norm",
    "crossattention.self.query": "cross_attn.query",
    "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value",
    "crossattention.output.dense": "cross_attn.proj",
    "crossattention.output.LayerNorm": "cross_norm",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "mlp_norm",
}


def hf_cross_layer_key_map() -> dict[str, str]:
    """Module-path rename from HF ``BridgeTowerBertCrossLayer`` to :class:`CoAttentionLayer`.

    Keys and values are module paths without the parameter name (``.weight``/``.bias``
    follow unchanged), e.g. ``"attention.output.LayerNorm" -> "self_norm"``. A fresh copy.
    """
    return dict(_HF_CROSS_LAYER_RENAMES)


def rename_hf_cross_layer_key(key: str, *, reverse: bool = False) -> str | None:
    """Rename one parameter key, keeping any prefix.

    ``"cross_modal_text_layers.0.attention.output.LayerNorm.weight"`` ->
    ``"cross_modal_text_layers.0.self_norm.weight"``. ``reverse=True`` maps our names back
    to HF names. Returns None when no entry of the table matches the key.
    """
    table = _HF_CROSS_LAYER_RENAMES
    if reverse:
        table = {v: k for k, v in table.items()}
    module, _, param = key.rpartition(".")
    best = None
    for src in table:
        if (module == src or module.endswith("." + src)) and (best is None or len(src) > len(best)):
            best = src
    if best is None:
        return None
    prefix = module[: len(module) - len(best)]
    return f"{prefix}{table[best]}.{param}"


def _rename_all(
    state_dict: Mapping[str, torch.Tensor], rename, reverse: bool, what: str
) -> dict[str, torch.Tensor]:
    """Apply ``rename(key, reverse=...)`` to every key; ``ValueError`` naming the keys it
    does not know (nothing is dropped silently)."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = rename(key, reverse=reverse)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"keys not in the {what} rename table: {sorted(unknown)}")
    return out


def convert_hf_cross_layer_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, reverse: bool = False
) -> dict[str, torch.Tensor]:
    """Rename every key of a HF cross-layer state dict (or the reverse with ``reverse``).

    Raises ``ValueError`` naming the keys that match no entry of the rename table, so
    nothing is dropped silently.
    """
    return _rename_all(state_dict, rename_hf_cross_layer_key, reverse, "cross-layer")


# ---------------------------------------------------------------- link towers (bridges)

_HF_LINK_TOWER_RENAMES: dict[str, str] = {
    "LayerNorm.weight": "weight",
    "LayerNorm.bias": "bias",
    "scaled_factor": "scale",
    "beta": "beta",
}


def hf_link_tower_key_map() -> dict[str, str]:
    """Suffix rename from HF ``BridgeTowerLinkTower`` to our elementwise bridges.

    ``{"LayerNorm.weight": "weight", "LayerNorm.bias": "bias", "scaled_factor": "scale",
    "beta": "beta"}`` (a fresh copy).
    """
    return dict(_HF_LINK_TOWER_RENAMES)


def rename_hf_link_tower_key(key: str, *, reverse: bool = False) -> str | None:
    """Rename one key (with any prefix, e.g. ``cross_modal_text_link_tower.0.LayerNorm.weight``).

    ``reverse=True`` maps our names back to HF names.  Returns ``None`` if the key's last
    component(s) are not a link-tower parameter.
    """
    table = _HF_LINK_TOWER_RENAMES if not reverse else {v: k for k, v in _HF_LINK_TOWER_RENAMES.items()}
    for src, dst in table.items():
        if key == src:
            return dst
        if key.endswith("." + src):
            return key[: -len(src)] + dst
    return None


def convert_hf_link_tower_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, reverse: bool = False
) -> dict[str, torch.Tensor]:
    """Rename every key of a link-tower state dict (HF -> ours, or ours -> HF with ``reverse``).

    Prefixes are kept.  A key that is not a link-tower parameter (names ending in
    ``LayerNorm.weight``, ``LayerNorm.bias``, ``scaled_factor``, ``beta`` or their new
    names) raises ``ValueError`` listing the offenders (nothing is silently dropped).
    """
    return _rename_all(state_dict, rename_hf_link_tower_key, reverse, "link-tower")
