"""The engine's any-size path: the memory budget, the plan and its run (plain, sub-batches, banded).

InfGenEngine(..., max_memory=None | bytes | "24GB", banded="auto" | True | False, band_rows=None)
plans each decode once, with the one policy of `infgen.ref.memory.plan` against the budget
(`engine_plan`, which is `engine.plan()`): the whole batch plain, plain sub-batches, banded,
banded with activations in host memory (CUDA), or refuse. `decode` runs exactly that plan
(`run_plan`): a refusal is MemoryBudgetError before any work. The banded run is
infgen.ref.decode over infgen.ref.banded's ops, on the backend's own weights and with the
backend's attention ops (torch and triton backends; onnxruntime and TensorRT run whole graphs and
have no banded path).
"""
from __future__ import annotations

import dataclasses
import gc

import torch

from infgen.ref import decode as D
from infgen.ref.banded import available_ram, banded_ops
from infgen.ref.memory import DecodePlan, band_count, gb, parse_bytes, plan

MARGIN = 0.10          # of the free memory, left for weights, the allocator's slack and other work


def check_options(max_memory, banded, band_rows, backends: list):
    """Validated (max_memory bytes or None, banded, band_rows); ValueError/TypeError naming the value."""
    if banded not in ("auto", True, False):
        raise ValueError(f"banded must be 'auto', True or False, got {banded!r}")
    if band_rows is not None and (not isinstance(band_rows, int) or isinstance(band_rows, bool) or band_rows < 1):
        raise ValueError(f"band_rows must be None or an int >= 1, got {band_rows!r}")
    if banded is True and not any(b.supports_banded for b in backends):
        raise ValueError(f"banded=True needs backend 'torch' or 'triton', got {[b.name for b in backends]}")
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


def engine_plan(engine, backend, h: int, w: int, batch: int = 1) -> DecodePlan:
    """engine.plan() and the plan engine.decode runs: memory.plan for one of the engine's backends
    against budget_of(engine). On CUDA without max_memory, when the per-size caches hold memory
    (CUDA graphs keep private pools) and the plan is not the one an unlimited budget gets, the
    caches are released and the plan made again with the memory they gave back."""
    planned = plan_now(engine, backend, h, w, batch)
    unlimited = ("banded" if backend_banded(engine, backend) is True else "plain", batch)
    if (planned.mode, planned.sub_batch) != unlimited and holds_releasable_memory(engine):
        release_caches(engine)
        planned = plan_now(engine, backend, h, w, batch)
    return planned


def backend_banded(engine, backend):
    """The engine's banded option for a backend: as given where it supports banding (torch,
    triton), False on the others."""
    return engine.banded if backend.supports_banded else False


def plan_now(engine, backend, h: int, w: int, batch: int) -> DecodePlan:
    """memory.plan against the budget as it is now (see engine_plan)."""
    return plan(engine.config, h, w, batch, engine.dtype, backend.memory_model, budget_of(engine),
                backend_banded(engine, backend), engine.band_rows, host_streaming=engine.device.type == "cuda")


@torch.inference_mode()
def run_banded(backend, z: torch.Tensor, Hp: int, Wp: int, band_rows: int | None,
               host_over: int | None = None, on_band=None) -> torch.Tensor:
    """The banded decode on a torch/triton backend's weights: z (B, C, h, w) -> (B, 3, 8H', 8W') on
    z's device. host_over: activations past this many bytes live in host memory (CUDA). on_band:
    called after each conv band (infgen_ref/banded.py), or None."""
    mask, q0 = backend.mask_and_q0(Hp, Wp)
    ops = banded_ops(band_rows, compute=z.device, host_over=host_over, on_band=on_band)
    own = backend.ops
    if own is not None:  # the backend's attention (e.g. the triton flash kernels); convs and norms banded
        ops = dataclasses.replace(ops, cross_attention=own.cross_attention, self_attention=own.self_attention)
    return D.decode_grid(ops, backend.model, z, Hp, Wp, mask, q0).to(z.device)


class MemoryBudgetError(ValueError):
    """A decode that does not fit the memory budget: refused before any work (the message names
    the predicted peak and the budget), or a device OOM that slipped through (caches released)."""


def budget_of(engine) -> int:
    """max_memory, or the free device memory (CUDA) / available RAM (CPU) minus MARGIN."""
    return engine.max_memory if engine.max_memory is not None else int(free_memory(engine.device) * (1 - MARGIN))


def holds_releasable_memory(engine) -> bool:
    """CUDA, a budget read from free memory (no max_memory), and some per-size cache not empty."""
    return (engine.max_memory is None and engine.device.type == "cuda"
            and any(len(c) for b in engine.backends for c in b.caches()))


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
        for cache in b.caches():
            cache.clear()
    gc.collect()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()


def progress_ticker(engine, planned: DecodePlan, z: torch.Tensor, h: int, w: int, progress):
    """(tick, total) for run_plan's progress callback, progress(done, total): plain runs, one tick of
    len(sub-batch) samples per run (total: the batch); banded, one tick per conv band (total:
    memory.band_count summed over the sub-batches). tick is None without progress."""
    if progress is None:
        return None, 0
    B, sub = z.shape[0], planned.sub_batch
    if planned.mode in PLAIN_MODES:
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


PLAIN_MODES = ("plain", "sub-batches")


def run_plan(engine, backend, planned: DecodePlan, z: torch.Tensor, h: int, w: int, Hp: int, Wp: int,
             progress=None) -> torch.Tensor:
    """engine.decode's run of `planned` (engine_plan's answer for this request) on the chosen backend
    -> (B, 3, 8H', 8W'): refused, MemoryBudgetError before any work; else runs of planned.sub_batch
    latents, plain or banded, each copied into the one output. An OOM that slips through releases the
    caches and raises MemoryBudgetError (engine usable). progress: progress(done, total) after each
    plain run (in samples) or each banded conv band (in bands), or None (progress_ticker)."""
    if planned.mode == "refuse":
        raise MemoryBudgetError(planned.reason)
    B, sub = z.shape[0], planned.sub_batch
    if not 1 <= sub <= B:
        raise ValueError(f"plan of sub-batches of {sub} does not fit a batch of {B}: make the plan for this batch")
    tick, _ = progress_ticker(engine, planned, z, h, w, progress)
    out = part = None
    try:
        for i in range(0, B, sub):
            zi = z[i:i + sub]
            if planned.mode in PLAIN_MODES:
                part = backend.run(zi, Hp, Wp)
                if tick is not None:
                    tick(zi.shape[0])
            else:
                part = run_banded(backend, zi, Hp, Wp, engine.band_rows, planned.host_over, tick)
            if sub == B:
                return part
            if out is None:  # the gathered output the plan counts: (B, 3, H, W), written run by run
                out = part.new_empty((B, *part.shape[1:]))
            out[i:i + sub].copy_(part)
            part = None
        return out
    except (MemoryError, RuntimeError) as exc:
        if not is_oom(exc):
            raise
        text = str(exc).strip()
        why = type(exc).__name__ + (": " + text.splitlines()[0][:200] if text else "")
    del out, part  # the partial results go before the caches are released
    release_caches(engine)  # outside the except block: the traceback's frames (and tensors) are gone
    raise MemoryBudgetError(f"decode of batch {B} at {w}x{h} ran out of memory ({why}) although the plan "
                            f"({planned.mode}, {sub} latent(s) a run) predicted a peak of "
                            f"{gb(planned.peak_bytes)} within the budget {gb(budget_of(engine))}; "
                            f"caches released, the engine is usable: retry with a smaller max_memory")
