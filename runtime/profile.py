"""python -m runtime.profile: where the time and memory of a decode go, per backend and size.

For every target (a backend at the run's dtype, plus the baselines torch-fp32, torch-bf16 and
torch-compile) and every output size, one row: median / p10 / p90 latency of the user's path
(engine.decode + InfGenEngine.to_uint8), images per second, peak memory, achieved TFLOP/s and
the share of the cost-model floor (infgen_ref/cost.py). Backends with a `stages(Hp, Wp)` chain
also get a per-stage breakdown: tokens+cross_attn, mid_block, up_blocks, to_uint8.

Timing: CUDA events on a GPU (host clock never read between them), time.perf_counter on the
CPU. Each iteration runs the end-to-end path once and then the stage chain once, with a mark
between stages, so both sets of numbers come from the same minutes of the machine's life;
medians over --iters after --warmup. A row that fails (backend missing, raises, out of memory)
records its status and message; the run goes on.

Outputs under --out: profile.json (validated against SCHEMA), profile.png (latency against
output megapixels, log-log, one line per target, the floor as a line); the table on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from infgen_ref.config import PRESETS, dtype_name, parse_dtype, parse_size
from infgen_ref.cost import H100_BF16_FLOPS, decode_flops, floor_seconds
from infgen_ref.model import InfGen, token_grid
from runtime.engine import InfGenEngine, resolve_device, resolve_model

DEFAULT_SIZES = ("1024x1024", "1920x1080", "2048x2048", "3840x2160", "4096x4096")
BACKEND_NAMES = ("torch", "triton", "onnxruntime", "tensorrt")
# baseline name -> (backend, dtype or None for the run's dtype, torch.compile?)
BASELINES = {"torch-fp32": ("torch", "fp32", False), "torch-bf16": ("torch", "bf16", False),
             "torch-fp16": ("torch", "fp16", False), "torch-compile": ("torch", None, True)}
STATUSES = ("ok", "OOM", "error", "unavailable", "skipped")
FLOOR_NOTE = f"cost-model FLOPs at {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16 matrix product on the lent H100)"

_num = {"type": ["number", "null"]}
_stage_schema = {
    "type": "object",
    "required": ["name", "median_s", "p10_s", "p90_s", "share_of_end_to_end", "flops", "tflops", "floor_share"],
    "properties": {"name": {"type": "string"}, "median_s": {"type": "number", "minimum": 0},
                   "p10_s": {"type": "number", "minimum": 0}, "p90_s": {"type": "number", "minimum": 0},
                   "share_of_end_to_end": _num, "flops": _num, "tflops": _num, "floor_share": _num},
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "runtime.profile report",
    "type": "object",
    "required": ["schema_version", "date", "git_commit", "device", "versions", "args", "model", "floor",
                 "memory_method", "aliases", "rows"],
    "properties": {
        "schema_version": {"const": 1},
        "date": {"type": "string"},
        "git_commit": {"type": "string"},
        "device": {"type": "object", "required": ["type", "name"],
                   "properties": {"type": {"enum": ["cpu", "cuda"]}, "name": {"type": "string"}}},
        "versions": {"type": "object", "required": ["python", "torch", "triton", "onnxruntime", "tensorrt"],
                     "additionalProperties": {"type": ["string", "null"]}},
        "args": {"type": "object"},
        "model": {"type": "object", "required": ["source", "config"]},
        "floor": {"type": "object", "required": ["peak_flops", "what"]},
        "memory_method": {"type": "string"},
        "aliases": {"type": "object", "additionalProperties": {"type": "string"}},
        "rows": {"type": "array", "items": {
            "type": "object",
            "required": ["target", "backend", "dtype", "height", "width", "batch", "megapixels", "status",
                         "message", "median_s", "p10_s", "p90_s", "images_per_s", "peak_memory_bytes",
                         "flops", "tflops", "floor_s", "floor_share", "stages", "stages_error",
                         "stage_sum_over_end_to_end"],
            "properties": {
                "target": {"type": "string"}, "backend": {"type": "string"}, "dtype": {"type": "string"},
                "height": {"type": "integer", "minimum": 1}, "width": {"type": "integer", "minimum": 1},
                "batch": {"type": "integer", "minimum": 1}, "megapixels": {"type": "number"},
                "status": {"enum": list(STATUSES)}, "message": {"type": ["string", "null"]},
                "median_s": _num, "p10_s": _num, "p90_s": _num, "images_per_s": _num,
                "peak_memory_bytes": {"type": ["integer", "null"]}, "flops": {"type": "number"},
                "tflops": _num, "floor_s": {"type": "number"}, "floor_share": _num,
                "stages": {"type": ["array", "null"], "items": _stage_schema},
                "stages_error": {"type": ["string", "null"]}, "stage_sum_over_end_to_end": _num,
            }}},
    },
}


@dataclass
class Target:
    """One profiled configuration: a row label, the engine backend, its dtype, torch.compile or not.

    build(model, device, dtype) -> engine replaces the default construction through InfGenEngine
    (the tests use it to inject failing backends)."""

    name: str
    backend: str
    dtype: torch.dtype
    compile: bool = False
    build: Callable | None = None


class CompiledDecode:
    """The torch-compile baseline: torch.compile of the reference decode_grid, per size (dynamic=False).

    TorchBackend.run is not compiled directly: its per-size mask-token cache is a dict that changes
    on every call, which fails dynamo's guards and recompiles every time; decode_grid computes the
    mask tokens inside the graph instead."""

    name = "torch-compile"

    def __init__(self, model: InfGen):
        self.model = model
        self.fn = torch.compile(model.decode_grid, dynamic=False)

    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(z, Hp, Wp)


# ----------------------------------------------------------------------------- parsing
def make_targets(backends: list[str], baselines: list[str], dtype: torch.dtype,
                 device: torch.device) -> tuple[list[Target], dict[str, str]]:
    """Backends at the run's dtype, then the baselines; a baseline equal to a row already there
    becomes an alias (e.g. torch-fp32 == torch when --dtype fp32). Returns (targets, aliases)."""
    targets: list[Target] = []
    for b in backends:
        if b not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {b!r}")
        targets.append(Target(b, b, dtype))
    aliases: dict[str, str] = {}
    for name in baselines:
        if name not in BASELINES:
            raise ValueError(f"baseline must be one of {sorted(BASELINES)}, got {name!r}")
        backend, dt, comp = BASELINES[name]
        if name == "torch-bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name, dt = "torch-fp16", "fp16"
        t = Target(name, backend, parse_dtype(dt) if dt else dtype, comp)
        same = [o for o in targets if (o.backend, o.dtype, o.compile) == (t.backend, t.dtype, t.compile)]
        if same:
            aliases[name] = same[0].name
        else:
            targets.append(t)
    return targets, aliases


# ----------------------------------------------------------------------------- measuring
class Marks:
    """n time marks on one device: CUDA events (no host sync between marks) or perf_counter."""

    def __init__(self, device: torch.device, n: int):
        self.device = device
        self.cuda = device.type == "cuda"
        self.t = [torch.cuda.Event(enable_timing=True) for _ in range(n)] if self.cuda else [0.0] * n

    def mark(self, i: int) -> None:
        if self.cuda:
            self.t[i].record()
        else:
            self.t[i] = time.perf_counter()

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.t, self.t[1:])]
        return [b - a for a, b in zip(self.t, self.t[1:])]


def stage_flops(cfg, h: int, w: int, latent_hw: tuple[int, int], batch: int) -> dict[str, float]:
    """Cost-model FLOPs under the stage names of the chain; to_uint8 counts 0."""
    f = decode_flops(cfg, h, w, latent_hw, batch)
    return {"tokens+cross_attn": f["tokens"] + f["cross_attn"], "mid_block": f["mid_block"],
            "up_blocks": f["up_blocks"], "to_uint8": 0.0, "total": f["total"]}


def stage_chain(engine, Hp: int, Wp: int, h: int, w: int) -> list[tuple[str, Callable]] | None:
    """The backend's stages(Hp, Wp) plus to_uint8 (crop, clamp, convert, copy to the host), or None."""
    stages = getattr(engine.backend, "stages", None)
    if stages is None:
        return None
    return list(stages(Hp, Wp)) + [("to_uint8", lambda x: engine.to_uint8(x[:, :, :h, :w].float().clamp(-1, 1)))]


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate"))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (kineto prints start/stop lines there from C++ on every profile)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def cpu_peak_bytes(fn: Callable) -> int:
    """Peak of the bytes torch allocates on the CPU while fn runs (weights and inputs excluded),
    from torch.profiler's memory events. Allocations outside torch (onnxruntime) are not seen."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with _quiet_stderr(), torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if str(e.device_type()).endswith("CPU"):
            live += e.nbytes()
            peak = max(peak, live)
    return int(peak)


def quantiles(times: list[float]) -> tuple[float, float, float]:
    p10, med, p90 = np.percentile(np.asarray(times), [10, 50, 90])
    return float(med), float(p10), float(p90)


def measure(engine, z: torch.Tensor, h: int, w: int, warmup: int, iters: int, device: torch.device) -> dict:
    """Time one (engine, size): end-to-end and the stage chain, interleaved. Raises what the
    end-to-end path raises; a failing stage chain only sets stages_error."""
    Hp, Wp = token_grid(h, w, engine.config)
    zc = engine.check(z, h, w)[0]
    stages_error, chain = None, None
    try:
        chain = stage_chain(engine, Hp, Wp, h, w)
    except Exception as exc:  # noqa: BLE001 - any failure of the breakdown is reported, not raised
        stages_error = f"{type(exc).__name__}: {exc}"
    e2e: list[float] = []
    per_stage: list[list[float]] = [[] for _ in chain or []]
    paired: list[float] = []  # per iteration: sum of the stage times / the end-to-end time just before
    with torch.no_grad():
        for i in range(warmup + iters):
            m = Marks(device, 2)
            m.mark(0)
            engine.to_uint8(engine.decode(z, h, w))
            m.mark(1)
            t = m.intervals()[0]
            if i >= warmup:
                e2e.append(t)
            if chain is None:
                continue
            try:
                m, x = Marks(device, len(chain) + 1), zc
                m.mark(0)
                for j, (_, fn) in enumerate(chain):
                    x = fn(x)
                    m.mark(j + 1)
                ts = m.intervals()
                del x
            except Exception as exc:  # noqa: BLE001
                stages_error = ("OOM: " if is_oom(exc) else "") + f"{type(exc).__name__}: {exc}"
                chain, per_stage = None, []
                free_memory(device)
                continue
            if i >= warmup:
                for lst, st in zip(per_stage, ts):
                    lst.append(st)
                paired.append(sum(ts) / t)
    return {"times": e2e, "stage_names": [n for n, _ in chain] if chain else None,
            "stage_times": per_stage if chain else None, "stage_ratio": paired if chain else None,
            "stages_error": stages_error}


def make_row(target: Target, h: int, w: int, batch: int, cfg, latent_hw, status: str = "ok",
             message: str | None = None, meas: dict | None = None, peak: int | None = None) -> dict:
    sf = stage_flops(cfg, h, w, latent_hw, batch)
    total = sf["total"]
    row = {"target": target.name, "backend": target.backend, "dtype": dtype_name(target.dtype),
           "height": h, "width": w, "batch": batch, "megapixels": h * w / 1e6, "status": status,
           "message": message, "median_s": None, "p10_s": None, "p90_s": None, "images_per_s": None,
           "peak_memory_bytes": peak, "flops": total, "tflops": None, "floor_s": floor_seconds(total),
           "floor_share": None, "stages": None, "stages_error": None, "stage_sum_over_end_to_end": None}
    if meas is None:
        return row
    med, p10, p90 = quantiles(meas["times"])
    row.update(median_s=med, p10_s=p10, p90_s=p90, images_per_s=batch / med, tflops=total / med / 1e12,
               floor_share=floor_seconds(total) / med, stages_error=meas["stages_error"])
    if meas["stage_names"]:
        stages = []
        for name, ts in zip(meas["stage_names"], meas["stage_times"]):
            smed, s10, s90 = quantiles(ts)
            fl = sf.get(name)
            stages.append({"name": name, "median_s": smed, "p10_s": s10, "p90_s": s90,
                           "share_of_end_to_end": smed / med, "flops": fl,
                           "tflops": fl / smed / 1e12 if fl is not None and smed > 0 else None,
                           "floor_share": floor_seconds(fl) / smed if fl and smed > 0 else None})
        row["stages"] = stages
        row["stage_sum_over_end_to_end"] = float(np.median(meas["stage_ratio"]))
    return row


def build_engine(target: Target, model: InfGen, device: torch.device):
    """A fresh engine for a target, on its own copy of the weights (backends move them in place)."""
    m = copy.deepcopy(model)
    if target.build is not None:
        return target.build(m, device, target.dtype)
    engine = InfGenEngine(m, backend=target.backend, device=device, dtype=target.dtype)
    if target.compile:
        engine.backend = CompiledDecode(engine.backend.model)  # the torch backend's copy, in the target dtype
    return engine


def profile(model, device, sizes: list[tuple[int, int]], targets: list[Target], batch: int = 1,
            warmup: int = 3, iters: int = 10, max_megapixels: float | None = None,
            progress: bool | None = None) -> list[dict]:
    """Measure every (target, size); returns the rows (see SCHEMA). model: as InfGenEngine takes it.
    progress: None shows the bar on a terminal only."""
    from tqdm.auto import tqdm
    if batch < 1 or warmup < 0 or iters < 1:
        raise ValueError(f"need batch >= 1, warmup >= 0, iters >= 1; got {batch}, {warmup}, {iters}")
    device = resolve_device(device)
    base = resolve_model(model)
    cfg = base.config
    L = cfg.latent_size
    # The latent starts on the device, as it does after a diffusion model: no upload is timed.
    z = torch.randn(batch, cfg.latent_channels, L, L, generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    bar = tqdm(total=len(targets) * len(sizes), unit="row", disable=(None if progress is None else not progress),
               file=sys.stderr)
    for target in targets:
        bar.set_description(f"{target.name}: build")
        try:
            engine = build_engine(target, base, device)
        except Exception as exc:  # noqa: BLE001 - a missing or broken backend is a row, not a crash
            status = "unavailable" if isinstance(exc, ImportError) else ("OOM" if is_oom(exc) else "error")
            msg = f"could not build backend {target.backend!r}: {type(exc).__name__}: {exc}"
            rows += [make_row(target, h, w, batch, cfg, (L, L), status, msg) for h, w in sizes]
            bar.update(len(sizes))
            free_memory(device)
            continue
        for h, w in sizes:
            bar.set_description(f"{target.name} {w}x{h}")
            if max(h, w) > cfg.max_size:
                rows.append(make_row(target, h, w, batch, cfg, (L, L), "skipped",
                                     f"{w}x{h} is past the model's max_size {cfg.max_size}"))
            elif max_megapixels is not None and h * w / 1e6 > max_megapixels:
                rows.append(make_row(target, h, w, batch, cfg, (L, L), "skipped",
                                     f"{h * w / 1e6:.2f} MP is past --max-megapixels {max_megapixels}"))
            else:
                rows.append(profile_one(engine, target, z, h, w, batch, warmup, iters, device))
            bar.update(1)
        del engine
        free_memory(device)
    bar.close()
    return rows


def profile_one(engine, target: Target, z, h, w, batch, warmup, iters, device) -> dict:
    cfg, latent_hw = engine.config, tuple(z.shape[2:])
    if target.compile:
        warmup = max(warmup, 1)  # the first call compiles: never time it
    if device.type == "cuda":
        free_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        meas = measure(engine, z, h, w, warmup, iters, device)
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        else:
            with torch.no_grad():
                peak = cpu_peak_bytes(lambda: engine.to_uint8(engine.decode(z, h, w)))
    except Exception as exc:  # noqa: BLE001 - each row fails on its own
        status = "OOM" if is_oom(exc) else "error"
        free_memory(device)
        return make_row(target, h, w, batch, cfg, latent_hw, status, f"{type(exc).__name__}: {exc}")
    return make_row(target, h, w, batch, cfg, latent_hw, meas=meas, peak=peak)


# ----------------------------------------------------------------------------- report
def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_bytes": int(p.total_memory), "cuda": torch.version.cuda}
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"type": "cpu", "name": name, "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def make_report(rows: list[dict], device: torch.device, model_source: str, cfg, args: dict,
                aliases: dict[str, str]) -> dict:
    return {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device_info(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": _version("triton"), "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
                     "tensorrt": _version("tensorrt"), "numpy": np.__version__},
        "args": args,
        "model": {"source": model_source, "config": cfg.to_dict()},
        "floor": {"peak_flops": H100_BF16_FLOPS, "what": FLOOR_NOTE,
                  "note": "" if device.type == "cuda" else "the floor is the H100's; this run is on the CPU"},
        "memory_method": ("torch.cuda.max_memory_allocated over the row (weights and caches included)"
                          if device.type == "cuda" else
                          "torch.profiler memory events: peak bytes torch allocates during one decode + "
                          "to_uint8 (weights excluded; allocations outside torch, e.g. onnxruntime, not seen)"),
        "aliases": aliases,
        "rows": rows,
    }


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.2f}"


def format_table(report: dict) -> str:
    head = (f"{'target':<14}{'dtype':<6}{'size':>11}  {'status':<11}{'median ms':>10}{'p10':>9}{'p90':>9}"
            f"{'img/s':>8}{'peak MiB':>10}{'TFLOP/s':>9}{'% floor':>9}")
    dev = report["device"]
    lines = [f"device: {dev['type']} ({dev['name']}); floor: {report['floor']['what']}", head, "-" * len(head)]
    prev = None
    for r in report["rows"]:
        mib = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        lines.append(
            f"{r['target']:<14}{r['dtype']:<6}{r['width']:>5}x{r['height']:<5}  {r['status']:<11}"
            f"{_ms(r['median_s']):>10}{_ms(r['p10_s']):>9}{_ms(r['p90_s']):>9}"
            f"{'-' if r['images_per_s'] is None else format(r['images_per_s'], '.2f'):>8}{mib:>10}"
            f"{'-' if r['tflops'] is None else format(r['tflops'], '.3g'):>9}"
            f"{'-' if r['floor_share'] is None else format(100 * r['floor_share'], '.3g'):>9}")
        if r["message"] and (r["target"], r["message"]) != prev:  # a build failure: once per target
            lines.append(f"    ! {r['message'][:160]}")
        prev = (r["target"], r["message"])
        for s in r["stages"] or []:
            lines.append(f"    {s['name']:<28}{_ms(s['median_s']):>10}{_ms(s['p10_s']):>9}{_ms(s['p90_s']):>9}"
                         f"  {100 * s['share_of_end_to_end']:5.1f}% of e2e"
                         f"{'' if s['tflops'] is None else format(s['tflops'], '10.3f') + ' TFLOP/s'}")
        if r["stages"]:
            lines.append(f"    {'sum of stages / end-to-end':<28}{r['stage_sum_over_end_to_end']:>10.3f}"
                         "  (median over iterations of the paired ratio)")
        if r["stages_error"]:
            lines.append(f"    ! stage breakdown: {r['stages_error'][:160]}")
    for a, b in report["aliases"].items():
        lines.append(f"({a} is the same configuration as {b}: see that row)")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Latency against output megapixels, log-log: one line per target, the cost-model floor dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    names = list(dict.fromkeys(r["target"] for r in report["rows"]))
    for name in names:
        pts = sorted((r["megapixels"], r["median_s"]) for r in report["rows"]
                     if r["target"] == name and r["status"] == "ok")
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    floor = sorted({(r["megapixels"], r["floor_s"]) for r in report["rows"]})
    if floor:
        ax.plot(*zip(*floor), "k--", label=f"cost-model floor ({report['floor']['peak_flops'] / 1e12:.0f} TFLOP/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output megapixels")
    ax.set_ylabel("latency, median (s)")
    dev = report["device"]
    ax.set_title(f"InfGen decode, {report['model']['source']}; {dev['type']}: {dev['name']}"[:100], fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out / "profile.json", out / "profile.png"
    jpath.write_text(json.dumps(report, indent=2))
    plot(report, ppath)
    return jpath, ppath


# ----------------------------------------------------------------------------- CLI
def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip() and s.strip() != "none"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.profile", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset")
    src.add_argument("--checkpoint", help="InfGen checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="output sizes, WIDTHxHEIGHT")
    p.add_argument("--backends", default=",".join(BACKEND_NAMES), help="comma list of " + ",".join(BACKEND_NAMES))
    p.add_argument("--baselines", default="auto",
                   help="comma list of " + ",".join(BASELINES) + " or none; auto: torch-fp32,torch-bf16 "
                        "and, on CUDA, torch-compile (on the CPU inductor compiles for ~10 s a size)")
    p.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda when present)")
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--max-megapixels", type=float, default=None, help="skip larger sizes (rows say 'skipped')")
    p.add_argument("--out", default="profile_out", help="directory for profile.json and profile.png")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    device = resolve_device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(a.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    sizes = [parse_size(s) for s in a.sizes]
    baselines = (["torch-fp32", "torch-bf16"] + (["torch-compile"] if device.type == "cuda" else [])
                 if a.baselines == "auto" else _split(a.baselines))
    targets, aliases = make_targets(_split(a.backends), baselines, dtype, device)
    source = a.checkpoint or a.preset
    model = resolve_model(source)
    rows = profile(model, device, sizes, targets, a.batch, a.warmup, a.iters, a.max_megapixels,
                   progress=False if a.no_progress else None)
    args = {k: v for k, v in vars(a).items()}
    args.update(device=str(device), dtype=dtype_name(dtype), baselines=baselines)
    report = make_report(rows, device, f"checkpoint {a.checkpoint}" if a.checkpoint else f"preset {a.preset} (random weights)",
                         model.config, args, aliases)
    print(format_table(report))
    jpath, ppath = write_outputs(report, a.out)
    print(f"wrote {jpath} and {ppath}")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, FileNotFoundError) as exc:  # user errors: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
