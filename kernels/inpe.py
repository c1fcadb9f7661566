"""INPE in one kernel: token index -> normalised coordinates -> sphere -> Fourier features -> MLP.

For an (H, W) grid, token t sits at row t // W, column t % W, normalised to ((i + 0.5) / H,
(j + 0.5) / W); the point goes onto the unit sphere (latitude, longitude each spanning
(-pi/2, pi/2)), is lifted to [cos(2 pi p B), sin(2 pi p B)] with the fixed (3, F) Gaussian B,
then fc2(gelu(fc1(features))) (+ an optional vector, the mask token). Coordinates, sphere and
features are fp32 (as in infgen_ref.inpe); the MLP runs on the weights' dtype with fp32
accumulation, and the hidden layer never leaves registers. The embedding depends only on the
grid size and the weights, so the runtime computes it once per (H', W') and caches it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from infgen_ref.inpe import fourier_features, grid_coords, sphere

from .attention import mma
from .common import check_device, check_float, is_interpreted, next_pow2


@triton.jit
def inpe_kernel(
    OUT,                    # pointer: (T, D) embeddings, row-major, in the weights' dtype
    FB,                     # pointer: (3, F) fp32 Fourier matrix B, row-major
    W1, B1,                 # pointers: fc1 weight (D, 2F) row-major, bias (D,)
    W2, B2,                 # pointers: fc2 weight (D, D) row-major, bias (D,)
    ADD,                    # pointer: (D,) vector added to every row (mask token); unused without HAS_ADD
    T, GH, GW,              # tokens (GH * GW), grid height and width
    F, D,                   # Fourier frequencies, embedding width
    HAS_ADD: tl.constexpr,  # add ADD to the output
    BLOCK_T: tl.constexpr,  # tokens per program (>= 16 for tl.dot)
    BLOCK_F: tl.constexpr,  # next power of two >= F (>= 16)
    BLOCK_D: tl.constexpr,  # next power of two >= D (>= 16): the hidden width kept in registers
    BLOCK_O: tl.constexpr,  # output columns per fc2 step
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 weights, else "tf32" (ignored)
    DOT_FP32: tl.constexpr,       # upcast dot operands (interpreter only)
):
    """Grid: (cdiv(T, BLOCK_T),)."""
    t0 = tl.program_id(0).to(tl.int64) * BLOCK_T
    offs_t = t0 + tl.arange(0, BLOCK_T)                                     # int64 token ids
    t_ok = offs_t < T
    row = (offs_t // GW).to(tl.float32)
    col = (offs_t % GW).to(tl.float32)
    lat = ((row + 0.5) / GH - 0.5) * 3.141592653589793
    lon = ((col + 0.5) / GW - 0.5) * 3.141592653589793
    px = tl.cos(lat) * tl.cos(lon)
    py = tl.cos(lat) * tl.sin(lon)
    pz = tl.sin(lat)
    offs_f = tl.arange(0, BLOCK_F)
    f_ok = offs_f < F
    b0 = tl.load(FB + offs_f, mask=f_ok, other=0.0)
    b1 = tl.load(FB + F + offs_f, mask=f_ok, other=0.0)
    b2 = tl.load(FB + 2 * F + offs_f, mask=f_ok, other=0.0)
    proj = 6.283185307179586 * (px[:, None] * b0[None, :] + py[:, None] * b1[None, :] + pz[:, None] * b2[None, :])
    wdt = W1.dtype.element_ty
    feat_c = tl.cos(proj).to(wdt)                                           # (BLOCK_T, BLOCK_F)
    feat_s = tl.sin(proj).to(wdt)

    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    # fc1 as two dots over the cos and sin halves of the (D, 2F) weight, read transposed.
    w1_mask = f_ok[:, None] & d_ok[None, :]
    w1c = tl.load(W1 + offs_d[None, :] * (2 * F) + offs_f[:, None], mask=w1_mask, other=0.0)
    w1s = tl.load(W1 + offs_d[None, :] * (2 * F) + F + offs_f[:, None], mask=w1_mask, other=0.0)
    h = mma(feat_c, w1c, DOT_PRECISION, DOT_FP32) + mma(feat_s, w1s, DOT_PRECISION, DOT_FP32)
    h += tl.load(B1 + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))                   # exact GELU
    h = h.to(wdt)                                                           # (BLOCK_T, BLOCK_D)

    for o0 in tl.static_range(0, BLOCK_D, BLOCK_O):
        offs_o = o0 + tl.arange(0, BLOCK_O)
        o_ok = offs_o < D
        w2 = tl.load(W2 + offs_o[None, :] * D + offs_d[:, None], mask=d_ok[:, None] & o_ok[None, :], other=0.0)
        y = mma(h, w2, DOT_PRECISION, DOT_FP32)                             # (BLOCK_T, BLOCK_O)
        y += tl.load(B2 + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_ADD:
            y += tl.load(ADD + offs_o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(OUT + offs_t[:, None] * D + offs_o[None, :], y.to(OUT.dtype.element_ty),
                 mask=t_ok[:, None] & o_ok[None, :])


def inpe_embed(h: int, w: int, B: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
               fc2_weight: torch.Tensor, fc2_bias: torch.Tensor, add: torch.Tensor | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Positional embeddings of an (h, w) grid: (h*w, D) in fc1_weight's dtype (or `out`).

    B: (3, F) Fourier matrix (used in fp32); fc1: (D, 2F), (D,); fc2: (D, D), (D,);
    add: optional (D,) vector added to every row (the mask token)."""
    for v, n in ((h, "h"), (w, "w")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"grid {n} must be a positive int, got {v!r}")
    check_float(B, "B")
    check_float(fc1_weight, "fc1_weight")
    dt = fc1_weight.dtype
    for t, n in ((fc1_bias, "fc1_bias"), (fc2_weight, "fc2_weight"), (fc2_bias, "fc2_bias")):
        check_float(t, n, dt)
    if B.dim() != 2 or B.shape[0] != 3:
        raise ValueError(f"B must be (3, F), got shape {tuple(B.shape)}")
    F_ = B.shape[1]
    D = fc1_weight.shape[0]
    expect = {"fc1_weight": (D, 2 * F_), "fc1_bias": (D,), "fc2_weight": (D, D), "fc2_bias": (D,)}
    for t, n in ((fc1_weight, "fc1_weight"), (fc1_bias, "fc1_bias"), (fc2_weight, "fc2_weight"), (fc2_bias, "fc2_bias")):
        if tuple(t.shape) != expect[n]:
            raise ValueError(f"{n} must have shape {expect[n]} (F={F_}, D={D}), got {tuple(t.shape)}")
    tensors = [fc1_weight, fc1_bias, fc2_weight, fc2_bias]
    if add is not None:
        check_float(add, "add")
        if tuple(add.shape) != (D,):
            raise ValueError(f"add must have shape ({D},), got {tuple(add.shape)}")
        tensors.append(add)
    if D > 1024:
        raise ValueError(f"embedding width must be at most 1024 (kept in registers), got {D}")
    dev = check_device(inpe_kernel, *tensors, names=("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "add"))
    B = B.to(device=dev, dtype=torch.float32).contiguous()
    w1, b1, w2, b2 = (t.contiguous() for t in tensors[:4])
    addv = add.to(dt).contiguous() if add is not None else b2
    T = h * w
    if out is None:
        out = torch.empty((T, D), device=dev, dtype=dt)
    elif out.shape != (T, D) or out.dtype != dt or out.device != dev or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dt} ({T}, {D}) tensor on {dev}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    BLOCK_D = max(16, next_pow2(D))
    BLOCK_T = 16 if dev.type == "cuda" else 64
    grid = (triton.cdiv(T, BLOCK_T),)
    inpe_kernel[grid](out, B, w1, b1, w2, b2, addv, T, h, w, F_, D, HAS_ADD=add is not None,
                      BLOCK_T=BLOCK_T, BLOCK_F=max(16, next_pow2(F_)), BLOCK_D=BLOCK_D,
                      BLOCK_O=min(BLOCK_D, 64), DOT_PRECISION="ieee" if dt == torch.float32 else "tf32",
                      DOT_FP32=is_interpreted(inpe_kernel) and dt == torch.bfloat16,
                      num_warps=4 if dev.type == "cuda" else 1)
    return out


def inpe_module(h: int, w: int, module, add: torch.Tensor | None = None) -> torch.Tensor:
    """inpe_embed with the weights of an infgen_ref.inpe.INPE module: (h*w, D)."""
    return inpe_embed(h, w, module.B, module.fc1.weight, module.fc1.bias, module.fc2.weight,
                      module.fc2.bias, add)


def inpe_embed_ref(h: int, w: int, B: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
                   fc2_weight: torch.Tensor, fc2_bias: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch, as infgen_ref.inpe.INPE computes it: features in fp32 (float64 when the
    weights are float64), the MLP in the weights' dtype. (h*w, D)."""
    dt = fc1_weight.dtype
    fdt = torch.float64 if dt == torch.float64 else torch.float32
    uv = grid_coords(h, w, device=fc1_weight.device, dtype=fdt)
    feats = fourier_features(sphere(uv), B.to(device=uv.device, dtype=fdt)).to(dt)  # (T, 2F)
    hid = torch.nn.functional.gelu(feats @ fc1_weight.T + fc1_bias)
    y = hid @ fc2_weight.T + fc2_bias
    return y + add.to(dt) if add is not None else y


def inpe_flops(h: int, w: int, F_: int, D: int) -> float:
    return 2.0 * h * w * (2 * F_ * D + D * D)

