"""export/trt_plugin.py against NVIDIA's real plugin layer (tensorrt.plugin from the
tensorrt-cu12-bindings wheel), with the native module stood in (tests/trt_standin.py says exactly
what the stand-in provides). tests/trt_standin.build_kernel plays TensorRT's builder: creator ->
plugin -> get_output_data_types -> get_output_shapes -> set_tactic -> get_launch_params ->
get_kernel. The kernel is compiled for sm_90a without a GPU (as benchmarks/compile_report.py does), in a
subprocess: tests/conftest.py sets TRITON_INTERPRET=1, under which nothing compiles."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import trt_standin

pytest.importorskip("triton")
if trt_standin.bindings_plugin_dir() is None:
    pytest.skip("needs NVIDIA's plugin layer: pip install tensorrt-cu12-bindings", allow_module_level=True)

def compile_in_subprocess(dtypes: str, head_dims: str, scale: float, allow_tf32: bool, B: int, N: int) -> list[dict]:
    """What aot_impl hands TensorRT for each dtype x head dim (comma-separated lists), one dict each."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, trt_standin.__file__, dtypes, head_dims, repr(scale),
                           "1" if allow_tf32 else "0", str(B), str(N)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def every_kernel():
    """The kernel of every dtype x head-dim bucket the plugin may be asked for, B = 2, N = 4103."""
    rows = compile_in_subprocess("bfloat16,float16,float32", "64,128,256,512", 1 / 8, False, 2, 4103)
    return {(r["dtype"], r["head_dim"]): r for r in rows}


def test_plugin_registers_and_aot_impl_compiles_for_sm90a(every_kernel):
    from infgen.kernels.attention_trt import trt_config
    D, B, N = 512, 2, 4103
    r = every_kernel["bfloat16", D]
    assert r["fields"] == ["scale"] and r["out_types"] == ["BF16"]
    assert r["out_shape"] == [B, N, D]  # like q
    # launch: grid (cdiv(N, BLOCK_M), B), block num_warps * 32, shared memory from the compile
    BM, _, warps, _, _ = trt_config(D, "*bf16")
    lp = r["launch"]
    assert (lp["grid_x"], lp["grid_y"], lp["grid_z"]) == (math.ceil(N / BM), B, 1)
    assert (lp["block_x"], lp["block_y"], lp["block_z"]) == (warps * 32, 1, 1)
    assert lp["shared_mem"] == r["shared"] > 0
    assert r["extra"] == [[N, "INT32"]]  # one extra int32 argument: N
    assert r["sm_90a"] and r["mma"] and r["usage"]["mma"] == "HMMA"  # PTX for sm_90a, tensor-core dots


def test_the_ptx_tensorrt_gets_declares_exactly_the_arguments_it_passes(every_kernel):
    """TensorRT passes q, k, v, N, o; Triton >= 3.3 declares 2 more (its scratch pointers), which
    aot_impl removes from the PTX (the body never names them). The PTX assembles (ptxas)."""
    from infgen.kernels.attention_trt import TRT_ARG_COUNT
    for dtype in ("bfloat16", "float16", "float32"):
        for D in (64, 512) if dtype != "float32" else (64, 128):
            r = every_kernel[dtype, D]
            assert r["ptx_params"] == TRT_ARG_COUNT == 5, (dtype, D)
            assert r["triton_ptx_params"] in (5, 7), (dtype, D)
            assert r["scratch"] == [0, 0]
            assert r["usage"]["regs"] > 0  # assembled from the rewritten PTX


def test_every_accepted_kernel_fits_48k_of_shared_memory_without_spills(every_kernel):
    """No documented part of TensorRT's AOT launch opts in to more than 48 KiB of dynamic shared
    memory (docs/export.md): every kernel the plugin accepts stays within it, Triton's dynamic
    allocation and the cubin's static shared memory together, and spills nothing."""
    from infgen.kernels.attention_trt import TRT_SHARED_LIMIT
    assert TRT_SHARED_LIMIT == 49152
    accepted = [(dt, D) for dt in ("bfloat16", "float16") for D in (64, 128, 256, 512)]
    accepted += [("float32", 64), ("float32", 128)]
    for key in accepted:
        r = every_kernel[key]
        assert "error" not in r, (key, r.get("error"))
        assert r["shared"] <= TRT_SHARED_LIMIT and r["usage"]["shared"] <= TRT_SHARED_LIMIT, (key, r["usage"])
        assert r["launch"]["shared_mem"] == r["shared"]
        assert r["usage"]["stack"] == 0 and r["usage"]["stl"] == 0, (key, r["usage"])
    for D in (64, 128):  # bf16/fp16 at these head dims keep wgmma
        assert every_kernel["bfloat16", D]["usage"]["mma"] == "HGMMA"
    for D in (256, 512):  # fp32 tiles would pass 48 KiB: refused with the way out
        assert "supports head dims up to 128" in every_kernel["float32", D]["error"]
        assert "bf16/fp16" in every_kernel["float32", D]["error"]


def test_batch_offset_is_computed_in_int64(every_kernel):
    """The batch stride N * D is formed in int64 (in int32 it wraps at 2048 x 2048 tokens x 512 =
    2^31 and batch 1 reads batch 0): in the entry's TTIR, N is sign-extended to i64 before it is
    multiplied, and no i32 product of N exists."""
    for key in (("bfloat16", 512), ("bfloat16", 64), ("float32", 64)):
        ttir = every_kernel[key]["ttir"]
        sig = re.search(r"tt\.func public @trt_flash_entry\((.*?)\) attributes", ttir, re.S)
        n_arg = re.findall(r"(%[\w.]+): ", sig.group(1))[3]  # q, k, v, N, o
        assert re.search(r"(^|,\s*)" + re.escape(n_arg) + r"\s*:\s*i32", sig.group(1)), sig.group(1)
        ext = re.findall(r"(%[\w.]+) = arith\.extsi " + re.escape(n_arg) + r" : i32 to i64", ttir)
        assert ext, key
        D = key[1]
        d64 = re.findall(r"(%[\w.]+) = arith\.constant " + str(D) + r" : i64", ttir)  # D as an i64 constant
        products = [line for line in ttir.splitlines() if re.search(r"= arith\.muli .*: i64", line)
                    and re.search(re.escape(ext[0]) + r"\b", line) and any(re.search(re.escape(c) + r"\b", line)
                                                                         for c in d64)]
        assert products, key  # N (int64) * D
        assert not re.search(r"arith\.muli [^\n]*" + re.escape(n_arg) + r"\b[^\n]*: i32", ttir), key


def test_fp32_uses_exact_dots_unless_tf32_is_allowed(every_kernel):
    assert not every_kernel["float32", 64]["tf32"] and not every_kernel["float32", 128]["tf32"]
    tf32 = compile_in_subprocess("float32", "64,128", 0.125, True, 1, 100)
    assert all(r["tf32"] and r["shared"] <= 49152 and r["ptx_params"] == 5 for r in tf32), tf32


def test_drop_unused_params_refuses_a_kernel_that_reads_a_scratch_pointer():
    from infgen.export.trt_plugin import drop_unused_params
    from infgen.kernels.toolchain import ptx_param_count
    decl = ",\n".join(f"\t.param .u64 .ptr .global .align 1 k_param_{i}" for i in range(7))
    ptx = f".version 8.7\n.target sm_90a\n.visible .entry k(\n{decl}\n)\n{{\n\tld.param.b64 %rd1, [k_param_0];\n\tret;\n}}\n"
    out = drop_unused_params(ptx, "k")
    assert ptx_param_count(out, "k") == 5 and "k_param_5" not in out and "ld.param.b64 %rd1, [k_param_0]" in out
    for use in ("ld.param.b64 %rd2, [k_param_6];", "mov.u64 %rd3, k_param_5;"):
        with pytest.raises(ValueError, match="k_param_[56].*does not pass"):
            drop_unused_params(ptx.replace("\tret;", f"\t{use}\n\tret;"), "k")
    # k_param_50 is not k_param_5
    assert ptx_param_count(drop_unused_params(ptx.replace("k_param_0]", "k_param_50]"), "k"), "k") == 5


@pytest.mark.parametrize("D", [64, 512])
def test_entry_matches_reference_in_the_interpreter(D):
    """trt_flash_entry with the plugin's own tiles (at D = 512: 16 x 16, q loaded for every key
    tile), run by Triton's interpreter on fp32 CPU tensors: B = 2, ragged N = 97, against float64."""
    from infgen.kernels import attention_trt as trt_plugin
    from infgen.kernels.attention import LOG2E, attention_ref
    if type(trt_plugin.trt_flash_entry).__name__ != "InterpretedFunction":
        pytest.skip("needs TRITON_INTERPRET=1 before import (tests/conftest.py sets it)")
    torch.manual_seed(0)
    B, N, scale = 2, 97, D ** -0.5
    q, k, v = (torch.randn(B, N, D) for _ in range(3))
    o = torch.full_like(q, float("nan"))
    BM, BN, _, _, q_reload = trt_plugin.trt_config(D, "*bf16")
    trt_plugin.trt_flash_entry[(math.ceil(N / BM), B)](
        q, k, v, N, o, QK_SCALE=scale * LOG2E, HEAD_DIM=D, BLOCK_M=BM, BLOCK_N=BN,
        BLOCK_D=triton_next_pow2(D), DOT_PRECISION="ieee", Q_RELOAD=q_reload)
    ref = attention_ref(*(t.double()[:, None] for t in (q, k, v)), scale)[:, 0]
    assert (o.double() - ref).abs().max() < 1e-4


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@pytest.fixture
def registered(monkeypatch):
    """The stand-in tensorrt with infgen::FlashAttention registered (no compile happens)."""
    from infgen.export import trt_plugin
    trt_standin.install(monkeypatch)
    monkeypatch.setattr(trt_plugin, "_registered", False)
    monkeypatch.setattr(trt_plugin, "_settings", dict(trt_plugin._settings))
    trt_plugin.register()
    import tensorrt as trt
    return trt


def test_aot_impl_rejects_symbolic_head_dim_and_bad_dtype(registered):
    trt = registered
    symbolic = [trt.IDimensionExpr(name="B"), trt.IDimensionExpr(name="N"), trt.IDimensionExpr(name="D")]
    with pytest.raises(ValueError, match="constant head dim"):
        trt_standin.build_kernel(trt, trt.bfloat16, 64, 0.1, dims=symbolic)
    with pytest.raises(ValueError, match="supports bf16, fp16 and fp32"):
        trt_standin.build_kernel(trt, trt.int32, 64, 0.1)


def test_compile_entry_rejects_bad_arguments():
    from infgen.kernels import attention_trt as trt_plugin
    with pytest.raises(ValueError, match="head dim 1..512, got 640"):
        trt_plugin.compile_entry("*bf16", 640, 0.1)
    with pytest.raises(ValueError, match="'\\*i8'"):
        trt_plugin.compile_entry("*i8", 64, 0.1)
    with pytest.raises(ValueError, match="fp32 supports head dims up to 128.*got 512"):
        trt_plugin.compile_entry("*fp32", 512, 0.1)
