"""``ManagerTowerModel``: BridgeTower's successor, with a manager per cross-modal layer.

ManagerTower (Xu et al., ACL 2023) keeps BridgeTower's towers, projections, co-attention
layers, poolers and heads, and replaces the bridges (and the LayerNorm of the first cross
layer's input) by managers (:mod:`bridgetower.layers.manager`).  With ``T_j``, ``V_j`` the top
``N`` text / vision layer outputs (vision after ``ln_post``), ``e0``, ``e1`` the token types
and ``le_T``, ``le_V`` the layer embeddings (one row per managed layer)::

    H_T[j] = W_T T_j + e0 + le_T[j]          H_V[j] = W_V V_j + e1 + le_V[j]       j < N
    cross layers with managers  ->  text_features X, image_features Y       (ManagerFusion)
    pooler_output = [tanh(P_t X[:, 0]); tanh(P_v Y[:, 0])]                    (2H)

Every manager of a stream reads all of ``H`` (not one layer each, as a bridge does).  A config
with ``manager`` set (``managertower-base``, ``managertower-tiny``) builds this encoder inside
every task model (:func:`encoder_class`), so the task heads, the training code and the
checkpoint format are those of BridgeTower.

:class:`ManagerTowerModel` is a :class:`~bridgetower.models.BridgeTowerModel` (its three steps
``encode_text``, ``encode_image``, ``fuse``, ``fuse_pairs``, ``forward`` and declarations), built
with managers instead of bridges.  Parameter names: those of BridgeTower minus
``cross_modal_*_layernorm`` and the bridges, plus ``layer_embeddings_{text,image}`` (N rows:
the official tables hold a row per uni-modal layer, of which the converter keeps the managed
ones) and ``fusion.{text,image}_managers.K``.  Official ``.ckpt`` files load through
:mod:`bridgetower.models.managertower_convert`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import check_attention_backend
from ..layers.co_attention import CoAttentionLayer
from ..layers.manager import AdaptiveManager, Manager, ManagerFusion
from .base import BridgeTowerPreTrainedModel
from .config import BridgeTowerConfig, check_allocation
from .model import BridgeTowerModel
from .outputs import BridgeTowerOutput

__all__ = ["ManagerTowerModel", "encoder_class"]


def encoder_class(config: BridgeTowerConfig) -> type[BridgeTowerModel]:
    """The encoder a config describes: :class:`ManagerTowerModel` when ``config.manager`` is
    set, else :class:`~bridgetower.models.BridgeTowerModel`."""
    return BridgeTowerModel if config.manager is None else ManagerTowerModel


class ManagerTowerModel(BridgeTowerModel):
    """The ManagerTower encoder (no task head); ``config.manager`` must be set.

    ``forward(input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, *,
    image_token_type_idx=1, output_hidden_states=False, pooled_only=False)`` ->
    :class:`~bridgetower.models.BridgeTowerOutput`, as BridgeTowerModel's; ``text_hidden_states``
    / ``image_hidden_states`` hold the ``N`` managed layers, ``cross_hidden_states`` the ``K``
    cross-layer output pairs.  The training-only manager noise follows ``self.training``.
    """

    def __init__(
        self,
        config: BridgeTowerConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # BridgeTowerModel.__init__ would build bridges and input LayerNorms: build our own parts
        BridgeTowerPreTrainedModel.__init__(self)
        if not isinstance(config, BridgeTowerConfig):
            raise TypeError(f"config must be a BridgeTowerConfig, got {type(config).__name__}")
        if config.manager is None:
            raise ValueError("ManagerTowerModel needs config.manager (e.g. get_config('managertower-base')); "
                             "a config without one is a BridgeTowerModel")
        check_allocation(config, dtype=dtype, device=device)
        self.config = config
        fc, mc = config.fusion, config.manager
        h = fc.hidden_size
        factory = {"device": device, "dtype": dtype}
        self._build_towers(mc.text_layers, mc.image_layers, factory)
        self.layer_embeddings_text = nn.Embedding(mc.text_layers, h, **factory)
        self.layer_embeddings_image = nn.Embedding(mc.image_layers, h, **factory)
        self.fusion = ManagerFusion(
            h,
            fc.num_layers,
            fc.num_heads,
            managed_text=mc.text_layers,
            managed_image=mc.image_layers,
            manager=mc.kind,
            weights=mc.weights,
            manager_eps=mc.layer_norm_eps,
            temperature=mc.temperature,
            learnable=mc.learnable,
            temperature_learnable=mc.temperature_learnable,
            noise=mc.noise,
            mlp_ratio=fc.mlp_ratio,
            dropout=fc.dropout,
            attn_dropout=fc.attn_dropout,
            act=fc.hidden_act,
            eps=fc.layer_norm_eps,
            attn_backend=config.attn_backend,
            **factory,
        )
        self._finish_init(factory)

    # ------------------------------------------------------------------ set-up

    def _reset_own_parameters(self) -> None:
        """The official init of the cross-modal part: Linear / Embedding N(0, 0.02), zero biases."""
        for m in (self.cross_modal_text_transform, self.cross_modal_image_transform, self.token_type_embeddings,
                  self.layer_embeddings_text, self.layer_embeddings_image):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def set_attention_backend(self, backend: str | None) -> None:
        """As :meth:`BridgeTowerModel.set_attention_backend`, and the adaptive managers'
        cross-stream attention too."""
        check_attention_backend(backend)
        super().set_attention_backend(backend)
        for m in self.fusion.modules():
            if isinstance(m, AdaptiveManager):
                m.attn_backend = backend

    # ------------------------------------------------------------------ declarations

    def parameter_roles(self) -> dict[str, str]:
        """BridgeTower's roles, with the layer embeddings ``"uni_modal"``: the official recipe
        gives its larger learning rate to the ``cross_modal*`` parameters only (the token
        types and layer embeddings train at the towers' rate)."""
        roles = super().parameter_roles()
        for name in roles:
            if name.startswith(("layer_embeddings_text.", "layer_embeddings_image.")):
                roles[name] = "uni_modal"
        return roles

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        """The towers' blocks, the co-attention layers and the managers."""
        return (*self.vision_model.block_types(), *self.text_model.block_types(), CoAttentionLayer, Manager)

    # ------------------------------------------------------------------ fusion

    def fuse(
        self,
        text_states: list[torch.Tensor],
        image_states: list[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        *,
        image_token_type_idx: int = 1,
        output_hidden_states: bool = False,
        pooled_only: bool = False,
        **options: object,
    ) -> BridgeTowerOutput:
        """Run the cross-modal encoder on precomputed uni-modal states (the ``N`` managed
        layers of each tower, from :meth:`encode_text` / :meth:`encode_image`); the arguments
        are :meth:`BridgeTowerModel.fuse`'s."""
        unsupported = sorted(k for k, v in options.items() if v)
        if unsupported:
            raise ValueError(f"ManagerTowerModel.fuse does not support {', '.join(unsupported)}")
        mc = self.config.manager
        if len(text_states) != mc.text_layers or len(image_states) != mc.image_layers:
            raise ValueError(
                f"fuse expects {mc.text_layers} text and {mc.image_layers} image states (the managed "
                f"layers), got {len(text_states)} and {len(image_states)}"
            )
        if text_states[0].shape[0] != image_states[0].shape[0]:
            raise ValueError(
                f"text and image batch sizes differ: {tuple(text_states[0].shape)} vs {tuple(image_states[0].shape)}"
            )
        if not 0 <= image_token_type_idx < self.token_type_embeddings.num_embeddings:
            raise ValueError(
                f"image_token_type_idx={image_token_type_idx} out of range for "
                f"{self.token_type_embeddings.num_embeddings} token types"
            )
        tt = self.token_type_embeddings.weight
        text_inputs = (self.cross_modal_text_transform(torch.stack(text_states, dim=1)) + tt[0]
                       + self.layer_embeddings_text.weight[:, None])  # (B, N, L, H)
        image_inputs = (self.cross_modal_image_transform(torch.stack(image_states, dim=1)) + tt[image_token_type_idx]
                        + self.layer_embeddings_image.weight[:, None])  # (B, N, 1 + P, H)
        texts, images = self.fusion(
            text_inputs,
            image_inputs,
            text_mask=attention_mask,
            image_mask=image_mask,
            return_all_layers=True,
            cls_only_last=pooled_only,
        )
        text_features, image_features = texts[-1], images[-1]
        pooler_output = torch.cat(
            [self.cross_modal_text_pooler(text_features), self.cross_modal_image_pooler(image_features)], dim=-1
        )  # (B, 2H)
        return BridgeTowerOutput(
            text_features=text_features,
            image_features=image_features,
            pooler_output=pooler_output,
            text_hidden_states=tuple(text_states),
            image_hidden_states=tuple(image_states),
            cross_hidden_states=tuple(zip(texts, images, strict=True)) if output_hidden_states else None,
        )
