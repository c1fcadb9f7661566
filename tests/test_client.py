"""The server's client without a server (runtime/client.py): it imports no torch, and the request it
builds. Against a running server: tests/test_serving.py."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from infgen.runtime.client import InfGenClient, _reason, infer_inputs, latent_array, request_arrays

PROBE = """
import json, sys
import numpy as np
import infgen.runtime.client as client
arrays = client.request_arrays(np.zeros((2, 4, 3, 5)), 24, 40)
after_client = "torch" in sys.modules
from infgen.runtime import InfGenEngine  # the package's lazy engine import: this one loads torch
print(json.dumps({"after_client": after_client, "after_engine": "torch" in sys.modules,
                  "shape": list(arrays["latent"].shape)}))
"""


def test_client_module_imports_no_torch():
    """`import infgen.runtime.client` and building a request load no torch (nor does the package's
    __init__); the engine, imported afterwards in the same process, does, so the probe sees torch."""
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == {"after_client": False, "after_engine": True, "shape": [2, 4, 3, 5]}


def test_request_arrays_shapes_and_dtypes():
    z = np.random.default_rng(0).standard_normal((4, 3, 5))  # (C, h, w) float64: one image
    a = request_arrays(z, 24, 40)
    assert a["latent"].shape == (1, 4, 3, 5) and a["latent"].dtype == np.float32 and a["latent"].flags.c_contiguous
    assert np.array_equal(a["latent"][0], z.astype(np.float32))
    assert a["height"].dtype == np.int32 and a["height"].tolist() == [[24]]
    assert a["width"].tolist() == [[40]]
    b = request_arrays(np.ones((3, 4, 2, 2), np.float32), np.int64(16), 8)
    assert b["height"].tolist() == [[16]] * 3 and b["width"].tolist() == [[8]] * 3


def test_latent_array_takes_tensors_and_any_byte_order():
    t = torch.randn(2, 4, 3, 3, dtype=torch.float16)
    assert np.array_equal(latent_array(t), t.float().numpy())
    swapped = np.arange(8, dtype=">f4").reshape(1, 2, 2, 2)  # big-endian
    out = latent_array(swapped)
    assert out.dtype == np.dtype("float32") and out.dtype.isnative and out.ravel().tolist() == list(range(8))


@pytest.mark.parametrize("bad,match", [(np.ones((1, 4, 2, 2), np.int32), "numpy dtype int32"),
                                       ([[1, 2]], "numpy dtype int64"),
                                       (np.ones((4, 2, 2), np.complex64), "numpy dtype complex64"),
                                       (torch.ones(1, 4, 2, 2, dtype=torch.int64), "dtype torch.int64")])
def test_integer_and_complex_latents_are_refused(bad, match):
    with pytest.raises(TypeError, match=match):
        request_arrays(bad, 16, 16)


@pytest.mark.parametrize("h,w,match", [(True, 16, "height must be an int, got bool"),
                                       (16, 16.0, "width must be an int, got float")])
def test_sizes_must_be_ints(h, w, match):
    with pytest.raises(TypeError, match=match):
        request_arrays(np.zeros((1, 4, 2, 2), np.float32), h, w)


def test_protocol_is_checked_before_tritonclient_is_needed():
    with pytest.raises(ValueError, match="protocol must be 'http' or 'grpc', got 'udp'"):
        InfGenClient("127.0.0.1:8000", protocol="udp")


def test_reason_is_the_exception_line_of_the_server_traceback():
    trace = ("Traceback (most recent call last):\n  File \"serving.py\", line 1, in __call__\n"
             "ValueError: width must be 8..2048, got 5000\n")
    assert _reason(trace) == "width must be 8..2048, got 5000"
    assert _reason("Request timeout expired\n") == "Request timeout expired"


def test_infer_inputs_name_shape_and_triton_dtype():
    tc = pytest.importorskip("tritonclient.http", reason="needs tritonclient (the .[serve] extra)")
    inputs = infer_inputs(tc, request_arrays(np.zeros((2, 4, 3, 5), np.float32), 24, 40))
    assert [(i.name(), i.datatype(), i.shape()) for i in inputs] == [
        ("latent", "FP32", [2, 4, 3, 5]), ("height", "INT32", [2, 1]), ("width", "INT32", [2, 1])]
