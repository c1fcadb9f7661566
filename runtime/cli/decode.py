"""`python -m infgen.runtime decode`: a latent file (.npy/.pt/.safetensors) -> PNG or JPEG at one or more sizes.

    python -m infgen.runtime decode z.npy --size 3840x2160 1024 -o out.png

The latent is the diffusion model's scaled latent, (C, h, w) or (B, C, h, w). Several sizes add
_WxH to the file name, a batch adds _0, _1, ... A decode still running after a few seconds shows a
progress bar on stderr (per conv band when banded, per sub-batch when plain; runtime/cli/progress.py).
"""
from __future__ import annotations

from pathlib import Path

from infgen.runtime.cli.options import add_memory_options, add_model_options, add_size_option, load_engine, tool_main
from infgen.runtime.cli.progress import Bar, add_progress_option

HELP = "latent (.npy/.pt/.safetensors) -> PNG or JPEG at one or more sizes"


def add_arguments(p) -> None:
    p.add_argument("latent", help="latent file: .npy, .pt/.pth (tensor or {'latent': tensor}) or .safetensors")
    add_size_option(p, required=True)
    p.add_argument("--out", "-o", help="output image (.png/.jpg); several sizes add _WxH to the name, a batch "
                                       "adds _0, _1, ... (default: <latent stem>.<format>)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="format when --out is not given")
    add_model_options(p)
    add_memory_options(p)
    add_progress_option(p)


def out_path(out: str | None, default_stem: str, size: tuple[int, int], several: bool, fmt: str) -> Path:
    """The image path for one (h, w): --out or <stem>.<fmt>, with _WxH when there are several sizes."""
    h, w = size
    p = Path(out) if out else Path(f"{default_stem}.{fmt}")
    return p.with_name(f"{p.stem}_{w}x{h}{p.suffix}") if several else p


def run(args) -> int:
    from infgen.ref.model import check_size
    from infgen.runtime.io import IMAGE_SUFFIXES, check_writable, load_latent
    outs = [out_path(args.out, Path(args.latent).stem, size, len(args.size) > 1, args.format) for size in args.size]
    for out in outs:  # every output path checked before any work
        check_writable(out, IMAGE_SUFFIXES, "--out")
    latent = load_latent(args.latent)
    engine = load_engine(args)
    for size in args.size:  # every size checked before the first decode
        check_size(*size, engine.config)
    for size, out in zip(args.size, outs):
        with Bar(f"decode {size[1]}x{size[0]}", "step", enabled=False if args.no_progress else None) as bar:
            image = engine.decode(latent, *size, progress=bar if bar.enabled else None)
        paths = engine.save(image, out)
        for p in paths:
            print(f"wrote {p} ({size[1]}x{size[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-decode", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
