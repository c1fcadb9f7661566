"""The InfGen decode, written once over a table of ops.

Every backend runs these functions: the reference (`TORCH_OPS`), the runtime's torch and triton
backends and the ONNX export each supply an `Ops` whose functions compute the heavy ops
(convolutions, GroupNorm(+SiLU), nearest 2x, the two attentions, a resnet's residual add); the
mid block's attention residual, LayerNorms, linears, GELU and reshapes stay plain torch on the model's own modules. Nothing here patches a
module's forward.

    decode_grid = up_blocks . mid_block . tokens         (STAGES, in that order)
    tokens      scaled latent (B, C, h, w) -> post_quant_conv, conv_in, conv_tokens, latent INPE
                -> N cross-attention blocks over the mask tokens -> (B, d, rows, W')
    mid_block   resnet, one-head self-attention over all pixels, resnet -> (B, C, H', W')
    up_blocks   4 up blocks (resnets, nearest 2x + conv), GroupNorm + SiLU, conv_out
                -> (B, 3, 8H', 8W')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

STAGES = ("tokens+cross_attn", "mid_block", "up_blocks")


def _residual_add(h: Tensor, x: Tensor) -> Tensor:
    return h.add_(x)  # h is the conv's fresh output: add in place (one full-size tensor fewer)


@dataclass(frozen=True)
class Ops:
    """The ops a backend supplies. Each takes the reference module whose weights it uses."""

    conv2d: Callable[[nn.Conv2d, Tensor], Tensor]               # conv, x (B, Cin, H, W) -> (B, Cout, H', W')
    group_norm: Callable[[nn.GroupNorm, Tensor, bool], Tensor]  # norm, x (B, C, H, W), silu -> GroupNorm(x) [+ SiLU]
    upsample2x: Callable[[Tensor], Tensor]                      # nearest: (B, C, H, W) -> (B, C, 2H, 2W)
    cross_attention: Callable[[Tensor, Tensor, Tensor], Tensor]  # q (B, h, N, hd), k, v (B, h, T, hd) -> (B, h, N, hd)
    self_attention: Callable[[Tensor, Tensor, Tensor], Tensor]   # q, k, v (B, 1, N, C) -> (B, 1, N, C)
    residual_add: Callable[[Tensor, Tensor], Tensor] = _residual_add  # a resnet's h (its conv's fresh output,
                                                                       # may be overwritten), x -> h + x


def _conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    return conv(x)


def _group_norm(norm: nn.GroupNorm, x: Tensor, silu: bool) -> Tensor:
    y = norm(x)
    return F.silu(y) if silu else y


def _upsample2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head dim)


TORCH_OPS = Ops(conv2d=_conv2d, group_norm=_group_norm, upsample2x=_upsample2x,
                cross_attention=_sdpa, self_attention=_sdpa)


def upsample_nearest2x(x: Tensor) -> Tensor:
    """Nearest 2x as one broadcast copy, exactly F.interpolate(scale_factor=2, 'nearest'), output
    channels-last. Exports as Transpose/Expand/Reshape (TensorRT's Resize has no bf16) and has no
    2^31-element limit (PyTorch's NHWC upsample kernel has). (B, C, H, W) -> (B, C, 2H, 2W)."""
    B, C, H, W = x.shape
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view for channels-last x
    y = nhwc[:, :, None, :, None, :].expand(B, H, 2, W, 2, C).reshape(B, 2 * H, 2 * W, C)
    return y.permute(0, 3, 1, 2)  # (B, C, 2H, 2W), channels-last


# ----------------------------------------------------------------------------- per-size tensors
def mask_and_q0(model, Hp: int, Wp: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The per-size inputs of `tokens`: mask tokens (1, H'W', d) (computed by the model's INPE
    unless given) and blocks[0]'s queries for them (1, H'W', d), None without blocks. They depend
    only on (H', W') and the weights: backends cache them per size."""
    dec = model.decoder
    if mask is None:
        mask = dec.mask_tokens(Hp, Wp)  # (1, N, d)
    if not len(dec.blocks):
        return mask, None
    b = dec.blocks[0]
    return mask, b.to_q(b.norm_q(mask))  # (1, N, d) each


# ----------------------------------------------------------------------------- building blocks
def resnet(ops: Ops, block, x: Tensor) -> Tensor:
    """ResnetBlock2D: (GroupNorm+SiLU, conv3x3) twice plus the (1x1 conv) shortcut. (B, Cin, H, W) -> (B, Cout, H, W)."""
    h = ops.conv2d(block.conv1, ops.group_norm(block.norm1, x, True))
    h = ops.conv2d(block.conv2, ops.group_norm(block.norm2, h, True))
    if block.conv_shortcut is not None:
        x = ops.conv2d(block.conv_shortcut, x)
    return ops.residual_add(h, x)


def mid_attention(ops: Ops, attn, x: Tensor) -> Tensor:
    """The mid block's one-head self-attention over all pixels, with a residual. x: (B, C, H, W)."""
    B, C, H, W = x.shape
    h = ops.group_norm(attn.group_norm, x, False).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C)
    q, k, v = attn.to_q(h)[:, None], attn.to_k(h)[:, None], attn.to_v(h)[:, None]  # (B, 1, HW, C)
    o = attn.to_out[0](ops.self_attention(q, k, v)[:, 0])  # (B, HW, C)
    return x + o.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)


def upsample(ops: Ops, up, x: Tensor) -> Tensor:
    """Upsample2D: nearest 2x, conv3x3. (B, C, H, W) -> (B, C, 2H, 2W)."""
    return ops.conv2d(up.conv, ops.upsample2x(x))


def cross_block(ops: Ops, blk, x: Tensor, ctx: Tensor, q: Tensor | None = None) -> Tensor:
    """CrossAttnBlock: x (B, N, d) mask tokens attend to ctx (B, T, d) latent tokens, then an MLP;
    both residual. q: precomputed to_q(norm_q(x)) (B, N, d), or None."""
    B, N, D = x.shape
    if q is None:
        q = blk.to_q(blk.norm_q(x))
    kv = blk.norm_kv(ctx)  # (B, T, d)
    o = ops.cross_attention(blk.heads(q), blk.heads(blk.to_k(kv)), blk.heads(blk.to_v(kv)))  # (B, h, N, hd)
    x = x + blk.to_out(o.transpose(1, 2).reshape(B, N, D))  # (B, N, d)
    return x + blk.fc2(F.gelu(blk.fc1(blk.norm_mlp(x))))


# ----------------------------------------------------------------------------- stages
def latent_tokens(ops: Ops, dec, z: Tensor) -> Tensor:
    """Latent after post_quant_conv (B, C, h, w) -> latent tokens (B, h*w, d): conv_in,
    conv_tokens, plus the latent INPE. dec: the model's decoder."""
    x = ops.conv2d(dec.conv_tokens, ops.conv2d(dec.conv_in, z))  # (B, d, h, w)
    B, d, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, h * w, d) + dec.latent_pos(h, w)  # (B, T, d)


def tokens(ops: Ops, model, z: Tensor, Hp: int, Wp: int,
           mask: Tensor | None = None, q0: Tensor | None = None) -> Tensor:
    """Scaled latent z (B, C, h, w) -> features (B, d, rows, W'), channels-last.

    mask: mask tokens (1, rows*W', d) (default: mask_and_q0's, all H' rows); a caller may pass a
    slice of whole rows (distributed decode): rows = mask.shape[1] // W'. q0: blocks[0]'s queries
    for exactly that mask (default: computed here)."""
    dec = model.decoder
    z = z.to(model.post_quant_conv.weight.dtype) / model.config.scaling_factor
    ctx = latent_tokens(ops, dec, ops.conv2d(model.post_quant_conv, z))  # (B, T, d)
    B, d = ctx.shape[0], ctx.shape[2]
    if mask is None:
        mask, q0 = mask_and_q0(model, Hp, Wp)
    rows = mask.shape[1] // Wp
    t = mask.expand(B, -1, -1)  # (B, N, d)
    for i, blk in enumerate(dec.blocks):
        t = cross_block(ops, blk, t, ctx, q0.expand(B, -1, -1) if (i == 0 and q0 is not None) else None)
    t = dec.norm_tokens(t)
    return t.reshape(B, rows, Wp, d).permute(0, 3, 1, 2)  # (B, d, rows, W'), channels-last


def mid_block(ops: Ops, model, x: Tensor) -> Tensor:
    """UNetMidBlock2D: resnet, self-attention, resnet. (B, d, H', W') -> (B, C, H', W')."""
    mb = model.decoder.mid_block
    x = resnet(ops, mb.resnets[0], x)
    x = mid_attention(ops, mb.attentions[0], x)
    return resnet(ops, mb.resnets[1], x)


def up_blocks(ops: Ops, model, x: Tensor) -> Tensor:
    """Up blocks, then conv_norm_out + SiLU and conv_out. (B, C, H', W') -> (B, 3, 8H', 8W')."""
    dec = model.decoder
    for blk in dec.up_blocks:
        for r in blk.resnets:
            x = resnet(ops, r, x)
        if blk.upsamplers is not None:
            x = upsample(ops, blk.upsamplers[0], x)
    return ops.conv2d(dec.conv_out, ops.group_norm(dec.conv_norm_out, x, True))


def stage_fns(ops: Ops, model, Hp: int, Wp: int, mask: Tensor | None = None,
              q0: Tensor | None = None) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """The decode as [(stage name, fn)], names STAGES; composed in order on z they equal decode_grid."""
    return [(STAGES[0], lambda z: tokens(ops, model, z, Hp, Wp, mask, q0)),
            (STAGES[1], lambda x: mid_block(ops, model, x)),
            (STAGES[2], lambda x: up_blocks(ops, model, x))]


def run_stages(stages, x: Tensor) -> Tensor:
    """Compose [(stage name, fn)] (stage_fns, a backend's stages) in order on x."""
    for _, fn in stages:
        x = fn(x)
    return x


def decode_grid(ops: Ops, model, z: Tensor, Hp: int, Wp: int,
                mask: Tensor | None = None, q0: Tensor | None = None) -> Tensor:
    """Scaled latent (B, C, h, w) -> uncropped image (B, 3, 8*rows, 8W') in the model's dtype."""
    x = tokens(ops, model, z, Hp, Wp, mask, q0)  # (B, d, rows, W')
    x = mid_block(ops, model, x)                 # (B, C, rows, W')
    return up_blocks(ops, model, x)              # (B, 3, 8 rows, 8W')
