"""INPE: grid -> normalised coordinates -> sphere -> Fourier features (PyTorch) -> MLP (one kernel).

For an (H, W) grid, token t sits at row t // W, column t % W, normalised to ((i + 0.5) / H,
(j + 0.5) / W); the point goes onto the unit sphere (latitude, longitude each spanning
(-pi/2, pi/2)) and is lifted to [cos(2 pi p B), sin(2 pi p B)] with the fixed (3, F) Gaussian B:
infgen.ref.inpe's own functions, in fp32. The kernel runs fc2(gelu(fc1(features))) (+ an
optional vector, the mask token) in the weights' dtype with fp32 accumulation, BLOCK_H hidden
units at a time, so the hidden layer never leaves the chip. (The features used to be computed
in the kernel too; libdevice's sinf/cosf bring a slow path with a local array and spills on
sm_90a, and the features cost little next to the MLP.) The embedding depends only on the grid
size and the weights, so the runtime computes it once per (H', W') and caches it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from infgen.ref.inpe import fourier_features, grid_coords, sphere

from .attention import mma
from .common import Launch, check_device, check_float, is_interpreted, next_pow2


@triton.jit
def inpe_kernel(
    OUT,                    # pointer: (T, D) embeddings, row-major, in the weights' dtype
    FEAT,                   # pointer: (T, 2F) Fourier features [cos | sin], row-major, in the weights' dtype
    W1, B1,                 # pointers: fc1 weight (D, 2F) row-major, bias (D,)
    W2, B2,                 # pointers: fc2 weight (D, D) row-major, bias (D,)
    ADD,                    # pointer: (D,) vector added to every row (mask token); unused without HAS_ADD
    T, F2, D,               # tokens, feature width (2F), embedding width
    HAS_ADD: tl.constexpr,  # add ADD to the output
    BLOCK_T: tl.constexpr,  # tokens per program (>= 16 for tl.dot)
    BLOCK_F: tl.constexpr,  # next power of two >= 2F (>= 16)
    BLOCK_D: tl.constexpr,  # next power of two >= D (>= 16): the output row kept in registers
    BLOCK_H: tl.constexpr,  # hidden units per step (a power of two <= BLOCK_D)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 weights, else "tf32" (ignored)
    DOT_FP32: tl.constexpr,       # upcast dot operands (interpreter only)
):
    """Grid: (cdiv(T, BLOCK_T),). fc2(gelu(fc1(feat))) + b2 (+ add) for BLOCK_T tokens, BLOCK_H
    hidden units at a time: the hidden layer never leaves the chip."""
    offs_t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # int64 token ids
    t_ok = offs_t < T
    offs_f = tl.arange(0, BLOCK_F)
    f_ok = offs_f < F2
    feat = tl.load(FEAT + offs_t[:, None] * F2 + offs_f[None, :], mask=t_ok[:, None] & f_ok[None, :],
                   other=0.0)                                               # (BLOCK_T, BLOCK_F)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    y = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)                      # fc2 output rows
    for h0 in range(0, D, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < D
        w1 = tl.load(W1 + offs_h[None, :] * F2 + offs_f[:, None], mask=f_ok[:, None] & h_ok[None, :],
                     other=0.0)                                             # (BLOCK_F, BLOCK_H): fc1 rows, transposed
        h = mma(feat, w1, DOT_PRECISION, DOT_FP32)
        h += tl.load(B1 + offs_h, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        h = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))               # exact GELU, (BLOCK_T, BLOCK_H)
        w2 = tl.load(W2 + offs_d[None, :] * D + offs_h[:, None], mask=h_ok[:, None] & d_ok[None, :],
                     other=0.0)                                             # (BLOCK_H, BLOCK_D): fc2 columns, transposed
        y += mma(h.to(W2.dtype.element_ty), w2, DOT_PRECISION, DOT_FP32)
    y += tl.load(B2 + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_ADD:
        y += tl.load(ADD + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + offs_t[:, None] * D + offs_d[None, :], y.to(OUT.dtype.element_ty),
             mask=t_ok[:, None] & d_ok[None, :])


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
    addv = add.to(dt).contiguous() if add is not None else None
    T = h * w
    if out is None:
        out = torch.empty((T, D), device=dev, dtype=dt)
    elif out.shape != (T, D) or out.dtype != dt or out.device != dev or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dt} ({T}, {D}) tensor on {dev}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    feat = fourier_features(sphere(grid_coords(h, w, device=dev)), B).to(dt)  # (T, 2F), fp32 math
    inpe_launch(out, feat, w1, b1, w2, b2, addv, gpu=dev.type == "cuda")()
    return out


def inpe_launch(out, feat, w1, b1, w2, b2, add, gpu: bool) -> Launch:
    """The kernel launch for checked, contiguous inputs: out (T, D), feat (T, 2F) and the MLP's
    weights in one dtype, add (D,) or None; gpu picks CUDA tiles (else the interpreter's)."""
    T, D = out.shape
    F2 = feat.shape[1]
    BLOCK_D = max(16, next_pow2(D))
    if not gpu:  # interpreter: few, large programs
        BLOCK_T, BLOCK_H, warps = 64, min(BLOCK_D, 64), 1
    else:        # CUDA: benchmarks/compile_report.py shows these compile without spills (fp32 dots are FMA, hence smaller)
        BLOCK_T, BLOCK_H, warps = 16, min(BLOCK_D, 16 if w1.dtype == torch.float32 else 32), 4
    return Launch(inpe_kernel, (triton.cdiv(T, BLOCK_T),),
                  dict(OUT=out, FEAT=feat, W1=w1, B1=b1, W2=w2, B2=b2, ADD=b2 if add is None else add,
                       T=T, F2=F2, D=D),
                  dict(HAS_ADD=add is not None, BLOCK_T=BLOCK_T, BLOCK_F=max(16, next_pow2(F2)), BLOCK_D=BLOCK_D,
                       BLOCK_H=BLOCK_H, DOT_PRECISION="ieee" if w1.dtype == torch.float32 else "tf32",
                       DOT_FP32=is_interpreted(inpe_kernel) and w1.dtype == torch.bfloat16),
                  num_warps=warps)


def inpe_module(h: int, w: int, module, add: torch.Tensor | None = None) -> torch.Tensor:
    """inpe_embed with the weights of an infgen.ref.inpe.INPE module: (h*w, D)."""
    return inpe_embed(h, w, module.B, module.fc1.weight, module.fc1.bias, module.fc2.weight,
                      module.fc2.bias, add)


def inpe_embed_ref(h: int, w: int, B: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
                   fc2_weight: torch.Tensor, fc2_bias: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch, as infgen.ref.inpe.INPE computes it: features in fp32 (float64 when the
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

