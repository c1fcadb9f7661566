"""Head-dim-512 self-attention on an sm_90 GPU: the scores-once Gluon kernel against the tl.dot
kernel and PyTorch SDPA, measured in one run, with ablations. Writes JSON after every case.

  python3 benchmarks/attention_d512.py --out d512.json [--tokens 16384 65536 262144] [--no-sdpa-above N] [--no-sweep]
  python3 benchmarks/attention_d512.py --smoke --out d512_smoke.json   # one small case vs float64, exit 1 if wrong

One head of 512 over N tokens (the mid block's self-attention; N = H'W', 262,144 at 4096^2),
batch 1, bf16. Per N: `d512` (infgen.kernels.attention_d512, RUNTIME_CONFIG), every SWEEP_CONFIGS entry,
the ablations `no_pv` (P V removed) and `no_qk` (Q K^T removed; both wrong outputs, timed for the
split of the time), `tl_dot` (infgen.kernels.attention.flash_attention, its CUDA tile) and `sdpa`
(F.scaled_dot_product_attention, which at head dim 512 runs its memory-efficient kernel). Rates
are 4 N^2 512 FLOP / median time for every variant, ablations included (so they read as "the rate
if the removed product were free"). Timing: triton.testing.do_bench (CUDA events), median and
p10/p90 in ms. The d512 output's max |error| against tl_dot and SDPA is recorded as a sanity check
(the tests carry correctness). --no-sweep leaves out the sweep and the ablations.

INFGEN_D512=0 (the kill switch, infgen.runtime.triton_backend.d512_enabled) leaves the scores-once
kernel out entirely (not even imported): `d512` rows say skipped, tl_dot and SDPA are measured.
--smoke runs the kernel once as the triton backend launches it (q_prescaled, bf16) on a small
ragged batch-2 case against float64 attention_ref (STYLE rule 6) and exits 0 / 1 (wrong or
non-finite) / 2 (cannot run here); scripts/gpu_check.sh runs it under a hard timeout first.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from infgen.kernels.attention import LN2, LOG2E, attention_flops, attention_ref, flash_attention  # noqa: E402
from infgen.runtime.triton_backend import d512_enabled  # noqa: E402

QUANTILES = [0.5, 0.1, 0.9]
OFF = "INFGEN_D512=0: the scores-once kernel is switched off"
SMOKE_SHAPE = (2, 1031)  # (batch, tokens): batch > 1, a ragged last query block and key tile
SMOKE_ATOL = 1e-2        # bf16 (tests/test_kernels_attention_d512.py ATOL)


def d512_module():
    """infgen.kernels.attention_d512, or None when INFGEN_D512=0 (then it is never imported)."""
    if not d512_enabled():
        return None
    from infgen.kernels import attention_d512
    return attention_d512


def ablations(d512) -> dict:
    """The kernel with one of its two products replaced (its `products` hook): `no_qk` scores every
    key 0 (attention becomes the mean of V), `no_pv` keeps the accumulator (output 0). Loads,
    softmax and barriers all still run, so each times the kernel as if that product were free."""
    from triton.experimental import gluon

    @gluon.jit
    def zero_scores(q_smem, k_tile, s_zero):
        return s_zero

    @gluon.jit
    def keep_acc(p, v_tile, acc):
        return acc
    return {"no_qk": (zero_scores, d512.pv_product), "no_pv": (d512.qk_product, keep_acc)}


def bench(fn, flops: float) -> dict:
    import triton.testing
    med, p10, p90 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=QUANTILES)
    return {"median_ms": med, "p10_ms": p10, "p90_ms": p90, "tflops": flops / (med * 1e-3) / 1e12}


def safe(fn) -> dict:
    """fn() or {'error': ...}: one failing variant must not end the run."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def case(n: int, sdpa: bool, d512=None, sweep: bool = True, device: str = "cuda") -> dict:
    """One token count: d512 (the module, None when switched off), its sweep and ablations when
    `sweep`, tl_dot, and SDPA when `sdpa`. device: "cpu" only for the CPU test of this logic."""
    g = torch.Generator(device=device).manual_seed(n)
    q, k, v = (torch.randn(1, 1, n, 512, device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
    flops = attention_flops(1, 1, n, n, 512)
    row = {"tokens": n, "flops": flops, "dtype": "bfloat16"}
    ours = None
    if d512 is None:
        row["d512"] = {"skipped": OFF}
    else:
        attn = d512.flash_attention_d512

        def runtime_config():  # a failure here still leaves tl_dot and SDPA measured
            nonlocal ours
            ours = attn(q, k, v)
            return {"config": d512.RUNTIME_CONFIG.__dict__, **bench(lambda: attn(q, k, v), flops)}
        row["d512"] = safe(runtime_config)
        if sweep and ours is not None:
            row["sweep"] = [{"config": c.__dict__, **safe(lambda c=c: bench(lambda: attn(q, k, v, config=c), flops))}
                            for c in d512.SWEEP_CONFIGS]
            for name, prods in ablations(d512).items():
                row[name] = safe(lambda p=prods: bench(lambda: attn(q, k, v, products=p), flops))
        row["cluster"] = cluster_case(q, k, v, ours, flops)

    def versus(fn):  # bench fn, and its output's max |difference| to the d512 output when there is one
        r = bench(fn, flops)
        if ours is not None:
            r["max_abs_diff_d512"] = (ours.float() - fn().float()).abs().max().item()
        return r
    row["tl_dot"] = safe(lambda: versus(lambda: flash_attention(q, k, v)))
    row["sdpa"] = (safe(lambda: versus(lambda: F.scaled_dot_product_attention(q, k, v))) if sdpa
                   else {"skipped": "--no-sdpa-above"})
    del q, k, v, ours
    torch.cuda.empty_cache()
    return row


def cluster_case(q, k, v, ours, flops: float) -> dict:
    """The 2-CTA cluster option (kernels/attention_d512_cluster.py), timed beside the runtime kernel
    with its max |difference| to it; skipped, with the reason, where triton has no Gluon multicast (3.6)."""
    from infgen.kernels import attention_d512_cluster as cl
    if not cl.HAS_MULTICAST:
        return {"skipped": cl.NO_MULTICAST}

    def run():
        r = bench(lambda: cl.flash_attention_d512_cluster(q, k, v), flops)
        if ours is not None:
            r["max_abs_diff_d512"] = (cl.flash_attention_d512_cluster(q, k, v).float() - ours.float()).abs().max().item()
        return {"config": cl.RUNTIME_CONFIG.__dict__, **r}
    return safe(run)


def env() -> dict:
    import triton
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "commit": git or None}


def smoke(out: Path, device: str = "cuda") -> int:
    """The runtime's launch (q_prescaled, bf16, RUNTIME_CONFIG) once on SMOKE_SHAPE, NaN-poisoned
    output, against float64 attention_ref: err <= 2 err(torch bf16) + SMOKE_ATOL. Writes `out`
    before the launch (status "running": a hang leaves that behind) and after. Returns 0 (ok),
    1 (wrong, non-finite, or the launch raised), 2 (cannot run here). device: "cpu" only for the
    CPU test, with a stand-in for the kernel module."""
    d512 = d512_module()
    result = {"env": env(), "shape": SMOKE_SHAPE, "dtype": "bfloat16", "q_prescaled": True}
    if d512 is None:
        out.write_text(json.dumps({**result, "status": "skipped", "reason": OFF}, indent=1))
        print(OFF)
        return 0
    B, n = SMOKE_SHAPE
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, 1, n, 512, device=device, dtype=torch.bfloat16) for _ in range(3))
    reason = d512.d512_unsupported_reason(q, k, v)
    if reason is not None:
        out.write_text(json.dumps({**result, "status": "unsupported", "reason": reason}, indent=1))
        print(f"the scores-once kernel cannot run here: {reason}", file=sys.stderr)
        return 2
    out.write_text(json.dumps({**result, "status": "running"}, indent=1))
    q_pre = (q.float() * (LOG2E / 512 ** 0.5)).to(q.dtype)  # what fold_query_scale gives the kernel
    poison = torch.full((B, n, 1, 512), float("nan"), device=device, dtype=q.dtype).transpose(1, 2)
    t0 = time.perf_counter()
    try:
        got = d512.flash_attention_d512(q_pre, k, v, q_prescaled=True, out=poison)
        if q.is_cuda:
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - recorded; the lease then switches the kernel off
        out.write_text(json.dumps({**result, "status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}, indent=1))
        raise
    seconds = time.perf_counter() - t0  # compile + one launch
    ref = attention_ref(q_pre.double(), k.double(), v.double(), LN2)  # softmax(q k^T / sqrt(512)) v
    finite = bool(torch.isfinite(got).all())
    err = (got.double() - ref).abs().max().item()
    err_torch = (attention_ref(q_pre, k, v, LN2).double() - ref).abs().max().item()
    tol = 2 * err_torch + SMOKE_ATOL
    ok = finite and err <= tol
    result.update(status="ok" if ok else "wrong", all_written_and_finite=finite, max_abs_err=err,
                  max_abs_err_torch_bf16=err_torch, tolerance=tol, compile_and_run_s=seconds)
    out.write_text(json.dumps(result, indent=1))
    print(f"d512 smoke: {result['status']}: max |err| {err:.3g} (torch bf16 {err_torch:.3g}, tolerance {tol:.3g}), "
          f"finite {finite}, {seconds:.1f} s compile + run")
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="d512.json")
    p.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536, 262144])
    p.add_argument("--no-sdpa-above", type=int, default=None, metavar="N",
                   help="skip SDPA above N tokens (its memory-efficient kernel is slow at 262,144)")
    p.add_argument("--no-sweep", action="store_true", help="leave out the tile sweep and the ablations")
    p.add_argument("--smoke", action="store_true",
                   help="one small case against the float64 reference, as the runtime launches it; exit 1 if wrong")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention_d512.py needs a CUDA device", file=sys.stderr)
        return 2
    if a.smoke:
        return smoke(Path(a.out))
    d512 = d512_module()
    if d512 is None:
        print(f"{OFF}: measuring tl_dot and SDPA only")
    else:
        probe = torch.empty(1, 1, 1, 512, device="cuda", dtype=torch.bfloat16)
        reason = d512.d512_unsupported_reason(probe, probe, probe)
        if reason is not None:
            print(f"the scores-once kernel cannot run here: {reason}", file=sys.stderr)
            return 2
    result = {"env": env(), "d512_enabled": d512 is not None, "cases": []}
    for n in a.tokens:
        result["cases"].append(safe(lambda n=n: case(n, a.no_sdpa_above is None or n <= a.no_sdpa_above, d512,
                                                     sweep=not a.no_sweep)))
        Path(a.out).write_text(json.dumps(result, indent=1))

    print(result["env"])
    print(f"{'tokens':>8s} {'d512':>8s} {'no_pv':>8s} {'no_qk':>8s} {'tl_dot':>8s} {'sdpa':>8s}  TFLOP/s (median)")
    for r in result["cases"]:
        if "error" in r:
            print("error:", r["error"])
            continue
        cells = [r.get(name, {}).get("tflops") for name in ("d512", "no_pv", "no_qk", "tl_dot", "sdpa")]
        print(f"{r['tokens']:8d} " + " ".join(f"{c:8.1f}" if c is not None else f"{'-':>8s}" for c in cells))
        for s in r.get("sweep", []):
            print(f"{'':8s} sweep {s['config']}: " + (f"{s['tflops']:.1f}" if "tflops" in s else s.get("error", "")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
