"""TensorRT backend: a multi-profile engine from infgen.export.trt.engine_for, the same entry point as
`python -m infgen.export.trt`, so the engine the CLI built into engine_dir is the one loaded here.

Lifecycle: engine_for (load the cached engine, or build it; a plan TensorRT cannot build raises
EngineUnbuildable before any build, and backend="auto" moves on to the next backend) ->
deserialise -> per request: covers (a profile holds it) -> pick the profile (bind_shapes) ->
that profile's execution context, created on first use with TensorRT's USER_MANAGED allocation
and one shared scratch buffer sized to the profiles actually used (not the largest profile's
scratch for every request) -> set shapes and addresses -> execute_async_v3 on the backend's own
CUDA stream, ordered after the caller's stream and back. A lock serialises run(), so two threads
never share a context mid-run. On TensorRT 11.1-11.2 (AOT plugins leak a CUDA module per shape
change, TensorRT issue 4849) a context is kept per exact input shape instead, so no context ever
changes shape (an LRU of `leak_contexts`).

Never run in this workplace (no TensorRT, no GPU): see docs/export.md.
"""
from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict

import torch

from infgen.export.plan import bind_shapes, covers
from infgen.export.spec import DEFAULT_BATCH, DEFAULT_MIN_RES
from infgen.ref.model import InfGen
from infgen.runtime.backend import Backend

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def tensorrt_available() -> bool:
    """True if tensorrt >= 10.9 imports and a CUDA device is present (probed once, on first call)."""
    from infgen.export.trt import TensorRTMissing, import_tensorrt
    try:
        import_tensorrt()
    except TensorRTMissing:
        return False
    return torch.cuda.is_available()


def context_key(profile: int, shapes: dict, per_shape: bool):
    """Key of the execution context serving a request: its profile, or with per_shape (the
    TensorRT 4849 workaround) the profile and the exact input shapes."""
    return (profile, tuple(sorted(shapes.items()))) if per_shape else profile


class TrtBackend(Backend):
    """Options: engine_dir (default "engines"), plan (a Plan or a plan.json path; default: the
    plan.json the CLI wrote into engine_dir, else infgen.export.spec.default_plan), min_res, max_res,
    batch (a default plan with these instead), onnx_path (TensorRT-flavour ONNX; default exported
    into cache_dir), rebuild, allow_tf32 (fp32 engines may use tf32), leak_contexts (LRU size of
    per-shape contexts on TensorRT 11.1-11.2)."""

    name = "tensorrt"

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype, engine_dir="engines",
                 plan=None, min_res: int | None = None, max_res: int | None = None, batch: int | None = None,
                 onnx_path=None, cache_dir=None, rebuild: bool = False, allow_tf32: bool = False,
                 leak_contexts: int = 8):
        if device.type != "cuda":
            raise ValueError(f"the tensorrt backend needs a CUDA device, got {device}")
        from infgen.export.trt import aot_module_leak, import_tensorrt
        self.trt = trt = import_tensorrt()
        self.device = device
        with torch.cuda.device(device):
            found = self.locate(model, dtype, engine_dir, plan, min_res, max_res, batch, onnx_path=onnx_path,
                                cache_dir=cache_dir, rebuild=rebuild, allow_tf32=allow_tf32)
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(found.data)
            if self.engine is None:  # e.g. written by another TensorRT build with the same version string
                log.warning("tensorrt: cached engine %s did not deserialise; rebuilding", found.path)
                found = self.locate(model, dtype, engine_dir, found.plan, onnx_path=onnx_path, cache_dir=cache_dir,
                                    rebuild=True, allow_tf32=allow_tf32)
                self.engine = self.runtime.deserialize_cuda_engine(found.data)
                if self.engine is None:
                    raise RuntimeError(f"TensorRT could not deserialise the engine it just built ({found.path})")
            self.stream = torch.cuda.Stream(device)
        self.plan, self.engine_path = found.plan, found.path
        self.per_shape = aot_module_leak(trt.__version__)
        if self.per_shape:
            log.warning("tensorrt %s leaks a CUDA module per shape change in AOT plugins (TensorRT issue 4849): "
                        "keeping one execution context per input shape (LRU of %d)", trt.__version__, leak_contexts)
        self.leak_contexts = leak_contexts
        self.contexts: OrderedDict = OrderedDict()
        self.scratch = torch.empty(0, dtype=torch.uint8, device=device)  # shared by every context
        self.grids: dict[tuple[int, int], torch.Tensor] = {}
        self.lock = threading.Lock()

    @staticmethod
    def locate(model: InfGen, dtype, engine_dir="engines", plan=None, min_res=None, max_res=None, batch=None,
               **options):
        """infgen.export.trt.engine_for with this backend's defaults (the Engine: bytes, path, key, plan)."""
        from infgen.export.spec import default_plan
        from infgen.export.trt import engine_for
        if plan is None and (min_res, max_res, batch) != (None, None, None):
            plan = default_plan(model.config, min_res or DEFAULT_MIN_RES, max_res, batch=batch or DEFAULT_BATCH)
        return engine_for(model, dtype, plan, engine_dir, **options)

    def covers(self, batch: int, Hp: int, Wp: int) -> bool:
        """Whether a profile of the engine's plan serves batch on grid (Hp, Wp)."""
        return covers(self.plan, batch, Hp, Wp)

    def _context(self, profile: int, shapes: dict):
        """The execution context for a request, created on first use (see the module docstring)."""
        key = context_key(profile, shapes, self.per_shape)
        ctx = self.contexts.get(key)
        if ctx is None:
            if len(self.contexts) >= (self.leak_contexts if self.per_shape else len(self.plan.profiles)):
                self.contexts.popitem(last=False)
            trt = self.trt
            ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if ctx is None:
                raise RuntimeError(f"TensorRT could not create an execution context for profile {profile}")
            ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
            if self.per_shape:  # shapes set once, never changed
                for name, shape in shapes.items():
                    if not ctx.set_input_shape(name, shape):
                        raise ValueError(f"TensorRT rejected shape {shape} for input {name!r}")
            self.contexts[key] = ctx
        self.contexts.move_to_end(key)
        return ctx

    def _scratch_for(self, profile: int) -> torch.Tensor:
        """The shared scratch buffer, grown (on the backend's stream) to this profile's need."""
        size = self.engine.get_device_memory_size_for_profile_v2(profile)
        if self.scratch.numel() < size:
            with torch.cuda.stream(self.stream):
                self.scratch = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self.scratch

    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: (B, C, h_l, w_l) float32 on the device -> (B, 3, 8H', 8W') float32."""
        i, shapes, out_shape = bind_shapes(self.plan, tuple(z.shape), Hp, Wp)
        with self.lock, torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            z = z.contiguous()
            grid = self.grids.get((Hp, Wp))
            if grid is None:  # values unused: only its shape (H', W') reaches the graph
                grid = self.grids[(Hp, Wp)] = torch.zeros((Hp, Wp), device=self.device)
            image = torch.empty(out_shape, device=self.device, dtype=torch.float32)
            ctx = self._context(i, shapes)
            scratch = self._scratch_for(i)
            ctx.set_device_memory(scratch.data_ptr(), scratch.numel())
            for name, t in (("latent", z), ("grid", grid)):
                if not self.per_shape and not ctx.set_input_shape(name, shapes[name]):
                    raise ValueError(f"TensorRT rejected shape {shapes[name]} for input {name!r}")
                ctx.set_tensor_address(name, t.data_ptr())
            ctx.set_tensor_address("image", image.data_ptr())
            self.stream.wait_stream(caller)  # z was written on the caller's stream
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for grid {Hp}x{Wp}, batch {z.shape[0]}")
            for t in (z, image):  # keep the allocator from reusing them before the stream is done
                t.record_stream(self.stream)
            caller.wait_stream(self.stream)
        return image
