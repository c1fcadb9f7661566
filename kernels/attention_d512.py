"""Head-dim-512 flash attention for Hopper (sm_90a) that computes the scores once per key tile.

The mid block's self-attention (one head of 512 over all H'W' tokens) through the tl.dot kernel
(kernels/attention.py) computes every score twice: Triton lays out a dot that feeds another dot
with all 8 warps on the query axis, so both warpgroups run the same Q K^T. This kernel is written
in Gluon (Triton's layout-explicit dialect) and splits the work by hand, after FlashMLA's split of
the 64 x 512 output over two warpgroups:

- warpgroup 0 (the default partition, 4 warps): S = Q K^T for the 64 x BLOCK_N tile (wgmma, Q and
  K from shared memory), the online softmax, P and the row rescale factor alpha into shared
  memory for warpgroup 1, then O[:, :256] += P V[:, :256] with P from registers;
- warpgroup 1 (a worker partition, 4 warps): O[:, 256:] += P V[:, 256:] with P from shared memory;
- a load warp (1 warp): TMA copies of Q once and, per key tile, K, V[:, :256] and V[:, 256:],
  each into its buffer (a ring of `stages` slots) as soon as its consumer released it (mbarriers).

Each warpgroup keeps a 64 x 256 fp32 accumulator (128 registers per thread). Shared memory at
64-key tiles: Q 64 KiB, K 64 KiB, V 2 x 32 KiB, P 2 x 8 KiB: 208 KiB of the 227 KiB a block may
use. Keys past N (the ragged last tile) score -inf; TMA zero-fills rows past the end of each
(batch, head) slice, so no other batch's rows enter. One launch per (batch, head): the mid block
has one head and batch 1-4.

It cannot run in Triton's interpreter: `infgen.kernels.attention.flash_attention` stays the tested
fallback, and `infgen.kernels.attention.attention_ref` is the reference for both. `d512_unsupported_reason`
says when this one applies; `compile_d512` compiles a configuration for a target without a GPU
(the sm_90a compile report); `static_checks` / `score_work` read what the compile produced.
docs/attention_d512.md has the design, the compile numbers and what has not run yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

try:  # Gluon's Hopper API: triton >= 3.6 (the GPU image's version) and 3.9 (checked).
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError as exc:  # pragma: no cover - older triton
    raise ImportError("infgen.kernels.attention_d512 needs Gluon's Hopper API: pip install 'triton>=3.6'") from exc

from .common import check_float, is_interpreted
from .toolchain import compile_kernel, cuobjdump, divisible_by_16, resource_usage

# TMA load: `tma.async_load` in triton 3.9; 3.6 names it `async_copy_global_to_shared` (removed in 3.9).
tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

LOG2E = 1.4426950408889634
HEAD_DIM = 512
BLOCK_M = 64      # query rows per program: one wgmma M tile (4 warps x 16 rows)
HALF = 256        # output columns per warpgroup


@gluon.jit
def qk_product(q_smem, k_tile, s_zero):
    """S = Q K^T of one key tile: wgmma with Q (BM, 512) and K (BLOCK_N, 512) in shared memory."""
    return warpgroup_mma(q_smem, k_tile.permute((1, 0)), s_zero, use_acc=False)


@gluon.jit
def pv_product(p, v_tile, acc):
    """acc + P V of one key tile: wgmma with P from registers or shared memory, V in shared memory."""
    return warpgroup_mma(p, v_tile, acc)


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, bufs, bars, off_m, N):
    """Load warp: Q once; per key tile K, V[:, :HALF] and V[:, HALF:] into ring slot j % STAGES,
    each as soon as its consumer released that slot (mbarriers start with parity 1 complete, so
    the first wait on a free barrier passes)."""
    q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem = bufs
    q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready = bars
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    HALF_D: gl.constexpr = v0_smem.shape[2]
    mbarrier.expect(q_ready, q_desc.block_type.nbytes)
    tma_load(q_desc, [off_m, 0], q_ready, q_smem)
    for j in range(gl.cdiv(N, BLOCK_N)):
        s = j % STAGES
        free_phase = ((j // STAGES) & 1) ^ 1
        start_n = j * BLOCK_N
        mbarrier.wait(k_free.index(s), free_phase)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma_load(k_desc, [start_n, 0], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v0_free.index(s), free_phase)
        mbarrier.expect(v0_ready.index(s), v_desc.block_type.nbytes)
        tma_load(v_desc, [start_n, 0], v0_ready.index(s), v0_smem.index(s))
        mbarrier.wait(v1_free.index(s), free_phase)
        mbarrier.expect(v1_ready.index(s), v_desc.block_type.nbytes)
        tma_load(v_desc, [start_n, HALF_D], v1_ready.index(s), v1_smem.index(s))


@gluon.jit
def _store_half(acc, inv_l, o_ptr, stride_om, M, off_m, col0, layout: gl.constexpr):
    """out[off_m + r, col0 + c] = acc[r, c] * inv_l[r] for rows r < M - off_m."""
    rows = off_m + gl.arange(0, acc.shape[0], gl.SliceLayout(1, layout))
    cols = col0 + gl.arange(0, acc.shape[1], gl.SliceLayout(0, layout))
    ptrs = o_ptr + rows.to(gl.int64)[:, None] * stride_om + cols[None, :]
    out = acc * gl.convert_layout(inv_l, gl.SliceLayout(1, layout))[:, None]
    gl.store(ptrs, out.to(o_ptr.dtype.element_ty), mask=(rows < M)[:, None])


@gluon.jit
def _softmax_partition(bufs, bars, o_ptr, stride_om, M, N, off_m, qk_scale,
                       Q_PRESCALED: gl.constexpr, QK: gl.constexpr, PV: gl.constexpr,
                       CGA: gl.constexpr, K_ARM: gl.constexpr, V_ARM: gl.constexpr):
    """Warpgroup 0: S = Q K^T (the only score computation), online softmax in fp32 with exp2,
    P and alpha to shared memory for warpgroup 1, O[:, :HALF] += P V[:, :HALF] with P from
    registers. CGA: the register layouts' CTA split ([] in one CTA; rows over a cluster's CTAs in
    the cluster kernel). K_ARM / V_ARM: 0 when the load warp arms the ready barriers; else the
    bytes this partition arms the K / V[:, :HALF] ready barrier with for the slot's next tile
    right after waiting on it (the cluster kernel: kernels/attention_d512_cluster.py)."""
    q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem = bufs
    q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready = bars
    BM: gl.constexpr = q_smem.shape[0]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    HALF_D: gl.constexpr = v0_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16], cga_layout=CGA)
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HALF_D, 16], cga_layout=CGA)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    m_i = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))   # running row max (log2 units)
    l_i = gl.zeros([BM], gl.float32, gl.SliceLayout(1, s_layout))                 # running row sum of exp2
    acc = gl.zeros([BM, HALF_D], gl.float32, o_layout)                             # O[:, :HALF], unnormalised
    s_zero = gl.zeros([BM, BLOCK_N], gl.float32, s_layout)
    n_tiles = gl.cdiv(N, BLOCK_N)

    mbarrier.wait(q_ready, 0)
    for j in range(n_tiles):
        s_idx = j % STAGES
        phase = (j // STAGES) & 1
        mbarrier.wait(k_ready.index(s_idx), phase)
        if K_ARM > 0:
            mbarrier.expect(k_ready.index(s_idx), K_ARM, j + STAGES < n_tiles)
        s = QK(q_smem, k_smem.index(s_idx), s_zero)                          # (BM, BLOCK_N)
        mbarrier.arrive(k_free.index(s_idx), count=1)
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, N - j * BLOCK_N, qk_scale, Q_PRESCALED, s_layout)
        p = p.to(q_smem.dtype)
        _publish_p(p, alpha, j, p_smem, alpha_smem, p_ready, p_free)

        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        mbarrier.wait(v0_ready.index(s_idx), phase)
        if V_ARM > 0:
            mbarrier.expect(v0_ready.index(s_idx), V_ARM, j + STAGES < n_tiles)
        acc = PV(gl.convert_layout(p, p_layout), v0_smem.index(s_idx), acc)  # (BM, HALF)
        mbarrier.arrive(v0_free.index(s_idx), count=1)

    _finish_first_half(acc, l_i, l_smem, l_ready, o_ptr, stride_om, M, off_m, o_layout)


@gluon.jit
def _finish_first_half(acc, l_i, l_smem, l_ready, o_ptr, stride_om, M, off_m, o_layout: gl.constexpr):
    """Warpgroup 0's end: 1 / row sum to shared memory for warpgroup 1, then O[:, :HALF] stored."""
    inv_l = 1.0 / l_i
    l_smem.store(inv_l)
    mbarrier.arrive(l_ready, count=1)
    _store_half(acc, inv_l, o_ptr, stride_om, M, off_m, 0, o_layout)


@gluon.jit
def _softmax_step(s, m_i, l_i, n_left, qk_scale, Q_PRESCALED: gl.constexpr, layout: gl.constexpr):
    """One tile's online softmax (log2 units): keys at or past n_left score -inf. Returns P (fp32),
    the rescale alpha of the earlier tiles' sum, and the new row max and row sum."""
    key = gl.arange(0, s.shape[1], gl.SliceLayout(0, layout))
    if not Q_PRESCALED:
        s = s * qk_scale
    s = gl.where((key < n_left)[None, :], s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    p = gl.exp2(s - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def _publish_p(p, alpha, j, p_smem, alpha_smem, p_ready, p_free):
    """P and alpha of tile j into slot j % 2 for warpgroup 1, once it released that slot."""
    buf = j % 2
    mbarrier.wait(p_free.index(buf), ((j // 2) & 1) ^ 1)
    p_smem.index(buf).store(p)
    alpha_smem.index(buf).store(alpha)
    fence_async_shared()  # generic-proxy stores before warpgroup 1's wgmma reads P
    mbarrier.arrive(p_ready.index(buf), count=1)


@gluon.jit
def _softmax_partition_pipelined(bufs, bars, o_ptr, stride_om, M, N, off_m, qk_scale, Q_PRESCALED: gl.constexpr):
    """Warpgroup 0, software-pipelined (D512Config.pipelined): per tile j it issues S(j+1) = Q K(j+1)^T
    and then O[:, :HALF] += P(j) V(j)[:, :HALF] as async wgmma groups, waits with one group
    outstanding (S(j+1) done, P V still on the tensor cores) and runs tile j+1's softmax while the
    P V finishes; then waits for it and rescales O by alpha(j+1). Needs STAGES >= 2 for the K load
    of tile j+1 to overlap tile j's work (one slot makes the load wait for S(j))."""
    q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem = bufs
    q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready = bars
    BM: gl.constexpr = q_smem.shape[0]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    HALF_D: gl.constexpr = v0_smem.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HALF_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    m_i = gl.full([BM], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([BM], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([BM, HALF_D], gl.float32, o_layout)                             # O[:, :HALF], unnormalised
    s_zero = gl.zeros([BM, BLOCK_N], gl.float32, s_layout)
    n_tiles = gl.cdiv(N, BLOCK_N)

    mbarrier.wait(q_ready, 0)
    mbarrier.wait(k_ready.index(0), 0)
    s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)  # (BM, BLOCK_N), tile 0
    mbarrier.arrive(k_free.index(0), count=1)
    p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, N, qk_scale, Q_PRESCALED, s_layout)
    p = p.to(q_smem.dtype)
    _publish_p(p, alpha, 0, p_smem, alpha_smem, p_ready, p_free)
    for j in range(n_tiles - 1):
        cur = j % STAGES
        nxt = (j + 1) % STAGES
        mbarrier.wait(k_ready.index(nxt), ((j + 1) // STAGES) & 1)
        s_tok = warpgroup_mma(q_smem, k_smem.index(nxt).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v0_ready.index(cur), (j // STAGES) & 1)
        p_op = gl.convert_layout(p, p_layout)                      # registers the async P V reads until waited
        acc_tok = warpgroup_mma(p_op, v0_smem.index(cur), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=[s_tok])                    # S(j+1) done; P(j) V(j) may still run
        mbarrier.arrive(k_free.index(nxt), count=1)
        p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, N - (j + 1) * BLOCK_N, qk_scale, Q_PRESCALED, s_layout)
        p = p.to(q_smem.dtype)
        _publish_p(p, alpha, j + 1, p_smem, alpha_smem, p_ready, p_free)
        acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])    # p_op kept live: no reuse of its registers
        mbarrier.arrive(v0_free.index(cur), count=1)
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v0_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    acc = warpgroup_mma(gl.convert_layout(p, p_layout), v0_smem.index(last), acc)
    mbarrier.arrive(v0_free.index(last), count=1)

    _finish_first_half(acc, l_i, l_smem, l_ready, o_ptr, stride_om, M, off_m, o_layout)


@gluon.jit
def _pv_partition(bufs, bars, o_ptr, stride_om, M, N, off_m, PV: gl.constexpr, CGA: gl.constexpr,
                  V_ARM: gl.constexpr):
    """Warpgroup 1: O[:, HALF:] = sum over key tiles of alpha-rescaled P V[:, HALF:], P and alpha
    from warpgroup 0 through shared memory. CGA, V_ARM: as _softmax_partition's."""
    q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem = bufs
    q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready = bars
    BM: gl.constexpr = q_smem.shape[0]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    HALF_D: gl.constexpr = v1_smem.shape[2]
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HALF_D, 16], cga_layout=CGA)
    row_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
    acc = gl.zeros([BM, HALF_D], gl.float32, o_layout)                             # O[:, HALF:], unnormalised
    n_tiles = gl.cdiv(N, BLOCK_N)
    for j in range(n_tiles):
        buf = j % 2
        mbarrier.wait(p_ready.index(buf), (j // 2) & 1)
        alpha = alpha_smem.index(buf).load(row_layout)
        acc = acc * alpha[:, None]
        s_idx = j % STAGES
        mbarrier.wait(v1_ready.index(s_idx), (j // STAGES) & 1)
        if V_ARM > 0:
            mbarrier.expect(v1_ready.index(s_idx), V_ARM, j + STAGES < n_tiles)
        acc = PV(p_smem.index(buf), v1_smem.index(s_idx), acc)  # (BM, HALF)
        mbarrier.arrive(v1_free.index(s_idx), count=1)
        mbarrier.arrive(p_free.index(buf), count=1)
    mbarrier.wait(l_ready, 0)
    inv_l = l_smem.load(row_layout)
    _store_half(acc, inv_l, o_ptr, stride_om, M, off_m, HALF_D, o_layout)


@gluon.jit
def attn_d512_kernel(
    q_desc,                      # TMA descriptor over q (M, 512) of one (batch, head), block (BLOCK_M, 512)
    k_desc,                      # TMA descriptor over k (N, 512), block (BLOCK_N, 512)
    v_desc,                      # TMA descriptor over v (N, 512), block (BLOCK_N, 256): two loads per tile
    o_ptr,                       # out (M, 512) of the same (batch, head), row stride stride_om, unit column stride
    stride_om,                   # out row stride in elements
    M,                           # query rows
    N,                           # key rows
    qk_scale,                    # softmax scale * log2(e), fp32 (unused when Q_PRESCALED)
    Q_PRESCALED: gl.constexpr,   # q already holds q * scale * log2(e): scores need no multiply
    STAGES: gl.constexpr,        # K/V ring slots (1 at BLOCK_N 64: shared memory holds one K and one V tile)
    P_LAYOUT: gl.constexpr,      # shared layout of P (BLOCK_M, BLOCK_N): NVMMASharedLayout.get_default_for
    PV_REGS: gl.constexpr,       # registers per thread of warpgroup 1 after setmaxnreg
    QK: gl.constexpr,            # S = Q K^T of a tile: qk_product (benchmarks/attention_d512.py swaps it for ablations)
    PV: gl.constexpr,            # acc + P V of a tile: pv_product (likewise)
    PIPELINED: gl.constexpr,     # warpgroup 0 overlaps tile j+1's softmax with tile j's P V (async wgmma)
):
    """Grid: (cdiv(M, BLOCK_M),); num_warps=4 (warpgroup 0) plus workers of 4 (warpgroup 1) and 1
    (loads). Program i writes out rows i*BLOCK_M.. of one (batch, head)."""
    BM: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    off_m = gl.program_id(0) * BM

    q_smem = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v0_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    v1_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    p_smem = gl.allocate_shared_memory(dtype, [2, BM, BLOCK_N], P_LAYOUT)
    row_smem: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    alpha_smem = gl.allocate_shared_memory(gl.float32, [2, BM], row_smem)
    l_smem = gl.allocate_shared_memory(gl.float32, [BM], row_smem)

    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    l_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    mbarrier.init(q_ready, count=1)
    mbarrier.init(l_ready, count=1)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v0_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v0_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v1_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v1_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=1)
        mbarrier.init(v0_ready.index(i), count=1)
        mbarrier.init(v0_free.index(i), count=1)
        mbarrier.init(v1_ready.index(i), count=1)
        mbarrier.init(v1_free.index(i), count=1)
    p_ready = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)   # P and alpha: two slots
    p_free = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    for i in gl.static_range(2):
        mbarrier.init(p_ready.index(i), count=1)
        mbarrier.init(p_free.index(i), count=1)
    bufs = (q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem)
    bars = (q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready)

    if PIPELINED:
        gl.warp_specialize([
            (_softmax_partition_pipelined, (bufs, bars, o_ptr, stride_om, M, N, off_m, qk_scale, Q_PRESCALED)),
            (_pv_partition, (bufs, bars, o_ptr, stride_om, M, N, off_m, PV, [], 0)),
            (_load_partition, (q_desc, k_desc, v_desc, bufs, bars, off_m, N)),
        ], [4, 1], [PV_REGS, 24])
    else:
        gl.warp_specialize([
            (_softmax_partition, (bufs, bars, o_ptr, stride_om, M, N, off_m, qk_scale, Q_PRESCALED, QK, PV, [], 0, 0)),
            (_pv_partition, (bufs, bars, o_ptr, stride_om, M, N, off_m, PV, [], 0)),
            (_load_partition, (q_desc, k_desc, v_desc, bufs, bars, off_m, N)),
        ], [4, 1], [PV_REGS, 24])


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class D512Config:
    """One compiled variant. block_n: keys per tile; stages: K/V ring slots (shared memory: Q 64 KiB
    + stages x (K + V) of block_n x 512 + two P tiles; 64 x 1 takes 208 KiB, 32 x 2 takes 200 KiB,
    64 x 2 would take 336 KiB). pv_regs: registers per thread of warpgroup 1 after setmaxnreg
    (warpgroup 0 gets 3 x MAXNREG - pv_regs - 24, the load warp 24). pipelined: warpgroup 0
    issues S for tile j+1 and P V for tile j as async wgmma and overlaps tile j+1's softmax with
    that P V (_softmax_partition_pipelined; compiled, never run: PIPELINED_CONFIGS)."""
    block_n: int = 64
    stages: int = 1
    pv_regs: int = 232
    pipelined: bool = False


# 4 + 4 + 1 warps, allocated by warpgroup (12 warps): 12 * 32 * 168 <= 65,536 registers per SM.
MAXNREG = 168
NUM_WARPS = 4              # the default partition (warpgroup 0); the workers add 4 + 1
RUNTIME_CONFIG = D512Config()
RUNTIME_CONFIGS = [RUNTIME_CONFIG]                                      # what flash_attention_d512 launches
SWEEP_CONFIGS = [D512Config(64, 1), D512Config(32, 2), D512Config(32, 1)]  # all fit in shared memory
# Selectable, off by default, unvalidated (no GPU has run it): double-buffered 32-key K/V tiles with
# warpgroup 0 software-pipelined (async wgmma, wait depth 1). 64-key tiles with one slot spill on 3.9.
PIPELINED_CONFIGS = [D512Config(32, 2, pipelined=True)]
DTYPES = (torch.bfloat16, torch.float16)
SHARED_LIMIT = 232_448     # bytes of shared memory one block may use on an H100 / H200


def _gl_dtype(dtype: torch.dtype):
    return {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]


def _layouts(config: D512Config, dtype: torch.dtype) -> dict:
    """Block shapes and NVMMA shared layouts of Q, K, V (TMA boxes) and P."""
    g = _gl_dtype(dtype)
    blocks = {"q": [BLOCK_M, HEAD_DIM], "k": [config.block_n, HEAD_DIM], "v": [config.block_n, HALF],
              "p": [BLOCK_M, config.block_n]}
    return {name: (shape, gl.NVMMASharedLayout.get_default_for(shape, g)) for name, shape in blocks.items()}


PRODUCTS = (qk_product, pv_product)  # the kernel's two products; the benchmark's ablations replace one


def _constexprs(config: D512Config, dtype: torch.dtype, q_prescaled: bool = False, products=PRODUCTS) -> dict:
    if config.pipelined and tuple(products) != PRODUCTS:
        raise ValueError("the pipelined partition issues its products as async wgmma: it takes no replacements")
    return {"Q_PRESCALED": bool(q_prescaled), "STAGES": config.stages, "P_LAYOUT": _layouts(config, dtype)["p"][1],
            "PV_REGS": config.pv_regs, "QK": products[0], "PV": products[1], "PIPELINED": config.pipelined}


# ----------------------------------------------------------------------------- launcher
GLUON_INTERPRETED = ("triton was imported with TRITON_INTERPRET=1, which turns its standard library (the "
                     "reductions gl.max / gl.sum call) into interpreter functions that Gluon cannot compile; run "
                     "without it (python -m infgen.kernels.attention_d512 compiles in a fresh process)")


def gluon_interpreted() -> bool:
    """Whether triton's standard library (whose combine functions gl.max / gl.sum use) was
    decorated in interpreter mode, in which case no Gluon kernel compiles in this process."""
    import triton.language.standard as tl_standard
    return is_interpreted(getattr(tl_standard, "_elementwise_max", None))


def d512_unsupported_reason(q, k, v) -> str | None:
    """None when flash_attention_d512 runs these inputs, else why not (the backend's dispatch test;
    infgen.kernels.attention.flash_attention takes the rest). Probes the device only when asked."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return "q, k, v must be torch tensors"
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}: bfloat16 or float16 only, all alike"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.shape[-1] != HEAD_DIM:
        return f"needs (B, H, L, {HEAD_DIM}) inputs, got q {tuple(q.shape)}"
    if q.device.type != "cuda":
        return f"inputs are on {q.device}: the Gluon kernel needs a CUDA device"
    if gluon_interpreted():
        return GLUON_INTERPRETED
    cap = torch.cuda.get_device_capability(q.device)
    if cap != (9, 0):
        return f"needs an sm_90 GPU (H100/H200: wgmma, TMA, setmaxnreg); {q.device} is sm_{cap[0]}{cap[1]}"
    return None


def d512_applies(q, k, v) -> bool:
    return d512_unsupported_reason(q, k, v) is None


def _check(q, k, v):
    for t, n in ((q, "q"), (k, "k"), (v, "v")):
        check_float(t, n, q.dtype if n != "q" else None)
        if t.dim() != 4:
            raise ValueError(f"{n} must be 4-D (B, H, L, {HEAD_DIM}), got shape {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"{n} must have unit stride in its last (head) dim, got strides {t.stride()}")
    B, H, M, D = q.shape
    if D != HEAD_DIM:
        raise ValueError(f"head dim must be {HEAD_DIM} for this kernel, got {D}; use infgen.kernels.attention.flash_attention")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k must be (B={B}, H={H}, N, D={D}) to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}")
    if min(B, H, M, k.shape[2]) < 1:
        raise ValueError(f"empty attention: q {tuple(q.shape)}, k {tuple(k.shape)}")
    reason = d512_unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(f"flash_attention_d512 cannot run this: {reason}")


def _tma_rows(x: torch.Tensor) -> torch.Tensor:
    """x (L, 512) as TMA needs it: 16-byte aligned base and row stride, rows not overlapping.
    Strided views that qualify (a head of a packed (B, L, 3 * 512) QKV) pass without a copy."""
    if x.data_ptr() % 16 == 0 and x.stride(0) % 8 == 0 and x.stride(0) >= HEAD_DIM:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def flash_attention_d512(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                         out: torch.Tensor | None = None, config: D512Config | None = None, *,
                         q_prescaled: bool = False, products=PRODUCTS) -> torch.Tensor:
    """softmax(q k^T * scale) v for head dim 512 on an sm_90 GPU, fp32 softmax, output in q's dtype.

    q: (B, H, M, 512); k, v: (B, H, N, 512), bf16 or fp16, any strides with a unit last stride.
    scale defaults to 1/sqrt(512). Returns (B, H, M, 512): a view of a (B, M, H, 512) buffer, like
    infgen.kernels.attention.flash_attention, or `out` when given (same shape and dtype, unit last stride).
    config: a D512Config to override RUNTIME_CONFIG (benchmarks and ablations).
    q_prescaled: q already holds q * scale * log2(e) (the triton backend folds the factor into the
    query projection), so no score is multiplied; `scale` must then be None. As in
    infgen.kernels.attention.flash_attention. products: (Q K^T, P V) gluon functions, PRODUCTS
    (qk_product, pv_product) in use; benchmarks/attention_d512.py passes its ablations here."""
    out, qk_scale = prepare(q, k, v, scale, out, q_prescaled)
    cfg = config or RUNTIME_CONFIG
    launch_per_head(attn_d512_kernel, BLOCK_M, _layouts(cfg, q.dtype), _constexprs(cfg, q.dtype, q_prescaled, products),
                    q, k, v, out, qk_scale, num_warps=NUM_WARPS, maxnreg=MAXNREG)
    return out


def prepare(q, k, v, scale, out, q_prescaled: bool) -> tuple[torch.Tensor, float]:
    """The launchers' checks (flash_attention_d512's contract) -> (out, fp32 score factor in log2 units)."""
    if q_prescaled and scale is not None:
        raise ValueError(f"scale must be None when q_prescaled (q already carries the scale), got {scale!r}")
    _check(q, k, v)
    B, H, M, D = q.shape
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if out is None:
        out = torch.empty((B, M, H, D), device=q.device, dtype=q.dtype).transpose(1, 2)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device} with unit "
                         f"last stride, got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out, (1.0 if q_prescaled else float(scale) * LOG2E)


def launch_per_head(kernel, rows_per_program: int, layouts: dict, consts: dict, q, k, v, out, qk_scale: float,
                    **options) -> None:
    """One launch per (batch, head): TMA descriptors over that head's q, k, v rows, a grid of
    cdiv(M, rows_per_program) programs (clusters, for a multi-CTA kernel)."""
    B, H, M, _ = q.shape
    N = k.shape[2]
    grid = (triton.cdiv(M, rows_per_program),)
    with torch.cuda.device(q.device):
        for b in range(B):
            for h in range(H):
                qd, kd, vd = (TensorDescriptor.from_tensor(_tma_rows(t[b, h]), *layouts[n])
                              for t, n in ((q, "q"), (k, "k"), (v, "v")))
                o = out[b, h]  # (M, 512)
                kernel[grid](qd, kd, vd, o, o.stride(0), M, N, qk_scale, **consts, **options)


# ----------------------------------------------------------------------------- compile without a GPU
def compile_d512(config: D512Config = RUNTIME_CONFIG, dtype: torch.dtype = torch.bfloat16, target=None,
                 q_prescaled: bool = False):
    """Compile attn_d512_kernel for `target` (default sm_90a) on any machine, GPU or not. Returns
    triton's CompiledKernel: .asm["ttgir"], ["ptx"], ["cubin"]; .metadata.shared (bytes).
    The signature is spelled by the JIT's own mangle_type on placeholder (CPU) arguments; pointer
    and row stride get the 16-divisibility the JIT gives them at real call sites (out rows of 512
    elements); M and N stay unspecialised (any length). q_prescaled: the variant the triton backend
    launches (flash_attention_d512(..., q_prescaled=True))."""
    from triton.runtime.jit import mangle_type

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
    if gluon_interpreted():
        raise RuntimeError(GLUON_INTERPRETED)
    lay = _layouts(config, dtype)
    placeholder = {n: TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), shape, layout)
                   for n, (shape, layout) in lay.items() if n != "p"}
    consts = _constexprs(config, dtype, q_prescaled)
    signature = {"q_desc": mangle_type(placeholder["q"]), "k_desc": mangle_type(placeholder["k"]),
                 "v_desc": mangle_type(placeholder["v"]), "o_ptr": mangle_type(torch.empty(1, dtype=dtype)),
                 "stride_om": "i32", "M": "i32", "N": "i32", "qk_scale": "fp32", **{n: "constexpr" for n in consts}}
    return compile_kernel(attn_d512_kernel, signature, consts, divisible_by_16(signature, ("o_ptr", "stride_om")),
                          target, {"num_warps": NUM_WARPS, "maxnreg": MAXNREG})


# ----------------------------------------------------------------------------- static checks
def resources(compiled) -> dict:
    """Registers per thread (launch value), spill stack and spill stores/loads in SASS, shared
    memory (dynamic + static) against SHARED_LIMIT, and the HGMMA instructions by shape."""
    import collections
    import re

    usage = resource_usage(compiled)
    sass = cuobjdump(compiled, "--dump-sass")
    reg, stack, static_shared = usage["reg"], usage["stack"], usage["shared"]
    shared = compiled.metadata.shared + static_shared  # counted together: the conservative reading
    return {"registers": reg, "stack_bytes": stack, "spill_stores": len(re.findall(r"\bSTL\b", sass)),
            "spill_loads": len(re.findall(r"\bLDL\b", sass)), "shared_dynamic": compiled.metadata.shared,
            "shared_static": static_shared, "shared_bytes": shared, "fits_shared": shared <= SHARED_LIMIT,
            "hgmma": dict(collections.Counter(re.findall(r"HGMMA\.(\d+x\d+x\d+)", sass))), "sass": sass}


def score_work(ttgir: str, sass: str, block_m: int, block_n: int, head_dim: int = HEAD_DIM) -> dict:
    """How many times a kernel computes each score, read from its TTGIR and SASS (any Hopper
    attention kernel, this one or the tl.dot one). The score dots are the warpgroup dots whose
    result is (block_m, block_n). For each, the warps of the region it runs in and its layout's
    warpsPerCTA give the replication: warps stacked past the block's rows (16 per warp) or columns
    repeat the same product (rows split over a cluster's CTAs, CGALayout, count per CTA). Returns the dots, the replication (1 = each score once), the
    warpgroups that issue them, and the SASS count of HGMMA instructions of their shape."""
    import re

    module_warps = int(re.search(r'"ttg.num-warps" = (\d+)', ttgir).group(1))
    mma = {}  # name -> (warps on rows, warps on columns, instruction N, CTAs splitting the rows)
    for m in re.finditer(r"^(#mma\d*) = #ttg.nvidia_mma<\{versionMajor = 3, versionMinor = \d+, "
                         r"warpsPerCTA = \[(\d+), (\d+)\],(?: CGALayout = (\[[^]]*\]\]),)? "
                         r"instrShape = \[(\d+), (\d+), (\d+)\]", ttgir, re.M):
        row_splits = 2 ** sum(1 for b in re.findall(r"\[(\d+), \d+\]", m.group(4) or "") if int(b))
        mma[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(6)), row_splits)
    warps, dots = module_warps, []
    for line in ttgir.splitlines():
        part = re.match(r"\s*partition\d+\(.*num_warps\((\d+)\)", line)
        if part:
            warps = int(part.group(1))
        res = re.search(r"ttng\.warp_group_dot .*-> tensor<(\d+)x(\d+)xf32, (#mma\d*)>", line)
        if res and (int(res.group(1)), int(res.group(2))) == (block_m, block_n):
            wm, wn, instr_n, ctas = mma[res.group(3)]  # a multi-CTA dot: each CTA has block_m / ctas rows
            rep = max(1, wm * 16 * ctas // block_m) * max(1, wn * instr_n // block_n)
            dots.append({"region_warps": warps, "warps_per_cta": [wm, wn], "instr_n": instr_n, "replication": rep})
    if not dots:
        raise ValueError(f"no warpgroup dot with a {block_m}x{block_n} result in this TTGIR")
    shapes = {f"64x{d['instr_n']}x16" for d in dots}
    return {"score_dots": len(dots), "replication": max(d["replication"] for d in dots),
            "issuing_warpgroups": max(d["region_warps"] // 4 for d in dots), "dots": dots,
            "sass_score_hgmma": {s: len(re.findall(rf"HGMMA\.{s}\.", sass)) for s in shapes},
            "min_score_hgmma_per_tile": {s: head_dim // 16 * block_n // int(s.split("x")[1]) for s in shapes}}


def static_checks(config: D512Config = RUNTIME_CONFIG, dtype: torch.dtype = torch.bfloat16, target=None,
                  q_prescaled: bool = False) -> dict:
    """The compile report's row for one configuration: compile_d512 + resources + score_work, and
    the register counts the partitions switch to (setmaxnreg in the PTX)."""
    import re

    compiled = compile_d512(config, dtype, target, q_prescaled)
    row = resources(compiled)
    row["setmaxnreg"] = sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)",
                                                             compiled.asm["ptx"])})
    sass = row.pop("sass")
    row["scores"] = score_work(compiled.asm["ttgir"], sass, BLOCK_M, config.block_n)
    waits = re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", compiled.asm["ptx"])
    row["wgmma_wait_depths"] = sorted({int(n) for n in waits})  # 1: a wgmma group left running past a wait
    return row


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    """python -m infgen.kernels.attention_d512 [--configs runtime sweep pipelined] [--dtypes bf16 fp16] [--json]
    Compiles each configuration for sm_90a (no GPU needed) and prints its static checks. The runtime
    set is compiled as the triton backend launches it (q_prescaled); the others with unscaled queries."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m infgen.kernels.attention_d512", description=main.__doc__)
    p.add_argument("--configs", nargs="+", choices=["runtime", "sweep", "pipelined"], default=["runtime"])
    p.add_argument("--dtypes", nargs="+", choices=["bf16", "fp16"], default=["bf16", "fp16"])
    p.add_argument("--json", action="store_true", help="one JSON list on stdout instead of a table")
    a = p.parse_args(argv)
    sets = {"runtime": RUNTIME_CONFIGS, "sweep": SWEEP_CONFIGS, "pipelined": PIPELINED_CONFIGS}
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    rows = []
    for cfg, kind in [(c, kind) for kind in a.configs for c in sets[kind]]:
        for name in a.dtypes:
            row = {"set": kind, "config": cfg.__dict__, "dtype": name, "triton": triton.__version__,
                   "q_prescaled": kind == "runtime"}
            try:
                row.update(static_checks(cfg, dtypes[name], q_prescaled=kind == "runtime"))
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile is a row
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            rows.append(row)
    if a.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        c = r["config"]
        ablation = " pipelined" if c["pipelined"] else ""
        head = f"{r['set']}: block_n {c['block_n']} stages {c['stages']}{ablation} {r['dtype']}"
        if "error" in r:
            print(f"{head}: {r['error']}")
            continue
        sc = r["scores"]
        once = "n/a" if sc is None else f"replication {sc['replication']}, {sc['sass_score_hgmma']} per tile"
        print(f"{head}: {r['registers']} regs, stack {r['stack_bytes']} B, {r['spill_stores']} spill stores, "
              f"shared {r['shared_bytes']} B (fits {r['fits_shared']}), HGMMA {r['hgmma']}, scores: {once}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
