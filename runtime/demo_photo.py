"""The photo demo on the shipped demo model: `python -m runtime.demo_photo --out DIR`.

A held-out photo (infgen_ref/assets/demo/coffee.jpg, never trained on) is resized to a small
input, encoded to one latent, and decoded by InfGen at several sizes in one pass each. Each
output is scored (PSNR, SSIM; scikit-image's metrics) against the photo resized to that size,
next to a baseline measured in the same run: decode at the latent's native size, then bicubic
upscaling. Also here: the held-out table at 2x and 4x (held_out_table) and the dtype/backend
fidelity check against the fp32 reference output (fidelity).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from infgen_ref.config import parse_size
from infgen_ref.weights import load_checkpoint
from runtime.demo import DEMO_CHECKPOINT as DEMO_DIR
from runtime.io import load_image

DEMO_PHOTO = DEMO_DIR / "coffee.jpg"
DEFAULT_SIZES = ((256, 256), (512, 288), (1024, 1024), (1920, 1080))  # (width, height)
INPUT_SIZE = (96, 144)  # (height, width) of the encoder input: a 12 x 18 latent
FIDELITY_BACKENDS = ("torch", "onnxruntime", "triton", "tensorrt")


# ----------------------------------------------------------------------------- helpers
def parse_sizes(sizes) -> list[tuple[int, int]]:
    """'256x256,512x288' | ['256x256', (512, 288)] -> [(width, height), ...]; ValueError naming a bad one."""
    if isinstance(sizes, str):
        sizes = [s for s in sizes.split(",") if s.strip()]
    out = []
    for s in sizes:
        if isinstance(s, str):
            h, w = parse_size(s)
        else:
            try:
                w, h = (int(v) for v in s)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"size must be WIDTHxHEIGHT like 512x288, got {s!r}") from exc
        out.append((w, h))
    if not out:
        raise ValueError("need at least one size")
    return out


def load_photo(path: str | Path = DEMO_PHOTO) -> torch.Tensor:
    """Image file -> (1, 3, H, W) float32 in [-1, 1]."""
    return load_image(path)


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bicubic resize (antialiased when shrinking) of (B, 3, H, W) in [-1, 1], clamped."""
    return F.interpolate(x.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def score(ref: torch.Tensor, img: torch.Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of img against ref, both (1, 3, H, W) in [-1, 1], on [0, 1] pixels."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    a = ((ref[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    b = ((img[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    return (float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            float(structural_similarity(a, b, channel_axis=2, data_range=1.0)))


def demo_checkpoint(checkpoint=None) -> Path:
    d = Path(checkpoint) if checkpoint is not None else DEMO_DIR
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no demo checkpoint at {d} (config.json + model.safetensors expected)")
    return d


def encode_photo(photo: torch.Tensor, checkpoint, input_size=INPUT_SIZE) -> torch.Tensor:
    """Photo (1, 3, H, W) -> resized to input_size -> scaled latent (1, C, h/8, w/8), fp32 reference encoder."""
    model = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return model.encode(resize(photo, *input_size)).float()


def _timed_decode(engine, z, h, w):
    t = time.perf_counter()
    img = engine.decode(z, h, w)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return img, time.perf_counter() - t


# ----------------------------------------------------------------------------- the demo
def contact_sheet(tiles: list[list[tuple[str, torch.Tensor]]], path: Path, box: int = 320) -> Path:
    """Rows of (label, (1, 3, H, W) image) tiles, each fitted into box x box, written as one PNG."""
    from PIL import Image, ImageDraw
    from runtime.engine import InfGenEngine
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


def run_demo(out_dir, sizes=DEFAULT_SIZES, backend="torch", device="cpu", dtype=None, checkpoint=None,
             photo=DEMO_PHOTO, input_size=INPUT_SIZE) -> list[dict]:
    """Encode the held-out photo, decode it at each (width, height), score it and write PNGs + a contact sheet.

    Returns one row per size: size, seconds (InfGen decode), psnr, ssim, baseline_psnr, baseline_ssim
    (native decode + bicubic), path. Also writes out_dir/demo_results.json."""
    from runtime.engine import InfGenEngine
    sizes = parse_sizes(sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = demo_checkpoint(checkpoint)
    pic = load_photo(photo)
    z = encode_photo(pic, ckpt, input_size)
    engine = InfGenEngine(ckpt, backend=backend, device=device, dtype=dtype)
    nh, nw = engine.config.upscale * z.shape[2], engine.config.upscale * z.shape[3]
    native, native_s = _timed_decode(engine, z, nh, nw)
    rows, tiles = [], [[(f"input {input_size[1]}x{input_size[0]} (latent {z.shape[3]}x{z.shape[2]})",
                         resize(pic, *input_size)), (f"native decode {nw}x{nh}", native.cpu())]]
    for w, h in sizes:
        img, secs = _timed_decode(engine, z, h, w)
        img = img.float().cpu()
        if not bool(torch.isfinite(img).all()):
            raise FloatingPointError(f"decode at {w}x{h} ({engine.backend_name}, {engine.dtype}) is not finite")
        ref, base = resize(pic, h, w), resize(native.cpu(), h, w)
        p, s = score(ref, img)
        bp, bs = score(ref, base)
        path = InfGenEngine.save(img, out / f"infgen_{w}x{h}.png")[0]
        InfGenEngine.save(base, out / f"bicubic_{w}x{h}.png")
        rows.append(dict(size=f"{w}x{h}", seconds=round(secs, 3), psnr=round(p, 2), ssim=round(s, 4),
                         baseline_psnr=round(bp, 2), baseline_ssim=round(bs, 4), path=str(path)))
        tiles.append([(f"photo resized {w}x{h}", ref), (f"InfGen {w}x{h}: {p:.2f} dB / {s:.3f}", img),
                      (f"native+bicubic: {bp:.2f} dB / {bs:.3f}", base)])
    contact_sheet(tiles, out / "contact_sheet.png")
    info = dict(backend=engine.backend_name, device=str(engine.device), dtype=str(engine.dtype).split(".")[-1],
                checkpoint=str(ckpt), photo=str(photo), native=f"{nw}x{nh}", native_seconds=round(native_s, 3))
    (out / "demo_results.json").write_text(json.dumps(dict(info, rows=rows), indent=2))
    return rows


# ----------------------------------------------------------------------------- held-out table
def held_out_table(checkpoint=None, scales=(2, 4), device="cpu", photos: dict | None = None) -> list[dict]:
    """InfGen at each scale vs native decode + bicubic (and bicubic from the input pixels), per held-out photo.

    Each photo is center-cropped to a multiple of 8 * max(scales); the input is that crop shrunk by
    max(scales); the reference at scale s is the crop resized to s x the input size."""
    from runtime.engine import InfGenEngine
    from infgen_ref.data import held_out_photos
    ckpt = demo_checkpoint(checkpoint)
    engine = InfGenEngine(ckpt, backend="torch", device=device, dtype="fp32")
    photos = photos if photos is not None else {k: v[None] * 2 - 1 for k, v in held_out_photos().items()}
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


# ----------------------------------------------------------------------------- fidelity
def fidelity(sizes=((256, 256), (512, 288), (1024, 1024)), backends=FIDELITY_BACKENDS,
             dtypes=("fp32", "bf16", "fp16"), device="cpu", checkpoint=None, photo=DEMO_PHOTO) -> list[dict]:
    """The demo latent through every available backend and dtype; PSNR against the torch fp32 output.

    One row per (backend, dtype, size): psnr (inf when identical), max_abs (in [-1, 1] units),
    finite; or one row with skipped=<reason> for a backend/dtype that cannot be built here."""
    from runtime.engine import InfGenEngine
    sizes = parse_sizes(sizes)
    ckpt = demo_checkpoint(checkpoint)
    z = encode_photo(load_photo(photo), ckpt)
    ref_engine = InfGenEngine(ckpt, backend="torch", device=device, dtype="fp32")
    refs = {(w, h): ref_engine.decode(z, h, w).float().cpu() for w, h in sizes}
    rows = []
    for b in backends:
        for dt in dtypes:
            try:
                engine = InfGenEngine(ckpt, backend=b, device=device, dtype=dt)
            except (ImportError, ValueError, RuntimeError, NotImplementedError) as exc:
                rows.append(dict(backend=b, dtype=dt, skipped=f"{type(exc).__name__}: {exc}"[:200]))
                continue
            for w, h in sizes:
                try:
                    img, secs = _timed_decode(engine, z, h, w)
                except (RuntimeError, NotImplementedError) as exc:
                    rows.append(dict(backend=b, dtype=dt, size=f"{w}x{h}", skipped=f"{type(exc).__name__}: {exc}"[:200]))
                    continue
                img = img.float().cpu()
                finite = bool(torch.isfinite(img).all())
                ref = refs[(w, h)]
                mse = float(((img - ref) / 2).pow(2).mean()) if finite else float("nan")
                psnr = float("inf") if mse == 0 else (-10 * math.log10(mse) if finite else float("nan"))
                rows.append(dict(backend=b, dtype=dt, size=f"{w}x{h}", psnr=round(psnr, 2), finite=finite,
                                 max_abs=round(float((img - ref).abs().max()), 5), seconds=round(secs, 3)))
    return rows


# ----------------------------------------------------------------------------- CLI
def _print_rows(rows, cols):
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):>14}" for c in cols))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m runtime.demo_photo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="demo_out", help="directory for the PNGs and the contact sheet")
    p.add_argument("--sizes", default=",".join(f"{w}x{h}" for w, h in DEFAULT_SIZES), help="WxH,WxH,...")
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--held-out", action="store_true", help="also print the held-out table (2x, 4x)")
    p.add_argument("--fidelity", action="store_true", help="also run every backend and dtype against fp32")
    a = p.parse_args(argv)
    t = time.perf_counter()
    rows = run_demo(a.out, a.sizes, a.backend, a.device, a.dtype, a.checkpoint)
    print(f"InfGen demo: {DEMO_PHOTO.name} (held out from training) -> {a.out}/contact_sheet.png")
    _print_rows(rows, ["size", "seconds", "psnr", "ssim", "baseline_psnr", "baseline_ssim"])
    print("baseline = decode at the latent's native size, then bicubic upscaling; "
          "reference = the photo resized to each size")
    if a.held_out:
        print("\nheld-out photos, InfGen vs native decode + bicubic (and bicubic from the input pixels):")
        _print_rows(held_out_table(a.checkpoint, device=a.device),
                    ["photo", "scale", "size", "psnr", "ssim", "baseline_psnr", "baseline_ssim",
                     "input_bicubic_psnr", "input_bicubic_ssim"])
    if a.fidelity:
        print("\nfidelity against the torch fp32 output:")
        _print_rows(fidelity(a.sizes, device=a.device, checkpoint=a.checkpoint),
                    ["backend", "dtype", "size", "psnr", "max_abs", "finite", "skipped"])
    print(f"total {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
