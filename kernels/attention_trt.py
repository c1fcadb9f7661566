"""The flash-attention kernel as TensorRT's AOT plugin launches it (export/trt_plugin.py,
infgen::FlashAttention): one head, contiguous (B, N, D), the arguments TensorRT passes, tiles that
fit TensorRT's launch. Here, below export/, so that the compile report (benchmarks/compile_report.py) checks
the very kernel the plugin hands TensorRT.

Kernel arguments as TensorRT's AOT launcher passes them: input pointers (q, k, v), the extra
int32 scalars of the plugin's aot_impl (N), output pointers (o). The entry kernel is module level
(Triton resolves `tl` in the function's module globals).
"""
import triton
import triton.language as tl

from infgen.kernels.attention import LOG2E, MAX_HEAD_DIM, attn_fwd_kernel

ENTRY = "the TensorRT flash-attention entry"


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
    Q_RELOAD: tl.constexpr,     # load the q tile for every key tile (registers) instead of holding it
):
    """Grid (cdiv(N, BLOCK_M), B): attn_fwd_kernel with H = 1 and contiguous strides."""
    # The batch stride N * D in int64: in int32 it wraps at N * D >= 2^31, e.g. 2048 x 2048 tokens
    # x 512 (a 16384^2 decode), and batch 1 would then read batch 0's rows.
    stride_b = N.to(tl.int64) * HEAD_DIM
    attn_fwd_kernel(Q, K, V, O,
                    stride_b, 0, HEAD_DIM,   # q strides (batch, head, row)
                    stride_b, 0, HEAD_DIM,   # k
                    stride_b, 0, HEAD_DIM,   # v
                    stride_b, 0, HEAD_DIM,   # o
                    1, N, N, QK_SCALE, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, DOT_PRECISION, False,
                    Q_RELOAD=Q_RELOAD)


# Triton pointer types per TensorRT data type name (trt.DataType member names).
POINTER_TYPES = {"BF16": "*bf16", "HALF": "*fp16", "FLOAT": "*fp32"}
# Arguments TensorRT passes, in order: 3 inputs, 1 extra int32, 1 output.
TRT_ARG_COUNT = 5
# Dynamic shared memory TensorRT's AOT launch may use: 48 KiB, CUDA's limit for a launch that has
# not opted in (cudaFuncAttributeMaxDynamicSharedMemorySize), which nothing NVIDIA documents about
# the AOT launcher says it does (docs/export.md, "Shared memory").
TRT_SHARED_LIMIT = 49152
# Tiles of the entry, [fp32][head-dim bucket] -> (BLOCK_M, BLOCK_N, num_warps, num_stages, q_reload):
# each compiles for sm_90a without spills in at most TRT_SHARED_LIMIT bytes of shared memory,
# triton 3.6 and 3.9 (benchmarks/compile_report.py, "plugin" rows). bf16/fp16 up to 128 use wgmma; at
# 256 and 512 the q tile alone would pass 48 KiB at wgmma's 64 rows, so these are mma.sync tiles
# that load q again for every key tile (q_reload: held in registers, q spills at D = 512).
# fp32 (exact FMA dots) stops at head dim 128: its q, k and v tiles at 256 already fill 48 KiB.
TRT_CONFIGS = {
    False: {64: (64, 64, 4, 2, False), 128: (64, 32, 4, 1, False), 256: (32, 32, 8, 1, True),
            512: (16, 16, 8, 1, True)},
    True: {64: (32, 32, 8, 1, True), 128: (16, 16, 8, 1, True)},
}


def trt_config(head_dim: int, ptr_type: str) -> tuple[int, int, int, int, bool]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, q_reload) of the TensorRT entry for a head dim and pointer type."""
    bucket = max(64, triton.next_power_of_2(head_dim))
    configs = TRT_CONFIGS[ptr_type == "*fp32"]
    if bucket not in configs:
        raise ValueError(f"{ENTRY} in fp32 supports head dims up to {max(configs)} (its tiles must fit in "
                         f"TensorRT's {TRT_SHARED_LIMIT} B of shared memory), got {head_dim}; build the engine "
                         "from a bf16/fp16 export, or from the standard-op ONNX (flavour onnxruntime)")
    return configs[bucket]


def compile_entry(ptr_type: str, head_dim: int, scale: float, target=None, allow_tf32: bool = False,
                  config: tuple | None = None):
    """triton.compile of trt_flash_entry for one dtype and head dim, as TensorRT launches it: the
    pointers 16-byte aligned (`tt.divisibility` 16; TensorRT allocates tensors 256-byte aligned),
    N of any value. target: a triton.backends.compiler.GPUTarget (None: the active GPU); config:
    (BLOCK_M, BLOCK_N, num_warps, num_stages, q_reload), default trt_config. Returns (Triton's compiled
    kernel, BLOCK_M), the grid's first axis being cdiv(N, BLOCK_M)."""
    from .toolchain import compile_kernel, divisible_by_16
    if ptr_type not in POINTER_TYPES.values():
        raise ValueError(f"{ENTRY} supports {sorted(POINTER_TYPES.values())}, got {ptr_type!r}")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{ENTRY} supports head dim 1..{MAX_HEAD_DIM}, got {head_dim}")
    BM, BN, warps, stages, q_reload = config or trt_config(head_dim, ptr_type)
    consts = {"QK_SCALE": float(scale) * LOG2E, "HEAD_DIM": head_dim, "BLOCK_M": BM, "BLOCK_N": BN,
              "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
              "DOT_PRECISION": "tf32" if allow_tf32 else "ieee", "Q_RELOAD": bool(q_reload)}
    sig = {"Q": ptr_type, "K": ptr_type, "V": ptr_type, "N": "i32", "O": ptr_type,
           **{c: "constexpr" for c in consts}}
    if target is None:  # the active GPU (the plugin's aot_impl at engine build)
        from triton.runtime import driver
        target = driver.active.get_current_target()
    compiled = compile_kernel(trt_flash_entry, sig, consts, divisible_by_16(sig, ("Q", "K", "V", "O")), target,
                              {"num_warps": warps, "num_stages": stages})
    return compiled, BM
