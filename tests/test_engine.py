"""InfGenEngine on the CPU: inputs, outputs, helpers, and every kind of bad request."""
import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from safetensors.torch import load_file

from infgen.ref import DEMO_CHECKPOINT
from infgen.ref.weights import CheckpointError, checkpoint_config, save_checkpoint
from infgen.runtime.cli import options
from infgen.runtime.engine import InfGenEngine, default_model, resolve_model

from conftest import rel_err


@pytest.fixture(scope="module")
def engine(tiny_model):
    return InfGenEngine(tiny_model)


@pytest.fixture(scope="module")
def z():
    torch.manual_seed(7)
    return torch.randn(1, 4, 8, 8)


def test_torch_and_numpy_inputs_agree(engine, z):
    a = engine.decode(z, 40, 24)
    b = engine.decode(z.numpy(), 40, 24)
    c = engine.decode(z.double().numpy(), 40, 24)  # float64 arrays are accepted and cast
    assert a.shape == (1, 3, 40, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert rel_err(c, a) < 1e-6


def test_unbatched_latent(engine, z):
    out = engine.decode(z[0], 17, 9)
    assert out.shape == (1, 3, 17, 9)
    assert torch.equal(out, engine.decode(z, 17, 9))


def test_output_is_clamped_reference_decode(engine, tiny_model, z):
    out = engine.decode(z * 20, 33, 47)  # a large latent: the raw decode leaves [-1, 1]
    with torch.no_grad():
        raw = tiny_model.decode(z * 20, 33, 47)
    assert raw.abs().max() > 1, "the test needs a decode that overshoots"
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out, raw.clamp(-1, 1), atol=1e-5, rtol=0)


def test_engine_from_preset_is_deterministic_and_says_random():
    a = InfGenEngine("tiny")
    b = InfGenEngine("tiny")
    assert a.random_weights
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(a.decode(z, 16, 16), b.decode(z, 16, 16))


def test_demo_preset_is_the_bundled_trained_checkpoint():
    """InfGenEngine("demo") loads DEMO_CHECKPOINT's weights; it is not the architecture at random."""
    eng = InfGenEngine("demo")
    assert not eng.random_weights
    shipped = load_file(str(DEMO_CHECKPOINT / "model.safetensors"))
    state = eng.model.state_dict()
    assert set(state) == set(shipped)
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)
    assert eng.config == checkpoint_config(DEMO_CHECKPOINT)
    random = resolve_model("tiny")  # the other presets keep their seed-0 random weights
    assert torch.equal(random.decoder.conv_in.weight, resolve_model("tiny").decoder.conv_in.weight)


def test_default_engine_is_the_cli_default_model():
    """InfGenEngine() decodes with the model the command-line tools use without --preset/--checkpoint."""
    assert options.default_model() == default_model() == str(DEMO_CHECKPOINT)
    args = argparse.Namespace(checkpoint=None, preset=None)
    assert options.model_spec(args) == default_model()
    assert options.model_spec(argparse.Namespace(checkpoint=None, preset="demo")) == str(DEMO_CHECKPOINT)
    a, b = InfGenEngine(), InfGenEngine(options.model_spec(args))
    assert not a.random_weights and a.config == b.config
    z = torch.randn(1, 4, 6, 5)
    assert torch.equal(a.decode(z, 40, 24), b.decode(z, 40, 24))


def test_default_model_without_a_bundled_checkpoint_is_tiny(tmp_path):
    assert default_model(tmp_path / "missing") == "tiny"


def test_demo_preset_without_its_checkpoint_says_so(tmp_path, monkeypatch):
    from infgen.ref import weights
    monkeypatch.setitem(weights.TRAINED_PRESETS, "demo", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"preset 'demo' is the bundled checkpoint .*missing.*not installed"):
        InfGenEngine("demo")


def test_engine_from_checkpoint(tiny_model, z, tmp_path):
    d = save_checkpoint(tiny_model, tmp_path / "ck")
    eng = InfGenEngine(str(d))
    assert not eng.random_weights
    with torch.no_grad():
        assert torch.allclose(eng.decode(z, 24, 16), tiny_model.decode(z, 24, 16).clamp(-1, 1), atol=1e-5, rtol=0)


def test_encode_matches_model(engine, tiny_model):
    torch.manual_seed(8)
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    lat = engine.encode(x.numpy())
    with torch.no_grad():
        assert torch.equal(lat, tiny_model.encode(x))
    assert lat.shape == (1, 4, 4, 6)


def test_to_uint8_and_to_pil():
    img = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    u = InfGenEngine.to_uint8(img)
    assert u.shape == (2, 1, 4, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    pils = InfGenEngine.to_pil(img)
    assert len(pils) == 2 and pils[0].size == (4, 1) and pils[0].mode == "RGB"


def test_save_png_jpeg_and_batch(engine, tmp_path):
    torch.manual_seed(9)
    imgs = engine.decode(torch.randn(2, 4, 4, 4), 24, 40)
    paths = engine.save(imgs, tmp_path / "x.png")
    assert [p.name for p in paths] == ["x_0.png", "x_1.png"]
    with Image.open(paths[1]) as im:
        assert im.size == (40, 24)
        assert np.array_equal(np.asarray(im), engine.to_uint8(imgs)[1])  # PNG is lossless
    (p,) = engine.save(imgs[:1], tmp_path / "y.jpg")
    with Image.open(p) as im:
        assert im.format == "JPEG" and im.size == (40, 24)
    with pytest.raises(ValueError, match="x.bmp"):
        engine.save(imgs, tmp_path / "x.bmp")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape,match", [
    ((1, 3, 8, 8), r"4 channels, got shape \(1, 3, 8, 8\)"),
    ((8, 8), r"got \(8, 8\)"),
    ((1, 1, 4, 8, 8), r"got \(1, 1, 4, 8, 8\)"),
    ((0, 4, 8, 8), r"empty dimension: shape \(0, 4, 8, 8\)"),
    ((1, 4, 300, 8), r"at most 256x256, got \(300, 8\)"),
])
def test_bad_latent_shape(engine, shape, match):
    with pytest.raises(ValueError, match=match):
        engine.decode(torch.zeros(shape), 16, 16)


@pytest.mark.parametrize("value,match", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_latent(engine, z, value, match):
    bad = z.clone()
    bad[0, 2, 3, 4] = value
    with pytest.raises(ValueError, match=rf"non-finite.*{match} at index \(0, 2, 3, 4\)"):
        engine.decode(bad, 16, 16)
    with pytest.raises(ValueError, match=match):
        engine.decode(bad.numpy(), 16, 16)


@pytest.mark.parametrize("h,w,match", [(0, 16, "height must be 8..2048, got 0"),
                                       (16, -8, "width must be 8..2048, got -8"),
                                       (7, 16, "got 7"),
                                       (2049, 16, "height must be 8..2048, got 2049"),
                                       (16, 100000, "got 100000")])
def test_bad_size_value(engine, z, h, w, match):
    with pytest.raises(ValueError, match=match):
        engine.decode(z, h, w)


@pytest.mark.parametrize("h,match", [(64.5, "float 64.5"), (64.0, "float 64.0"), ("64", "str '64'"),
                                     (None, "NoneType None"), (True, "bool True")])
def test_non_integer_size(engine, z, h, match):
    with pytest.raises(TypeError, match=match):
        engine.decode(z, h, 16)


def test_numpy_integer_size_is_accepted(engine, z):
    assert engine.decode(z, np.int64(16), 24).shape == (1, 3, 16, 24)


@pytest.mark.parametrize("latent,match", [(torch.zeros(1, 4, 8, 8, dtype=torch.int64), "int64"),
                                          (np.zeros((1, 4, 8, 8), dtype=np.int32), "int32"),
                                          (torch.zeros(1, 4, 8, 8, dtype=torch.bool), "bool"),
                                          ([[0.0]], "list")])
def test_unsupported_latent_type(engine, latent, match):
    with pytest.raises(TypeError, match=match):
        engine.decode(latent, 16, 16)


@pytest.mark.parametrize("dtype,match", [("int8", "'int8'"), (torch.int32, "torch.int32"), ("fp8", "'fp8'")])
def test_unsupported_engine_dtype(tiny_model, dtype, match):
    with pytest.raises(ValueError, match=match):
        InfGenEngine(tiny_model, dtype=dtype)


@pytest.mark.parametrize("device", ["mps", "tpu", "cuda:banana"])
def test_unsupported_device(tiny_model, device):
    with pytest.raises(ValueError, match=device):
        InfGenEngine(tiny_model, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda(tiny_model):
    with pytest.raises(ValueError, match="'cuda' requested but no CUDA device"):
        InfGenEngine(tiny_model, device="cuda")


def test_unknown_backend_and_model(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="'nope'"):
        InfGenEngine(tiny_model, backend="nope")
    with pytest.raises(ValueError, match="'huge'"):
        InfGenEngine("huge")
    with pytest.raises(TypeError, match="int"):
        InfGenEngine(3)


def test_corrupt_checkpoint(tiny_model, tmp_path):
    d = save_checkpoint(tiny_model, tmp_path / "ck")
    (d / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        InfGenEngine(str(d))


def test_checkpoint_config_not_matching(tiny_model, tmp_path):
    d = save_checkpoint(tiny_model, tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "num_blocks": 5}))
    with pytest.raises(CheckpointError, match=r"missing: decoder\.blocks\.2\."):
        InfGenEngine(str(d))
