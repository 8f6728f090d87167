"""The vision tower: an open_clip ViT ``VisionTransformer`` returning its top layers.

BridgeTower taps the outputs of the top ``N`` blocks of a CLIP ViT (CLS token included) and
feeds each, after CLIP's final LayerNorm ``ln_post`` (or one LayerNorm per layer,
``ln_separate``), to one cross-modal layer.  The transformer itself is open_clip's
:class:`open_clip.transformer.VisionTransformer`, built from :class:`VisionConfig` with
random weights (no network); its projection ``proj`` and pooling are not used and removed.

Parameter names are open_clip's (= OpenAI CLIP's): ``visual.conv1``, ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.N.*``,
``visual.ln_post``, plus ``ln_separate.N`` when configured.

Images of another size than ``config.image_size`` get bicubically resized position embeddings
(the CLS position kept), as the official code and the HF port do; sizes that are not a
multiple of the patch size use the whole patches (the patch convolution floors).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...kernels import act_linear, attention, check_attention_backend, layer_norm_linear, quick_gelu
from ..config import VisionConfig

__all__ = ["OpenCLIPVisionEncoder", "QuickGELU", "resize_pos_embed"]


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation ``x * sigmoid(1.702 x)``.

    Unlike a plain composition it keeps only its input for the backward pass (one activation
    tensor of the 4x-wide MLP instead of three), which matters at 576-px images.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


class _CLIPMLP(nn.Sequential):
    """open_clip's ``c_fc -> gelu -> c_proj`` block (same children, same names).

    With QuickGELU, training runs ``c_proj(gelu(.))`` as one autograd node that keeps only
    ``c_fc``'s output for the backward (the activation is recomputed), one 4x-wide
    tensor per block instead of two.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.c_fc(x))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """``c_proj(gelu(h))`` from ``c_fc``'s output ``h``."""
        if isinstance(self.gelu, QuickGELU):
            return act_linear(h, self.c_proj, "quick")
        if isinstance(self.gelu, nn.GELU) and self.gelu.approximate == "none":
            return act_linear(h, self.c_proj, "gelu")
        return self.c_proj(self.gelu(h))


class _VisionSelfAttention(nn.MultiheadAttention):
    """open_clip's block attention (an ``nn.MultiheadAttention``, same parameters and names)
    run through :func:`~bridgetower.layers.attention.attention`.

    Self-attention on batch-first input without a mask (what a ViT block does) takes the
    packed path: one ``in_proj`` product, per-head views of it (no copies), the attention
    backend of the model (``backend``; None = automatic), ``out_proj``.  This skips the
    layout copies ``nn.MultiheadAttention`` makes for its sequence-first kernels, and lets
    ``set_attention_backend`` reach the vision tower.  Any other call (cross-attention,
    masks, attention weights) goes to ``nn.MultiheadAttention`` unchanged.
    """

    backend: str | None = None

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if (query is key and key is value and self.batch_first and query.ndim == 3
                and not need_weights and attn_mask is None and key_padding_mask is None
                and not is_causal and self.in_proj_weight is not None):
            return self._packed(query), None
        return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                               need_weights=need_weights, attn_mask=attn_mask,
                               average_attn_weights=average_attn_weights, is_causal=is_causal)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(F.linear(x, self.in_proj_weight, self.in_proj_bias))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention and ``out_proj`` from the packed projection ``qkv``, ``(B, L, 3E)``."""
        B, L, E3 = qkv.shape
        E, H = E3 // 3, self.num_heads
        q, k, v = qkv.view(B, L, 3, H, E // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, Dh)
        out = attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                        backend=self.backend)
        # SDPA's CPU kernel and the chunked path return a (B, L, H, Dh) layout: then this
        # is a view, not a copy
        return self.out_proj(out.transpose(1, 2).reshape(B, L, E))


def _layer_norm_linear(x: torch.Tensor, ln: nn.LayerNorm, linear_weight, linear_bias):
    return layer_norm_linear(x, ln.weight, ln.bias, ln.eps, linear_weight, linear_bias)


class _CLIPBlock(nn.Module):
    """open_clip's pre-LN ViT block ``ResidualAttentionBlock``, rebuilt from its children
    (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``: same parameters and names).

    ``forward(q_x, k_x=None, v_x=None, attn_mask=None)`` is open_clip's self-attention
    block.  In training (grad enabled, no autocast, not compiling, parameters in the input's
    dtype, no LayerScale, no mask) both LayerNorms are fused with the Linear after them
    (:func:`~bridgetower.kernels.layer_norm_linear`): the block keeps two fewer ``(B, L, W)`` tensors for the
    backward, about 190 MB at 576 px, batch 2, over the 12 blocks of ViT-B/16.  A module of
    its own (not a function applied to open_clip's block) so that module hooks, e.g.
    FSDP2's unsharding, see the parameters used.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        if hasattr(self, "ln_1_kv"):
            raise ValueError("cross-attention blocks are not used by the vision tower")

    def get_weight_dtype(self) -> torch.dtype:  # what open_clip's VisionTransformer asks
        return self.mlp.c_fc.weight.dtype

    def _fusable(self, x: torch.Tensor) -> bool:
        return (torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)
                and not torch.compiler.is_compiling()
                and isinstance(self.attn, _VisionSelfAttention) and isinstance(self.mlp, _CLIPMLP)
                and isinstance(self.ls_1, nn.Identity) and isinstance(self.ls_2, nn.Identity)
                and self.ln_1.weight is not None and self.ln_2.weight is not None
                and x.dtype == self.attn.in_proj_weight.dtype == self.ln_1.weight.dtype)

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None,
                v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("the vision tower's blocks do self-attention only (k_x/v_x given)")
        x = q_x
        if attn_mask is None and self._fusable(x):
            attn, mlp = self.attn, self.mlp
            x = x + attn.attend(_layer_norm_linear(x, self.ln_1, attn.in_proj_weight,
                                                   attn.in_proj_bias))
            h = _layer_norm_linear(x, self.ln_2, mlp.c_fc.weight, mlp.c_fc.bias)
            return x + mlp.project(h)
        if attn_mask is not None:
            attn_mask = attn_mask.to(x.dtype)
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a ``(1 + g*g, W)`` CLIP position table to ``(1 + gh*gw, W)``."""
    cls_pos, patch_pos = pos[:1], pos[1:]  # (1, W), (g*g, W)
    g = int(round(patch_pos.shape[0] ** 0.5))
    if g * g != patch_pos.shape[0]:
        raise ValueError(f"position table of {patch_pos.shape[0]} patches is not a square grid")
    if (g, g) == tuple(grid):
        return pos
    width = pos.shape[-1]
    patch_pos = patch_pos.reshape(1, g, g, width).permute(0, 3, 1, 2)  # (1, W, g, g)
    patch_pos = F.interpolate(
        patch_pos.float(), size=grid, mode="bicubic", align_corners=False
    ).to(pos.dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)  # (gh*gw, W)
    return torch.cat([cls_pos, patch_pos], dim=0)


class OpenCLIPVisionEncoder(nn.Module):
    """An open_clip CLIP ViT returning the hidden states of its top ``num_outputs`` blocks.

    Args:
        config: sizes of the tower.
        num_outputs: how many top blocks to return (the number of cross-modal layers).
        device, dtype: of the parameters.

    ``forward(pixel_values)`` with ``pixel_values`` ``(B, 3, H, W)`` returns a list of
    ``num_outputs`` tensors ``(B, 1 + (H//p)*(W//p), width)``, bottom to top, each after
    ``ln_post`` (or ``ln_separate[i]``).  ``H`` and ``W`` need not be multiples of the patch
    size ``p``: the patch convolution floors, as in ``transformers``.  With
    ``output_hidden_states=True`` it returns ``(tapped, every)``, ``every`` being the
    ``ln_pre`` output and each block's output (no ``ln_post``), batch first.
    """

    def __init__(
        self,
        config: VisionConfig,
        *,
        num_outputs: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        from open_clip.transformer import LayerNorm, VisionTransformer

        if not 1 <= num_outputs <= config.layers:
            raise ValueError(
                f"num_outputs={num_outputs} must be in [1, {config.layers}] (vision layers)"
            )
        self.config = config
        self.num_outputs = num_outputs
        self.gradient_checkpointing = False
        norm = functools.partial(LayerNorm, eps=config.layer_norm_eps)
        self.visual = VisionTransformer(
            image_size=config.image_size,
            patch_size=config.patch_size,
            width=config.width,
            layers=config.layers,
            heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            output_dim=config.width,
            act_layer=QuickGELU if config.quick_gelu else nn.GELU,
            norm_layer=norm,
        )
        # BridgeTower reads the token states: no projection / pooling head.
        self.visual.proj = None
        blocks = self.visual.transformer.resblocks
        for i, block in enumerate(blocks):
            block.mlp = _CLIPMLP(OrderedDict(block.mlp.named_children()))
            block.attn = _VisionSelfAttention(config.width, config.num_heads, batch_first=True)
            blocks[i] = _CLIPBlock(block)
        if config.ln_separate:
            self.ln_separate = nn.ModuleList(
                [norm(config.width) for _ in range(config.layers)]
            )
        else:
            self.ln_separate = None
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)
        self.reset_parameters()

    @property
    def width(self) -> int:
        return self.config.width

    def reset_parameters(self) -> None:
        """CLIP's initialisation (the OpenAI CLIP scheme HF's port also uses)."""
        v = self.visual
        w = self.config.width
        scale = w**-0.5
        proj_std = scale * (2 * self.config.layers) ** -0.5
        fc_std = (2 * w) ** -0.5
        with torch.no_grad():
            nn.init.normal_(v.class_embedding, std=scale)
            nn.init.normal_(v.positional_embedding, std=scale)
            nn.init.normal_(v.conv1.weight, std=scale)
            for block in v.transformer.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=scale)
                nn.init.zeros_(block.attn.in_proj_bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.zeros_(block.mlp.c_fc.bias)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
                nn.init.zeros_(block.mlp.c_proj.bias)
            lns = [v.ln_pre, v.ln_post] + [m for b in v.transformer.resblocks for m in (b.ln_1, b.ln_2)]
            if self.ln_separate is not None:
                lns += list(self.ln_separate)
            for ln in lns:
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        self.gradient_checkpointing = bool(enable)

    def set_attention_backend(self, backend: str | None) -> None:
        """Attention backend of every block (``None``: chosen per call)."""
        check_attention_backend(backend)
        for block in self.visual.transformer.resblocks:
            block.attn.backend = backend

    def block_types(self) -> tuple[type[nn.Module], ...]:
        """Types of the transformer blocks, for FSDP units."""
        return (_CLIPBlock,)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch + class + position embeddings and ``ln_pre``: ``(B, 1 + gh*gw, width)``."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be (B, 3, H, W), got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a floating-point tensor (rescaled and normalised images, as "
                f"the processor returns them), got {pixel_values.dtype}"
            )
        p = self.config.patch_size
        h, w = pixel_values.shape[-2:]
        if h < p or w < p:
            raise ValueError(f"image size {h}x{w} is smaller than one patch ({p}x{p})")
        v = self.visual
        # the patch convolution floors: rows/columns past the last whole patch are unused
        x = v.conv1(pixel_values.to(v.conv1.weight.dtype))  # (B, W, h // p, w // p)
        x = x.flatten(2).transpose(1, 2)  # (B, gh*gw, W)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + gh*gw, W)
        x = x + resize_pos_embed(v.positional_embedding, (h // p, w // p)).to(x.dtype)
        return v.ln_pre(x)

    def post_norm(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The LayerNorm applied to the output of block ``layer`` (0-based)."""
        if self.ln_separate is not None:
            return self.ln_separate[layer](hidden)
        return self.visual.ln_post(hidden)

    def forward(
        self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        x = self.embed(pixel_values)
        every = [x]
        blocks = self.visual.transformer.resblocks
        first = len(blocks) - self.num_outputs
        outputs = []
        for i, block in enumerate(blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if output_hidden_states:
                every.append(x)
            if i >= first:
                outputs.append(self.post_norm(x, i))
        return (outputs, tuple(every)) if output_hidden_states else outputs

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"width={c.width}, layers={c.layers}, heads={c.num_heads}, patch={c.patch_size}, "
            f"image={c.image_size}, num_outputs={self.num_outputs}, quick_gelu={c.quick_gelu}"
        )
