"""The memory model against measured peaks (tiny preset, CPU, each decode in a fresh process)."""
import pytest
import torch

from infgen.ref.config import preset
from infgen.ref.memory import parse_bytes, plan, predict_peak


@pytest.mark.parametrize("mode,size,rows", [("plain", 512, None), ("banded", 512, None), ("banded", 384, 8)])
def test_predicted_peak_within_20_percent_of_measured(mode, size, rows):
    from benchmarks.anysize import run_child
    got = run_child(mode, "tiny", size, size, band_rows=rows, timeout=300)["peak_bytes"]
    want = predict_peak(preset("tiny"), size, size, mode=mode, band_rows=rows)
    assert abs(got - want) <= 0.2 * got, (mode, got, want)


def test_banded_peak_below_plain_and_4k_triton_under_24gb():
    cfg = preset("paper")
    for backend in ("torch", "triton"):
        plain = predict_peak(cfg, 4096, 4096, dtype=torch.bfloat16, backend=backend)
        banded = predict_peak(cfg, 4096, 4096, dtype=torch.bfloat16, backend=backend, mode="banded")
        assert plain > 24e9 > banded, (backend, plain, banded)


def test_plan_picks_banded_only_past_the_budget():
    cfg = preset("tiny")
    mode, rows, peak = plan(cfg, 512, 512, budget=10**12)
    assert (mode, rows) == ("plain", None) and peak == predict_peak(cfg, 512, 512)
    mode, rows, peak = plan(cfg, 512, 512, budget=10**6)
    assert mode == "banded" and rows >= 1 and peak == predict_peak(cfg, 512, 512, mode="banded")
    assert plan(cfg, 512, 512, budget=10**6, banded=False)[0] == "plain"
    assert plan(cfg, 512, 512, banded=True, band_rows=4)[:2] == ("banded", 4)


def test_parse_bytes():
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5e9") == 1_500_000_000
    assert parse_bytes(123) == 123
    for bad in ("24 parsecs", "", "-1GB", 0):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(TypeError):
        parse_bytes(2.5)


def test_bad_arguments_name_the_value():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="'sideways'"):
        predict_peak(cfg, 64, 64, mode="sideways")
    with pytest.raises(ValueError, match="'onnxruntime'"):
        predict_peak(cfg, 64, 64, backend="onnxruntime")
    with pytest.raises(ValueError, match="0"):
        predict_peak(cfg, 64, 64, mode="banded", band_rows=0)
    with pytest.raises(ValueError, match="'maybe'"):
        plan(cfg, 64, 64, banded="maybe")
