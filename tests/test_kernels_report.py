"""The sm_90a compile report (infgen.kernels.report): every configuration the runtime picks, at every dtype
the engine accepts, compiles for Hopper, fits, has no spill stores and (attention) uses HGMMA; the
benchmark sweeps list only configurations that fit. Compiles run without a GPU, in a subprocess:
tests/conftest.py sets TRITON_INTERPRET=1, under which kernels cannot be compiled."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infgen.kernels import report
from infgen.kernels.attention import CUDA_CONFIGS, SWEEP_CONFIGS, uses_kernel
from infgen.kernels.attention_d512 import RUNTIME_CONFIGS as D512_RUNTIME, SWEEP_CONFIGS as D512_SWEEP

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One report run over the default entries (runtime, sweep, plugin; a few minutes on 2 shared cores)."""
    out = tmp_path_factory.mktemp("report")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "infgen.kernels.report", "--out-dir", str(out), "--jobs", "2",
                           "--check"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    data = json.loads((out / "compile_report.json").read_text())
    return proc, data, (out / "compile_report.md").read_text()


def test_every_runtime_and_plugin_configuration_compiles_fits_and_does_not_spill(compiled):
    proc, data, _ = compiled
    rows = [r for r in data["rows"] if {"runtime", "plugin"} & set(r["used_by"])]
    assert {r["kernel"] for r in rows} == {"attn_fwd_kernel", "attn_d512_kernel", "trt_flash_entry", "gn_stats_kernel",
                                         "gn_apply_kernel", "inpe_kernel"}
    bad = [(r["kernel"], r["config"], r["dtype"], r.get("error"), r.get("spill_stores"), r.get("mma"))
           for r in rows if not (r["ok"] and r["fits"] and r["spill_stores"] == 0
                                 and r["spill_store_bytes"] == 0 and r["shared"] <= report.SHARED_PER_BLOCK
                                 and (r["hgmma"] > 0 or not r["expect_hgmma"]))]
    assert not bad, bad
    assert proc.returncode == 0 and data["problems"] == [], (proc.stdout[-3000:], proc.stderr[-3000:])


def test_attention_uses_hgmma_at_every_tile_the_runtime_picks(compiled):
    """Every head-dim bucket's tile at bf16 and fp16, with the queries pre-scaled as the triton
    backend launches it, is in the report and uses wgmma; so does the scores-once d512 kernel the
    backend picks on sm_90 (d512_applies); fp32 on CUDA is not launched (torch SDPA), so it has
    no runtime row."""
    _, data, _ = compiled
    attn = [r for r in data["rows"] if r["kernel"] == "attn_fwd_kernel" and "runtime" in r["used_by"]]
    for D, (BM, BN, W, S) in CUDA_CONFIGS.items():
        for dt in ("bf16", "fp16"):
            rows = [r for r in attn if r["dtype"] == dt and r["config"] == f"d{D} {BM}x{BN} w{W} s{S} q_prescaled"]
            assert rows and all(r["hgmma"] > 0 and r["mma"] == "HGMMA" for r in rows), (D, dt, rows)
    assert not uses_kernel(torch.float32, torch.device("cuda"))
    assert not [r for r in attn if r["dtype"] == "fp32"]
    d512 = [r for r in data["rows"] if r["kernel"] == "attn_d512_kernel" and "runtime" in r["used_by"]]
    for cfg in D512_RUNTIME:
        for dt in ("bf16", "fp16"):
            rows = [r for r in d512 if r["dtype"] == dt
                    and r["config"] == f"d512 64x{cfg.block_n} s{cfg.stages} w4+4+1 q_prescaled"]
            assert rows and all(r["hgmma"] > 0 and r["mma"] == "HGMMA" and r["spill_stores"] == 0
                                for r in rows), (cfg, dt, rows)


def test_every_dtype_of_groupnorm_and_inpe_is_covered(compiled):
    _, data, _ = compiled
    for kernel in ("gn_stats_kernel", "gn_apply_kernel", "inpe_kernel"):
        dts = {r["dtype"] for r in data["rows"] if r["kernel"] == kernel and "runtime" in r["used_by"]}
        assert dts == {"fp32", "bf16", "fp16"}, (kernel, dts)


def test_sweeps_list_only_configurations_that_fit(compiled):
    _, data, _ = compiled
    sweep = [r for r in data["rows"] if "sweep" in r["used_by"]]
    tl_sweep = [r for r in sweep if r["kernel"] == "attn_fwd_kernel"]
    assert len(tl_sweep) == sum(len(v) for v in SWEEP_CONFIGS.values())
    d512_sweep = [r for r in sweep if r["kernel"] == "attn_d512_kernel"]
    assert len(d512_sweep) == len(D512_SWEEP)
    too_big = [(r["config"], r.get("error")) for r in sweep if not (r["ok"] and r["fits"])]
    assert not too_big, too_big
    # the cross-attention tiles are swept
    configs = {r["config"] for r in sweep}
    assert {"d64 128x128 w8 s3", "d64 256x64 w8 s3"} <= configs


def test_markdown_has_a_row_per_entry(compiled):
    _, data, md = compiled
    assert f"triton {data['env']['triton']}" in md and "Nothing ran on a GPU" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    assert len(table_rows) == len(data["rows"])


def test_jit_signature_matches_tritons_own_specialisation():
    """jit_type gives what Triton's JIT gives the same arguments (its native specialiser)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError as exc:  # a Triton without the native specialiser: nothing to compare with
        pytest.skip(f"triton has no native_specialize_impl: {exc}")
    from triton.tools.tensor_descriptor import TensorDescriptor
    base = torch.empty(3, 7, 64, device="meta", dtype=torch.bfloat16)
    values = [1, 0, 16, 17, -32, 2**31, 2**31 + 16, 0.5, True, base, base[1:], base[:, :, 8:],
              base.float(), TensorDescriptor(base, [3, 7, 64], [448, 64, 1], [1, 16, 64])]
    for v in values:
        typ, spec = native_specialize_impl(BaseBackend, v, False, True, True)[:2]
        assert report.jit_type(v) == (typ, spec == "D"), v


def test_blocks_per_sm_counts_registers_shared_memory_and_warps():
    # registers: 64 per thread x 128 threads = 8,192 per block -> 8 blocks in 65,536
    assert report.blocks_per_sm(64, 4, 0) == 8
    # 255 registers round up to 256 per thread: 8 warps x 32 x 256 = the whole register file
    assert report.blocks_per_sm(255, 8, 0) == 1
    # shared memory: 100 KiB + the 1 KiB reserved per block -> 2 blocks in 228 KiB
    assert report.blocks_per_sm(32, 4, 100 * 1024) == 2
    # warps: 16 registers x 32 warps -> registers allow 4 blocks, 64 warps per SM allow 2
    assert report.blocks_per_sm(16, 32, 0) == 2


def test_a_failing_entry_is_a_row_saying_why():
    """The report records a compile failure instead of stopping (here: a kernel imported under
    the interpreter cannot be compiled, and says so)."""
    from infgen.kernels.attention import attn_fwd_kernel
    from infgen.kernels.common import Launch

    def fails():
        return report.compile_launch(Launch(attn_fwd_kernel, (1,), {}, {}))

    if type(attn_fwd_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernels were not imported under TRITON_INTERPRET=1 (a GPU machine)")
    row = report.run_entry(report.Entry("attn_fwd_kernel", "test", "none", "bf16", ("runtime",), fails))
    assert not row["ok"] and not row["fits"] and "TRITON_INTERPRET" in row["error"]
    assert report.check([row]) == [f"attn_fwd_kernel none bf16 (test): {row['error']}"]


def test_the_report_refuses_to_run_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "infgen.kernels.report", "--used-by", "option", "--out-dir", "unused"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TRITON_INTERPRET is set" in proc.stderr
