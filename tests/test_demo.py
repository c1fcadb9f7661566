"""`python -m infgen.runtime demo` (runtime/cli/demo.py) on the shipped demo checkpoint: pictures written,
metrics finite; the demo model's evaluation tables (scripts/evaluate_demo.py): held-out photos,
every backend and dtype against fp32, and its command line."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from infgen.ref.weights import load_checkpoint
from infgen.runtime.cli.demo import DEMO_PHOTO, run_demo
from infgen.runtime.cli.options import DEMO_CHECKPOINT as DEMO_DIR


def _evaluate_demo():
    """scripts/evaluate_demo.py as a module (scripts/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_demo.py"
    spec = importlib.util.spec_from_file_location("evaluate_demo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


evaluate_demo = _evaluate_demo()
fidelity, held_out_table = evaluate_demo.fidelity, evaluate_demo.held_out_table


def test_shipped_demo_assets():
    assert DEMO_PHOTO.is_file()
    assert (DEMO_DIR / "CARD.md").is_file()
    model = load_checkpoint(DEMO_DIR)
    assert model.config.upscale == 8 and model.config.max_size >= 1920
    assert (DEMO_DIR / "model.safetensors").stat().st_size <= 20 * 2**20  # issue #17: <= 20 MB


def test_run_demo_writes_pictures_and_finite_metrics(tmp_path):
    rows = run_demo(tmp_path, sizes=[(64, 64), (72, 120)])  # (h, w)
    assert [r["size"] for r in rows] == ["64x64", "120x72"]
    for r in rows:
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "lanczos_psnr", "lanczos_ssim", "seconds",
                  "mosaic", "bicubic_mosaic"):
            assert math.isfinite(r[k]), (k, r)
        assert 0 < r["ssim"] <= 1 and r["psnr"] > 5
    from PIL import Image
    assert Image.open(tmp_path / "infgen_120x72.png").size == (120, 72)
    assert (tmp_path / "bicubic_64x64.png").is_file()
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 3 * 64
    info = json.loads((tmp_path / "demo_results.json").read_text())
    assert info["rows"] == rows and info["dtype"] == "float32"
    assert info["input"] == "512x288" and info["latent"] == "64x36"  # InfGen's task: a 512-px input
    assert math.isfinite(info["native_psnr"])


def test_demo_photo_is_the_held_out_high_resolution_photo():
    """The demo's photo is 2048x1152 (16:9, 4x the 512x288 input) and is not among the training data."""
    from PIL import Image
    from infgen.runtime.cli.demo import INPUT_SIZE, PHOTO_SIZES
    assert Image.open(DEMO_PHOTO).size == (2048, 1152) == (PHOTO_SIZES[-1][1], PHOTO_SIZES[-1][0])
    assert PHOTO_SIZES[-1] == (4 * INPUT_SIZE[0], 4 * INPUT_SIZE[1])
    assert "EveningGlow" in (DEMO_DIR / "DATA.md").read_text()


def test_no_mosaic_in_the_2048_px_decode():
    """Issue #35: the latent's cells do not show. The demo's photo at 512x288 -> a 64x36 latent; at
    2048x1152 (4x) the steps at the latent cells' edges (the cell frequency and its harmonics;
    mosaic_ratio, tested in tests/test_evaluate_task.py) are no stronger than elsewhere in InfGen's
    direct decode, and weaker than in the baseline measured beside it (native decode + bicubic,
    which magnifies the native decode's own cell edges)."""
    from PIL import Image
    from infgen.runtime.cli.demo import INPUT_SIZE, mosaic_ratio, resized, to_unit_tensor
    from infgen.runtime.engine import InfGenEngine
    engine = InfGenEngine(DEMO_DIR, backend="torch", dtype="fp32")
    with torch.inference_mode():
        z = engine.encode(to_unit_tensor(resized(Image.open(DEMO_PHOTO), INPUT_SIZE)))
        assert z.shape[2:] == (36, 64)
        native = engine.to_uint8(engine.decode(z, *INPUT_SIZE))[0]
        infgen = engine.to_uint8(engine.decode(z, 1152, 2048))[0]
    bicubic = resized(Image.fromarray(native), (1152, 2048), Image.Resampling.BICUBIC)
    mine, base = mosaic_ratio(infgen, (36, 64)), mosaic_ratio(bicubic, (36, 64))
    assert mine < 1.5 and mine < base, (mine, base)


def test_sizes_must_be_height_width_pairs(tmp_path):
    for bad in ([], [(1, 2, 3)], "64x64"):
        with pytest.raises(ValueError, match="height, width"):
            run_demo(tmp_path, sizes=bad)


def test_run_demo_rejects_bad_size(tmp_path):
    with pytest.raises(ValueError, match="width must be"):
        run_demo(tmp_path, sizes=[(64, 9000)])


def test_low_precision_outputs_finite_and_close():
    rows = fidelity(sizes=[(64, 96)], backends=("torch",), dtypes=("fp32", "bf16", "fp16"))
    by = {r["dtype"]: r for r in rows}
    assert by["fp32"]["psnr"] == math.inf
    for dt, floor in (("bf16", 30.0), ("fp16", 40.0)):
        assert by[dt]["finite"] and by[dt]["psnr"] > floor, by[dt]


def test_fidelity_skips_unbuildable_backend_with_reason():
    rows = fidelity(sizes=[(64, 64)], backends=("nope",), dtypes=("fp32",))
    assert rows == [dict(backend="nope", dtype="fp32", skipped=rows[0]["skipped"])]
    assert "nope" in rows[0]["skipped"]


def test_held_out_table_rows():
    torch.manual_seed(0)
    pic = torch.rand(1, 3, 70, 100) * 2 - 1
    rows = held_out_table(scales=(2,), photos={"rand": pic})
    assert [(r["scale"], r["size"]) for r in rows] == [(1, "48x32"), (2, "96x64")]
    assert all(math.isfinite(r["psnr"]) for r in rows)
    assert "baseline_psnr" in rows[1] and "input_bicubic_ssim" in rows[1]


def test_evaluate_demo_prints_both_tables(capsys, monkeypatch):
    """`python scripts/evaluate_demo.py`: both tables by default, the fidelity table's sizes, backends
    and dtypes passed through as (h, w) and lists. The two table functions are stood in for here
    (they are tested above); this checks the wiring."""
    calls = {}

    def fake_held_out(ckpt, device):
        calls["held_out"] = (ckpt, device)
        return [dict(photo="pic", scale=2, size="96x64", psnr=20.5)]

    def fake_fidelity(sizes, backends, dtypes, device, checkpoint):
        calls["fidelity"] = (sizes, backends, dtypes, device, checkpoint)
        return [dict(backend="torch", dtype="bf16", size="96x64", psnr=41.25, max_abs=0.01, finite=True)]

    monkeypatch.setattr(evaluate_demo, "held_out_table", fake_held_out)
    monkeypatch.setattr(evaluate_demo, "fidelity", fake_fidelity)
    rc = evaluate_demo.main(["--size", "96x64", "--backend", "torch", "--dtype", "bf16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert calls["held_out"] == (DEMO_DIR, "cpu")
    assert calls["fidelity"] == ([(64, 96)], ["torch"], ["bf16"], "cpu", DEMO_DIR)
    held = out[out.index("held-out photos"):out.index("fidelity against")]
    assert "pic" in held and "20.5" in held
    fid = out[out.index("fidelity against the torch fp32 output"):]
    assert "41.25" in fid and "bf16" in fid
    calls.clear()
    assert evaluate_demo.main(["--table", "fidelity"]) == 0
    assert list(calls) == ["fidelity"] and "held-out photos" not in capsys.readouterr().out


def test_evaluate_demo_needs_a_checkpoint(tmp_path, capsys):
    from conftest import one_error_line
    line = one_error_line(capsys, evaluate_demo.main(["--checkpoint", str(tmp_path / "none")]))
    assert "no demo checkpoint at" in line and "none" in line


def test_demo_keeps_only_the_demo(tmp_path, capsys):
    """The tables left the demo: `demo --held-out` is an unknown flag now (one error line, status 2)."""
    from infgen.runtime.cli import main
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out-dir", str(tmp_path), "--held-out"])
    assert info.value.code == 2 and "--held-out" in capsys.readouterr().err


def test_shipped_demo_model_quality_on_held_out_photos():
    """Guards the shipped checkpoint (v7; CARD.md, BENCHMARKS.md "Demo model fidelity"): on both
    held-out photos it autoencodes at >= 18 dB at the native size (coffee 18.47, chelsea 21.11
    when shipped), its direct decode at 2x and 4x is >= 16.5 dB, and it stays within 1 dB of
    native decode + bicubic there (it trails by 0.4-0.6 dB when shipped: issue #17's miss). A
    retrained checkpoint that falls below these fails here."""
    rows = held_out_table()
    assert {r["photo"] for r in rows} == {"coffee", "chelsea"}
    native = {r["photo"]: r["psnr"] for r in rows if r["scale"] == 1}
    assert min(native.values()) >= 18.0 and max(native.values()) >= 21.0, native
    for r in rows:
        if r["scale"] > 1:
            assert r["psnr"] >= 16.5 and r["psnr"] > r["baseline_psnr"] - 1.0, r
