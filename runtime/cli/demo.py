"""`python -m infgen.runtime demo`: InfGen's task on a bundled photo, with no input files.

    python -m infgen.runtime demo --out-dir demo_out                    # the bundled demo checkpoint
    python -m infgen.runtime demo --preset tiny --size 64x48            # random weights: the test-pattern demo

With a trained checkpoint (the bundled demo model, infgen_ref/assets/demo/, or --checkpoint):
InfGen's task. A held-out high-resolution photo (assets/demo/evening_glow.jpg: KDE's EveningGlow
wallpaper, 2048x1152, never trained on) is shrunk to a 512x288 input, encoded to one 64x36 latent
and decoded by InfGen directly at 1024x576 (2x), 1920x1080 (3.75x) and 2048x1152 (4x), each in one
pass. Each output is scored (PSNR, SSIM; scikit-image's metrics on the uint8 images) against the
real photo at that size (Pillow's antialiased Lanczos, downsampled from real pixels), beside two
baselines measured in the same run: decode at the latent's native size, then bicubic or Lanczos
upscaling; and the latent grid's mark on each (mosaic_ratio). With --preset (random weights, and
the demo says so): a procedural test pattern is encoded and decoded, which shows only that every
size decodes. Sizes are (height, width) inside, WIDTHxHEIGHT on the command line. The image
helpers here (centre_crop, resized, scores, mosaic_ratio) are those of scripts/evaluate_task.py
(the same protocol on 11 held-out photos); the older tables (coffee and chelsea at 2x/4x; every
backend and dtype against the torch fp32 output) are scripts/evaluate_demo.py.
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
from infgen.ref.model import check_size
from infgen.runtime.cli.options import (DEMO_CHECKPOINT, RANDOM_NOTICE, add_model_options, add_size_option, default_model,
                                 model_spec, tool_main)

HELP = "no input files: InfGen's task on a bundled photo (one 64x36 latent decoded at 2x-4x), times and PSNR/SSIM"
DEMO_PHOTO = DEMO_CHECKPOINT / "evening_glow.jpg"  # 2048x1152, held out from training (DATA.md)
COFFEE_PHOTO = DEMO_CHECKPOINT / "coffee.jpg"      # 576x384: the README's encode example, evaluate_demo's fidelity
PHOTO_SIZES = ((576, 1024), (1080, 1920), (1152, 2048))  # (h, w): 2x, 3.75x, 4x the input
PATTERN_SIZES = ((256, 256), (512, 512), (432, 768), (1024, 1024))  # (h, w)
INPUT_SIZE = (288, 512)  # (h, w) of the encoder input: 512 px on the long side, a 36 x 64 latent
ROW_COLUMNS = ("size", "seconds", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "lanczos_psnr", "lanczos_ssim",
               "mosaic", "bicubic_mosaic")


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


def centre_crop(img, aspect: float = 16 / 9):
    """The largest centred crop of a PIL image with width / height = aspect."""
    w, h = img.size
    cw, ch = (w, round(w / aspect)) if w / h <= aspect else (round(h * aspect), h)
    cw, ch = min(cw, w), min(ch, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def resized(img, hw: tuple[int, int], how=None) -> np.ndarray:
    """A PIL image resized to (h, w) -> uint8 (h, w, 3); Lanczos unless how names another Pillow
    filter. Pillow's filters widen with the scale when downsampling (antialiased)."""
    from PIL import Image
    return np.asarray(img.convert("RGB").resize((hw[1], hw[0]), how or Image.Resampling.LANCZOS))


def scores(ref: np.ndarray, img: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two uint8 (h, w, 3) images (scikit-image's metrics)."""
    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as exc:
        raise ImportError("the photo demo scores with scikit-image: pip install scikit-image") from exc
    if ref.shape != img.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, image {img.shape}")
    return (float(peak_signal_noise_ratio(ref, img, data_range=255)),
            float(structural_similarity(ref, img, channel_axis=2, data_range=255)))


def mosaic_ratio(img: np.ndarray, cells: tuple[int, int]) -> float:
    """How much a (h, w, 3) image steps at the edges of the latent's cells (cells: the latent grid,
    (rows, columns)): the mean squared luminance difference between neighbouring pixels across the
    cell edges (columns round(k w / cells_w), rows likewise), divided by the mean over all
    neighbouring pixels. About 1 for an image whose content ignores the latent grid; a mosaic of
    cells concentrates its steps on the edges (a nearest-upscaled grid scores tens). The comb of
    cell edges is the latent-cell frequency and its harmonics, measured where they live (for cells
    of random content a Fourier peak at exactly that frequency is cancelled by the cells' sinc)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be (h, w, 3), got {img.shape}")
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    edges = total = 0.0
    for axis, n_cells in ((1, cells[1]), (0, cells[0])):
        d2 = np.diff(luma, axis=axis) ** 2                    # d2[..., x - 1]: between pixels x - 1 and x
        n = luma.shape[axis]
        cut = [round(k * n / n_cells) - 1 for k in range(1, n_cells)]
        edges += np.take(d2, cut, axis=axis).mean()
        total += d2.mean()
    if total == 0:
        raise ValueError("the image is flat: no steps to compare")
    return edges / total


def to_unit_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 (h, w, 3) -> (1, 3, h, w) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 127.5 - 1


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


def contact_sheet(tiles: list[list[tuple[str, np.ndarray]]], path: Path, box: int = 320) -> Path:
    """Rows of (label, uint8 (h, w, 3) image) tiles, each fitted into box x box, written as one PNG."""
    from PIL import Image, ImageDraw
    pad, text_h = 8, 16
    thumbs = []
    for row in tiles:
        thumbs.append([])
        for label, img in row:
            im = Image.fromarray(np.asarray(img, dtype=np.uint8))
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


def detail(img: np.ndarray, box: int = 320, at=(0.62, 0.30)) -> np.ndarray:
    """A box x box crop of a uint8 (h, w, 3) image at 1:1 pixels, its centre at the fractions at
    (y, x) of the image: the same place in the scene at every size, so the sheet shows detail."""
    h, w = img.shape[:2]
    bh, bw = min(box, h), min(box, w)
    top = min(max(round(at[0] * h) - bh // 2, 0), h - bh)
    left = min(max(round(at[1] * w) - bw // 2, 0), w - bw)
    return img[top:top + bh, left:left + bw]


def print_rows(rows: list[dict], cols, echo=print) -> None:
    echo("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        echo("  ".join(f"{str(r.get(c, '')):>14}" for c in cols))


# ----------------------------------------------------------------------------- the photo demo
def run_demo(out_dir, sizes=PHOTO_SIZES, backend="torch", device="cpu", dtype=None, checkpoint=None,
             photo=DEMO_PHOTO, input_size=INPUT_SIZE, fmt: str = "png") -> list[dict]:
    """InfGen's task on photo: shrink it to input_size (h, w), encode one latent, decode it directly
    at each (h, w) in sizes; score each decode and the two baselines against the photo at that
    size; write the images, a contact sheet and out_dir/demo_results.json.

    Returns one row per size: size ('WxH'), seconds (InfGen decode), psnr, ssim (InfGen),
    bicubic_psnr, bicubic_ssim, lanczos_psnr, lanczos_ssim (native decode + bicubic / Lanczos),
    mosaic, bicubic_mosaic (mosaic_ratio of InfGen's decode and of native + bicubic), path."""
    from PIL import Image

    from infgen.runtime.engine import InfGenEngine
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    sizes = check_sizes(sizes)
    input_size = check_sizes([input_size])[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = demo_checkpoint(checkpoint)
    engine = InfGenEngine(ckpt, backend=backend, device=device, dtype=dtype)
    for h, w in [input_size, *sizes]:  # every size is checked before any work (ValueError naming it)
        check_size(h, w, engine.config)
    if input_size[0] % engine.config.upscale or input_size[1] % engine.config.upscale:
        raise ValueError(f"input_size must be multiples of {engine.config.upscale} (the encoder's), got {input_size}")
    try:
        pic = Image.open(photo).convert("RGB")
    except OSError as exc:
        raise ValueError(f"photo {str(photo)!r} is not a readable image: {exc}") from exc
    x = resized(pic, input_size)                                  # the input: uint8 (h, w, 3)
    with torch.inference_mode():
        z = engine.encode(to_unit_tensor(x).to(engine.device))    # (1, C, h/8, w/8)
    cells = (z.shape[2], z.shape[3])

    def to_uint8(img: torch.Tensor) -> np.ndarray:
        img = img.float().cpu()
        if not bool(torch.isfinite(img).all()):
            raise FloatingPointError(f"decode ({engine.backend_name}, {engine.dtype}) is not finite")
        return engine.to_uint8(img)[0]

    native_t, native_s = timed_decode(engine, z, *input_size)
    native = to_uint8(native_t)
    native_pil = Image.fromarray(native)
    np_, ns = scores(x, native)
    rows, details = [], []
    for h, w in sizes:
        img_t, secs = timed_decode(engine, z, h, w)
        img, ref = to_uint8(img_t), resized(pic, (h, w))
        bic = resized(native_pil, (h, w), Image.Resampling.BICUBIC)
        lan = resized(native_pil, (h, w), Image.Resampling.LANCZOS)
        (p, q), (bp, bq), (lp, lq) = scores(ref, img), scores(ref, bic), scores(ref, lan)
        path = out / f"infgen_{w}x{h}.{fmt}"
        Image.fromarray(img).save(path)
        Image.fromarray(bic).save(out / f"bicubic_{w}x{h}.{fmt}")
        rows.append(dict(size=f"{w}x{h}", seconds=round(secs, 3), psnr=round(p, 2), ssim=round(q, 4),
                         bicubic_psnr=round(bp, 2), bicubic_ssim=round(bq, 4),
                         lanczos_psnr=round(lp, 2), lanczos_ssim=round(lq, 4),
                         mosaic=round(mosaic_ratio(img, cells), 2), bicubic_mosaic=round(mosaic_ratio(bic, cells), 2),
                         path=str(path)))
        details.append([(f"photo {w}x{h} (detail, 1:1)", detail(ref)),
                        (f"InfGen {w}x{h}: {p:.2f} dB / {q:.3f}", detail(img)),
                        (f"native+bicubic: {bp:.2f} dB / {bq:.3f}", detail(bic)),
                        (f"native+Lanczos: {lp:.2f} dB / {lq:.3f}", detail(lan))])
    ih, iw = input_size
    head = [(f"input {iw}x{ih} -> latent {cells[1]}x{cells[0]}", x),
            (f"native decode {iw}x{ih}: {np_:.2f} dB / {ns:.3f}", native)]
    h, w = sizes[-1]  # the largest decode, whole (img and ref are the last size's)
    head += [(f"InfGen {w}x{h}, whole", img), (f"photo {w}x{h}, whole", ref)]
    contact_sheet([head, *details], out / "contact_sheet.png")
    info = dict(backend=engine.backend_name, device=str(engine.device), dtype=str(engine.dtype).split(".")[-1],
                checkpoint=str(ckpt), photo=str(photo), input=f"{iw}x{ih}", latent=f"{cells[1]}x{cells[0]}",
                native_psnr=round(np_, 2), native_ssim=round(ns, 4), native_seconds=round(native_s, 3))
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
    add_size_option(p, what="sizes (default: 1024x576 1920x1080 2048x1152 with a checkpoint, "
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
    h, w = INPUT_SIZE
    print(f"InfGen demo: checkpoint {spec}; photo {DEMO_PHOTO.name} (held out from training) shrunk to {w}x{h}, "
          f"encoded once to a {w // 8}x{h // 8} latent, decoded directly at each size in one pass")
    print_rows(rows, ROW_COLUMNS)
    print("psnr/ssim: InfGen against the real photo at that size; bicubic_/lanczos_: decode at the latent's "
          "native size, then bicubic / Lanczos upscaling; mosaic: the steps at the latent cells' edges over all "
          f"steps (about 1: no grid). Images and contact sheet: {Path(args.out_dir) / 'contact_sheet.png'}")
    print(f"total {time.perf_counter() - t:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return tool_main("infgen-demo", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
