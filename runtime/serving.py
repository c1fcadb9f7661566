"""Serving InfGen on NVIDIA Triton Inference Server, through PyTriton (`pip install -e ".[serve]"`).

The server side; the client (InfGenClient, torch-free) is runtime/client.py.
Model `infgen` (docs/serving.md has the HTTP/gRPC view):

    inputs   latent  FP32   (B, C, h_l, w_l)   the diffusion model's scaled latent
             height  INT32  (B, 1)             output height, the same in every row of a request
             width   INT32  (B, 1)             output width, likewise
    outputs  image   UINT8  (B, h, w, 3)       RGB pixels
             png     BYTES  (B, 1)             PNG files, encoded only when the request names this output

Lifecycle: engine (InfGenEngine) -> InfGenModel(engine, limits), the function PyTriton calls with
a list of requests -> start_server() binds it on a Triton server it starts -> stop. Triton's
dynamic batcher queues requests and hands the model function several at once; the function
checks each, groups them by output size (one engine.decode per size: grouping, not memory
policy), and splits the images back so every response holds exactly its own. How a group's
decode fits the device (whole, sub-batches, banded, or refused) is the engine's one plan
(InfGenEngine.plan): the model function neither chunks nor retries.

In front of Triton, the gates (runtime/gate.py) refuse a request over the byte limit
(request_bytes_limit) or whose declared shapes and data disagree, and run check_request on the
rest (gate_check) before Triton copies it anywhere. Triton itself rejects, before batching, a
request with the wrong dtype, rank or channel count or a batch over `max_batch`. The model
function checks again (check_request: the wire format and the pixel limit are the server's; the
latent and the size are checked by the engine's own check_latent and check_size) and rejects the
rest (NaN/inf, size out of range, over the pixel limit, latent grid too large) with a ValueError
naming the problem, which Triton returns as the error response. PyTriton fails a whole execution
at once, so a valid request that the batcher put into one execution with a malformed one gets that
error too (it names the malformed request by position) and can be resent. Out of memory (the
engine's plan refusing a group even one image at a time, or an OOM that slipped through it, both
MemoryBudgetError) is a MemoryError response naming the size, not a dead server.
"""
from __future__ import annotations

import contextlib
import io
import os
import sysconfig
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from infgen.ref.model import check_latent, check_size
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.client import MODEL_NAME, SERVE_EXTRA  # the client's side: runtime/client.py

DEFAULT_MAX_SIDE = 4096  # default per-request limit: one image of 4096^2 (or the model's max_size if smaller)


@dataclass
class Limits:
    """What one server accepts. 0 means "no limit" for the queue fields."""

    max_batch: int = 8                  # images per request and per decode (Triton's max_batch_size)
    max_pixels: int | None = None       # output pixels per request, B*h*w (None: one max_size^2 image)
    max_queue_delay_us: int = 2000      # how long the batcher holds a request to gather more
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_time_ms: int = 0          # a request queued longer is rejected
    max_queue_size: int = 0             # requests waiting beyond this are rejected
    max_request_bytes: int | None = None  # declared input bytes per request (None: request_bytes_limit's default)

    def __post_init__(self):
        for name in ("max_batch", "max_queue_delay_us", "max_queue_time_ms", "max_queue_size"):
            v = getattr(self, name)
            lo = 1 if name == "max_batch" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name in ("max_pixels", "max_request_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        self.preferred_batch_sizes = tuple(self.preferred_batch_sizes)
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch]
        if bad:
            raise ValueError(f"preferred batch sizes must be 1..max_batch ({self.max_batch}), got {bad}")


def pixel_limit(limits: Limits, config) -> int:
    """The output pixels per request the server enforces: limits.max_pixels, else one image of
    min(max_size, DEFAULT_MAX_SIDE)^2."""
    return limits.max_pixels or min(config.max_size, DEFAULT_MAX_SIDE) ** 2


def request_bytes_limit(limits: Limits, config) -> int:
    """The declared input bytes per request the server accepts: limits.max_request_bytes, else the
    largest valid request: max_batch latents of the largest grid (FP32) plus their sizes (INT32)."""
    grid = config.max_size // config.upscale
    return limits.max_request_bytes or limits.max_batch * (config.latent_channels * grid * grid * 4 + 2 * 4)


def describe_limits(limits: Limits, config) -> str:
    """The limits a server enforces, in words, for its startup line: the values the checks use."""
    return (f"max batch {limits.max_batch}, max pixels {pixel_limit(limits, config)}, "
            f"max request bytes {request_bytes_limit(limits, config)}")


MODEL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_model_name(name) -> str:
    """A Triton model name, as PyTriton accepts it and a URL carries it: 1..128 of A-Z a-z 0-9 . _ -,
    not '.' or '..'. ValueError naming it."""
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or not set(name) <= MODEL_NAME_CHARS \
            or name in (".", ".."):
        raise ValueError(f"model name must be 1..128 characters of A-Z a-z 0-9 . _ - (not '.' or '..'), got {name!r}")
    return name


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Each named port (e.g. {"--http-port": 8000}) is distinct and can be bound on host now:
    OSError naming the flag and the port otherwise, before anything starts."""
    import socket
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ValueError(f"{flag} {port} is the same port as {seen[port]}")
        seen[port] = flag
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed port in TIME_WAIT is free
            try:
                s.bind(addr)
            except OSError as exc:
                raise OSError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror}); is another "
                              f"server running there? pick another port") from exc


def check_request(request, config, max_pixels: int, dtype: torch.dtype | None = None) -> tuple[np.ndarray, int, int]:
    """One request's inputs -> (latent (B, C, h_l, w_l) float32, h, w), else ValueError/TypeError.
    The wire format (an FP32 latent with a batch dimension; INT32 height and width, one equal row
    per latent) and the pixel limit are the server's; the latent and the size are checked by the
    engine's own check_latent and check_size (dtype: the engine's compute dtype, which bounds the
    latent's magnitude; None: fp32), the checks engine.decode makes."""
    z, hh, ww = request["latent"], request["height"], request["width"]
    if not isinstance(z, np.ndarray) or z.dtype != np.float32:
        raise TypeError(f"latent must be FP32, got {getattr(z, 'dtype', type(z).__name__)}")
    if z.ndim != 4:
        raise ValueError(f"latent must have shape (B, {config.latent_channels}, h, w), got {z.shape}")
    check_latent(z, config, dtype)  # channels, empty dimensions, grid size, finite, magnitude
    B = z.shape[0]
    for name, v in (("height", hh), ("width", ww)):
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu":
            raise TypeError(f"{name} must be INT32, got {getattr(v, 'dtype', type(v).__name__)}")
        if v.shape != (B, 1):
            raise ValueError(f"{name} must have shape ({B}, 1), one row per latent, got {v.shape}")
        if (v != v.flat[0]).any():
            raise ValueError(f"{name} must be the same in every row of a request, got {sorted(set(v.ravel().tolist()))}")
    h, w = check_size(int(hh.flat[0]), int(ww.flat[0]), config)
    if B * h * w > max_pixels:
        raise ValueError(f"request asks for {B} image(s) of {w}x{h} = {B * h * w} pixels, over the limit of "
                         f"{max_pixels} pixels per request")
    return z, h, w


def gate_check(config, limits: Limits, dtype: torch.dtype | None = None):
    """check_request for the gates (runtime/gate.py), run on a request before Triton sees it: a
    request Triton itself refuses cheaply (missing inputs, another dtype, rank or channel count, a
    batch over max_batch) is left to Triton, so its messages stay Triton's; every other refusal
    happens here, as HTTP 400 / gRPC INVALID_ARGUMENT. Why: Triton copies every input into the
    Python backend's shared-memory pool, and a request refused by the model function leaves that
    pool larger (measured: ~8 MiB per 4 MiB refused request; successful requests do not grow it)."""
    max_pixels = pixel_limit(limits, config)

    def check(arrays: dict) -> None:
        z, hh, ww = arrays.get("latent"), arrays.get("height"), arrays.get("width")
        if (z is None or hh is None or ww is None or z.dtype != np.float32 or hh.dtype != np.int32
                or ww.dtype != np.int32 or z.ndim != 4 or z.shape[1] != config.latent_channels
                or hh.ndim != 2 or ww.ndim != 2 or not 1 <= z.shape[0] <= limits.max_batch):
            return
        check_request(arrays, config, max_pixels, dtype)
    return check


def encode_png(images: np.ndarray) -> np.ndarray:
    """(B, h, w, 3) uint8 -> (B, 1) array of PNG bytes (fast zlib level: a server spends no second on it)."""
    from PIL import Image
    out = []
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=1)
        out.append([buf.getvalue()])
    return np.array(out, dtype=np.object_)


class InfGenModel:
    """The model function PyTriton calls: requests (each maps input names to arrays) -> one dict of
    outputs per request. A thin adapter over InfGenEngine's public API (decode, to_uint8, config,
    dtype, device): each request is read by check_request; the requests of one execution are
    grouped by output size, each group is one engine.decode (whose plan runs it whole, in
    sub-batches or banded, or refuses it), and the images are split back per request."""

    def __init__(self, engine, limits: Limits | None = None):
        self.engine = engine
        self.limits = limits or Limits()
        self.max_pixels = pixel_limit(self.limits, engine.config)

    def check(self, request) -> tuple[np.ndarray, int, int]:
        return check_request(request, self.engine.config, self.max_pixels, self.engine.dtype)

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        if len(requests) == 1:
            checked = [self.check(requests[0])]
        else:
            checked, errors = [], []
            for i, r in enumerate(requests):
                try:
                    checked.append(self.check(r))
                except (ValueError, TypeError) as exc:
                    errors.append(f"request {i + 1} of {len(requests)} in this batch: {exc}")
            if errors:
                valid = len(requests) - len(errors)
                raise ValueError("; ".join(errors) + (f"; the {valid} valid request(s) of this batch were not "
                                                      "decoded: resend them" if valid else ""))
        responses = []
        for r, images in zip(requests, self.decode_all(checked)):
            out = {"image": images}
            if "png" in (getattr(r, "requested_output_names", None) or ()):
                out["png"] = encode_png(images)
            responses.append(out)
        return responses

    def decode_all(self, checked: list[tuple[np.ndarray, int, int]]) -> list[np.ndarray]:
        """Checked requests -> their images (B_i, h_i, w_i, 3) uint8, one decode per size group
        (a decode takes one output size and one latent grid)."""
        groups = defaultdict(list)  # (h, w, h_l, w_l) -> request indices
        for i, (z, h, w) in enumerate(checked):
            groups[(h, w, *z.shape[2:])].append(i)
        out: list[np.ndarray | None] = [None] * len(checked)
        for (h, w, *_), idx in groups.items():
            images = self.decode_group(np.concatenate([checked[i][0] for i in idx]), h, w)  # (N, h, w, 3)
            start = 0
            for i in idx:
                b = checked[i][0].shape[0]
                out[i] = images[start:start + b]
                start += b
            assert start == len(images)
        return out

    def decode_group(self, z: np.ndarray, h: int, w: int) -> np.ndarray:
        """(N, C, h_l, w_l) -> (N, h, w, 3) uint8 in one engine.decode. The engine's refusal (even one
        image at a time does not fit its budget) or an OOM that slipped through its plan (caches
        released) is a MemoryError naming the size: an error response, the server serves on."""
        try:
            return self.engine.to_uint8(self.engine.decode(z, h, w))
        except MemoryBudgetError as exc:
            why = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MemoryError(f"out of memory on {self.engine.device} decoding {len(z)} image(s) of {w}x{h} "
                              f"({why}); lower the server's --max-pixels below {h * w} or free the device") from exc


# ------------------------------------------------------------------------------- server
def require_pytriton() -> None:
    """Probe nvidia-pytriton, and refuse numpy 2 where its Triton's Python-backend stub predates
    numpy-2 support (python_backend#384): there every output would come back empty."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        import pytriton.triton  # noqa: F401
        pytriton_version = version("nvidia-pytriton")
    except (ImportError, PackageNotFoundError) as exc:
        raise ImportError(f"serving needs nvidia-pytriton: {SERVE_EXTRA}") from exc
    if int(np.__version__.split(".")[0]) >= 2 and tuple(map(int, pytriton_version.split(".")[:2])) < (0, 8):
        raise ImportError(f"nvidia-pytriton {pytriton_version} needs numpy<2 (its Triton stub returns empty outputs "
                          f"with numpy {np.__version__}): {SERVE_EXTRA}")


@contextlib.contextmanager
def libpython_on_library_path():
    """Put this interpreter's libpython first on LD_LIBRARY_PATH while PyTriton starts tritonserver.

    PyTriton's Python-backend stub links libpython3.X.so.1.0 and, on machines whose system has its
    own (Debian's), picks that one instead of the running interpreter's; the model then fails to
    load (`RLock._recursion_count`). tritonserver and the stub inherit the environment at start,
    so it is set for that moment and restored after; nothing to do for a static interpreter."""
    libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and lib and (Path(libdir) / lib).exists()):
        yield
        return
    old = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = libdir + (f":{old}" if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


@contextlib.contextmanager
def memory_returned_to_the_system():
    """glibc settings for tritonserver and its stub while PyTriton starts them: blocks of 1 MiB and
    more are mmap'ed and unmapped when freed, and the heap is trimmed above 1 MiB free, so request
    buffers (a refused 100 MiB request too) go back to the system instead of staying in the heap
    (glibc's default threshold grows to 32 MiB as large blocks are freed). An explicit setting of
    the caller's environment wins."""
    old = {k: os.environ.get(k) for k in MALLOC_ENV}
    os.environ.update({k: v for k, v in MALLOC_ENV.items() if old[k] is None})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


def model_tensors(config):
    """PyTriton input and output declarations; shapes exclude the batch dim."""
    from pytriton.model_config import Tensor
    inputs = [Tensor(name="latent", dtype=np.float32, shape=(config.latent_channels, -1, -1)),
              Tensor(name="height", dtype=np.int32, shape=(1,)),
              Tensor(name="width", dtype=np.int32, shape=(1,))]
    outputs = [Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3)),
               Tensor(name="png", dtype=np.bytes_, shape=(1,))]
    return inputs, outputs


def model_config(limits: Limits):
    """Triton model config: dynamic batcher on, queue limits as a queue policy."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, TimeoutAction
    policy = None
    if limits.max_queue_time_ms or limits.max_queue_size:
        policy = QueuePolicy(timeout_action=TimeoutAction.REJECT,
                             default_timeout_microseconds=limits.max_queue_time_ms * 1000,
                             max_queue_size=limits.max_queue_size)
    batcher = DynamicBatcher(max_queue_delay_microseconds=limits.max_queue_delay_us,
                             preferred_batch_size=list(limits.preferred_batch_sizes) or None,
                             default_queue_policy=policy)
    return ModelConfig(max_batch_size=limits.max_batch, batcher=batcher)


def describe(engine, model: str = "") -> str:
    dtype = str(engine.dtype).removeprefix("torch.")
    return f"{model + ': ' if model else ''}backend {engine.backend_name}, dtype {dtype}, device {engine.device}"


class Server:
    """A running server: Triton (metrics; HTTP and gRPC on loopback ports of their own) behind the
    HTTP and gRPC gates (runtime/gate.py) on the public ports. stop() stops them all."""

    def __init__(self, triton, gates):
        self.triton, self.gates = triton, gates

    def is_alive(self) -> bool:
        return self.triton.is_alive()

    def stop(self) -> None:
        try:
            self.triton.stop()
        finally:
            for gate in self.gates:
                gate.stop()


def _loopback_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine, limits: Limits | None = None, *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, model_name: str = MODEL_NAME, model: str = "",
                 workspace: str | Path | None = None, exit_timeout_s: int = 5, log_file: str | Path | None = None,
                 echo=print) -> Server:
    """Check the model name and the ports (ValueError/OSError naming them, before anything starts),
    start the HTTP gate on host:http_port and tritonserver (gRPC, metrics on `host`, HTTP behind
    the gate), bind InfGenModel(engine, limits) as `model_name`, and return the running Server;
    call .stop() on it when done. Logs one line when the model is loaded: backend, dtype, device
    and the limits enforced. Triton's own log goes to stdout, or to `log_file`."""
    require_pytriton()
    from pytriton.triton import Triton, TritonConfig

    from infgen.runtime.gate import Gate, GrpcGate

    limits = limits or Limits()
    check_model_name(model_name)
    check_ports(host, {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port})
    max_bytes = request_bytes_limit(limits, engine.config)
    check = gate_check(engine.config, limits, engine.dtype)
    gates = [Gate(host, http_port, _loopback_port(), max_bytes, check).start()]
    try:
        gates.append(GrpcGate(host, grpc_port, _loopback_port(), max_bytes, check).start())
    except BaseException:
        gates[0].stop()
        raise
    gpu = engine.device.type == "cuda"
    config = TritonConfig(http_address="127.0.0.1", http_port=gates[0].upstream_port, grpc_address="127.0.0.1",
                          grpc_port=gates[1].upstream_port, metrics_address=host, metrics_port=metrics_port,
                          allow_gpu_metrics=gpu, exit_timeout_secs=exit_timeout_s,
                          log_file=None if log_file is None else str(log_file))
    triton = Triton(config=config, workspace=workspace)
    try:
        with libpython_on_library_path(), memory_returned_to_the_system():
            triton.run()
        inputs, outputs = model_tensors(engine.config)
        triton.bind(model_name=model_name, infer_func=InfGenModel(engine, limits), inputs=inputs, outputs=outputs,
                    config=model_config(limits), strict=True)
    except BaseException:
        Server(triton, gates).stop()
        raise
    if not gpu:
        echo("note: Triton's CUDA lines above (pinned memory, CudaDriverHelper) are its GPU probe on a machine "
             "serving on the CPU: harmless", flush=True)
    echo(f"loaded model '{model_name}' ({describe(engine, model)}); {describe_limits(limits, engine.config)}; "
         f"http {host}:{http_port}, grpc {host}:{grpc_port}, metrics {host}:{metrics_port}", flush=True)
    return Server(triton, gates)
