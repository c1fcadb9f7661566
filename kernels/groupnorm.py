"""GroupNorm (+ SiLU) on channels-last activations, statistics split across the image.

32 groups x batch 1 gives 32 programs if each program owns a group: most of an H100's 132 SMs
would idle. Instead, three steps over (B, P pixels, C channels) rows (two kernels and, between
them, a few PyTorch ops):
1. stats: each program reads a chunk of pixels x all channels (coalesced: a channels-last pixel
   is C contiguous values) and writes per-channel chunk mean and M2 (sum of squared deviations),
   accumulated around a shift (the chunk's first pixel) so that fp32 does not cancel.
2. finalize (a few tiny PyTorch ops on (B, chunks, C)): Chan's parallel combination of the chunk
   moments into per-(batch, group) mean and variance, folded with gamma/beta into one per-(batch,
   channel) scale and shift.
3. apply: y = (x - mean) * scale + shift, optional SiLU, stored in the input dtype, channels-last.
Bytes moved: the input twice and the output once (the floor for a two-pass exact GroupNorm).
Offsets are int64 at the chunk level: 4096^2 x 256 channels is 4.3 G elements.

add_stats (add_stats_kernel): a resnet's residual add y = h + x (or a plain copy, a conv band
stored into its output) that takes step 1's moments of y in the same pass, so the GroupNorm that
reads y next skips its stats pass (group_norm_silu(y, ..., moments=)): y is read once, not twice.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import Launch, check_device, check_float, next_pow2


@triton.jit
def _store_moments(SHIFT, DMEAN, M2, out, c_ok, shift, s1, s2, n):
    """One chunk's moments per channel, from the per-lane sums of d = x - shift and d^2 over n
    pixels: shift, the mean of d, and M2 = sum (d - mean d)^2 (clamped at 0), at offsets out."""
    t1 = tl.sum(s1, 0)
    t2 = tl.sum(s2, 0)
    nf = n.to(tl.float32)
    tl.store(SHIFT + out, shift, mask=c_ok)
    tl.store(DMEAN + out, t1 / nf, mask=c_ok)
    tl.store(M2 + out, tl.maximum(t2 - t1 * t1 / nf, 0.0), mask=c_ok)


@triton.jit
def gn_stats_kernel(
    X,                      # pointer: input (B, P, C) contiguous (a channels-last (B, C, H, W), P = H*W)
    SHIFT, DMEAN, M2,       # pointers: fp32 outputs (B, K, C): per-chunk channel shift (first pixel),
                            #   mean - shift, and sum of squared deviations from the mean
    P, C, K,                # pixels per image, channels, chunks per image
    CHUNK,                  # pixels per chunk (a multiple of BLOCK_P)
    BLOCK_P: tl.constexpr,  # pixels per tile
    BLOCK_C: tl.constexpr,  # next power of two >= C
):
    """Grid: (K, B)."""
    k = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    p0 = k * CHUNK
    base = X + (b * P + p0) * C
    offs_p = tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    shift = tl.load(base + offs_c, mask=c_ok, other=0.0).to(tl.float32)   # first pixel of the chunk
    s1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    n = tl.minimum(CHUNK, P - p0)                                          # pixels in this chunk
    tile = offs_p[:, None] * C + offs_c[None, :]
    for i in range(0, CHUNK, BLOCK_P):
        ok = ((i + offs_p) < n)[:, None] & c_ok[None, :]
        x = tl.load(base + tile, mask=ok, other=0.0).to(tl.float32)
        d = tl.where(ok, x - shift[None, :], 0.0)
        s1 += d
        s2 += d * d
        base += BLOCK_P * C
    _store_moments(SHIFT, DMEAN, M2, (b * K + k) * C + offs_c, c_ok, shift, s1, s2, n)


@triton.jit
def gn_apply_kernel(
    X, Y,                   # pointers: input and output (B, P, C) contiguous, same dtype
    REF, DMU, SCALE, SHIFT, # pointers: fp32 (B, C): y = ((x - ref) - dmu) * scale + shift; the mean is
                            #   ref + dmu, split so that fp32 keeps a small spread around a large mean
    P, C,                   # pixels per image, channels
    CHUNK,                  # pixels per program (a multiple of BLOCK_P)
    SILU: tl.constexpr,     # apply SiLU after the affine map
    BLOCK_P: tl.constexpr,  # pixels per tile
    BLOCK_C: tl.constexpr,  # next power of two >= C
):
    """Grid: (cdiv(P, CHUNK), B)."""
    k = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    p0 = k * CHUNK
    start = (b * P + p0) * C
    x_ptr = X + start
    y_ptr = Y + start
    offs_p = tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    r = tl.load(REF + b * C + offs_c, mask=c_ok, other=0.0)
    dm = tl.load(DMU + b * C + offs_c, mask=c_ok, other=0.0)
    a = tl.load(SCALE + b * C + offs_c, mask=c_ok, other=0.0)
    s = tl.load(SHIFT + b * C + offs_c, mask=c_ok, other=0.0)
    n = tl.minimum(CHUNK, P - p0)
    tile = offs_p[:, None] * C + offs_c[None, :]
    for i in range(0, CHUNK, BLOCK_P):
        ok = ((i + offs_p) < n)[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        y = ((x - r[None, :]) - dm[None, :]) * a[None, :] + s[None, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + tile, y.to(Y.dtype.element_ty), mask=ok)
        x_ptr += BLOCK_P * C
        y_ptr += BLOCK_P * C


@triton.jit
def add_stats_kernel(
    X, R, Y,                # pointers: input, residual (read only when HAS_R) and output y = x (+ r),
                            #   same dtype; Y may be X (in place)
    SHIFT, DMEAN, M2,       # pointers: fp32 outputs (B, K, C): gn_stats_kernel's chunk moments, of y as stored
    SXB, SRB, SYB,          # batch strides of x, r, y in elements: (B, P, C) rows with pixel stride C
                            #   (a channels-last (B, C, H, W), or a band of its rows)
    P, C, K,                # pixels per image, channels, chunks per image
    CHUNK,                  # pixels per chunk (a multiple of BLOCK_P)
    HAS_R: tl.constexpr,    # add R (a residual add); without, a copy that also takes statistics
    BLOCK_P: tl.constexpr,  # pixels per tile
    BLOCK_C: tl.constexpr,  # next power of two >= C
):
    """Grid: (K, B). One pass: y = x + r written once, and the chunk moments of y that the next
    GroupNorm's stats pass would have read y again for."""
    k = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    p0 = k * CHUNK
    x_ptr = X + b * SXB + p0 * C
    r_ptr = R + b * SRB + p0 * C
    y_ptr = Y + b * SYB + p0 * C
    offs_p = tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    first = tl.load(x_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_R:
        first = first + tl.load(r_ptr + offs_c, mask=c_ok, other=0.0)
    shift = first.to(Y.dtype.element_ty).to(tl.float32)                   # first pixel of y in the chunk
    s1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    n = tl.minimum(CHUNK, P - p0)
    tile = offs_p[:, None] * C + offs_c[None, :]
    for i in range(0, CHUNK, BLOCK_P):
        ok = ((i + offs_p) < n)[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + tile, mask=ok, other=0.0)
        if HAS_R:
            x = x.to(tl.float32) + tl.load(r_ptr + tile, mask=ok, other=0.0).to(tl.float32)
        y = x.to(Y.dtype.element_ty)
        tl.store(y_ptr + tile, y, mask=ok)
        d = tl.where(ok, y.to(tl.float32) - shift[None, :], 0.0)
        s1 += d
        s2 += d * d
        x_ptr += BLOCK_P * C
        r_ptr += BLOCK_P * C
        y_ptr += BLOCK_P * C
    _store_moments(SHIFT, DMEAN, M2, (b * K + k) * C + offs_c, c_ok, shift, s1, s2, n)


def _tiles(P: int, C: int, B: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, CHUNK): ~4K-element tiles on CUDA, and enough chunks to fill the GPU
    (about 8 programs per SM over the batch) without more partial sums than necessary."""
    BLOCK_C = next_pow2(C)
    if device.type == "cuda":
        BLOCK_P = max(1, 4096 // BLOCK_C)
        want = max(1, 8 * 132 // B)
    else:  # interpreter: few programs, each a Python step
        BLOCK_P = max(1, 1024 // BLOCK_C)
        want = 4
    tiles = triton.cdiv(P, BLOCK_P)
    CHUNK = BLOCK_P * max(1, triton.cdiv(tiles, want))
    return BLOCK_P, BLOCK_C, CHUNK


def group_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                    eps: float = 1e-6, silu: bool = True, out: torch.Tensor | None = None,
                    moments: Moments | None = None) -> torch.Tensor:
    """SiLU(GroupNorm(x)) (or GroupNorm alone with silu=False), in x's dtype, fp32 statistics.

    x: (B, C, H, W) in channels_last memory format, or (B, P, C) contiguous (tokens; P pixels).
    weight, bias: (C,). moments: x's chunk moments from add_stats (then the stats pass is skipped:
    x is read once, not twice). Returns a tensor of x's shape and layout (or `out`)."""
    check_float(x, "x")
    if x.dim() == 4:
        if not x.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("x (B, C, H, W) must be channels_last "
                             "(x.contiguous(memory_format=torch.channels_last))")
        B, C, H, W = x.shape
        P = H * W
    elif x.dim() == 3:
        if not x.is_contiguous():
            raise ValueError("x (B, P, C) must be contiguous")
        B, P, C = x.shape
    else:
        raise ValueError(f"x must be (B, C, H, W) channels_last or (B, P, C), got shape {tuple(x.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or C % groups:
        raise ValueError(f"groups must be a positive divisor of the {C} channels, got {groups!r}")
    for t, n in ((weight, "weight"), (bias, "bias")):
        check_float(t, n)
        if t.shape != (C,):
            raise ValueError(f"{n} must have shape ({C},), got {tuple(t.shape)}")
    if min(B, P, C) < 1:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    dev = check_device(gn_stats_kernel, x, weight, bias, names=("x", "weight", "bias"))
    if out is None:
        out = torch.empty_like(x)  # keeps channels_last
    elif out.shape != x.shape or out.dtype != x.dtype or out.stride() != x.stride() or out.device != dev:
        raise ValueError(f"out must match x: {x.dtype} {tuple(x.shape)} strides {x.stride()} on {dev}")

    tiles = _tiles(P, C, B, dev)
    if moments is None:
        stats, m = gn_stats_launch(x, B, P, C, tiles)
        stats()
        moments = Moments(*m, chunk_counts(P, tiles[2], dev))
    elif moments.shift0.shape[0] != B or moments.shift0.shape[2] != C:
        raise ValueError(f"moments must be (B={B}, K, C={C}) like x's, got {tuple(moments.shift0.shape)}")
    params = _finalize(*moments, groups, weight, bias, eps)
    gn_apply_launch(x, out, params, B, P, C, tiles, silu)()
    return out


class Moments(NamedTuple):
    """Per-chunk channel moments of a (B, P, C) tensor, fp32: shift0, dmean, m2 (B, K, C) as
    gn_stats_kernel writes them, and n (K,) the pixels of each chunk (chunks of several launches,
    e.g. row bands, concatenate along K)."""

    shift0: torch.Tensor
    dmean: torch.Tensor
    m2: torch.Tensor
    n: torch.Tensor

    @staticmethod
    def cat(parts: list[Moments]) -> Moments:
        return Moments(*(torch.cat(t, dim=1) for t in zip(*(p[:3] for p in parts))), torch.cat([p.n for p in parts]))


def chunk_counts(P: int, CHUNK: int, device) -> torch.Tensor:
    """Pixels per chunk, fp32 (K,): CHUNK each, the last one ragged."""
    K = triton.cdiv(P, CHUNK)
    n = torch.full((K,), float(CHUNK), device=device, dtype=torch.float32)
    n[-1:].fill_(float(P - (K - 1) * CHUNK))  # fill_, not n[-1] = x: no host-to-device copy (CUDA graphs)
    return n


def add_stats(x: torch.Tensor, r: torch.Tensor | None = None, out: torch.Tensor | None = None) -> tuple[torch.Tensor, Moments]:
    """y = x + r (a residual add; r None: a copy) written once into `out` (default: x, in place),
    with y's GroupNorm chunk moments taken in the same pass (group_norm_silu(y, ..., moments=)).

    x, r, out: (B, C, H, W) with channels-last pixels (stride C along W, W*C along H; any batch
    stride, so a band of rows of a larger channels-last tensor is fine), same shape and dtype.
    Returns (out, moments)."""
    check_float(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    out = x if out is None else out
    ts = [(x, "x"), (out, "out")] + ([(r, "r")] if r is not None else [])
    B, C, H, W = x.shape
    for t, n in ts:
        check_float(t, n, x.dtype)
        if t.shape != x.shape:
            raise ValueError(f"{n} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if (H > 1 and t.stride(2) != W * C) or (W > 1 and t.stride(3) != C) or (C > 1 and t.stride(1) != 1):
            raise ValueError(f"{n} must have channels-last pixels (strides (*, 1, {W * C}, {C})), got {t.stride()}")
    if min(B, C, H, W) < 1:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")
    dev = check_device(add_stats_kernel, *(t for t, _ in ts), names=tuple(n for _, n in ts))
    P = H * W
    tiles = _tiles(P, C, B, dev)
    launch, m = add_stats_launch(x, r, out, B, P, C, tiles)
    launch()
    return out, Moments(*m, chunk_counts(P, tiles[2], dev))


def add_stats_launch(x: torch.Tensor, r: torch.Tensor | None, out: torch.Tensor, B: int, P: int, C: int,
                     tiles: tuple[int, int, int]):
    """The add_stats launch for checked x, r (or None), out -> (Launch, (shift0, dmean, m2))."""
    BLOCK_P, BLOCK_C, CHUNK = tiles
    K = triton.cdiv(P, CHUNK)
    shift0, dmean, m2 = torch.empty((3, B, K, C), device=x.device, dtype=torch.float32).unbind(0)
    rr = x if r is None else r
    return Launch(add_stats_kernel, (K, B),
                  dict(X=x, R=rr, Y=out, SHIFT=shift0, DMEAN=dmean, M2=m2, SXB=x.stride(0), SRB=rr.stride(0),
                       SYB=out.stride(0), P=P, C=C, K=K, CHUNK=CHUNK),
                  dict(HAS_R=r is not None, BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C), num_warps=4), (shift0, dmean, m2)


def gn_stats_launch(x: torch.Tensor, B: int, P: int, C: int, tiles: tuple[int, int, int]):
    """The stats launch for checked (B, P, C)-ordered x and _tiles(...) -> (Launch, (shift0, dmean,
    m2)): the per-chunk moments it writes, fp32 (B, K, C) each."""
    BLOCK_P, BLOCK_C, CHUNK = tiles
    K = triton.cdiv(P, CHUNK)
    shift0, dmean, m2 = torch.empty((3, B, K, C), device=x.device, dtype=torch.float32).unbind(0)
    return Launch(gn_stats_kernel, (K, B), dict(X=x, SHIFT=shift0, DMEAN=dmean, M2=m2, P=P, C=C, K=K, CHUNK=CHUNK),
                  dict(BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C), num_warps=4), (shift0, dmean, m2)


def gn_apply_launch(x: torch.Tensor, out: torch.Tensor, params, B: int, P: int, C: int,
                    tiles: tuple[int, int, int], silu: bool) -> Launch:
    """The apply launch: params = _finalize's (ref, dmu, scale, shift), fp32 (B, C) each."""
    BLOCK_P, BLOCK_C, CHUNK = tiles
    ref, dmu, scale, shift = params
    return Launch(gn_apply_kernel, (triton.cdiv(P, CHUNK), B),
                  dict(X=x, Y=out, REF=ref, DMU=dmu, SCALE=scale, SHIFT=shift, P=P, C=C, CHUNK=CHUNK),
                  dict(SILU=bool(silu), BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C), num_warps=4)


def _finalize(shift0, dmean, m2, n, groups, weight, bias, eps):
    """Chunk moments (B, K, C) and chunk pixel counts n (K,) -> per-(batch, channel) ref, dmu
    (mean = ref + dmu), scale and shift, fp32 (B, C) each. Centring before scaling keeps fp32
    accurate when |mean| >> std."""
    B, K, C = dmean.shape
    Cg = C // groups
    total = n.double().sum().float() * Cg                                      # pixels x channels per group
    n = n.view(1, K, 1, 1)
    # Chunk means relative to one reference value per group (its first shift): small numbers, so
    # the fp32 sums below do not lose the spread to a large common mean.
    s0 = shift0.view(B, K, groups, Cg)
    ref = s0[:, :1, :, :1]                                                   # (B, 1, G, 1)
    mk = (s0 - ref) + dmean.view(B, K, groups, Cg)                           # chunk mean - ref
    dmu = (mk * n).sum((1, 3), keepdim=True) / total                         # (B, 1, G, 1)
    dev2 = (mk - dmu).square() * n
    var = (m2.view(B, K, groups, Cg).sum((1, 3)) + dev2.sum((1, 3))) / total  # (B, G)
    rstd = torch.rsqrt(var + eps)
    scale = weight.float().view(1, groups, Cg) * rstd[:, :, None]              # (B, G, Cg)
    shift = bias.float().view(1, groups, Cg).expand(B, -1, -1)
    per_c = lambda t: t.reshape(B, groups, 1).expand(B, groups, Cg).reshape(B, C).contiguous()  # noqa: E731
    return per_c(ref), per_c(dmu), scale.reshape(B, C).contiguous(), shift.reshape(B, C).contiguous()


def group_norm_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                        eps: float = 1e-6, silu: bool = True) -> torch.Tensor:
    """Plain PyTorch in x's dtype. x: (B, C, H, W) any layout, or (B, P, C) tokens."""
    if x.dim() == 3:
        return group_norm_silu_ref(x.transpose(1, 2)[..., None], weight, bias, groups, eps, silu)[..., 0].transpose(1, 2)
    y = F.group_norm(x, groups, weight.to(x.dtype), bias.to(x.dtype), eps)
    return F.silu(y) if silu else y


def add_stats_ref(x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: x + r in x's dtype (x itself without r)."""
    return x.clone() if r is None else x + r


def group_norm_bytes(x: torch.Tensor) -> int:
    """The bytes a two-pass GroupNorm must move: read x twice, write y once."""
    return 3 * x.numel() * x.element_size()
