"""Head-dim-512 flash attention over a 2-CTA cluster that shares each K/V tile (TMA multicast).

The scores-once kernel (kernels/attention_d512.py) gives each 64-row query block its own CTA, and
each CTA streams all of K and V through L2: 64 FLOP per L2 byte at bf16, an L2 bound near
350 TFLOP/s on an H100 (kernels/roofline.py). Here two CTAs of one cluster take 128 query rows,
64 each, with the same per-CTA work as that kernel (its own consumer partitions, _softmax_partition
and _pv_partition, on rows split over the pair; a load warp of the cluster's own), and every K and V tile leaves
L2 once per cluster: the lead CTA's load warp issues one multicast TMA copy that lands in both
CTAs' shared memory. 128 FLOP per L2 byte: the bound moves to the shared-memory port (~700
TFLOP/s estimated; `python benchmarks/compile_report.py` prints it beside the single-CTA kernel).

Synchronisation across the pair, in Gluon's multi-CTA model (triton >= 3.9, tutorial 14-multicta):
- a slot's "free" barriers are cluster barriers (one per slot, in the lead CTA): each CTA's
  consumer arrives there when it has read the slot, and the lead's load warp waits for both
  arrivals before its multicast overwrites the slot in both CTAs (the other CTA's load warp
  issues no K/V copies: Gluon predicates broadcast loads to the lead);
- a slot's "ready" barriers stay per CTA. The multicast completes its bytes on the barrier at the
  same offset in each destination CTA, so each CTA must arm its own barrier: the consumer that
  waits on a slot arms it for the slot's next tile right after the wait (the load warp of the
  other CTA cannot: it never waits, so it would run ahead of the phases). The first STAGES tiles
  are armed before the partitions start.
- Q is split by rows (each CTA loads its own 64 rows), P, alpha and the row sums stay in each CTA.

Compiled for sm_90a here (no GPU): `compile_d512_cluster`, checked by the compile report (0
spills, HGMMA, the multicast copy in the PTX, shared memory per CTA). It has never run: triton
3.6 (the GPU image) has no multicast TMA in Gluon, so the runtime keeps launching the single-CTA
kernel; `flash_attention_d512_cluster` is the launcher for triton >= 3.9, selectable for
benchmarks, never chosen by the backend.
"""
from __future__ import annotations

import inspect

import torch
import triton

from .attention_d512 import (BLOCK_M, DTYPES, GLUON_INTERPRETED, HALF, HEAD_DIM, MAXNREG, NUM_WARPS, D512Config,
                             TensorDescriptor, _gl_dtype, _pv_partition, _softmax_partition, gl, gluon,
                             gluon_interpreted, launch_per_head, mbarrier, prepare, pv_product, qk_product, tma)
from .toolchain import compile_kernel, divisible_by_16

CLUSTER = 2                      # CTAs per cluster: query rows per program = CLUSTER * BLOCK_M
CLUSTER_M = CLUSTER * BLOCK_M
# Gluon's multicast TMA (tma.async_load(..., multicast=True)) arrived after triton 3.6.
HAS_MULTICAST = "multicast" in inspect.signature(getattr(tma, "async_load", lambda *a: None)).parameters
NO_MULTICAST = (f"this triton ({triton.__version__}) has no multicast TMA in Gluon (triton >= 3.9 has it); "
                "use infgen.kernels.attention_d512.flash_attention_d512")


@gluon.jit
def _cluster_load_partition(q_desc, k_desc, v_desc, bufs, bars, off_m, N):
    """Load warp. Q: each CTA its own 64 rows. Per key tile (lead CTA only, by Gluon's predication
    of broadcast copies): wait until both CTAs released the slot, then multicast K, V[:, :256] and
    V[:, 256:] into it. The ready barriers are armed by their consumers."""
    q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem = bufs
    q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready = bars
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    HALF_D: gl.constexpr = v0_smem.shape[2]
    mbarrier.expect(q_ready, q_desc.nbytes_per_cta)
    tma.async_load(q_desc, [off_m, 0], q_ready, q_smem)
    for j in range(gl.cdiv(N, BLOCK_N)):
        s = j % STAGES
        free_phase = ((j // STAGES) & 1) ^ 1
        start_n = j * BLOCK_N
        mbarrier.wait(k_free.index(s), free_phase)
        tma.async_load(k_desc, [start_n, 0], k_ready.index(s), k_smem.index(s), multicast=True)
        mbarrier.wait(v0_free.index(s), free_phase)
        tma.async_load(v_desc, [start_n, 0], v0_ready.index(s), v0_smem.index(s), multicast=True)
        mbarrier.wait(v1_free.index(s), free_phase)
        tma.async_load(v_desc, [start_n, HALF_D], v1_ready.index(s), v1_smem.index(s), multicast=True)


@gluon.jit
def attn_d512_cluster_kernel(
    q_desc,                      # TMA descriptor over q (M, 512), block (128, 512) split by rows over the pair
    k_desc,                      # over k (N, 512), block (BLOCK_N, 512), broadcast to both CTAs
    v_desc,                      # over v (N, 512), block (BLOCK_N, 256), broadcast: two copies per tile
    o_ptr, stride_om, M, N, qk_scale,
    Q_PRESCALED: gl.constexpr,
    STAGES: gl.constexpr,        # K/V ring slots
    P_LAYOUT: gl.constexpr,      # shared layout of P (128, BLOCK_N), split by rows
    ROW_LAYOUT: gl.constexpr,    # shared layout of the per-row alpha and 1/l, split by rows
    CGA: gl.constexpr,           # the register tensors' CTA split: rows over the pair ([[1, 0]])
    PV_REGS: gl.constexpr,
):
    """Grid: (cdiv(M, 128),) clusters of 2 CTAs (num_ctas=2); per CTA 4 warps (warpgroup 0) plus
    workers of 4 (warpgroup 1) and 1 (loads). Cluster i writes out rows i*128.. of one (batch, head)."""
    BM: gl.constexpr = q_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    dtype: gl.constexpr = q_desc.dtype
    K_BYTES: gl.constexpr = k_desc.nbytes_per_cta
    V_BYTES: gl.constexpr = v_desc.nbytes_per_cta
    off_m = gl.program_id(0) * BM
    n_tiles = gl.cdiv(N, BLOCK_N)

    q_smem = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v0_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    v1_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    p_smem = gl.allocate_shared_memory(dtype, [2, BM, BLOCK_N], P_LAYOUT)
    alpha_smem = gl.allocate_shared_memory(gl.float32, [2, BM], ROW_LAYOUT)
    l_smem = gl.allocate_shared_memory(gl.float32, [BM], ROW_LAYOUT)

    # Per-CTA barriers (one per CTA: allocate_mbarrier) and the slots' cluster "free" barriers.
    pair: gl.constexpr = mbarrier.MBarrierLayout(cga_layout=[[0]])
    q_ready = mbarrier.allocate_mbarrier()
    l_ready = mbarrier.allocate_mbarrier()
    mbarrier.init(q_ready, count=1)
    mbarrier.init(l_ready, count=1)
    k_ready = mbarrier.allocate_mbarrier(batch=STAGES)
    v0_ready = mbarrier.allocate_mbarrier(batch=STAGES)
    v1_ready = mbarrier.allocate_mbarrier(batch=STAGES)
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], pair)
    v0_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], pair)
    v1_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], pair)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v0_ready.index(i), count=1)
        mbarrier.init(v1_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=1)     # times the 2 CTAs of the group: both must release
        mbarrier.init(v0_free.index(i), count=1)
        mbarrier.init(v1_free.index(i), count=1)
    p_ready = mbarrier.allocate_mbarrier(batch=2)
    p_free = mbarrier.allocate_mbarrier(batch=2)
    for i in gl.static_range(2):
        mbarrier.init(p_ready.index(i), count=1)
        mbarrier.init(p_free.index(i), count=1)
    for i in gl.static_range(STAGES):                # arm the first STAGES tiles in this CTA
        mbarrier.expect(k_ready.index(i), K_BYTES, pred=i < n_tiles)
        mbarrier.expect(v0_ready.index(i), V_BYTES, pred=i < n_tiles)
        mbarrier.expect(v1_ready.index(i), V_BYTES, pred=i < n_tiles)
    bufs = (q_smem, k_smem, v0_smem, v1_smem, p_smem, alpha_smem, l_smem)
    bars = (q_ready, k_ready, k_free, v0_ready, v0_free, v1_ready, v1_free, p_ready, p_free, l_ready)

    gl.warp_specialize([  # the single-CTA kernel's consumers, on split rows, arming their ready barriers
        (_softmax_partition, (bufs, bars, o_ptr, stride_om, M, N, off_m, qk_scale, Q_PRESCALED, qk_product,
                              pv_product, CGA, K_BYTES, V_BYTES)),
        (_pv_partition, (bufs, bars, o_ptr, stride_om, M, N, off_m, pv_product, CGA, V_BYTES)),
        (_cluster_load_partition, (q_desc, k_desc, v_desc, bufs, bars, off_m, N)),
    ], [4, 1], [PV_REGS, 24])


# ----------------------------------------------------------------------------- configuration
RUNTIME_CONFIG = D512Config(block_n=64, stages=1)   # per CTA the single-CTA kernel's 208 KiB
ROWS = [[1, 0]]        # split rows over the pair
BROADCAST = [[0, 0]]   # both CTAs hold the whole tile


def _layouts(config: D512Config, dtype: torch.dtype) -> dict:
    """Block shapes and multi-CTA NVMMA shared layouts of Q (rows split), K and V (broadcast), P."""
    g = _gl_dtype(dtype)
    blocks = {"q": ([CLUSTER_M, HEAD_DIM], ROWS), "k": ([config.block_n, HEAD_DIM], BROADCAST),
              "v": ([config.block_n, HALF], BROADCAST), "p": ([CLUSTER_M, config.block_n], ROWS)}
    return {name: (shape, gl.NVMMASharedLayout.get_default_for(shape, g, cga_layout=cga))
            for name, (shape, cga) in blocks.items()}


def _constexprs(config: D512Config, dtype: torch.dtype, q_prescaled: bool) -> dict:
    if config.pipelined:
        raise ValueError(f"the cluster kernel has no pipelined variant, got {config}")
    return {"Q_PRESCALED": bool(q_prescaled), "STAGES": config.stages, "P_LAYOUT": _layouts(config, dtype)["p"][1],
            "ROW_LAYOUT": gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0], cga_layout=[[1]]),
            "CGA": ROWS, "PV_REGS": config.pv_regs}


def compile_d512_cluster(config: D512Config = RUNTIME_CONFIG, dtype: torch.dtype = torch.bfloat16, target=None,
                         q_prescaled: bool = False):
    """Compile attn_d512_cluster_kernel for `target` (default sm_90a) without a GPU: num_ctas=2.
    Raises RuntimeError where this triton has no multicast TMA in Gluon (3.6)."""
    from triton.runtime.jit import mangle_type

    if not HAS_MULTICAST:
        raise RuntimeError(NO_MULTICAST)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
    consts = _constexprs(config, dtype, q_prescaled)
    if gluon_interpreted():
        raise RuntimeError(GLUON_INTERPRETED)
    lay = _layouts(config, dtype)
    placeholder = {n: TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), shape, layout)
                   for n, (shape, layout) in lay.items() if n != "p"}
    signature = {"q_desc": mangle_type(placeholder["q"]), "k_desc": mangle_type(placeholder["k"]),
                 "v_desc": mangle_type(placeholder["v"]), "o_ptr": mangle_type(torch.empty(1, dtype=dtype)),
                 "stride_om": "i32", "M": "i32", "N": "i32", "qk_scale": "fp32", **{n: "constexpr" for n in consts}}
    return compile_kernel(attn_d512_cluster_kernel, signature, consts,
                          divisible_by_16(signature, ("o_ptr", "stride_om")), target,
                          {"num_warps": NUM_WARPS, "num_ctas": CLUSTER, "maxnreg": MAXNREG})


def flash_attention_d512_cluster(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                                 out: torch.Tensor | None = None, config: D512Config | None = None, *,
                                 q_prescaled: bool = False) -> torch.Tensor:
    """infgen.kernels.attention_d512.flash_attention_d512's contract, on 2-CTA clusters (triton >= 3.9,
    sm_90). Never run on a GPU yet: benchmarks select it; the backend does not."""
    if not HAS_MULTICAST:
        raise RuntimeError(NO_MULTICAST)
    out, qk_scale = prepare(q, k, v, scale, out, q_prescaled)
    cfg = config or RUNTIME_CONFIG
    launch_per_head(attn_d512_cluster_kernel, CLUSTER_M, _layouts(cfg, q.dtype), _constexprs(cfg, q.dtype, q_prescaled),
                    q, k, v, out, qk_scale, num_warps=NUM_WARPS, num_ctas=CLUSTER, maxnreg=MAXNREG)
    return out


def static_checks(config: D512Config = RUNTIME_CONFIG, dtype: torch.dtype = torch.bfloat16, target=None,
                  q_prescaled: bool = True) -> dict:
    """What the compile shows of the cluster protocol, beside attention_d512.resources' row:
    cluster size from the PTX (.reqnctapercluster), the multicast K/V copies (boxes of 64 columns:
    8 for K, 4 for each V half, 16 per tile, issued by the lead CTA only), the remote arrivals on the lead's free
    barriers (shared::cluster), the per-CTA arming (expect_tx) and the scores' replication."""
    import re

    from .attention_d512 import resources, score_work

    compiled = compile_d512_cluster(config, dtype, target, q_prescaled)
    ptx = compiled.asm["ptx"]
    row = resources(compiled)
    sass = row.pop("sass")
    cluster = re.search(r"\.reqnctapercluster\s+(\d+)", ptx)
    row.update({
        "config": config.__dict__, "dtype": str(dtype).removeprefix("torch."), "q_prescaled": q_prescaled,
        "cluster_ctas": int(cluster.group(1)) if cluster else 1,
        "multicast_copies": len(re.findall(r"cp\.async\.bulk\.tensor\.\w+\.shared::cluster\.global\S*multicast::cluster", ptx)),
        "remote_arrivals": len(re.findall(r"mbarrier\.arrive\.shared::cluster", ptx)),
        "arming": len(re.findall(r"mbarrier\.arrive\.expect_tx", ptx)),
        "scores": score_work(compiled.asm["ttgir"], sass, CLUSTER_M, config.block_n),
        "setmaxnreg": sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)}),
    })
    return row


if __name__ == "__main__":  # python -m infgen.kernels.attention_d512_cluster: the static checks as JSON
    import json
    import sys

    if not HAS_MULTICAST:
        sys.exit(f"error: {NO_MULTICAST}")
    print(json.dumps([static_checks(RUNTIME_CONFIG, dt) for dt in DTYPES], indent=1))
