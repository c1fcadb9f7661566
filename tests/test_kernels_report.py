"""The sm_90a compile report (benchmarks/compile_report.py): its entries are every configuration the runtime
picks, at every dtype the engine accepts, and every sweep configuration, each held to what its use
needs (check(): compiles, fits, no spill stores, HGMMA). Each entry is compiled once per CI run, by
.ci/run's full `--check` run under triton 3.6.0; this file compiles a sample (one entry per kernel
and use) on the installed triton, without a GPU, in a subprocess: tests/conftest.py sets
TRITON_INTERPRET=1, under which kernels cannot be compiled."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infgen.kernels.attention import CUDA_CONFIGS, SWEEP_CONFIGS, uses_kernel
from infgen.kernels.attention_d512 import RUNTIME_CONFIGS as D512_RUNTIME, SWEEP_CONFIGS as D512_SWEEP
from repo_scripts import load_script  # tests/repo_scripts.py

report = load_script("benchmarks/compile_report.py")

ROOT = Path(__file__).resolve().parents[1]


def sample(entries: list[report.Entry]) -> list[report.Entry]:
    """What the suite compiles: the first bf16 entry of each kernel and use (runtime, sweep,
    plugin, option), and the tl.dot kernel's head-dim-512 runtime row (the d512 fallback, with its
    byte/FLOP accounting). Every entry is compiled and checked once per CI run, by .ci/run's full
    `python benchmarks/compile_report.py --check` under triton 3.6.0 (test_ci_compiles_and_checks_every_entry)."""
    picked = {}
    for e in entries:
        if e.dtype == "bf16" and set(e.used_by) <= set(report.DEFAULT_USED_BY):
            picked.setdefault((e.kernel, e.used_by), e)
            if e.kernel == "attn_fwd_kernel" and e.used_by == ("runtime",) and e.config.startswith("d512 "):
                picked.setdefault("d512 fallback", e)
    return list(picked.values())


# Compiles the entries named in argv[1] in a subprocess (kernels imported without TRITON_INTERPRET), prints the rows.
COMPILE = """
import json, sys
sys.path.insert(0, "tests")
from repo_scripts import load_script
report = load_script("benchmarks/compile_report.py")
keys = {tuple(k) for k in json.loads(sys.argv[1])}
print(json.dumps(report.run_all([e for e in report.entries() if (e.kernel, e.site, e.config, e.dtype) in keys], 2)))
"""


@pytest.fixture(scope="module")
def compiled():
    """The sample compiled (about a dozen entries; under a minute on 2 shared cores): (rows, the
    report dict as main() writes it, its Markdown)."""
    keys = [(e.kernel, e.site, e.config, e.dtype) for e in sample(report.entries())]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(keys)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.splitlines()[-1])
    assert [(r["kernel"], r["site"], r["config"], r["dtype"]) for r in rows] == keys
    data = {"env": report.environment(), "wall_s": 0.0, "rows": rows, "problems": report.check(rows)}
    return rows, data, report.markdown(data)


def test_the_sample_compiles_fits_does_not_spill_and_uses_hgmma(compiled):
    """Each kernel and use has an entry in the sample; each compiles on this triton, fits, has no
    spill stores (ptxas's count: its log was read) and uses wgmma where expected; check() passes."""
    rows, data, _ = compiled
    assert {(r["kernel"], tuple(r["used_by"])) for r in rows} == {
        (e.kernel, e.used_by) for e in report.entries() if set(e.used_by) <= set(report.DEFAULT_USED_BY)}
    bad = [(r["kernel"], r["config"], r["dtype"], r.get("error"), r.get("spill_store_bytes"), r.get("mma"))
           for r in rows if not (r["ok"] and r["fits"] and r["spill_stores"] == 0
                                 and r["spill_store_bytes"] == 0 and r["shared"] <= report.SHARED_PER_BLOCK
                                 and (r["hgmma"] > 0 and r["mma"] == "HGMMA" or not r["expect_hgmma"]))]
    assert not bad, bad
    assert data["problems"] == []


def test_ci_compiles_and_checks_every_entry():
    """.ci/run compiles every default entry once, under triton 3.6.0, with --check: the gate for
    each configuration (this suite compiles only the sample)."""
    ci = (ROOT / ".ci" / "run").read_text()
    runs = [line for line in ci.splitlines() if "benchmarks/compile_report.py" in line and not line.lstrip().startswith("#")]
    assert len(runs) == 1 and "--check" in runs[0], runs
    assert "--used-by" not in runs[0] and "--kernel" not in runs[0], runs  # the default entries, all of them
    assert "triton==3.6.0" in ci


def test_entries_cover_every_kernel_and_are_checked_as_they_are_used():
    """Every kernel the runtime or the plugin launches has entries; no two entries share a key;
    every runtime/plugin attention entry is held to HGMMA except the plugin's fp32 and q_reload
    tiles (no fp32 wgmma; q_reload's second dot reads Q from registers)."""
    es = report.entries()
    keys = [(e.kernel, e.site, e.config, e.dtype) for e in es]
    assert len(set(keys)) == len(keys)
    used = [e for e in es if {"runtime", "plugin"} & set(e.used_by)]
    assert {e.kernel for e in used} == {"attn_fwd_kernel", "attn_d512_kernel", "trt_flash_entry", "gn_stats_kernel",
                                        "gn_apply_kernel", "add_stats_kernel", "inpe_kernel"}
    for e in used:
        want = (e.kernel in ("attn_fwd_kernel", "attn_d512_kernel")
                or e.kernel == "trt_flash_entry" and e.dtype != "fp32" and "q_reload" not in e.config)
        assert e.expect_hgmma == want, e


def test_attention_entries_are_every_tile_the_runtime_picks():
    """Every head-dim bucket's tile at bf16 and fp16, with the queries pre-scaled as the triton
    backend launches it, is a runtime entry held to HGMMA; so is the scores-once d512 kernel the
    backend picks on sm_90 (d512_applies); fp32 on CUDA is not launched (torch SDPA), so it has
    no runtime entry."""
    es = report.entries()
    attn = [e for e in es if e.kernel == "attn_fwd_kernel" and "runtime" in e.used_by]
    for D, (BM, BN, W, S) in CUDA_CONFIGS.items():
        for dt in ("bf16", "fp16"):
            hits = [e for e in attn if e.dtype == dt and e.config == f"d{D} {BM}x{BN} w{W} s{S} q_prescaled"]
            assert len(hits) == 1 and hits[0].expect_hgmma, (D, dt, hits)
    assert not uses_kernel(torch.float32, torch.device("cuda"))
    assert not [e for e in attn if e.dtype == "fp32"]
    d512 = [e for e in es if e.kernel == "attn_d512_kernel" and "runtime" in e.used_by]
    for cfg in D512_RUNTIME:
        for dt in ("bf16", "fp16"):
            hits = [e for e in d512 if e.dtype == dt
                    and e.config == f"d512 64x{cfg.block_n} s{cfg.stages} w4+4+1 q_prescaled"]
            assert len(hits) == 1 and hits[0].expect_hgmma, (cfg, dt, hits)


def test_every_dtype_of_groupnorm_and_inpe_is_covered():
    for kernel in ("gn_stats_kernel", "gn_apply_kernel", "add_stats_kernel", "inpe_kernel"):
        dts = {e.dtype for e in report.entries() if e.kernel == kernel and "runtime" in e.used_by}
        assert dts == {"fp32", "bf16", "fp16"}, (kernel, dts)


def test_every_sweep_configuration_is_an_entry():
    sweep = [e for e in report.entries() if "sweep" in e.used_by]
    assert len([e for e in sweep if e.kernel == "attn_fwd_kernel"]) == sum(len(v) for v in SWEEP_CONFIGS.values())
    assert len([e for e in sweep if e.kernel == "attn_d512_kernel"]) == len(D512_SWEEP)
    # the cross-attention tiles are swept
    assert {"d64 128x128 w8 s3", "d64 256x64 w8 s3"} <= {e.config for e in sweep}


def _row(**kw) -> dict:
    """A row as run_entry writes it: a runtime attention entry that compiles, fits, has no spills, uses HGMMA."""
    return {"kernel": "attn_fwd_kernel", "site": "s", "config": "c", "dtype": "bf16", "used_by": ["runtime"],
            "expect_hgmma": True, "ok": True, "fits": True, "spill_stores": 0, "spill_store_bytes": 0, "stack": 0,
            "hgmma": 8, "mma": "HGMMA", "shared": 1024, **kw}


def test_check_flags_each_way_an_entry_can_fail():
    """The gate CI's full run relies on: a runtime/plugin entry that fails to compile or to fit,
    spills, lacks HGMMA where expected or (plugin) needs more than TensorRT's 48 KiB, and a sweep
    entry that fails to fit, are each one problem; what is allowed is none."""
    allowed = [_row(), _row(kernel="trt_flash_entry", used_by=["plugin"]), _row(used_by=["sweep"], spill_stores=8),
               _row(expect_hgmma=False, hgmma=0, mma="none"), _row(used_by=["option"], spill_stores=64),
               _row(used_by=["rejected"], ok=False, fits=False, error="x")]
    assert report.check(allowed) == []
    bad = {"fails": _row(ok=False, fits=False, error="CompilationError: boom"),
           "too big": _row(fits=False, error="needs 300,000 B"),
           "spills": _row(spill_stores=16, spill_store_bytes=16),
           "no hgmma": _row(hgmma=0, mma="HMMA"),
           "trt shared": _row(kernel="trt_flash_entry", used_by=["plugin"], shared=report.TRT_SHARED_LIMIT + 1),
           "sweep too big": _row(used_by=["sweep"], fits=False, error="needs 300,000 B")}
    for name, row in bad.items():
        assert len(report.check([row])) == 1, name


def test_markdown_has_a_row_per_entry(compiled):
    _, data, md = compiled
    assert f"triton {data['env']['triton']}" in md and "Nothing ran on a GPU" in md
    entries_md = md.split("## Attention designs")[0]  # the designs table (accounting only) follows the entries
    table_rows = [line for line in entries_md.splitlines() if line.startswith("| ") and not line.startswith("| kernel")]
    assert len(table_rows) == len(data["rows"])


def test_d512_rows_state_bytes_per_flop_and_the_bound(compiled):
    """Each head-dim-512 row (the scores-once kernel, its pipelined option, the tl.dot fallback)
    carries the byte/FLOP accounting; the tl.dot row's score replication is read from its TTGIR
    (2), and the pipelined option leaves one wgmma group running past a wait (depth 1)."""
    _, data, md = compiled
    d512 = [r for r in data["rows"] if r["ok"] and (r["kernel"] == "attn_d512_kernel" or r["config"].startswith("d512"))]
    assert d512 and all(r["roofline"]["bound_tflops"] > 0 and r["roofline"]["limit"] for r in d512), d512
    tldot = [r for r in d512 if r["kernel"] == "attn_fwd_kernel"]
    assert tldot and all(r["roofline"]["tiling"]["score_replication"] == 2 for r in tldot)
    piped = [r for r in d512 if "pipelined" in r["config"]]
    assert piped and all(r["wgmma_waits"].get("1") and r["spill_stores"] == 0 for r in piped), piped
    assert "2-CTA cluster" in md.split("## Attention designs")[1]


def test_markdown_sets_the_up_block_traffic_before_beside_now(compiled):
    """The report's up-block traffic section: per size a "before" (no carried GroupNorm statistics)
    and a "now" row; at 4096^2 the stats passes fall and the total with them."""
    from infgen.ref.config import preset
    from infgen.ref.cost import up_block_traffic
    _, _, md = compiled
    section = md.split("## Up-block traffic")[1]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in section.splitlines() if line.startswith("| 4096")}
    before, now = (up_block_traffic(preset("paper"), 4096, 4096, 1, 2, fused=f) for f in (False, True))
    assert now["total"] < before["total"] and now["gn_stats"] < before["gn_stats"]
    assert rows["4096^2 before"][-2] == f"{before['total'] / 2**30:.1f}"
    assert rows["4096^2 now"][-2] == f"{now['total'] / 2**30:.1f}"


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


def test_the_report_refuses_to_run_under_the_interpreter(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit) as exc:
        report.main(["--used-by", "option", "--out-dir", str(tmp_path / "unused")])
    assert exc.value.code == 2 and "TRITON_INTERPRET is set" in capsys.readouterr().err
    assert not (tmp_path / "unused").exists()
