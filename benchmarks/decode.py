"""End-to-end decode latency per backend and size (fallback for `python -m runtime.profile`).

  python benchmarks/decode.py --preset paper --sizes 1024x1024 2048x2048 4096x4096 \
      --backends torch,triton --dtype bf16 --warmup 2 --iters 5 --out decode_out

One InfGenEngine per backend (random weights of the preset), latent (1, 4, 64, 64); each size is
warmed up, then timed --iters times with CUDA events around engine.decode (validation, run,
crop, clamp). Median, p10, p90 in ms and peak allocated memory (GiB) per (backend, size); a row
that fails (OOM, error) records the message and the run goes on. Writes OUT/decode.json.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infgen_ref.config import PRESETS, parse_size  # noqa: E402
from infgen_ref.cost import decode_flops, floor_seconds  # noqa: E402
from runtime.engine import InfGenEngine  # noqa: E402


def time_decode(eng: InfGenEngine, z: torch.Tensor, h: int, w: int, warmup: int, iters: int) -> dict:
    cuda = eng.device.type == "cuda"
    for _ in range(warmup):
        eng.decode(z, h, w)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            eng.decode(z, h, w)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            eng.decode(z, h, w)
            times.append((time.perf_counter() - t) * 1e3)
    t = np.array(times)
    row = {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
           "p90_ms": float(np.percentile(t, 90)), "times_ms": t.tolist()}
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--sizes", nargs="+", default=["1024x1024", "2048x2048", "4096x4096"])
    p.add_argument("--backends", default="torch,triton")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default="decode_out")
    a = p.parse_args(argv)
    sizes = [parse_size(s)[::-1] for s in a.sizes]  # (w, h)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "commit": git or None, "preset": a.preset, "dtype": a.dtype,
              "warmup": a.warmup, "iters": a.iters, "rows": []}
    for backend in [b.strip() for b in a.backends.split(",") if b.strip()]:
        try:
            eng = InfGenEngine(a.preset, backend=backend, device=a.device, dtype=a.dtype)
        except Exception as exc:  # noqa: BLE001 - recorded
            result["rows"].append({"backend": backend, "status": "unavailable", "message": str(exc)[:300]})
            continue
        cfg = eng.config
        z = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                        generator=torch.Generator().manual_seed(0)).to(eng.device)
        for w, h in sizes:
            row = {"backend": backend, "size": f"{w}x{h}"}
            flops = decode_flops(cfg, h, w)["total"]
            row["floor_ms"] = floor_seconds(flops) * 1e3
            try:
                row.update(time_decode(eng, z, h, w, a.warmup, a.iters), status="ok")
                row["tflops"] = flops / (row["median_ms"] * 1e-3) / 1e12
            except torch.cuda.OutOfMemoryError as exc:
                row.update(status="OOM", message=str(exc)[:300])
            except Exception as exc:  # noqa: BLE001 - recorded
                row.update(status="error", message=f"{type(exc).__name__}: {str(exc)[:300]}")
            result["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times_ms"}), flush=True)
            (out / "decode.json").write_text(json.dumps(result, indent=1))
            gc.collect()
            if eng.device.type == "cuda":
                torch.cuda.empty_cache()
        del eng
        gc.collect()
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    (out / "decode.json").write_text(json.dumps(result, indent=1))
    print(f"\n{'backend':8s} {'size':>10s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'peak GiB':>9s} {'floor ms':>9s}")
    for r in result["rows"]:
        if r.get("status") == "ok":
            print(f"{r['backend']:8s} {r['size']:>10s} {r['median_ms']:10.1f} {r['p10_ms']:8.1f} {r['p90_ms']:8.1f} "
                  f"{r.get('peak_gib', float('nan')):9.1f} {r['floor_ms']:9.1f}")
        else:
            print(f"{r['backend']:8s} {r.get('size', ''):>10s} {r['status']}: {r.get('message', '')[:80]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
