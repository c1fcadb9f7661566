"""Serving on Triton Inference Server (runtime/serving.py, runtime/cli/serve.py, client.py, loadtest.py).

The model-function tests run everywhere. The server tests need the `.[serve]` extra, whose
nvidia-pytriton pins numpy<2: `.ci/run` runs this file again in a venv that has it. They start
one real server (`python -m infgen.runtime serve --preset tiny` on loopback ports) for the module.

Equality: a request decoded alone on the server equals a local decode of the same latent
exactly. When the batcher or the model function puts several requests into one decode, the
convolutions run at another batch size and their float sums may round differently: such images
may differ from a batch-1 decode by one uint8 level on a few pixels (measured: at most 1 level,
under 0.1% of pixels). Those tests give every request its own latent, so a response carrying
another request's image would differ by far more.
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infgen.runtime import InfGenEngine
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.serving import InfGenModel, Limits, check_request, libpython_on_library_path

ROOT = Path(__file__).resolve().parents[1]
SERVE_SKIP = ("needs the .[serve] extra (nvidia-pytriton, which pins numpy<2); .ci/run runs these tests in a "
              "venv with it")
MAX_BATCH, MAX_PIXELS = 4, 2 * 256 * 256
START_TIMEOUT_S, STOP_TIMEOUT_S = 120, 30


@pytest.fixture(scope="module")
def engine():
    return InfGenEngine("tiny")


def latent(seed: int, b: int = 1, grid: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 4, grid, grid)).astype(np.float32)


def direct(engine, z, h, w) -> np.ndarray:
    return engine.to_uint8(engine.decode(z, h, w))


def request(z, h, w, outputs=("image",)):
    class Request(dict):  # a PyTriton request maps input names to arrays and lists the outputs asked for
        requested_output_names = list(outputs)
    b = z.shape[0]
    return Request(latent=z, height=np.full((b, 1), h, np.int32), width=np.full((b, 1), w, np.int32))


def assert_same_image(got: np.ndarray, want: np.ndarray, exact: bool = False):
    """Equal, or (batched decodes) within one level on under 1% of the pixels: see the module doc."""
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    if exact:
        assert diff.max() == 0, f"{int((diff > 0).sum())} pixels differ, by up to {diff.max()}"
    else:
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"max diff {diff.max()}, {(diff > 0).mean():.2%} differ"


class Spy:
    """InfGenEngine's public API, forwarded, recording each decode's batch size; can fail with OOM."""

    def __init__(self, engine, oom_above: int | None = None):
        self.engine, self.config, self.device, self.dtype = engine, engine.config, engine.device, engine.dtype
        self.oom_above, self.batches, self.attempts = oom_above, [], 0

    def decode(self, z, h, w):
        self.attempts += 1
        if self.oom_above is not None and z.shape[0] > self.oom_above:  # what the engine raises on OOM
            raise MemoryBudgetError("decode ran out of memory (simulated); caches released")
        self.batches.append(z.shape[0])
        return self.engine.decode(z, h, w)

    def to_uint8(self, image):
        return self.engine.to_uint8(image)


# ------------------------------------------------------------------------------- the model function
def test_model_batches_same_size_and_gives_each_request_its_own_images(engine):
    sizes = [(40, 56), (64, 64), (40, 56), (97, 33), (40, 56)]
    reqs = [request(latent(i, b=1 + i % 2), h, w) for i, (h, w) in enumerate(sizes)]
    spy = Spy(engine)
    out = InfGenModel(spy, Limits(max_batch=8))(reqs)
    # one decode per size: the three 40x56 requests (1 + 1 + 1 images) are decoded together
    assert sorted(spy.batches) == [2, 2, 3]
    assert len(out) == len(reqs)
    for r, o, (h, w) in zip(reqs, out, sizes):
        assert set(o) == {"image"}
        assert_same_image(o["image"], direct(engine, r["latent"], h, w))
    # the test can tell requests apart: another latent's image is far from this one's
    assert np.abs(out[0]["image"].astype(int) - out[2]["image"].astype(int)).max() > 10


def test_model_hands_a_size_group_to_the_engine_whose_plan_splits_it():
    """The model function neither chunks nor retries: a group of five 32x32 requests is one
    engine.decode, and the engine's plan (under its memory budget) runs it in sub-batches."""
    from infgen.ref.config import preset
    from infgen.ref.memory import predict_peak
    budget = predict_peak(preset("tiny"), 32, 32, 2) + 5 * 3 * 32 * 32 * 4  # two at a time, and the output
    small = InfGenEngine("tiny", max_memory=budget)
    planned = small.plan(32, 32, 5)
    assert (planned.mode, planned.sub_batch) == ("sub-batches", 2)
    runs, run = [], small.backend.run
    small.backend.run = lambda z, Hp, Wp: (runs.append(z.shape[0]), run(z, Hp, Wp))[1]
    spy = Spy(small)
    reqs = [request(latent(i), 32, 32) for i in range(5)]
    out = InfGenModel(spy, Limits(max_batch=8, max_pixels=2 * 32 * 32))(reqs)
    assert spy.batches == [5] and runs == [2, 2, 1]  # one decode; the plan's sub-batches
    reference = InfGenEngine("tiny")
    for r, o in zip(reqs, out):
        assert_same_image(o["image"], direct(reference, r["latent"], 32, 32))


def test_model_out_of_memory_is_one_error_then_it_serves_on(engine):
    reqs = [request(latent(i), 24, 24) for i in range(4)]
    model = InfGenModel(Spy(engine, oom_above=0))
    with pytest.raises(MemoryError, match=r"out of memory on cpu decoding 4 image\(s\) of 24x24 \(decode ran out of "
                                          r"memory .*\); lower .*--max-pixels"):
        model(reqs)
    assert model.engine.attempts == 1  # no retry of its own: the engine's plan already split what it could
    model.engine.oom_above = None  # memory freed: the same model function serves again
    assert_same_image(model(reqs[:1])[0]["image"], direct(engine, reqs[0]["latent"], 24, 24))


def test_model_out_of_memory_is_reachable_with_a_real_engine():
    """The engine's plan refuses what does not fit its budget even one image at a time
    (MemoryBudgetError, before any work): the model function answers with a clear error, and serves on."""
    from infgen.ref.config import preset
    from infgen.ref.memory import predict_peak
    budget = int(1.5 * predict_peak(preset("tiny"), 16, 16, 1))  # one 16x16 image fits, 256x256 does not
    small = InfGenEngine("tiny", max_memory=budget, banded=False)
    model = InfGenModel(small, Limits(max_batch=4))
    with pytest.raises(MemoryError, match=r"decoding 2 image\(s\) of 256x256 \(decode of batch 2 at 256x256 refused"):
        model([request(latent(0, b=2), 256, 256)])
    (out,) = model([request(latent(1), 16, 16)])
    assert_same_image(out["image"], direct(small, latent(1), 16, 16))


def test_model_png_output_holds_the_same_pixels(engine):
    z = latent(3, b=2)
    (out,) = InfGenModel(engine)([request(z, 48, 72, outputs=("image", "png"))])
    assert out["png"].shape == (2, 1)
    for png, pixels in zip(out["png"][:, 0], out["image"]):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


BAD = [  # (name, change to a good request, exception, message)
    ("nan", lambda r: r["latent"].__setitem__((0, 1, 2, 3), np.nan), ValueError, r"1 non-finite value\(s\)"),
    ("inf", lambda r: r["latent"].__setitem__((0, 0, 0, 0), np.inf), ValueError, "non-finite"),
    ("height 0", lambda r: r["height"].fill(0), ValueError, "height must be 8..2048, got 0"),
    ("width too big", lambda r: r["width"].fill(4000), ValueError, "width must be 8..2048, got 4000"),
    ("pixels", lambda r: (r["height"].fill(512), r["width"].fill(512)), ValueError,
     r"1 image\(s\) of 512x512 = 262144 pixels, over the limit of 131072"),
    ("fp64", lambda r: r.__setitem__("latent", r["latent"].astype(np.float64)), TypeError, "latent must be FP32, got float64"),
    ("rank", lambda r: r.__setitem__("latent", r["latent"][0]), ValueError, r"latent must have shape \(B, 4, h, w\)"),
    ("channels", lambda r: r.__setitem__("latent", r["latent"][:, :3]), ValueError,
     r"latent must have 4 channels, got shape \(1, 3, 8, 8\)"),
    ("grid", lambda r: r.__setitem__("latent", np.zeros((1, 4, 300, 8), np.float32)), ValueError,
     r"latent grid must be at most 256x256, got \(300, 8\)"),
    ("magnitude", lambda r: r["latent"].__setitem__((0, 0, 0, 0), 1e9), ValueError, "latent magnitude 1e\\+09 exceeds"),
    ("float size", lambda r: r.__setitem__("height", r["height"].astype(np.float32)), TypeError, "height must be INT32"),
    ("rows differ", lambda r: r.__setitem__("width", np.array([[64], [72]], np.int32)), ValueError,
     r"width must have shape \(1, 1\)"),
]


@pytest.mark.parametrize("name,change,exc,match", BAD, ids=[b[0] for b in BAD])
def test_model_rejects_a_malformed_request_naming_the_problem(engine, name, change, exc, match):
    r = request(latent(0), 64, 64)
    change(r)
    with pytest.raises(exc, match=match):
        InfGenModel(engine, Limits(max_pixels=MAX_PIXELS))([r])


def test_model_error_in_a_shared_batch_names_the_bad_request(engine):
    good, bad = request(latent(0), 64, 64), request(latent(1), 64, 64)
    bad["height"] = np.full((1, 1), 9999, np.int32)
    with pytest.raises(ValueError, match=r"^request 2 of 2 in this batch: height must be 8..2048, got 9999; "
                                         r"the 1 valid request\(s\) of this batch were not decoded: resend them$"):
        InfGenModel(engine)([good, bad])
    b = request(latent(0, b=2), 64, 64)
    b["height"] = np.array([[64], [72]], np.int32)
    with pytest.raises(ValueError, match=r"height must be the same in every row of a request, got \[64, 72\]"):
        check_request(b, engine.config, 10**9)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_batch": 0}, "max_batch must be an integer >= 1, got 0"),
    ({"max_pixels": -5}, "max_pixels must be a positive integer or None, got -5"),
    ({"max_queue_time_ms": -1}, "max_queue_time_ms must be an integer >= 0, got -1"),
    ({"max_batch": 4, "preferred_batch_sizes": (2, 8)}, r"preferred batch sizes must be 1..max_batch \(4\), got \[8\]"),
])
def test_limits_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Limits(**kwargs)


def test_libpython_directory_leads_ld_library_path_only_while_starting(monkeypatch):
    libdir, lib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and (Path(libdir) / lib).exists()):
        pytest.skip("this interpreter is linked statically: there is no libpython to put first")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/elsewhere")
    with libpython_on_library_path():
        assert os.environ["LD_LIBRARY_PATH"] == f"{libdir}:/opt/elsewhere"
    assert os.environ["LD_LIBRARY_PATH"] == "/opt/elsewhere"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    with libpython_on_library_path():
        assert os.environ["LD_LIBRARY_PATH"] == libdir
    assert "LD_LIBRARY_PATH" not in os.environ


def test_serve_user_error_is_one_line_and_exit_2(capsys):
    from infgen.runtime.cli import serve
    assert serve.main(["--max-batch", "4", "--preferred-batch-sizes", "2", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: preferred batch sizes must be 1..max_batch (4), got [8]"
    with pytest.raises(SystemExit):
        serve.main(["--http-port", "70000"])
    assert "must be a port 1..65535, got '70000'" in capsys.readouterr().err


def test_serve_refuses_a_busy_port_or_a_bad_model_name_before_starting(capsys):
    from infgen.runtime.cli import serve
    http, grpc, metrics = free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", grpc))
        busy.listen()
        assert serve.main(["--preset", "tiny", "--http-port", str(http), "--grpc-port", str(grpc),
                           "--metrics-port", str(metrics)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --grpc-port {grpc}: cannot listen on 127.0.0.1:{grpc}") and "\n" not in err, err
    assert serve.main(["--preset", "tiny", "--http-port", str(http), "--grpc-port", str(http)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --grpc-port {http} is the same port as --http-port"
    for name in ("a/b", "", "..", "x" * 129, "naïve"):
        assert serve.main(["--preset", "tiny", "--model-name", name]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: model name must be 1..128 characters") and repr(name) in err, err


# ------------------------------------------------------------------------------- a real server
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("pytriton", reason=SERVE_SKIP)
    pytest.importorskip("tritonclient.http", reason=SERVE_SKIP)
    if int(np.__version__.split(".")[0]) >= 2:
        pytest.skip(f"{SERVE_SKIP}; this environment has numpy {np.__version__}")
    from infgen.runtime.client import InfGenClient
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # same threads: same float sums
    cmd = [sys.executable, "-m", "infgen.runtime", "serve", "--preset", "tiny", "--http-port", str(http), "--grpc-port",
           str(grpc), "--metrics-port", str(metrics), "--max-batch", str(MAX_BATCH), "--max-pixels", str(MAX_PIXELS)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    info = {"proc": proc, "log": log, "http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}",
            "metrics": f"127.0.0.1:{metrics}"}
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        with InfGenClient(info["http"]) as client:
            while not client.ready() or "loaded model" not in log.read_text():  # the startup line: after ready
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server not ready (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.25)
    except BaseException:  # never leave a server (and its tritonserver) behind a failed start
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    yield info
    if proc.poll() is None:  # the stop test did not run (-k): stop it the same way, so Triton cleans up
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def client(server, protocol="http"):
    from infgen.runtime.client import InfGenClient
    return InfGenClient(server[protocol], protocol=protocol, timeout_s=120)


def test_server_decode_equals_direct_decode_over_http_and_grpc(server, engine):
    z = latent(7)
    want = direct(engine, z, 72, 100)
    for protocol in ("http", "grpc"):
        with client(server, protocol) as c:
            assert_same_image(c.decode(z, 72, 100), want, exact=True)
    with client(server) as c:
        (png,) = c.decode_png(z[0], 72, 100)  # (C, h, w) works too
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)))[None], want)


def test_server_logs_the_backend_dtype_and_device_it_loaded(server):
    text = server["log"].read_text()
    assert "loaded model 'infgen' (preset tiny: backend torch, dtype float32, device cpu)" in text


def test_cli_client_writes_the_direct_decode(server, engine, tmp_path):
    z = latent(8, b=2)
    np.save(tmp_path / "z.npy", z)
    proc = subprocess.run([sys.executable, "-m", "infgen.runtime", "client", str(tmp_path / "z.npy"), "--size", "60x44",
                           "-o", str(tmp_path / "out.png"), "--url", server["http"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    want = direct(engine, z, 44, 60)
    for i in range(2):
        # a request of 2 images is decoded as a batch of 2 on both sides
        assert_same_image(np.asarray(Image.open(tmp_path / f"out_{i}.png")), want[i], exact=True)


def test_eight_threads_mixed_sizes_each_response_is_its_own_decode(server, engine):
    sizes = [(64, 64), (40, 96), (64, 64), (88, 24)]
    jobs = [(t * 10 + k, sizes[(t + k) % len(sizes)]) for t in range(8) for k in range(3)]
    results, errors = {}, []

    def worker(t):
        try:
            with client(server) as c:
                for seed, (h, w) in jobs[3 * t:3 * t + 3]:
                    results[seed] = c.decode(latent(seed), h, w)
        except Exception as exc:  # noqa: BLE001 - reported below with the thread's number
            errors.append(f"thread {t}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors and not any(th.is_alive() for th in threads), errors
    assert len(results) == len(jobs)
    for seed, (h, w) in jobs:
        assert_same_image(results[seed], direct(engine, latent(seed), h, w))


def raw_infer(url: str, arrays: dict) -> str:
    """Send inputs as given (name -> (array, Triton dtype)); return the server's error message."""
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException
    inputs = []
    for name, (a, dtype) in arrays.items():
        t = tc.InferInput(name, list(a.shape), dtype)
        t.set_data_from_numpy(a)
        inputs.append(t)
    c = tc.InferenceServerClient(url)
    try:
        with pytest.raises(InferenceServerException) as info:
            c.infer("infgen", inputs)
    finally:
        c.close()
    return info.value.message()


def inputs(z, h=64, w=64, zdtype="FP32"):
    b = z.shape[0]
    return {"latent": (z, zdtype), "height": (np.full((b, 1), h, np.int32), "INT32"),
            "width": (np.full((b, 1), w, np.int32), "INT32")}


SERVER_BAD = [  # (name, inputs, message): the first four are Triton's own checks, before batching
    ("fp64", inputs(latent(0).astype(np.float64), zdtype="FP64"), "data-type is 'FP64', but model 'infgen' expects 'FP32'"),
    ("rank", {**inputs(latent(0)), "latent": (latent(0)[:, 0], "FP32")}, "unexpected shape for input 'latent'"),
    ("channels", {**inputs(latent(0)), "latent": (latent(0)[:, :3], "FP32")}, "unexpected shape for input 'latent'"),
    ("batch over max", inputs(latent(0, b=MAX_BATCH + 1)), f"batch-size must be <= {MAX_BATCH}"),
    ("nan", inputs(np.where(np.arange(256).reshape(1, 4, 8, 8) == 5, np.nan, latent(0)).astype(np.float32)),
     r"latent contains 1 non-finite value(s) (NaN or inf)"),
    ("size", inputs(latent(0), h=3000), "height must be 8..2048, got 3000"),
    ("pixels", inputs(latent(0), h=512, w=512), "512x512 = 262144 pixels, over the limit of 131072"),
]


@pytest.mark.parametrize("name,arrays,message", SERVER_BAD, ids=[b[0] for b in SERVER_BAD])
def test_server_answers_a_bad_request_with_its_error_and_keeps_serving(server, engine, name, arrays, message):
    assert message in raw_infer(server["http"], arrays)
    z = latent(9)
    with client(server) as c:
        assert_same_image(c.decode(z, 64, 64), direct(engine, z, 64, 64), exact=True)


def test_client_error_is_the_reason_line(server):
    from infgen.runtime.client import ServerError
    for protocol in ("http", "grpc"):  # refused by the gates' check_request, before Triton: the reason alone
        with client(server, protocol) as c, pytest.raises(ServerError, match=r"^width must be 8..2048, got 5000$"):
            c.decode(latent(0), 64, 5000)


def test_clients_that_disconnect_mid_request_do_not_hurt_the_others(server, engine):
    import tritonclient.http as tc
    host, port = server["http"].split(":")
    arrays = inputs(latent(1, b=4), h=256, w=128)  # a slow request, abandoned once sent
    ins = []
    for name, (a, dtype) in arrays.items():
        t = tc.InferInput(name, list(a.shape), dtype)
        t.set_data_from_numpy(a, binary_data=True)
        ins.append(t)
    body, json_size = tc.InferenceServerClient.generate_request_body(ins)
    head = (f"POST /v2/models/infgen/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {json_size}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    for part in (body, body[:len(body) // 2]):  # a whole request, then one cut off in its body
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head + part)
    z = latent(2)
    with client(server) as c:
        for h, w in ((64, 64), (48, 80)):
            assert_same_image(c.decode(z, h, w), direct(engine, z, h, w))
        assert c.ready()


def test_health_readiness_and_metrics_are_tritons_endpoints(server):
    import urllib.request
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/infgen/ready"):
        with urllib.request.urlopen(f"http://{server['http']}{path}", timeout=10) as r:
            assert r.status == 200, path
    with urllib.request.urlopen(f"http://{server['metrics']}/metrics", timeout=10) as r:
        text = r.read().decode()
    success = [ln for ln in text.splitlines() if ln.startswith('nv_inference_request_success{model="infgen"')]
    assert success and float(success[0].split()[-1]) > 0


def test_loadtest_runs_locust_against_the_server(server, tmp_path):
    pytest.importorskip("locust", reason=SERVE_SKIP)
    out = tmp_path / "lt.json"
    proc = subprocess.run([sys.executable, "-m", "infgen.runtime", "loadtest", "--url", server["http"], "--preset", "tiny",
                           "--size", "64x64", "--users", "2", "--run-time", "2", "--repeats", "1", "--latent-grid",
                           "8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["users"] == 2 and run["requests"] > 0 and run["errors"] == 0
    assert run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] and run["images_per_s"] > 0
    assert run["direct"]["median_ms"] > 0 and "backend torch" in result["model"]
    assert "| 64x64 | 2 |" in proc.stdout


def http_raw(address: str, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send one HTTP request as given; (status, body text) of the answer."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            if head_end >= 0:
                length = [int(ln.split(b":")[1]) for ln in data[:head_end].split(b"\r\n")
                          if ln.lower().startswith(b"content-length:")]
                if length and len(data) >= head_end + 4 + length[0]:
                    break
    status = int(data.split(b" ", 2)[1])
    return status, data[data.find(b"\r\n\r\n") + 4:].decode(errors="replace")


def post_infer(address: str, body: bytes, extra: str = "") -> tuple[int, str]:
    return http_raw(address, f"POST /v2/models/infgen/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}{extra}", body)


def json_request(shape, values) -> bytes:
    return json.dumps({"inputs": [{"name": "latent", "datatype": "FP32", "shape": shape, "data": values},
                                  {"name": "height", "datatype": "INT32", "shape": [1, 1], "data": [64]},
                                  {"name": "width", "datatype": "INT32", "shape": [1, 1], "data": [64]}]}).encode()


REQUEST_LIMIT = MAX_BATCH * (4 * 256 * 256 * 4 + 8)  # the tiny preset's default: max batch x the largest latent
GATE_BAD = [  # (name, body, extra headers, status, message)
    ("json huge shape", json_request([1, 4, 100000, 100000], [0.0] * 4), "", 413,
     f"declares shape [1, 4, 100000, 100000] of FP32 = 160000000000 bytes; the server accepts at most "
     f"{REQUEST_LIMIT} bytes"),
    ("json short data", json_request([1, 4, 8, 8], [0.0] * 4), "", 400, "(256 values) but holds 4"),
    ("json negative dim", json_request([1, 4, -8, 8], [0.0] * 4), "", 400, "shape must be a list of at most 8"),
    ("not json", b"{\"inputs\": [", "", 400, "does not parse"),
    ("binary size lies", json.dumps({"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, 4, 8, 8],
                                                 "parameters": {"binary_data_size": 16}}]}).encode() + bytes(16),
     "\r\nInference-Header-Content-Length: 95", 400, "binary_data_size 16 does not match"),
    ("gzip", b"x" * 10, "\r\nContent-Encoding: gzip", 415, "compressed requests are not accepted"),
]


@pytest.mark.parametrize("name,body,extra,status,message", GATE_BAD, ids=[b[0] for b in GATE_BAD])
def test_server_refuses_a_malformed_http_request_before_triton_reads_it(server, engine, name, body, extra, status,
                                                                         message):
    if "Inference-Header" in extra:
        extra = f"\r\nInference-Header-Content-Length: {len(body) - 16}"
    got, text = post_infer(server["http"], body, extra)
    assert got == status and message in json.loads(text)["error"], text
    z = latent(9)
    with client(server) as c:
        assert_same_image(c.decode(z, 64, 64), direct(engine, z, 64, 64), exact=True)


def test_server_refuses_requests_over_the_size_limit_in_every_protocol(server, engine):
    import tritonclient.grpc as tg
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException
    z = np.zeros((1, 4, 600, 600), np.float32)  # 5.76 MB of latent: over the 4 MiB limit
    arrays = inputs(z)
    for protocol, tmod, kw in (("http", tc, {"binary_data": True}), ("http", tc, {"binary_data": False}),
                               ("grpc", tg, {})):
        ins = []
        for name, (a, dtype) in arrays.items():
            t = tmod.InferInput(name, list(a.shape), dtype)
            t.set_data_from_numpy(a, **kw)
            ins.append(t)
        c = tmod.InferenceServerClient(server[protocol])
        try:
            with pytest.raises(InferenceServerException) as info:
                c.infer("infgen", ins)
        finally:
            c.close()
        message = info.value.message()
        assert ("the server accepts at most" in message or "larger than max" in message), (protocol, kw, message)
    assert server["proc"].poll() is None
    with client(server, "grpc") as c:
        assert_same_image(c.decode(latent(9), 64, 64), direct(engine, latent(9), 64, 64), exact=True)


def server_memory_mib(pid: int) -> dict:
    """The memory pid and its descendants hold, in MiB: per process its private (anonymous) pages,
    and the size of each /dev/shm file they map (Triton's Python-backend pool and PyTriton's tensor
    store: each process maps them several times, so their resident pages would be counted again
    per mapping)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            out[p] = sum(int(ln.split()[1]) for ln in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
                         if ln.startswith("Pss_Anon:")) / 1024
            for ln in Path(f"/proc/{p}/maps").read_text().splitlines():
                f = ln.split()[-1]
                if f.startswith("/dev/shm/") and Path(f).exists():
                    out[f] = Path(f).stat().st_size / 2 ** 20
        except OSError:
            pass
    return out


def test_server_memory_returns_to_its_level_after_refused_requests(server):
    if not Path(f"/proc/{server['proc'].pid}/smaps_rollup").exists():
        pytest.skip("needs Linux /proc/PID/smaps_rollup")
    from infgen.runtime.client import ServerError

    def refuse(grid: int, b: int):
        z = np.ones((b, 4, grid, grid), np.float32)
        for protocol in ("http", "grpc"):
            with client(server, protocol) as c, pytest.raises(ServerError):
                c.decode(z, 2048, 2048)  # over the pixel limit (or the size limit): refused

    for _ in range(3):  # the largest request the server takes in: Triton's pools settle at its size
        refuse(256, MAX_BATCH)
    before = server_memory_mib(server["proc"].pid)
    for grid, b in ((256, MAX_BATCH), (512, 2), (512, 4), (1024, 2), (256, MAX_BATCH)):  # 4 to 32 MiB each
        refuse(grid, b)
    after = server_memory_mib(server["proc"].pid)
    grew = sum(after.values()) - sum(before.values())
    assert grew < 16, f"server memory grew by {grew:.0f} MiB over 10 refused requests: {before} -> {after}"


def test_server_logs_the_limits_it_enforces(server, engine):
    from infgen.runtime.serving import describe_limits
    assert f"max pixels {MAX_PIXELS}, max request bytes {REQUEST_LIMIT};" in server["log"].read_text()
    default = describe_limits(Limits(), engine.config)
    assert f"max pixels {InfGenModel(engine).max_pixels}," in default  # the default the model function checks
    if not torch.cuda.is_available():  # GPU metrics off on the CPU; Triton's GPU probe explained in one line
        text = server["log"].read_text()
        assert "Failed to initialize NVML" not in text and "DCGM unable to start" not in text
        assert text.count("note: Triton's CUDA lines above") == 1


def test_server_stops_cleanly_on_sigint(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(STOP_TIMEOUT_S) == 0
    assert server["log"].read_text().rstrip().endswith("server stopped")
    host, port = server["http"].split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass
