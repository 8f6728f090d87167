"""``BridgeTowerModel``: two uni-modal towers bridged into a co-attention fusion encoder.

The forward pass (BRIDGETOWER.md, ``N`` = ``fusion.num_layers``, ``T_i``/``V_i`` the tapped
top-``N`` text/vision layer outputs, vision ones after ``ln_post``)::

    x_T[l] = W_T T[l] + e0                  l = 0..N-1   (cross_modal_text_transform)
    x_V[l] = W_V V[l] + e1                               (cross_modal_image_transform)
    X_0, Y_0 = LN_t(x_T[0]), LN_v(x_V[0])               (cross_modal_{text,image}_layernorm)
    cross layers with bridges  ->  text_features X, image_features Y     (CoAttentionFusion)
    pooler_output = [tanh(P_t X[:, 0]); tanh(P_v Y[:, 0])]               (2H)

Because the towers never read the cross-modal stream, the model runs in three separable
steps: :meth:`BridgeTowerModel.encode_text`, :meth:`~BridgeTowerModel.encode_image` (each
returning the ``N`` tapped uni-modal states) and :meth:`~BridgeTowerModel.fuse`.  Scoring one
image against many texts (:meth:`~BridgeTowerModel.fuse_pairs`) therefore runs each tower once
per input and only the fusion once per pair.

Parameter names follow the Hugging Face port where the module is the same
(``cross_modal_*_transform``, ``token_type_embeddings``, ``cross_modal_*_layernorm``,
``cross_modal_*_pooler``); the towers are ``vision_model.visual.*`` (open_clip names) and
``text_model.model.*`` (``transformers`` names); the fusion is ``fusion.*``
(``text_layers.N``, ``image_layers.N``, ``text_bridges.K``, ``image_bridges.K``).
:mod:`bridgetower.models.convert` maps them to and from the HF and official checkpoints.

The model has one attention backend (:meth:`BridgeTowerModel.set_attention_backend`, or
``config.attn_backend``), validated once and set on every attention of the fusion layers and
both towers.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import check_attention_backend
from ..layers.attention import MultiHeadAttention
from ..layers.bridge import Bridge
from ..layers.co_attention import CoAttentionFusion, CoAttentionLayer
from ..layers.heads import Pooler
from .base import BridgeTowerPreTrainedModel
from .config import BridgeTowerConfig
from .outputs import BridgeTowerOutput
from .towers.text import TransformersTextEncoder
from .towers.vision import OpenCLIPVisionEncoder

__all__ = ["BridgeTowerModel", "patch_mask_from_pixel_mask"]

#: Top-level submodules of :class:`BridgeTowerModel` trained at the towers' learning rate
#: (the modality token types too, as in the official recipe); the rest is cross-modal.
_UNI_MODAL_CHILDREN = ("vision_model", "text_model", "token_type_embeddings")


def patch_mask_from_pixel_mask(
    pixel_mask: torch.Tensor | None, patch_size: int
) -> torch.Tensor | None:
    """``(B, H, W)`` pixel mask (1 = real pixel) -> ``(B, 1 + P)`` token mask, or ``None``.

    A patch counts as real when any of its pixels is; the CLS token is always real.  Returns
    ``None`` when every pixel is real (the common, unpadded case), so no mask is applied.
    """
    if pixel_mask is None:
        return None
    if pixel_mask.ndim != 3:
        raise ValueError(f"pixel_mask must be (B, H, W), got shape {tuple(pixel_mask.shape)}")
    if bool(pixel_mask.all()):
        return None
    b, h, w = pixel_mask.shape
    m = pixel_mask.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size)
    m = m.bool().any(dim=4).any(dim=2).flatten(1)  # (B, P)
    return torch.cat([m.new_ones(b, 1), m], dim=1)  # (B, 1 + P)


class BridgeTowerModel(BridgeTowerPreTrainedModel):
    """The BridgeTower encoder (no task head).

    Args:
        config: the architecture.
        device, dtype: of the parameters.

    ``forward(input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, *,
    image_token_type_idx=1, output_hidden_states=False)`` -> :class:`BridgeTowerOutput`.
    """

    def __init__(
        self,
        config: BridgeTowerConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, BridgeTowerConfig):
            raise TypeError(f"config must be a BridgeTowerConfig, got {type(config).__name__}")
        self.config = config
        fc = config.fusion
        h, n = fc.hidden_size, fc.num_layers
        factory = {"device": device, "dtype": dtype}
        self.vision_model = OpenCLIPVisionEncoder(config.vision, num_outputs=n, **factory)
        self.text_model = TransformersTextEncoder(config.text, num_outputs=n, **factory)
        self.cross_modal_text_transform = nn.Linear(config.text.hidden_size, h, **factory)
        self.cross_modal_image_transform = nn.Linear(config.vision.width, h, **factory)
        self.token_type_embeddings = nn.Embedding(fc.num_token_types, h, **factory)
        self.cross_modal_text_layernorm = nn.LayerNorm(h, eps=fc.bridge_layer_norm_eps, **factory)
        self.cross_modal_image_layernorm = nn.LayerNorm(h, eps=fc.bridge_layer_norm_eps, **factory)
        self.fusion = CoAttentionFusion(
            h,
            n,
            fc.num_heads,
            bridge=fc.bridge,
            mlp_ratio=fc.mlp_ratio,
            dropout=fc.dropout,
            attn_dropout=fc.attn_dropout,
            act=fc.hidden_act,
            eps=fc.layer_norm_eps,
            bridge_eps=fc.bridge_layer_norm_eps,
            attn_backend=config.attn_backend,
            **factory,
        )
        self.cross_modal_text_pooler = Pooler(h, **factory)
        self.cross_modal_image_pooler = Pooler(h, **factory)
        self._reset_own_parameters()
        if config.gradient_checkpointing:
            self.set_gradient_checkpointing(True)
        self.set_attention_backend(config.attn_backend)

    # ------------------------------------------------------------------ set-up

    def _reset_own_parameters(self) -> None:
        """BridgeTower's init of the cross-modal part: Linear/Embedding N(0, 0.02), LN (1, 0)."""
        for m in (
            self.cross_modal_text_transform,
            self.cross_modal_image_transform,
            self.token_type_embeddings,
        ):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        for ln in (self.cross_modal_text_layernorm, self.cross_modal_image_layernorm):
            ln.reset_parameters()

    def reset_parameters(self) -> None:
        self.vision_model.reset_parameters()
        self.text_model.reset_parameters()
        self._reset_own_parameters()
        self.fusion.reset_parameters()
        self.cross_modal_text_pooler.reset_parameters()
        self.cross_modal_image_pooler.reset_parameters()

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute every tower block and cross layer in the backward pass (less memory)."""
        self.vision_model.set_gradient_checkpointing(enable)
        self.text_model.set_gradient_checkpointing(enable)
        self.fusion.gradient_checkpointing = bool(enable)

    def set_attention_backend(self, backend: str | None) -> None:
        """The one attention backend of the whole model (``None``: chosen per call by
        capability; ``"sdpa"``, ``"chunked"``, ``"math"``, ``"xformers"``): validated here,
        once, and set on every attention of the fusion layers, the vision tower and the text
        tower."""
        check_attention_backend(backend)
        for m in self.fusion.modules():
            if isinstance(m, MultiHeadAttention):
                m.backend = backend
        self.vision_model.set_attention_backend(backend)
        self.text_model.set_attention_backend(backend)
        self.attn_backend = backend

    # ------------------------------------------------------------------ declarations

    def parameter_roles(self) -> dict[str, str]:
        """``"uni_modal"`` for the towers and the modality token types, else ``"cross_modal"``."""
        return {
            name: "uni_modal" if name.split(".", 1)[0] in _UNI_MODAL_CHILDREN else "cross_modal"
            for name, _ in self.named_parameters()
        }

    def fsdp_unit_types(self) -> tuple[type[nn.Module], ...]:
        """The towers' blocks, the co-attention layers and the bridges."""
        return (
            *self.vision_model.block_types(),
            *self.text_model.block_types(),
            CoAttentionLayer,
            Bridge,
        )

    @property
    def num_layers(self) -> int:
        return self.config.fusion.num_layers

    # ------------------------------------------------------------------ the three steps

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The ``N`` tapped text-tower states, each ``(B, L, H_text)``."""
        _check_text(input_ids, attention_mask)
        return self.text_model(input_ids, attention_mask)

    def encode_image(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The ``N`` tapped vision states after ``ln_post``, each ``(B, 1 + P, H_vision)``."""
        return self.vision_model(pixel_values)

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
    ) -> BridgeTowerOutput:
        """Run the cross-modal encoder on precomputed uni-modal states.

        Args:
            text_states: ``N`` tensors ``(B, L, H_text)`` from :meth:`encode_text`.
            image_states: ``N`` tensors ``(B, 1 + P, H_vision)`` from :meth:`encode_image`.
            attention_mask: ``(B, L)`` text mask, 1 = token, 0 = padding.
            image_mask: ``(B, 1 + P)`` image token mask or ``None`` (all real).
            image_token_type_idx: token-type row of the image stream (1; NLVR2 uses 1 and 2).
            pooled_only: compute the last cross layer for the first (CLS) position only -- all
                the poolers read.  ``pooler_output`` is unchanged; ``text_features`` and
                ``image_features`` are then ``(B, 1, H)``.  Saves about one image-stream layer
                for the pooler-only tasks (ITM, VQA, NLVR2, SNLI-VE, IRTR, contrastive).
        """
        n = self.num_layers
        if len(text_states) != n or len(image_states) != n:
            raise ValueError(
                f"fuse expects {n} text and {n} image states (one per cross layer), got "
                f"{len(text_states)} and {len(image_states)}"
            )
        if text_states[0].shape[0] != image_states[0].shape[0]:
            raise ValueError(
                f"text and image batch sizes differ: {tuple(text_states[0].shape)} vs "
                f"{tuple(image_states[0].shape)}"
            )
        if not 0 <= image_token_type_idx < self.token_type_embeddings.num_embeddings:
            raise ValueError(
                f"image_token_type_idx={image_token_type_idx} out of range for "
                f"{self.token_type_embeddings.num_embeddings} token types"
            )
        e_text = self.token_type_embeddings.weight[0]  # (H,)
        e_image = self.token_type_embeddings.weight[image_token_type_idx]  # (H,)
        text_inputs = [self.cross_modal_text_transform(t) + e_text for t in text_states]
        image_inputs = [self.cross_modal_image_transform(v) + e_image for v in image_states]
        text_inputs[0] = self.cross_modal_text_layernorm(text_inputs[0])
        image_inputs[0] = self.cross_modal_image_layernorm(image_inputs[0])
        fused = self.fusion(
            text_inputs,
            image_inputs,
            text_mask=attention_mask,
            image_mask=image_mask,
            return_all_layers=output_hidden_states,
            cls_only_last=pooled_only,
        )
        if output_hidden_states:
            texts, images = fused
            text_features, image_features = texts[-1], images[-1]
            cross = tuple(zip(texts, images, strict=True))
        else:
            text_features, image_features = fused
            cross = None
        pooler_output = torch.cat(
            [self.cross_modal_text_pooler(text_features), self.cross_modal_image_pooler(image_features)],
            dim=-1,
        )  # (B, 2H)
        return BridgeTowerOutput(
            text_features=text_features,
            image_features=image_features,
            pooler_output=pooler_output,
            text_hidden_states=tuple(text_states),
            image_hidden_states=tuple(image_states),
            cross_hidden_states=cross,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        *,
        image_token_type_idx: int = 1,
        output_hidden_states: bool = False,
        pooled_only: bool = False,
    ) -> BridgeTowerOutput:
        """Encode both modalities and fuse them (see the module docstring)."""
        if pixel_values is None:
            raise ValueError("BridgeTowerModel needs pixel_values (B, 3, H, W)")
        _check_pair(input_ids, pixel_values)
        text_states = self.encode_text(input_ids, attention_mask)
        image_states = self.encode_image(pixel_values)
        image_mask = patch_mask_from_pixel_mask(pixel_mask, self.config.vision.patch_size)
        return self.fuse(
            text_states,
            image_states,
            attention_mask,
            image_mask,
            image_token_type_idx=image_token_type_idx,
            output_hidden_states=output_hidden_states,
            pooled_only=pooled_only,
        )

    def fuse_pairs(
        self,
        text_states: list[torch.Tensor],
        image_states: list[torch.Tensor],
        attention_mask: torch.Tensor | None,
        text_index: torch.Tensor,
        image_index: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        *,
        pooled_only: bool = False,
    ) -> BridgeTowerOutput:
        """Fuse the pairs ``(text_index[k], image_index[k])`` of already-encoded inputs.

        The uni-modal states are gathered (``index_select``), so each tower ran once per input
        however many pairs use it.
        """
        ts = [t.index_select(0, text_index) for t in text_states]
        vs = [v.index_select(0, image_index) for v in image_states]
        am = attention_mask.index_select(0, text_index) if attention_mask is not None else None
        im = image_mask.index_select(0, image_index) if image_mask is not None else None
        return self.fuse(ts, vs, am, im, pooled_only=pooled_only)


def _check_text(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
    if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids must be an integer (B, L) tensor, got {input_ids.dtype} of shape "
            f"{tuple(input_ids.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
            f"{tuple(input_ids.shape)}"
        )


def _check_pair(input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
    _check_text(input_ids, None)
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        raise ValueError(
            "pixel_values must be a (B, 3, H, W) tensor, got "
            f"{getattr(pixel_values, 'shape', type(pixel_values).__name__)}"
        )
    if input_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"batch sizes differ: input_ids {tuple(input_ids.shape)} and pixel_values "
            f"{tuple(pixel_values.shape)}"
        )
