"""`python -m runtime.cli.serve`: InfGen on NVIDIA Triton Inference Server (HTTP, gRPC, metrics).

    python -m runtime.cli.serve                       # the bundled demo checkpoint, loopback ports 8000-8002
    python -m runtime.cli.serve --checkpoint DIR --device cuda --host 0.0.0.0 --max-pixels 16777216

Runs until SIGINT or SIGTERM, then stops Triton (in-flight requests get exit_timeout_s to finish)
and exits 0; exits 1 if the server died, 2 with one `error: ...` line on a user error. The model,
its inputs, limits and errors: runtime/serving.py and docs/serving.md.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

EXIT_USAGE = 2


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def nonneg_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 1..65535, got {text!r}")
    return int(text)


# ------------------------------------------------------------------------------- model flags
def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint/--preset, --backend, --device, --dtype (the same flags as `python -m runtime`)."""
    from infgen_ref.config import DTYPES, PRESETS
    from runtime.engine import BACKENDS
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), help="architecture preset with random weights")
    src.add_argument("--checkpoint", metavar="DIR", help="InfGen checkpoint directory (default: the bundled demo "
                                                         "checkpoint if installed, else --preset tiny)")
    g.add_argument("--backend", choices=BACKENDS, default="torch", help="default: %(default)s")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp32 on the CPU, bf16 on CUDA")


def load_engine(args):
    """-> (InfGenEngine, what was loaded, in words)."""
    from runtime.demo import RANDOM_NOTICE, default_model
    from runtime.engine import InfGenEngine
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint must be a directory, got {args.checkpoint!r}")
    spec = args.checkpoint or args.preset or default_model()
    engine = InfGenEngine(spec, backend=args.backend, device=args.device, dtype=args.dtype)
    if engine.random_weights:
        print(f"note: {RANDOM_NOTICE}", file=sys.stderr)
    return engine, (f"preset {spec}" if engine.random_weights else f"checkpoint {spec}")


# ------------------------------------------------------------------------------- server flags
def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch", type=positive_int, default=8,
                   help="images per request and per decode; Triton's max_batch_size (default: %(default)s)")
    g.add_argument("--max-pixels", type=positive_int, default=None,
                   help="output pixels per request, batch x height x width (default: one image of the "
                        "model's max_size squared)")
    g.add_argument("--max-queue-delay-us", type=nonneg_int, default=2000,
                   help="how long the dynamic batcher holds a request to gather more (default: %(default)s)")
    g.add_argument("--preferred-batch-sizes", type=positive_int, nargs="+", default=(), metavar="N",
                   help="batch sizes the batcher sends as soon as it has them")
    g.add_argument("--max-queue-time-ms", type=nonneg_int, default=0,
                   help="reject a request queued longer than this (default: 0, no limit)")
    g.add_argument("--max-queue-size", type=nonneg_int, default=0,
                   help="reject requests beyond this many waiting (default: 0, no limit)")


def limits_from_args(args):
    from runtime.serving import Limits
    return Limits(max_batch=args.max_batch, max_pixels=args.max_pixels, max_queue_delay_us=args.max_queue_delay_us,
                  preferred_batch_sizes=tuple(args.preferred_batch_sizes), max_queue_time_ms=args.max_queue_time_ms,
                  max_queue_size=args.max_queue_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 for every interface, as in a container (default: %(default)s)")
    g.add_argument("--http-port", type=port, default=8000, help="HTTP/REST (KServe v2) port (default: %(default)s)")
    g.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default: %(default)s)")
    g.add_argument("--metrics-port", type=port, default=8002, help="Prometheus metrics port (default: %(default)s)")
    g.add_argument("--model-name", default="infgen", help="the model's name in the URLs (default: %(default)s)")
    add_limit_arguments(parser)


def warm_up(engine) -> None:
    """One small decode before the server opens, so the first request pays no first-call costs."""
    import torch
    c = engine.config
    engine.decode(torch.zeros(1, c.latent_channels, 8, 8), 8 * c.upscale, 8 * c.upscale)


def run(args) -> int:
    from runtime.serving import require_pytriton, start_server
    limits = limits_from_args(args)
    require_pytriton()  # before the model loads: a missing extra fails fast
    engine, what = load_engine(args)
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
    parser = argparse.ArgumentParser(prog="python -m runtime.cli.serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"error: {str(exc).strip().replace(chr(10), '; ') or type(exc).__name__}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
