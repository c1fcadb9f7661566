"""The engine's any-size path: the memory budget, the plan (plain or banded) and the banded run.

InfGenEngine(..., max_memory=None | bytes | "24GB", banded="auto" | True | False, band_rows=None)
asks `engine_plan` before each decode: banded when the memory model (infgen_ref/memory.py) predicts
that the plain decode's peak exceeds the budget, or when forced. The banded run is
infgen_ref.decode over infgen_ref.banded's ops, on the backend's own weights and with the
backend's attention ops (torch and triton backends; onnxruntime and TensorRT run whole graphs and
have no banded path).
"""
from __future__ import annotations

import dataclasses

import torch

from infgen_ref import decode as D
from infgen_ref.banded import banded_ops
from infgen_ref.memory import host_threshold, parse_bytes, plan

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
    """Free device memory (CUDA), or the RAM the kernel reports available (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo: pass max_memory=")


def engine_plan(engine, backend, h: int, w: int, batch: int = 1):
    """(mode, band rows, predicted peak bytes) for a decode on one of the engine's backends."""
    name = backend.name
    banded = engine.banded if name in BANDED_BACKENDS else False
    budget = engine.max_memory
    if budget is None and banded == "auto":
        budget = int(free_memory(engine.device) * (1 - MARGIN))
    return plan(engine.config, h, w, batch, engine.dtype, "triton" if name == "triton" else "torch",
                budget, banded, engine.band_rows, host_streaming=engine.device.type == "cuda")


@torch.inference_mode()
def run_banded(backend, z: torch.Tensor, Hp: int, Wp: int, band_rows: int | None,
               host_over: int | None = None) -> torch.Tensor:
    """The banded decode on a torch/triton backend's weights: z (B, C, h, w) -> (B, 3, 8H', 8W') on
    z's device. host_over: activations past this many bytes live in host memory (CUDA)."""
    model = backend.model
    mask, q0 = backend.mask_and_q0(Hp, Wp) if hasattr(backend, "mask_and_q0") else D.mask_and_q0(model, Hp, Wp)
    ops = banded_ops(band_rows, compute=z.device, host_over=host_over)
    own = getattr(backend, "ops", None)
    if own is not None:  # the backend's attention (e.g. the triton flash kernels); convs and norms banded
        ops = dataclasses.replace(ops, cross_attention=own.cross_attention, self_attention=own.self_attention)
    return D.decode_grid(ops, model, z, Hp, Wp, mask, q0).to(z.device)


def run_planned(engine, backend, z: torch.Tensor, h: int, w: int, Hp: int, Wp: int) -> torch.Tensor:
    """engine.decode's run on the chosen backend, in the plan's mode -> (B, 3, 8H', 8W')."""
    mode, _, _ = engine_plan(engine, backend, h, w, z.shape[0])
    if mode == "plain":
        return backend.run(z, Hp, Wp)
    over = None
    if mode == "banded-host":
        budget = engine.max_memory or int(free_memory(engine.device) * (1 - MARGIN))
        over = host_threshold(engine.config, h, w, z.shape[0], engine.dtype,
                              "triton" if backend.name == "triton" else "torch", budget, engine.band_rows)
    return run_banded(backend, z, Hp, Wp, engine.band_rows, over)
