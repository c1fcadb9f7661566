"""Ahead-of-time kernels for libinfgen_kernels: the project's Triton kernels compiled for sm_90a
on a machine without a GPU, written out as one C file with the cubins embedded.

    python -m infgen.native.aot --out-dir build/native_gen [--jobs 2]

CMake runs this (CMakeLists.txt, target infgen_kernels_gen). It writes, under --out-dir:
    infgen_kernels_table.c   the kernel table: one infgen_kernel_info per variant, cubins as byte arrays
    manifest.json            the same table as JSON (+ cubin sha256, resource usage), for the tests
    <name>.ptx               each variant's PTX, for reading

Why `triton.compile` and not `python -m triton.tools.compile`: that tool executes the kernel file
standalone (kernels/*.py use package-relative imports, so it cannot), and its C template calls
exit() on any CUDA error, links the driver directly and reads device 0's limits; here the launch
code is native/infgen_kernels.c, which returns errors, loads the driver at run time and works on
any device. The compile itself is the same call the tool makes, through the project's one
compile-and-inspect module (infgen.kernels.toolchain.compile_kernel: `triton.compile(ASTSource(fn,
signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32), options)`), with `tt.divisibility`
16 on the arguments the C launcher guarantees to be multiples of 16 (it checks them).

Scratch pointers: Triton >= 3.3 appends two parameters to every compiled kernel (global scratch,
profile scratch; triton 3.6 and 3.9 alike). Triton's own AOT launcher passes two null pointers and
refuses kernels whose metadata asks for scratch memory; so do we: a variant with
global_scratch_size or profile_scratch_size > 0 fails the build, and the kernel's parameter count
is read from its PTX `.entry` so the C launcher passes exactly that many (nulls for the extras).

A kernel change touches this file only where the kernel's arguments change: the tiles come from
infgen.kernels.attention.pick_config, and a new constexpr with a default takes its default.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infgen.kernels.toolchain import compile_kernel, ptx_param_count, resource_usage

ARCH = 90                       # sm_90a (H100 / H200); Triton adds the "a" for capability >= 90
DTYPES = {"bf16": 0, "fp16": 1}  # infgen_dtype in native/include/infgen_kernels.h
KINDS = {"attention": 0, "inpe": 1, "inpe_mlp": 2}  # infgen_kernel_kind
SHARED_LIMIT = 232_448          # bytes of shared memory an sm_90 block may use
# (kind, dim, tile, flags) of variants that spill registers (cuobjdump STACK > 0): the table test
# (native/tests/check_library.py) requires zero stack for every other variant. Measured with
# triton 3.9 on 2026-11-25. Kernels before #10: attention d512 at that pick_config's 64x32 w8 s2
# (432 B, 48 B for rows16; triton 3.6: 48 B, rows16 none); the one-kernel INPE at
# D=512 (fc1's (F, D) weight tile in registers: 952 B at w8; its sin/cos also use 32 B of local
# memory). Since #10: attention d512 at 64x16 w8 s3 for ragged M, N (120 B; the rows16 variant,
# the shape benchmarks/compile_report.py checks, has none); the MLP-only INPE has none.
KNOWN_SPILLS = {("attention", 512, (64, 32), 0), ("attention", 512, (64, 32), 1), ("inpe", 512, (16, 64), 0),
                ("inpe", 512, (16, 64), 1), ("attention", 512, (64, 16), 0)}


@dataclass(frozen=True)
class Variant:
    name: str            # C-visible name, e.g. "attention_d512_bf16"
    kind: str            # "attention" | "inpe"
    dtype: str           # "bf16" | "fp16"
    dim: int             # head dim (attention) or embedding width (inpe)
    tile: tuple          # attention: (BLOCK_M, BLOCK_N); inpe: (BLOCK_T, BLOCK_O)
    num_warps: int
    num_stages: int
    flags: int = 0       # attention: 1 = M, N multiples of 16; inpe: 1 = HAS_ADD
    num_freqs: int = 0   # inpe: Fourier frequencies F
    constexprs: dict = field(default_factory=dict, compare=False)


# ----------------------------------------------------------------------------- what is compiled
def attention_variant(dim: int, dtype: str, rows16: bool) -> Variant:
    """attn_fwd_kernel for one head dim and dtype, with the runtime's CUDA tile (pick_config).
    rows16: compiled for query and key counts that are multiples of 16, as Triton's JIT specialises
    them (most token grids: 64 x 64 latents, 1024^2 and 1920x1080 outputs); the launcher takes this
    variant when M and N allow it, else the general one."""
    import torch
    from infgen.kernels.attention import pick_config
    from infgen.kernels.common import next_pow2
    bm, bn, warps, stages = pick_config(dim, torch.device("cuda"))
    consts = dict(HEAD_DIM=dim, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(16, next_pow2(dim)),
                  DOT_PRECISION="tf32", DOT_FP32=False)
    name = f"attention_d{dim}_{dtype}" + ("_rows16" if rows16 else "")
    return Variant(name, "attention", dtype, dim, (bm, bn), warps, stages, int(rows16), 0, consts)


def inpe_variant(dim: int, fourier_dim: int, dtype: str, has_add: bool) -> Variant:
    """kernels/inpe.py's inpe_kernel, whichever of its two forms this checkout has:
    - "inpe" (before kernels #10): grid -> sphere -> Fourier features -> MLP in one kernel.
      Tile: 16 tokens, 64 output columns per fc2 step, 8 warps (its launcher's 4 warps spill three
      times as much and compile for 25 s);
    - "inpe_mlp" (since #10): the MLP over given Fourier features (FEAT); tile and warps from
      infgen.kernels.inpe.inpe_launch, the runtime's launch, built on meta tensors."""
    from infgen.kernels import inpe
    from infgen.kernels.common import next_pow2
    suffix = f"d{dim}_f{fourier_dim}_{dtype}" + ("_add" if has_add else "")
    if "FEAT" not in inspect.signature(inpe.inpe_kernel.fn).parameters:
        consts = dict(HAS_ADD=has_add, BLOCK_T=16, BLOCK_F=max(16, next_pow2(fourier_dim)),
                      BLOCK_D=max(16, next_pow2(dim)), BLOCK_O=64, DOT_PRECISION="tf32", DOT_FP32=False)
        return Variant(f"inpe_{suffix}", "inpe", dtype, dim, (16, 64), 8, 3, int(has_add), fourier_dim, consts)
    import torch
    t = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    meta = lambda *shape: torch.empty(shape, device="meta", dtype=t)  # noqa: E731
    launch = inpe.inpe_launch(meta(16, dim), meta(16, 2 * fourier_dim), meta(dim, 2 * fourier_dim), meta(dim),
                              meta(dim, dim), meta(dim), meta(dim) if has_add else None, gpu=True)
    consts = {**launch.constexprs, "DOT_FP32": False}
    return Variant(f"inpe_mlp_{suffix}", "inpe_mlp", dtype, dim, (consts["BLOCK_T"], consts["BLOCK_H"]),
                   launch.num_warps, launch.num_stages or 3, int(has_add), fourier_dim, consts)


def variants() -> list[Variant]:
    """Everything libinfgen_kernels holds: attention at the decoder's head dims (cross-attention
    8 x 64, mid-block 1 x 512) and INPE at the paper preset's widths (D 512, F 64), bf16 and fp16."""
    out = [attention_variant(d, dt, rows16) for d in (64, 512) for dt in DTYPES for rows16 in (False, True)]
    out += [inpe_variant(512, 64, dt, add) for dt in DTYPES for add in (False, True)]
    return out


# ----------------------------------------------------------------------------- signatures
# C types of the runtime (non-constexpr) arguments, by kernel; pointers are 16-byte aligned and
# the listed ints multiples of 16 (the C launcher checks both before launching).
ATTN_STRIDES = tuple(f"stride_{t}{a}" for t in "qkvo" for a in ("b", "h", "m" if t in "qo" else "n"))
SIGNATURES = {  # kind: (module, kernel, {argument: type}, arguments hinted divisible by 16)
    "attention": ("infgen.kernels.attention", "attn_fwd_kernel",
                  {"Q": "*{dt}", "K": "*{dt}", "V": "*{dt}", "O": "*{dt}", **{s: "i32" for s in ATTN_STRIDES},
                   "H": "i32", "M": "i32", "N": "i32", "qk_scale": "fp32"},
                  ("Q", "K", "V", "O", *ATTN_STRIDES)),
    "inpe": ("infgen.kernels.inpe", "inpe_kernel",
             {"OUT": "*{dt}", "FB": "*fp32", "W1": "*{dt}", "B1": "*{dt}", "W2": "*{dt}", "B2": "*{dt}",
              "ADD": "*{dt}", "T": "i32", "GH": "i32", "GW": "i32", "F": "i32", "D": "i32"},
             ("OUT", "FB", "W1", "B1", "W2", "B2", "ADD")),
    "inpe_mlp": ("infgen.kernels.inpe", "inpe_kernel",
                 {"OUT": "*{dt}", "FEAT": "*{dt}", "W1": "*{dt}", "B1": "*{dt}", "W2": "*{dt}", "B2": "*{dt}",
                  "ADD": "*{dt}", "T": "i32", "F2": "i32", "D": "i32"},
                 ("OUT", "FEAT", "W1", "B1", "W2", "B2", "ADD")),
}


def hinted_args(v: Variant) -> set[str]:
    """Runtime arguments compiled as multiples of 16 (`tt.divisibility` 16), each guaranteed by the C
    launcher: the pointers and strides it checks, M and N for rows16 attention (chosen only when
    they are), and INPE's widths, which must equal the variant's (hinted when those are)."""
    hinted = set(SIGNATURES[v.kind][3])
    if v.kind == "attention" and v.flags & 1:
        hinted |= {"M", "N"}
    fixed = {"inpe": {"D": v.dim, "F": v.num_freqs}, "inpe_mlp": {"D": v.dim, "F2": 2 * v.num_freqs}}.get(v.kind, {})
    return hinted | {n for n, value in fixed.items() if value % 16 == 0}


def kernel_params(fn) -> list[inspect.Parameter]:
    """Parameters of a @triton.jit kernel, compiled or interpreted (read from its Python function)."""
    return list(inspect.signature(fn.fn).parameters.values())


def is_constexpr(p: inspect.Parameter) -> bool:
    return "constexpr" in str(p.annotation)  # `tl.constexpr`, a string under `from __future__ import annotations`


def kernel_source(v: Variant):
    """(kernel, signature, constexprs, attrs) for ASTSource: the signature in the kernel's parameter
    order, constexprs from the variant (or the parameter's default), `tt.divisibility` 16 attrs."""
    import importlib
    module, fn_name, types, div16 = SIGNATURES[v.kind]
    fn = getattr(importlib.import_module(module), fn_name)
    signature, consts, attrs = {}, {}, {}
    for i, p in enumerate(kernel_params(fn)):
        if is_constexpr(p):
            if p.name in v.constexprs:
                consts[p.name] = v.constexprs[p.name]
            elif p.default is not inspect.Parameter.empty:
                consts[p.name] = p.default
            else:
                raise ValueError(f"{module}.{fn_name} has a constexpr {p.name} without a default: give it a "
                                 f"value in native/aot.py ({v.kind}_variant)")
            signature[p.name] = "constexpr"
        elif p.name in types:
            signature[p.name] = types[p.name].format(dt=v.dtype)
            if p.name in hinted_args(v):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise ValueError(f"{module}.{fn_name} has an argument {p.name} that native/aot.py does not know: "
                             f"add its C type to SIGNATURES[{v.kind!r}] and pass it in native/src/infgen_kernels.c")
    runtime = [n for n, t in signature.items() if t != "constexpr"]
    if runtime != list(types):
        raise ValueError(f"{module}.{fn_name} takes the runtime arguments {runtime}, but native/aot.py and "
                         f"native/src/infgen_kernels.c pass {list(types)}: update both")
    return fn, signature, consts, attrs


# ----------------------------------------------------------------------------- compile one
def compile_variant(v: Variant) -> dict:
    """Compile one variant for sm_90a; returns its manifest row (with the cubin as bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    fn, signature, consts, attrs = kernel_source(v)
    compiled = compile_kernel(fn, signature, consts, attrs, GPUTarget("cuda", ARCH, 32),
                              dict(num_warps=v.num_warps, num_stages=v.num_stages))
    md = compiled.metadata
    if getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False):
        raise RuntimeError(f"{v.name}: needs a cluster or cooperative launch, which the C launcher does not do")
    for key in ("global_scratch_size", "profile_scratch_size"):
        if getattr(md, key, 0):
            raise RuntimeError(f"{v.name}: Triton asks for {key}={getattr(md, key)}; the AOT launcher passes "
                               f"null scratch pointers (as triton.tools.compile does) and cannot run it")
    cubin, ptx = compiled.asm["cubin"], compiled.asm["ptx"]
    n_args = sum(1 for t in signature.values() if t != "constexpr")
    n_params = ptx_param_count(ptx, md.name)
    if n_params < n_args:
        raise RuntimeError(f"{v.name}: PTX entry has {n_params} parameters, fewer than the {n_args} arguments")
    usage = resource_usage(cubin)
    row = {**asdict(v), "tile": list(v.tile), "symbol": md.name, "arch": ARCH, "shared": int(md.shared),
           "num_params": n_params, "num_args": n_args, "args": [n for n, t in signature.items() if t != "constexpr"],
           "usage": usage, "triton": triton.__version__, "cubin_sha256": hashlib.sha256(cubin).hexdigest(),
           "cubin_size": len(cubin), "signature": signature, "constexprs": dict(consts)}
    if int(md.shared) + usage["shared"] > SHARED_LIMIT:
        raise RuntimeError(f"{v.name}: {int(md.shared) + usage['shared']} B of shared memory exceeds an sm_90 "
                           f"block's {SHARED_LIMIT} B; pick a smaller tile")
    return {"row": row, "cubin": cubin, "ptx": ptx}


# ----------------------------------------------------------------------------- write the C table
def c_bytes(data: bytes, per_line: int = 24) -> str:
    hexes = [f"0x{b:02x}" for b in data]
    return ",\n".join("  " + ",".join(hexes[i:i + per_line]) for i in range(0, len(hexes), per_line))


def c_table(results: list[dict], build_info: str) -> str:
    lines = ["/* Generated by native/aot.py: do not edit. One entry per compiled kernel variant. */",
             '#include "infgen_kernels_table.h"', ""]
    for r in results:
        lines += [f"static const unsigned char cubin_{r['row']['name']}[{len(r['cubin'])}] = {{",
                  c_bytes(r["cubin"]), "};", ""]
    lines.append("const infgen_kernel_info infgen_table[] = {")
    for r in results:
        w = r["row"]
        lines.append(f'  {{"{w["name"]}", "{w["symbol"]}", {KINDS[w["kind"]]}, {DTYPES[w["dtype"]]}, {w["dim"]}, '
                     f'{w["tile"][0]}, {w["tile"][1]}, {w["num_warps"]}, {w["num_stages"]}, {w["flags"]}, {w["num_freqs"]}, '
                     f'{w["shared"]}, {w["num_params"]}, {w["num_args"]}, {w["arch"]}, "{",".join(w["args"])}", '
                     f'cubin_{w["name"]}, sizeof(cubin_{w["name"]})}},')
    lines += ["};", f"const int infgen_table_size = {len(results)};",
              f'const char infgen_table_build_info[] = "{build_info}";', ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infgen.native.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", dest="out", type=Path, help="directory for the generated C file, manifest and PTX")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="parallel compiles")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        ap.error("TRITON_INTERPRET=1 is set: the AOT build compiles for the GPU; unset it")
    todo = variants()
    if args.list:
        for v in todo:
            print(v.name, v.tile, f"w{v.num_warps} s{v.num_stages}")
        return 0
    if args.out is None:
        ap.error("--out-dir DIR is required")
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    import triton
    if args.jobs == 1:
        results = [compile_variant(v) for v in todo]
    else:  # spawn: each worker imports triton afresh (no forked compiler state)
        import multiprocessing
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(compile_variant, todo))
    args.out.mkdir(parents=True, exist_ok=True)
    build_info = f"triton {triton.__version__}, sm_{ARCH}a, {len(results)} kernels"
    for r in results:
        (args.out / f"{r['row']['name']}.ptx").write_text(r["ptx"])
        w = r["row"]
        print(f"{w['name']:28s} {w['symbol']} tile {w['tile']} w{w['num_warps']} s{w['num_stages']}  "
              f"shared {w['shared']} B  regs {w['usage']['reg']}  stack {w['usage']['stack']} B")
    manifest = {"build_info": build_info, "arch": ARCH, "triton": triton.__version__,
                "known_spills": sorted([[k, d, list(t), f] for k, d, t, f in KNOWN_SPILLS]), "kernels": [r["row"] for r in results]}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (args.out / "infgen_kernels_table.c").write_text(c_table(results, build_info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
