"""backend="torch": the decode (infgen.ref.decode) over the reference ops (TORCH_OPS), on the
backend's own copy of the weights in the chosen dtype, with the mask tokens and first-block
queries cached per token grid. Runs everywhere; the baseline every other backend is held to."""
from __future__ import annotations

import torch

from infgen.ref.decode import TORCH_OPS, mask_and_q0, run_stages, stage_fns
from infgen.ref.model import InfGen, copy_model
from infgen.runtime.backend import Backend
from infgen.runtime.cache import SizeCache


class TorchBackend(Backend):
    """options: cache_size (token grids kept in the mask-token cache, >= 1)."""

    name = "torch"
    supports_banded = True

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype, cache_size: int = 8):
        self.tokens = SizeCache(cache_size)  # (H', W') -> (mask tokens (1, N, d), blocks[0] queries)
        self.device, self.dtype = torch.device(device), dtype
        self.model = copy_model(model, self.device, dtype)  # eval, no gradients; the caller's untouched

    def mask_and_q0(self, Hp: int, Wp: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask tokens, first block's queries) for a grid, cached (they depend on size and weights only)."""
        def make():
            with torch.no_grad():
                return mask_and_q0(self.model, Hp, Wp)
        return self.tokens.get_or_make((Hp, Wp), make)

    def stages(self, Hp: int, Wp: int) -> list[tuple[str, object]]:
        """The decode as [(stage name, fn)] (infgen.ref.decode.STAGES); composed in order on the
        scaled latent z they equal run(z, Hp, Wp). Used by the profiler."""
        mask, q0 = self.mask_and_q0(Hp, Wp)
        return stage_fns(TORCH_OPS, self.model, Hp, Wp, mask, q0)

    @torch.inference_mode()
    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: scaled latent (B, C, h_l, w_l) float32 -> image (B, 3, 8H', 8W') in the backend's dtype."""
        return run_stages(self.stages(Hp, Wp), z)
