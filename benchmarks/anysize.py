"""Plain vs banded vs distributed decode on the CPU: time and peak memory, each run in a fresh process.

  python benchmarks/anysize.py --preset tiny --sizes 1024 2048 --repeats 3 --ranks 2

Each (mode, size, repeat) runs in its own subprocess (`child`), so the peak is that decode's
alone: the process decodes once at a small size (one-time allocations: thread pools, oneDNN
primitives), then reads its RSS, decodes at the size, and reports the growth of its high-water
RSS (VmHWM) over that RSS: the decode's peak memory, weights and latent excluded. glibc's
mmap threshold is fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_) so freed tensors return to the system
and RSS follows live bytes. Distributed: the sum over ranks of each rank's growth (every rank
also holds the weights), wall time of the decode on rank 0 (between barriers).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    """This process's high-water RSS (VmHWM: per address space, unlike ru_maxrss, which a child
    inherits from its parent across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_maxrss() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs), where allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _model(preset_name: str, dtype):
    from infgen.ref.config import parse_dtype
    from infgen.runtime.engine import resolve_model
    return resolve_model(preset_name).to(dtype=parse_dtype(dtype))


def _decode(model, z, h, w, mode, band_rows):
    from infgen.ref import decode as D
    from infgen.ref.banded import banded_ops
    from infgen.ref.model import token_grid
    Hp, Wp = token_grid(h, w, model.config)
    ops = D.TORCH_OPS if mode == "plain" else banded_ops(band_rows)
    with torch.inference_mode():
        return D.decode_grid(ops, model, z.to(model.dtype), Hp, Wp)


def child(mode: str, preset_name: str, h: int, w: int, dtype: str, band_rows: int | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = _model(preset_name, dtype)
    z = torch.randn(1, model.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    _decode(model, z, 64, 64, mode, band_rows)  # one-time allocations
    _reset_maxrss()
    base = max(_rss(), _maxrss())
    t0 = time.perf_counter()
    img = _decode(model, z, h, w, mode, band_rows)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "peak_bytes": _maxrss() - base, "shape": list(img.shape)}


def _dist_worker(preset_name, h, w, dtype):
    import torch.distributed as dist
    from infgen.runtime.distributed import decode_distributed
    model = _model(preset_name, dtype)
    z = torch.randn(1, model.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    decode_distributed(model, z, 64, 64)
    _reset_maxrss()
    base = max(_rss(), _maxrss())
    dist.barrier()
    t0 = time.perf_counter()
    decode_distributed(model, z, h, w)
    dist.barrier()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "peak_bytes": _maxrss() - base}


def run_child(mode: str, preset_name: str, h: int, w: int, dtype: str = "fp32", band_rows: int | None = None,
              threads: int = 1, ranks: int = 2, timeout: float = 600) -> dict:
    """One measurement in a fresh process (see the module docstring)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    args = [sys.executable, str(Path(__file__).resolve()), "child", mode, preset_name, str(h), str(w), dtype,
            str(band_rows or 0), str(threads), str(ranks)]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"measurement failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        mode, preset_name, h, w, dtype, rows, threads, ranks = sys.argv[2:10]
        if mode == "distributed":
            from infgen.runtime.distributed import launch
            res = launch(_dist_worker, int(ranks), preset_name, int(h), int(w), dtype, timeout=600)
            out = {"seconds": res[0]["seconds"], "peak_bytes": sum(r["peak_bytes"] for r in res)}
        else:
            out = child(mode, preset_name, int(h), int(w), dtype, int(rows) or None, int(threads))
        print(json.dumps(out))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--sizes", nargs="+", default=["1024", "2048"])
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()
    from infgen.ref.config import parse_dtype, parse_size, preset
    from infgen.ref.memory import predict_peak
    cfg = preset(args.preset)
    rows = []
    for s in args.sizes:
        h, w = parse_size(s)
        for mode in ("plain", "banded", "distributed"):
            runs = [run_child(mode, args.preset, h, w, args.dtype, None, args.threads, args.ranks)
                    for _ in range(args.repeats)]
            t = sorted(r["seconds"] for r in runs)
            pk = statistics.median(r["peak_bytes"] for r in runs)
            pred = predict_peak(cfg, h, w, dtype=parse_dtype(args.dtype), mode=mode) if mode != "distributed" else None
            rows.append({"size": f"{w}x{h}", "mode": mode, "median_s": statistics.median(t), "min_s": t[0],
                         "max_s": t[-1], "peak_mb": pk / 1e6, "predicted_mb": pred and pred / 1e6})
            print(f"{w}x{h} {mode:12s} {statistics.median(t):8.3f} s [{t[0]:.3f}, {t[-1]:.3f}]  "
                  f"peak {pk / 1e6:8.1f} MB" + (f"  predicted {pred / 1e6:8.1f} MB" if pred else ""), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
