"""The engine's any-size path: the memory budget, the plan (plain or banded) and the banded run.

InfGenEngine(..., max_memory=None | bytes | "24GB", banded="auto" | True | False, band_rows=None)
runs each decode through the memory guard (`guard`, in `run_planned`): whole batch plain, plain
sub-batches, banded, banded with activations in host memory (CUDA), else MemoryBudgetError before
any work, each judged by the memory model (infgen_ref/memory.py) against the budget.
`engine_plan` (engine.plan) is memory.plan's answer for one request: plain, or banded when the
plain peak exceeds the budget or when forced; it does not split batches or refuse. The banded run is
infgen.ref.decode over infgen.ref.banded's ops, on the backend's own weights and with the
backend's attention ops (torch and triton backends; onnxruntime and TensorRT run whole graphs and
have no banded path).
"""
from __future__ import annotations

import dataclasses
import gc
import math

import torch

from infgen.ref import decode as D
from infgen.ref.banded import available_ram, banded_ops
from infgen.ref.memory import band_count, host_threshold, parse_bytes, plan, predict_peak
from infgen.runtime.cache import SizeCache

MARGIN = 0.10          # of the free memory, left for weights, the allocator's slack and other work
BANDED_BACKENDS = ("torch", "triton")


def check_options(max_memory, banded, band_rows, backend_names: list[str]):
    """Validated (max_memory bytes or None, banded, band_rows); ValueError/TypeError naming the value."""
    if banded not in ("auto", True, False):
        raise ValueError(f"banded must be 'auto', True or False, got {banded!r}")
    if band_rows is not None and (not isinstance(band_rows, int) or isinstance(band_rows, bool) or band_rows < 1):
        raise ValueError(f"band_rows must be None or an int >= 1, got {band_rows!r}")
    if banded is True and not set(backend_names) & set(BANDED_BACKENDS):
        raise ValueError(f"banded=True needs backend 'torch' or 'triton', got {backend_names}")
    return (None if max_memory is None else parse_bytes(max_memory)), banded, band_rows


def free_memory(device: torch.device) -> int:
    """Free device memory (CUDA: the driver's free memory plus the blocks PyTorch's caching
    allocator holds but no tensor uses, which the next decode reuses), or the RAM the kernel reports
    available (CPU)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + max(0, cached)
    try:
        return available_ram()
    except OSError as exc:
        raise OSError(f"{exc}: pass max_memory=") from exc


def engine_plan(engine, backend, h: int, w: int, batch: int = 1):
    """(mode, band rows, predicted peak bytes) for a decode on one of the engine's backends."""
    banded = engine.banded if backend.name in BANDED_BACKENDS else False
    budget = budget_of(engine) if banded == "auto" else engine.max_memory
    return plan(engine.config, h, w, batch, engine.dtype, memory_backend(backend), budget, banded,
                engine.band_rows, host_streaming=engine.device.type == "cuda")


def memory_backend(backend) -> str:
    """The memory model's name for a backend's plain decode: 'triton' (fused GroupNorm, split
    convs) or 'torch' (every other)."""
    return "triton" if backend.name == "triton" else "torch"


@torch.inference_mode()
def run_banded(backend, z: torch.Tensor, Hp: int, Wp: int, band_rows: int | None,
               host_over: int | None = None, on_band=None) -> torch.Tensor:
    """The banded decode on a torch/triton backend's weights: z (B, C, h, w) -> (B, 3, 8H', 8W') on
    z's device. host_over: activations past this many bytes live in host memory (CUDA). on_band:
    called after each conv band (infgen_ref/banded.py), or None."""
    model = backend.model
    mask, q0 = backend.mask_and_q0(Hp, Wp) if hasattr(backend, "mask_and_q0") else D.mask_and_q0(model, Hp, Wp)
    ops = banded_ops(band_rows, compute=z.device, host_over=host_over, on_band=on_band)
    own = getattr(backend, "ops", None)
    if own is not None:  # the backend's attention (e.g. the triton flash kernels); convs and norms banded
        ops = dataclasses.replace(ops, cross_attention=own.cross_attention, self_attention=own.self_attention)
    return D.decode_grid(ops, model, z, Hp, Wp, mask, q0).to(z.device)


class MemoryBudgetError(ValueError):
    """A decode that does not fit the memory budget: refused before any work (the message names
    the predicted peak and the budget), or a device OOM that slipped through (caches released)."""


def gb(n: float) -> str:
    """Bytes for a message: '25.77 GB' or '4.56 MB'."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def budget_of(engine) -> int:
    """max_memory, or the free device memory (CUDA) / available RAM (CPU) minus MARGIN."""
    return engine.max_memory if engine.max_memory is not None else int(free_memory(engine.device) * (1 - MARGIN))


def largest_fit(fits, n: int) -> int:
    """The largest b in 1..n with fits(b) (fits monotone: true up to some b), or 0 if none."""
    if fits(n):
        return n
    lo, hi = 0, n  # fits(lo) (or lo == 0), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def guard(engine, backend, h: int, w: int, batch: int):
    """The memory guard, before any work: (mode, sub-batch, host_over) for a decode of `batch`
    latents at (h, w), in this order: the whole batch plain; the batch split into plain sub-batches;
    banded (torch/triton backends, banded not False), whole then split; on CUDA banded with
    activations in host memory; else MemoryBudgetError naming the predicted peak and the budget.
    banded=True skips plain. Sub-batches also count the full output they are gathered into.
    On CUDA without max_memory, the per-size caches (CUDA graphs hold private memory pools) are
    released and the plan made again before a decode is split, banded or refused for want of memory."""
    try:
        planned = plan_within_budget(engine, backend, h, w, batch)
    except MemoryBudgetError:
        if not holds_releasable_memory(engine):
            raise
        planned = None
    if planned is not None and (planned[:2] == ("plain", batch) or not holds_releasable_memory(engine)):
        return planned
    release_caches(engine)
    return plan_within_budget(engine, backend, h, w, batch)


def holds_releasable_memory(engine) -> bool:
    """CUDA, a budget read from free memory (no max_memory), and some per-size cache not empty."""
    return (engine.max_memory is None and engine.device.type == "cuda"
            and any(len(c) for b in engine.backends for c in vars(b).values() if isinstance(c, SizeCache)))


def plan_within_budget(engine, backend, h: int, w: int, batch: int):
    """guard's plan against the budget as it is now (see guard)."""
    cfg, dtype, name = engine.config, engine.dtype, backend.name
    budget = budget_of(engine)
    bk = memory_backend(backend)
    H, W = (cfg.upscale * math.ceil(s / cfg.upscale) for s in (h, w))
    gathered = batch * 3 * H * W * 4  # the (B, 3, H, W) fp32 result the sub-batches are copied into

    def peak(mode, b, over=None):
        p = predict_peak(cfg, h, w, b, dtype, bk, mode, engine.band_rows, host_over=over)
        return p + (gathered if b < batch else 0)

    modes = [] if engine.banded is True and name in BANDED_BACKENDS else ["plain"]
    if name in BANDED_BACKENDS and engine.banded is not False:
        modes.append("banded")
    for mode in modes:
        b = largest_fit(lambda b: peak(mode, b) <= budget, batch)
        if b:
            return mode, b, None
    if "banded" in modes and engine.device.type == "cuda":
        def over(b):
            return host_threshold(cfg, h, w, b, dtype, bk, budget, engine.band_rows)
        b = largest_fit(lambda b: peak("banded", b, over(b)) <= budget, batch)
        if b:
            return "banded-host", b, over(b)
    best = min(peak(m, 1) for m in modes)
    hint = "" if "banded" in modes else ", use backend torch or triton with banded='auto'"
    raise MemoryBudgetError(
        f"decode of batch {batch} at {w}x{h} refused: predicted peak {gb(peak(modes[0], batch))} "
        f"(at least {gb(best)} even as sub-batches of 1{', banded' if 'banded' in modes else ''}) "
        f"exceeds the memory budget {gb(budget)} (max_memory={engine.max_memory!r}); "
        f"decode a smaller size{hint} "
        f"or raise max_memory")


OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """A device or host out-of-memory error: MemoryError, or a RuntimeError whose message says so
    (torch.cuda.OutOfMemoryError is one; on the CPU torch's allocator says "can't allocate memory")."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(s in msg for s in OOM_MESSAGES)


def release_caches(engine) -> None:
    """Drop every per-size cache of the engine's backends and return cached device memory."""
    for b in engine.backends:
        for value in vars(b).values():
            if isinstance(value, SizeCache):
                value.clear()
    gc.collect()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


def progress_ticker(engine, mode: str, z: torch.Tensor, h: int, w: int, sub: int, progress):
    """(tick, total) for run_planned's progress callback, progress(done, total): plain, one tick of
    len(sub-batch) samples per sub-batch (total: the batch); banded, one tick per conv band
    (total: memory.band_count summed over the sub-batches). tick is None without progress."""
    if progress is None:
        return None, 0
    B = z.shape[0]
    if mode == "plain":
        total = B
    else:
        total = sum(band_count(engine.config, h, w, min(sub, B - i), engine.dtype, engine.band_rows,
                               tuple(z.shape[2:])) for i in range(0, B, sub))
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        progress(done, total)
    return tick, total


def run_planned(engine, backend, z: torch.Tensor, h: int, w: int, Hp: int, Wp: int,
                progress=None) -> torch.Tensor:
    """engine.decode's run on the chosen backend, as the memory guard plans it -> (B, 3, 8H', 8W').
    An OOM that slips through releases the caches and raises MemoryBudgetError (engine usable).
    progress: progress(done, total) after each plain sub-batch (in samples) or each banded conv
    band (in bands), or None (progress_ticker)."""
    B = z.shape[0]
    mode, sub, over = guard(engine, backend, h, w, B)
    tick, _ = progress_ticker(engine, mode, z, h, w, sub, progress)
    try:
        parts = []
        for i in range(0, B, sub):
            zi = z[i:i + sub]
            if mode == "plain":
                parts.append(backend.run(zi, Hp, Wp))
                if tick is not None:
                    tick(zi.shape[0])
            else:
                parts.append(run_banded(backend, zi, Hp, Wp, engine.band_rows, over, tick))
        img = parts[0] if len(parts) == 1 else torch.cat(parts)
        del parts
        return img
    except (MemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        text = str(exc).strip()
        why = type(exc).__name__ + (": " + text.splitlines()[0][:200] if text else "")
    release_caches(engine)  # outside the except block: the traceback's frames (and tensors) are gone
    raise MemoryBudgetError(f"decode of batch {B} at {w}x{h} ran out of memory ({why}) although the guard "
                            f"planned {mode} in sub-batches of {sub} within the budget {gb(budget_of(engine))}; "
                            f"caches released, the engine is usable: retry with a smaller max_memory")
