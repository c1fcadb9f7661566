"""The training set: the offline photos of train/photos.py (held-out ones excluded) plus
procedurally generated pictures. Images are float32 tensors (3, H, W) in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from infgen.train.photos import load_rgb, photo_paths


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
