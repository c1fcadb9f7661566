"""The engine's any-size path: plan, automatic and forced banded decode, options, CLI."""
import numpy as np
import pytest
import torch

from infgen.ref.config import preset
from infgen.ref.memory import predict_peak
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.engine import InfGenEngine


def test_auto_bands_past_the_budget_and_matches_plain():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 8, 8)
    plain = InfGenEngine("tiny", max_memory="1TB")
    assert plain.plan(96, 80).mode == "plain"
    forced = InfGenEngine("tiny", banded=True)
    assert forced.plan(1024, 1024).peak_bytes < 0.8 * plain.plan(1024, 1024).peak_bytes
    # 128x128: plain 6.3 MB, banded by 8 rows 5.0 MB
    between = InfGenEngine("tiny", max_memory="5.5MB", band_rows=8)
    p = between.plan(128, 128)
    assert (p.mode, p.sub_batch, p.band_rows) == ("banded", 1, 8)
    assert p.peak_bytes <= 5.5e6 < plain.plan(128, 128).peak_bytes
    a, b = plain.decode(z, 128, 128), between.decode(z, 128, 128)
    assert b.shape == (1, 3, 128, 128)
    assert (a - b).abs().max().item() <= 1e-4
    # 96x80 under 2 MB: banding saves too little, so the plan is a refusal and decode refuses
    small = InfGenEngine("tiny", max_memory="2MB")
    refused = small.plan(96, 80)
    assert refused.mode == "refuse" and refused.peak_bytes > 2e6 and "exceeds the memory budget 2.00 MB" in refused.reason
    with pytest.raises(MemoryBudgetError, match="batch 1 at 80x96 refused"):
        small.decode(z, 96, 80)


def test_forced_banded_with_band_rows_and_forced_plain():
    z = torch.randn(2, 4, 6, 6)
    eng = InfGenEngine("tiny", banded=True, band_rows=3)
    p = eng.plan(40, 56, 2)
    assert (p.mode, p.sub_batch, p.band_rows) == ("banded", 2, 3)
    ref = InfGenEngine("tiny", banded=False).decode(z, 40, 56)
    assert (eng.decode(z, 40, 56) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kw,match", [(dict(banded="yes"), "'yes'"), (dict(band_rows=0), "band_rows"),
                                      (dict(max_memory="lots"), "'lots'"), (dict(max_memory=-5), "-5")])
def test_bad_options_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        InfGenEngine("tiny", **kw)


def test_cli_info_prints_the_plan_and_decode_takes_max_memory(tmp_path, capsys):
    from infgen.runtime.cli import main
    assert main(["info", "--preset", "paper", "--size", "4096x4096", "--max-memory", "24GB"]) == 0
    out = capsys.readouterr().out
    plain, banded = (predict_peak(preset("paper"), 4096, 4096, 1, torch.bfloat16, "triton", mode) for mode in ("plain", "banded"))
    assert plain > 24e9 > banded  # docs/anysize.md: 26.04 and 17.73 GB
    assert f"triton bfloat16 (CUDA) plain {plain / 1e9:8.2f} GB  banded {banded / 1e9:8.2f} GB  -> banded, 64 rows per band" in out
    np.save(tmp_path / "z.npy", np.random.default_rng(0).standard_normal((4, 8, 8)).astype("float32"))
    assert main(["decode", str(tmp_path / "z.npy"), "--size", "48x40", "--preset", "tiny", "--max-memory", "5MB",
                 "--band-rows", "5", "--out", str(tmp_path / "o.png")]) == 0
    assert (tmp_path / "o.png").exists()
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "z.npy"), "--size", "48x40", "--preset", "tiny", "--max-memory", "1MB",
                 "--out", str(tmp_path / "p.png")]) == 2  # 4.3 MB predicted, banded or not: refused
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refused" in errors[0] and "1.00 MB" in errors[0]
    assert main(["decode", str(tmp_path / "z.npy"), "--size", "48x40", "--preset", "tiny",
                 "--max-memory", "24 parsecs"]) == 2
    assert "24 parsecs" in capsys.readouterr().err


def test_triton_backend_banded_uses_its_attention_and_matches_torch():
    """backend="triton" (Triton's interpreter on the CPU), banded: banded convs and norms with the
    backend's flash-attention kernels, equal to the plain torch decode."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the CPU interpreter path; on CUDA the gpu-marked tests cover the backend")
    z = torch.randn(1, 4, 5, 6)
    eng = InfGenEngine("tiny", backend="triton", banded=True, band_rows=2)
    p = eng.plan(24, 32)
    assert (p.mode, p.band_rows) == ("banded", 2)
    ref = InfGenEngine("tiny", banded=False).decode(z, 24, 32)
    assert (eng.decode(z, 24, 32) - ref).abs().max().item() <= 1e-4
