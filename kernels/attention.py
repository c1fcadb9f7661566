"""Flash attention forward (no mask, no causality): softmax(Q K^T * scale) V, one pass over K/V.

One kernel serves both attention sites of the InfGen decoder, with different tiles:
- cross-attention: Q = mask tokens (up to 262,144 and more), K/V = latent tokens (4,096 or any
  count), 8 heads of 64; separate query and key lengths, ragged tails on both.
- the mid block's self-attention: one head of dimension 512 over all H'W' tokens (262,144 at
  4096^2). FlashAttention, cuDNN and TensorRT stop at head dim 256; PyTorch falls back to its
  memory-efficient kernel. Here the fp32 accumulator holds the full 512-wide output row block.

Online softmax in fp32 with exp2: each score is multiplied by scale * log2(e) once (no multiply
at all when the caller pre-scales q: q_prescaled), then one exp2. All base offsets (batch, head,
row block) are int64: Q/K/V/O may exceed 2^31 elements. Tensors are passed with all strides, so
head-split views of (B, L, H*D) projections and a packed (B, L, 3C) QKV need no copies; K and V
can instead come as TMA tensor descriptors (kv_tma: fewer registers on Hopper, benchmarks/compile_report.py).
The tiles the runtime picks are the ones benchmarks/compile_report.py shows compiling for sm_90a without spills;
fp32 inputs on CUDA run torch SDPA instead (FP32_ON_CUDA).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import Launch, check_device, check_float, is_interpreted, next_pow2

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453  # 1 / LOG2E: the SDPA scale that undoes a q pre-scaled by log2(e)
MAX_HEAD_DIM = 512


@triton.jit
def mma(a, b, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """tl.dot(a, b) with an fp32 result; DOT_FP32 upcasts the operands first (exact for bf16/fp16
    products; used only under the interpreter, whose bf16 dot is wrong in triton 3.9)."""
    if DOT_FP32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PRECISION)
    return c


@triton.jit
def attn_tile(acc, l_i, m_i, q, k_ptr, v_ptr, k_offs, v_offs, start_n, N, qk_scale,
              offs_n, d_ok, off_b, off_h,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASK_N: tl.constexpr, Q_PRESCALED: tl.constexpr,
              KV_TMA: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """The online-softmax update for one key tile: the one copy of the inner loop's body, for the
    full tiles (MASK_N False: no key mask) and the ragged last one (keys past N score -inf).
    k_ptr, v_ptr point at key start_n's row and k_offs, v_offs are the (BLOCK_N, BLOCK_D) in-tile
    offsets; with KV_TMA they are tensor descriptors over (B, H, N, D), read at (off_b, off_h,
    start_n) (TMA fills rows past N and columns past D with zeros). Returns (acc, l_i, m_i)."""
    if MASK_N:
        n_ok = (start_n + offs_n) < N
    if KV_TMA:
        k = k_ptr.load([off_b, off_h, start_n, 0]).reshape(BLOCK_N, BLOCK_D)  # (BLOCK_N, BLOCK_D)
        v = v_ptr.load([off_b, off_h, start_n, 0]).reshape(BLOCK_N, BLOCK_D)
    else:
        kv_ok = (n_ok[:, None] & d_ok[None, :]) if MASK_N else d_ok[None, :]
        k = tl.load(k_ptr + k_offs, mask=kv_ok, other=0.0)                    # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptr + v_offs, mask=kv_ok, other=0.0)
    s = mma(q, tl.trans(k), DOT_PRECISION, DOT_FP32)                  # (BLOCK_M, BLOCK_N)
    if not Q_PRESCALED:
        s = s * qk_scale                                                  # log2 units: one multiply per score
    if MASK_N:
        s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_PRECISION, DOT_FP32)
    return acc, l_i, m_new


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O,                            # pointers: q (B, H, M, D), k and v (B, H, N, D), out (B, H, M, D);
                                           #   with KV_TMA, K and V are tensor descriptors over (B, H, N, D)
    stride_qb, stride_qh, stride_qm,       # q strides in elements (batch, head, row); the D stride is 1
    stride_kb, stride_kh, stride_kn,       # k strides (batch, head, row); unused with KV_TMA
    stride_vb, stride_vh, stride_vn,       # v strides (batch, head, row); unused with KV_TMA
    stride_ob, stride_oh, stride_om,       # out strides (batch, head, row)
    H,                                     # number of heads (grid axis 1 runs over B * H)
    M,                                     # query length
    N,                                     # key/value length
    qk_scale,                              # softmax scale * log2(e), fp32 > 0 (ignored when Q_PRESCALED)
    HEAD_DIM: tl.constexpr,                # D, the true head dimension
    BLOCK_M: tl.constexpr,                 # query rows per program
    BLOCK_N: tl.constexpr,                 # keys per inner step
    BLOCK_D: tl.constexpr,                 # next power of two >= D (the accumulator width)
    DOT_PRECISION: tl.constexpr,           # "ieee" for fp32 inputs (exact fp32 dots), else "tf32" (ignored for bf16/fp16)
    DOT_FP32: tl.constexpr,                # upcast dot operands to fp32 (interpreter only; False on GPU)
    Q_PRESCALED: tl.constexpr = False,     # q already holds q * scale * log2(e): scores need no multiply
    KV_TMA: tl.constexpr = False,          # K and V come as tensor descriptors (TMA loads; no address math)
    Q_RELOAD: tl.constexpr = False,        # load the q tile again for every key tile instead of holding it in
                                           #   registers (fewer registers at D = 512 with mma.sync tiles)
):
    """Grid: (cdiv(M, BLOCK_M), B * H). Program (i, bh) writes out rows i*BLOCK_M.. of head bh."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    start_m = pid_m.to(tl.int64) * BLOCK_M
    # int64 scalar bases; in-tile offsets below stay small (int32).
    q_base = Q + off_b * stride_qb + off_h * stride_qh + start_m * stride_qm
    o_base = O + off_b * stride_ob + off_h * stride_oh + start_m * stride_om
    if KV_TMA:
        k_ptr, v_ptr = K, V
    else:
        k_ptr = K + off_b * stride_kb + off_h * stride_kh
        v_ptr = V + off_b * stride_vb + off_h * stride_vh

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = (start_m + offs_m) < M
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)           # (BLOCK_M, BLOCK_D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)             # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                           # running row sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)                  # unnormalised output rows

    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :]                # (BLOCK_N, BLOCK_D)
    v_offs = offs_n[:, None] * stride_vn + offs_d[None, :]
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        if Q_RELOAD:
            q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                        mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        acc, l_i, m_i = attn_tile(acc, l_i, m_i, q, k_ptr, v_ptr, k_offs, v_offs, start_n, N, qk_scale,
                                  offs_n, d_ok, off_b.to(tl.int32), off_h.to(tl.int32), BLOCK_N, BLOCK_D,
                                  False, Q_PRESCALED, KV_TMA, DOT_PRECISION, DOT_FP32)
        if not KV_TMA:
            k_ptr += BLOCK_N * stride_kn
            v_ptr += BLOCK_N * stride_vn
    if n_full < N:
        acc, l_i, m_i = attn_tile(acc, l_i, m_i, q, k_ptr, v_ptr, k_offs, v_offs, n_full, N, qk_scale,
                                  offs_n, d_ok, off_b.to(tl.int32), off_h.to(tl.int32), BLOCK_N, BLOCK_D,
                                  True, Q_PRESCALED, KV_TMA, DOT_PRECISION, DOT_FP32)

    out = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) by head-dim bucket, for CUDA with bf16/fp16
# inputs, chosen from benchmarks/compile_report.py (sm_90a, triton 3.6 and 3.9): each compiles without spills,
# fits in shared memory and uses HGMMA. The accumulator is BLOCK_M x BLOCK_D fp32 in registers: at
# D = 512 a 64-row block is 128 registers per thread at 8 warps, which leaves room for 16-key
# score tiles only (64 x 32 spills on triton 3.9). Speed is unmeasured: benchmarks/kernels.py sweeps.
CUDA_CONFIGS = {
    64: (128, 64, 4, 3),
    128: (128, 64, 8, 3),
    256: (64, 64, 8, 2),
    512: (64, 16, 8, 3),
}
# fp32 inputs on CUDA run torch SDPA instead (FP32_ON_CUDA): the kernel's exact fp32 dots are FMA
# loops that spill at every tile the report tried (and tf32x3 dots overflow shared memory at d 512).
FP32_ON_CUDA = "torch SDPA"
# What benchmarks/kernels.py sweeps (bf16) on a GPU, by head dim: (BLOCK_M, BLOCK_N, num_warps,
# num_stages, kv_tma). benchmarks/compile_report.py compiles each; tests/test_kernels_report.py keeps only ones
# that fit an H100.
SWEEP_CONFIGS = {
    512: [(64, 16, 8, 3, False), (64, 16, 8, 3, True), (64, 16, 8, 2, False), (64, 32, 8, 2, False),
          (64, 32, 8, 2, True), (64, 32, 8, 1, False), (64, 64, 8, 1, True)],
    64: [(128, 64, 4, 3, False), (128, 64, 4, 3, True), (128, 128, 8, 3, False), (128, 128, 8, 3, True),
         (128, 64, 8, 4, False), (64, 64, 4, 4, False), (128, 32, 4, 4, False), (256, 64, 8, 3, False)],
}
# Interpreter (CPU): few, large programs (each program is a Python loop step).
INTERP_CONFIGS = {64: (64, 64, 1, 1), 128: (64, 64, 1, 1), 256: (32, 32, 1, 1), 512: (32, 32, 1, 1)}


def pick_config(head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dimension on a device."""
    bucket = max(64, next_pow2(head_dim))
    return (CUDA_CONFIGS if device.type == "cuda" else INTERP_CONFIGS)[bucket]


def uses_kernel(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether flash_attention runs attn_fwd_kernel for these inputs (else torch SDPA: fp32 on CUDA)."""
    return not (device.type == "cuda" and dtype == torch.float32)


def _check(q, k, v):
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        check_float(t, n, q.dtype if n != "q" else None)
        if t.dim() != 4:
            raise ValueError(f"{n} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{n} must have unit stride in its last (head) dim, got strides {t.stride()}")
    B, H, M, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k must be (B={B}, H={H}, N, D={D}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if min(B, H, M, k.shape[2]) < 1:
        raise ValueError(f"empty attention: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim must be 1..{MAX_HEAD_DIM}, got {D}")
    if B * H > 65535:
        raise ValueError(f"batch * heads must be at most 65535 (grid axis 1), got {B * H}")


def attention_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float,
                     config: tuple, q_prescaled: bool = False, kv_tma: bool = False) -> Launch:
    """The kernel launch for checked inputs (q (B, H, M, D); k, v (B, H, N, D); out like q) and a
    (BLOCK_M, BLOCK_N, num_warps, num_stages) tile; `scale` is ignored when q_prescaled; kv_tma
    passes k and v as TMA tensor descriptors (check_tma(k, v) must hold)."""
    B, H, M, D = q.shape
    BM, BN, warps, stages = config
    BD = max(16, next_pow2(D))
    if kv_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        k, v = (TensorDescriptor(t, list(t.shape), _tma_strides(t), [1, 1, BN, BD]) for t in (k, v))
    return Launch(
        attn_fwd_kernel, (triton.cdiv(M, BM), B * H),
        dict(Q=q, K=k, V=v, O=out,
             stride_qb=q.stride(0), stride_qh=q.stride(1), stride_qm=q.stride(2),
             stride_kb=k.strides[0] if kv_tma else k.stride(0), stride_kh=k.strides[1] if kv_tma else k.stride(1),
             stride_kn=k.strides[2] if kv_tma else k.stride(2),
             stride_vb=v.strides[0] if kv_tma else v.stride(0), stride_vh=v.strides[1] if kv_tma else v.stride(1),
             stride_vn=v.strides[2] if kv_tma else v.stride(2),
             stride_ob=out.stride(0), stride_oh=out.stride(1), stride_om=out.stride(2),
             H=H, M=M, N=k.shape[2], qk_scale=1.0 if q_prescaled else float(scale) * LOG2E),
        dict(HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
             DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
             DOT_FP32=is_interpreted(attn_fwd_kernel) and q.dtype == torch.bfloat16,
             Q_PRESCALED=bool(q_prescaled), KV_TMA=bool(kv_tma)),
        num_warps=warps, num_stages=stages)


def _tma_strides(t: torch.Tensor) -> list[int]:
    """t's strides, with those of size-1 dims (which address nothing) replaced by the next dim's
    extent, so that they meet TMA's rules whenever the real ones do."""
    st = list(t.stride())
    for i in (2, 1, 0):
        if t.shape[i] == 1:
            st[i] = st[i + 1] * t.shape[i + 1]
    return st


def check_tma(k: torch.Tensor, v: torch.Tensor) -> None:
    """TMA's rules for k and v: 16-byte aligned data, batch/head/row strides that are nonzero
    multiples of 16 bytes. Raises ValueError naming the tensor that breaks them."""
    for t, n in ((k, "k"), (v, "v")):
        es = t.element_size()
        if t.data_ptr() % 16 or any(s == 0 or s * es % 16 for s in _tma_strides(t)[:3]):
            raise ValueError(f"kv_tma needs {n} 16-byte aligned with batch/head/row strides that are nonzero "
                             f"multiples of 16 bytes; got data_ptr % 16 = {t.data_ptr() % 16} and strides "
                             f"{tuple(t.stride())} of {es}-byte elements")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    out: torch.Tensor | None = None, config: tuple | None = None, *,
                    q_prescaled: bool = False, kv_tma: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale) v, fp32 softmax, output in q's dtype.

    q: (B, H, M, D); k, v: (B, H, N, D); any strides with a unit last stride (a batch stride of 0
    broadcasts one query set over the batch). scale > 0 defaults to 1/sqrt(D).
    Returns (B, H, M, D): a (B, H, M, D) view of a (B, M, H, D) buffer, so that
    `.transpose(1, 2).reshape(B, M, H * D)` is free; or `out` when given (same shape, any strides
    with unit last stride).
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to override the tile choice (benchmarks).
    q_prescaled: q already holds q * scale * log2(e) (a backend folds the factor into the query
    projection's weights and bias), so the kernel computes softmax over q k^T / log2(e) with no
    multiply per score; `scale` must then be None.
    kv_tma: load K and V tiles through TMA tensor descriptors (Hopper; fewer registers, see
    benchmarks/compile_report.py); k and v must be 16-byte aligned with strides in multiples of 16 bytes.
    fp32 inputs on CUDA run torch SDPA (see FP32_ON_CUDA); fp32 in the interpreter runs the kernel."""
    _check(q, k, v)
    dev = check_device(attn_fwd_kernel, q, k, v, names=("q", "k", "v"))
    B, H, M, D = q.shape
    if q_prescaled and scale is not None:
        raise ValueError(f"scale must be None when q_prescaled (q already carries the scale), got {scale!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if out is None:
        out = torch.empty((B, M, H, D), device=dev, dtype=q.dtype).transpose(1, 2)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != dev or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {dev} with unit "
                         f"last stride, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if not uses_kernel(q.dtype, dev):
        out.copy_(F.scaled_dot_product_attention(q, k, v, scale=LN2 if q_prescaled else scale))
        return out
    if kv_tma:
        check_tma(k, v)
    attention_launch(q, k, v, out, scale, config or pick_config(D, dev), q_prescaled, kv_tma)()
    return out


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch in the inputs' dtype (float64 inputs give the reference): (B, H, M, D)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-1, -2)) * scale  # (B, H, M, N)
    return s.softmax(-1) @ v


def attention_flops(B: int, H: int, M: int, N: int, D: int) -> float:
    """2 per multiply-add: Q K^T and P V."""
    return 4.0 * B * H * M * N * D
