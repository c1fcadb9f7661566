"""Memory model: the peak activation bytes of one decode, and the plan that fits a budget.

The model walks the decode of infgen_ref/decode.py layer by layer, allocating and freeing what
each op allocates and frees (the same liveness as the code: a resnet's input is held by its caller
until the resnet returns; `h.add_(x)` is in place), and records the high-water mark. Weights and
the latent are not counted: the figure is what a decode adds to a loaded model.

Per op, plain (the ops of one whole-tensor call) vs banded (infgen_ref/banded.py):

| op | torch, plain | triton, plain | banded |
|---|---|---|---|
| GroupNorm+SiLU | norm out + SiLU out (2x input, transient) | one fused output | nothing: read by the conv per band |
| conv | output | output; > 2^31 elements: + one band's output (the input band is a view) | output + one band in and out |
| nearest 2x | output (4x input) | output (4x input) | nothing: read by the conv per band |

`python -m infgen.runtime info --size WxH` prints the plan; docs/anysize.md has the 4096^2 accounting.
"""
from __future__ import annotations

import math
import re

import torch

from .banded import MAX_CONV_ELEMS, band_rows_for, conv_split_rows
from .config import InfGenConfig

MODES = ("plain", "banded")
BACKENDS = ("torch", "triton")


MAX_MEMORY_BYTES = 2 ** 60  # 1 EiB: any larger budget is a typo


def parse_bytes(text) -> int:
    """'24GB' | '512MiB' | '1.5e9' | 24_000_000_000 -> bytes (GB = 10^9, GiB = 2^30)."""
    if isinstance(text, bool):
        raise TypeError(f"memory size must be bytes (int) or a string like '24GB', got {text!r}")
    if isinstance(text, int):
        if not 1 <= text <= MAX_MEMORY_BYTES:
            raise ValueError(f"memory size must be 1..{MAX_MEMORY_BYTES} bytes (1 EiB), got {text}")
        return text
    if not isinstance(text, str):
        raise TypeError(f"memory size must be bytes (int) or a string like '24GB', got {type(text).__name__}")
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKMGT]i?B?|B)?\s*", text)
    if not m:
        raise ValueError(f"memory size must look like 24GB, 512MiB or a byte count, got {text!r}")
    unit = (m.group(2) or "B").upper().rstrip("B") or "B"
    scale = {"B": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    x = float(m.group(1)) * scale  # inf for 1e999 or 400 digits: refused below, never an OverflowError
    if not x <= MAX_MEMORY_BYTES:
        raise ValueError(f"memory size must be at most {MAX_MEMORY_BYTES} bytes (1 EiB), got {text!r}")
    n = int(x)
    if n < 1:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return n


class _Tally:
    """Live bytes and their high-water mark, on the device and in host memory. An activation larger
    than host_over bytes is placed in host memory (banded decode, activations streamed by band)."""

    def __init__(self, host_over: int | None = None):
        self.cur = {"dev": 0, "host": 0}
        self.peak = {"dev": 0, "host": 0}
        self.where = ""
        self.host_over = host_over

    def alloc(self, n: float, where: str = "", act: bool = False) -> tuple[float, str]:
        loc = "host" if act and self.host_over is not None and n > self.host_over else "dev"
        self.cur[loc] += n
        if self.cur[loc] > self.peak[loc]:
            self.peak[loc] = self.cur[loc]
            if loc == "dev":
                self.where = where
        return n, loc

    def free(self, token: tuple[float, str]) -> None:
        self.cur[token[1]] -= token[0]

    def transient(self, n: float, where: str = "") -> None:
        self.free(self.alloc(n, where))


def _band_rows(B: int, C: int, H: int, W: int, e: int, band_rows: int | None) -> int:
    """Rows per band: forced, else as the banded decode sizes them (at most BAND_BYTES, 1/16 of H)."""
    return band_rows if band_rows is not None else band_rows_for((B, C, H, W), e)


def predict_peak(cfg: InfGenConfig, h: int, w: int, batch: int = 1, dtype: torch.dtype = torch.float32,
                 backend: str = "torch", mode: str = "plain", band_rows: int | None = None,
                 latent_hw: tuple[int, int] | None = None, host_over: int | None = None, detail: bool = False):
    """Predicted peak device bytes of one decode's activations to (h, w). backend: 'torch' |
    'triton'; mode: 'plain' | 'banded'; band_rows: banded decode's rows per band (None: auto);
    host_over (banded): activations larger than this many bytes live in host memory.
    detail=True returns (device bytes, the layer where the device peak is, host bytes)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} for the memory model, got {backend!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if band_rows is not None and (not isinstance(band_rows, int) or isinstance(band_rows, bool) or band_rows < 1):
        raise ValueError(f"band_rows must be None or an int >= 1, got {band_rows!r}")
    e = dtype.itemsize
    B = batch
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    d, N, T = cfg.token_dim, Hp * Wp, hl * wl
    t = _Tally(host_over if mode == "banded" else None)
    size = lambda C, H, W: B * C * H * W * e  # noqa: E731
    banded = mode == "banded"

    def band(C_in, C_out, H, W, halo):  # one band's input (centred and normalised: 2 fp32 bands) + output
        r = min(H, _band_rows(B, max(C_in, C_out), H, W, e, band_rows)) + 2 * halo
        return B * r * W * (C_in * (8 + (e if e != 4 else 0)) + C_out * e)

    def gn(C, H, W, where):  # GroupNorm+SiLU -> the token of its output
        X = size(C, H, W)
        if banded:
            t.transient(B * min(H, _band_rows(B, C, H, W, e, band_rows)) * W * C * 4, where)
            return t.alloc(0)
        if backend == "torch":
            y = t.alloc(X, where)      # norm output
            s = t.alloc(X, where)      # SiLU output
            t.free(y)                  # norm output freed when SiLU returns
            return s
        return t.alloc(X, where)       # fused GroupNorm+SiLU

    def conv(Cin, Cout, H, W, k, where):  # allocates the output; band temporaries transient
        y = t.alloc(size(Cout, H, W), where, act=True)
        if banded:
            t.transient(band(Cin, Cout, H, W, k // 2), where)
        elif backend == "triton" and max(B * Cin * H * W, B * Cout * H * W) > MAX_CONV_ELEMS:
            rows = conv_split_rows(B, Cin, Cout, W, k)
            t.transient(B * min(H, rows + 2 * (k // 2)) * W * Cout * e, where)  # the band's output (input: a view)
        return y

    def resnet(Cin, Cout, H, W, where):  # x (Cin) is held by the caller
        s = gn(Cin, H, W, where + ".norm1")
        h1 = conv(Cin, Cout, H, W, 3, where + ".conv1")
        t.free(s)
        s = gn(Cout, H, W, where + ".norm2")
        h2 = conv(Cout, Cout, H, W, 3, where + ".conv2")
        t.free(s)
        t.free(h1)
        if Cin != Cout:
            t.free(conv(Cin, Cout, H, W, 1, where + ".conv_shortcut"))  # h2.add_(shortcut) in place
        return h2

    # tokens: latent tokens (T, d) and the N x d mask-token stream through the blocks (MLP hidden 4d)
    ctx = t.alloc(B * T * d * e, "tokens")
    t.transient(B * N * e * (4 * d + 2 * cfg.mlp_dim) + 3 * B * T * d * e, "tokens.cross_attn")
    C = d
    x = t.alloc(size(C, Hp, Wp), "tokens")
    t.free(ctx)
    # mid block
    ch = list(reversed(cfg.block_out_channels))
    y = resnet(C, ch[0], Hp, Wp, "mid_block.resnets.0")
    t.free(x)
    x = y
    X = size(ch[0], Hp, Wp)  # attention: norm out (a copy when reshaped), q, k, v, SDPA out, to_out, x + o
    t.transient((0 if banded else X) + 6 * X, "mid_block.attentions.0")
    y = t.alloc(X, "mid_block.attentions.0")
    t.free(x)
    x = y
    y = resnet(ch[0], ch[0], Hp, Wp, "mid_block.resnets.1")
    t.free(x)
    x, C, H, W = y, ch[0], Hp, Wp
    for i, cout in enumerate(ch):
        for j in range(cfg.layers_per_block + 1):
            y = resnet(C, cout, H, W, f"up_blocks.{i}.resnets.{j}")
            t.free(x)
            x, C = y, cout
        if i < len(ch) - 1:
            where = f"up_blocks.{i}.upsamplers.0"
            up = t.alloc(0 if banded else size(C, 2 * H, 2 * W), where)
            y = conv(C, C, 2 * H, 2 * W, 3, where + ".conv")
            t.free(up)
            t.free(x)
            x, H, W = y, 2 * H, 2 * W
    s = gn(C, H, W, "conv_norm_out")
    y = conv(C, cfg.in_channels, H, W, 3, "conv_out")
    t.free(s)
    t.free(x)
    if detail:
        return int(t.peak["dev"]), t.where, int(t.peak["host"])
    return int(t.peak["dev"])


def plan(cfg: InfGenConfig, h: int, w: int, batch: int = 1, dtype: torch.dtype = torch.float32,
         backend: str = "torch", budget: int | None = None, banded="auto", band_rows: int | None = None,
         host_streaming: bool = False):
    """(mode, band rows, predicted peak device bytes) for a decode. banded: 'auto' (banded when the
    plain peak exceeds budget), True or False. mode: 'plain', 'banded', or 'banded-host' (banded
    with the activations past `host_threshold` bytes in host memory: only with host_streaming, i.e.
    a CUDA device, and only when banded alone does not fit). band rows: None for plain; for banded,
    the rows of a band at the full output resolution."""
    if banded not in ("auto", True, False):
        raise ValueError(f"banded must be 'auto', True or False, got {banded!r}")
    plain = predict_peak(cfg, h, w, batch, dtype, backend, "plain")
    if banded is False or (banded == "auto" and (budget is None or plain <= budget)):
        return "plain", None, plain
    e = dtype.itemsize
    H, W = (cfg.upscale * math.ceil(s / cfg.upscale) for s in (h, w))
    rows = _band_rows(batch, cfg.block_out_channels[0], H, W, e, band_rows)
    peak = predict_peak(cfg, h, w, batch, dtype, backend, "banded", band_rows)
    if host_streaming and budget is not None and peak > budget:
        over = host_threshold(cfg, h, w, batch, dtype, backend, budget, band_rows)
        return "banded-host", rows, predict_peak(cfg, h, w, batch, dtype, backend, "banded", band_rows, host_over=over)
    return "banded", rows, peak


def host_threshold(cfg: InfGenConfig, h: int, w: int, batch: int, dtype: torch.dtype, backend: str,
                   budget: int, band_rows: int | None = None) -> int:
    """The largest activation size (bytes) that may stay on the device such that the banded
    decode's device peak fits the budget; larger activations live in host memory. Activations of
    the token grid (the mid block's) always stay on the device."""
    e = dtype.itemsize
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    floor = batch * max(cfg.block_out_channels) * Hp * Wp * e
    sizes = sorted({batch * c * (Hp << k) * (Wp << k) * e for c in cfg.block_out_channels
                    for k in range(len(cfg.block_out_channels))} | {floor}, reverse=True)
    for over in sizes:
        if over < floor:
            break
        if predict_peak(cfg, h, w, batch, dtype, backend, "banded", band_rows, host_over=over) <= budget:
            return over
    return floor


def band_count(cfg: InfGenConfig, h: int, w: int, batch: int = 1, dtype: torch.dtype = torch.float32,
               band_rows: int | None = None, latent_hw: tuple[int, int] | None = None) -> int:
    """The number of conv bands one banded decode to (h, w) runs: the total of the progress
    callback (infgen_ref/banded.py `on_band`). The same walk as predict_peak, plus the three
    convs at the latent size; each conv runs ceil(H / rows) bands, rows sized as BandedOps does."""
    e = dtype.itemsize
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    ch = list(reversed(cfg.block_out_channels))

    def conv(Cin, Cout, H, W):
        return -(-H // _band_rows(batch, max(Cin, Cout), H, W, e, band_rows))

    def resnet(Cin, Cout, H, W):
        return conv(Cin, Cout, H, W) + conv(Cout, Cout, H, W) + (conv(Cin, Cout, H, W) if Cin != Cout else 0)

    C = cfg.latent_channels  # post_quant_conv, conv_in, conv_tokens
    n = conv(C, C, hl, wl) + conv(C, ch[0], hl, wl) + conv(ch[0], cfg.token_dim, hl, wl)
    n += resnet(cfg.token_dim, ch[0], Hp, Wp) + resnet(ch[0], ch[0], Hp, Wp)  # mid block
    C, H, W = ch[0], Hp, Wp
    for i, cout in enumerate(ch):
        for _ in range(cfg.layers_per_block + 1):
            n += resnet(C, cout, H, W)
            C = cout
        if i < len(ch) - 1:
            H, W = 2 * H, 2 * W
            n += conv(C, C, H, W)  # the upsampler's conv
    return n + conv(C, cfg.in_channels, H, W)  # conv_out
