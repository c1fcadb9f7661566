"""TensorRT backend: a multi-profile engine built by export/trt.py, run on torch's current CUDA
stream. Lifecycle: build or load (cached by export.trt.load_or_build) -> one execution context
-> per request: pick the profile (export.plan.bind_shapes), set input shapes and tensor
addresses, execute_async_v3. The engine crops (InfGenEngine.decode).

Never run in this workplace (no TensorRT can be installed here): see docs/export.md.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from export.plan import Plan, bind_shapes, make_plan, pick_profile
from infgen_ref.config import dtype_name
from infgen_ref.model import InfGen


@functools.lru_cache(maxsize=1)
def tensorrt_available() -> bool:
    """True if tensorrt >= 10.9 imports and a CUDA device is present (probed once, on first call)."""
    from export.trt import TensorRTMissing, import_tensorrt
    try:
        import_tensorrt()
    except TensorRTMissing:
        return False
    return torch.cuda.is_available()


class TrtBackend:
    """Options: engine_dir (default "engines"), plan (a Plan or a plan.json path; default: a plan
    for min_res..max_res with the default opt sizes), min_res, max_res (default the model's
    max_size), batch, onnx_path (TensorRT-flavour ONNX; default: exported into cache_dir)."""

    name = "tensorrt"

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype, engine_dir="engines",
                 plan=None, min_res: int = 256, max_res: int | None = None, batch: int = 1,
                 onnx_path=None, cache_dir=None, rebuild: bool = False):
        if device.type != "cuda":
            raise ValueError(f"the tensorrt backend needs a CUDA device, got {device}")
        from export.trt import import_tensorrt, load_or_build
        self.trt = import_tensorrt()
        cfg = model.config
        if plan is None:
            plan = make_plan(min_res, max_res or cfg.max_size, batch=batch, upscale=cfg.upscale,
                             latent_channels=cfg.latent_channels)
        elif not isinstance(plan, Plan):
            plan = Plan.from_json(Path(plan).read_text())
        self.plan, self.device = plan, device
        if onnx_path is None:
            from export.onnx import cached_export
            onnx_path = cached_export(model, dtype, "tensorrt", cache_dir)
        with torch.cuda.device(device):
            self.engine, self.engine_path = load_or_build(onnx_path, plan, dtype_name(dtype), engine_dir, rebuild)
            self.context = self.engine.create_execution_context()
        self.profile = None
        self.grids: dict[tuple[int, int], torch.Tensor] = {}

    def covers(self, batch: int, Hp: int, Wp: int) -> bool:
        """Whether a profile of the plan serves this grid and batch (else the engine's chain goes on)."""
        try:
            i = pick_profile(self.plan, Hp, Wp)
        except ValueError:
            return False
        lo, _, hi = self.plan.profiles[i].shapes["latent"]
        return lo[0] <= batch <= hi[0]

    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: (B, C, h_l, w_l) float32 on the device -> (B, 3, 8H', 8W') float32."""
        i, shapes, out_shape = bind_shapes(self.plan, tuple(z.shape), Hp, Wp)
        stream = torch.cuda.current_stream(self.device)
        if i != self.profile:
            self.context.set_optimization_profile_async(i, stream.cuda_stream)
            self.profile = i
        z = z.contiguous()
        grid = self.grids.get((Hp, Wp))
        if grid is None:  # values unused: only its shape (H', W') reaches the graph
            grid = self.grids[(Hp, Wp)] = torch.zeros((Hp, Wp), device=self.device)
        image = torch.empty(out_shape, device=self.device, dtype=torch.float32)
        for name, t in (("latent", z), ("grid", grid)):
            if not self.context.set_input_shape(name, shapes[name]):
                raise ValueError(f"TensorRT rejected shape {shapes[name]} for input {name!r}")
            self.context.set_tensor_address(name, t.data_ptr())
        self.context.set_tensor_address("image", image.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for grid {Hp}x{Wp}, batch {z.shape[0]}")
        return image
