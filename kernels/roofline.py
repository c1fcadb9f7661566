"""Bytes per FLOP and the bound that follows, for a flash-attention tiling on an H100 (no GPU needed).

The compile report (benchmarks/compile_report.py) gives each attention row these numbers, so a design is
judged here before a GPU times it. Every figure below is an estimate from byte and FLOP counts;
nothing in this module was measured.

Per (batch, head): M queries, N keys, head dim D, b bytes per element, query blocks of BLOCK_M rows
(one CTA each), key tiles of BLOCK_N, `cluster` CTAs sharing each K/V tile (TMA multicast: one L2
read feeds all of them).

- FLOPs (useful): 4 M N D (Q K^T and P V, 2 per multiply-add). The tensor cores execute
  (1 + score_replication) / 2 times that: a kernel that computes each score twice does 1.5x.
- L2 -> SM bytes: Q read and O written once per query block; K and V streamed once per cluster
  of query blocks: ceil(blocks / cluster) * tiles * 2 BLOCK_N D b. K/V dominate:
  FLOP per L2 byte -> 2 BLOCK_M cluster / b (64 at BLOCK_M 64, bf16, no cluster).
- HBM bytes: Q, O once; K and V once if they fit in L2, else once per wave of resident CTAs
  (the CTAs of a wave walk the keys in the same order, so a tile leaves HBM once per wave).
- Shared-memory bytes, per CTA per key tile: wgmma operand reads (Q K^T reads, per 64-row slice of
  scores computed, the Q slice once per instruction column block of `score_instr_n` keys and the
  K tile once; P V reads V once per 64-row slice, P from shared memory by `p_smem_readers`
  warpgroups and written once for them), plus the TMA/cp.async writes of K and V (each CTA's
  copy, multicast or not). Reads and writes are counted against the same 128 B/cycle port.

The bound is min over the four of (their bandwidth / bytes per FLOP), with the tensor cores at
their dense peak over the executed FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hardware:
    """Peak rates of one GPU. Defaults: H100 SXM5.

    tensor_flops: dense bf16/fp16 wgmma peak, 989.4 TFLOP/s (NVIDIA H100 SXM datasheet; 132 SMs x
    4,096 FLOP/cycle x 1.83 GHz). design.md's floor uses 790 TFLOP/s, a bf16 matmul measured on
    the lent H100: the bound here is an upper limit, not a forecast.
    l2_bytes_s: L2 -> SM bandwidth, 5.5 TB/s, the low end of the 5.5-7 TB/s design.md assumes
    (microbenchmarks, not a datasheet figure). hbm_bytes_s: 3.35 TB/s (datasheet).
    smem_bytes_cycle: shared-memory bandwidth per SM per cycle (128 B: 32 banks x 4 B), at the
    same clock as the tensor peak: 30.9 TB/s over 132 SMs. l2_size: 50 MiB."""
    name: str = "H100 SXM"
    sms: int = 132
    clock_hz: float = 1.83e9
    tensor_flop_cycle_sm: int = 4096
    l2_bytes_s: float = 5.5e12
    hbm_bytes_s: float = 3.35e12
    smem_bytes_cycle: int = 128
    l2_size: int = 50 * 2**20
    tensor_flops: float = field(init=False)
    smem_bytes_s: float = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "tensor_flops", self.sms * self.tensor_flop_cycle_sm * self.clock_hz)
        object.__setattr__(self, "smem_bytes_s", self.sms * self.smem_bytes_cycle * self.clock_hz)


H100 = Hardware()


@dataclass(frozen=True)
class AttentionTiling:
    """How an attention kernel tiles the work (see the module docstring for what each term costs).

    block_m: query rows per CTA; block_n: keys per step; head_dim; dtype_bytes (2: bf16/fp16);
    cluster: CTAs sharing each K/V tile through TMA multicast (1: none); score_replication: times
    each score is computed (2 for the tl.dot kernel at d512, read by score_work from its TTGIR;
    None: fill in from the compile); score_instr_n: the N of the Q K^T wgmma instruction (Q is
    re-read from shared memory once per instruction; None: block_n); p_smem_readers: warpgroups
    that take P from shared memory (the scores-once kernel's warpgroup 1); ctas_per_sm: resident
    CTAs per SM (for HBM waves)."""
    block_m: int
    block_n: int
    head_dim: int = 512
    dtype_bytes: int = 2
    cluster: int = 1
    score_replication: int | None = 1
    score_instr_n: int | None = None
    p_smem_readers: int = 0
    ctas_per_sm: int = 1

    def __post_init__(self):
        for name in ("block_m", "block_n", "head_dim", "dtype_bytes", "cluster", "ctas_per_sm"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.block_m % 64 and self.block_m not in (16, 32):
            raise ValueError(f"block_m must be 16, 32 or a multiple of 64 (wgmma rows), got {self.block_m}")


def smem_bytes_per_tile(t: AttentionTiling) -> int:
    """Shared-memory bytes one CTA moves per key tile: wgmma operand reads + K/V writes + P."""
    b, D, BN = t.dtype_bytes, t.head_dim, t.block_n
    rep = t.score_replication or 1
    slices = max(1, t.block_m // 64)                       # 64-row wgmma slices of the query block
    instr_n = t.score_instr_n or BN
    q_reads = slices * rep * 64 * D * b * math.ceil(BN / instr_n)
    k_reads = slices * rep * BN * D * b
    v_reads = slices * BN * D * b
    p_bytes = slices * 2 * t.p_smem_readers * 64 * BN * b if t.p_smem_readers else 0  # write + read per reader
    kv_writes = 2 * BN * D * b
    return q_reads + k_reads + v_reads + p_bytes + kv_writes


def attention_roofline(t: AttentionTiling, M: int, N: int | None = None, hw: Hardware = H100) -> dict:
    """FLOPs, bytes per level, FLOP per byte and the bound (TFLOP/s of useful work) of one
    (batch, head) of attention with M queries and N keys (default N = M: self-attention)."""
    N = M if N is None else N
    if M < 1 or N < 1:
        raise ValueError(f"M and N must be >= 1, got M={M}, N={N}")
    b, D = t.dtype_bytes, t.head_dim
    rep = t.score_replication or 1
    blocks, tiles = math.ceil(M / t.block_m), math.ceil(N / t.block_n)
    flops = 4 * M * N * D
    executed = 2 * M * N * D * (rep + 1)
    kv = 2 * N * D * b
    l2 = 2 * blocks * t.block_m * D * b + math.ceil(blocks / t.cluster) * tiles * 2 * t.block_n * D * b
    waves = math.ceil(blocks / (hw.sms * t.ctas_per_sm))
    hbm = 2 * M * D * b + (kv if kv <= hw.l2_size else waves * kv)
    smem = blocks * tiles * smem_bytes_per_tile(t)
    times = {"tensor core": executed / hw.tensor_flops, "shared memory": smem / hw.smem_bytes_s,
             "L2": l2 / hw.l2_bytes_s, "HBM": hbm / hw.hbm_bytes_s}
    limit = max(times, key=times.get)
    return {"flops": flops, "executed_flops": executed, "l2_bytes": l2, "hbm_bytes": hbm, "smem_bytes": smem,
            "flop_per_l2_byte": flops / l2, "flop_per_hbm_byte": flops / hbm, "smem_bytes_per_flop": smem / flops,
            "tflops_by": {k: flops / v / 1e12 for k, v in times.items()},
            "bound_tflops": flops / times[limit] / 1e12, "limit": limit, "M": M, "N": N,
            "hardware": hw.name}
