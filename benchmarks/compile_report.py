"""The sm_90a compile report: every kernel configuration the runtime, the benchmark sweeps and the
launch options can run, compiled for Hopper (H100) on a machine without a GPU.

  python benchmarks/compile_report.py [--out-dir DIR] [--jobs N] [--used-by runtime] [--check]
  python benchmarks/compile_report.py --compare A/compile_report.json B/compile_report.json   # side by side

Each entry is compiled for sm_90a through infgen.kernels.toolchain (`compile_kernel`: the one
compile-and-inspect module, shared with the native AOT build and the TensorRT plugin) from the same `Launch` the launcher would run (infgen.kernels.common.Launch), built on meta tensors shaped
like the real call sites, with the signature and `tt.divisibility` 16 attributes Triton's JIT
gives those arguments (`jit_signature`). The cubin is read back with the `cuobjdump` inside the
triton wheel (toolchain.resource_usage, sass_ops), and ptxas -v's log (each entry is compiled afresh, not from Triton's cache, to get
it): registers, stack, spill store/load bytes, shared memory against the 232,448 B an H100 block
may use, HGMMA (wgmma) vs HMMA (mma.sync) vs neither (FMA dots), cp.async (LDGSTS) and TMA
(UTMALDG/UBLKCP), and blocks per SM. A configuration that fails to compile or to fit is a row
saying why. Writes DIR/compile_report.json and DIR/compile_report.md. `--check` exits 1 unless
every runtime and plugin entry compiles, fits, has no spill stores and (attention) uses HGMMA,
and every sweep entry compiles and fits.

Adding a kernel = adding `Entry` objects to `entries()`: an entry only needs a zero-argument
`compile` callable returning Triton's compiled kernel (a `tl` kernel through `compile_launch`, any
kernel through toolchain.compile_kernel) or any object with `.asm["cubin"]` (bytes) and
`.metadata.shared` / `.metadata.num_warps` / `.metadata.name`, e.g.
`Entry("attn_d512", "mid-block attention", "64x512 w12", "bf16", ("runtime",),
functools.partial(compile_d512, cfg, torch.bfloat16), expect_hgmma=True)`.

Nothing here runs a kernel: timings belong to benchmarks/kernels.py on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from infgen.kernels.attention import SWEEP_CONFIGS, attention_launch, pick_config, uses_kernel
from infgen.kernels.common import Launch
from infgen.kernels.inpe import inpe_launch
from infgen.kernels.roofline import H100, AttentionTiling, attention_roofline
from infgen.kernels.toolchain import compile_kernel, cuobjdump, refuse_interpreted, resource_usage, sass_ops, sm90_target

# H100 SXM (sm_90): per-block and per-SM limits.
SHARED_PER_BLOCK = 232_448     # bytes a block may use (227 KiB)
SHARED_PER_SM = 233_472        # 228 KiB
SHARED_RESERVED = 1_024        # the system's share per resident block
REGS_PER_SM = 65_536
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
MAX_REGS = 255
CUDA = torch.device("cuda")
TRT_SHARED_LIMIT = 49_152      # dynamic shared memory of a launch that does not opt in (TensorRT's AOT plugins)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# runtime: launched by the backends/launchers; sweep: by benchmarks/kernels.py; plugin: by the
# TensorRT plugin; option: a launcher option the runtime does not use (none at present); rejected: considered
# and not launched (kept to show why; compiled only when asked for: --used-by rejected).
USED_BY = ("runtime", "sweep", "plugin", "option", "rejected")
DEFAULT_USED_BY = ("runtime", "sweep", "plugin", "option")

# Shapes of the call sites: a 1920x1080 decode (token grid 135 x 240 = 32,400 tokens; 64 x 64 latent
# = 4,096 tokens). Only divisibility by 16 reaches the compiled code, and these are multiples of 16.
TOKENS, LATENT_TOKENS = 135 * 240, 64 * 64
# The attention rows' byte/FLOP accounting (roofline.py) is taken at the issue's target size: one
# head of 65,536 tokens (a 2048^2 image's mid block), self-attention.
ROOFLINE_TOKENS = 65_536


@dataclass(frozen=True)
class Entry:
    kernel: str                          # kernel name as the table shows it
    site: str                            # where it is launched, e.g. "cross-attention, paper"
    config: str                          # the tile / options, e.g. "128x64 w4 s3"
    dtype: str                           # fp32 | bf16 | fp16
    used_by: tuple[str, ...]             # a subset of USED_BY
    compile: Callable[[], object] = field(repr=False, compare=False)
    expect_hgmma: bool = False           # a check: tensor-core dots must use wgmma
    tiling: AttentionTiling | None = field(default=None, compare=False)  # attention: bytes/FLOP and bound (roofline)


# ----------------------------------------------------------------------------- compiling
def jit_type(value) -> tuple[str, bool]:
    """(signature type, divisible by 16) of a runtime argument, as Triton's JIT specialises it: a
    tensor is a pointer, 16-aligned when its data pointer is (meta tensors report their storage
    offset); an int is i32 (i64 past int32), divisible when a multiple of 16; the int 1 becomes the
    constexpr 1 (type "constexpr"); a float is fp32; a bool u1; a host TensorDescriptor is
    tensordesc<dtype[block shape]>."""
    if type(value).__name__ == "TensorDescriptor":  # triton.tools.tensor_descriptor (host-side TMA)
        name = jit_type(value.base)[0][1:]
        return f"tensordesc<{name}[{', '.join(str(b) for b in value.block_shape)}]>", False
    if isinstance(value, torch.Tensor):
        name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int32: "i32",
                torch.int64: "i64"}[value.dtype]
        return "*" + name, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"no JIT type for a {type(value).__name__} argument: {value!r}")


def jit_signature(launch: Launch) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource, from a Launch's arguments."""
    names = launch.kernel.arg_names
    given = {**launch.args, **launch.constexprs}
    missing = [n for n in given if n not in names]
    if missing:
        raise ValueError(f"{launch.kernel.__name__} has no argument(s) {missing}")
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        if name in launch.constexprs:
            signature[name], constexprs[name] = "constexpr", launch.constexprs[name]
        elif name in launch.args:
            typ, div16 = jit_type(launch.args[name])
            signature[name] = typ
            if typ == "constexpr":
                constexprs[name] = launch.args[name]
            elif div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # a parameter with a default the launcher leaves alone
            default = launch.kernel.params[i].default
            signature[name], constexprs[name] = "constexpr", default
    return signature, constexprs, attrs


def compile_launch(launch: Launch):
    """Compile a Launch for sm_90a (H100) without a GPU; returns Triton's compiled kernel."""
    refuse_interpreted(launch.kernel)  # before jit_signature reads the JIT's parameters
    sig, consts, attrs = jit_signature(launch)
    return compile_kernel(launch.kernel, sig, consts, attrs, sm90_target(), launch.options())


SASS_OPS = ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "UBLKCP", "UTMASTG", "STL", "LDL", "FFMA", "FMUL", "FADD", "MUFU")


def analyse(compiled, ptxas_log: str = "") -> dict:
    """Resource usage and instruction counts of a compiled kernel's cubin. ptxas_log: ptxas -v's
    output for it, when there is one (its spill bytes; else spills are counted as STL/LDL)."""
    md = compiled.metadata
    res = resource_usage(compiled)
    ops = sass_ops(cuobjdump(compiled, "--dump-sass"))
    regs, warps = res["reg"], int(md.num_warps)
    shared = int(md.shared) + res["shared"]  # Triton's dynamic allocation + static
    row = {"name": md.name, "regs": regs, "stack": res["stack"], "shared": shared,
           "num_warps": warps, "stl": ops["STL"], "ldl": ops["LDL"],
           "hgmma": ops["HGMMA"], "hmma": ops["HMMA"], "cp_async": ops["LDGSTS"],
           "tma": ops["UTMALDG"] + ops["UBLKCP"] + ops["UTMASTG"],
           "sass": {op: ops[op] for op in SASS_OPS}}
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    row["spill_store_bytes"], row["spill_load_bytes"] = (int(spill[1]), int(spill[2])) if spill else (None, None)
    # spill stores: ptxas's bytes when known; else STL instructions (which also count local arrays,
    # e.g. libdevice sinf's slow-path reduction table)
    row["spill_stores"] = row["spill_store_bytes"] if spill else row["stl"]
    row["mma"] = "HGMMA" if row["hgmma"] else "HMMA" if row["hmma"] else "none"
    row["fits"] = shared <= SHARED_PER_BLOCK
    row["blocks_per_sm"] = blocks_per_sm(regs, warps, shared) if row["fits"] else 0
    return row


def blocks_per_sm(regs: int, warps: int, shared: int) -> int:
    """Resident blocks per H100 SM, from registers (allocated per warp in units of 256), shared
    memory (plus 1 KiB reserved per block) and warps."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (REGS_PER_SM // per_warp) // warps
    by_shared = SHARED_PER_SM // (shared + SHARED_RESERVED)
    return min(by_regs, by_shared, WARPS_PER_SM // warps, BLOCKS_PER_SM)


def run_entry(e: Entry) -> dict:
    row = {"kernel": e.kernel, "site": e.site, "config": e.config, "dtype": e.dtype, "used_by": list(e.used_by),
           "expect_hgmma": e.expect_hgmma}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        # Compile afresh (not from Triton's cache) with ptxas -v's log printed, to read its spill counts.
        with mock.patch.dict(os.environ, TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1"), \
                contextlib.redirect_stdout(log), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
            compiled = e.compile()
        row.update(analyse(compiled, log.getvalue()), ok=True)
        if e.tiling is not None:
            row.update(roofline_row(e.tiling, compiled))
        if not row["fits"]:
            row["error"] = f"needs {row['shared']:,} B of shared memory, over the {SHARED_PER_BLOCK:,} B an H100 block may use"
    except Exception as exc:  # noqa: BLE001 - a failing configuration is a row saying why
        msg = str(exc).strip().splitlines()
        row.update(ok=False, fits=False, error=f"{type(exc).__name__}: {msg[-1][:300] if msg else ''}")
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def roofline_row(tiling: AttentionTiling, compiled) -> dict:
    """The byte/FLOP accounting of an attention entry (roofline.attention_roofline at
    ROOFLINE_TOKENS), with what the compile says filled in: the score replication when the
    tiling leaves it open (score_work on the TTGIR), and the wgmma wait depths in the PTX
    (`wgmma.wait_group N`: N > 0 lets that many wgmma groups run on while the warps go on)."""
    from dataclasses import replace

    from infgen.kernels.attention_d512 import score_work
    ptx = compiled.asm.get("ptx", "")
    if isinstance(ptx, bytes):
        ptx = ptx.decode()
    if tiling.score_replication is None:
        sc = score_work(compiled.asm["ttgir"], "", tiling.block_m, tiling.block_n, tiling.head_dim)
        tiling = replace(tiling, score_replication=sc["replication"],
                         score_instr_n=tiling.score_instr_n or sc["dots"][0]["instr_n"])
    r = attention_roofline(tiling, ROOFLINE_TOKENS)
    waits = Counter(int(n) for n in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx))
    return {"roofline": {"tokens": ROOFLINE_TOKENS, "tiling": tiling.__dict__, "flop_per_l2_byte": r["flop_per_l2_byte"],
                         "smem_bytes_per_flop": r["smem_bytes_per_flop"], "flop_per_hbm_byte": r["flop_per_hbm_byte"],
                         "tflops_by": r["tflops_by"], "bound_tflops": r["bound_tflops"], "limit": r["limit"]},
            "wgmma_waits": {str(k): v for k, v in sorted(waits.items())}}


# ----------------------------------------------------------------------------- the entries
def meta(*shape, dtype) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def _tile(cfg) -> str:
    return f"{cfg[0]}x{cfg[1]} w{cfg[2]} s{cfg[3]}"


def attention_call(site: str, dt: torch.dtype, D: int) -> tuple:
    """q, k, v, out as the triton backend passes them (infgen.ref.decode over runtime/triton_backend.py's
    ops), on meta tensors. cross: q, k, v head-split views of (1, M, H*D) / (1, T, H*D) projections;
    self: contiguous (1, 1, M, D) projections, one head. (The TensorRT plugin's kernel: trt_entries.)"""
    if site == "cross":
        H = {64: 8, 16: 4}.get(D, 8)
        q = meta(1, TOKENS, H * D, dtype=dt).view(1, TOKENS, H, D).transpose(1, 2)
        k, v = (meta(1, LATENT_TOKENS, H * D, dtype=dt).view(1, LATENT_TOKENS, H, D).transpose(1, 2)
                for _ in range(2))
    else:
        q, k, v = (meta(1, TOKENS, D, dtype=dt)[:, None] for _ in range(3))
    out = torch.empty((q.shape[0], q.shape[2], q.shape[1], D), device="meta", dtype=dt).transpose(1, 2)
    return q, k, v, out


def _attention(site, dt, D, cfg, **opts):
    q, k, v, out = attention_call(site, dt, D)
    return compile_launch(attention_launch(q, k, v, out, 1.0 / math.sqrt(D), cfg, **opts))


# (site, head dim, label): the runtime's attention call sites, then the other head-dim buckets that
# pick_config serves (a checkpoint with other widths).
ATTENTION_SITES = [("cross", 64, "cross-attention, paper (8 heads of 64)"),
                   ("self", 512, "mid-block attention, paper (1 head of 512)"),
                   ("cross", 16, "cross-attention, tiny/demo (4 heads of 16)"),
                   ("self", 128, "head dim 128 (no preset)"),
                   ("self", 256, "head dim 256 (no preset)")]


def _tldot_tiling(D: int, cfg) -> AttentionTiling | None:
    """The tl.dot kernel's tiling at head dim 512 (the mid block's self-attention, set beside the
    scores-once kernel): its score replication and Q K^T instruction width are read from its
    TTGIR when compiled (roofline_row). Other head dims: no accounting yet."""
    return AttentionTiling(cfg[0], cfg[1], D, score_replication=None) if D == 512 else None


def attention_entries() -> list[Entry]:
    """attn_fwd_kernel: the runtime's call sites as the triton backend launches them (queries
    pre-scaled by scale * log2(e), folded into the query projections: q_prescaled; at head dim 512
    on sm_90 in bf16/fp16 the backend launches attn_d512_kernel instead, d512_entries, so that row
    is the tl.dot fallback of other GPUs), the benchmark's sweep (unscaled queries, as
    benchmarks/kernels.py calls it) and the rejected fp32 tiles."""
    from functools import partial
    out = []
    for site, D, label in ATTENTION_SITES:
        for name, dt in DTYPES.items():
            if not uses_kernel(dt, CUDA):
                continue
            cfg = pick_config(D, CUDA)
            out.append(Entry("attn_fwd_kernel", label + (", GPUs other than sm_90" if D == 512 else ""),
                             f"d{D} {_tile(cfg)} q_prescaled", name, ("runtime",),
                             partial(_attention, site, dt, D, cfg, q_prescaled=True), expect_hgmma=True,
                             tiling=_tldot_tiling(D, cfg)))
    for D, cfgs in SWEEP_CONFIGS.items():
        site, label = ("cross", "sweep, cross-attention") if D == 64 else ("self", "sweep, mid-block attention")
        for *cfg, tma in cfgs:
            cfg = tuple(cfg)
            out.append(Entry("attn_fwd_kernel", label, f"d{D} {_tile(cfg)}" + (" kv_tma" if tma else ""), "bf16",
                             ("sweep",), partial(_attention, site, torch.bfloat16, D, cfg, kv_tma=tma),
                             expect_hgmma=True, tiling=_tldot_tiling(D, cfg)))
    for site, D, label in ATTENTION_SITES[:2]:
        cfg = pick_config(D, CUDA)
        # Rejected: fp32 through the kernel (CUDA runs torch SDPA instead), at the bf16 tile.
        out.append(Entry("attn_fwd_kernel", label, f"d{D} {_tile(cfg)}", "fp32", ("rejected",),
                         partial(_attention, site, torch.float32, D, cfg)))
    return out


# GroupNorm call sites: channel widths of the paper preset's up blocks / mid block (512, 256, 128)
# and of the tiny/demo presets (64, 32, 16); SiLU everywhere except the mid-block attention's norm.
GN_CHANNELS = {512: "paper mid/up blocks", 256: "paper up block 2", 128: "paper up block 3",
               64: "tiny/demo", 32: "tiny/demo", 16: "tiny/demo"}
GN_NO_SILU = (512, 64)  # the mid-block attention's norm (paper, tiny)


def _groupnorm(kind, dt, C, silu=True):
    from infgen.kernels.groupnorm import _tiles, gn_apply_launch, gn_stats_launch
    B, H, W = 1, 270, 480  # the paper preset's first up block at 1920x1080 (its size does not change the code)
    x = meta(B, H * W, C, dtype=dt)  # the (B, P, C) order of a channels-last (B, C, H, W)
    tiles = _tiles(H * W, C, B, CUDA)
    if kind == "stats":
        return compile_launch(gn_stats_launch(x, B, H * W, C, tiles)[0])
    params = meta(4, B, C, dtype=torch.float32).unbind(0)
    return compile_launch(gn_apply_launch(x, torch.empty_like(x), params, B, H * W, C, tiles, silu))


def groupnorm_entries() -> list[Entry]:
    from functools import partial

    from infgen.kernels.groupnorm import _tiles
    out = []
    for C, label in GN_CHANNELS.items():
        BP, BC, _ = _tiles(270 * 480, C, 1, CUDA)
        kinds = [("gn_stats_kernel", f"GroupNorm, {label}", f"C{C} {BP}x{BC} w4", "stats", True),
                 ("gn_apply_kernel", f"GroupNorm+SiLU, {label}", f"C{C} {BP}x{BC} w4 silu", "apply", True)]
        if C in GN_NO_SILU:
            kinds.append(("gn_apply_kernel", f"GroupNorm, {label} attention norm", f"C{C} {BP}x{BC} w4", "apply", False))
        for kernel, site, tile, kind, silu in kinds:
            for name, dt in DTYPES.items():
                out.append(Entry(kernel, site, tile, name, ("runtime",), partial(_groupnorm, kind, dt, C, silu)))
    return out


def _add_stats(dt, C, residual):
    from infgen.kernels.groupnorm import _tiles, add_stats_launch
    B, H, W = 1, 270, 480  # as _groupnorm
    x = meta(B, H * W, C, dtype=dt)
    return compile_launch(add_stats_launch(x, torch.empty_like(x) if residual else None, torch.empty_like(x),
                                           B, H * W, C, _tiles(H * W, C, B, CUDA))[0])


def add_stats_entries() -> list[Entry]:
    """add_stats_kernel (kernels/groupnorm.py): the resnets' residual add and the banded convs' band
    store, each taking the next GroupNorm's statistics; the paper preset's up-block widths."""
    from functools import partial

    from infgen.kernels.groupnorm import _tiles
    out = []
    for C in (512, 256, 128):
        BP, BC, _ = _tiles(270 * 480, C, 1, CUDA)
        for residual, site in ((True, f"residual add + GroupNorm stats, {GN_CHANNELS[C]}"),
                               (False, f"conv band store + GroupNorm stats, {GN_CHANNELS[C]}")):
            for name, dt in DTYPES.items():
                out.append(Entry("add_stats_kernel", site, f"C{C} {BP}x{BC} w4" + (" +r" if residual else ""), name,
                                 ("runtime",), partial(_add_stats, dt, C, residual)))
    return out


# INPE call sites: (D, F, with the mask token added, label).
INPE_SITES = [(512, 64, True, "mask tokens, paper"), (512, 64, False, "latent positions, paper"),
              (64, 16, True, "mask tokens, tiny"), (64, 32, True, "mask tokens, demo")]


def _inpe(dt, D, F_, add):
    T = 135 * 240
    return compile_launch(inpe_launch(meta(T, D, dtype=dt), meta(T, 2 * F_, dtype=dt), meta(D, 2 * F_, dtype=dt),
                                      meta(D, dtype=dt), meta(D, D, dtype=dt), meta(D, dtype=dt),
                                      meta(D, dtype=dt) if add else None, gpu=True))


def inpe_entries() -> list[Entry]:
    from functools import partial
    out = []
    for D, F_, add, label in INPE_SITES:
        for name, dt in DTYPES.items():
            c = inpe_launch(meta(16, D, dtype=dt), meta(16, 2 * F_, dtype=dt), meta(D, 2 * F_, dtype=dt),
                            None, None, None, None, gpu=True)
            tile = f"D{D} F{F_} {c.constexprs['BLOCK_T']}x{c.constexprs['BLOCK_H']} w{c.num_warps}"
            out.append(Entry("inpe_kernel", f"INPE, {label}", tile + (" +add" if add else ""), name, ("runtime",),
                             partial(_inpe, dt, D, F_, add)))
    return out


def d512_tiling(block_n: int, cluster: int = 1) -> AttentionTiling:
    """The scores-once kernel's tiling: 64 query rows per CTA, Q K^T once by warpgroup 0, P to
    warpgroup 1 through shared memory; `cluster` CTAs sharing K/V (a design, see DESIGNS)."""
    return AttentionTiling(64, block_n, 512, cluster=cluster, p_smem_readers=1)


# The designs' accounting side by side (the report prints it beside the compiled rows). The 2-CTA
# cluster (kernels/attention_d512_cluster.py) needs Gluon's multicast TMA and cluster mbarriers:
# triton >= 3.9 compiles it (a report row there), 3.6 (the GPU image) cannot.
DESIGNS = {"scores-once d512, 64x64, as built (runtime)": d512_tiling(64),
           "scores-once d512, 64x32, 2 slots (pipelined option)": d512_tiling(32),
           "scores-once d512, 64x64, 2-CTA cluster, K/V multicast (built, triton >= 3.9, never run)":
               d512_tiling(64, cluster=2),
           # replication and instruction width as score_work reads them from its TTGIR (triton 3.9)
           "tl.dot d512, 64x16 w8 s3 (scores twice, Q K^T m64n8)": AttentionTiling(64, 16, 512, score_replication=2,
                                                                                   score_instr_n=8)}


def d512_entries() -> list[Entry]:
    """The scores-once head-dim-512 Gluon kernel (kernels/attention_d512.py): what the triton
    backend launches for the mid-block attention on sm_90 in bf16/fp16 (queries pre-scaled:
    q_prescaled), the benchmark's sweep (unscaled queries, benchmarks/attention_d512.py) and the
    pipelined option (PIPELINED_CONFIGS: selectable, never launched by the runtime, unvalidated), and
    where this triton has Gluon's multicast TMA (>= 3.9) the 2-CTA cluster kernel
    (kernels/attention_d512_cluster.py: selectable, never run)."""
    from functools import partial
    from infgen.kernels.attention_d512 import (DTYPES as D512_DTYPES, PIPELINED_CONFIGS, RUNTIME_CONFIGS as D512_RUNTIME,
                                 SWEEP_CONFIGS as D512_SWEEP, compile_d512)
    from infgen.kernels.attention_d512_cluster import HAS_MULTICAST, RUNTIME_CONFIG as CLUSTER_CONFIG, compile_d512_cluster
    out = []
    for dt in D512_DTYPES:
        name = {v: k for k, v in DTYPES.items()}[dt]
        for cfg in D512_RUNTIME:
            out.append(Entry("attn_d512_kernel", "mid-block attention (scores once), sm_90",
                             f"d512 64x{cfg.block_n} s{cfg.stages} w4+4+1 q_prescaled", name, ("runtime",),
                             partial(compile_d512, cfg, dt, q_prescaled=True), expect_hgmma=True,
                             tiling=d512_tiling(cfg.block_n)))
        for cfg in PIPELINED_CONFIGS:
            out.append(Entry("attn_d512_kernel", "mid-block attention, pipelined option (unvalidated)",
                             f"d512 64x{cfg.block_n} s{cfg.stages} w4+4+1 pipelined q_prescaled", name, ("option",),
                             partial(compile_d512, cfg, dt, q_prescaled=True), expect_hgmma=True,
                             tiling=d512_tiling(cfg.block_n)))
        if HAS_MULTICAST:
            cfg = CLUSTER_CONFIG
            out.append(Entry("attn_d512_cluster_kernel", "mid-block attention, 2-CTA cluster option (never run)",
                             f"d512 2x64x{cfg.block_n} s{cfg.stages} w4+4+1 multicast q_prescaled", name, ("option",),
                             partial(compile_d512_cluster, cfg, dt, q_prescaled=True), expect_hgmma=True,
                             tiling=d512_tiling(cfg.block_n, cluster=2)))
    for cfg in D512_SWEEP:
        out.append(Entry("attn_d512_kernel", "sweep, scores-once d512", f"d512 64x{cfg.block_n} s{cfg.stages} w4+4+1",
                         "bf16", ("sweep",), partial(compile_d512, cfg, torch.bfloat16), expect_hgmma=True,
                         tiling=d512_tiling(cfg.block_n)))
    return out


def designs_table(designs: dict | None = None, tokens: int = ROOFLINE_TOKENS) -> str:
    """Markdown: each design's FLOP per L2 byte, shared-memory bytes per FLOP, the bound each
    level allows and the overall bound with what sets it (estimates, roofline.py)."""
    lines = ["| design | FLOP/L2 B | smem B/FLOP | tensor core | shared memory | L2 | HBM | bound TFLOP/s (limit) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in (designs or DESIGNS).items():
        r = attention_roofline(t, tokens)
        by = r["tflops_by"]
        lines.append(f"| {name} | {r['flop_per_l2_byte']:.0f} | {r['smem_bytes_per_flop']:.4f} | "
                     f"{by['tensor core']:.0f} | {by['shared memory']:.0f} | {by['L2']:.0f} | {by['HBM']:.0f} | "
                     f"{r['bound_tflops']:.0f} ({r['limit']}) |")
    return "\n".join(lines)


def traffic_table(sizes=(1024, 2048, 4096), itemsize: int = 2) -> str:
    """Markdown: the bytes the paper preset's up blocks move outside the convs per output size
    (infgen.ref.cost.up_block_traffic, batch 1, bf16), before add_stats (every GroupNorm takes its
    own statistics) and now, with the time at the H100's HBM peak (estimates from byte counts)."""
    from infgen.ref.config import preset
    from infgen.ref.cost import TRAFFIC, up_block_traffic
    cfg = preset("paper")
    lines = ["| output | " + " | ".join(TRAFFIC) + " | total GiB | at HBM peak |", "|---" * (len(TRAFFIC) + 3) + "|"]
    for n in sizes:
        for label, fused in (("before", False), ("now", True)):
            t = up_block_traffic(cfg, n, n, 1, itemsize, fused=fused)
            lines.append(f"| {n}^2 {label} | " + " | ".join(f"{t[k] / 2**30:.1f}" for k in TRAFFIC)
                         + f" | {t['total'] / 2**30:.1f} | {t['total'] / H100.hbm_bytes_s * 1e3:.0f} ms |")
    return "\n".join(lines)


def _trt_entry(ptr_type, D, cfg):
    from infgen.kernels.attention_trt import compile_entry
    return compile_entry(ptr_type, D, 1.0 / math.sqrt(D), sm90_target(), config=cfg)[0]


def trt_entries() -> list[Entry]:
    """trt_flash_entry, the TensorRT plugin's kernel, exactly as its aot_impl compiles it
    (kernels/attention_trt.py compile_entry: 16-byte aligned pointers, any N, TRT_CONFIGS tiles), at
    every head-dim bucket and dtype the plugin accepts. check() also holds it to the 48 KiB of
    dynamic shared memory TensorRT's AOT launch may use (TRT_SHARED_LIMIT)."""
    from functools import partial

    from infgen.kernels.attention_trt import POINTER_TYPES, TRT_CONFIGS
    out = []
    for ptr in POINTER_TYPES.values():
        name = ptr[1:]
        for D, cfg in TRT_CONFIGS[ptr == "*fp32"].items():
            tile = f"d{D} {_tile(cfg)}" + (" q_reload" if cfg[4] else "")
            out.append(Entry("trt_flash_entry", "TensorRT plugin (B, N, D), one head", tile, name, ("plugin",),
                             partial(_trt_entry, ptr, D, cfg), expect_hgmma=ptr != "*fp32" and not cfg[4]))
    return out


def entries() -> list[Entry]:
    """Every entry the report compiles."""
    return [*attention_entries(), *d512_entries(), *trt_entries(), *groupnorm_entries(), *add_stats_entries(), *inpe_entries()]


# ----------------------------------------------------------------------------- running, output
def run_all(selected: list[Entry], jobs: int) -> list[dict]:
    """Compile and analyse each entry, `jobs` at a time (forked workers: ptxas is single-threaded)."""
    global _SELECTED
    _SELECTED = selected
    if jobs <= 1 or len(selected) <= 1:
        return [run_entry(e) for e in selected]
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        return pool.map(_run_index, range(len(selected)), chunksize=1)


_SELECTED: list[Entry] = []


def _run_index(i: int) -> dict:
    return run_entry(_SELECTED[i])


def check(rows: list[dict]) -> list[str]:
    """Problems: a runtime or plugin entry that does not compile, fit, stay free of spill stores,
    or (when expected) use HGMMA; a sweep entry that does not compile or fit."""
    bad = []
    for r in rows:
        what = f"{r['kernel']} {r['config']} {r['dtype']} ({r['site']})"
        if {"runtime", "plugin"} & set(r["used_by"]):
            if not (r["ok"] and r["fits"]):
                bad.append(f"{what}: {r.get('error')}")
            elif r["spill_stores"]:
                unit = "B of" if r["spill_store_bytes"] is not None else "STL instructions,"
                bad.append(f"{what}: {r['spill_stores']} {unit} spill stores ({r['stack']} B stack)")
            elif r["expect_hgmma"] and not r["hgmma"]:
                bad.append(f"{what}: no HGMMA (mma: {r['mma']})")
            elif r["kernel"] == "trt_flash_entry" and r["shared"] > TRT_SHARED_LIMIT:
                bad.append(f"{what}: {r['shared']:,} B of shared memory, over the {TRT_SHARED_LIMIT:,} B TensorRT's "
                           "AOT launch may use")
        elif "sweep" in r["used_by"] and not (r["ok"] and r["fits"]):
            bad.append(f"{what}: {r.get('error')}")
    return bad


def environment() -> dict:
    import triton
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:  # no git on this machine
        git = ""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "triton": triton.__version__, "torch": torch.__version__, "python": sys.version.split()[0],
            "target": "cuda sm_90a (GPUTarget('cuda', 90, 32)), compiled without a GPU", "commit": git or None,
            "limits": {"shared_per_block": SHARED_PER_BLOCK, "shared_per_sm": SHARED_PER_SM,
                       "regs_per_sm": REGS_PER_SM, "warps_per_sm": WARPS_PER_SM, "max_regs": MAX_REGS}}


COLUMNS = ("kernel", "site", "config", "dtype", "used by", "regs", "spill st/ld B", "stack B", "shared B",
           "MMA", "cp.async", "TMA", "blocks/SM", "FLOP/L2 B", "smem B/FLOP", "bound TFLOP/s (limit)", "note")


def roofline_cells(r: dict) -> list[str]:
    """The accounting columns of a row: FLOP per L2 byte, shared-memory bytes per FLOP, and the
    bound with what sets it (estimates; '-' for kernels without a tiling)."""
    rf = r.get("roofline")
    if not rf:
        return ["-"] * 3
    return [f"{rf['flop_per_l2_byte']:.0f}", f"{rf['smem_bytes_per_flop']:.4f}",
            f"{rf['bound_tflops']:.0f} ({rf['limit']})"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        head = [r["kernel"], r["site"], r["config"], r["dtype"], ", ".join(r["used_by"])]
        if r["ok"]:
            spill = (f"{r['spill_store_bytes']}/{r['spill_load_bytes']}" if r["spill_store_bytes"] is not None
                     else f"STL {r['stl']}/LDL {r['ldl']}")
            cells = [str(r["regs"]), spill, str(r["stack"]), f"{r['shared']:,}",
                     r["mma"] if r["mma"] == "none" else f"{r['mma']} x{r['hgmma'] or r['hmma']}",
                     str(r["cp_async"]), str(r["tma"]), str(r["blocks_per_sm"]), *roofline_cells(r), r.get("error", "")]
        else:
            cells = ["-"] * 11 + [r["error"]]
        lines.append("| " + " | ".join(head + cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    env = report["env"]
    rows = report["rows"]
    out = [f"# sm_90a compile report (triton {env['triton']})", "",
           f"{env['date']}, commit {env['commit']}, torch {env['torch']}; target {env['target']}. Nothing ran on a GPU.",
           f"Shared memory counts Triton's dynamic allocation plus static; an H100 block may use "
           f"{SHARED_PER_BLOCK:,} B. Spill st/ld: ptxas -v's spill store/load bytes. MMA: HGMMA (wgmma), HMMA "
           f"(mma.sync) or none (FMA dots), with the instruction count. cp.async: LDGSTS; TMA: UTMALDG/UBLKCP/UTMASTG. "
           f"Blocks/SM from registers, shared memory and warps.",
           f"FLOP/L2 B, smem B/FLOP and the bound: byte/FLOP accounting of attention tilings "
           f"(kernels/roofline.py) for one head of {ROOFLINE_TOKENS:,} tokens on an {H100.name} "
           f"({H100.tensor_flops / 1e12:.0f} TFLOP/s dense tensor core, L2 {H100.l2_bytes_s / 1e12:.1f} TB/s, "
           f"HBM {H100.hbm_bytes_s / 1e12:.2f} TB/s, shared memory {H100.smem_bytes_s / 1e12:.1f} TB/s): "
           f"estimates from byte counts, not measurements.", ""]
    for title, keep in (("Runtime and plugin configurations", lambda r: {"runtime", "plugin"} & set(r["used_by"])),
                        ("Sweep configurations (benchmarks/kernels.py)", lambda r: r["used_by"] == ["sweep"]),
                        ("Options the runtime does not use yet", lambda r: "option" in r["used_by"]),
                        ("Rejected (not launched; see the note in kernels/)", lambda r: "rejected" in r["used_by"]),
                        ("Other", lambda r: not set(r["used_by"]) & set(USED_BY))):
            part = [r for r in rows if keep(r)]
            if part:
                out += [f"## {title}", "", markdown_table(part), ""]
    out += [f"## Attention designs by byte/FLOP accounting (one head of {ROOFLINE_TOKENS:,} tokens; estimates)", "",
            designs_table(), "",
            "## Up-block traffic outside the convs (paper preset, batch 1, bf16; estimates from byte counts)", "",
            traffic_table(), ""]
    problems = report["problems"]
    out += ["## Check", "", "All runtime and plugin configurations compile, fit, have no spill stores and use "
            "HGMMA where expected; all sweep configurations compile and fit." if not problems else
            "\n".join(f"- {p}" for p in problems), ""]
    return "\n".join(out)


def compare(reports: list[dict], used_by=("runtime", "plugin")) -> str:
    """One Markdown table of the entries used by `used_by`, side by side across reports (e.g. one
    per triton version): registers, spill store bytes, shared memory and blocks per SM per report;
    dtypes with equal numbers share a row."""
    versions = " / ".join(r["env"]["triton"] for r in reports)
    keyed = [{(x["kernel"], x["site"], x["config"], x["dtype"]): x for x in r["rows"]} for r in reports]
    rows = []
    for key, first in keyed[0].items():
        if not set(first["used_by"]) & set(used_by):
            continue
        xs = [kd.get(key) for kd in keyed]
        ok = [x for x in xs if x and x["ok"]]

        def cell(f):
            return " / ".join(str(f(x)) if x and x["ok"] else "-" for x in xs)
        cells = ([cell(lambda x: x["regs"]), cell(lambda x: x["spill_stores"]), cell(lambda x: f"{x['shared']:,}"),
                  ok[0]["mma"], f"{ok[0]['cp_async']} / {ok[0]['tma']}", cell(lambda x: x["blocks_per_sm"])]
                 if ok else ["-"] * 5 + [first.get("error", "")])
        if rows and rows[-1][0] == key[:3] and rows[-1][2] == cells:
            rows[-1][1].append(key[3])
        else:
            rows.append((key[:3], [key[3]], cells))
    lines = [f"| kernel | site | config | dtype | regs ({versions}) | spill B | shared B | MMA | cp.async / TMA "
             f"| blocks/SM |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(k)} | {', '.join(d)} | {' | '.join(c)} |" for k, d, c in rows]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/compile_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", dest="out", default="compile_report", help="directory for compile_report.json and .md")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles (default: CPU count)")
    p.add_argument("--used-by", choices=USED_BY, action="append",
                   help=f"entries used by this (repeatable; default: {', '.join(DEFAULT_USED_BY)})")
    p.add_argument("--kernel", action="append", help="only this kernel (repeatable)")
    p.add_argument("--check", action="store_true", help="exit 1 when check() finds a problem")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="compile nothing: print the runtime/plugin rows of these reports side by side")
    return p


def main(argv=None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if a.compare:
        print(compare([json.loads(Path(f).read_text()) for f in a.compare]))
        return 0
    if a.jobs < 1:
        p.error(f"--jobs must be >= 1, got {a.jobs}")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        p.error("TRITON_INTERPRET is set: the report compiles for the GPU; run it without TRITON_INTERPRET")
    selected = [e for e in entries() if set(e.used_by) & set(a.used_by or DEFAULT_USED_BY)
                and (not a.kernel or e.kernel in a.kernel)]
    t0 = time.perf_counter()
    rows = run_all(selected, a.jobs)
    report = {"env": environment(), "wall_s": round(time.perf_counter() - t0, 1), "rows": rows,
              "problems": check(rows)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile_report.json").write_text(json.dumps(report, indent=1))
    (out / "compile_report.md").write_text(markdown(report))
    print(markdown(report))
    print(f"{len(rows)} entries in {report['wall_s']} s; wrote {out / 'compile_report.json'} and .md")
    return 1 if a.check and report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
