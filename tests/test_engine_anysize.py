"""The engine's any-size path: plan, automatic and forced banded decode, options, CLI."""
import numpy as np
import pytest
import torch

from infgen.runtime.engine import InfGenEngine


def test_auto_bands_past_the_budget_and_matches_plain():
    torch.manual_seed(0)
    z = torch.randn(1, 4, 8, 8)
    plain = InfGenEngine("tiny", max_memory="1TB")
    small = InfGenEngine("tiny", max_memory="2MB")
    assert plain.plan(96, 80)[0] == "plain"
    mode, rows, _ = small.plan(96, 80)
    assert mode == "banded" and rows >= 1
    assert small.plan(1024, 1024)[2] < 0.8 * plain.plan(1024, 1024)[2]
    # 128x128: plain 6.3 MB, banded by 8 rows 5.0 MB (at 96x80 banding saves nothing: the guard refuses)
    between = InfGenEngine("tiny", max_memory="5.5MB", band_rows=8)
    assert between.plan(128, 128)[0] == "banded"
    a, b = plain.decode(z, 128, 128), between.decode(z, 128, 128)
    assert b.shape == (1, 3, 128, 128)
    assert (a - b).abs().max().item() <= 1e-4


def test_forced_banded_with_band_rows_and_forced_plain():
    z = torch.randn(2, 4, 6, 6)
    eng = InfGenEngine("tiny", banded=True, band_rows=3)
    assert eng.plan(40, 56)[:2] == ("banded", 3)
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
    assert "triton bfloat16 (CUDA) plain    25.77 GB  banded    17.60 GB  -> banded, 64 rows per band" in out
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
    assert eng.plan(24, 32)[:2] == ("banded", 2)
    ref = InfGenEngine("tiny", banded=False).decode(z, 24, 32)
    assert (eng.decode(z, 24, 32) - ref).abs().max().item() <= 1e-4
