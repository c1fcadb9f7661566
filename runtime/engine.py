"""InfGenEngine: one decode API over the backends (torch, triton, onnxruntime, tensorrt).

Lifecycle: resolve the model (preset, checkpoint directory or InfGen) -> pick and build the
backend -> decode(latent, h, w), which validates, runs the backend on the (H', W') token grid
and crops. A backend is any object with `name` and `run(z, Hp, Wp)`: z is the checked, scaled
latent (B, C, h_l, w_l) as float32 on the engine's device; it returns the uncropped image
(B, 3, upscale*H', upscale*W').
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from infgen_ref.config import PRESETS, parse_dtype, preset
from infgen_ref.decode import TORCH_OPS, mask_and_q0, stage_fns
from infgen_ref.model import InfGen, check_latent, check_size, token_grid
from infgen_ref.weights import load_checkpoint

BACKENDS = ("auto", "torch", "triton", "onnxruntime", "tensorrt")


def resolve_model(model) -> InfGen:
    """InfGen instance | preset name (random weights) | checkpoint directory -> InfGen (eval)."""
    if isinstance(model, InfGen):
        return model.eval()
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be a preset name, a checkpoint directory or an InfGen, got {type(model).__name__}")
    if isinstance(model, str) and model in PRESETS:
        with torch.random.fork_rng(devices=[]):  # same random weights every time, global RNG untouched
            torch.manual_seed(0)
            return InfGen(preset(model)).eval()
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


def as_tensor(latent) -> torch.Tensor:
    """torch tensor or numpy array -> torch tensor (no copy where possible)."""
    if isinstance(latent, np.ndarray):
        if latent.dtype.kind != "f":
            raise TypeError(f"latent must be a floating array, got numpy dtype {latent.dtype}")
        return torch.from_numpy(np.ascontiguousarray(latent))
    if isinstance(latent, torch.Tensor):
        return latent
    raise TypeError(f"latent must be a torch.Tensor or numpy array, got {type(latent).__name__}")


class TorchBackend:
    """The reference modules in the chosen dtype, with the mask tokens cached per grid size."""

    name = "torch"

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype, cache_size: int = 8):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.cache: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_size = cache_size

    def mask_and_q0(self, Hp: int, Wp: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask tokens, first block's queries) for a grid, cached (they depend on size and weights only)."""
        key = (Hp, Wp)
        if key not in self.cache:
            self.cache[key] = mask_and_q0(self.model, Hp, Wp)
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key]

    def stages(self, Hp: int, Wp: int) -> list[tuple[str, object]]:
        """The decode as a chain of (stage name, fn); each fn takes the previous stage's output.
        Composed in order on the latent z they equal run(z, Hp, Wp). Used by runtime.profile."""
        mask, q0 = self.mask_and_q0(Hp, Wp)
        return stage_fns(TORCH_OPS, self.model, Hp, Wp, mask, q0)

    @torch.inference_mode()
    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        x = z
        for _, fn in self.stages(Hp, Wp):
            x = fn(x)
        return x


def make_backend(name: str, model: InfGen, device: torch.device, dtype: torch.dtype, **options):
    """The one dispatch from backend name to backend object; optional packages are imported here."""
    if name == "torch":
        return TorchBackend(model, device, dtype, **options)
    if name == "triton":
        from runtime.triton_backend import TritonBackend
        return TritonBackend(model, device, dtype, **options)
    if name == "onnxruntime":
        from runtime.ort_backend import OrtBackend
        return OrtBackend(model, device, dtype, **options)
    if name == "tensorrt":
        from runtime.trt_backend import TrtBackend
        return TrtBackend(model, device, dtype, **options)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def pick_auto(device: torch.device) -> str:
    """backend="auto": the fastest backend whose requirements are present on this device."""
    if device.type == "cuda":
        from runtime.trt_backend import tensorrt_available
        if tensorrt_available():
            return "tensorrt"
        from runtime.triton_backend import triton_available
        if triton_available(device):
            return "triton"
    return "torch"


class InfGenEngine:
    """decode(latent, h, w) -> (B, 3, h, w) float32 in [-1, 1] on the engine's device.

    model: preset name (random weights), checkpoint directory, or an InfGen module.
    backend: "torch" | "triton" | "onnxruntime" | "tensorrt" | "auto" (reported in .backend_name).
    dtype: "fp32" | "fp16" | "bf16"; default fp32 on the CPU, bf16 on CUDA.
    max_memory, banded, band_rows: the any-size path (runtime/anysize.py, docs/anysize.md)."""

    def __init__(self, model="tiny", backend: str = "torch", device="cpu", dtype=None, max_memory=None,
                 banded="auto", band_rows=None, **backend_options):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.device = resolve_device(device)
        self.dtype = parse_dtype(dtype if dtype is not None else ("bf16" if self.device.type == "cuda" else "fp32"))
        self.model = resolve_model(model)
        self.config = self.model.config
        self.random_weights = isinstance(model, str) and model in PRESETS
        self.backend_name = pick_auto(self.device) if backend == "auto" else backend
        self.backend = make_backend(self.backend_name, self.model, self.device, self.dtype, **backend_options)
        from runtime.anysize import check_options
        self.max_memory, self.banded, self.band_rows = check_options(max_memory, banded, band_rows, self.backend_name)

    def check(self, latent, h, w) -> tuple[torch.Tensor, int, int]:
        """Validate a request; returns the latent as float32 (B, C, h_l, w_l) on the device, and (h, w)."""
        h, w = check_size(h, w, self.config)
        z = check_latent(as_tensor(latent), self.config)
        return z.to(device=self.device, dtype=torch.float32), h, w

    def decode(self, latent, h, w) -> torch.Tensor:
        z, h, w = self.check(latent, h, w)
        Hp, Wp = token_grid(h, w, self.config)
        from runtime.anysize import run_planned  # plain, or banded past the memory budget
        img = run_planned(self, z, h, w, Hp, Wp)
        return img[:, :, :h, :w].float().clamp(-1, 1)

    def plan(self, h: int, w: int, batch: int = 1) -> tuple[str, int | None, int]:
        """(mode "plain" | "banded" | "banded-host", band rows (banded), predicted peak device bytes)."""
        from runtime.anysize import engine_plan
        h, w = check_size(h, w, self.config)
        return engine_plan(self, h, w, batch)

    def encode(self, image) -> torch.Tensor:
        """image (B, 3, H, W) in [-1, 1] (tensor or array) -> scaled latent, float32, on the reference model."""
        x = as_tensor(image).to(self.device)
        with torch.inference_mode():
            return self.model.encode(x).float()

    # ---------------------------------------------------------------- output helpers
    @staticmethod
    def to_uint8(image: torch.Tensor) -> np.ndarray:
        """(B, 3, h, w) in [-1, 1] -> (B, h, w, 3) uint8 array."""
        x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    @classmethod
    def to_pil(cls, image: torch.Tensor) -> list:
        from PIL import Image
        return [Image.fromarray(a) for a in cls.to_uint8(image)]

    @classmethod
    def save(cls, image: torch.Tensor, path: str | Path) -> list[Path]:
        """Save each image of the batch: path as given for B == 1, else path with _0, _1, ... suffixes."""
        path = Path(path)
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise ValueError(f"output must end in .png, .jpg or .jpeg, got {str(path)!r}")
        images = cls.to_pil(image)
        paths = [path] if len(images) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}")
                                                 for i in range(len(images))]
        for im, p in zip(images, paths):
            im.save(p, quality=95) if p.suffix.lower() != ".png" else im.save(p)
        return paths
