"""The memory model against measured peaks (tiny preset, CPU, each decode in a fresh process)."""
import pytest
import torch

from infgen.ref.config import preset
from infgen.ref.memory import gb, parse_bytes, plan, predict_peak


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


def test_plan_order_plain_sub_batches_banded_banded_host_refuse():
    cfg = preset("tiny")
    p = plan(cfg, 512, 512, budget=10**12)
    assert (p.mode, p.sub_batch, p.band_rows) == ("plain", 1, None) and p.peak_bytes == predict_peak(cfg, 512, 512)
    gathered = 4 * 3 * 512 * 512 * 4  # sub-batches are gathered into the (4, 3, H, W) fp32 output
    p = plan(cfg, 512, 512, 4, budget=predict_peak(cfg, 512, 512, 2) + gathered)
    assert (p.mode, p.sub_batch) == ("sub-batches", 2) and p.peak_bytes == predict_peak(cfg, 512, 512, 2) + gathered
    banded = predict_peak(cfg, 512, 512, mode="banded")
    p = plan(cfg, 512, 512, budget=banded)
    assert (p.mode, p.sub_batch) == ("banded", 1) and p.band_rows >= 1 and p.peak_bytes == banded
    p = plan(cfg, 512, 512, budget=banded - 1, host_streaming=True)  # CUDA: the largest activations to host memory
    assert p.mode == "banded-host" and p.host_over > 0 and p.peak_bytes <= banded - 1
    p = plan(cfg, 512, 512, budget=banded - 1)  # no host streaming (CPU): nothing fits
    assert (p.mode, p.sub_batch) == ("refuse", 0) and p.peak_bytes == banded
    assert (f"predicted peak {gb(predict_peak(cfg, 512, 512))} (at least {gb(banded)}, banded) exceeds the memory "
            f"budget {gb(banded - 1)}") in p.reason
    assert plan(cfg, 512, 512, budget=banded, banded=False).mode == "refuse"
    p = plan(cfg, 512, 512, banded=True, band_rows=4)
    assert (p.mode, p.band_rows) == ("banded", 4)


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
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        plan(cfg, 64, 64, batch=0)
    with pytest.raises(ValueError, match="budget must be None or bytes .*got -5"):
        plan(cfg, 64, 64, budget=-5)
