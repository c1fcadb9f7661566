"""Compile a Triton or Gluon kernel for a GPU target without a GPU, and read what the compile made.

The one place the project turns a kernel into a cubin ahead of time and inspects it. Used by the
compile report (benchmarks/compile_report.py), the Gluon attention kernels' static checks
(kernels/attention_d512.py, kernels/attention_d512_cluster.py), the native AOT build
(native/aot.py) and the TensorRT plugin's entry (kernels/attention_trt.py, export/trt_plugin.py).

- `compile_kernel(fn, signature, constexprs, attrs, target, options)`: `triton.compile` of a
  @triton.jit or @gluon.jit function (ASTSource or GluonASTSource), for `target` (default sm_90a);
  refuses under TRITON_INTERPRET=1, where kernels cannot be compiled.
- `divisible_by_16(signature, names)`: the `tt.divisibility` attributes the JIT gives 16-byte
  aligned pointers and multiples of 16.
- `cuobjdump(cubin, flag)`, `resource_usage(cubin)` (REG / STACK / SHARED / LOCAL), `sass_ops(sass)`
  (instruction counts), `ptx_param_count(ptx, name)`: read with the cuobjdump in triton's wheel.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

SM90 = ("cuda", 90, 32)  # H100 / H200: Triton compiles sm_90a for it (wgmma, TMA, setmaxnreg)


def sm90_target():
    from triton.backends.compiler import GPUTarget
    return GPUTarget(*SM90)


def tool(name: str) -> str:
    """Path of a CUDA binary shipped in triton's wheel (cuobjdump, ptxas, nvdisasm)."""
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def refuse_interpreted(fn) -> None:
    """RuntimeError when `fn` was decorated under TRITON_INTERPRET=1 (it cannot be compiled)."""
    from . import common
    if common.is_interpreted(fn):
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} was defined under TRITON_INTERPRET=1, where kernels "
                           "cannot be compiled for a GPU: run without it (a fresh process)")


def compile_kernel(fn, signature: dict, constexprs: dict | None = None, attrs: dict | None = None, target=None,
                   options: dict | None = None):
    """triton.compile of a @triton.jit or @gluon.jit function for `target` (a GPUTarget; None: sm_90a).
    signature: {argument: type} in the kernel's parameter order ("*bf16", "i32", "constexpr", ...);
    constexprs: their values; attrs: {(index,): [["tt.divisibility", 16]]}; options: num_warps,
    num_stages, num_ctas, maxnreg. Returns Triton's CompiledKernel (.asm["ttgir"/"ptx"/"cubin"],
    .metadata)."""
    import triton
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

    refuse_interpreted(fn)
    source = GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource
    src = source(fn, signature, constexprs or {}, attrs or {})
    return triton.compile(src, target=target or sm90_target(), options=options or {})


def divisible_by_16(signature: dict, names) -> dict:
    """The `tt.divisibility` 16 attributes of the arguments `names` (16-byte aligned pointers, strides
    that are multiples of 16), keyed by their index in `signature`."""
    names = set(names)
    unknown = names - set(signature)
    if unknown:
        raise ValueError(f"no argument(s) {sorted(unknown)} in the signature {list(signature)}")
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in names}


def _cubin(compiled_or_cubin) -> bytes:
    if isinstance(compiled_or_cubin, (bytes, bytearray)):
        return bytes(compiled_or_cubin)
    return compiled_or_cubin.asm["cubin"]


def cuobjdump(compiled_or_cubin, flag: str) -> str:
    """cuobjdump `flag` (--dump-sass, --dump-resource-usage) on a cubin or a compiled kernel's cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(_cubin(compiled_or_cubin))
        return subprocess.run([tool("cuobjdump"), flag, str(path)], capture_output=True, text=True,
                              check=True).stdout


def resource_usage(compiled_or_cubin) -> dict:
    """{"reg", "stack", "shared", "local"} of the cubin's one kernel (shared: the static part; a
    Triton kernel's dynamic shared memory is in its metadata.shared)."""
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", cuobjdump(compiled_or_cubin, "--dump-resource-usage")))
    return {k.lower(): int(found.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}


def sass_ops(sass: str) -> Counter:
    """Instruction counts of a SASS listing by opcode (HGMMA, STL, UTMALDG, ...; predicates ignored)."""
    ops = Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", line)
        if m:
            ops[m.group(1)] += 1
    return ops


def ptx_param_count(ptx: str, name: str) -> int:
    """Parameters of the .entry `name` in the PTX (the kernel's runtime arguments plus Triton's
    scratch pointers)."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise ValueError(f"no .entry {name} in the PTX")
    return len(re.findall(r"\.param\s", m.group(1)))
