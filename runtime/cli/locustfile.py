"""Locust user for `python -m infgen.runtime loadtest`, which runs `locust -f` on this file in a subprocess.

Never import it elsewhere: importing locust monkey-patches the process for gevent. Each user sends
one HTTP v2 binary-tensor inference request after another (no think time), so the number of users
is the number of requests in flight. A response counts as a success only if it is HTTP 200 and
carries exactly B x h x w x 3 bytes of image. Every request's start time, latency and outcome go
to the --infgen-samples JSON file, from which the driver computes exact percentiles.
"""
from __future__ import annotations

import json

import numpy as np
from locust import FastHttpUser, constant, events, task

from infgen.runtime.client import MODEL_NAME, infer_inputs, request_arrays  # the client's request; torch-free

SAMPLES: list[tuple[float, float, bool]] = []  # (start time s, response time ms, ok)


@events.init_command_line_parser.add_listener
def _arguments(parser):
    parser.add_argument("--infgen-height", type=int, default=256, help="output height (the driver parsed --size)")
    parser.add_argument("--infgen-width", type=int, default=256, help="output width")
    parser.add_argument("--infgen-latent", default="4x16x16", help="latent C x h_l x w_l")
    parser.add_argument("--infgen-batch", type=int, default=1, help="images per request")
    parser.add_argument("--infgen-model", default=MODEL_NAME, help="the served model's name")
    parser.add_argument("--infgen-samples", default="", help="JSON file for the raw samples")


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, start_time=None, **_):
    SAMPLES.append((float(start_time or 0.0), float(response_time), exception is None))


@events.quitting.add_listener
def _dump(environment, **_):
    path = environment.parsed_options.infgen_samples
    if path:
        with open(path, "w") as f:
            json.dump(SAMPLES, f)


class InfGenUser(FastHttpUser):
    wait_time = constant(0)
    network_timeout = 900.0
    connection_timeout = 60.0

    def on_start(self):
        import tritonclient.http as tc
        o = self.environment.parsed_options
        h, w = o.infgen_height, o.infgen_width
        c, hl, wl = (int(v) for v in o.infgen_latent.lower().split("x"))
        b = o.infgen_batch
        latent = np.random.default_rng(0).standard_normal((b, c, hl, wl)).astype(np.float32)
        inputs = infer_inputs(tc, request_arrays(latent, h, w))
        body, json_size = tc.InferenceServerClient.generate_request_body(
            inputs, outputs=[tc.InferRequestedOutput("image", binary_data=True)])
        self.body = body
        self.headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
        self.path = f"/v2/models/{o.infgen_model}/infer"
        self.label = f"infer {w}x{h} b{b}"
        self.expected = b * h * w * 3

    @task
    def decode(self):
        with self.client.post(self.path, data=self.body, headers=self.headers, name=self.label,
                              catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {(r.text or '')[:300]}")
                return
            header = int(r.headers.get("Inference-Header-Content-Length", -1))
            if header < 0 or len(r.content) - header != self.expected:
                r.failure(f"expected {self.expected} image bytes, got {len(r.content) - header} (header {header})")
