"""TensorRT plugin infgen::FlashAttention: the project's Triton flash kernel, compiled ahead of time.

Node: q, k, v (B, N, D) -> o (B, N, D), attribute scale; one head, D <= 512, contiguous.
Registered with TensorRT's Python plugin API (`tensorrt.plugin`, TensorRT >= 10.9): `register`
describes the output (like q); `aot_impl` compiles `trt_flash_entry` (kernels/attention_trt.py) at
engine-build time and returns (kernel name, PTX, launch params, extra scalar args), which
TensorRT embeds in the engine, so running the engine needs no Python.

This module uses real annotations on purpose (no `from __future__ import annotations`): NVIDIA's
validator calls issubclass() on each annotation and needs the return annotation of aot_impl.
The entry kernel is module level (Triton resolves `tl` in the function's module globals).

Kernel arguments as TensorRT's AOT launcher passes them: input pointers (q, k, v), the extra
int32 scalars of aot_impl (N), output pointers (o). Triton >= 3.3 appends two more pointer
parameters to every kernel (global_scratch, profile_scratch), which TensorRT does not pass, so
aot_impl hands TensorRT the PTX with those two declarations removed, after checking that the
body never names them (`drop_unused_params`); a kernel that needs scratch memory is refused
(docs/export.md, "The scratch pointers"). The launch stays within 48 KiB of dynamic shared
memory, as no documented part of TensorRT's AOT launch opts in to more (TRT_SHARED_LIMIT).
"""
import re
import typing

from infgen.export.spec import PLUGIN_ID
from infgen.kernels.attention_trt import POINTER_TYPES, TRT_ARG_COUNT, TRT_SHARED_LIMIT, compile_entry


def drop_unused_params(ptx: str, kernel_name: str, keep: int = TRT_ARG_COUNT) -> str:
    """The PTX with the .entry kernel_name declaring only its first `keep` parameters. Triton >= 3.3
    appends two pointer parameters (global_scratch, profile_scratch) that TensorRT's AOT launch does
    not pass; they are dropped only when the PTX never names them after the declaration (no
    ld.param, no address taken), so the kernel is unchanged. Raises ValueError when it does."""
    m = re.search(r"(\.entry\s+" + re.escape(kernel_name) + r"\s*\()(.*?)(\))", ptx, re.S)
    if m is None:
        raise ValueError(f"no .entry {kernel_name!r} in the PTX")
    params = [p.strip() for p in m.group(2).split(",")]
    if len(params) < keep:
        raise ValueError(f"{kernel_name} declares {len(params)} parameters, fewer than the {keep} TensorRT passes")
    body = ptx[m.end():]
    for decl in params[keep:]:
        name = decl.split()[-1]
        if re.search(r"(?<![\w$])" + re.escape(name) + r"(?![\w$])", body):
            raise ValueError(f"{PLUGIN_ID}: {kernel_name} reads its parameter {name} ({decl!r}), which TensorRT's "
                             f"AOT launch does not pass (it passes {keep}: q, k, v, N, o); the kernel needs "
                             "Triton's scratch memory and cannot run as a TensorRT AOT plugin")
    header = m.group(1) + "\n\t" + ",\n\t".join(params[:keep]) + "\n" + m.group(3)
    return ptx[:m.start()] + header + body


def trt_kernel(compiled) -> tuple[str, str]:
    """(kernel name, PTX) of a compiled trt_flash_entry as TensorRT must get it: exactly the
    TRT_ARG_COUNT parameters TensorRT passes. Raises ValueError when the kernel needs Triton's
    global or profile scratch memory, which TensorRT does not provide, or more than
    TRT_SHARED_LIMIT bytes of shared memory."""
    md = compiled.metadata
    scratch = {k: getattr(md, k, 0) or 0 for k in ("global_scratch_size", "profile_scratch_size")}
    if any(scratch.values()):
        raise ValueError(f"{PLUGIN_ID}: the compiled kernel needs Triton scratch memory {scratch}, "
                         "which TensorRT's AOT launch does not provide")
    if md.shared > TRT_SHARED_LIMIT:
        raise ValueError(f"{PLUGIN_ID}: the compiled kernel needs {md.shared} B of dynamic shared memory, over the "
                         f"{TRT_SHARED_LIMIT} B a launch may use without opting in (TRT_CONFIGS)")
    return md.name, drop_unused_params(compiled.asm["ptx"], md.name)


# Settings read by aot_impl at engine-build time (set by register()).
_settings = {"target": None, "allow_tf32": False}
_registered = False


def register(target=None, allow_tf32: bool = False) -> None:
    """Register infgen::FlashAttention with tensorrt.plugin (descriptors once per process; the
    settings are updated on every call). target: GPUTarget to compile for (None: the active GPU);
    allow_tf32: fp32 engines use tf32 dots in the plugin (default exact fp32, "ieee")."""
    global _registered
    _settings.update(target=target, allow_tf32=bool(allow_tf32))
    if _registered:
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp
    ptr_of = {getattr(trt.DataType, name): ptr for name, ptr in POINTER_TYPES.items()}

    @trtp.register(PLUGIN_ID)
    def flash_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.aot_impl(PLUGIN_ID)
    def flash_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, scale: float,
                  outputs: typing.Tuple[trtp.TensorDesc], tactic: int
                  ) -> typing.Tuple[typing.Union[str, bytes], typing.Union[str, bytes],
                                    trtp.KernelLaunchParams, trtp.SymIntExprs]:
        ptr = ptr_of.get(q.dtype)
        if ptr is None:
            raise ValueError(f"{PLUGIN_ID} supports bf16, fp16 and fp32, got {q.dtype}")
        B, N, D = q.shape_expr[0], q.shape_expr[1], q.shape_expr[2]
        if not D.is_constant:
            raise ValueError(f"{PLUGIN_ID} needs a build-time constant head dim (the last dim of q)")
        head_dim = D.constant_value()
        compiled, BM = compile_entry(ptr, head_dim, scale, _settings["target"], _settings["allow_tf32"])
        name, ptx = trt_kernel(compiled)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(N, BM)
        launch.grid_y = B
        launch.block_x = compiled.metadata.num_warps * 32
        launch.shared_mem = compiled.metadata.shared
        extra = trtp.SymIntExprs(1)
        extra[0] = trtp.SymInt32(N)
        return name, ptx, launch, extra

    _registered = True

