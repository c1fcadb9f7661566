"""`python -m infgen.runtime client` (or `infgen-client`): decode a latent file on an InfGen server (`runtime serve`).

    python -m infgen.runtime client z.npy --size 3840x2160 -o out.png --url 127.0.0.1:8000
    python -m infgen.runtime client z.npy --size 1024 512x768 --protocol grpc --url 127.0.0.1:8001

Sizes are WIDTHxHEIGHT, as in `python -m infgen.runtime decode`, and the files are named the same way:
several sizes add _WxH, a batch adds _0, _1, ... The pixels equal a local
`engine.to_uint8(engine.decode(latent, h, w))` with the server's model. Exits 2 with one
`error: ...` line on a user error or an error answer from the server, 1 if the server is not ready.
"""
from __future__ import annotations

import sys
from pathlib import Path

from infgen.runtime.cli.options import add_size_option, tool_main
from infgen.runtime.cli.progress import Bar, add_progress_option
from infgen.runtime.client import MODEL_NAME, InfGenClient, ServerError  # torch-free

EXIT_UNAVAILABLE = 1
HELP = "decode a latent file on an InfGen server (runtime serve), over HTTP or gRPC"


def user_errors() -> tuple:
    """Errors that are the user's (or the server's answer to them): one line, exit status 2."""
    return (ServerError,)


def add_arguments(parser) -> None:
    parser.add_argument("latent", help="latent file: .npy, .pt/.pth or .safetensors, (C, h, w) or (B, C, h, w)")
    add_size_option(parser, required=True)
    parser.add_argument("--out", "-o", help="output .png or .jpg (default: <latent stem>.png)")
    parser.add_argument("--url", default="127.0.0.1:8000",
                        help="server host:port, the HTTP port or with --protocol grpc the gRPC one (default: %(default)s)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: %(default)s")
    parser.add_argument("--model-name", default=MODEL_NAME, help="default: %(default)s")
    parser.add_argument("--server-png", action="store_true",
                        help="have the server encode the PNG files (output 'png') instead of sending pixels")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    add_progress_option(parser)


def out_paths(out: str | None, stem: str, size: tuple[int, int], several_sizes: bool, batch: int) -> list[Path]:
    h, w = size
    p = Path(out) if out else Path(f"{stem}.png")
    if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out must end in .png, .jpg or .jpeg, got {str(p)!r}")
    if several_sizes:
        p = p.with_name(f"{p.stem}_{w}x{h}{p.suffix}")
    return [p] if batch == 1 else [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(batch)]


def run(args) -> int:
    from PIL import Image

    from infgen.runtime.io import load_latent
    if args.server_png and args.out and Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"--server-png writes PNG files: --out must end in .png, got {args.out!r}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    from infgen.runtime.io import IMAGE_SUFFIXES, check_writable
    check_writable(args.out or f"{Path(args.latent).stem}.png", IMAGE_SUFFIXES, "--out")  # before any request
    from infgen.ref.model import check_floating
    latent = check_floating(load_latent(args.latent), f"latent file {args.latent!r}").float().numpy()
    batch = latent.shape[0] if latent.ndim == 4 else 1
    with InfGenClient(args.url, protocol=args.protocol, model_name=args.model_name, timeout_s=args.timeout) as client:
        if not client.ready():
            print(f"error: no ready model {args.model_name!r} at {args.protocol}://{args.url}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        bar = Bar("decode on the server", "image", total=len(args.size) * batch,
                  enabled=False if args.no_progress else None)
        with bar:  # shown past a few seconds: elapsed time while a request is in flight, images done
            for size in args.size:
                paths = out_paths(args.out, Path(args.latent).stem, size, len(args.size) > 1, batch)
                bar.describe(f"decode {size[1]}x{size[0]} on the server")
                if args.server_png:
                    for p, data in zip(paths, bar.wait(lambda: client.decode_png(latent, *size))):
                        p.write_bytes(data)
                else:
                    for p, pixels in zip(paths, bar.wait(lambda: client.decode(latent, *size))):
                        Image.fromarray(pixels).save(p, **({} if p.suffix.lower() == ".png" else {"quality": 95}))
                bar.update(batch)
                for p in paths:
                    print(f"wrote {p} ({size[1]}x{size[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-client", __doc__, add_arguments, run, argv, errors=user_errors())


if __name__ == "__main__":
    raise SystemExit(main())
