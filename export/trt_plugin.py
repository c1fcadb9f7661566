"""TensorRT plugin infgen::FlashAttention: the project's Triton flash kernel, compiled ahead of time.

Node: q, k, v (B, N, D) -> o (B, N, D), attribute scale; one head, D <= 512, contiguous.
Registered with TensorRT's Python plugin API (`tensorrt.plugin`, TensorRT >= 10.9): `register`
describes the output (like q); `aot_impl` compiles `trt_flash_entry` with triton.compile at
engine-build time and returns (kernel name, PTX, launch params, extra scalar args), which
TensorRT embeds in the engine, so running the engine needs no Python.

This module uses real annotations on purpose (no `from __future__ import annotations`): NVIDIA's
validator calls issubclass() on each annotation and needs the return annotation of aot_impl.
The entry kernel is module level (Triton resolves `tl` in the function's module globals).

Kernel arguments as TensorRT's AOT launcher passes them: input pointers (q, k, v), the extra
int32 scalars of aot_impl (N), output pointers (o). Triton >= 3.3 appends two more pointer
parameters to every kernel (global_scratch, profile_scratch), which TensorRT does not pass:
the launch reads two pointers past its argument array. That is harmless only while the kernel
never dereferences them, i.e. while Triton reports no global or profile scratch memory for it;
aot_impl refuses a kernel that needs either (docs/export.md, "The scratch pointers").
"""
import re
import typing

import triton
import triton.language as tl

from infgen.export.spec import PLUGIN_ID
from infgen.kernels.attention import LOG2E, MAX_HEAD_DIM, attn_fwd_kernel, pick_config


@triton.jit
def trt_flash_entry(
    Q, K, V,                    # pointers: q, k, v contiguous (B, N, D), one head
    N,                          # int32: sequence length (TensorRT's extra argument)
    O,                          # pointer: o (B, N, D)
    QK_SCALE: tl.constexpr,     # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,     # D
    BLOCK_M: tl.constexpr,      # query rows per program
    BLOCK_N: tl.constexpr,      # keys per inner step
    BLOCK_D: tl.constexpr,      # next power of two >= D
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" (fp32 inputs only; ignored for bf16/fp16)
):
    """Grid (cdiv(N, BLOCK_M), B): attn_fwd_kernel with H = 1 and contiguous strides."""
    attn_fwd_kernel(Q, K, V, O,
                    N * HEAD_DIM, 0, HEAD_DIM,   # q strides (batch, head, row)
                    N * HEAD_DIM, 0, HEAD_DIM,   # k
                    N * HEAD_DIM, 0, HEAD_DIM,   # v
                    N * HEAD_DIM, 0, HEAD_DIM,   # o
                    1, N, N, QK_SCALE, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION, False)


# Triton pointer types per TensorRT data type name (trt.DataType member names).
POINTER_TYPES = {"BF16": "*bf16", "HALF": "*fp16", "FLOAT": "*fp32"}
# Arguments TensorRT passes, in order: 3 inputs, 1 extra int32, 1 output.
TRT_ARG_COUNT = 5


def compile_entry(ptr_type: str, head_dim: int, scale: float, target=None, allow_tf32: bool = False):
    """triton.compile of trt_flash_entry for one dtype and head dim. target: a
    triton.backends.compiler.GPUTarget (None: the active GPU). Returns (Triton's compiled kernel,
    BLOCK_M), the grid's first axis being cdiv(N, BLOCK_M)."""
    from triton.compiler import ASTSource
    if ptr_type not in POINTER_TYPES.values():
        raise ValueError(f"{PLUGIN_ID} supports {sorted(POINTER_TYPES.values())}, got {ptr_type!r}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{PLUGIN_ID} supports head dim 1..{MAX_HEAD_DIM}, got {head_dim}")
    import torch
    BM, BN, warps, stages = pick_config(head_dim, torch.device("cuda"))
    consts = {"QK_SCALE": float(scale) * LOG2E, "HEAD_DIM": head_dim, "BLOCK_M": BM, "BLOCK_N": BN,
              "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
              "DOT_PRECISION": "tf32" if allow_tf32 else "ieee"}
    sig = {"Q": ptr_type, "K": ptr_type, "V": ptr_type, "N": "i32", "O": ptr_type,
           **{c: "constexpr" for c in consts}}
    src = ASTSource(fn=trt_flash_entry, signature=sig, constexprs=consts)
    kwargs = {"target": target} if target is not None else {}
    return triton.compile(src, options={"num_warps": warps, "num_stages": stages}, **kwargs), BM


def ptx_param_count(ptx: str, kernel_name: str) -> int:
    """Number of .param entries of the .entry kernel_name in a PTX text."""
    m = re.search(r"\.entry\s+" + re.escape(kernel_name) + r"\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise ValueError(f"no .entry {kernel_name!r} in the PTX")
    return len(re.findall(r"\.param\b", m.group(1)))


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
        scratch = {k: getattr(compiled.metadata, k, 0) or 0 for k in ("global_scratch_size", "profile_scratch_size")}
        if any(scratch.values()):
            raise ValueError(f"{PLUGIN_ID}: the compiled kernel needs Triton scratch memory {scratch}, "
                             "which TensorRT's AOT launch does not provide")
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(N, BM)
        launch.grid_y = B
        launch.block_x = compiled.metadata.num_warps * 32
        launch.shared_mem = compiled.metadata.shared
        extra = trtp.SymIntExprs(1)
        extra[0] = trtp.SymInt32(N)
        return compiled.metadata.name, compiled.asm["ptx"], launch, extra

    _registered = True

