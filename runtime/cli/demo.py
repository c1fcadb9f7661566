"""`python -m infgen.runtime demo`: one latent decoded at several sizes, with no input files.

    python -m infgen.runtime demo --out-dir demo_out                    # the bundled demo checkpoint
    python -m infgen.runtime demo --preset tiny --size 64x48            # random weights: the test-pattern demo

With a trained checkpoint (the bundled demo model, infgen_ref/assets/demo/, or --checkpoint): a
held-out photo (assets/demo/coffee.jpg, never trained on) is resized to a small input, encoded to
one latent and decoded by InfGen at each size in one pass. Each output is scored (PSNR, SSIM;
scikit-image's metrics) against the photo resized to that size, next to a baseline measured in
the same run: decode at the latent's native size, then bicubic upscaling. With --preset (random
weights, and the demo says so): a procedural test pattern is encoded and decoded, which shows only
that every size decodes. Sizes are (height, width) inside, WIDTHxHEIGHT on the command line. The
demo model's evaluation tables (held-out photos at 2x/4x; every backend and dtype against the
torch fp32 output) are scripts/evaluate_demo.py, which uses the helpers here.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infgen.ref.config import PRESETS
from infgen.runtime.cli.options import (DEMO_CHECKPOINT, RANDOM_NOTICE, add_model_options, add_size_option, default_model,
                                 model_spec, tool_main)

HELP = "no input files: decode a bundled photo at several sizes, print times and PSNR/SSIM"
DEMO_PHOTO = DEMO_CHECKPOINT / "coffee.jpg"
PHOTO_SIZES = ((256, 256), (288, 512), (1024, 1024), (1080, 1920))  # (h, w)
PATTERN_SIZES = ((256, 256), (512, 512), (432, 768), (1024, 1024))  # (h, w)
INPUT_SIZE = (96, 144)  # (h, w) of the encoder input: a 12 x 18 latent
ROW_COLUMNS = ("size", "seconds", "psnr", "ssim", "baseline_psnr", "baseline_ssim")


# ----------------------------------------------------------------------------- helpers
def check_sizes(sizes) -> list[tuple[int, int]]:
    """A non-empty list of (height, width); ValueError naming the value otherwise (a 'WxH' string is
    the command line's, parsed there)."""
    try:
        out = [tuple(int(v) for v in s) for s in sizes] if not isinstance(sizes, str) else None
    except (TypeError, ValueError):
        out = None
    if not out or any(len(s) != 2 for s in out):
        raise ValueError(f"sizes must be a non-empty list of (height, width), got {sizes!r}")
    return out


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic resize (antialiased when shrinking) of (B, 3, H, W) in [-1, 1], clamped."""
    return F.interpolate(x.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def score(ref: torch.Tensor, img: torch.Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of img against ref, both (1, 3, H, W) in [-1, 1], on [0, 1] pixels."""
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as exc:
        raise ImportError("the photo demo scores with scikit-image: pip install scikit-image") from exc
    a = ((ref[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    b = ((img[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    return (float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            float(structural_similarity(a, b, channel_axis=2, data_range=1.0)))


def demo_checkpoint(checkpoint=None) -> Path:
    d = Path(checkpoint) if checkpoint is not None else DEMO_CHECKPOINT
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no demo checkpoint at {d} (config.json + model.safetensors expected)")
    return d


def encode_photo(photo: torch.Tensor, checkpoint, input_size=INPUT_SIZE) -> torch.Tensor:
    """Photo (1, 3, H, W) -> resized to input_size (h, w) -> scaled latent (1, C, h/8, w/8), fp32 reference encoder."""
    from infgen.ref.weights import load_checkpoint
    model = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return model.encode(resize(photo, *input_size)).float()


def pattern_image(h: int, w: int) -> torch.Tensor:
    """A deterministic colour image with smooth and sharp content: (1, 3, h, w) in [-1, 1]."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    r = torch.sqrt((y - 0.5) ** 2 + (x - 0.5) ** 2)
    rings = 0.5 + 0.5 * torch.cos(2 * math.pi * 8 * r)
    stripes = (torch.floor(x * 12) % 2) * (y > 0.75)
    red = 0.8 * x + 0.2 * rings
    green = 0.7 * y + 0.3 * rings * (r < 0.35)
    blue = torch.clamp(1 - x * y + stripes, 0, 1)
    return (torch.stack([red, green, blue])[None].clamp(0, 1) * 2 - 1).contiguous()  # (1, 3, h, w)


def timed_decode(engine, z: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, float]:
    """(image (B, 3, h, w), seconds), the device synchronised before the clock stops."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    t = time.perf_counter()
    img = engine.decode(z, h, w)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return img, time.perf_counter() - t


def contact_sheet(tiles: list[list[tuple[str, torch.Tensor]]], path: Path, box: int = 320) -> Path:
    """Rows of (label, (1, 3, H, W) image) tiles, each fitted into box x box, written as one PNG."""
    from PIL import Image, ImageDraw
    from infgen.runtime.engine import InfGenEngine
    pad, text_h = 8, 16
    thumbs = []
    for row in tiles:
        thumbs.append([])
        for label, img in row:
            im = InfGenEngine.to_pil(img)[0]
            im.thumbnail((box, box), Image.Resampling.LANCZOS)
            thumbs[-1].append((label, im))
    heights = [max(im.height for _, im in row) + text_h + pad for row in thumbs]
    cols = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (cols * (box + pad) + pad, sum(heights) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for row, rh in zip(thumbs, heights):
        for j, (label, im) in enumerate(row):
            x = pad + j * (box + pad)
            draw.text((x, y), label, fill="black")
            sheet.paste(im, (x, y + text_h))
        y += rh
    sheet.save(path)
    return path


def print_rows(rows: list[dict], cols, echo=print) -> None:
    echo("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        echo("  ".join(f"{str(r.get(c, '')):>14}" for c in cols))


# ----------------------------------------------------------------------------- the photo demo
def run_demo(out_dir, sizes=PHOTO_SIZES, backend="torch", device="cpu", dtype=None, checkpoint=None,
             photo=DEMO_PHOTO, input_size=INPUT_SIZE, fmt: str = "png") -> list[dict]:
    """Encode the held-out photo, decode it at each (h, w), score it and write images + a contact sheet.

    Returns one row per size: size ('WxH'), seconds (InfGen decode), psnr, ssim, baseline_psnr,
    baseline_ssim (native decode + bicubic), path. Also writes out_dir/demo_results.json."""
    from infgen.runtime.engine import InfGenEngine
    from infgen.runtime.io import load_image
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    sizes = check_sizes(sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = demo_checkpoint(checkpoint)
    pic = load_image(photo)  # (1, 3, H, W) in [-1, 1]
    z = encode_photo(pic, ckpt, input_size)
    engine = InfGenEngine(ckpt, backend=backend, device=device, dtype=dtype)
    nh, nw = engine.config.upscale * z.shape[2], engine.config.upscale * z.shape[3]
    native, native_s = timed_decode(engine, z, nh, nw)
    rows, tiles = [], [[(f"input {input_size[1]}x{input_size[0]} (latent {z.shape[3]}x{z.shape[2]})",
                         resize(pic, *input_size)), (f"native decode {nw}x{nh}", native.cpu())]]
    for h, w in sizes:
        img, secs = timed_decode(engine, z, h, w)
        img = img.float().cpu()
        if not bool(torch.isfinite(img).all()):
            raise FloatingPointError(f"decode at {w}x{h} ({engine.backend_name}, {engine.dtype}) is not finite")
        ref, base = resize(pic, h, w), resize(native.cpu(), h, w)
        p, s = score(ref, img)
        bp, bs = score(ref, base)
        path = InfGenEngine.save(img, out / f"infgen_{w}x{h}.{fmt}")[0]
        InfGenEngine.save(base, out / f"bicubic_{w}x{h}.{fmt}")
        rows.append(dict(size=f"{w}x{h}", seconds=round(secs, 3), psnr=round(p, 2), ssim=round(s, 4),
                         baseline_psnr=round(bp, 2), baseline_ssim=round(bs, 4), path=str(path)))
        tiles.append([(f"photo resized {w}x{h}", ref), (f"InfGen {w}x{h}: {p:.2f} dB / {s:.3f}", img),
                      (f"native+bicubic: {bp:.2f} dB / {bs:.3f}", base)])
    contact_sheet(tiles, out / "contact_sheet.png")
    info = dict(backend=engine.backend_name, device=str(engine.device), dtype=str(engine.dtype).split(".")[-1],
                checkpoint=str(ckpt), photo=str(photo), native=f"{nw}x{nh}", native_seconds=round(native_s, 3))
    (out / "demo_results.json").write_text(json.dumps(dict(info, rows=rows), indent=2))
    return rows


# ----------------------------------------------------------------------------- the test-pattern demo
def run_pattern_demo(out_dir="demo_out", sizes=PATTERN_SIZES, model=None, backend: str = "torch", device="cpu",
                     dtype=None, fmt: str = "png", echo=print) -> list[dict]:
    """Encode the test pattern, decode it at each (h, w) in sizes, save the images in out_dir.

    model: preset name, checkpoint directory or None (default_model()). Prints a table of size,
    seconds and path through echo; returns its rows as dicts (h, w, seconds, path)."""
    from infgen.runtime.engine import InfGenEngine
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    sizes = check_sizes(sizes)
    model = default_model() if model is None else model
    engine = InfGenEngine(model, backend=backend, device=device, dtype=dtype)
    cfg = engine.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    name = f"checkpoint {model}" if isinstance(model, (str, Path)) else type(model).__name__
    name = f"preset {model}" if engine.random_weights else name
    echo(f"model: {name} (backend {engine.backend_name}, device {engine.device}, {engine.dtype})")
    if engine.random_weights:
        echo(RANDOM_NOTICE)

    native = cfg.latent_size * cfg.upscale
    pattern = pattern_image(native, native)
    engine.save(pattern, out / f"input_{native}x{native}.{fmt}")
    latent = engine.encode(pattern)  # (1, C, latent_size, latent_size)
    echo(f"latent: {tuple(latent.shape)} from a {native}x{native} test pattern")

    engine.decode(latent, cfg.upscale, cfg.upscale)  # warm-up: first-call costs out of the table
    rows = []
    for h, w in sizes:
        image, seconds = timed_decode(engine, latent, h, w)
        path = engine.save(image, out / f"decoded_{w}x{h}.{fmt}")[0]
        rows.append({"h": h, "w": w, "seconds": seconds, "path": str(path)})

    echo(f"{'size (WxH)':>12}  {'seconds':>8}  path")
    for r in rows:
        echo(f"{r['w']:>5}x{r['h']:<6}  {r['seconds']:8.3f}  {r['path']}")
    if engine.random_weights:
        echo(f"note: {RANDOM_NOTICE}")
    return rows


# ----------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("--out-dir", default="demo_out", help="where the images go (default: %(default)s)")
    add_size_option(p, what="sizes (default: 256x256 512x288 1024x1024 1920x1080 with a checkpoint, "
                            "256x256 512x512 768x432 1024x1024 with a preset)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default: %(default)s)")
    add_model_options(p)


def run(args) -> int:
    from infgen.ref.checks import check_out_dir
    t = time.perf_counter()
    check_out_dir(args.out_dir, "--out-dir")  # before any work
    spec = model_spec(args)
    if spec in PRESETS:
        run_pattern_demo(args.out_dir, args.size or PATTERN_SIZES, model=spec, backend=args.backend,
                         device=args.device, dtype=args.dtype, fmt=args.format)
        return 0
    rows = run_demo(args.out_dir, args.size or PHOTO_SIZES, backend=args.backend, device=args.device,
                    dtype=args.dtype, checkpoint=spec, fmt=args.format)
    print(f"InfGen demo: checkpoint {spec}; photo {DEMO_PHOTO.name} (held out from training), "
          f"encoded once, decoded at each size in one pass")
    print_rows(rows, ROW_COLUMNS)
    print("baseline = decode at the latent's native size, then bicubic upscaling; reference = the photo "
          f"resized to each size. Images and contact sheet: {Path(args.out_dir) / 'contact_sheet.png'}")
    print(f"total {time.perf_counter() - t:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-demo", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
