#!/usr/bin/env python3
"""One device call on a lent GPU, ordered by value, each step under a hard limit inside one budget.

Nothing here has run on a GPU yet: the limits and minimums below are ESTIMATES (guesses from the
work each step does; none was measured on a GPU). The control flow is checked on the CPU only, by
the dry run (tests/test_gpu_lease.py, which CI runs). scripts/gpu_check.sh is the documented
command; it runs this file.

  first call:  run(command="bash scripts/gpu_check.sh", timeout_s=600)
  next call:   copy the first call's lease.json (under its files_at) to out/lease.json here, then
               run(command="RESUME=out/lease.json BUDGET=240 bash scripts/gpu_check.sh",
                   carry=["out/lease.json"], timeout_s=600)
  by hand:     OUT=out/gpu bash scripts/gpu_check.sh, then OUT=out/gpu RESUME=1 bash scripts/gpu_check.sh
  CPU:         DRY_RUN=1 OUT=out/dry bash scripts/gpu_check.sh   (or --dry-run; --plan prints the plan)

Steps, most valuable first (limit / minimum in seconds; outputs under $OUT):
   1 env            30/10  torch, triton, CUDA, the GPU, nvidia-smi, `import infgen.runtime` -> env.json.
                           No CUDA GPU or a failed import: one line, exit 1, nothing else runs.
   2 d512_smoke     45/30  the head-dim-512 Gluon kernel once, as the triton backend launches it, on a
                           small case against float64 (benchmarks/attention_d512.py --smoke) -> d512_smoke.json.
                           Failed or timed out: INFGEN_D512=0 for every later step, this call and the next.
   3 d512_bench    110/45  TFLOP/s at 16,384 / 65,536 / 262,144 tokens: d512 kernel, tl.dot kernel, SDPA
                           (benchmarks/attention_d512.py --no-sweep) -> d512.json, after every size
   4 decode_1024    80/40  paper preset, random weights, bf16: torch eager, triton, torch.compile;
     decode_2048    90/45  latency, stages, peak memory (python -m infgen.runtime profile
     decode_4096   140/70  --baselines torch-compile) -> decode/<size>/profile.json, after every row
   5 tests_d512     90/40  pytest -m gpu, JUnit XML each -> tests/<step>.xml: the d512 kernel (not
     tests_kernels 120/45  run under INFGEN_D512=0); attention, GroupNorm, INPE; the triton backend;
     tests_backend 150/60  every other gpu-marked test
     tests_other    90/30
   6 kernels       120/45  benchmarks/kernels.py -> kernels.json
     report         60/30  the sm_90a compile report on the image's triton -> compile_report/ (the CPU
                           already produces it with triton 3.6)
     native        150/60  CMake AOT build + ctest with its GPU test (the CPU already builds it)
Steps 1-4 fit the default budget with their full limits (limits + kill grace: 525 of 540 s); all
thirteen need about 1,340 s, so 5-6 run in the next call (RESUME), or the one after.

Budget (BUDGET, default 540 s, counted from this script's start; the device tool allows 600 s a
command): a step starts only when at least its minimum is left after the kill grace (5 s), and runs
under min(limit, what is left), in its own process group: at its limit SIGTERM, 5 s later SIGKILL.
So the call ends within BUDGET by construction. A step that does not fit is `pending`; later, smaller
steps still run.

$OUT (default out/gpu): lease.json, rewritten atomically when a step starts and when it ends (steps
in value order: status ok | failed | timeout | skipped | pending | running, reason, rc, seconds,
limit_s, granted_s, outputs, log, call, INFGEN_D512, summary, tail; the calls; the d512 switch);
steps/<step>.json (the step's record, written the moment it ends); logs/<step>.log; the outputs named
above. RESUME=1 continues from $OUT/lease.json, RESUME=PATH from a copied one (into a fresh $OUT):
steps ok, failed, skipped or timed out at their full limit are kept (with the call that ran them);
pending ones, ones still `running` when a call died, and ones cut short by the budget run again;
env runs on every call (each call may get a fresh machine). STEPS="decode_4096 kernels" restricts a
call to those steps. Exit 0 when nothing that ran failed or timed out, else 1.

DRY_RUN=1 (or --dry-run) replaces every step's command by a stand-in that writes the step's outputs
(recording the INFGEN_D512 it saw) in milliseconds; DRY_FAIL / DRY_HANG (step names) make a stand-in
fail, or hang in `sleep` until it is killed; TIME_SCALE multiplies limits, minimums and the grace
(dry run only). The standard library only: this runs before anything is known to import.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
SWITCH = "INFGEN_D512"  # infgen.runtime.triton_backend.D512_SWITCH
GRACE_S = 5.0           # SIGTERM -> SIGKILL
DEFAULT_BUDGET_S = 540.0
DONE = ("ok", "failed", "timeout", "skipped")  # kept on RESUME (a timeout only at its full limit)
OTHER_GPU_TESTS_IGNORED = ("test_kernels_attention.py", "test_kernels_groupnorm.py", "test_kernels_inpe.py",
                           "test_kernels_attention_d512.py", "test_triton_backend.py", "test_kernels_report.py")


@dataclass
class Step:
    """One unit of the lease. argv(out, python) -> the command; outputs: paths under $OUT it writes."""

    name: str
    limit_s: float
    min_s: float
    what: str
    outputs: tuple[str, ...]
    argv: object           # Callable[[Path, str], list[str]]
    uses_d512: bool = False  # not run at all under INFGEN_D512=0


def _profile(size: str, warmup: int, iters: int):
    def argv(out: Path, py: str) -> list[str]:
        return [py, "-m", "infgen.runtime", "profile", "--preset", "paper", "--device", "cuda", "--size", size,
                "--backend", "torch", "triton", "--baselines", "torch-compile", "--dtype", "bf16",
                "--warmup", str(warmup), "--iters", str(iters), "--no-progress",
                "--out-dir", str(out / "decode" / size)]
    return argv


def _pytest(name: str, *args: str):
    def argv(out: Path, py: str) -> list[str]:
        return [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *args,
                "--junitxml", str(out / "tests" / f"{name}.xml")]
    return argv


def _native(out: Path, py: str) -> list[str]:
    """CMake AOT-compiles the kernels with this machine's triton and runs ctest (native/tests/gpu_kernels.py
    included), built outside the repository copy."""
    build = "/tmp/infgen-native"
    return ["bash", "-c", f'cmake -S . -B {build} -DPython3_EXECUTABLE="{py}" -DINFGEN_AOT_JOBS=8 && '
                          f"cmake --build {build} -j 8 && ctest --test-dir {build} --output-on-failure"]


STEPS = [
    Step("env", 30, 10, "torch, triton, the GPU; stops the call without one", ("env.json",),
         lambda out, py: [py, str(THIS), "--probe-env", str(out / "env.json")]),
    Step("d512_smoke", 45, 30, "d512 kernel once vs float64; failure or timeout sets INFGEN_D512=0",
         ("d512_smoke.json",),
         lambda out, py: [py, "benchmarks/attention_d512.py", "--smoke", "--out", str(out / "d512_smoke.json")]),
    Step("d512_bench", 110, 45, "d512 attention TFLOP/s at 16K/64K/256K tokens vs tl.dot and SDPA", ("d512.json",),
         lambda out, py: [py, "benchmarks/attention_d512.py", "--tokens", "16384", "65536", "262144", "--no-sweep",
                          "--out", str(out / "d512.json")]),
    Step("decode_1024", 80, 40, "decode 1024^2 bf16: torch, triton, torch.compile; peak memory",
         ("decode/1024x1024/profile.json",), _profile("1024x1024", 2, 5)),
    Step("decode_2048", 90, 45, "decode 2048^2 bf16: torch, triton, torch.compile; peak memory",
         ("decode/2048x2048/profile.json",), _profile("2048x2048", 2, 5)),
    Step("decode_4096", 140, 70, "decode 4096^2 bf16: torch, triton, torch.compile; peak memory",
         ("decode/4096x4096/profile.json",), _profile("4096x4096", 1, 3)),
    Step("tests_d512", 90, 40, "gpu tests of the d512 kernel", ("tests/tests_d512.xml",),
         _pytest("tests_d512", "tests/test_kernels_attention_d512.py"), uses_d512=True),
    Step("tests_kernels", 120, 45, "gpu tests of attention, GroupNorm, INPE", ("tests/tests_kernels.xml",),
         _pytest("tests_kernels", "tests/test_kernels_attention.py", "tests/test_kernels_groupnorm.py",
                 "tests/test_kernels_inpe.py")),
    Step("tests_backend", 150, 60, "gpu tests of the triton backend", ("tests/tests_backend.xml",),
         _pytest("tests_backend", "tests/test_triton_backend.py")),
    Step("tests_other", 90, 30, "every other gpu-marked test", ("tests/tests_other.xml",),
         _pytest("tests_other", "--continue-on-collection-errors", "tests",
                 *(f"--ignore=tests/{f}" for f in OTHER_GPU_TESTS_IGNORED))),
    Step("kernels", 120, 45, "kernel benchmarks vs PyTorch", ("kernels.json",),
         lambda out, py: [py, "benchmarks/kernels.py", "--out", str(out / "kernels.json")]),
    Step("report", 60, 30, "sm_90a compile report on this triton", ("compile_report/compile_report.json",),
         lambda out, py: [py, "benchmarks/compile_report.py", "--jobs", str(os.cpu_count() or 1),
                          "--out-dir", str(out / "compile_report")]),
    Step("native", 150, 60, "native AOT build + ctest (GPU test included)", (), _native),
]
NAMES = [s.name for s in STEPS]


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    out: Path
    budget_s: float
    scale: float          # TIME_SCALE (dry run only)
    dry_run: bool
    resume: Path | None   # the lease.json to continue
    only: list[str] | None
    python: str

    @classmethod
    def from_env(cls, dry_run: bool) -> "Settings":
        env = os.environ
        dry_run = dry_run or env.get("DRY_RUN", "0") not in ("", "0")
        out = Path(env["OUT"]) if env.get("OUT") else ROOT / "out" / "gpu"
        budget = _positive("BUDGET", env.get("BUDGET") or str(DEFAULT_BUDGET_S))
        scale = _positive("TIME_SCALE", env.get("TIME_SCALE") or "1")
        if scale != 1 and not dry_run:
            raise SystemExit("gpu_lease: TIME_SCALE is for the dry run only (DRY_RUN=1)")
        resume = env.get("RESUME", "")
        path = None if resume in ("", "0") else (out / "lease.json" if resume == "1" else Path(resume))
        if path is not None and not path.is_file():
            raise SystemExit(f"gpu_lease: RESUME={resume} but {path} does not exist (RESUME=1 reads $OUT/lease.json, "
                             "RESUME=PATH a copied one)")
        only = env.get("STEPS", "").split() or None
        bad = [s for s in only or [] if s not in NAMES]
        if bad:
            raise SystemExit(f"gpu_lease: STEPS has {bad}; steps are {NAMES}")
        return cls(out, budget, scale, dry_run, path, only, sys.executable)


def _positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SystemExit(f"gpu_lease: {name} must be a positive number of seconds, got {text!r}")
    return value


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data) -> None:
    """Atomically: a reader (or a call killed midway) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the lease record
class Lease:
    """$OUT/lease.json: every step in value order, the calls, the d512 switch."""

    def __init__(self, s: Settings):
        self.s, self.t0 = s, time.monotonic()
        prev = json.loads(s.resume.read_text()) if s.resume else None
        if prev and prev["dry_run"] != s.dry_run:
            raise SystemExit(f"gpu_lease: {s.resume} is from a {'dry' if prev['dry_run'] else 'real'} run; "
                             f"this one is {'dry' if s.dry_run else 'real'}: start afresh (no RESUME)")
        self.data = {"schema": 1, "dry_run": s.dry_run, "budget_s": s.budget_s,
                     "limits_sum_s": round(sum(st.limit_s for st in STEPS) * s.scale, 3),
                     "calls": [], "d512": {"enabled": True, "reason": None}, "steps": [],
                     "pending": [], "complete": False}
        old = {r["name"]: r for r in prev["steps"]} if prev else {}
        for st in STEPS:
            rec = old.get(st.name) or {"name": st.name, "status": "pending", "reason": "not run yet", "call": None}
            rec.update(what=st.what, limit_s=st.limit_s * s.scale, min_s=st.min_s * s.scale)
            self.data["steps"].append(rec)
        if prev:
            self.data["calls"] = prev["calls"]
            self.data["d512"] = prev["d512"]
        self.call = len(self.data["calls"]) + 1
        self.data["calls"].append({"call": self.call, "started": _now(), "budget_s": s.budget_s,
                                   "resumed_from": str(s.resume) if s.resume else None, "out": str(s.out),
                                   "elapsed_s": 0.0, "finished": False})

    def rec(self, name: str) -> dict:
        return self.data["steps"][NAMES.index(name)]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def save(self, finished: bool = False) -> None:
        call = self.data["calls"][-1]
        call["elapsed_s"] = round(self.elapsed(), 3)
        call["finished"] = finished
        self.data["pending"] = [r["name"] for r in self.data["steps"] if not is_done(r)]
        self.data["complete"] = not self.data["pending"]
        write_json(self.s.out / "lease.json", self.data)


def is_done(rec: dict) -> bool:
    return rec["status"] in DONE and not rec.get("cut")


# ----------------------------------------------------------------------------- running one step
def run_step(step: Step, rec: dict, lease: Lease, env: dict, granted: float) -> None:
    s = lease.s
    log = s.out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    real = step.argv(s.out.resolve(), s.python)
    argv = stand_in(step, s) if s.dry_run else real
    rec.update(status="running", reason=None, rc=None, seconds=None, granted_s=round(granted, 3), cut=False,
               call=lease.call, started=_now(), start_s=None, log=f"logs/{step.name}.log",
               command=" ".join(real), stand_in=" ".join(argv) if s.dry_run else None,
               INFGEN_D512=env.get(SWITCH), outputs=[], summary=None, tail=[])
    lease.save()
    t = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        # The wait starts now; the invariant the budget rests on: start + granted + grace <= budget.
        start = lease.elapsed()
        granted = max(0.0, min(granted, s.budget_s - start - GRACE_S * s.scale))
        rec.update(start_s=round(start, 3), granted_s=round(granted, 3))
        try:
            rc = proc.wait(timeout=granted)
            timed_out = False
            _signal_group(proc, signal.SIGKILL)  # whatever the step left running in its group
        except subprocess.TimeoutExpired:
            timed_out = True
            rc = _kill(proc, GRACE_S * s.scale)
        except BaseException:  # the lease itself stopped (SIGTERM, Ctrl-C): the step goes with it,
            _kill(proc, 0.5)   # and stays `running` in lease.json, so RESUME runs it again
            raise
    rec["seconds"] = round(time.monotonic() - t, 3)
    rec["rc"] = rc
    if timed_out:
        cut = granted < step.limit_s * s.scale
        rec.update(status="timeout", cut=cut, reason=f"killed at {granted:.1f} s" +
                   (f" (cut from its {step.limit_s * s.scale:.0f} s limit by the budget: runs again on RESUME)"
                    if cut else ""))
    else:
        rec["status"] = "ok" if rc == 0 else "failed"
    rec["outputs"] = [o for o in step.outputs if (s.out / o).exists()]
    rec["tail"] = _tail(log)
    try:
        rec["summary"] = summarize(step.name, s.out)
    except Exception as exc:  # noqa: BLE001 - a summary must never stop the lease
        rec["summary"] = {"error": f"{type(exc).__name__}: {exc}"}
    write_json(s.out / "steps" / f"{step.name}.json", rec)
    lease.save()


def _kill(proc: subprocess.Popen, grace: float) -> int:
    """SIGTERM to the step's process group (it was started in its own session); SIGKILL to what is
    left of the group once its leader has exited, or after grace. Returns the leader's rc."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    return proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: Path, n: int = 5) -> list[str]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return [ln[:200] for ln in lines[-n:]]


# ----------------------------------------------------------------------------- summaries for lease.json
def summarize(name: str, out: Path) -> dict | list | None:
    """The few numbers of a step's output that matter at a glance (None when it wrote none)."""
    def load(rel):
        p = out / rel
        return json.loads(p.read_text()) if p.exists() else None
    if name == "env":
        d = load("env.json")
        return d and {k: d.get(k) for k in ("gpu", "capability", "memory_gib", "torch", "cuda", "triton")}
    if name == "d512_smoke":
        d = load("d512_smoke.json")
        return d and {k: d.get(k) for k in ("status", "reason", "max_abs_err", "tolerance", "compile_and_run_s")}
    if name == "d512_bench":
        d = load("d512.json")
        return d and [{"tokens": c.get("tokens"), "error": c.get("error"),
                       **{f"{v}_tflops": (c.get(v) or {}).get("tflops") for v in ("d512", "tl_dot", "sdpa")}}
                      for c in d.get("cases", [])]
    if name.startswith("decode_"):
        d = load(f"decode/{name.split('_')[1]}x{name.split('_')[1]}/profile.json")
        return d and [{"target": r["target"], "status": r["status"], "size": f"{r['width']}x{r['height']}",
                       "median_ms": r["median_s"] and round(r["median_s"] * 1e3, 2),
                       "peak_gib": r["peak_memory_bytes"] and round(r["peak_memory_bytes"] / 2 ** 30, 2)}
                      for r in d.get("rows", [])]
    if name.startswith("tests_"):
        p = out / "tests" / f"{name}.xml"
        return junit_counts(p) if p.exists() else None
    return None


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


# ----------------------------------------------------------------------------- the dry run's stand-ins
def stand_in(step: Step, s: Settings) -> list[str]:
    """The dry run's command for a step: writes its outputs in milliseconds (--stand-in), fails
    (DRY_FAIL), or hangs in `sleep` in a child shell until killed (DRY_HANG; its pid in logs/)."""
    if step.name in os.environ.get("DRY_HANG", "").split():
        pidfile = s.out.resolve() / "logs" / f"{step.name}.sleep.pid"
        return ["sh", "-c", f"sleep 1000 & echo $! > '{pidfile}'; wait"]
    return [s.python, "-S", str(THIS), "--stand-in", step.name, str(s.out.resolve())]  # -S: stdlib only, fast


def run_stand_in(name: str, out: Path) -> int:
    if name in os.environ.get("DRY_FAIL", "").split():
        print(f"{name}: stand-in failing as DRY_FAIL asks")
        return 1
    step = STEPS[NAMES.index(name)]
    seen = {"dry_run": True, "step": name, SWITCH: os.environ.get(SWITCH), "cwd": os.getcwd()}
    for rel in step.outputs:
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".xml":
            p.write_text('<testsuites><testsuite name="pytest" tests="1" failures="0" errors="0" skipped="0">'
                         '<testcase classname="dry" name="stand_in"/></testsuite></testsuites>')
        else:
            p.write_text(json.dumps(seen))
    print(f"{name}: stand-in wrote {list(step.outputs)} ({SWITCH}={seen[SWITCH]})")
    return 0


# ----------------------------------------------------------------------------- the env step's probe
def probe_env(path: Path) -> int:
    """Runs in the env step's process: versions, the GPU, nvidia-smi -> path; one line on stdout.
    Exit 1 (the line says why) when torch, triton or infgen.runtime do not import or CUDA has no GPU."""
    info = {"date": _now(), "python": platform.python_version(), "host": platform.node()}

    def fail(line: str) -> int:
        write_json(path, {**info, "ok": False, "error": line})
        print(line)
        return 1
    try:
        import torch
        import triton
    except Exception as exc:  # noqa: BLE001 - any import failure ends the call
        return fail(f"env FAILED: import torch/triton: {type(exc).__name__}: {exc}")
    info.update(torch=torch.__version__, cuda=torch.version.cuda, triton=triton.__version__)
    if not torch.cuda.is_available():
        return fail(f"env FAILED: no CUDA GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none")
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpus=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                memory_gib=round(p.total_memory / 2 ** 30, 1))
    try:
        import infgen.runtime  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return fail(f"env FAILED: import infgen.runtime: {type(exc).__name__}: {exc}")
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        smi = f"nvidia-smi: {exc}"
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    write_json(path, {**info, "ok": True, "commit": git.stdout.strip() or None, "nvidia_smi": smi})
    print(f"env: {p.name} (sm_{p.major}{p.minor}, {info['memory_gib']} GiB), torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), triton {triton.__version__}, python {info['python']}")
    return 0


# ----------------------------------------------------------------------------- the call
def child_env(s: Settings) -> dict:
    """The steps' environment: unbuffered, compiled kernels (never the interpreter), and `infgen`
    importable: where the copy is not installed (the GPU image), its folders linked as infgen's
    subpackages on PYTHONPATH, the mapping pip install -e makes from pyproject.toml's package-dir."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    try:
        installed = importlib.util.find_spec("infgen.runtime") is not None
    except ModuleNotFoundError:
        installed = False
    if not installed and not s.dry_run:
        shim = Path(tempfile.mkdtemp(prefix="infgen-shim-")) / "infgen"
        shim.mkdir()
        for sub, folder in (("ref", "infgen_ref"), ("cli", "cli"), ("kernels", "kernels"), ("export", "export"),
                            ("runtime", "runtime"), ("train", "train"), ("native", "native")):
            (shim / sub).symlink_to(ROOT / folder)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim.parent), env.get("PYTHONPATH")) if p)
    return env


def step_plan(s: Settings) -> str:
    """Which steps fit one budget at their full limits (plus the kill grace), in value order."""
    used, lines = 0.0, []
    for i, st in enumerate(STEPS, 1):
        need = (st.limit_s + GRACE_S) * s.scale
        fits = used + need <= s.budget_s
        used += need if fits else 0
        lines.append(f"{i:2d} {st.name:14s} {st.limit_s * s.scale:7.1f} s (min {st.min_s * s.scale:6.1f})  "
                     f"{'fits ' if fits else 'later'}  {st.what}")
    total = sum(st.limit_s + GRACE_S for st in STEPS) * s.scale
    return "\n".join([f"plan: budget {s.budget_s:.0f} s; all limits + grace {total:.0f} s; "
                      f"at full limits this call fits {used:.0f} s:"] + lines)


def lease_call(s: Settings) -> int:
    lease = Lease(s)
    env = child_env(s)
    d512 = lease.data["d512"]
    if os.environ.get(SWITCH) == "0":
        d512.update(enabled=False, reason=f"{SWITCH}=0 was set for this call")
    on_entry = dict(d512)
    failed = False
    for step in STEPS:
        rec = lease.rec(step.name)
        if s.only is not None and step.name not in s.only and step.name != "env":
            continue
        if step.name != "env" and is_done(rec):
            continue
        if not d512["enabled"]:
            env[SWITCH] = "0"
        if not d512["enabled"] and (step.uses_d512 or step.name == "d512_smoke"):
            rec.update(status="skipped", reason=f"{SWITCH}=0: {d512['reason']}", call=lease.call)
            lease.save()
            print(f"-- {step.name}: skipped ({SWITCH}=0)")
            continue
        left = s.budget_s - lease.elapsed() - GRACE_S * s.scale
        if left < step.min_s * s.scale:
            rec.update(status="pending", reason=f"needs {step.min_s * s.scale:.1f} s, {max(left, 0):.1f} s of the "
                                                f"budget left: runs on RESUME")
            lease.save()
            print(f"-- {step.name}: pending ({rec['reason']})")
            continue
        granted = min(step.limit_s * s.scale, left)
        run_step(step, rec, lease, env, granted)
        if step.name == "env":
            if rec["status"] != "ok":
                why = rec["tail"][-1] if rec["tail"] else f"rc {rec['rc']}"
                print(why if why.startswith("env FAILED") else f"env FAILED ({rec['status']}, rc {rec['rc']}): {why}")
                lease.save(finished=True)
                return 1
            print(rec["tail"][-1] if rec["tail"] else "env: ok")
            if on_entry["reason"]:
                print(f"{SWITCH}={'1' if on_entry['enabled'] else '0'}: {on_entry['reason']}")
            print(step_plan(s))
            continue
        failed |= rec["status"] in ("failed", "timeout")
        print(f"== {step.name}: {rec['status']} (rc {rec['rc']}, {rec['seconds']:.1f} s of {rec['granted_s']:.1f} s)"
              + (f": {rec['reason']}" if rec.get("reason") else ""))
        if rec["status"] != "ok":
            print("\n".join(f"   | {ln}" for ln in rec["tail"]))
        if step.name == "d512_smoke" and rec["status"] != "ok":
            d512.update(enabled=False, reason=f"the d512 smoke test {rec['status'].replace('timeout', 'timed out')} "
                                              f"(call {lease.call}, rc {rec['rc']})")
            env[SWITCH] = "0"
            print(f"{SWITCH}=0 for the remaining steps: {d512['reason']}")
        elif step.name == "d512_smoke":
            d512.update(enabled=True, reason=f"the d512 smoke test passed (call {lease.call})")
        lease.save()
    lease.save(finished=True)
    print(table(lease))
    return 1 if failed else 0


def table(lease: Lease) -> str:
    rows = [f"lease call {lease.call}: {lease.elapsed():.1f} s of {lease.s.budget_s:.0f} s; "
            f"{lease.s.out / 'lease.json'}; pending: {' '.join(lease.data['pending']) or 'none'}"]
    for r in lease.data["steps"]:
        secs = f"{r['seconds']:.1f} s" if r.get("seconds") is not None else "-"
        rows.append(f"  {r['name']:14s} {r['status']:8s} {secs:>9s}  call {r.get('call') or '-'}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="stand-ins for every step (same as DRY_RUN=1)")
    p.add_argument("--plan", action="store_true", help="print which steps fit the budget and exit")
    p.add_argument("--probe-env", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--stand-in", nargs=2, metavar=("STEP", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe_env:
        return probe_env(Path(a.probe_env))
    if a.stand_in:
        return run_stand_in(a.stand_in[0], Path(a.stand_in[1]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through run_step's cleanup
    s = Settings.from_env(a.dry_run)
    if a.plan:
        print(step_plan(s))
        return 0
    s.out.mkdir(parents=True, exist_ok=True)
    return lease_call(s)


if __name__ == "__main__":
    raise SystemExit(main())
