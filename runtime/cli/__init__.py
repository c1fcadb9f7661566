"""`python -m runtime`: decode, encode, demo, info.

Sizes are written WIDTH x HEIGHT, as screen resolutions are: `--size 3840x2160` is 3840 wide and
2160 high; a single number is a square (`--size 1024`). User errors print one `error: ...` line
on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infgen_ref.config import DTYPES, PRESETS
from infgen_ref.config import parse_size as config_parse_size
from runtime.engine import BACKENDS
EXIT_USAGE = 2


def parse_size(text: str) -> tuple[int, int]:
    """argparse type: 'WxH' (or 'N' for a square) -> (h, w); see infgen_ref.config.parse_size."""
    try:
        return config_parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS),
                     help="architecture preset with random weights (for testing and timing)")
    src.add_argument("--checkpoint", metavar="DIR",
                     help="InfGen checkpoint directory (config.json + model.safetensors); default: the bundled "
                          "demo checkpoint if installed, else --preset tiny")
    g.add_argument("--backend", choices=BACKENDS, default="torch", help="default: %(default)s")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: %(default)s)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="compute dtype (default: fp32 on the CPU, bf16 on CUDA)")


def _model_spec(args) -> str:
    from runtime.demo import default_model
    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_dir():
            raise FileNotFoundError(f"--checkpoint must be a directory, got {args.checkpoint!r}")
        return args.checkpoint
    return args.preset or default_model()


def _memory_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory (docs/anysize.md)")
    g.add_argument("--max-memory", metavar="BYTES", help="memory budget for one decode, e.g. 24GB or 512MiB "
                   "(default: free device memory, or available RAM, minus 10%%); past it the decode runs in bands")
    g.add_argument("--banded", choices=("auto", "on", "off"), default="auto",
                   help="banded decode: auto (when the plain one would not fit), on, off (default: %(default)s)")
    g.add_argument("--band-rows", type=positive_int, help="rows per band (default: sized by bytes)")


def _engine(args):
    from runtime.demo import RANDOM_NOTICE
    from runtime.engine import InfGenEngine
    memory = {}
    if hasattr(args, "max_memory"):
        memory = dict(max_memory=args.max_memory, band_rows=args.band_rows,
                      banded={"auto": "auto", "on": True, "off": False}[args.banded])
    engine = InfGenEngine(_model_spec(args), backend=args.backend, device=args.device, dtype=args.dtype, **memory)
    if engine.random_weights:
        print(f"note: {RANDOM_NOTICE}", file=sys.stderr)
    return engine


def _out_path(out: str | None, default_stem: str, size: tuple[int, int], several: bool, fmt: str) -> Path:
    h, w = size
    p = Path(out) if out else Path(f"{default_stem}.{fmt}")
    return p.with_name(f"{p.stem}_{w}x{h}{p.suffix}") if several else p


# ------------------------------------------------------------------------------- commands
def cmd_decode(args) -> int:
    from runtime.io import load_latent
    if args.out is not None and Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .jpg or .jpeg, got {args.out!r}")
    from infgen_ref.model import check_size
    latent = load_latent(args.latent)
    engine = _engine(args)
    for size in args.size:  # every size checked before the first decode
        check_size(*size, engine.config)
    for size in args.size:
        image = engine.decode(latent, *size)
        paths = engine.save(image, _out_path(args.out, Path(args.latent).stem, size, len(args.size) > 1, args.format))
        for p in paths:
            print(f"wrote {p} ({size[1]}x{size[0]})")
    return 0


def cmd_encode(args) -> int:
    from runtime.io import load_image, save_latent
    out = args.out or f"{Path(args.image).stem}.npy"
    image = load_image(args.image)
    engine = _engine(args)
    latent = engine.encode(image)
    save_latent(latent.cpu(), out)
    print(f"wrote {out}: latent {tuple(latent.shape)} from image {image.shape[3]}x{image.shape[2]}")
    return 0


def cmd_demo(args) -> int:
    """The trained demo checkpoint (or --checkpoint): the photo demo with PSNR/SSIM and its baseline.
    A preset (random weights): the test-pattern demo, which says the images are noise."""
    spec = _model_spec(args)
    if spec in PRESETS:
        from runtime.demo import DEMO_SIZES, run_demo
        run_demo(args.out_dir, args.size or DEMO_SIZES, model=spec, backend=args.backend, device=args.device,
                 dtype=args.dtype, fmt=args.format)
        return 0
    from runtime import demo_photo
    sizes = [(w, h) for h, w in args.size] if args.size else demo_photo.DEFAULT_SIZES
    rows = demo_photo.run_demo(args.out_dir, sizes, backend=args.backend, device=args.device, dtype=args.dtype,
                               checkpoint=spec)
    print(f"InfGen demo: checkpoint {spec}; photo {demo_photo.DEMO_PHOTO.name} (held out from training), "
          f"encoded once, decoded at each size in one pass")
    demo_photo._print_rows(rows, ["size", "seconds", "psnr", "ssim", "baseline_psnr", "baseline_ssim"])
    print("baseline = decode at the latent's native size, then bicubic upscaling; reference = the photo "
          f"resized to each size. Images and contact sheet: {Path(args.out_dir) / 'contact_sheet.png'}")
    return 0


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def cmd_info(args) -> int:
    import torch
    from infgen_ref.config import preset
    from infgen_ref.cost import STAGES, decode_flops, floor_seconds
    from infgen_ref.model import InfGen, check_size
    from infgen_ref.weights import NEW_PREFIXES, checkpoint_config

    spec = _model_spec(args)
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
    for size in args.size:
        _print_plan(args, cfg, *size)
    return 0


def _print_plan(args, cfg, h: int, w: int) -> None:
    """The memory plan of a decode at (h, w): plain or banded, band rows, predicted peaks."""
    import torch
    from infgen_ref.config import parse_dtype
    from infgen_ref.memory import parse_bytes, plan, predict_peak
    from runtime.anysize import MARGIN, free_memory
    device = torch.device(args.device)
    dtype = parse_dtype(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))
    backend = "triton" if args.backend == "triton" else "torch"
    budget = parse_bytes(args.max_memory) if args.max_memory else int(free_memory(device) * (1 - MARGIN))
    banded = {"auto": "auto", "on": True, "off": False}[args.banded]
    mode, rows, peak = plan(cfg, h, w, args.batch, dtype, backend, budget, banded, args.band_rows)
    plain = predict_peak(cfg, h, w, args.batch, dtype, backend, "plain")
    print(f"memory plan, {w}x{h} (WxH), batch {args.batch}, {backend} {str(dtype).split('.')[-1]} on {device}, "
          f"budget {budget / 1e9:.2f} GB:")
    print(f"  mode         {mode}" + (f", {rows} rows per band at full resolution" if rows else ""))
    print(f"  peak         {peak / 1e9:10.2f} GB predicted (activations; plain decode: {plain / 1e9:.2f} GB)")
    if peak > budget:
        print(f"  note         the predicted peak exceeds the budget: use a smaller --band-rows or distribute "
              f"rows over GPUs (torchrun -m runtime.distributed)")



# ------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description="InfGen runtime: decode one latent into an image of any size in one pass.",
        epilog="Sizes are WIDTHxHEIGHT (3840x2160 is landscape 4K); one number means a square.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("decode", help="latent (.npy/.pt/.safetensors) -> PNG or JPEG at one or more sizes",
                       description="Decode a latent file to images. The latent is the diffusion model's scaled "
                                   "latent, (C, h, w) or (B, C, h, w).")
    p.add_argument("latent", help="latent file: .npy, .pt/.pth (tensor or {'latent': tensor}) or .safetensors")
    p.add_argument("--size", type=parse_size, nargs="+", required=True, metavar="WxH",
                   help="output size(s), WIDTHxHEIGHT, e.g. --size 3840x2160 1024x1024")
    p.add_argument("--out", "-o", help="output image (.png/.jpg); several sizes add _WxH to the name, a batch "
                                       "adds _0, _1, ... (default: <latent stem>.<format>)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="format when --out is not given")
    _model_args(p)
    _memory_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("encode", help="image (PNG/JPEG) -> latent file, with the VAE encoder",
                       description="Encode an image to a scaled latent (posterior mean x scaling_factor).")
    p.add_argument("image", help="PNG or JPEG file")
    p.add_argument("--out", "-o", help="latent file: .npy, .pt or .safetensors (default: <image stem>.npy)")
    _model_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("demo", help="no input files: decode a bundled photo at several sizes, print times and PSNR/SSIM",
                       description="With the bundled demo checkpoint (the default) or --checkpoint: encode the "
                                   "bundled held-out photo, decode it at several sizes, write PNGs and a contact "
                                   "sheet, print seconds, PSNR and SSIM next to native decode + bicubic. With "
                                   "--preset (random weights, and it says so): decode a test pattern.")
    p.add_argument("--out-dir", default="demo_out", help="where the images go (default: %(default)s)")
    p.add_argument("--size", type=parse_size, nargs="+", metavar="WxH",
                   help="sizes (default: 256x256 512x288 1024x1024 1920x1080 with a checkpoint)")
    p.add_argument("--format", choices=("png", "jpg"), default="png")
    _model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="config, parameter counts, FLOPs per stage and the H100 floor at a size",
                       description="Print the config, parameter counts and the cost model at the given sizes. "
                                   "Builds the model on the meta device: fast for any preset.")
    p.add_argument("--size", type=parse_size, nargs="+", default=[(1024, 1024)], metavar="WxH",
                   help="output size(s) for the FLOP count (default: 1024x1024)")
    p.add_argument("--batch", type=positive_int, default=1)
    _model_args(p)
    _memory_args(p)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from infgen_ref.weights import CheckpointError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # ImportError: a backend's optional package is missing (its message says which).
    except (CheckpointError, ValueError, TypeError, OSError, ImportError) as exc:
        msg = str(exc).strip().replace("\n", "; ") or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_USAGE
