"""The photo demo on the shipped demo checkpoint: pictures written, metrics finite, dtypes finite."""
import json
import math

import pytest
import torch

from infgen_ref.weights import load_checkpoint
from runtime.demo_photo import DEMO_DIR, DEMO_PHOTO, fidelity, held_out_table, parse_sizes, run_demo


def test_shipped_demo_assets():
    assert DEMO_PHOTO.is_file()
    assert (DEMO_DIR / "CARD.md").is_file()
    model = load_checkpoint(DEMO_DIR)
    assert model.config.upscale == 8 and model.config.max_size >= 1920
    assert (DEMO_DIR / "model.safetensors").stat().st_size < 10 * 2**20


def test_run_demo_writes_pictures_and_finite_metrics(tmp_path):
    rows = run_demo(tmp_path, sizes="64x64,120x72")
    assert [r["size"] for r in rows] == ["64x64", "120x72"]
    for r in rows:
        for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim", "seconds"):
            assert math.isfinite(r[k]), (k, r)
        assert 0 < r["ssim"] <= 1 and r["psnr"] > 5
    from PIL import Image
    assert Image.open(tmp_path / "infgen_120x72.png").size == (120, 72)
    assert (tmp_path / "bicubic_64x64.png").is_file()
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 3 * 64
    info = json.loads((tmp_path / "demo_results.json").read_text())
    assert info["rows"] == rows and info["dtype"] == "float32"


def test_parse_sizes():
    assert parse_sizes("256x256, 512X288") == [(256, 256), (512, 288)]
    assert parse_sizes([(3, 4)]) == [(3, 4)]
    assert parse_sizes("256") == [(256, 256)]  # one number is a square, as in every tool
    for bad in ("axb", "", "1x2x3"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_run_demo_rejects_bad_size(tmp_path):
    with pytest.raises(ValueError, match="width must be"):
        run_demo(tmp_path, sizes="4000x64")


def test_low_precision_outputs_finite_and_close():
    rows = fidelity(sizes="96x64", backends=("torch",), dtypes=("fp32", "bf16", "fp16"))
    by = {r["dtype"]: r for r in rows}
    assert by["fp32"]["psnr"] == math.inf
    for dt, floor in (("bf16", 30.0), ("fp16", 40.0)):
        assert by[dt]["finite"] and by[dt]["psnr"] > floor, by[dt]


def test_fidelity_skips_unbuildable_backend_with_reason():
    rows = fidelity(sizes="64x64", backends=("nope",), dtypes=("fp32",))
    assert rows == [dict(backend="nope", dtype="fp32", skipped=rows[0]["skipped"])]
    assert "nope" in rows[0]["skipped"]


def test_held_out_table_rows():
    torch.manual_seed(0)
    pic = torch.rand(1, 3, 70, 100) * 2 - 1
    rows = held_out_table(scales=(2,), photos={"rand": pic})
    assert [(r["scale"], r["size"]) for r in rows] == [(1, "48x32"), (2, "96x64")]
    assert all(math.isfinite(r["psnr"]) for r in rows)
    assert "baseline_psnr" in rows[1] and "input_bicubic_ssim" in rows[1]


def test_shipped_demo_model_quality_on_held_out_photos():
    """Guards the shipped checkpoint (CARD.md, BENCHMARKS.md "Demo model fidelity"): on both
    held-out photos its direct decode at 2x and 4x beats native decode + bicubic in PSNR, and it
    autoencodes at >= 17 dB at the native size. A retrained checkpoint that falls below fails here."""
    rows = held_out_table()
    assert {r["photo"] for r in rows} == {"coffee", "chelsea"}
    for r in rows:
        if r["scale"] == 1:
            assert r["psnr"] >= 17.0, r
        else:
            assert r["psnr"] > r["baseline_psnr"], r
