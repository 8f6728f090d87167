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

import dataclasses

import torch
from torch import nn

from ..kernels import check_attention_backend
from ..layers.attention import MultiHeadAttention
from ..layers.bridge import Bridge
from ..layers.co_attention import CoAttentionFusion, CoAttentionLayer
from ..layers.heads import Pooler
from .base import BridgeTowerPreTrainedModel
from .config import BridgeTowerConfig, check_allocation
from .outputs import BridgeTowerOutput
from .towers.text import TransformersTextEncoder
from .towers.vision import OpenCLIPVisionEncoder

__all__ = ["BridgeTowerModel", "check_pixel_values", "patch_mask_from_pixel_mask"]

#: Top-level submodules of :class:`BridgeTowerModel` trained at the towers' learning rate
#: (the modality token types too, as in the official recipe); the rest is cross-modal.
_UNI_MODAL_CHILDREN = ("vision_model", "text_model", "token_type_embeddings")


def patch_mask_from_pixel_mask(
    pixel_mask: torch.Tensor | None, patch_size: int
) -> torch.Tensor | None:
    """``(B, H, W)`` pixel mask (1 = real pixel) -> ``(B, 1 + P)`` token mask, or ``None``.

    A patch counts as real when any of its pixels is; the CLS token is always real.  Rows and
    columns past the last whole patch are ignored (the patch convolution floors).  Returns
    ``None`` when every pixel is real (the common, unpadded case), so no mask is applied.
    """
    if pixel_mask is None:
        return None
    if pixel_mask.ndim != 3:
        raise ValueError(f"pixel_mask must be (B, H, W), got shape {tuple(pixel_mask.shape)}")
    b, h, w = pixel_mask.shape
    gh, gw = h // patch_size, w // patch_size
    pixel_mask = pixel_mask[:, : gh * patch_size, : gw * patch_size]
    if bool(pixel_mask.all()):
        return None
    m = pixel_mask.reshape(b, gh, patch_size, gw, patch_size)
    m = m.bool().any(dim=4).any(dim=2).flatten(1)  # (B, P)
    return torch.cat([m.new_ones(b, 1), m], dim=1)  # (B, 1 + P)


class BridgeTowerModel(BridgeTowerPreTrainedModel):
    """The BridgeTower encoder (no task head).

    Args:
        config: the architecture.
        device, dtype: of the parameters.

    ``forward(input_ids, attention_mask=None, pixel_values=None, pixel_mask=None, *,
    token_type_ids=None, image_token_type_idx=1, output_hidden_states=None,
    output_attentions=None, return_dict=None, interpolate_pos_encoding=None,
    mask_image_padding=None)`` -> :class:`BridgeTowerOutput` (see :meth:`forward`).

    ``mask_image_padding`` (default ``False``, what ``transformers`` and the official code do:
    every image token is attended to) turns the ``pixel_mask`` of padded images into a patch
    mask applied in the fusion; :meth:`set_image_padding_mask` sets it, ``forward``'s keyword
    overrides it per call.
    """

    #: mask the padded patches of ``pixel_mask`` in the fusion (see the class docstring)
    mask_image_padding: bool = False

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
        check_allocation(config, dtype=dtype, device=device)
        self.config = config
        fc = config.fusion
        h, n = fc.hidden_size, fc.num_layers
        factory = {"device": device, "dtype": dtype}
        self._build_towers(n, n, factory)
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
        self._finish_init(factory)

    # ------------------------------------------------------------------ set-up

    def _build_towers(self, text_outputs: int, image_outputs: int, factory: dict) -> None:
        """The towers (tapping their top ``*_outputs`` layers), the projections into the
        cross-modal width and the modality token types: what every encoder of this family
        builds first, in this order (the order of the random initialisation)."""
        config, h = self.config, self.config.fusion.hidden_size
        self.vision_model = OpenCLIPVisionEncoder(config.vision, num_outputs=image_outputs, **factory)
        self.text_model = TransformersTextEncoder(config.text, num_outputs=text_outputs, **factory)
        self.cross_modal_text_transform = nn.Linear(config.text.hidden_size, h, **factory)
        self.cross_modal_image_transform = nn.Linear(config.vision.width, h, **factory)
        self.token_type_embeddings = nn.Embedding(config.fusion.num_token_types, h, **factory)

    def _finish_init(self, factory: dict) -> None:
        """The poolers, the initialisation of the parts built here, the config's switches."""
        h = self.config.fusion.hidden_size
        self.cross_modal_text_pooler = Pooler(h, **factory)
        self.cross_modal_image_pooler = Pooler(h, **factory)
        self._reset_own_parameters()
        if self.config.gradient_checkpointing:
            self.set_gradient_checkpointing(True)
        self.set_attention_backend(self.config.attn_backend)

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

    def set_image_padding_mask(self, enable: bool = True) -> None:
        """Mask the padded patches of ``pixel_mask`` in the fusion (``True``), or attend to every
        image token as ``transformers`` does (``False``, the default)."""
        if not isinstance(enable, bool):
            raise TypeError(f"set_image_padding_mask: enable must be True or False, got {enable!r}")
        self.mask_image_padding = enable

    def image_mask(
        self,
        pixel_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None = None,
        mask_image_padding: bool | None = None,
    ) -> torch.Tensor | None:
        """The ``(B, 1 + P)`` image token mask of ``pixel_mask``, or ``None`` (no masking: the
        default, or nothing padded).  ``mask_image_padding`` overrides the model's setting."""
        if pixel_mask is not None and pixel_values is not None and (
            pixel_mask.ndim != 3 or pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[-2:])
        ):
            raise ValueError(
                f"pixel_mask must be (B, H, W) = {(pixel_values.shape[0], *pixel_values.shape[-2:])} "
                f"for pixel_values {tuple(pixel_values.shape)}, got {tuple(pixel_mask.shape)}"
            )
        on = self.mask_image_padding if mask_image_padding is None else mask_image_padding
        return patch_mask_from_pixel_mask(pixel_mask, self.config.vision.patch_size) if on else None

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
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw
    ) -> list[torch.Tensor]:
        """The ``N`` tapped text-tower states, each ``(B, L, H_text)`` (with
        ``output_hidden_states=True`` also every state, see the text tower).  The input is
        checked: a non-empty batch, no empty text, ids inside the vocabulary, no more tokens
        than the position table allows."""
        self.text_model.check_inputs(input_ids, attention_mask)
        return self.text_model(input_ids, attention_mask, **kw)

    def encode_image(self, pixel_values: torch.Tensor, **kw) -> list[torch.Tensor]:
        """The ``N`` tapped vision states after ``ln_post``, each ``(B, 1 + P, H_vision)``
        (with ``output_hidden_states=True`` also every state, see the vision tower)."""
        check_pixel_values(pixel_values)
        return self.vision_model(pixel_values, **kw)

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
        output_attentions: bool = False,
        text_index: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
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
            output_hidden_states: keep every cross layer's ``(text, image)`` output
                (``cross_hidden_states``).
            output_attentions: return the attention probabilities of every cross layer
                (``attentions``: self-attention, ``cross_attentions``: cross-attention, one
                ``(text, image)`` pair per layer); those attentions run on the ``math``
                backend.
            text_index, image_index: (P,) pair indices, given together (what
                :meth:`fuse_pairs` passes): the states and masks are per distinct text / image
                and the pairs ``(text_index[k], image_index[k])`` are fused.  The cross-modal
                transforms and the first layer's self-attention then run once per distinct
                input (see :class:`~bridgetower.layers.CoAttentionFusion`).
        """
        n = self.num_layers
        pairs = text_index is not None or image_index is not None
        if len(text_states) != n or len(image_states) != n:
            raise ValueError(
                f"fuse expects {n} text and {n} image states (one per cross layer), got "
                f"{len(text_states)} and {len(image_states)}"
            )
        if not pairs and text_states[0].shape[0] != image_states[0].shape[0]:
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
            output_attentions=output_attentions,
            text_index=text_index,
            image_index=image_index,
        )
        attentions = cross_attentions = None
        if output_attentions:
            *fused, probs = fused
            attentions = tuple((p[0], p[1]) for p in probs)  # self-attention (text, image)
            cross_attentions = tuple((p[2], p[3]) for p in probs)
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
            attentions=attentions,
            cross_attentions=cross_attentions,
            text_hidden_states=tuple(t.index_select(0, text_index) for t in text_states) if pairs
            else tuple(text_states),
            image_hidden_states=tuple(v.index_select(0, image_index) for v in image_states) if pairs
            else tuple(image_states),
            cross_hidden_states=cross,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        *,
        token_type_ids: torch.Tensor | None = None,
        image_token_type_idx: int | None = 1,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        mask_image_padding: bool | None = None,
        pooled_only: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> BridgeTowerOutput | tuple:
        """Encode both modalities and fuse them (see the module docstring).

        The keywords of ``transformers``' ``BridgeTowerModel.forward`` are accepted:

        * ``output_hidden_states``: ``hidden_states`` = ``(text, image, cross)`` as
          ``transformers`` returns it (see :class:`BridgeTowerOutput`);
        * ``output_attentions``: ``attentions`` (self-attention) and ``cross_attentions`` of
          every cross layer, differentiable (computed by the ``math`` attention backend);
        * ``return_dict=False``: a tuple (``out.to_tuple()``);
        * ``token_type_ids``: checked against ``input_ids`` and unused (the text token type is
          row 0 of ``token_type_embeddings``, as in ``transformers``);
        * ``interpolate_pos_encoding``: unused; position embeddings are always interpolated
          for other image sizes (``transformers`` raises on ``False`` with another size);
        * ``image_token_type_idx``: ``None`` means 1.

        ``output_hidden_states``, ``output_attentions`` and ``return_dict`` left at ``None`` take
        the run-time attributes of ``model.config`` when set (as in ``transformers``; see
        :class:`~bridgetower.models.base.ModelConfig`).  ``mask_image_padding`` overrides the
        model's setting (see the class docstring).
        ``inputs_embeds`` / ``image_embeds`` are not supported (``ValueError``).
        ``pooled_only`` is :meth:`fuse`'s (the task models turn it off when hidden states or
        attentions are requested, so that those have ``transformers``' shapes).
        """
        for name, value in (("inputs_embeds", inputs_embeds), ("image_embeds", image_embeds)):
            if value is not None:
                raise ValueError(f"BridgeTowerModel does not take {name}: pass input_ids and pixel_values")
        if pixel_values is None:
            raise ValueError("BridgeTowerModel needs pixel_values (B, 3, H, W)")
        if token_type_ids is not None and (
            not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != getattr(input_ids, "shape", None)
        ):
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {tuple(getattr(input_ids, 'shape', ()))}, got "
                f"{getattr(token_type_ids, 'shape', type(token_type_ids).__name__)}"
            )
        hidden = bool(self._config_default("output_hidden_states", output_hidden_states, False))
        attend = bool(self._config_default("output_attentions", output_attentions, False))
        return_dict = self._config_default("return_dict", return_dict, True)
        self.text_model.check_inputs(input_ids, attention_mask)
        _check_pair(input_ids, pixel_values)
        text_states = self.text_model(input_ids, attention_mask, output_hidden_states=hidden)
        image_states = self.vision_model(pixel_values, output_hidden_states=hidden)
        if hidden:
            (text_states, text_every), (image_states, image_every) = text_states, image_states
        image_mask = self.image_mask(pixel_mask, pixel_values, mask_image_padding)
        extra = {"output_attentions": True} if attend else {}
        out = self.fuse(
            text_states,
            image_states,
            attention_mask,
            image_mask,
            image_token_type_idx=1 if image_token_type_idx is None else image_token_type_idx,
            output_hidden_states=hidden,
            pooled_only=pooled_only,
            **extra,
        )
        if hidden:
            # transformers' layout: the vision states sequence-first, (1 + P, B, W)
            every_image = tuple(h.transpose(0, 1) for h in image_every)
            out = dataclasses.replace(out, hidden_states=(text_every, every_image, out.cross_hidden_states))
        return out.to_tuple() if return_dict is False else out

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

        Each tower ran once per input however many pairs use it.  The states are then gathered
        (``index_select``); a :class:`BridgeTowerModel` gathers after its cross-modal
        transforms and first-layer self-attention, which also run once per distinct input.
        """
        if type(self).fuse is BridgeTowerModel.fuse:
            return self.fuse(text_states, image_states, attention_mask, image_mask, pooled_only=pooled_only,
                             text_index=text_index, image_index=image_index)
        ts = [t.index_select(0, text_index) for t in text_states]
        vs = [v.index_select(0, image_index) for v in image_states]
        am = attention_mask.index_select(0, text_index) if attention_mask is not None else None
        im = image_mask.index_select(0, image_index) if image_mask is not None else None
        return self.fuse(ts, vs, am, im, pooled_only=pooled_only)


def check_pixel_values(pixel_values: torch.Tensor) -> None:
    """``ValueError`` / ``TypeError`` unless ``pixel_values`` is a non-empty floating (B, 3, H, W)
    tensor (uint8 images have not been through the processor)."""
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        raise ValueError(
            "pixel_values must be a (B, 3, H, W) tensor, got "
            f"{getattr(pixel_values, 'shape', type(pixel_values).__name__)}"
        )
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values is an empty batch (B = 0): pass at least one image")
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values must be floating point (images rescaled and normalised, as the processor "
            f"returns them), got {pixel_values.dtype}; run the images through BridgeTowerProcessor"
        )


def _check_pair(input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
    check_pixel_values(pixel_values)
    if input_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(
            f"batch sizes differ: input_ids {tuple(input_ids.shape)} and pixel_values "
            f"{tuple(pixel_values.shape)}"
        )
