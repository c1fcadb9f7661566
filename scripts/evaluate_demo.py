"""The demo model's two evaluation tables (BENCHMARKS.md, "Demo model fidelity"), beside the demo:

    python scripts/evaluate_demo.py                                       # both, the bundled checkpoint
    python scripts/evaluate_demo.py --table held-out --checkpoint out/demo7/model
    python scripts/evaluate_demo.py --table fidelity --size 256x256 512x288 --backend torch --dtype bf16

held-out (held_out_table): on each held-out photo (coffee, chelsea: never trained on), InfGen's
direct decode at 2x and 4x against native decode + bicubic and against bicubic of the input
pixels, PSNR and SSIM. fidelity (fidelity): the demo latent through every backend and dtype that
can be built here, PSNR and max |difference| against the torch fp32 output; a backend that cannot
be built is a row saying why. `python -m infgen.runtime demo` (runtime/cli/demo.py) is the demo
itself (InfGen's task on a bundled 2048x1152 photo); its helpers (encode_photo, score, resize,
timed_decode) are used here, and these tables keep their own inputs (coffee.jpg at 144x96 here).
scripts/learning_curve.py scores a run's snapshots with held_out_table.
"""
from __future__ import annotations

import math
import sys

import torch

from infgen.cli import DTYPE_CHOICES, add_size_option, guarded, tool_parser
from infgen.ref.config import DTYPES
from infgen.runtime.cli.demo import (COFFEE_PHOTO, check_sizes, demo_checkpoint, encode_photo, print_rows, resize,
                                     score, timed_decode)
from infgen.runtime.engine import BACKENDS

FIDELITY_BACKENDS = tuple(b for b in BACKENDS if b != "auto")
HELD_OUT_COLUMNS = ("photo", "scale", "size", "psnr", "ssim", "baseline_psnr", "baseline_ssim",
                    "input_bicubic_psnr", "input_bicubic_ssim")
FIDELITY_COLUMNS = ("backend", "dtype", "size", "psnr", "max_abs", "finite", "skipped")
TABLES = ("held-out", "fidelity")
FIDELITY_SIZES = ((256, 256), (288, 512), (1024, 1024))  # (h, w)
FIDELITY_INPUT = (96, 144)  # (h, w): coffee.jpg encoded to a 12 x 18 latent


def held_out_table(checkpoint=None, scales=(2, 4), device="cpu", photos: dict | None = None) -> list[dict]:
    """InfGen at each scale vs native decode + bicubic (and bicubic from the input pixels), per held-out photo.

    Each photo is center-cropped to a multiple of 8 * max(scales); the input is that crop shrunk by
    max(scales); the reference at scale s is the crop resized to s x the input size.
    photos: name -> (1, 3, H, W) in [-1, 1] (default: infgen.train.photos' held-out photos)."""
    from infgen.runtime.engine import InfGenEngine
    ckpt = demo_checkpoint(checkpoint)
    engine = InfGenEngine(ckpt, backend="torch", device=device, dtype="fp32")
    if photos is None:
        from infgen.train.photos import held_out_photos
        photos = {k: v[None] * 2 - 1 for k, v in held_out_photos().items()}
    u, smax = engine.config.upscale, max(scales)
    rows = []
    for name, pic in photos.items():
        H, W = (d // (u * smax) * u * smax for d in pic.shape[2:])
        top, left = (pic.shape[2] - H) // 2, (pic.shape[3] - W) // 2
        crop = pic[:, :, top:top + H, left:left + W]
        ih, iw = H // smax, W // smax
        x = resize(crop, ih, iw)
        z = encode_photo(crop, ckpt, (ih, iw))
        native = engine.decode(z, ih, iw)
        rp, rs = score(x, native)
        rows.append(dict(photo=name, scale=1, size=f"{iw}x{ih}", psnr=round(rp, 2), ssim=round(rs, 4)))
        for s in scales:
            h, w = ih * s, iw * s
            ref = resize(crop, h, w)
            img = engine.decode(z, h, w).cpu()
            p, q = score(ref, img)
            bp, bq = score(ref, resize(native.cpu(), h, w))
            ip, iq = score(ref, resize(x, h, w))
            rows.append(dict(photo=name, scale=s, size=f"{w}x{h}", psnr=round(p, 2), ssim=round(q, 4),
                             baseline_psnr=round(bp, 2), baseline_ssim=round(bq, 4),
                             input_bicubic_psnr=round(ip, 2), input_bicubic_ssim=round(iq, 4)))
    return rows


def fidelity(sizes=FIDELITY_SIZES, backends=FIDELITY_BACKENDS, dtypes=tuple(DTYPES),
             device="cpu", checkpoint=None, photo=COFFEE_PHOTO) -> list[dict]:
    """The demo latent through every available backend and dtype; PSNR against the torch fp32 output.

    sizes: (h, w). One row per (backend, dtype, size): psnr (inf when identical), max_abs (in
    [-1, 1] units), finite; or one row with skipped=<reason> for a backend/dtype that cannot be
    built here."""
    from infgen.runtime.engine import InfGenEngine
    from infgen.runtime.io import load_image
    sizes = check_sizes(sizes)
    ckpt = demo_checkpoint(checkpoint)
    z = encode_photo(load_image(photo), ckpt, FIDELITY_INPUT)
    ref_engine = InfGenEngine(ckpt, backend="torch", device=device, dtype="fp32")
    refs = {(h, w): ref_engine.decode(z, h, w).float().cpu() for h, w in sizes}
    rows = []
    for b in backends:
        for dt in dtypes:
            try:
                engine = InfGenEngine(ckpt, backend=b, device=device, dtype=dt)
            except (ImportError, ValueError, RuntimeError, NotImplementedError) as exc:
                rows.append(dict(backend=b, dtype=dt, skipped=f"{type(exc).__name__}: {exc}"[:200]))
                continue
            for h, w in sizes:
                try:
                    img, secs = timed_decode(engine, z, h, w)
                except (RuntimeError, NotImplementedError) as exc:
                    rows.append(dict(backend=b, dtype=dt, size=f"{w}x{h}", skipped=f"{type(exc).__name__}: {exc}"[:200]))
                    continue
                img = img.float().cpu()
                finite = bool(torch.isfinite(img).all())
                ref = refs[(h, w)]
                mse = float(((img - ref) / 2).pow(2).mean()) if finite else float("nan")
                psnr = float("inf") if mse == 0 else (-10 * math.log10(mse) if finite else float("nan"))
                rows.append(dict(backend=b, dtype=dt, size=f"{w}x{h}", psnr=round(psnr, 2), finite=finite,
                                 max_abs=round(float((img - ref).abs().max()), 5), seconds=round(secs, 3)))
    return rows


def add_arguments(p) -> None:
    p.add_argument("--table", choices=TABLES, nargs="+", default=list(TABLES), help="which tables to print")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="a trained checkpoint directory (default: the bundled demo checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    add_size_option(p, default=list(FIDELITY_SIZES), what="the fidelity table's sizes")
    p.add_argument("--backend", choices=FIDELITY_BACKENDS, nargs="+", default=list(FIDELITY_BACKENDS),
                   help="the fidelity table's backends")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, nargs="+", default=list(DTYPES),
                   help="the fidelity table's dtypes")


def run(args) -> int:
    ckpt = demo_checkpoint(args.checkpoint)  # before any work: a missing checkpoint is one error line
    print(f"checkpoint {ckpt}, device {args.device}")
    if "held-out" in args.table:
        print("\nheld-out photos, InfGen vs native decode + bicubic (and bicubic from the input pixels):")
        print_rows(held_out_table(ckpt, device=args.device), HELD_OUT_COLUMNS)
    if "fidelity" in args.table:
        print("\nfidelity against the torch fp32 output:")
        print_rows(fidelity(args.size, backends=args.backend, dtypes=args.dtype, device=args.device, checkpoint=ckpt),
                   FIDELITY_COLUMNS)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = tool_parser("python scripts/evaluate_demo.py", __doc__.split("\n")[0], add_arguments).parse_args(argv)
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
