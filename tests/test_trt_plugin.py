"""export/trt_plugin.py against NVIDIA's real plugin layer (tensorrt.plugin from the
tensorrt-cu12-bindings wheel), with the native module stood in (tests/trt_standin.py says exactly
what the stand-in provides). tests/trt_standin.build_kernel plays TensorRT's builder: creator ->
plugin -> get_output_data_types -> get_output_shapes -> set_tactic -> get_launch_params ->
get_kernel. The kernel is compiled for sm_90a without a GPU (as kernels/report.py does), in a
subprocess: tests/conftest.py sets TRITON_INTERPRET=1, under which nothing compiles."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import trt_standin

pytest.importorskip("triton")
if trt_standin.bindings_plugin_dir() is None:
    pytest.skip("needs NVIDIA's plugin layer: pip install tensorrt-cu12-bindings", allow_module_level=True)

H100_SHARED_PER_BLOCK = 232448  # 227 KiB opt-in shared memory per block on sm_90


def compile_in_subprocess(dtype: str, head_dim: int, scale: float, allow_tf32: bool, B: int, N: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, trt_standin.__file__, dtype, str(head_dim), repr(scale),
                           "1" if allow_tf32 else "0", str(B), str(N)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plugin_registers_and_aot_impl_compiles_for_sm90a():
    from infgen.kernels.attention import pick_config
    D, B, N = 512, 2, 4096 + 7
    r = compile_in_subprocess("bfloat16", D, 1 / math.sqrt(D), False, B, N)
    assert r["fields"] == ["scale"] and r["out_types"] == ["BF16"]
    assert r["out_shape"] == [B, N, D]  # like q
    # launch: grid (cdiv(N, BLOCK_M), B), block num_warps * 32, shared memory from the compile
    BM, _, warps, _ = pick_config(D, torch.device("cuda"))
    lp = r["launch"]
    assert (lp["grid_x"], lp["grid_y"], lp["grid_z"]) == (math.ceil(N / BM), B, 1)
    assert (lp["block_x"], lp["block_y"], lp["block_z"]) == (warps * 32, 1, 1)
    assert 0 < lp["shared_mem"] <= H100_SHARED_PER_BLOCK
    assert r["extra"] == [[N, "INT32"]]  # one extra int32 argument: N
    # PTX for sm_90a, tensor-core dots; its entry has TensorRT's 5 arguments (q, k, v, N, o) plus
    # the 2 scratch pointers Triton >= 3.3 appends (global_scratch, profile_scratch)
    assert r["sm_90a"] and r["mma"]
    from infgen.export.trt_plugin import TRT_ARG_COUNT
    assert r["ptx_params"] == TRT_ARG_COUNT + 2
    # TensorRT passes only its 5: the kernel must never read the scratch pointers (sizes 0)
    assert r["scratch"] == [0, 0]


def test_fp32_uses_exact_dots_unless_tf32_is_allowed():
    assert not compile_in_subprocess("float32", 64, 0.125, False, 1, 100)["tf32"]
    assert compile_in_subprocess("float32", 64, 0.125, True, 1, 100)["tf32"]


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
    from infgen.export import trt_plugin
    with pytest.raises(ValueError, match="head dim 1..512, got 640"):
        trt_plugin.compile_entry("*bf16", 640, 0.1)
    with pytest.raises(ValueError, match="'\\*i8'"):
        trt_plugin.compile_entry("*i8", 64, 0.1)
