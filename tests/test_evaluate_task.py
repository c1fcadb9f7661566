"""scripts/evaluate_task.py (issue #35's evaluation): the crop, the scores, the mosaic measure,
and one photo through the whole protocol with a small model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from repo_scripts import load_script

task = load_script("scripts/evaluate_task.py")


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (low-frequency content only), uint8 (h, w, 3)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 10, generator=g)
    return (torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
            .clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_centre_crop_is_16_by_9_and_centred():
    img = Image.new("RGB", (2560, 1600))
    c = task.centre_crop(img)
    assert c.size == (2560, 1440)
    assert task.centre_crop(Image.new("RGB", (1000, 300))).size == (533, 300)


def test_mosaic_ratio_finds_the_latent_cells():
    """A picture made of 64 x 36 flat cells (a nearest upscale, the mosaic) scores far above the
    same cells upscaled smoothly, which scores about 1."""
    cells = (36, 64)
    g = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, *cells, generator=g)
    nearest = torch.nn.functional.interpolate(small, size=(1152, 2048), mode="nearest")
    smooth = torch.nn.functional.interpolate(small, size=(1152, 2048), mode="bicubic", align_corners=False).clamp(0, 1)
    as_u8 = lambda t: (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    blocky, soft = task.mosaic_ratio(as_u8(nearest), cells), task.mosaic_ratio(as_u8(smooth), cells)
    assert blocky > 3 * soft and soft < 2.0, (blocky, soft)
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        task.mosaic_ratio(np.zeros((8, 8)), cells)


def test_scores_refuse_different_shapes():
    a = smooth_image(64, 64)
    with np.errstate(divide="ignore"):  # identical images: skimage divides by a zero error
        p, s = task.scores(a, a)
    assert p == float("inf") and s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        task.scores(a, a[:32])


def test_missing_photos_name_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="--packages plasma-workspace-wallpapers"):
        task.photo_paths(tmp_path, ("Path",))
    assert task.main(["--photo-dir", str(tmp_path)]) == 2


def test_one_photo_through_the_protocol(tmp_path, tiny_model):
    """A 2560x1600 photo through crop, input, decodes and baselines, with the tiny preset at 2x:
    every method has a row at every size, the references are real pixels of the crop, and the
    mosaic ratio is recorded for InfGen and bicubic at the sheet's size."""
    from infgen.runtime.engine import InfGenEngine
    path = tmp_path / task.PACKAGE / "Fake.png"
    path.parent.mkdir()
    Image.fromarray(smooth_image(1600, 2560, seed=3)).save(path)
    engine = InfGenEngine(tiny_model, backend="torch")
    sizes = {"2x": (144, 256)}
    old = task.MOSAIC_SIZE
    try:
        task.MOSAIC_SIZE = "2x"
        rows, tiles = task.evaluate(engine, engine.encode, {"Fake": path}, sizes=sizes, input_hw=(72, 128))
    finally:
        task.MOSAIC_SIZE = old
    assert [(r["scale"], r["method"]) for r in rows] == [
        ("1x", "native"), ("1x", "rgb-cells+bicubic"), ("2x", "infgen"), ("2x", "native+bicubic"),
        ("2x", "native+lanczos"), ("2x", "rgb-cells+bicubic")]
    assert all(np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in rows)
    assert [r["photo"] for r in rows] == ["Fake"] * 6
    assert "mosaic_ratio" in rows[2] and "mosaic_ratio" in rows[3] and "mosaic_ratio" not in rows[4]
    # the smooth photo survives the 9x16 grid (its content is 6x10): the no-network baseline scores high
    assert rows[1]["psnr"] > 30 and rows[5]["psnr"] > 30, rows
    assert tiles["Fake"]["reference"].shape == (144, 256, 3)
    summ = task.summary(rows)
    assert [(r["scale"], r["method"]) for r in summ] == [(r["scale"], r["method"]) for r in rows]
    assert "| 2x | infgen | 1 |" in task.markdown(rows, summ)
    assert task.sheet(tiles, tmp_path / "s.png", box=64).is_file()


def test_learning_curve_scores_snapshots_on_the_task(tmp_path, tiny_model):
    """scripts/learning_curve.py --task: each kept snapshot (--every) scored by InfGen's task, as
    rows of the mean over the photos at 1x (native) and 2x with the native + bicubic baseline."""
    from infgen.ref.weights import save_checkpoint
    load_script("scripts/evaluate_demo.py")  # learning_curve imports its neighbours by name
    curve = load_script("scripts/learning_curve.py")
    photos = tmp_path / "photos" / task.PACKAGE
    photos.mkdir(parents=True)
    for seed, name in enumerate(("Kite", "Path")):
        Image.fromarray(smooth_image(400, 640, seed=seed)).save(photos / f"{name}.png")
    run = tmp_path / "run"
    for step in (500, 1000):
        save_checkpoint(tiny_model, run / "snapshots" / f"step{step:06d}")
    points = curve.curve(run, task_dir=tmp_path / "photos", every=1000, names=("Kite", "Path"))
    assert [p["step"] for p in points] == [1000]
    rows = points[0]["rows"]
    assert [(r["photo"], r["scale"]) for r in rows] == [("2 KDE photos", 1), ("2 KDE photos", 2)]
    assert "baseline_psnr" not in rows[0] and np.isfinite(rows[1]["baseline_psnr"])
    assert all(np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in rows)
    assert "| 1000 | " in curve.markdown(points)
