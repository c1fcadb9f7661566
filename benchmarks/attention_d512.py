"""Head-dim-512 self-attention on an sm_90 GPU: the scores-once Gluon kernel against the tl.dot
kernel and PyTorch SDPA, measured in one run, with ablations. Writes JSON after every case.

  python3 benchmarks/attention_d512.py --out d512.json [--tokens 16384 65536 262144] [--no-sdpa-above N]

One head of 512 over N tokens (the mid block's self-attention; N = H'W', 262,144 at 4096^2),
batch 1, bf16. Per N: `d512` (infgen.kernels.attention_d512, RUNTIME_CONFIG), every SWEEP_CONFIGS entry,
the ablations `no_pv` (P V removed) and `no_qk` (Q K^T removed; both wrong outputs, timed for the
split of the time), `tl_dot` (infgen.kernels.attention.flash_attention, its CUDA tile) and `sdpa`
(F.scaled_dot_product_attention, which at head dim 512 runs its memory-efficient kernel). Rates
are 4 N^2 512 FLOP / median time for every variant, ablations included (so they read as "the rate
if the removed product were free"). Timing: triton.testing.do_bench (CUDA events), median and
p10/p90 in ms. The d512 output's max |error| against tl_dot and SDPA is recorded as a sanity check
(the tests carry correctness).
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


from infgen.kernels.attention import attention_flops, flash_attention  # noqa: E402
from infgen.kernels.attention_d512 import (ABLATIONS, RUNTIME_CONFIG, SWEEP_CONFIGS, d512_unsupported_reason,  # noqa: E402
                                    flash_attention_d512)

QUANTILES = [0.5, 0.1, 0.9]


def bench(fn, flops: float) -> dict:
    import triton.testing
    med, p10, p90 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=QUANTILES)
    return {"median_ms": med, "p10_ms": p10, "p90_ms": p90, "tflops": flops / (med * 1e-3) / 1e12}


def safe(fn) -> dict:
    """fn() or {'error': ...}: one failing variant must not end the run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON
        torch.cuda.synchronize()
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def case(n: int, sdpa: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, 1, n, 512, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    flops = attention_flops(1, 1, n, n, 512)
    row = {"tokens": n, "flops": flops, "dtype": "bfloat16"}
    ours = flash_attention_d512(q, k, v)
    row["d512"] = {"config": RUNTIME_CONFIG.__dict__, **bench(lambda: flash_attention_d512(q, k, v), flops)}
    row["sweep"] = [{"config": c.__dict__, **safe(lambda c=c: bench(lambda: flash_attention_d512(q, k, v, config=c), flops))}
                    for c in SWEEP_CONFIGS]
    for name, c in ABLATIONS.items():
        row[name] = safe(lambda c=c: bench(lambda: flash_attention_d512(q, k, v, config=c), flops))

    def tl_dot():
        err = (ours.float() - flash_attention(q, k, v).float()).abs().max().item()
        return {**bench(lambda: flash_attention(q, k, v), flops), "max_abs_diff_d512": err}
    row["tl_dot"] = safe(tl_dot)

    def sdpa():
        err = (ours.float() - F.scaled_dot_product_attention(q, k, v).float()).abs().max().item()
        return {**bench(lambda: F.scaled_dot_product_attention(q, k, v), flops), "max_abs_diff_d512": err}
    row["sdpa"] = safe(sdpa) if sdpa else {"skipped": "--no-sdpa-above"}
    del q, k, v, ours
    torch.cuda.empty_cache()
    return row


def env() -> dict:
    import triton
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "commit": git or None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="d512.json")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536, 262144])
    p.add_argument("--no-sdpa-above", type=int, default=None, metavar="N",
                   help="skip SDPA above N tokens (its memory-efficient kernel is slow at 262,144)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention_d512.py needs a CUDA device", file=sys.stderr)
        return 2
    probe = torch.empty(1, 1, 1, 512, device="cuda", dtype=torch.bfloat16)
    reason = d512_unsupported_reason(probe, probe, probe)
    if reason is not None:
        print(f"the scores-once kernel cannot run here: {reason}", file=sys.stderr)
        return 2
    result = {"env": env(), "cases": []}
    for n in a.tokens:
        result["cases"].append(safe(lambda n=n: case(n, a.no_sdpa_above is None or n <= a.no_sdpa_above)))
        Path(a.out).write_text(json.dumps(result, indent=1))

    print(result["env"])
    print(f"{'tokens':>8s} {'d512':>8s} {'no_pv':>8s} {'no_qk':>8s} {'tl_dot':>8s} {'sdpa':>8s}  TFLOP/s (median)")
    for r in result["cases"]:
        if "error" in r:
            print("error:", r["error"])
            continue
        cells = [r[name].get("tflops") for name in ("d512", "no_pv", "no_qk", "tl_dot", "sdpa")]
        print(f"{r['tokens']:8d} " + " ".join(f"{c:8.1f}" if c is not None else f"{'-':>8s}" for c in cells))
        for s in r["sweep"]:
            print(f"{'':8s} sweep {s['config']}: " + (f"{s['tflops']:.1f}" if "tflops" in s else s.get("error", "")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
