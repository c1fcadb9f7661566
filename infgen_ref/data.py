"""Photos that exist offline, and the train / held-out split: photos shipped inside PyPI wheels.

Photos come from scikit-image's bundled sample files (skimage/data/*.png, *.jpg: the ones in the
wheel, not those its fetcher downloads) and matplotlib's sample_data/grace_hopper.jpg. Two photos
are held out for evaluation and never trained on: HELD_OUT (the demo's held-out table reads
them). Images are float32 tensors (3, H, W) in [0, 1]. The training set built from these photos
and procedural pictures is train/data.py's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
