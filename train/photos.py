"""The training photos: those that exist offline, with the train / held-out split, and image folders
(e.g. the wallpapers `scripts/fetch_photos.py` unpacks) as a multi-scale pyramid.

Offline photos come from scikit-image's bundled sample files (skimage/data/*.png, *.jpg: the ones
in the wheel, not those its fetcher downloads) and matplotlib's sample_data/grace_hopper.jpg, as
float32 tensors (3, H, W) in [0, 1]. Two photos are held out for evaluation and never trained on:
HELD_OUT (scripts/evaluate_demo.py's held-out table reads them; folder photos of those names are
skipped too). The training set built from these photos and procedural pictures is train/data.py's.

Each folder image is read once and kept as uint8 (3, H, W) at full size and at each extra factor in
`pyramid` (downscaled, antialiased): a crop of the same pixel size then covers 1x, 2x or 4x more of
the scene, so one wallpaper gives smooth large-scale crops and detail-dense whole-scene crops alike
(the held-out evaluation shrinks whole photos 4x). uint8 keeps 54 wallpapers at 1536 px in ~330 MB;
the trainer's sampler converts each crop to float.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# ----------------------------------------------------------------------------- offline photos
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
    """The held-out photos by name (coffee, chelsea) -> (3, H, W) float32 in [0, 1]."""
    d = _skimage_dir()
    return {n.split(".")[0]: load_rgb(d / n) for n in HELD_OUT}


# ----------------------------------------------------------------------------- image folders
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folders) -> list[Path]:
    """Every image file under the folders (recursive), sorted; a missing folder raises."""
    files = []
    for folder in folders:
        d = Path(folder)
        if not d.is_dir():
            raise FileNotFoundError(f"photo folder {str(folder)!r} does not exist "
                                    f"(scripts/fetch_photos.py --out-dir {folder} creates one)")
        files += sorted(p for p in d.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    return files


def load_pyramid(path: Path, pyramid=(1, 2, 4), min_side: int = 128) -> list[torch.Tensor]:
    """One image -> [(3, H/f, W/f) uint8 for f in pyramid], levels whose short side would fall
    below min_side left out."""
    if not pyramid or any(f < 1 for f in pyramid):
        raise ValueError(f"pyramid factors must be >= 1, got {pyramid}")
    img = Image.open(path).convert("RGB")
    w, h = img.size
    levels = []
    for f in pyramid:
        size = (round(w / f), round(h / f))
        if min(size) < min_side:
            continue
        im = img if f == 1 else img.resize(size, Image.Resampling.LANCZOS)
        levels.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous())
    return levels


def folder_photos(folders, pyramid=(1, 2, 4), exclude=()) -> list[torch.Tensor]:
    """All pyramid levels of every image in the folders, skipping files whose stem is in exclude
    (held-out photos). Returns a list of (3, H, W) uint8 tensors."""
    out = []
    for p in image_files(folders):
        if p.stem in exclude:
            continue
        out += load_pyramid(p, pyramid)
    if not out:
        raise ValueError(f"no images found in {list(folders)}")
    return out
