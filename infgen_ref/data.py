"""Training and evaluation images that exist offline: photos shipped inside PyPI wheels, plus
procedurally generated pictures.

Photos come from scikit-image's bundled sample files (skimage/data/*.png, *.jpg: the ones in the
wheel, not those its fetcher downloads) and matplotlib's sample_data/grace_hopper.jpg. Two photos
are held out for evaluation and never trained on: HELD_OUT. Images are float32 tensors
(3, H, W) in [0, 1].
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

# file name in skimage/data -> used for training. Grayscale photos are repeated over RGB.
TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
                "motorcycle_left.png", "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png",
                "coins.png", "cell.png", "clock_motion.png", "color.png", "page.png", "text.png")
HELD_OUT = ("coffee.png", "chelsea.png")  # evaluation only, never trained on


def _skimage_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:
        raise ImportError("training photos come from scikit-image's bundled files: pip install scikit-image") from exc
    return Path(skimage.__file__).parent / "data"


def load_rgb(path: str | Path) -> torch.Tensor:
    """Any image file -> (3, H, W) float32 in [0, 1]."""
    img = Image.open(path).convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def photo_paths(names=TRAIN_PHOTOS, extra_matplotlib: bool = True) -> list[Path]:
    """Paths of the named skimage photos that exist here (a missing one is skipped), + grace_hopper.jpg."""
    d = _skimage_dir()
    paths = [d / n for n in names if (d / n).is_file()]
    if extra_matplotlib:
        try:
            import matplotlib
            p = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
            if p.is_file():
                paths.append(p)
        except ImportError:
            pass
    return paths


def held_out_photos() -> dict[str, torch.Tensor]:
    d = _skimage_dir()
    return {n.split(".")[0]: load_rgb(d / n) for n in HELD_OUT}


def generated_image(seed: int, size: int = 512) -> torch.Tensor:
    """One procedural picture: gradient background, random shapes, stripes and smooth noise. (3, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a = rng.uniform(0, 2 * math.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    bg = (c0[:, None, None] * (1 - t) + c1[:, None, None] * t)  # (3, S, S)
    img = Image.fromarray((np.clip(bg.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 14)):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.03, 0.5, 2) * size
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 2:
            pts = [tuple(p) for p in rng.uniform(0, 1, (rng.integers(3, 7), 2)) * size]
            draw.polygon(pts, fill=col)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(rng.integers(1, 8)))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    if rng.uniform() < 0.6:  # stripes of random frequency and orientation, blended in
        b = rng.uniform(0, 2 * math.pi)
        f = rng.uniform(4, 60)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * f * (np.cos(b) * xx + np.sin(b) * yy))
        x = x * (1 - 0.3 * s) + 0.3 * s * rng.uniform(0, 1, 3)[:, None, None]
    if rng.uniform() < 0.6:  # smooth colour noise at a random scale
        k = int(rng.integers(4, 64))
        n = torch.from_numpy(rng.normal(0, 1, (1, 3, k, k)).astype(np.float32))
        n = torch.nn.functional.interpolate(n, size=(size, size), mode="bicubic", align_corners=False)[0]
        x = x + 0.08 * n.numpy()
    return torch.from_numpy(np.clip(x, 0, 1).astype(np.float32))


def training_images(num_generated: int = 48, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(photos, generated): the training set, each a list of (3, H, W) in [0, 1]."""
    photos = [load_rgb(p) for p in photo_paths()]
    generated = [generated_image(seed * 100_003 + i) for i in range(num_generated)]
    return photos, generated
