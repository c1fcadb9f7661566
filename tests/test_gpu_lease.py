"""scripts/gpu_check.sh -> scripts/gpu_lease.py, the lease of a GPU, dry-run on the CPU (CI's dry run).

DRY_RUN=1 replaces every step by a stand-in that writes the step's outputs and the INFGEN_D512 it
saw; DRY_FAIL / DRY_HANG make one fail or hang in `sleep`; TIME_SCALE shrinks limits, minimums and
the kill grace so a hang is killed within seconds. Checked: the value order, the JSON written per
step and the running lease.json, the budget (every step killed by its start + limit + grace <=
BUDGET; steps that do not fit left pending), the d512 kill switch (a failed or hung smoke test sets
INFGEN_D512=0 for every later step and for the resumed call), resume in place and from a copied
lease.json, the real env step failing fast without a GPU, the real commands against the parsers
of the tools they call, the smoke test's comparison, and the summaries. Also
infgen.runtime.triton_backend's choice under the switch: tests/test_triton_backend.py.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "gpu_check.sh"
ORDER = ["env", "d512_smoke", "d512_bench", "decode_1024", "decode_2048", "decode_4096", "tests_d512",
         "tests_kernels", "tests_backend", "tests_other", "kernels", "report", "native"]
OWN_ENV = ("OUT", "BUDGET", "RESUME", "STEPS", "DRY_RUN", "DRY_FAIL", "DRY_HANG", "TIME_SCALE", "INFGEN_D512")
SCALE = 0.05  # limits x 0.05: the smoke test's 45 s -> 2.25 s; the kill grace 5 s -> 0.25 s


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


lease_mod = load("gpu_lease", ROOT / "scripts" / "gpu_lease.py")


def run_lease(out: Path, *args: str, dry: bool = True, **env) -> tuple[subprocess.CompletedProcess, dict]:
    """The documented command, bash scripts/gpu_check.sh, with OUT=out; returns (process, lease.json)."""
    e = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
    e.update(PYTHON=sys.executable, OUT=str(out), **({"DRY_RUN": "1"} if dry else {}), **env)
    proc = subprocess.run(["bash", str(CHECK), *args], env=e, capture_output=True, text=True, timeout=120)
    lease = out / "lease.json"
    assert lease.exists(), proc.stdout + proc.stderr
    return proc, json.loads(lease.read_text())


def steps(data: dict) -> dict:
    return {r["name"]: r for r in data["steps"]}


def check_budget(data: dict, call: int) -> None:
    """Every step this call ran was to be killed by its start + granted limit + grace <= BUDGET."""
    grace = lease_mod.GRACE_S * float(data["limits_sum_s"]) / sum(s.limit_s for s in lease_mod.STEPS)
    ran = [r for r in data["steps"] if r.get("call") == call and r.get("start_s") is not None]
    assert ran
    for r in ran:
        assert r["granted_s"] <= r["limit_s"] + 1e-9, r
        assert r["start_s"] + r["granted_s"] + grace <= data["calls"][call - 1]["budget_s"] + 2e-3, r  # 3 decimals


def seen_switch(out: Path, rel: str):
    """The INFGEN_D512 a stand-in saw, from the JSON it wrote."""
    return json.loads((out / rel).read_text())["INFGEN_D512"]


def test_dry_run_runs_every_step_in_value_order_and_writes_json(tmp_path):
    out = tmp_path / "out"
    proc, data = run_lease(out, "--dry-run")  # the flag form; DRY_RUN=1 elsewhere
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["name"] for r in data["steps"]] == ORDER == lease_mod.NAMES
    assert data["dry_run"] is True and data["complete"] is True and data["pending"] == []
    assert [c["call"] for c in data["calls"]] == [1] and data["calls"][0]["finished"] is True
    assert data["d512"]["enabled"] is True
    starts = [r["start_s"] for r in data["steps"]]
    assert starts == sorted(starts)  # ran in value order
    printed = [ln.split(":")[0].removeprefix("== ") for ln in proc.stdout.splitlines() if ln.startswith("== ")]
    assert printed == ORDER[1:]
    check_budget(data, 1)
    for r in data["steps"]:
        assert r["status"] == "ok" and r["rc"] == 0 and r["call"] == 1, r
        step = lease_mod.STEPS[ORDER.index(r["name"])]
        assert r["outputs"] == list(step.outputs)
        for rel in r["outputs"]:
            assert (out / rel).exists()
        assert json.loads((out / "steps" / f"{r['name']}.json").read_text()) == r  # written when it ended
        assert (out / r["log"]).exists()
        assert r["INFGEN_D512"] is None
        assert "--stand-in" in r["stand_in"] and "--stand-in" not in r["command"]
    s = steps(data)
    assert "--baselines torch-compile" in s["decode_4096"]["command"] and "4096x4096" in s["decode_4096"]["command"]
    assert "--smoke" in s["d512_smoke"]["command"]
    assert s["tests_d512"]["summary"] == {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}


def test_env_failure_stops_the_call_with_one_line(tmp_path):
    out = tmp_path / "out"
    proc, data = run_lease(out, DRY_FAIL="env")
    assert proc.returncode == 1
    assert proc.stdout.strip().count("\n") == 0 and proc.stdout.startswith("env FAILED"), proc.stdout
    s = steps(data)
    assert s["env"]["status"] == "failed"
    assert data["pending"] == ORDER[1:] and all(s[n]["status"] == "pending" for n in ORDER[1:])
    assert sorted(p.name for p in out.iterdir()) == ["lease.json", "logs", "steps"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without a GPU")
def test_real_env_step_fails_fast_without_a_gpu(tmp_path):
    """Not a dry run: the real env step imports torch, finds no CUDA GPU, and the call ends there."""
    out = tmp_path / "out"
    proc, data = run_lease(out, dry=False, BUDGET="60")
    assert proc.returncode == 1
    assert proc.stdout.strip().count("\n") == 0 and "env FAILED: no CUDA GPU" in proc.stdout, proc.stdout
    env = json.loads((out / "env.json").read_text())
    assert env["ok"] is False and env["torch"] == torch.__version__
    assert data["pending"] == ORDER[1:]


@pytest.mark.parametrize("how", ["DRY_FAIL", "DRY_HANG"])
def test_smoke_failure_or_hang_switches_d512_off_for_every_later_step(tmp_path, how):
    out = tmp_path / "out"
    proc, data = run_lease(out, TIME_SCALE=str(SCALE), **{how: "d512_smoke"})
    assert proc.returncode == 1  # a step failed or timed out
    s = steps(data)
    smoke = s["d512_smoke"]
    if how == "DRY_HANG":
        # killed at its limit with its whole process group: the `sleep` its shell started is gone
        assert smoke["status"] == "timeout" and smoke["cut"] is False and smoke["rc"] < 0
        assert smoke["granted_s"] == pytest.approx(45 * SCALE) and smoke["seconds"] >= smoke["granted_s"]
        assert gone(int((out / "logs" / "d512_smoke.sleep.pid").read_text())), "sleep survived the kill"
    else:
        assert smoke["status"] == "failed" and smoke["rc"] == 1
    assert "INFGEN_D512=0 for the remaining steps" in proc.stdout
    assert data["d512"]["enabled"] is False and "smoke test" in data["d512"]["reason"]
    assert s["tests_d512"]["status"] == "skipped" and "INFGEN_D512=0" in s["tests_d512"]["reason"]
    assert s["env"]["INFGEN_D512"] is None and smoke["INFGEN_D512"] is None
    later = [n for n in ORDER[2:] if n != "tests_d512"]
    assert all(s[n]["status"] == "ok" and s[n]["INFGEN_D512"] == "0" for n in later), [s[n] for n in later]
    assert seen_switch(out, "d512.json") == "0" and seen_switch(out, "decode/4096x4096/profile.json") == "0"
    assert data["complete"] is True
    check_budget(data, 1)


def test_switch_set_by_the_caller_skips_the_d512_steps(tmp_path):
    out = tmp_path / "out"
    proc, data = run_lease(out, INFGEN_D512="0", STEPS="d512_smoke d512_bench tests_d512")
    assert proc.returncode == 0, proc.stdout
    s = steps(data)
    assert [n for n in ORDER if s[n]["call"] == 1] == ["env", "d512_smoke", "d512_bench", "tests_d512"]
    assert s["d512_smoke"]["status"] == "skipped" and s["tests_d512"]["status"] == "skipped"
    assert data["d512"] == {"enabled": False, "reason": "INFGEN_D512=0 was set for this call"}
    assert s["d512_bench"]["status"] == "ok" and seen_switch(out, "d512.json") == "0"


def test_budget_leaves_steps_pending_and_a_copied_lease_resumes_them(tmp_path):
    """The device flow: call 1 with a budget too small for everything (and a failing smoke test);
    its lease.json copied back; call 2 with RESUME=<copy> into a fresh OUT runs only what is left,
    still with INFGEN_D512=0."""
    out1, out2 = tmp_path / "call1", tmp_path / "call2"
    budget = 3.0
    proc, data = run_lease(out1, TIME_SCALE=str(SCALE), BUDGET=str(budget), DRY_FAIL="d512_smoke")
    s = steps(data)
    grace = lease_mod.GRACE_S * SCALE
    never_fit = {st.name for st in lease_mod.STEPS if st.min_s * SCALE > budget - grace}
    assert never_fit and never_fit <= set(data["pending"])
    for name in data["pending"]:
        assert s[name]["status"] == "pending" and "runs on RESUME" in s[name]["reason"]
        assert not (out1 / "steps" / f"{name}.json").exists()
    assert s["env"]["status"] == "ok" and s["d512_smoke"]["status"] == "failed"
    assert data["complete"] is False
    check_budget(data, 1)
    first = {n: r for n, r in s.items() if n not in data["pending"]}

    copy = tmp_path / "copied" / "lease.json"
    copy.parent.mkdir()
    shutil.copy(out1 / "lease.json", copy)
    proc2, data2 = run_lease(out2, TIME_SCALE=str(SCALE), RESUME=str(copy))
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert "INFGEN_D512=0: the d512 smoke test failed (call 1" in proc2.stdout
    s2 = steps(data2)
    assert data2["complete"] is True and [c["call"] for c in data2["calls"]] == [1, 2]
    assert data2["calls"][1]["resumed_from"] == str(copy)
    assert s2["env"]["call"] == 2  # every call checks its machine
    for name, r in first.items():
        if name != "env":
            assert s2[name] == r  # kept, not rerun
            assert not (out2 / "steps" / f"{name}.json").exists()
    for name in data["pending"]:
        r = s2[name]
        if name == "tests_d512":
            assert r["status"] == "skipped" and "INFGEN_D512=0" in r["reason"]
            continue
        assert r["status"] == "ok" and r["call"] == 2 and r["INFGEN_D512"] == "0", r
        assert (out2 / "steps" / f"{name}.json").exists()
    check_budget(data2, 2)


def test_resume_in_place_reruns_what_a_dead_or_cut_call_left(tmp_path):
    """RESUME=1 reads $OUT/lease.json: a step still `running` (the call died) and a step cut short
    by the budget run again; a step that timed out at its full limit, or failed, does not."""
    out = tmp_path / "out"
    run_lease(out)
    data = json.loads((out / "lease.json").read_text())
    s = steps(data)
    s["decode_2048"]["status"] = "running"
    s["kernels"].update(status="timeout", cut=True)
    s["tests_other"].update(status="timeout", cut=False)
    s["report"]["status"] = "failed"
    (out / "lease.json").write_text(json.dumps(data))
    proc, data2 = run_lease(out, RESUME="1")
    assert proc.returncode == 0, proc.stdout
    rerun = [r["name"] for r in data2["steps"] if r["call"] == 2]
    assert rerun == ["env", "decode_2048", "kernels"]
    s2 = steps(data2)
    assert s2["tests_other"]["status"] == "timeout" and s2["report"]["status"] == "failed"


def gone(pid: int) -> bool:
    """The process has exited (no such process, or a zombie nobody reaped yet)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_lease_stopped_midway_takes_its_step_down_and_resume_reruns_it(tmp_path):
    """SIGTERM to the lease (a device call running out) while a step hangs: the step's process
    group is killed, lease.json keeps the step `running`, and RESUME=1 runs it again."""
    out = tmp_path / "out"
    e = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
    e.update(PYTHON=sys.executable, OUT=str(out), DRY_RUN="1", DRY_HANG="d512_bench")
    proc = subprocess.Popen(["bash", str(CHECK)], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pidfile = out / "logs" / "d512_bench.sleep.pid"
    try:
        for _ in range(600):  # until the hanging step's shell has started its sleep
            if pidfile.exists() and pidfile.read_text().strip():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the hanging stand-in never started")
        proc.terminate()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    sleeper = int(pidfile.read_text())
    assert gone(sleeper), "the step's sleep survived the lease"
    s = steps(json.loads((out / "lease.json").read_text()))
    assert s["d512_smoke"]["status"] == "ok" and s["d512_bench"]["status"] == "running"
    assert s["decode_1024"]["status"] == "pending"
    proc2, data = run_lease(out, RESUME="1")
    assert proc2.returncode == 0, proc2.stdout
    s2 = steps(data)
    assert s2["d512_bench"]["status"] == "ok" and s2["d512_bench"]["call"] == 2 and s2["d512_smoke"]["call"] == 1
    assert data["complete"] is True


def test_settings_errors_name_the_value(tmp_path):
    dry = tmp_path / "dry.json"
    dry.write_text(json.dumps({"dry_run": True, "steps": [], "calls": [], "d512": {"enabled": True, "reason": None}}))
    for env, msg in [({"RESUME": str(dry), "DRY_RUN": "0"}, "is from a dry run; this one is real"),({"BUDGET": "soon"}, "BUDGET must be a positive number of seconds, got 'soon'"),
                     ({"RESUME": "1"}, "RESUME=1 but"),
                     ({"STEPS": "decode"}, "STEPS has ['decode']"),
                     ({"TIME_SCALE": "0.5", "DRY_RUN": "0"}, "TIME_SCALE is for the dry run only")]:
        e = {k: v for k, v in os.environ.items() if k not in OWN_ENV}
        e.update(PYTHON=sys.executable, OUT=str(tmp_path / "none"), DRY_RUN="1")
        e.update(env)
        proc = subprocess.run(["bash", str(CHECK)], env=e, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and msg in proc.stderr, (env, proc.stderr)


def test_the_four_most_valuable_steps_fit_one_default_budget():
    """By construction: env, the smoke test, the d512 benchmark and the three decodes, at their
    full limits plus the kill grace, fit 540 s; every minimum is at most its limit; the smoke
    test has at most 45 s; --plan says so."""
    head = lease_mod.STEPS[:ORDER.index("decode_4096") + 1]
    assert sum(st.limit_s + lease_mod.GRACE_S for st in head) <= lease_mod.DEFAULT_BUDGET_S
    assert all(0 < st.min_s <= st.limit_s for st in lease_mod.STEPS)
    assert lease_mod.STEPS[1].name == "d512_smoke" and lease_mod.STEPS[1].limit_s <= 45
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_lease.py"), "--plan"], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k not in OWN_ENV})
    fits = [ln.split()[1] for ln in proc.stdout.splitlines()[1:] if " fits " in ln]
    assert fits == [st.name for st in head], proc.stdout


def test_the_header_lists_each_steps_limit_and_minimum():
    """scripts/gpu_lease.py's header table (the reference) says what STEPS holds."""
    for st in lease_mod.STEPS:
        line = rf"^\s+(\d+ )?{st.name}\s+{st.limit_s:.0f}/{st.min_s:.0f}\s"
        assert re.search(line, lease_mod.__doc__, re.M), st.name


def test_real_commands_match_the_tools_they_call(tmp_path):
    """The commands a GPU call would run parse with the parsers of the tools they call (a renamed
    flag fails here, not on the lent GPU)."""
    from infgen.runtime.cli import profiler
    bench = load("bench_attention_d512", ROOT / "benchmarks" / "attention_d512.py")
    out = tmp_path.resolve()
    for st in lease_mod.STEPS:
        argv = st.argv(out, sys.executable)
        if st.name.startswith("decode_"):
            assert argv[1:4] == ["-m", "infgen.runtime", "profile"]
            p = argparse.ArgumentParser()
            profiler.add_arguments(p)
            a = p.parse_args(argv[4:])
            size = st.name.split("_")[1]
            assert a.backend == ["torch", "triton"] and a.baselines == ["torch-compile"] and a.dtype == "bf16"
            assert a.size == [(int(size), int(size))] and Path(a.out_dir) / "profile.json" == out / st.outputs[0]
        elif argv[1] == "benchmarks/attention_d512.py":
            a = bench.parser().parse_args(argv[2:])
            assert Path(a.out) == out / st.outputs[0]
            assert a.smoke == (st.name == "d512_smoke")
            if not a.smoke:
                assert a.tokens == [16384, 65536, 262144] and a.no_sweep and a.no_sdpa_above is None
        elif st.name.startswith("tests_"):
            paths = [x for x in argv if x.startswith("tests")]
            assert paths and all((ROOT / x).exists() for x in paths)
            assert argv[argv.index("-m", 2) + 1] == "gpu"
        elif st.name == "kernels":
            assert (ROOT / argv[1]).exists()
        elif st.name == "report":
            a = load("compile_report", ROOT / argv[1]).parser().parse_args(argv[2:])
            assert a.jobs >= 1 and a.out.endswith("compile_report")


def test_shim_links_the_folders_as_infgen_where_it_is_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(lease_mod.importlib.util, "find_spec", lambda name: None)
    s = lease_mod.Settings(tmp_path, 10.0, 1.0, False, None, None, sys.executable)
    env = lease_mod.child_env(s)
    shim = Path(env["PYTHONPATH"].split(os.pathsep)[0]) / "infgen"
    links = {p.name: p.resolve() for p in shim.iterdir()}
    shutil.rmtree(shim.parent)
    assert links["runtime"] == ROOT / "runtime" and links["ref"] == ROOT / "infgen_ref"
    assert "TRITON_INTERPRET" not in env
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11: every top folder pyproject.toml maps is linked
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    tops = {name.split(".")[1]: ROOT / folder for name, folder in package_dir.items() if name.count(".") == 1}
    assert "cli" in tops and links == tops


# ----------------------------------------------------------------------------- the smoke test's check
@pytest.fixture
def bench():
    return load("bench_attention_d512", ROOT / "benchmarks" / "attention_d512.py")


def fake_d512(write):
    """A stand-in for infgen.kernels.attention_d512: write(q, k, v, out) fills `out`."""
    def flash_attention_d512(q, k, v, q_prescaled=False, out=None):
        assert q_prescaled and out is not None and out.isnan().all()  # launched as the backend does, poisoned
        write(q, k, v, out)
        return out
    return types.SimpleNamespace(d512_unsupported_reason=lambda *a: None, flash_attention_d512=flash_attention_d512)


@pytest.mark.parametrize("kind", ["right", "unwritten", "wrong", "raises"])
def test_smoke_compares_against_float64(bench, monkeypatch, tmp_path, kind):
    from infgen.kernels.attention import LN2, attention_ref

    def write(q, k, v, out):
        if kind == "raises":
            raise RuntimeError("PTX JIT failed")
        if kind == "unwritten":
            return
        ref = attention_ref(q.float(), k.float(), v.float(), LN2)  # softmax(q_pre k^T ln 2) v
        out.copy_(ref + (0.05 if kind == "wrong" else 0.0))
    monkeypatch.setattr(bench, "d512_module", lambda: fake_d512(write))
    path = tmp_path / "smoke.json"
    if kind == "raises":  # the process exits 1 with the traceback; the JSON says why
        with pytest.raises(RuntimeError, match="PTX JIT failed"):
            bench.smoke(path, device="cpu")
        r = json.loads(path.read_text())
        assert r["status"] == "error" and "PTX JIT failed" in r["error"]
        return
    rc = bench.smoke(path, device="cpu")
    r = json.loads(path.read_text())
    assert rc == (0 if kind == "right" else 1)
    assert r["status"] == ("ok" if kind == "right" else "wrong")
    assert r["all_written_and_finite"] == (kind != "unwritten")
    if kind != "unwritten":
        assert (r["max_abs_err"] <= r["tolerance"]) == (kind == "right")


def test_smoke_and_benchmark_leave_the_kernel_alone_when_switched_off(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("INFGEN_D512", "0")
    assert bench.d512_module() is None
    path = tmp_path / "smoke.json"
    assert bench.smoke(path, device="cpu") == 0
    assert json.loads(path.read_text())["status"] == "skipped"


@pytest.mark.parametrize("switched_off", [True, False], ids=["INFGEN_D512=0", "on"])
def test_benchmark_case_leaves_the_kernel_out_when_switched_off(bench, monkeypatch, switched_off):
    """benchmarks/attention_d512.py's per-size row on CPU tensors (timing stubbed, the tl.dot
    kernel in the interpreter): switched off, no d512, sweep or ablation entry and no call; on,
    all of them, each compared with the d512 output."""
    from infgen.kernels.attention import attention_ref
    calls = []

    def fake(q, k, v, config=None, products=None):
        calls.append((config, products))
        return attention_ref(q, k, v)
    mod = types.SimpleNamespace(flash_attention_d512=fake, RUNTIME_CONFIG=types.SimpleNamespace(block_n=64),
                                SWEEP_CONFIGS=[types.SimpleNamespace(block_n=32)],
                                qk_product="qk", pv_product="pv")
    monkeypatch.setattr(bench, "bench", lambda fn, flops: (fn(), {"tflops": 1.0})[1])
    row = bench.case(17, True, None if switched_off else mod, sweep=True, device="cpu")
    assert row["tl_dot"]["tflops"] == 1.0 and row["sdpa"]["tflops"] == 1.0
    if switched_off:
        assert row["d512"] == {"skipped": bench.OFF} and "sweep" not in row and "no_pv" not in row
        assert "cluster" not in row
        assert calls == [] and "max_abs_diff_d512" not in row["tl_dot"]
    else:
        assert row["d512"]["tflops"] == 1.0 and len(row["sweep"]) == 1
        assert row["no_pv"]["tflops"] == 1.0 and row["no_qk"]["tflops"] == 1.0
        # each ablation replaces one product and keeps the kernel's other one
        replaced = [p for _, p in calls if p is not None]
        # (Q K^T kept, P V kept) per ablation: no_qk keeps P V, no_pv keeps Q K^T
        assert sorted((p[0] == "qk", p[1] == "pv") for p in replaced) == [(False, True), (True, False)]
        assert row["tl_dot"]["max_abs_diff_d512"] < 0.05 and row["sdpa"]["max_abs_diff_d512"] < 0.05
        # the 2-CTA cluster option: skipped with the reason on triton 3.6; refused on CPU tensors on >= 3.9
        from infgen.kernels import attention_d512_cluster as cl
        if cl.HAS_MULTICAST:
            assert "needs a CUDA device" in row["cluster"]["error"], row["cluster"]
        else:
            assert row["cluster"] == {"skipped": cl.NO_MULTICAST}


# ----------------------------------------------------------------------------- summaries
def test_decode_summary_reads_the_profilers_rows(tmp_path):
    from infgen.ref.config import preset
    from infgen.runtime.cli.profile_measure import Target, make_row
    cfg = preset("paper")
    t = Target("triton", "triton", torch.bfloat16)
    rows = [make_row(t, 1024, 1024, 1, cfg, (128, 128), meas={"times": [0.03, 0.02, 0.025], "stage_names": None,
                                                              "stage_times": None, "stage_ratio": None,
                                                              "stages_error": None}, peak=3 * 2 ** 30),
            make_row(Target("torch-compile", "torch", torch.bfloat16, True), 1024, 1024, 1, cfg, (128, 128),
                     "OOM", "out of memory")]
    (tmp_path / "decode" / "1024x1024").mkdir(parents=True)
    (tmp_path / "decode" / "1024x1024" / "profile.json").write_text(json.dumps({"rows": rows}))
    assert lease_mod.summarize("decode_1024", tmp_path) == [
        {"target": "triton", "status": "ok", "size": "1024x1024", "median_ms": 25.0, "peak_gib": 3.0},
        {"target": "torch-compile", "status": "OOM", "size": "1024x1024", "median_ms": None, "peak_gib": None}]
    assert lease_mod.summarize("decode_2048", tmp_path) is None
