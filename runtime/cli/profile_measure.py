"""The profiler's measurement: where the time and memory of a decode go, per target and size.

A target is a backend at the run's dtype, or a baseline (torch-fp32, torch-bf16, torch-fp16,
torch-compile). For every (target, size), one row: median / p10 / p90 latency of the user's path
(engine.decode + InfGenEngine.to_uint8), images per second, peak memory, achieved TFLOP/s and
the share of the cost-model floor (infgen_ref/cost.py). Backends whose `stages(Hp, Wp)` is a
chain (not None) also get a per-stage breakdown: tokens+cross_attn, mid_block, up_blocks, to_uint8.

Timing: CUDA events on a GPU (host clock never read between them), time.perf_counter on the
CPU. Each iteration runs the end-to-end path once and then the stage chain once, with a mark
between stages, so both sets of numbers come from the same minutes of the machine's life;
medians over `iters` after `warmup`. A row that fails (backend missing, raises, out of memory)
records its status and message; the run goes on. Rows: profile_report.SCHEMA. The tool:
runtime/cli/profiler.py. Needs neither tqdm nor matplotlib (a progress bar when tqdm is there).
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from infgen.ref.config import dtype_name, parse_dtype
from infgen.ref.cost import decode_flops, floor_seconds
from infgen.ref.model import InfGen, token_grid
from infgen.runtime.backend import Backend
from infgen.runtime.engine import BACKENDS, InfGenEngine, resolve_device, resolve_model

DEFAULT_SIZES = ((1024, 1024), (1080, 1920), (2048, 2048), (2160, 3840), (4096, 4096))  # (h, w)
# baseline name -> (backend, dtype or None for the run's dtype, torch.compile?)
BASELINES = {"torch-fp32": ("torch", "fp32", False), "torch-bf16": ("torch", "bf16", False),
             "torch-fp16": ("torch", "fp16", False), "torch-compile": ("torch", None, True)}
STATUSES = ("ok", "OOM", "error", "unavailable", "skipped")


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


class CompiledDecode(Backend):
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
        if b not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {b!r}")
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
    stages = engine.backend.stages(Hp, Wp)
    if stages is None:
        return None
    return list(stages) + [("to_uint8", lambda x: engine.to_uint8(x[:, :, :h, :w].float().clamp(-1, 1)))]


def is_memory_failure(exc: BaseException) -> bool:
    """An out-of-memory failure (infgen.runtime.anysize.is_oom), or the engine's guard refusing or
    catching one (MemoryBudgetError)."""
    from infgen.runtime.anysize import MemoryBudgetError, is_oom
    return isinstance(exc, MemoryBudgetError) or is_oom(exc)


def release_memory(device: torch.device) -> None:
    """Collect garbage and give PyTorch's cached CUDA blocks back (between rows and after a failure)."""
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
                stages_error = ("OOM: " if is_memory_failure(exc) else "") + f"{type(exc).__name__}: {exc}"
                chain, per_stage = None, []
                release_memory(device)
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


def target_engine(target: Target, model: InfGen, device: torch.device):
    """A fresh engine for a target (each backend makes its own copy of the weights)."""
    if target.build is not None:
        return target.build(model, device, target.dtype)
    engine = InfGenEngine(model, backend=target.backend, device=device, dtype=target.dtype)
    if target.compile:
        engine.backend = CompiledDecode(engine.backend.model)  # the torch backend's copy, in the target dtype
    return engine


class _Progress:
    """A tqdm bar when tqdm is installed (it is optional: the GPU image has none), else one line per
    row on stderr. enabled None: only when stderr is a terminal."""

    def __init__(self, total: int, enabled: bool | None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="row", disable=not self.enabled, file=sys.stderr)

    def step(self, what: str, rows: list[dict], n: int = 1) -> None:
        if self.bar is not None:
            self.bar.set_description(what)
            self.bar.update(n)
        elif self.enabled:
            print(f"{what}: {rows[-1]['status']}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def profile(model, device, sizes: list[tuple[int, int]], targets: list[Target], batch: int = 1,
            warmup: int = 3, iters: int = 10, max_megapixels: float | None = None,
            progress: bool | None = None, on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Measure every (target, size); returns the rows (see profile_report.SCHEMA).

    model: as InfGenEngine takes it; sizes: (h, w). on_row(rows so far) runs after every row (the
    tool writes its JSON there, so a run killed midway keeps what it measured). progress: None
    shows progress on a terminal only."""
    if batch < 1 or warmup < 0 or iters < 1:
        raise ValueError(f"need batch >= 1, warmup >= 0, iters >= 1; got {batch}, {warmup}, {iters}")
    device = resolve_device(device)
    base = resolve_model(model)
    cfg = base.config
    L = cfg.latent_size
    # The latent starts on the device, as it does after a diffusion model: no upload is timed.
    z = torch.randn(batch, cfg.latent_channels, L, L, generator=torch.Generator().manual_seed(0)).to(device)
    rows: list[dict] = []
    bar = _Progress(len(targets) * len(sizes), progress)

    def add(new_rows: list[dict], what: str) -> None:
        rows.extend(new_rows)
        bar.step(what, rows, len(new_rows))
        if on_row is not None:
            on_row(rows)

    for target in targets:
        try:
            engine = target_engine(target, base, device)
        except Exception as exc:  # noqa: BLE001 - a missing or broken backend is a row, not a crash
            status = "unavailable" if isinstance(exc, ImportError) else ("OOM" if is_memory_failure(exc) else "error")
            msg = f"could not build backend {target.backend!r}: {type(exc).__name__}: {exc}"
            add([make_row(target, h, w, batch, cfg, (L, L), status, msg) for h, w in sizes], f"{target.name}: build")
            release_memory(device)
            continue
        for h, w in sizes:
            if max(h, w) > cfg.max_size:
                row = make_row(target, h, w, batch, cfg, (L, L), "skipped",
                               f"{w}x{h} is past the model's max_size {cfg.max_size}")
            elif max_megapixels is not None and h * w / 1e6 > max_megapixels:
                row = make_row(target, h, w, batch, cfg, (L, L), "skipped",
                               f"{h * w / 1e6:.2f} MP is past --max-megapixels {max_megapixels}")
            else:
                row = profile_one(engine, target, z, h, w, batch, warmup, iters, device)
            add([row], f"{target.name} {w}x{h}")
        del engine
        release_memory(device)
    bar.close()
    return rows


def profile_one(engine, target: Target, z, h, w, batch, warmup, iters, device) -> dict:
    cfg, latent_hw = engine.config, tuple(z.shape[2:])
    if target.compile:
        warmup = max(warmup, 1)  # the first call compiles: never time it
    if device.type == "cuda":
        release_memory(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        meas = measure(engine, z, h, w, warmup, iters, device)
        if device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(device))
        else:
            with torch.no_grad():
                peak = cpu_peak_bytes(lambda: engine.to_uint8(engine.decode(z, h, w)))
    except Exception as exc:  # noqa: BLE001 - each row fails on its own
        status = "OOM" if is_memory_failure(exc) else "error"
        release_memory(device)
        return make_row(target, h, w, batch, cfg, latent_hw, status, f"{type(exc).__name__}: {exc}")
    return make_row(target, h, w, batch, cfg, latent_hw, meas=meas, peak=peak)
