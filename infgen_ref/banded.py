"""Banded decode: every layer works on whole activations but computes in horizontal row bands,
so its temporaries are one band, and GroupNorm uses statistics of the whole image.

The decode itself is written once (infgen_ref/decode.py); this module only supplies an ops table
(`banded_ops`) whose ops compute band by band:

  group_norm   a statistics pass over bands (count, sum, sum of squares, per (batch, group), float64),
               then returns a `Normed`: x with a per-(B, C) mean, scale and bias (and SiLU) still to apply.
               The normalised full copy never exists: a conv reads it band by band.
  upsample2x   returns an `Upsampled`: nearest 2x applied to each band as a conv reads it, so the
               4x-larger upsampled activation never exists either.
  conv2d       for each band of output rows, reads its input rows plus a k//2-row halo (a view of a
               tensor, or the rows of a Normed/Upsampled), convolves with zero padding (the padded
               rows past a band's inner edges are computed and dropped: no F.pad copy), and writes
               the band into one output tensor. Stride-1 'same' convs only; others (none in the
               decoder after conv_in) fall back to one band.

Exactness: the same arithmetic as the plain ops up to float rounding: GroupNorm is applied as
(x - mean) * scale + bias with scale = weight * rstd, the statistics taken in
float64 over the whole image (docs/anysize.md).

Where activations live: on `compute`, the device that runs the bands, except (CUDA) activations
larger than `host_over` bytes, which live in host memory: each band is copied to the device for its
op and its result copied back (infgen_ref/memory.py picks host_over to fit a budget). Host
activations are stored row-major ((H, B, C, W) in memory, host_empty), so a band of rows is one
contiguous block and moves in one DMA copy, asynchronous when pinned; pinned only when the caching
host allocator's power-of-two rounding of it fits the available RAM (host_placement).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
import torch.nn.functional as F

from infgen.ref.decode import TORCH_OPS, Ops

BAND_BYTES = 64 << 20          # bytes of one band of the widest tensor an op touches (rows not forced)
MAX_CONV_ELEMS = 2**31 - 1     # the triton backend splits convs whose input or output has more (int32 indexing)


# ----------------------------------------------------------------------------- band sources
def band_starts(H: int, rows: int) -> list[tuple[int, int]]:
    """Row bands [(r0, r1), ...] covering 0..H, each at most `rows` rows."""
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueError(f"band rows must be an int >= 1, got {rows!r}")
    return [(r0, min(H, r0 + rows)) for r0 in range(0, H, rows)]


def rows_of(x, a: int, b: int, device: torch.device) -> torch.Tensor:
    """Rows a..b-1 of a tensor or a lazy source, on `device`: (B, C, b-a, W). A row-major tensor
    (host_empty) is read as its one contiguous block of rows."""
    if not isinstance(x, torch.Tensor):
        return x.rows(a, b, device)
    if row_major(x):
        return x.permute(2, 0, 1, 3)[a:b].to(device, non_blocking=True).permute(1, 2, 0, 3)
    return x[:, :, a:b].to(device, non_blocking=True)


def write_rows(out: torch.Tensor, r0: int, band: torch.Tensor) -> None:
    """out[:, :, r0:r0+rows] = band (B, C, rows, W); into a row-major out as one contiguous block
    (the band made contiguous on its own device first, then one copy)."""
    if row_major(out):
        out.permute(2, 0, 1, 3)[r0:r0 + band.shape[2]].copy_(band.permute(2, 0, 1, 3), non_blocking=True)
    else:
        out[:, :, r0:r0 + band.shape[2]].copy_(band, non_blocking=True)


# ----------------------------------------------------------------------------- host activations
def row_major(x: torch.Tensor) -> bool:
    """(B, C, H, W) stored as (H, B, C, W): each band of rows is one contiguous block."""
    return x.dim() == 4 and x.permute(2, 0, 1, 3).is_contiguous()


def available_ram() -> int:
    """The RAM the kernel reports available (/proc/meminfo MemAvailable), bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def host_placement(nbytes: int, available: int) -> str:
    """'pinned' when PyTorch's caching host allocator's allocation (nbytes rounded up to a power of
    two) fits the available RAM, else 'pageable' when nbytes does (synchronous copies), else
    MemoryError naming both (raised before anything is allocated: Linux would overcommit and the
    OOM killer end the process later)."""
    if nbytes > available:
        raise MemoryError(f"a host activation of {nbytes / 1e9:.2f} GB exceeds the available RAM "
                          f"({available / 1e9:.2f} GB)")
    return "pinned" if 1 << max(0, nbytes - 1).bit_length() <= available else "pageable"


def host_empty(shape, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An uninitialised (B, C, H, W) host activation stored row-major (row_major); pin: page-locked
    (asynchronous copies), as host_placement decides against the available RAM."""
    B, C, H, W = shape
    return torch.empty((H, B, C, W), dtype=dtype, pin_memory=pin).permute(1, 2, 0, 3)


class Normed:
    """GroupNorm(x) (then SiLU) not yet applied: (x - mean) * scale + bias, with x (B, C, H, W) and
    mean, scale = weight * rstd, bias (B, C) float32 (norm_affine)."""

    def __init__(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor, torch.Tensor], silu: bool):
        self.x, self.affine, self.silu = x, affine, silu
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device

    def rows(self, a: int, b: int, device: torch.device) -> torch.Tensor:
        band = rows_of(self.x, a, b, device)  # (B, C, b-a, W)
        y = apply_affine(band, *(t.to(device) for t in self.affine))  # fp32 band
        if self.silu:
            F.silu(y, inplace=True)
        return y.to(self.dtype)

    def materialize(self) -> torch.Tensor:
        return self.rows(0, self.shape[2], self.device)


class Upsampled:
    """Nearest 2x of x (B, C, H, W) -> (B, C, 2H, 2W), made band by band when read."""

    def __init__(self, x):
        self.x = x
        B, C, H, W = x.shape
        self.shape, self.dtype, self.device = torch.Size((B, C, 2 * H, 2 * W)), x.dtype, x.device

    def rows(self, a: int, b: int, device: torch.device) -> torch.Tensor:
        src = rows_of(self.x, a // 2, (b + 1) // 2, device)  # (B, C, ~(b-a)/2, W)
        up = F.interpolate(src, scale_factor=2.0, mode="nearest")
        return up[:, :, a % 2: a % 2 + (b - a)]

    def materialize(self) -> torch.Tensor:
        return self.rows(0, self.shape[2], self.device)


def materialize(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else x.materialize()


# ----------------------------------------------------------------------------- group norm
def band_stats(band: torch.Tensor, groups: int) -> torch.Tensor:
    """(count, sum, sum of squares) per (batch, group) of one band (B, C, rows, W), float64
    (3, B, G). Per channel: the sum, then the sum of squares about the channel's band mean (a
    vector norm of the centred band, float32), combined in float64; no var_mean (slow on the CPU)
    and no copy of a strided view beyond the centred band."""
    B, C, r, W = band.shape
    band = band.float()
    n = r * W
    mean = band.sum(dim=(2, 3)) / n  # (B, C)
    m2 = torch.linalg.vector_norm(band - mean[:, :, None, None], dim=(2, 3)).double() ** 2  # (B, C)
    mean = mean.double()
    sums = (n * mean).view(B, groups, -1).sum(2)  # (B, G)
    sumsq = (m2 + n * mean * mean).view(B, groups, -1).sum(2)
    return torch.stack([torch.full_like(sums, n * (C // groups)), sums, sumsq])


def group_stats(x, groups: int, band_rows: int, device: torch.device | None = None) -> torch.Tensor:
    """Per-(batch, group) (count, sum, sum of squares) of x (B, C, H, W), taken band by band:
    float64 (3, B, G)."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"channels {C} not divisible by groups {groups}")
    device = device or x.device
    out = torch.zeros(3, B, groups, dtype=torch.float64, device=device)
    for a, b in band_starts(H, band_rows):
        out += band_stats(rows_of(x, a, b, device), groups)
    return out


def norm_affine(stats: torch.Tensor, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, sum, sumsq) (3, B, G) -> per-channel mean, scale = weight * rstd and bias (B, C)
    float32, such that GroupNorm(x) = (x - mean) * scale + bias (apply_affine)."""
    n, s, ss = stats
    mean = s / n
    var = (ss / n - mean * mean).clamp_min(0)
    rstd = torch.rsqrt(var + norm.eps)  # (B, G)
    G, C = norm.num_groups, norm.num_channels
    rstd = rstd.repeat_interleave(C // G, dim=1)  # (B, C)
    mean = mean.repeat_interleave(C // G, dim=1)
    w = norm.weight.double().to(n.device) if norm.weight is not None else torch.ones_like(rstd)
    bias = norm.bias.float().to(n.device) if norm.bias is not None else torch.zeros_like(mean, dtype=torch.float32)
    return mean.float(), (w * rstd).float(), bias.expand_as(mean)


def apply_affine(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(x - mean) * scale + bias per (B, C), in float32: x (B, C, h, W) -> float32 (B, C, h, W).
    Centring first keeps it as exact as F.group_norm when |mean| >> std."""
    y = x.float() - mean[:, :, None, None]
    return torch.addcmul(bias[:, :, None, None], y, scale[:, :, None, None])


# ----------------------------------------------------------------------------- conv
def conv_split_rows(B: int, Cin: int, Cout: int, W: int, k: int, max_elems: int = MAX_CONV_ELEMS) -> int:
    """Output rows per band of a k x k conv split so that each band's input (with its 2 * (k//2)
    halo rows) and output stay under max_elems elements (the triton backend's plain decode)."""
    return max(1, max_elems // (B * max(Cin, Cout) * W) - 2 * (k // 2))


def conv2d_banded(conv: nn.Conv2d, x, band_rows: int, compute: torch.device,
                  store: torch.device, out: torch.Tensor | None = None, on_band=None, write=None) -> torch.Tensor:
    """conv(x) band by band. x: tensor or lazy source (B, Cin, H, W) -> (B, Cout, H, W) on `store`.
    on_band: called with no arguments after each band (a progress hook), or None. write(out, r0,
    band): stores a band's kept rows (B, Cout, rows, W) into out from row r0 (default write_rows;
    the triton backend's takes GroupNorm statistics on the way).

    Each output band [r0, r1) reads input rows [r0 - p, r1 + p) clipped to the image (p = k//2):
    a view, or the rows of a lazy source, and convolves them with the conv's own padding; the rows
    computed past a band's inner edge (against zero padding) are dropped."""
    kh, kw = conv.kernel_size
    same = (conv.stride == (1, 1) and conv.dilation == (1, 1) and kh % 2 == 1
            and conv.padding == (kh // 2, kw // 2) and conv.padding_mode == "zeros")
    if not same:  # not a 'same' conv (none in the decoder after conv_in): one band
        y = conv(materialize(x).to(compute)).to(store)
        if on_band is not None:
            on_band()
        return y
    B, _, H, W = x.shape
    p = kh // 2
    if out is None:
        shape = (B, conv.out_channels, H, W)
        if store.type == "cpu" and compute.type == "cuda":  # host-resident: row-major, pinned if it fits
            nbytes = math.prod(shape) * x.dtype.itemsize
            out = host_empty(shape, x.dtype, pin=host_placement(nbytes, available_ram()) == "pinned")
        else:
            out = torch.empty(shape, dtype=x.dtype, device=store)
    for r0, r1 in band_starts(H, band_rows):
        a, b = max(0, r0 - p), min(H, r1 + p)
        y = F.conv2d(rows_of(x, a, b, compute), conv.weight, conv.bias, padding=conv.padding)  # (B, Cout, b-a, W)
        (write or write_rows)(out, r0, y[:, :, r0 - a: r1 - a])
        del y  # before the next band's conv allocates its own: one band's output alive at a time
        if on_band is not None:
            on_band()
    return out


# ----------------------------------------------------------------------------- the ops table
def band_rows_for(shape, itemsize: int, band_bytes: int = BAND_BYTES) -> int:
    """Rows per band of a (B, C, H, W) activation of itemsize-byte elements: at most band_bytes
    and at most 1/16 of H (infgen_ref/memory.py sizes its bands with this too)."""
    B, C, H, W = shape
    return max(1, min(int(band_bytes // (B * C * W * itemsize)), -(-H // 16)))


class BandedOps:
    """The op functions of the banded decode. rows: fixed band rows for every layer, or None to
    size bands by bytes (band_bytes per band of the widest tensor an op touches, at most 1/16 of
    its rows). compute: the device that runs the bands. host_over (CUDA): conv outputs larger than
    this many bytes are allocated in pinned host memory and read back band by band. on_band:
    called with no arguments after each conv band (a progress hook; memory.band_count bands in all)."""

    def __init__(self, rows: int | None = None, band_bytes: int = BAND_BYTES,
                 compute: torch.device | str = "cpu", host_over: int | None = None, on_band=None):
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
            raise ValueError(f"band_rows must be None or an int >= 1, got {rows!r}")
        if not isinstance(band_bytes, int) or band_bytes < 1:
            raise ValueError(f"band_bytes must be a positive int, got {band_bytes!r}")
        self.rows, self.band_bytes = rows, band_bytes
        if host_over is not None and (not isinstance(host_over, int) or host_over < 0):
            raise ValueError(f"host_over must be None or bytes >= 0, got {host_over!r}")
        self.compute, self.host_over = torch.device(compute), host_over
        self.on_band = on_band

    def _rows(self, shape, dtype, cout: int | None = None) -> int:
        if self.rows is not None:
            return self.rows
        B, C, H, W = shape
        return band_rows_for((B, max(C, cout or 0), H, W), dtype.itemsize, self.band_bytes)

    def store_for(self, nbytes: int) -> torch.device:
        """Where an activation of nbytes lives: the compute device, or the host past host_over."""
        if self.host_over is not None and nbytes > self.host_over:
            return torch.device("cpu")
        return self.compute

    def conv2d(self, conv: nn.Conv2d, x) -> torch.Tensor:
        B, _, H, W = x.shape
        nbytes = B * conv.out_channels * H * W * x.dtype.itemsize
        return conv2d_banded(conv, x, self._rows(x.shape, x.dtype, conv.out_channels), self.compute,
                             self.store_for(nbytes), on_band=self.on_band)

    def group_norm(self, norm: nn.GroupNorm, x: torch.Tensor, silu: bool):
        """A Normed when silu (GroupNorm+SiLU feeds a conv everywhere in the decoder); a tensor
        without (the mid-block attention's GroupNorm, read by linears over all tokens)."""
        stats = group_stats(x, norm.num_groups, self._rows(x.shape, x.dtype), self.compute)
        y = Normed(x, norm_affine(stats, norm), silu)
        return y if silu else y.materialize()

    def upsample2x(self, x) -> Upsampled:
        return Upsampled(x)


def banded_ops(rows: int | None = None, band_bytes: int = BAND_BYTES, compute="cpu",
               host_over: int | None = None, on_band=None) -> Ops:
    """The banded decode's ops table: TORCH_OPS with BandedOps' conv, GroupNorm and nearest 2x
    (the attentions run whole). on_band: see BandedOps."""
    b = BandedOps(rows, band_bytes, compute, host_over, on_band)
    return dataclasses.replace(TORCH_OPS, conv2d=b.conv2d, group_norm=b.group_norm, upsample2x=b.upsample2x)


# ----------------------------------------------------------------------------- the seam baseline
def tiled_norm_ops(tiles: int):
    """The ops of the plain decode except that GroupNorm takes its statistics per tile (a tiles x
    tiles grid over every activation), as a tiled decode (diffusers' tiled VAE) does: the baseline
    whose tone shifts banded decode avoids. Everything else (convs, attention) sees the whole image."""
    if not isinstance(tiles, int) or isinstance(tiles, bool) or tiles < 1:
        raise ValueError(f"tiles must be an int >= 1, got {tiles!r}")

    def group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool) -> torch.Tensor:
        _, _, H, W = x.shape
        ys, xs = ([round(i * n / tiles) for i in range(tiles + 1)] for n in (H, W))
        out = torch.empty_like(x)
        for a, b in zip(ys, ys[1:]):
            for c, d in zip(xs, xs[1:]):
                if b > a and d > c:
                    out[:, :, a:b, c:d] = norm(x[:, :, a:b, c:d])  # the tile's own statistics
        return F.silu(out) if silu else out

    return dataclasses.replace(TORCH_OPS, group_norm=group_norm)
