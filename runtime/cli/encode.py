"""`python -m infgen.runtime encode`: an image (PNG/JPEG) -> latent file, with the VAE encoder.

    python -m infgen.runtime encode photo.png -o z.npy

The latent is scaled (posterior mean x scaling_factor), as a diffusion model produces it.
"""
from __future__ import annotations

from pathlib import Path

from infgen.runtime.cli.options import add_model_options, load_engine, tool_main

HELP = "image (PNG/JPEG) -> latent file, with the VAE encoder"


def add_arguments(p) -> None:
    p.add_argument("image", help="PNG or JPEG file")
    p.add_argument("--out", "-o", help="latent file: .npy, .pt or .safetensors (default: <image stem>.npy)")
    add_model_options(p)


def run(args) -> int:
    from infgen.runtime.io import LATENT_SUFFIXES, check_writable, load_image, save_latent
    out = args.out or f"{Path(args.image).stem}.npy"
    check_writable(out, LATENT_SUFFIXES, "--out")  # before any work
    image = load_image(args.image)
    engine = load_engine(args)
    latent = engine.encode(image)
    save_latent(latent.cpu(), out)
    print(f"wrote {out}: latent {tuple(latent.shape)} from image {image.shape[3]}x{image.shape[2]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-encode", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
