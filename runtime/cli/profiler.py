"""`python -m infgen.runtime profile`: where the time and memory of a decode go, per backend and size.

    python -m infgen.runtime profile --preset paper --device cuda --backend torch triton --size 1024 3840x2160 --out-dir prof/
    python -m infgen.runtime profile --preset tiny --size 128x128 256x256 --iters 10 --out-dir prof/

For every target (each --backend at the run's dtype, plus the --baselines) and every --size, one
row of latency (median, p10, p90), images/s, peak memory, TFLOP/s and share of the cost-model
floor, with a per-stage breakdown where the backend has one (runtime/cli/profile_measure.py).
Writes OUT_DIR/profile.json after every row (a run killed midway keeps what it measured), the table
on stdout, and OUT_DIR/profile.png when matplotlib is installed (runtime/cli/profile_report.py).
tqdm and matplotlib are optional. Exits 1 if no row succeeded.
"""
from __future__ import annotations

import argparse

from infgen.cli import positive_int
from infgen.runtime.cli.options import add_model_options, add_size_option, model_spec, tool_main
from infgen.runtime.cli.profile_measure import BASELINES, DEFAULT_SIZES
from infgen.runtime.engine import BACKENDS

HELP = "latency, memory, TFLOP/s and share of the floor per backend, size and stage; JSON (+ PNG)"
DEFAULT_BACKENDS = tuple(b for b in BACKENDS if b != "auto")  # every concrete backend


def _nonneg_int(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return int(text)


def add_arguments(p) -> None:
    add_size_option(p, default=list(DEFAULT_SIZES))
    p.add_argument("--baselines", nargs="+", default=["auto"], metavar="NAME",
                   choices=["auto", "none", *BASELINES],
                   help="baseline rows: " + ", ".join(BASELINES) + ", none, or auto: torch-fp32, torch-bf16 and, "
                        "on CUDA, torch-compile (on the CPU inductor compiles for ~10 s a size)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--warmup", type=_nonneg_int, default=3)
    p.add_argument("--iters", type=positive_int, default=10)
    p.add_argument("--max-megapixels", type=float, default=None, help="skip larger sizes (rows say 'skipped')")
    p.add_argument("--out-dir", default="profile_out", metavar="DIR", help="directory for profile.json and profile.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    add_model_options(p, several_backends=True, backend_default=DEFAULT_BACKENDS, device_default=None,
                      device_help="cpu or cuda[:N] (default: cuda when present, else cpu)")


def run(args) -> int:
    import torch
    from infgen.ref.config import dtype_name, parse_dtype
    from infgen.runtime.cli import profile_report as report_mod
    from infgen.runtime.cli.profile_measure import make_targets, profile
    from infgen.ref.checks import check_out_dir
    from infgen.runtime.engine import is_random, resolve_device, resolve_model

    check_out_dir(args.out_dir, "--out-dir")  # before any profiling
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    if "auto" in args.baselines:
        baselines = ["torch-fp32", "torch-bf16"] + (["torch-compile"] if device.type == "cuda" else [])
    else:
        baselines = [b for b in args.baselines if b != "none"]
    targets, aliases = make_targets(list(dict.fromkeys(args.backend)), baselines, dtype, device)
    spec = model_spec(args)
    model = resolve_model(spec)
    source = f"preset {spec} (random weights)" if is_random(spec) else f"checkpoint {spec}"
    run_args = {k: v for k, v in vars(args).items() if k not in ("module", "command")}
    run_args.update(device=str(device), dtype=dtype_name(dtype), baselines=baselines,
                    size=[f"{w}x{h}" for h, w in args.size])

    def write(rows):  # after every row: a run killed midway keeps what it measured
        report_mod.write_json(report_mod.make_report(rows, device, source, model.config, run_args, aliases), args.out_dir)

    rows = profile(model, device, args.size, targets, args.batch, args.warmup, args.iters, args.max_megapixels,
                   progress=False if args.no_progress else None, on_row=write)
    report = report_mod.make_report(rows, device, source, model.config, run_args, aliases)
    print(report_mod.format_table(report))
    jpath, ppath = report_mod.write_outputs(report, args.out_dir)
    print(f"wrote {jpath}" + (f" and {ppath}" if ppath else " (no profile.png: matplotlib is not installed)"))
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-profile", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
