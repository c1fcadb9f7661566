"""Cost model: FLOPs per decode stage (2 per multiply-add), as torch's FlopCounterMode counts them
(convolutions, matrix products, attention; norms and element-wise ops are not counted), and the
bytes the triton backend's up blocks move outside the convs (up_block_traffic)."""
from __future__ import annotations

import math

from .banded import MAX_CONV_ELEMS
from .config import InfGenConfig

H100_BF16_FLOPS = 790e12  # a bf16 matrix product measured on the lent H100 (docs/design.md)
STAGES = ("tokens", "cross_attn", "mid_block", "up_blocks")


def _conv(cin: int, cout: int, k: int, h: int, w: int) -> float:
    return 2.0 * cin * cout * k * k * h * w


def _resnet(cin: int, cout: int, h: int, w: int) -> float:
    f = _conv(cin, cout, 3, h, w) + _conv(cout, cout, 3, h, w)
    return f + (_conv(cin, cout, 1, h, w) if cin != cout else 0.0)


def decode_flops(cfg: InfGenConfig, h: int, w: int, latent_hw: tuple[int, int] | None = None,
                 batch: int = 1) -> dict[str, float]:
    """FLOPs of one decode to (h, w), per stage (keys: STAGES) plus "total".

    tokens: post_quant_conv, conv_in, conv_tokens, INPE (Fourier projection and MLPs); cross_attn: the N blocks;
    mid_block: 2 resnets + the one-head attention; up_blocks: up blocks and conv_out."""
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    d, C, F2 = cfg.token_dim, cfg.latent_channels, 2 * cfg.inpe_fourier_dim
    T, N = hl * wl, Hp * Wp
    ch = list(reversed(cfg.block_out_channels))
    lin = lambda n, i, o: 2.0 * n * i * o  # noqa: E731
    tokens = (_conv(C, C, 1, hl, wl) + _conv(C, ch[0], 3, hl, wl) + _conv(ch[0], d, 3, hl, wl)
              + lin(T + N, 3, F2 // 2)  # INPE: sphere points times the Fourier matrix B
              + lin(T, F2, d) + lin(T, d, d) + lin(N, F2, d) + lin(N, d, d))
    block = (2 * lin(N, d, d) + 2 * lin(T, d, d) + 4.0 * N * T * d
             + lin(N, d, cfg.mlp_dim) + lin(N, cfg.mlp_dim, d))
    cross = cfg.num_blocks * block
    mid = 2 * _resnet(ch[0], ch[0], Hp, Wp) + 4 * lin(N, ch[0], ch[0]) + 4.0 * N * N * ch[0]
    up, hh, ww, cin = 0.0, Hp, Wp, ch[0]
    for i, cout in enumerate(ch):
        for j in range(cfg.layers_per_block + 1):
            up += _resnet(cin if j == 0 else cout, cout, hh, ww)
        cin = cout
        if i < len(ch) - 1:
            hh, ww = 2 * hh, 2 * ww
            up += _conv(cout, cout, 3, hh, ww)
    up += _conv(ch[-1], cfg.in_channels, 3, hh, ww)
    out = {"tokens": tokens, "cross_attn": cross, "mid_block": mid, "up_blocks": up}
    out = {k: v * batch for k, v in out.items()}
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
    once (no cache reuse, which at these sizes there is none of between passes).

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
    e, B = itemsize, batch
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    t = dict.fromkeys(TRAFFIC, 0)

    def size(C, H, W):
        return B * C * H * W * e

    def norm(C, H, W, known):  # GroupNorm+SiLU of x whose statistics are known (carried) or not
        if not (fused and known):
            t["gn_stats"] += size(C, H, W)
        t["gn_apply"] += 2 * size(C, H, W)

    def conv(Cin, Cout, H, W):  # -> whether its output carries statistics (a banded conv's copy took them)
        if B * max(Cin, Cout) * H * W > max_elems:
            t["band_copy"] += 2 * size(Cout, H, W)
            return True
        return False

    def resnet(Cin, Cout, H, W, known):
        norm(Cin, H, W, known)
        norm(Cout, H, W, conv(Cin, Cout, H, W))
        conv(Cout, Cout, H, W)
        if Cin != Cout:
            conv(Cin, Cout, H, W)  # the 1x1 shortcut
        t["residual_add"] += 3 * size(Cout, H, W)

    ch = list(reversed(cfg.block_out_channels))
    C, H, W, known = ch[0], Hp, Wp, True  # the mid block's last resnet (a residual add) feeds the first norm1
    for i, cout in enumerate(ch):
        for _ in range(cfg.layers_per_block + 1):
            resnet(C, cout, H, W, known)
            C, known = cout, True
        if i < len(ch) - 1:
            t["upsample"] += size(C, H, W) + 4 * size(C, H, W)
            H, W = 2 * H, 2 * W
            known = conv(C, C, H, W)
    norm(C, H, W, known)  # conv_norm_out
    conv(C, cfg.in_channels, H, W)  # conv_out
    t["total"] = sum(t.values())
    return t
