"""InfGen's task on held-out high-resolution photographs (issue #35): one small latent, decoded
directly at 2x, 3.75x and 4x, against the real high-resolution photo.

    python scripts/fetch_photos.py --out-dir data/heldout --max-side 8192 --packages plasma-workspace-wallpapers
    python scripts/evaluate_task.py --photo-dir data/heldout [--checkpoint DIR] [--out-dir task_out]

The held-out set (HELD_OUT_HR) is the photographs among KDE's plasma-workspace-wallpapers
(2560x1600 originals, GPL-2+ as the package's copyright file says; data/heldout/DATA.md lists
them). No training command reads that package: the training photos come from
scripts/fetch_photos.py's default packages and the scikit-image/matplotlib files.

Protocol, per photo: the original's centre 16:9 crop (2560x1440) is the truth; resized with an
antialiased Lanczos filter it gives the 512x288 input (a 64x36 latent: 512 px on the long side,
InfGen's "512-px image, 64-wide latent") and the references at 1024x576 (2x), 1920x1080 (3.75x)
and 2048x1152 (4x), all downsampled from real pixels. Rows: the native decode (512x288) against
the input; at each size InfGen's direct decode, and the native decode upscaled by bicubic and by
Lanczos (PIL), and a baseline with no network (rgb-cells+bicubic: the input shrunk to the latent's
grid, 3 numbers a cell against the latent's 4, then bicubic), each scored against the reference
(PSNR, SSIM; LPIPS needs weights that cannot be downloaded here, so it is left out). `mosaic`
(the latent-cell artefact): at 2048x1152 the energy of the image's steps at the latent cells'
edges (every 32 px: the cell frequency and its harmonics) relative to all its steps, for InfGen
and for native + bicubic (mosaic_ratio). Writes task.json, task.md (the tables) and task_sheet.png
(crops of each photo at 4x).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# the image helpers are the demo's: python -m infgen.runtime demo runs this protocol on one bundled photo
from infgen.runtime.cli.demo import INPUT_SIZE, PHOTO_SIZES, centre_crop, mosaic_ratio, resized, scores, to_unit_tensor

HELD_OUT_HR = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
               "Kite", "OneStandsOut", "Path", "summer_1am")
PACKAGE = "plasma-workspace-wallpapers"
INPUT = INPUT_SIZE                                        # (h, w) = (288, 512): 16:9, 512 px on the long side
SIZES = dict(zip(("2x", "3.75x", "4x"), PHOTO_SIZES))    # (576, 1024), (1080, 1920), (1152, 2048)
MOSAIC_SIZE = "4x"
# A yardstick with no network: the input shrunk (Lanczos) to the latent's grid, 3 numbers a cell where
# the latent has 4, then bicubic up. An autoencoder (encoder and decoder) that scores below it at native
# size loses more than a plain downscale to its latent's grid does.
CELLS_BASELINE = "rgb-cells+bicubic"


# ----------------------------------------------------------------------------- the run
def photo_paths(photo_dir: Path, names=HELD_OUT_HR) -> dict[str, Path]:
    """name -> PNG written by scripts/fetch_photos.py (<photo_dir>/<package>/<name>.png)."""
    paths = {n: photo_dir / PACKAGE / f"{n}.png" for n in names}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"held-out photos not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                                f"fetch them: python scripts/fetch_photos.py --out-dir {photo_dir} --max-side 8192 "
                                f"--packages {PACKAGE}")
    return paths


def evaluate(engine, encode, photos: dict[str, Path], sizes=SIZES, input_hw=INPUT) -> tuple[list[dict], dict]:
    """Rows of the tables and, per photo, the tiles at MOSAIC_SIZE for the sheet. engine: an
    InfGenEngine (its decode); encode: image (1, 3, H, W) in [-1, 1] -> scaled latent."""
    import torch

    def to_uint8(t: torch.Tensor) -> np.ndarray:
        return engine.to_uint8(t)[0]

    rows, tiles = [], {}
    for name, path in photos.items():
        truth = centre_crop(Image.open(path))
        x = resized(truth, input_hw)
        z = encode(to_unit_tensor(x))
        native = to_uint8(engine.decode(z, *input_hw))
        cells = Image.fromarray(resized(Image.fromarray(x), (z.shape[2], z.shape[3])))  # no network: CELLS_BASELINE
        for method, img in (("native", native), (CELLS_BASELINE, resized(cells, input_hw, Image.Resampling.BICUBIC))):
            p, s = scores(x, img)
            rows.append(dict(photo=name, size=f"{input_hw[1]}x{input_hw[0]}", scale="1x", method=method, psnr=p, ssim=s))
        for label, hw in sizes.items():
            ref = resized(truth, hw)
            outs = {"infgen": to_uint8(engine.decode(z, *hw)),
                    "native+bicubic": resized(Image.fromarray(native), hw, Image.Resampling.BICUBIC),
                    "native+lanczos": resized(Image.fromarray(native), hw, Image.Resampling.LANCZOS),
                    CELLS_BASELINE: resized(cells, hw, Image.Resampling.BICUBIC)}
            for method, img in outs.items():
                p, s = scores(ref, img)
                row = dict(photo=name, size=f"{hw[1]}x{hw[0]}", scale=label, method=method, psnr=p, ssim=s)
                if label == MOSAIC_SIZE and method in ("infgen", "native+bicubic"):
                    row["mosaic_ratio"] = mosaic_ratio(img, (z.shape[2], z.shape[3]))
                rows.append(row)
            if label == MOSAIC_SIZE:
                tiles[name] = {"reference": ref, **outs}
    return rows, tiles


def summary(rows: list[dict]) -> list[dict]:
    """Mean PSNR / SSIM per (scale, method) over the photos, and the worst native PSNR."""
    out = []
    for scale, method in dict.fromkeys((r["scale"], r["method"]) for r in rows):
        sel = [r for r in rows if r["scale"] == scale and r["method"] == method]
        row = dict(scale=scale, method=method, photos=len(sel), psnr=float(np.mean([r["psnr"] for r in sel])),
                   ssim=float(np.mean([r["ssim"] for r in sel])), min_psnr=float(min(r["psnr"] for r in sel)))
        if all("mosaic_ratio" in r for r in sel):
            row["mosaic_ratio"] = float(np.mean([r["mosaic_ratio"] for r in sel]))
        out.append(row)
    return out


def markdown(rows: list[dict], summ: list[dict]) -> str:
    lines = ["| scale | method | photos | mean PSNR dB | mean SSIM | lowest PSNR dB | mosaic ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in summ:
        mos = f"{r['mosaic_ratio']:.2f}" if "mosaic_ratio" in r else ""
        lines.append(f"| {r['scale']} | {r['method']} | {r['photos']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['min_psnr']:.2f} | {mos} |")
    lines += ["", "| photo | size | method | PSNR dB | SSIM | mosaic ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        mos = f"{r['mosaic_ratio']:.2f}" if "mosaic_ratio" in r else ""
        lines.append(f"| {r['photo']} | {r['size']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {mos} |")
    return "\n".join(lines) + "\n"


def sheet(tiles: dict, path: Path, box: int = 256) -> Path:
    """One row per photo: the centre box x box crop of the reference and of each method at 4x."""
    from PIL import ImageDraw
    cols = ["reference", "infgen", "native+bicubic", "native+lanczos"]
    img = Image.new("RGB", (len(cols) * (box + 4), len(tiles) * (box + 18) + 4), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, t) in enumerate(tiles.items()):
        for j, c in enumerate(cols):
            a = t[c]
            top, left = (a.shape[0] - box) // 2, (a.shape[1] - box) // 2
            img.paste(Image.fromarray(np.ascontiguousarray(a[top:top + box, left:left + box])),
                      (j * (box + 4), i * (box + 18) + 16))
            draw.text((j * (box + 4) + 2, i * (box + 18) + 2), f"{name} {c}", fill="black")
    img.save(path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/evaluate_task.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--photo-dir", type=Path, default=Path("data/heldout"), help="scripts/fetch_photos.py's --out-dir")
    p.add_argument("--checkpoint", help="model directory (default: the bundled demo model)")
    p.add_argument("--out-dir", type=Path, default=Path("task_out"))
    p.add_argument("--photos", nargs="+", default=list(HELD_OUT_HR), choices=HELD_OUT_HR, metavar="NAME")
    a = p.parse_args(argv)
    try:
        photos = photo_paths(a.photo_dir, a.photos)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    from infgen.runtime.cli.demo import demo_checkpoint
    from infgen.runtime.engine import InfGenEngine
    engine = InfGenEngine(demo_checkpoint(a.checkpoint), backend="torch", dtype="fp32")

    def encode(x):
        with torch.inference_mode():
            return engine.encode(x)
    rows, tiles = evaluate(engine, encode, photos)
    summ = summary(rows)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / "task.json").write_text(json.dumps({"summary": summ, "rows": rows}, indent=1))
    (a.out_dir / "task.md").write_text(markdown(rows, summ))
    sheet(tiles, a.out_dir / "task_sheet.png")
    print(markdown(rows, summ).split("\n\n")[0])
    print(f"wrote {a.out_dir / 'task.json'}, task.md, task_sheet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
