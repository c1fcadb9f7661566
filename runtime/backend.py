"""Backend: the contract between InfGenEngine and a decode backend (runtime/<name>_backend.py).

Each backend subclasses it and owns its copy of the weights. What the engine, the any-size path
(runtime/anysize.py) and the profiler call, and what they get when a backend does not override it:

  name                    "torch", "triton", "onnxruntime", "tensorrt" (set by each subclass)
  run(z, Hp, Wp)          z: the checked, scaled latent (B, C, h_l, w_l) float32 on the engine's
                          device -> the uncropped image (B, 3, upscale*H', upscale*W'); required
  covers(batch, Hp, Wp)   whether run accepts that request; default True (TensorRT: its plan's profiles)
  stages(Hp, Wp)          [(stage name, fn)] composing to run, the profiler's breakdown; default
                          None (no breakdown: whole-graph backends)
  model                   the backend's own InfGen weights that the banded path decodes with
                          (torch, triton); default None (whole-graph backends have no banded path)
  ops                     the backend's infgen.ref.decode.Ops, whose attentions the banded path
                          keeps (triton: its flash kernels); default None (the reference's)
  mask_and_q0(Hp, Wp)     (mask tokens, first block's queries) for a grid; default computed from
                          `model` by infgen.ref.decode (torch and triton cache theirs per grid)
  caches()                the per-size caches (SizeCache) released under memory pressure;
                          default every SizeCache attribute of the backend
"""
from __future__ import annotations

import torch

from infgen.ref.decode import mask_and_q0
from infgen.runtime.cache import SizeCache


class Backend:
    """Base class of the engine's backends; subclasses set `name` and define `run`."""

    name: str = ""
    model = None  # InfGen | None: the weights of the banded path (torch, triton)
    ops = None    # infgen.ref.decode.Ops | None: the attentions the banded path keeps
    supports_banded: bool = False  # runs the banded decode (needs torch weights: `model`)
    memory_model: str = "torch"    # infgen.ref.memory's model of its plain decode: "torch" or "triton"

    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: scaled latent (B, C, h_l, w_l) float32 -> image (B, 3, upscale*H', upscale*W')."""
        raise NotImplementedError(f"{type(self).__name__} must define run(z, Hp, Wp)")

    def covers(self, batch: int, Hp: int, Wp: int) -> bool:
        """Whether run accepts a (batch, H', W') request; every request the engine accepts by default."""
        return True

    def stages(self, Hp: int, Wp: int) -> list[tuple[str, object]] | None:
        """The decode as [(stage name, fn)] composing to run(z, Hp, Wp), or None (no breakdown)."""
        return None

    def mask_and_q0(self, Hp: int, Wp: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask tokens (1, N, d), first block's queries or None) for a grid, from `model`."""
        if self.model is None:
            raise ValueError(f"backend {self.name!r} has no torch weights (model is None): no banded decode")
        with torch.no_grad():
            return mask_and_q0(self.model, Hp, Wp)

    def caches(self) -> list[SizeCache]:
        """The backend's per-size caches (SizeCache attributes), which the engine clears to give
        memory back (infgen.runtime.anysize.release_caches)."""
        return [v for v in vars(self).values() if isinstance(v, SizeCache)]
