"""`python -m infgen.runtime serve` (or `infgen-serve`): InfGen on NVIDIA Triton Inference Server (HTTP, gRPC, metrics).

    python -m infgen.runtime serve                           # the bundled demo checkpoint, loopback ports 8000-8002
    python -m infgen.runtime serve --checkpoint DIR --device cuda --host 0.0.0.0 --max-pixels 16777216

Runs until SIGINT or SIGTERM, then stops Triton (in-flight requests get exit_timeout_s to finish)
and exits 0; exits 1 if the server died, 2 with one `error: ...` line on a user error. The model,
its inputs, limits and errors: runtime/serving.py and docs/serving.md.
"""
from __future__ import annotations

import argparse
import signal
import threading

from infgen.cli import positive_int
from infgen.runtime.cli import options
from infgen.runtime.client import MODEL_NAME

HELP = "serve the engine on NVIDIA Triton Inference Server (HTTP, gRPC, metrics)"


def nonneg_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 1..65535, got {text!r}")
    return int(text)


def engine_and_name(args):
    """-> (InfGenEngine, what was loaded, in words)."""
    engine = options.load_engine(args)
    spec = options.model_spec(args)
    return engine, (f"preset {spec}" if engine.random_weights else f"checkpoint {spec}")


# ------------------------------------------------------------------------------- server flags
def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=positive_int, default=8,
                   help="images per request and per decode; Triton's max_batch_size (default: %(default)s)")
    g.add_argument("--max-pixels", type=positive_int, default=None,
                   help="output pixels per request, batch x height x width (default: one image of 4096^2, or of "
                        "the model's max_size squared if smaller)")
    g.add_argument("--max-queue-delay-us", type=nonneg_int, default=2000,
                   help="how long the dynamic batcher holds a request to gather more (default: %(default)s)")
    g.add_argument("--preferred-batch-sizes", type=positive_int, nargs="+", default=(), metavar="N",
                   help="batch sizes the batcher sends as soon as it has them")
    g.add_argument("--max-queue-time-ms", type=nonneg_int, default=0,
                   help="reject a request queued longer than this (default: 0, no limit)")
    g.add_argument("--max-queue-size", type=nonneg_int, default=0,
                   help="reject requests beyond this many waiting (default: 0, no limit)")
    g.add_argument("--max-request-bytes", type=positive_int, default=None,
                   help="declared input bytes per request; larger ones get HTTP 413 before Triton reads them "
                        "(default: the largest valid request, max-batch latents of the model's largest grid)")


def limits_from_args(args):
    from infgen.runtime.serving import Limits
    return Limits(max_batch=args.max_batch, max_pixels=args.max_pixels, max_queue_delay_us=args.max_queue_delay_us,
                  preferred_batch_sizes=tuple(args.preferred_batch_sizes), max_queue_time_ms=args.max_queue_time_ms,
                  max_queue_size=args.max_queue_size, max_request_bytes=args.max_request_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model_options(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface, as in a container (default: %(default)s)")
    g.add_argument("--http-port", type=port, default=8000, help="HTTP/REST (KServe v2) port (default: %(default)s)")
    g.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default: %(default)s)")
    g.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics port (default: %(default)s)")
    g.add_argument("--model-name", default=MODEL_NAME, help="the model's name in the URLs (default: %(default)s)")
    add_limit_arguments(parser)


def warm_up(engine) -> None:
    """One small decode before the server opens, so the first request pays no first-call costs."""
    import torch
    c = engine.config
    engine.decode(torch.zeros(1, c.latent_channels, 8, 8), 8 * c.upscale, 8 * c.upscale)


def run(args) -> int:
    from infgen.runtime.serving import check_model_name, check_ports, require_pytriton, start_server
    limits = limits_from_args(args)
    check_model_name(args.model_name)  # these fail in seconds, before the model loads or Triton starts
    check_ports(args.host, {"--http-port": args.http_port, "--grpc-port": args.grpc_port,
                            "--metrics-port": args.metrics_port})
    require_pytriton()
    engine, what = engine_and_name(args)
    warm_up(engine)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    triton = start_server(engine, limits, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, model_name=args.model_name, model=what)
    died = False
    try:
        while not stop.wait(1.0):
            if not triton.is_alive():
                died = True
                break
    finally:
        triton.stop()
    print("server died" if died else "server stopped", flush=True)
    return 1 if died else 0


def main(argv: list[str] | None = None) -> int:
    return options.tool_main("infgen-serve", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
