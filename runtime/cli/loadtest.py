"""`python -m infgen.runtime loadtest` (or `infgen-loadtest`): Locust against the server's HTTP v2 inference endpoint.

    python -m infgen.runtime loadtest --size 256x256 512x512 --users 1 2 4 8 --run-time 30 --out lt.json

Without --url it starts its own loopback server (same model flags as `runtime serve`) on free
ports, its Triton log in a temporary file; with --url it loads that server, and the model flags
must name the server's model (the direct decode is timed here, in this process). Per size and
user count: first the engine's direct decode time (median and range of --repeats, batch --batch,
uint8 conversion included, server idle), then a headless Locust run, each user sending requests
back to back for --run-time seconds; in-flight requests are let finish. Timing the baseline
right before each run keeps both under similar load on a shared machine. Per run: requests,
errors, images/s over the run's window, latency p50/p90/p99 from the raw samples. Says up front
how long it will run (duration_line), shows a progress bar over the runs on stderr (a terminal,
tqdm installed) and stops its own server without Triton's `Signal (2) received.` (stop_quietly). Prints a
Markdown table and writes JSON with machine, date, commit, model and backend. Exits 1 if any
request failed.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infgen.cli import positive_int
from infgen.runtime.cli.options import add_model_options, add_size_option, tool_main
from infgen.runtime.cli.progress import Bar, add_progress_option
from infgen.runtime.cli.serve import add_limit_arguments, engine_and_name, limits_from_args, warm_up
from infgen.runtime.client import MODEL_NAME, SERVE_EXTRA

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
HELP = "Locust load test of a server (its own loopback one by default): throughput, latency percentiles"


def add_arguments(parser) -> None:
    parser.add_argument("--url", help="host:port of a running server's HTTP endpoint (default: start one here)")
    add_size_option(parser, default=[(256, 256), (512, 512)])
    parser.add_argument("--users", type=positive_int, nargs="+", default=[1, 2, 4, 8],
                        help="concurrent users = requests in flight (default: 1 2 4 8)")
    parser.add_argument("--run-time", type=positive_int, default=30, help="seconds per run (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per request (default: %(default)s)")
    parser.add_argument("--latent-grid", type=positive_int, default=None,
                        help="latent h_l = w_l (default: the model's latent_size)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="direct decode timings (default: %(default)s)")
    parser.add_argument("--model-name", default=MODEL_NAME)
    parser.add_argument("-o", "--out", metavar="FILE", help="write the results as JSON here")
    add_model_options(parser)
    add_limit_arguments(parser)
    add_progress_option(parser)


def duration_line(sizes: list, users: list, run_time: int, repeats: int) -> str:
    """What the load test will do and for how long, said before it starts: one Locust run per
    (size, user count), run_time seconds each, after repeats + 1 direct decodes of that size."""
    runs = len(sizes) * len(users)
    load = runs * run_time
    return (f"load test: {len(sizes)} size(s) x {len(users)} user count(s) = {runs} run(s) of {run_time} s: "
            f"{load} s ({load / 60:.1f} min) of load, plus {repeats + 1} direct decodes before each run, "
            f"the server start and the last requests' finish")


def stop_quietly(server) -> None:
    """server.stop() without its stray `Signal (2) received.` line on stdout: tritonserver
    acknowledges the SIGINT that PyTriton stops it with, and PyTriton echoes tritonserver's stdout
    to ours (print from its reader thread; tritonserver's log proper goes to the log file). Any
    other line echoed while stopping goes to stderr."""
    echoed = io.StringIO()
    with contextlib.redirect_stdout(echoed):
        server.stop()
    for line in echoed.getvalue().splitlines():
        if line.strip() and not line.strip().startswith("Signal (2) received"):
            print(line, file=sys.stderr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    from infgen.runtime.cli.profile_report import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).parent).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def direct_decode_ms(engine, latent: np.ndarray, h: int, w: int, repeats: int) -> dict:
    import torch
    engine.to_uint8(engine.decode(latent, h, w))  # warm-up: per-size caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.to_uint8(engine.decode(latent, h, w))
        if engine.device.type == "cuda":
            torch.cuda.synchronize(engine.device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": float(np.median(times)), "min_ms": float(min(times)), "max_ms": float(max(times))}


def locust_run(url: str, size: tuple[int, int], latent_shape: tuple[int, ...], users: int, run_time: int,
               model_name: str) -> dict:
    """One headless Locust run; returns counts, throughput and latency percentiles from the raw samples."""
    h, w = size
    b, c, hl, wl = latent_shape
    with tempfile.TemporaryDirectory() as tmp:
        samples_path = Path(tmp) / "samples.json"
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--loglevel", "WARNING", "-u", str(users), "-r", str(users), "-t", f"{run_time}s",
               "--stop-timeout", "600", "--host", f"http://{url}", "--infgen-height", str(h),
               "--infgen-width", str(w), "--infgen-latent", f"{c}x{hl}x{wl}", "--infgen-batch", str(b),
               "--infgen-model", model_name, "--infgen-samples", str(samples_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=run_time + 600 + 120)
        if not samples_path.is_file():
            raise RuntimeError(f"locust wrote no samples (exit {proc.returncode}): {proc.stderr[-2000:]}")
        samples = json.loads(samples_path.read_text())
    ok = [(s, rt) for s, rt, good in samples if good]
    errors = len(samples) - len(ok)
    row = {"size": f"{w}x{h}", "users": users, "requests": len(samples), "errors": errors}
    if ok:
        lat = np.array([rt for _, rt in ok])
        window = max(s + rt / 1e3 for s, rt in ok) - min(s for s, _ in ok)
        row.update(images_per_s=len(ok) * b / window, window_s=window,
                   **{f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99)})
    return row


def markdown(result: dict) -> str:
    lines = ["| size | users | requests | errors | images/s | p50 ms | p90 ms | p99 ms | direct decode ms, median (range) "
             "| direct images/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in result["runs"]:
        d = r["direct"]
        lines.append(f"| {r['size']} | {r['users']} | {r['requests']} | {r['errors']} | {r.get('images_per_s', 0):.2f} "
                     f"| {r.get('p50_ms', nan):.0f} | {r.get('p90_ms', nan):.0f} | {r.get('p99_ms', nan):.0f} "
                     f"| {d['median_ms']:.0f} ({d['min_ms']:.0f}-{d['max_ms']:.0f}) "
                     f"| {1e3 * result['batch'] / d['median_ms']:.2f} |")
    return "\n".join(lines)


def run(args) -> int:
    import importlib.util

    from infgen.runtime.serving import describe, require_pytriton, start_server
    if args.out:
        from infgen.ref.checks import check_out_file
        check_out_file(args.out, "--out")  # before the load test, not after it
    limits = limits_from_args(args)
    if importlib.util.find_spec("locust") is None:
        raise ImportError(f"the load test needs locust: {SERVE_EXTRA}")
    if args.url is None:
        require_pytriton()
    print(duration_line(args.size, args.users, args.run_time, args.repeats), file=sys.stderr, flush=True)
    engine, what = engine_and_name(args)
    warm_up(engine)
    grid = args.latent_grid or engine.config.latent_size
    latent = np.random.default_rng(0).standard_normal(
        (args.batch, engine.config.latent_channels, grid, grid)).astype(np.float32)
    result = {"machine": machine(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "commit": commit(), "model": describe(engine, what), "batch": args.batch,
              "latent": list(latent.shape), "run_time_s": args.run_time, "runs": []}
    triton, url = None, args.url
    log_dir = tempfile.TemporaryDirectory()
    if url is None:
        ports = [free_port() for _ in range(3)]
        triton = start_server(engine, limits, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                              model_name=args.model_name, model=what, log_file=Path(log_dir.name) / "triton.log",
                              echo=lambda *a, **k: print(*a, file=sys.stderr))
        url = f"127.0.0.1:{ports[0]}"
        result["server"] = {"max_batch": limits.max_batch, "max_queue_delay_us": limits.max_queue_delay_us}
    result["url"] = url
    bar = Bar("load test", "run", total=len(args.size) * len(args.users), enabled=False if args.no_progress else None)
    try:
        for h, w in args.size:
            for users in args.users:
                bar.describe(f"{w}x{h}, {users} user(s): direct decode")
                direct = direct_decode_ms(engine, latent, h, w, args.repeats)
                bar.describe(f"{w}x{h}, {users} user(s): Locust")
                row = bar.wait(lambda: locust_run(url, (h, w), latent.shape, users, args.run_time, args.model_name))
                row["direct"] = direct
                bar.write(f"{row['size']} users {users}: {row['requests']} requests, {row['errors']} errors, "
                          f"{row.get('images_per_s', 0):.2f} images/s, p50 {row.get('p50_ms', float('nan')):.0f} ms")
                bar.update()
                result["runs"].append(row)
    finally:
        bar.close()
        if triton is not None:
            stop_quietly(triton)
        log_dir.cleanup()
    print(f"machine: {result['machine']}\ndate: {result['date']}, commit {result['commit']}\nmodel: {result['model']}, "
          f"batch {args.batch}, latent {tuple(latent.shape)}, {args.run_time} s per run")
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 1 if any(r["errors"] for r in result["runs"]) else 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-loadtest", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
