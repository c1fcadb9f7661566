"""Memory model: the peak activation bytes of one decode, and the plan that fits a budget.

predict_peak runs the decode of infgen_ref/decode.py itself on the meta device (infgen_ref/walk.py:
shapes only, no memory) over an op table that allocates what the backend's ops allocate, records
every allocation and free (the liveness is the code's own: a resnet's input is held by its caller
until the resnet returns, `h.add_(x)` is in place, a stage's input is held by decode_grid until
the stage returns) and replays them for the high-water mark. Weights and the latent are not
counted: the figure is what a decode adds to a loaded model.

The op tables (`_memory_ops`): plain torch is the reference ops themselves, plain triton and
banded stand in for the kernels (which do not run on the meta device) with what they allocate;
every attention allocates its output only, as a flash kernel does (no N x T scores):

| op | torch, plain | triton, plain | banded (infgen_ref/banded.py) |
|---|---|---|---|
| GroupNorm+SiLU | F.group_norm, F.silu | one fused output | a statistics pass over bands; the conv reads it per band |
| conv | the conv | the conv; past 2^31 elements conv2d_banded (row bands of views) | conv2d_banded into its output, its first bands run |
| nearest 2x | F.interpolate (4x) | upsample_nearest2x (4x) | nothing: the conv reads it per band |

A banded op runs its first bands only (every later band repeats their allocations); activations
larger than host_over live in host memory (banded-host).

`python -m infgen.runtime info --size WxH` prints the plan; docs/anysize.md has the 4096^2 accounting.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace

import torch

from .banded import (MAX_CONV_ELEMS, BandedOps, Normed, band_rows_for, conv2d_banded, conv_split_rows, group_stats,
                     norm_affine, rows_of)
from .config import InfGenConfig
from .decode import TORCH_OPS, Ops, upsample_nearest2x
from .walk import ConfigKey, mark_host_eligible, peak, run

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


def _band_rows(B: int, C: int, H: int, W: int, e: int, band_rows: int | None) -> int:
    """Rows per band: forced, else as the banded decode sizes them (at most BAND_BYTES, 1/16 of H)."""
    return band_rows if band_rows is not None else band_rows_for((B, C, H, W), e)


def predict_peak(cfg: InfGenConfig, h: int, w: int, batch: int = 1, dtype: torch.dtype = torch.float32,
                 backend: str = "torch", mode: str = "plain", band_rows: int | None = None,
                 latent_hw: tuple[int, int] | None = None, host_over: int | None = None, detail: bool = False):
    """Predicted peak device bytes of one decode's activations to (h, w) (module docstring).
    backend: 'torch' | 'triton'; mode: 'plain' | 'banded'; band_rows: banded decode's rows per band
    (None: auto); host_over (banded): activations larger than this many bytes live in host memory.
    detail=True returns (device bytes, the module where the device peak is, host bytes).
    The run is cached per (config, size, batch, dtype, backend, mode, band_rows); host_over replays it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} for the memory model, got {backend!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if band_rows is not None and (not isinstance(band_rows, int) or isinstance(band_rows, bool) or band_rows < 1):
        raise ValueError(f"band_rows must be None or an int >= 1, got {band_rows!r}")
    hl, wl = latent_hw or (cfg.latent_size, cfg.latent_size)
    for name, v in (("height", h), ("width", w), ("batch", batch), ("latent height", hl), ("latent width", wl)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if host_over is not None and (isinstance(host_over, bool) or not isinstance(host_over, int) or host_over < 0):
        raise ValueError(f"host_over must be None or bytes (an int >= 0), got {host_over!r}")
    Hp, Wp = math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)
    table = backend if mode == "plain" else "banded"
    events = _allocations(ConfigKey(cfg), Hp, Wp, (hl, wl), batch, dtype, table, band_rows if mode == "banded" else None)
    dev, where, host = peak(events, host_over if mode == "banded" else None)
    return (dev, where, host) if detail else dev


@functools.lru_cache(maxsize=128)
def _allocations(key: ConfigKey, Hp: int, Wp: int, latent_hw: tuple[int, int], batch: int, dtype: torch.dtype,
                 table: str, band_rows: int | None) -> tuple:
    """The allocation events of decode_grid on the meta device over _memory_ops(table, band_rows)."""
    return run(key.cfg, Hp, Wp, _memory_ops(table, band_rows), latent_hw, batch, dtype).events


def _memory_ops(table: str, band_rows: int | None) -> Ops:
    """The op table whose allocations are a backend's (module docstring): 'torch' (plain), 'triton'
    (plain) or 'banded' (either backend), on the meta device."""
    if table == "torch":
        return replace(TORCH_OPS, cross_attention=_flash_attention, self_attention=_flash_attention)
    if table == "triton":
        return Ops(conv2d=_triton_conv2d, group_norm=_fused_group_norm, upsample2x=upsample_nearest2x,
                   cross_attention=_flash_attention, self_attention=_flash_attention)
    b = _FirstBands(band_rows, compute="meta")
    return replace(TORCH_OPS, conv2d=b.conv2d, group_norm=b.group_norm, upsample2x=b.upsample2x,
                   cross_attention=_flash_attention, self_attention=_flash_attention)


def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What a flash-attention kernel allocates: its output (B, h, N, hd_v), no scores."""
    return q.new_empty(q.shape[:-1] + v.shape[-1:])


def _fused_group_norm(norm, x: torch.Tensor, silu: bool) -> torch.Tensor:
    """The triton backend's GroupNorm(+SiLU): one kernel, one output."""
    return torch.empty_like(x)


def _triton_conv2d(conv, x: torch.Tensor) -> torch.Tensor:
    """The triton backend's conv: whole, or past MAX_CONV_ELEMS elements (input or output) in row
    bands of views of x written into one output (runtime/triton_backend.py conv2d)."""
    B, Cin, H, W = x.shape
    Cout, k = conv.out_channels, conv.kernel_size[0]
    if max(x.numel(), B * Cout * H * W) <= MAX_CONV_ELEMS:
        return conv(x)
    out = torch.empty((B, Cout, H, W), dtype=x.dtype, device=x.device)
    return conv2d_banded(conv, x, conv_split_rows(B, Cin, Cout, W, k), x.device, x.device, out)


# A banded op's bands the memory model runs: the steady state of conv2d_banded's loop is the third
# (a halo on both sides, computed while the second's output, as wide, is still held).
FIRST_BANDS = 3


class _FirstRows:
    """The first n rows of a band source (a tensor, Normed or Upsampled): (B, C, n, W)."""

    def __init__(self, x, n: int):
        B, C, _, W = x.shape
        self.x, self.shape, self.dtype, self.device = x, torch.Size((B, C, n, W)), x.dtype, x.device

    def rows(self, a: int, b: int, device: torch.device) -> torch.Tensor:
        return rows_of(self.x, a, b, device)


class _FirstBands(BandedOps):
    """BandedOps whose conv and GroupNorm statistics run their first FIRST_BANDS bands only, on
    the real band loops (conv2d_banded, group_stats): each later band allocates and frees what
    these do. Conv outputs are activations banded-host may place in host memory."""

    def conv2d(self, conv, x) -> torch.Tensor:
        B, _, H, W = x.shape
        rows = self._rows(x.shape, x.dtype, conv.out_channels)
        out = torch.empty((B, conv.out_channels, H, W), dtype=x.dtype, device=self.compute)
        mark_host_eligible(out)
        n = min(H, FIRST_BANDS * rows + conv.kernel_size[0] // 2)
        conv2d_banded(conv, _FirstRows(x, n), rows, self.compute, self.compute, out[:, :, :n])
        return out

    def group_norm(self, norm, x: torch.Tensor, silu: bool):
        rows = self._rows(x.shape, x.dtype)
        stats = group_stats(_FirstRows(x, min(x.shape[2], FIRST_BANDS * rows)), norm.num_groups, rows, self.compute)
        y = Normed(x, norm_affine(stats, norm), silu)
        return y if silu else y.materialize()


PLAN_MODES = ("plain", "sub-batches", "banded", "banded-host", "refuse")


@dataclass(frozen=True)
class DecodePlan:
    """How one decode runs: `plan`'s answer, which the engine's `plan()` returns and its `decode` runs.

    mode: "plain" (the whole batch in one run), "sub-batches" (plain runs of `sub_batch` latents,
    gathered into one output), "banded" or "banded-host" (infgen_ref/banded.py, runs of `sub_batch`
    latents; banded-host keeps activations larger than `host_over` bytes in host memory), or
    "refuse" (nothing fits the budget: `reason` is the error message).
    sub_batch: latents per run (the batch when whole; 0 when refused). band_rows: banded modes, the
    rows of a band at the output resolution; else None. peak_bytes: the predicted device peak as
    run (runs of fewer than the batch count the gathered output too); refused, the least any plan
    reaches. reason: one line saying why this plan."""

    mode: str
    sub_batch: int
    band_rows: int | None
    peak_bytes: int
    host_over: int | None = None
    reason: str = ""

    def __post_init__(self):
        if self.mode not in PLAN_MODES:
            raise ValueError(f"plan mode must be one of {PLAN_MODES}, got {self.mode!r}")


def gb(n: float) -> str:
    """Bytes for a message: '25.77 GB' or '4.56 MB'."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def largest_fit(fits, n: int) -> int:
    """The largest b in 1..n with fits(b) (fits monotone: true up to some b), or 0 if none."""
    if fits(n):
        return n
    lo, hi = 0, n  # fits(lo) (or lo == 0), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def plan(cfg: InfGenConfig, h: int, w: int, batch: int = 1, dtype: torch.dtype = torch.float32,
         backend: str = "torch", budget: int | None = None, banded="auto", band_rows: int | None = None,
         host_streaming: bool = False) -> DecodePlan:
    """The one memory-and-batching policy of a decode of `batch` latents to (h, w): the first of
    these whose predicted device peak fits `budget` (bytes), as a DecodePlan:

    1. the whole batch plain ("plain");
    2. plain runs of the largest sub-batch that fits ("sub-batches");
    3. banded, the whole batch, else the largest sub-batch that fits ("banded");
    4. with host_streaming (a CUDA device), banded with activations past `host_threshold` bytes in
       host memory, whole batch, else sub-batches ("banded-host");
    5. else "refuse", the reason naming the predicted peak, the least any plan reaches and the budget.

    banded: "auto", True (skip 1-2) or False (skip 3-4: a backend without a banded path). budget
    None: no limit (the whole batch, plain, or banded when banded=True). Runs of fewer than the
    batch also count the (batch, 3, H, W) fp32 output they are gathered into."""
    if banded not in ("auto", True, False):
        raise ValueError(f"banded must be 'auto', True or False, got {banded!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be None or bytes (an int >= 1), got {budget!r}")
    e = dtype.itemsize
    H, W = (cfg.upscale * math.ceil(s / cfg.upscale) for s in (h, w))
    gathered = batch * cfg.in_channels * H * W * 4

    def peak(mode: str, b: int, over: int | None = None) -> int:
        p = predict_peak(cfg, h, w, b, dtype, backend, mode, band_rows, host_over=over)
        return p + (gathered if b < batch else 0)

    def made(mode: str, b: int, over: int | None, why: str) -> DecodePlan:
        kind = "banded" if mode != "plain" else "plain"
        rows = _band_rows(b, cfg.block_out_channels[0], H, W, e, band_rows) if kind == "banded" else None
        name = "sub-batches" if mode == "plain" and b < batch else mode
        return DecodePlan(name, b, rows, peak(kind, b, over), over, why)

    modes = ([] if banded is True else ["plain"]) + ([] if banded is False else ["banded"])
    if budget is None:
        return made(modes[0], batch, None, "no memory budget" + (" (banded=True)" if banded is True else ""))
    def how(b: int) -> str:
        return ("the whole batch" if b == batch else f"{b} latent(s) at a time") + f" within the memory budget {gb(budget)}"

    for mode in modes:
        b = largest_fit(lambda b: peak(mode, b) <= budget, batch)
        if b:
            return made(mode, b, None, f"{mode}, {how(b)}")
    if host_streaming and "banded" in modes:
        def over(b: int) -> int:
            return host_threshold(cfg, h, w, b, dtype, backend, budget, band_rows)
        b = largest_fit(lambda b: peak("banded", b, over(b)) <= budget, batch)
        if b:
            return made("banded-host", b, over(b), f"banded, activations over {gb(over(b))} in host memory, {how(b)}")
    best = min(peak(m, 1) for m in modes)
    least = f"at least {gb(best)}" + (" even one latent at a time" if batch > 1 else "") + (
        ", banded" if "banded" in modes else "")
    hint = "" if "banded" in modes else ", use backend torch or triton with banded='auto'"
    return DecodePlan("refuse", 0, None, best, None, (
        f"decode of batch {batch} at {w}x{h} refused: predicted peak {gb(peak(modes[0], batch))} ({least}) "
        f"exceeds the memory budget {gb(budget)}; decode a smaller size{hint} or raise max_memory"))


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
