"""The client of an InfGen server (runtime/serving.py): `InfGenClient(url).decode(latent, h, w)`.

    from infgen.runtime.client import InfGenClient, ServerError
    with InfGenClient("127.0.0.1:8000") as client:         # or ("127.0.0.1:8001", protocol="grpc")
        images = client.decode(latent, 1080, 1920)          # (B, 1080, 1920, 3) uint8

It imports numpy, tritonclient (`pip install -e ".[serve]"`) and the standard library, never
torch: a process that only sends requests (a web front end, the Locust users of `runtime
loadtest`) stays small. A torch tensor is still accepted as a latent: one exists only where torch
is already imported. The request's inputs (docs/serving.md):

    latent  FP32   (B, C, h_l, w_l)   height  INT32  (B, 1)   width  INT32  (B, 1)
"""
from __future__ import annotations

import sys

import numpy as np

from infgen.ref.arrays import check_floating_array

MODEL_NAME = "infgen"
SERVE_EXTRA = 'pip install -e ".[serve]" (in its own venv: nvidia-pytriton needs numpy<2)'


class ServerError(RuntimeError):
    """The server answered a request with an error; str(exc) is the server's reason (one line)."""


def _reason(text: str) -> str:
    """The reason line of a server error: PyTriton sends the model function's whole traceback."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        for prefix in ("ValueError: ", "TypeError: ", "MemoryError: "):
            if prefix in ln:
                return ln[ln.index(prefix) + len(prefix):]
    return lines[-1] if lines else str(text)


def latent_array(latent) -> np.ndarray:
    """A latent as the server takes it: numpy array (or anything np.asarray takes) or torch tensor,
    (C, h_l, w_l) or (B, C, h_l, w_l), of a floating dtype -> C-contiguous float32 (B, C, h_l, w_l).
    TypeError naming an integer, bool or complex dtype (the server checks the shape)."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch is imported; never import it here
    if torch is not None and isinstance(latent, torch.Tensor):
        from infgen.ref.model import check_floating
        latent = check_floating(latent).detach().float().cpu().numpy()
    else:
        latent = check_floating_array(np.asarray(latent))
    return np.ascontiguousarray(latent[None] if latent.ndim == 3 else latent, dtype=np.float32)


def request_arrays(latent, h: int, w: int) -> dict[str, np.ndarray]:
    """One request's inputs: {"latent": (B, C, h_l, w_l) float32, "height", "width": (B, 1) int32}.
    TypeError for a size that is not an int (the server checks its range)."""
    latent = latent_array(latent)
    for name, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    B = latent.shape[0] if latent.ndim else 0
    return {"latent": latent, "height": np.full((B, 1), h, np.int32), "width": np.full((B, 1), w, np.int32)}


def infer_inputs(tc, arrays: dict[str, np.ndarray]) -> list:
    """request_arrays -> tritonclient InferInputs (tc: tritonclient.http or tritonclient.grpc),
    binary tensors over HTTP."""
    from tritonclient.utils import np_to_triton_dtype
    inputs = []
    for name, a in arrays.items():
        t = tc.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
        t.set_data_from_numpy(a)
        inputs.append(t)
    return inputs


class InfGenClient:
    """decode(latent, h, w) on a server: (B, h, w, 3) uint8, as engine.to_uint8(engine.decode(...)).

    url: "host:port" (HTTP, port 8000 by default) or with protocol="grpc" the gRPC port (8001).
    One client per thread: tritonclient's clients are not thread-safe."""

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", model_name: str = MODEL_NAME,
                 timeout_s: float = 600.0):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        try:
            if protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
        except ImportError as exc:
            raise ImportError(f"the client needs tritonclient: {SERVE_EXTRA}") from exc
        self.tc, self.protocol, self.model_name, self.timeout_s = tc, protocol, model_name, timeout_s
        url = url.split("://", 1)[-1]
        self.client = (tc.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
                       if protocol == "http" else tc.InferenceServerClient(url))

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self):
        self.client.close()

    def ready(self) -> bool:
        from tritonclient.utils import InferenceServerException
        try:
            return bool(self.client.is_server_ready()) and bool(self.client.is_model_ready(self.model_name))
        except (InferenceServerException, ConnectionError, OSError):
            return False

    def infer(self, latent, h: int, w: int, png: bool = False) -> np.ndarray:
        """One request: output "image" (B, h, w, 3) uint8, or with png=True "png" (B, 1) PNG bytes.
        ServerError with the server's reason when it refuses the request."""
        from tritonclient.utils import InferenceServerException
        inputs = infer_inputs(self.tc, request_arrays(latent, h, w))
        output = "png" if png else "image"
        try:
            kw = {} if self.protocol == "http" else {"client_timeout": self.timeout_s}  # http: set in the constructor
            result = self.client.infer(self.model_name, inputs, outputs=[self.tc.InferRequestedOutput(output)], **kw)
        except InferenceServerException as exc:
            raise ServerError(_reason(exc.message())) from exc
        return result.as_numpy(output)

    def decode(self, latent, h: int, w: int) -> np.ndarray:
        """latent (B, C, h_l, w_l) or (C, h_l, w_l) -> (B, h, w, 3) uint8."""
        return self.infer(latent, h, w)

    def decode_png(self, latent, h: int, w: int) -> list[bytes]:
        """latent -> one PNG file (bytes) per image, encoded by the server."""
        return [row[0] for row in self.infer(latent, h, w, png=True)]
