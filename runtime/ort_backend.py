"""onnxruntime backend: the exported ONNX graph (standard ops only) on the CPU, or on CUDA where
onnxruntime-gpu is installed. One session per (ONNX file, providers), shared by all instances.
The backend's weights are the ONNX file's (export/onnx.py exports a copy; the model is not touched)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from infgen.ref.model import InfGen
from infgen.runtime.backend import Backend

_SESSIONS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError("the onnxruntime backend needs the package onnxruntime "
                          "(pip install onnxruntime, or onnxruntime-gpu for CUDA)") from exc
    return onnxruntime


def providers_for(device: torch.device) -> list[str]:
    """Execution providers for a device; ValueError if CUDA is asked for and not installed."""
    ort = _import_ort()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(f"device {device} needs onnxruntime's CUDAExecutionProvider, which this "
                         f"onnxruntime lacks (has {ort.get_available_providers()}): pip install onnxruntime-gpu")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


def session_for(path: str | Path, providers: list, threads: int | None = None):
    """A cached onnxruntime.InferenceSession for (path, providers, threads)."""
    ort = _import_ort()
    key = (str(Path(path).resolve()), repr(providers), threads)
    with _LOCK:
        if key not in _SESSIONS:
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            _SESSIONS[key] = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        return _SESSIONS[key]


class OrtBackend(Backend):
    """Runs the "onnxruntime" flavour of export/onnx.py. Options: onnx_path (use this file; else
    the model is exported on first use into cache_dir, keyed by weights, config and dtype),
    cache_dir, threads (intra-op threads). Covers every size (the graph's dims are all dynamic)."""

    name = "onnxruntime"

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype, onnx_path=None,
                 cache_dir=None, threads: int | None = None):
        allowed = (torch.float32,) if device.type == "cpu" else (torch.float32, torch.float16)
        if dtype not in allowed:
            raise ValueError(f"the onnxruntime backend on {device.type} supports dtype "
                             f"{[str(d) for d in allowed]}, got {dtype}")
        self.device = device
        providers = providers_for(device)
        if onnx_path is None:
            from infgen.export.onnx import cached_export
            onnx_path = cached_export(model, dtype, "onnxruntime", cache_dir)
        elif not Path(onnx_path).is_file():
            raise FileNotFoundError(f"onnx_path {str(onnx_path)!r} does not exist")
        self.onnx_path = Path(onnx_path)
        self.session = session_for(self.onnx_path, providers, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["latent", "grid"]:
            raise ValueError(f"{self.onnx_path} has inputs {names}; expected ['latent', 'grid'] "
                             "(export it with python -m infgen.export.onnx)")

    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: (B, C, h_l, w_l) float32 -> (B, 3, 8H', 8W') float32 on the backend's device."""
        feed = {"latent": z.detach().float().cpu().numpy(), "grid": np.zeros((Hp, Wp), np.float32)}
        (image,) = self.session.run(["image"], feed)
        return torch.from_numpy(image).to(self.device)
