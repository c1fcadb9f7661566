"""InfGenEngine: one decode API over the backends (torch, triton, onnxruntime, tensorrt).

Lifecycle: resolve the model (preset, checkpoint directory or InfGen) -> build the backend (or,
for "auto", the chain of backends) -> decode(latent, h, w), which validates, picks the first backend
that covers the request on the (H', W') token grid, runs the memory plan (plan(h, w, batch): plain,
sub-batches, banded or refused) on it, and crops.

A backend (runtime/<name>_backend.py) subclasses infgen.runtime.backend.Backend, the contract
(name, run, covers, stages, model, ops, mask_and_q0, caches), and owns its copy of the weights.
The torch and triton backends are infgen.ref.decode over their op tables.
"""
from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path

import torch

from infgen.ref import DEMO_CHECKPOINT
from infgen.ref.config import PRESETS, parse_dtype
from infgen.ref.memory import DecodePlan
from infgen.ref.model import InfGen, check_image, check_latent, check_output, check_size, copy_model, token_grid
from infgen.ref.weights import TRAINED_PRESETS, load_checkpoint, preset_model
from infgen.runtime.backend import Backend
from infgen.runtime.io import image_to_uint8, save_image

BACKENDS = ("auto", "torch", "triton", "onnxruntime", "tensorrt")
# Backends whose covers() is true for every request the engine accepts: an "auto" chain ends at
# the first of them that builds (tensorrt covers its plan's profiles only).
COVERS_ALL = ("torch", "triton", "onnxruntime")
log = logging.getLogger(__name__)


def default_model(bundled: Path = DEMO_CHECKPOINT) -> str:
    """The model of InfGenEngine() and of every tool run without --preset/--checkpoint: the bundled
    demo checkpoint directory if present, else the "tiny" preset (random weights)."""
    if (bundled / "config.json").is_file() and (bundled / "model.safetensors").is_file():
        return str(bundled)
    return "tiny"


def is_random(model) -> bool:
    """Whether resolve_model(model) has random weights: a preset other than the trained ones."""
    return isinstance(model, str) and model in PRESETS and model not in TRAINED_PRESETS


def resolve_model(model) -> InfGen:
    """InfGen instance (returned as is) | preset name | checkpoint directory -> InfGen.
    Presets: "demo" is the bundled trained checkpoint; "paper" and "tiny" have random weights."""
    if isinstance(model, InfGen):
        return model  # used as given: backends copy it, nothing changes it (not even .eval())
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a preset name, a checkpoint directory or an InfGen, got {type(model).__name__}")
    if isinstance(model, str) and model in PRESETS:
        return preset_model(model)  # the same weights every time
    if Path(model).is_dir():
        return load_checkpoint(model)
    raise ValueError(f"model must be a preset ({', '.join(sorted(PRESETS))}) or a checkpoint directory, got {str(model)!r}")


def resolve_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA device is available; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def make_backend(name: str, model: InfGen, device: torch.device, dtype: torch.dtype, **options):
    """The one dispatch from backend name to backend object (optional packages are imported with
    the backend's module). The backend copies the weights it needs; model is not touched."""
    return backend_class(name)(model, device, dtype, **options)


def backend_class(name: str):
    """The class of a backend name (imports its module)."""
    if name == "torch":
        from infgen.runtime.torch_backend import TorchBackend
        return TorchBackend
    if name == "triton":
        from infgen.runtime.triton_backend import TritonBackend
        return TritonBackend
    if name == "onnxruntime":
        from infgen.runtime.ort_backend import OrtBackend
        return OrtBackend
    if name == "tensorrt":
        from infgen.runtime.trt_backend import TrtBackend
        return TrtBackend
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def auto_chain(device: torch.device) -> list[str]:
    """backend="auto": the backends to try, fastest first, each present on this device; torch last
    (it covers every size the engine accepts; built only if no earlier backend in COVERS_ALL builds)."""
    names = []
    if device.type == "cuda":
        from infgen.runtime.trt_backend import tensorrt_available
        if tensorrt_available():
            names.append("tensorrt")
        from infgen.runtime.triton_backend import triton_available
        if triton_available(device):
            names.append("triton")
    return names + ["torch"]


class InfGenEngine:
    """decode(latent, h, w) -> (B, 3, h, w) float32 in [-1, 1] on the engine's device.

    model: checkpoint directory, preset name ("demo": the bundled trained checkpoint; "paper",
    "tiny": random weights), or an InfGen module (never modified: each backend decodes on its own
    copy of the weights, encode on an fp32 copy); default: default_model(), the bundled demo
    checkpoint, as the command-line tools.
    backend: "torch" | "triton" | "onnxruntime" | "tensorrt" | "auto". "auto" builds a chain
    (tensorrt, triton where available, torch last) and each decode runs on the first backend that
    covers the request, so "auto" accepts exactly the sizes of "torch"; .backend_name says which
    backend ran the last decode (before any decode: the first of the chain).
    dtype: "fp32" | "fp16" | "bf16"; default fp32 on the CPU, bf16 on CUDA.
    max_memory, banded, band_rows: the any-size path (runtime/anysize.py, docs/anysize.md) and its
    one memory-and-batching policy: plan(h, w, batch) says whether a decode runs whole, in
    sub-batches, banded within the budget, or is refused, and decode runs that plan (a refusal is
    MemoryBudgetError, a ValueError, before any work); an OOM that slips through releases the
    per-size caches and raises it too (docs/robustness.md). Thread-safe: one engine may serve several threads.
    backend_options go to the backend's constructor (with "auto": to each backend that takes them)."""

    def __init__(self, model=None, backend: str = "torch", device="cpu", dtype=None, max_memory=None,
                 banded="auto", band_rows=None, **backend_options):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype if dtype is not None else ("bf16" if self.device.type == "cuda" else "fp32"))
        model = default_model() if model is None else model
        self.model = resolve_model(model)
        self.config = self.model.config
        self.random_weights = is_random(model)
        self.skipped: dict[str, str] = {}  # auto: backend name -> why it is not in the chain
        if backend == "auto":
            self.backends = self._build_chain(auto_chain(self.device), backend_options)
        else:
            self.backends = [make_backend(backend, self.model, self.device, self.dtype, **backend_options)]
        self._last = self.backends[0]
        self._encoder: InfGen | None = None
        self._lock = threading.Lock()
        from infgen.runtime.anysize import check_options
        self.max_memory, self.banded, self.band_rows = check_options(max_memory, banded, band_rows, self.backends)

    def _build_chain(self, names: list[str], options: dict) -> list:
        """Each named backend with the options its constructor takes, up to the first in COVERS_ALL
        that builds; one that fails to build is skipped (reason logged and kept in .skipped), except
        the last (torch), which must build."""
        takes = {}
        for name in names:
            params = inspect.signature(backend_class(name).__init__).parameters
            takes[name] = {k: v for k, v in options.items() if k in params}
        unused = set(options) - {k for t in takes.values() for k in t}
        if unused:
            raise TypeError(f"backend option(s) {sorted(unused)} are taken by none of the backends {names}")
        chain = []
        for i, name in enumerate(names):
            try:
                chain.append(make_backend(name, self.model, self.device, self.dtype, **takes[name]))
            except (ImportError, RuntimeError, ValueError) as exc:
                if i == len(names) - 1:
                    raise
                self.skipped[name] = f"{type(exc).__name__}: {exc}"
                log.warning("backend=auto: skipping %s: %s", name, self.skipped[name])
                continue
            if name in COVERS_ALL:  # nothing after it would ever run: build no more weight copies
                break
        return chain

    @property
    def backend(self):
        """The backend that ran the last decode (before any decode: the first of the chain)."""
        return self._last

    @backend.setter
    def backend(self, backend: Backend) -> None:
        """Replace the chain by one backend object (a Backend subclass instance: name, run, ...)."""
        if not isinstance(backend, Backend):
            raise TypeError(f"backend must be an infgen.runtime.backend.Backend (name, run, covers, ...), "
                            f"got {type(backend).__name__}")
        self.backends = [backend]
        self._last = backend

    @property
    def backend_name(self) -> str:
        return self._last.name

    def check(self, latent, h, w) -> tuple[torch.Tensor, int, int]:
        """Validate a request; returns the latent as float32 (B, C, h_l, w_l) on the device, and (h, w)."""
        h, w = check_size(h, w, self.config)
        z = check_latent(latent, self.config, self.dtype)
        return z.to(device=self.device, dtype=torch.float32), h, w

    def backend_for(self, batch: int, Hp: int, Wp: int):
        """The first backend of the chain that covers a (batch, H', W') request."""
        for b in self.backends:
            if b.covers(batch, Hp, Wp):
                return b
        u = self.config.upscale
        raise ValueError(f"no backend of {[b.name for b in self.backends]} covers batch {batch} at token grid "
                         f"{Hp}x{Wp} (output up to {u * Hp}x{u * Wp}); use backend='auto' or 'torch'")

    def decode(self, latent, h, w, progress=None) -> torch.Tensor:
        """Scaled latent (B, C, h_l, w_l) -> image (B, 3, h, w) in [-1, 1], float32. Runs exactly the
        plan that plan(h, w, B) answers (a refusal is MemoryBudgetError, before any work). progress:
        None, or progress(done, total) called after each plain run (samples) or banded conv band
        (bands): the hook of the command-line progress bars; the engine itself never prints."""
        z, h, w = self.check(latent, h, w)
        Hp, Wp = token_grid(h, w, self.config)
        backend = self.backend_for(z.shape[0], Hp, Wp)
        from infgen.runtime.anysize import engine_plan, run_plan
        img = run_plan(self, backend, engine_plan(self, backend, h, w, z.shape[0]), z, h, w, Hp, Wp, progress)
        self._last = backend
        return check_output(img[:, :, :h, :w].float(), "decode").clamp(-1, 1)

    def plan(self, h: int, w: int, batch: int = 1) -> DecodePlan:
        """The DecodePlan (infgen.ref.memory) a decode of `batch` latents to (h, w) runs now, on the
        backend that would run it: mode "plain" | "sub-batches" | "banded" | "banded-host" | "refuse",
        sub_batch, band_rows, peak_bytes (predicted), host_over, reason. One policy for both: decode
        calls the same function. The budget is max_memory, else the free memory of the moment; on
        CUDA without max_memory, per-size caches are released when that changes the plan (as decode)."""
        from infgen.runtime.anysize import engine_plan
        h, w = check_size(h, w, self.config)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        return engine_plan(self, self.backend_for(batch, *token_grid(h, w, self.config)), h, w, batch)

    def encoder_model(self) -> InfGen:
        """The fp32 reference weights on the engine's device that encode runs on: the resolved model
        itself when it is already fp32 there, else a copy made on first use."""
        with self._lock:
            if self._encoder is None:
                ps = list(self.model.parameters())
                if all(p.dtype == torch.float32 and p.device == self.device for p in ps) and not self.model.training:
                    self._encoder = self.model
                else:
                    self._encoder = copy_model(self.model, self.device, torch.float32)
            return self._encoder

    def encode(self, image) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] (tensor or array) -> scaled latent, float32, computed in fp32
        on the reference weights (whatever the backend's dtype)."""
        x = check_image(image, self.config).to(self.device)
        model = self.encoder_model()
        with torch.inference_mode():
            return check_output(model.encode(x).float(), "encode")

    # ---------------------------------------------------------------- output helpers
    to_uint8 = staticmethod(image_to_uint8)  # (B, 3, h, w) or (3, h, w) in [-1, 1] -> (B, h, w, 3) uint8

    @classmethod
    def to_pil(cls, image: torch.Tensor) -> list:
        from PIL import Image
        return [Image.fromarray(a) for a in cls.to_uint8(image)]

    @staticmethod
    def save(image, path: str | Path) -> list[Path]:
        """Save (B, 3, h, w) or (3, h, w): path as given for one image, else with _0, _1, ... suffixes."""
        return save_image(image, path)
