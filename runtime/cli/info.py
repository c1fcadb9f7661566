"""`python -m infgen.runtime info`: config, parameter counts, FLOPs per stage, the H100 floor and the memory plan at a size.

    python -m infgen.runtime info --preset paper --size 3840x2160

Builds the model on the meta device: fast for any preset, no weights read.
"""
from __future__ import annotations

from infgen.cli import positive_int
from infgen.runtime.cli.options import add_memory_options, add_model_options, add_size_option, model_spec, tool_main

HELP = "config, parameter counts, FLOPs per stage, the H100 floor and the memory plan at a size"


def add_arguments(p) -> None:
    add_size_option(p, default=[(1024, 1024)], what="output size(s) for the FLOP count")
    p.add_argument("--batch", type=positive_int, default=1)
    add_model_options(p, device=False, dtype=False, backends=())
    add_memory_options(p, banded=False)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(args) -> int:
    import torch
    from infgen.ref.config import PRESETS, preset
    from infgen.ref.cost import STAGES, decode_flops, floor_seconds
    from infgen.ref.model import InfGen, check_size
    from infgen.ref.weights import NEW_PREFIXES, checkpoint_config

    spec = model_spec(args)
    cfg = preset(spec) if spec in PRESETS else checkpoint_config(spec)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = InfGen(cfg)
    params = dict(model.named_parameters())
    new = sum(p.numel() for k, p in params.items() if k.startswith(NEW_PREFIXES))
    encoder = _count(model.encoder) + _count(model.quant_conv)
    shared = sum(p.numel() for p in params.values()) - encoder - new

    print(f"model: {'preset ' + spec if spec in PRESETS else 'checkpoint ' + spec}")
    print("config:")
    for k, v in cfg.to_dict().items():
        print(f"  {k:20s} {v}")
    print(f"  {'(derived)':20s} token_dim {cfg.token_dim}, head_dim {cfg.head_dim}, upscale {cfg.upscale}, "
          f"mlp_dim {cfg.mlp_dim}")
    print("parameters:")
    for name, n in (("encoder (+quant_conv)", encoder), ("decoder, shared with the VAE", shared),
                    ("decoder, new in InfGen", new), ("total", encoder + shared + new)):
        print(f"  {name:30s} {n:>13,d}  ({n / 1e6:.2f} M)")
    lat = (cfg.latent_size, cfg.latent_size)
    for size in args.size:
        h, w = check_size(*size, cfg)
        f = decode_flops(cfg, h, w, latent_hw=lat, batch=args.batch)
        print(f"FLOPs, decode of a {lat[0]}x{lat[1]} latent to {w}x{h} (WxH), batch {args.batch}:")
        for k in (*STAGES, "total"):
            print(f"  {k:12s} {f[k] / 1e12:10.4f} TFLOP  {100 * f[k] / f['total']:5.1f}%")
        print(f"  H100 floor   {1e3 * floor_seconds(f['total']):10.2f} ms (bf16 matrix rate 790 TFLOP/s)")
        print_plan(cfg, h, w, args.batch, args.max_memory, args.band_rows)
    return 0


def print_plan(cfg, h: int, w: int, batch: int, max_memory, band_rows) -> None:
    """Predicted peak activation memory, plain and banded, per backend and dtype; with a budget,
    the plan the engine would pick (infgen_ref/memory.py, docs/anysize.md)."""
    import torch
    from infgen.ref.memory import parse_bytes, plan, predict_peak
    budget = parse_bytes(max_memory) if max_memory else None
    print(f"memory, decode to {w}x{h} (WxH), batch {batch}: predicted peak activations"
          + (f"; plan under a {budget / 1e9:.2f} GB budget" if budget else " (--max-memory: the plan)"))
    for backend, dtype, where in (("torch", torch.float32, "CPU"), ("torch", torch.bfloat16, "CUDA"),
                                  ("triton", torch.bfloat16, "CUDA")):
        plain = predict_peak(cfg, h, w, batch, dtype, backend, "plain")
        banded = predict_peak(cfg, h, w, batch, dtype, backend, "banded", band_rows)
        line = (f"  {backend:6s} {str(dtype).split('.')[-1]:8s} ({where:4s}) plain {plain / 1e9:8.2f} GB  "
                f"banded {banded / 1e9:8.2f} GB")
        if budget:
            p = plan(cfg, h, w, batch, dtype, backend, budget, "auto", band_rows, host_streaming=where == "CUDA")
            if p.mode == "refuse":
                line += (f"  -> refuse, at least {p.peak_bytes / 1e9:.2f} GB (over budget: more GPUs, "
                         f"torchrun -m infgen.runtime.distributed)")
            else:
                split = f" of {p.sub_batch}" if p.mode == "sub-batches" else f", {p.sub_batch} at a time"
                line += (f"  -> {p.mode}" + (split if p.sub_batch < batch else "")
                         + (f", {p.band_rows} rows per band" if p.band_rows else "") + f", {p.peak_bytes / 1e9:.2f} GB")
        print(line)


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-info", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
