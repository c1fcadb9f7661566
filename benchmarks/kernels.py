"""Kernel benchmarks on CUDA: each Triton kernel against its PyTorch baseline, measured in one run.

  python benchmarks/kernels.py --out kernels.json [--quick] [--no-sweep]
  TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   # CPU: tiny sizes, checks the script runs

- head-dim-512 self-attention (the mid block; B 1, one head) vs SDPA (which at head dim 512 runs
  its memory-efficient kernel), TFLOP/s, at 4,096 / 16,384 / 65,536 tokens;
- cross-attention (8 heads of 64, queries in (B, M, H*D) layout, 4,096 keys) vs SDPA at head dim
  64 (flash / cuDNN), TFLOP/s, at 65,536 and 262,144 queries;
- GroupNorm+SiLU, channels-last bf16, vs F.group_norm + F.silu (on the same channels-last tensor
  and on a contiguous one), GB/s counted as the two-pass floor (read x twice, write y once);
- INPE on the 4096^2 mask grid (512 x 512 tokens, paper widths).
A tile sweep per attention kind records each candidate (BLOCK_M, BLOCK_N, warps, stages), or the
error when it does not compile. Timing: triton.testing.do_bench (CUDA events), median and
p10/p90 in ms. Prints a table last; writes everything to --out as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


from infgen.kernels.attention import SWEEP_CONFIGS, attention_flops, flash_attention, pick_config  # noqa: E402
from infgen.kernels.groupnorm import group_norm_bytes, group_norm_silu  # noqa: E402
from infgen.kernels.inpe import inpe_embed, inpe_flops  # noqa: E402

QUANTILES = [0.5, 0.1, 0.9]
SWEEP = SWEEP_CONFIGS  # (BLOCK_M, BLOCK_N, warps, stages, kv_tma) by head dim; benchmarks/compile_report.py checks each fits


DEV = "cuda"


def bench(fn, warmup_ms=25, rep_ms=200) -> dict:
    import triton.testing
    if DEV == "cpu":  # --smoke: one untimed call, one timed (the interpreter's time means nothing)
        import time
        fn()
        t = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t) * 1e3
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms}
    med, p10, p90 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=QUANTILES)
    return {"median_ms": med, "p10_ms": p10, "p90_ms": p90}


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def safe(fn):
    """Run fn(); on failure return {'error': message} (one failing case must not end the run)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON
        try:
            if DEV == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a sticky CUDA error; the message above says what
            pass
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def attention_case(kind: str, B, H, M, N, D, dt, sweep: bool) -> dict:
    g = torch.Generator(device=DEV).manual_seed(M)
    if kind == "cross":  # projections are (B, L, H*D): head-split views, as the backend passes them
        q = torch.randn(B, M, H, D, device=DEV, dtype=dt, generator=g).transpose(1, 2)
        k, v = (torch.randn(B, N, H, D, device=DEV, dtype=dt, generator=g).transpose(1, 2) for _ in range(2))
    else:
        q, k, v = (torch.randn(B, H, M, D, device=DEV, dtype=dt, generator=g) for _ in range(3))
    flops = attention_flops(B, H, M, N, D)
    row = {"kind": kind, "B": B, "H": H, "M": M, "N": N, "D": D, "dtype": str(dt), "flops": flops,
           "default_config": list(pick_config(D, q.device))}

    def run_triton(cfg=None, kv_tma=False):
        out = flash_attention(q, k, v, config=cfg, kv_tma=kv_tma)
        r = bench(lambda: flash_attention(q, k, v, config=cfg, kv_tma=kv_tma))
        r["tflops"] = flops / (r["median_ms"] * 1e-3) / 1e12
        return r, out

    res, out = run_triton()
    row["triton"] = res
    def run_sdpa():
        err = rel_err(out, F.scaled_dot_product_attention(q, k, v))
        r = bench(lambda: F.scaled_dot_product_attention(q, k, v))
        return {**r, "tflops": flops / (r["median_ms"] * 1e-3) / 1e12, "rel_err_triton_vs_sdpa": err}
    row["sdpa"] = safe(run_sdpa)
    if sweep:
        row["sweep"] = []
        for *cfg, tma in SWEEP.get(D, []):
            r = safe(lambda: run_triton(tuple(cfg), tma)[0])
            row["sweep"].append({"config": list(cfg), "kv_tma": tma, **r})
    del q, k, v, out
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return row


def groupnorm_case(C, H, W, dt) -> dict:
    g = torch.Generator(device=DEV).manual_seed(C)
    x = torch.randn(1, C, H, W, device=DEV, dtype=dt, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, device=DEV, dtype=dt), torch.randn(C, device=DEV, dtype=dt)
    nbytes = group_norm_bytes(x)
    row = {"C": C, "H": H, "W": W, "dtype": str(dt), "bytes": nbytes}
    out = group_norm_silu(x, w, b, 32)
    r = bench(lambda: group_norm_silu(x, w, b, 32))
    row["triton"] = {**r, "gbps": nbytes / (r["median_ms"] * 1e-3) / 1e9}

    def torch_fn(t):
        return F.silu(F.group_norm(t, 32, w, b, 1e-6))
    ref = safe(lambda: torch_fn(x))
    if isinstance(ref, torch.Tensor):
        row["triton"]["rel_err_vs_torch"] = rel_err(out, ref)
        del ref
    for name, t in (("torch_channels_last", x), ("torch_contiguous", None)):
        def case(t=t):
            tt = x.contiguous() if t is None else t
            r = bench(lambda: torch_fn(tt))
            return {**r, "gbps": nbytes / (r["median_ms"] * 1e-3) / 1e9}
        row[name] = safe(case)
    del x, out
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return row


def inpe_case(h, w, D, F_, dt) -> dict:
    from infgen.ref.inpe import INPE
    m = INPE(D, F_, 1.0, 1).to(DEV, dt)
    args = (m.B, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)
    with torch.no_grad():
        r = bench(lambda: inpe_embed(h, w, *args))
        ref = bench(lambda: m(h, w))
    flops = inpe_flops(h, w, F_, D)
    return {"h": h, "w": w, "D": D, "F": F_, "dtype": str(dt),
            "triton": {**r, "tflops": flops / (r["median_ms"] * 1e-3) / 1e12},
            "torch_module": {**ref, "tflops": flops / (ref["median_ms"] * 1e-3) / 1e12}}


def env() -> dict:
    import triton
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine
        git = ""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (Triton interpreter, smoke run)", "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "commit": git or None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="kernels.json")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--no-sweep", action="store_true", help="skip the attention tile sweeps")
    p.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1, tiny sizes, no sweep")
    a = p.parse_args(argv)
    global DEV
    if a.smoke:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA device (or --smoke with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    dt = torch.bfloat16
    result = {"env": env(), "attention": [], "groupnorm": [], "inpe": []}

    def save():
        Path(a.out).write_text(json.dumps(result, indent=1))

    hd512 = [4096, 16384] if a.quick else [4096, 16384, 65536]
    if a.smoke:
        hd512 = [37]
    for n in hd512:
        result["attention"].append(safe(lambda: attention_case("self", 1, 1, n, n, 512, dt, sweep=n == hd512[-1] and not (a.no_sweep or a.smoke))))
        save()
    cross = [65536] if a.quick else [65536, 262144]
    if a.smoke:
        cross = [53]
    for m in cross:
        result["attention"].append(safe(lambda: attention_case("cross", 1, 8, m, 41 if a.smoke else 4096, 64, dt, sweep=m == cross[-1] and not (a.no_sweep or a.smoke))))
        save()
    gn = [(512, 512, 512), (256, 1024, 1024)] if a.quick else [(512, 512, 512), (512, 1024, 1024), (256, 2048, 2048), (128, 4096, 4096)]
    if a.smoke:
        gn = [(64, 9, 7)]
    for C, H, W in gn:
        result["groupnorm"].append(safe(lambda: groupnorm_case(C, H, W, dt)))
        save()
    g = 5 if a.smoke else 128 if a.quick else 512
    result["inpe"].append(safe(lambda: inpe_case(g, g, 512, 64, dt)))
    save()

    print(f"\n{result['env']}")
    print(f"{'case':44s} {'triton':>16s} {'baseline':>16s}")
    for r in result["attention"]:
        if "error" in r:
            print("attention error:", r["error"])
            continue
        base = r["sdpa"].get("tflops")
        print(f"{r['kind']:5s} attn B{r['B']} H{r['H']} M{r['M']} N{r['N']} D{r['D']:<4d}"
              f"{r['triton']['tflops']:12.1f} TF/s {base if base is None else round(base, 1)!s:>11s} TF/s")
        best = [s for s in r.get("sweep", []) if "tflops" in s]
        if best:
            s = max(best, key=lambda s: s["tflops"])
            print(f"      best swept tile {s['config']}{' kv_tma' if s['kv_tma'] else ''}: {s['tflops']:.1f} TF/s")
    for r in result["groupnorm"]:
        if "error" in r:
            print("groupnorm error:", r["error"])
            continue
        base = r["torch_channels_last"].get("gbps")
        print(f"GN+SiLU C{r['C']} {r['H']}x{r['W']:<24d}{r['triton']['gbps']:12.0f} GB/s "
              f"{base if base is None else round(base)!s:>11s} GB/s")
    for r in result["inpe"]:
        if "error" not in r:
            print(f"INPE {r['h']}x{r['w']} D{r['D']:<29d}{r['triton']['median_ms']:12.3f} ms   "
                  f"{r['torch_module']['median_ms']:10.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
