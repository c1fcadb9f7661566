"""Cost model: FLOPs per decode stage (2 per multiply-add), as torch's FlopCounterMode counts them
(convolutions, matrix products, attention; norms and element-wise ops are not counted), read from
the decode itself run on the meta device (infgen_ref/walk.py), and the bytes the triton backend's
up blocks move outside the convs (up_block_traffic)."""
from __future__ import annotations

import functools
import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from .banded import MAX_CONV_ELEMS
from .config import InfGenConfig
from .decode import TORCH_OPS, up_blocks
from .walk import ConfigKey, meta_model, run

H100_BF16_FLOPS = 790e12  # a bf16 matrix product measured on the lent H100 (docs/design.md)
STAGES = ("tokens", "cross_attn", "mid_block", "up_blocks")


def stage_of(module: str) -> str:
    """The cost stage (STAGES) of a module of the decode, by name ("" before the first: tokens)."""
    if module.startswith("decoder.blocks."):
        return "cross_attn"
    if module.startswith("decoder.mid_block."):
        return "mid_block"
    if module.startswith(("decoder.up_blocks.", "decoder.conv_norm_out", "decoder.conv_out")):
        return "up_blocks"
    return "tokens"


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


def decode_flops(cfg: InfGenConfig, h: int, w: int, latent_hw: tuple[int, int] | None = None,
                 batch: int = 1) -> dict[str, int]:
    """FLOPs of one decode of `batch` latents (B, C, *latent_hw) to (h, w), per stage (keys: STAGES)
    plus "total": FlopCounterMode over decode_grid with the reference ops, on the meta device.

    tokens: post_quant_conv, conv_in, conv_tokens, both INPEs; cross_attn: the N blocks (with
    blocks[0]'s query projection of the mask tokens); mid_block: 2 resnets + the one-head
    attention; up_blocks: up blocks and conv_out. The two INPEs and the first block's queries of
    the mask tokens depend on the sizes only: counted once per decode, whatever the batch."""
    for name, v in (("height", h), ("width", w), ("batch", batch)):
        _positive(name, v)
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    latent = (_positive("latent height", hl), _positive("latent width", wl))
    return dict(_decode_flops(ConfigKey(cfg), math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale), latent, batch))


@functools.lru_cache(maxsize=64)
def _decode_flops(key: ConfigKey, Hp: int, Wp: int, latent_hw: tuple[int, int], batch: int) -> dict[str, int]:
    flops = run(key.cfg, Hp, Wp, TORCH_OPS, latent_hw, batch, count_flops=True).flops
    out = dict.fromkeys(STAGES, 0)
    for module, n in flops.items():
        out[stage_of(module)] += n
    out["total"] = sum(out.values())
    return out


def floor_seconds(flops: float, peak: float = H100_BF16_FLOPS) -> float:
    """The physical floor: FLOPs at the measured bf16 matrix-product rate."""
    return flops / peak


TRAFFIC = ("gn_stats", "gn_apply", "residual_add", "upsample", "band_copy")
H100_HBM_BYTES_S = 3.35e12  # H100 SXM HBM3, datasheet peak


def up_block_traffic(cfg: InfGenConfig, h: int, w: int, batch: int = 1, itemsize: int = 2,
                     fused: bool = True, max_elems: int = MAX_CONV_ELEMS) -> dict[str, int]:
    """Bytes the triton backend's up_blocks stage (up blocks, conv_norm_out) moves in DRAM outside
    the convs, per kind (keys: TRAFFIC) plus "total"; each read or write of an activation counted
    once (no cache reuse, which at these sizes there is none of between passes). Counted by an op
    table over decode.py's up_blocks, run on the meta device:

    gn_stats      the GroupNorm statistics pass: reads its input
    gn_apply      GroupNorm apply + SiLU (one fused pass): reads the input, writes the output
    residual_add  a resnet's h + x: reads both, writes h
    upsample      nearest 2x: reads x, writes 4x
    band_copy     a conv split into row bands (input or output past max_elems elements) writes each
                  band to a temporary and copies its kept rows into the output: reads and writes it

    fused=False: the backend before add_stats (every GroupNorm takes its own statistics). fused=True
    (the backend now): a residual add and a band copy take the GroupNorm statistics of what they
    write, so a GroupNorm reading a resnet's output or a banded conv's output has no stats pass
    (the mid block's last resnet feeds the first up block's norm1 with its statistics too)."""
    for name, v in (("height", h), ("width", w), ("batch", batch), ("itemsize", itemsize), ("max_elems", max_elems)):
        _positive(name, v)
    t = dict.fromkeys(TRAFFIC, 0)

    def size(x) -> int:
        return x.numel() * itemsize

    def group_norm(norm, x, silu):
        if not (fused and getattr(x, "_stats_known", False)):
            t["gn_stats"] += size(x)
        t["gn_apply"] += 2 * size(x)
        return torch.empty_like(x)

    def conv2d(conv, x):
        y = conv(x)
        if max(x.numel(), y.numel()) > max_elems:
            t["band_copy"] += 2 * size(y)
            y._stats_known = True  # the band copy took them
        return y

    def upsample2x(x):
        y = F.interpolate(x, scale_factor=2.0, mode="nearest")
        t["upsample"] += size(x) + size(y)
        return y

    def residual_add(h, x):
        t["residual_add"] += 3 * size(h)
        h = h.add_(x)
        h._stats_known = True
        return h

    ops = replace(TORCH_OPS, conv2d=conv2d, group_norm=group_norm, upsample2x=upsample2x, residual_add=residual_add)
    x = torch.empty(batch, cfg.block_out_channels[-1], math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale),
                    device="meta")
    x._stats_known = True  # the mid block's last resnet (a residual add) feeds the first norm1
    with torch.no_grad():
        up_blocks(ops, meta_model(cfg), x)
    t["total"] = sum(t.values())
    return t
