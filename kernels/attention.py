"""Flash attention forward (no mask, no causality): softmax(Q K^T * scale) V, one pass over K/V.

One kernel serves both attention sites of the InfGen decoder, with different tiles:
- cross-attention: Q = mask tokens (up to 262,144 and more), K/V = latent tokens (4,096 or any
  count), 8 heads of 64; separate query and key lengths, ragged tails on both.
- the mid block's self-attention: one head of dimension 512 over all H'W' tokens (262,144 at
  4096^2). FlashAttention, cuDNN and TensorRT stop at head dim 256; PyTorch falls back to its
  memory-efficient kernel. Here the fp32 accumulator holds the full 512-wide output row block.

Online softmax in fp32 with exp2: scores are scaled by scale * log2(e) once, so each tile costs
one exp2 per score. All base offsets (batch, head, row block) are int64: Q/K/V/O may exceed 2^31
elements. Tensors are passed with all strides, so head-split views of (B, L, H*D) projections and
a packed (B, L, 3C) QKV need no copies.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .common import check_device, check_float, is_interpreted, next_pow2

LOG2E = 1.4426950408889634
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
def attn_fwd_kernel(
    Q, K, V, O,                            # pointers: q (B, H, M, D), k and v (B, H, N, D), out (B, H, M, D)
    stride_qb, stride_qh, stride_qm,       # q strides in elements (batch, head, row); the D stride is 1
    stride_kb, stride_kh, stride_kn,       # k strides (batch, head, row)
    stride_vb, stride_vh, stride_vn,       # v strides (batch, head, row)
    stride_ob, stride_oh, stride_om,       # out strides (batch, head, row)
    H,                                     # number of heads (grid axis 1 runs over B * H)
    M,                                     # query length
    N,                                     # key/value length
    qk_scale,                              # softmax scale * log2(e), fp32
    HEAD_DIM: tl.constexpr,                # D, the true head dimension
    BLOCK_M: tl.constexpr,                 # query rows per program
    BLOCK_N: tl.constexpr,                 # keys per inner step
    BLOCK_D: tl.constexpr,                 # next power of two >= D (the accumulator width)
    DOT_PRECISION: tl.constexpr,           # "ieee" for fp32 inputs (exact fp32 dots), else "tf32" (ignored for bf16/fp16)
    DOT_FP32: tl.constexpr,                # upcast dot operands to fp32 (interpreter only; False on GPU)
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
    k_ptr = K + off_b * stride_kb + off_h * stride_kh
    v_ptr = V + off_b * stride_vb + off_h * stride_vh

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = (start_m + offs_m) < M
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)           # (BLOCK_M, BLOCK_D)
    k_offs = offs_n[:, None] * stride_kn + offs_d[None, :]                # (BLOCK_N, BLOCK_D)
    v_offs = offs_n[:, None] * stride_vn + offs_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)             # running row max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)                           # running row sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)                  # unnormalised output rows

    n_full = (N // BLOCK_N) * BLOCK_N
    # Full key tiles: no key mask.
    for start_n in range(0, n_full, BLOCK_N):
        k = tl.load(k_ptr + k_offs, mask=d_ok[None, :], other=0.0)         # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptr + v_offs, mask=d_ok[None, :], other=0.0)
        s = mma(q, tl.trans(k), DOT_PRECISION, DOT_FP32) * qk_scale  # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_PRECISION, DOT_FP32)
        m_i = m_new
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
    # Ragged tail: keys past N score -inf.
    if n_full < N:
        n_ok = (n_full + offs_n) < N
        k = tl.load(k_ptr + k_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_ptr + v_offs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        s = mma(q, tl.trans(k), DOT_PRECISION, DOT_FP32) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_PRECISION, DOT_FP32)

    out = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) by head-dim bucket, for CUDA. The accumulator is
# BLOCK_M x BLOCK_D fp32 in registers: at D = 512 a 64-row block is 128 KiB, i.e. 128 registers
# per thread at 8 warps, so D = 512 takes 64 x 32 tiles (K and V tiles 32 KiB each in shared
# memory). These are first guesses, never measured: benchmarks/kernels.py sweeps alternatives.
CUDA_CONFIGS = {
    64: (128, 64, 4, 3),
    128: (128, 64, 8, 3),
    256: (64, 64, 8, 2),
    512: (64, 32, 8, 2),
}
# Interpreter (CPU): few, large programs (each program is a Python loop step).
INTERP_CONFIGS = {64: (64, 64, 1, 1), 128: (64, 64, 1, 1), 256: (32, 32, 1, 1), 512: (32, 32, 1, 1)}


def pick_config(head_dim: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head dimension on a device."""
    bucket = max(64, next_pow2(head_dim))
    return (CUDA_CONFIGS if device.type == "cuda" else INTERP_CONFIGS)[bucket]


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


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    out: torch.Tensor | None = None, config: tuple | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v, fp32 softmax, output in q's dtype.

    q: (B, H, M, D); k, v: (B, H, N, D); any strides with a unit last stride (a batch stride of 0
    broadcasts one query set over the batch). scale defaults to 1/sqrt(D).
    Returns (B, H, M, D): a (B, H, M, D) view of a (B, M, H, D) buffer, so that
    `.transpose(1, 2).reshape(B, M, H * D)` is free; or `out` when given (same shape, any strides
    with unit last stride).
    config: (BLOCK_M, BLOCK_N, num_warps, num_stages) to override the tile choice (benchmarks)."""
    _check(q, k, v)
    dev = check_device(attn_fwd_kernel, q, k, v, names=("q", "k", "v"))
    B, H, M, D = q.shape
    N = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if out is None:
        out = torch.empty((B, M, H, D), device=dev, dtype=q.dtype).transpose(1, 2)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != dev or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {dev} with unit "
                         f"last stride, got {out.dtype} {tuple(out.shape)} on {out.device}")
    BM, BN, warps, stages = config or pick_config(D, dev)
    grid = (triton.cdiv(M, BM), B * H)
    attn_fwd_kernel[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, M, N, float(scale) * LOG2E,
        HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=max(16, next_pow2(D)),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_FP32=is_interpreted(attn_fwd_kernel) and q.dtype == torch.bfloat16, num_warps=warps, num_stages=stages)
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
