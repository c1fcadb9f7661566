"""Validation at every door (#18): configs, checkpoint weights, latents, images, files.

Each bad input must raise ValueError or TypeError (or a subclass) whose message names the bad
field or value; nothing is built or read in bulk before the check."""
import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from infgen.ref import config as config_mod
from infgen.ref.config import CHECKPOINT_REQUIRED, InfGenConfig, param_count, preset
from infgen.ref.model import InfGen
from infgen.ref.weights import CheckpointError, checkpoint_config, load_checkpoint, save_checkpoint


# ----------------------------------------------------------------------------- config fields
@pytest.mark.parametrize("field, value, exc, match", [
    ("block_out_channels", [16.7, 32, 32, 64], TypeError, r"block_out_channels\[0\].*16\.7"),
    ("block_out_channels", [], TypeError, "block_out_channels"),
    ("block_out_channels", [16, -32, 32, 64], ValueError, r"block_out_channels\[1\].*-32"),
    ("block_out_channels", [16, 0, 32, 64], ValueError, r"block_out_channels\[1\].*0"),
    ("block_out_channels", "16,32", TypeError, "block_out_channels"),
    ("block_out_channels", [16, 32, 32, 60], ValueError, "60 not divisible by norm_num_groups 8"),
    ("block_out_channels", [16] * 9, TypeError, "block_out_channels"),
    ("num_heads", 0, ValueError, "num_heads.*0"),
    ("num_heads", 5, ValueError, "num_heads 5 does not divide token_dim 64"),
    ("num_heads", 4.0, TypeError, r"num_heads.*float 4\.0"),
    ("num_heads", True, TypeError, "num_heads.*bool"),
    ("num_blocks", -1, ValueError, "num_blocks.*-1"),
    ("layers_per_block", 0, ValueError, "layers_per_block.*0"),
    ("norm_num_groups", 0, ValueError, "norm_num_groups.*0"),
    ("norm_eps", float("nan"), ValueError, "norm_eps.*nan"),
    ("norm_eps", 0.0, ValueError, "norm_eps.*0.0"),
    ("norm_eps", -1e-6, ValueError, "norm_eps"),
    ("norm_eps", "1e-6", TypeError, "norm_eps.*str"),
    ("scaling_factor", 0, ValueError, "scaling_factor.*0"),
    ("scaling_factor", float("inf"), ValueError, "scaling_factor.*inf"),
    ("scaling_factor", 1e-30, ValueError, "scaling_factor.*1e-30"),
    ("scaling_factor", None, TypeError, "scaling_factor.*NoneType"),
    ("mlp_ratio", 0, ValueError, "mlp_ratio"),
    ("mlp_ratio", float("nan"), ValueError, "mlp_ratio.*nan"),
    ("inpe_seed", "zero", TypeError, "inpe_seed.*str"),
    ("inpe_seed", 1.5, TypeError, r"inpe_seed.*1\.5"),
    ("inpe_seed", -1, ValueError, "inpe_seed.*-1"),
    ("inpe_seed", 2 ** 64, ValueError, "inpe_seed"),
    ("inpe_scale", float("-inf"), ValueError, "inpe_scale"),
    ("inpe_fourier_dim", 0, ValueError, "inpe_fourier_dim.*0"),
    ("latent_channels", 0, ValueError, "latent_channels.*0"),
    ("in_channels", 4, ValueError, "in_channels.*4"),
    ("max_size", 4, ValueError, "max_size must be 8..32768, got 4"),
    ("max_size", 10 ** 9, ValueError, "max_size"),
    ("latent_size", 0, ValueError, "latent_size.*0"),
    ("latent_size", 1000, ValueError, "latent_size.*1000"),
])
def test_bad_config_field_is_named(field, value, exc, match):
    with pytest.raises(exc, match=match):
        preset("tiny", **{field: value})
    d = {**preset("tiny").to_dict(), field: value}
    with pytest.raises(exc, match=match):
        InfGenConfig.from_dict(d)


def test_config_accepts_numpy_ints_and_int_valued_floats_for_real_fields():
    cfg = preset("tiny", num_heads=np.int64(4), norm_eps=1, scaling_factor=np.float32(0.5))
    assert type(cfg.num_heads) is int and cfg.num_heads == 4
    assert type(cfg.norm_eps) is float and type(cfg.scaling_factor) is float


@pytest.mark.parametrize("name", ["paper", "tiny", "demo"])
def test_param_count_from_config_equals_module(name):
    cfg = preset(name)
    assert param_count(cfg) == sum(p.numel() for p in InfGen(cfg).parameters())


@pytest.mark.parametrize("kw", [dict(block_out_channels=(8, 24), norm_num_groups=8, num_heads=3, num_blocks=0),
                                dict(block_out_channels=(32,), norm_num_groups=4, layers_per_block=3,
                                     mlp_ratio=1.5, max_size=64, latent_size=8),
                                dict(block_out_channels=(12, 12, 24), norm_num_groups=6, num_heads=6,
                                     latent_channels=16, inpe_fourier_dim=5)])
def test_param_count_on_unusual_configs(kw):
    cfg = InfGenConfig(**kw)
    assert param_count(cfg) == sum(p.numel() for p in InfGen(cfg).parameters())


def _record_weights_built(monkeypatch, cls) -> list:
    """Patch cls.__init__ to record the device of every parameter it creates; returns the record."""
    built, init = [], cls.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.extend(p.device.type for p in self.parameters())
    monkeypatch.setattr(cls, "__init__", recording_init)
    return built


def test_huge_config_fails_before_any_module_with_weights_is_built(monkeypatch):
    """The parameter count is taken on the model built on the meta device: no weight memory."""
    built = _record_weights_built(monkeypatch, torch.nn.Conv2d)
    with pytest.raises(ValueError, match=r"parameters.*limit") as info:
        preset("tiny", block_out_channels=[8192] * 4, norm_num_groups=32)
    assert all(d == "meta" for d in built)  # counted on meta-device modules, none with weights
    n = int(info.value.args[0].split(" parameters")[0].split()[-1].replace(",", ""))
    assert n > config_mod.MAX_PARAMS


def test_json_limits(tmp_path):
    with pytest.raises(ValueError, match="nested too deeply"):
        InfGenConfig.from_json('{"num_blocks": ' + "[" * 30_000 + "]" * 30_000 + "}")
    with pytest.raises(ValueError, match="more than"):
        InfGenConfig.from_json('{"num_blocks": 2' + " " * (config_mod.MAX_CONFIG_BYTES + 1) + "}")
    with pytest.raises(ValueError, match="repeats.*num_blocks"):
        InfGenConfig.from_json('{"num_blocks": 2, "num_blocks": 3}')
    with pytest.raises(TypeError, match="num_blocks"):
        InfGenConfig.from_json('{"num_blocks": {"a": [1]}}')
    with pytest.raises(ValueError, match="JSON object"):
        InfGenConfig.from_json("[1, 2]")
    big = tmp_path / "big.json"
    big.write_text('{"num_blocks": 2' + " " * config_mod.MAX_CONFIG_BYTES + "}")
    with pytest.raises(ValueError, match="big.json.*bytes"):
        InfGenConfig.from_json(big)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="bin.json.*UTF-8"):
        InfGenConfig.from_json(binary)


def test_directory_named_like_json_is_a_directory(tmp_path):
    d = tmp_path / '{"num_blocks": 1}'
    d.mkdir()
    for arg in (d, str(d)):
        with pytest.raises(ValueError, match="is a directory"):
            InfGenConfig.from_json(arg)
    # A checkpoint directory named like JSON is read as a checkpoint, never parsed as JSON text.
    save_checkpoint(InfGen(preset("tiny")), d)
    assert checkpoint_config(d) == preset("tiny")
    assert load_checkpoint(str(d)).config == preset("tiny")


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture()
def ckpt(tmp_path, tiny_model):
    return save_checkpoint(tiny_model, tmp_path / "ckpt")


@pytest.mark.parametrize("field", CHECKPOINT_REQUIRED)
def test_checkpoint_config_requires_fields(ckpt, field):
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg[field]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"required fields.*{field}"):
        load_checkpoint(ckpt)


def test_config_outside_a_checkpoint_takes_defaults(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["scaling_factor"] = 1.8
    assert InfGenConfig.from_dict(cfg).scaling_factor == 1.8
    del cfg["scaling_factor"]
    assert InfGenConfig.from_dict(cfg).scaling_factor == InfGenConfig().scaling_factor


def test_checkpoint_config_with_bad_values(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    for field, value in (("scaling_factor", 0), ("norm_eps", float("nan")), ("num_heads", 0)):
        (ckpt / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(CheckpointError, match=f"config.json.*{field}"):
            load_checkpoint(ckpt)


def test_tiny_file_claiming_huge_model_fails_at_once(ckpt, monkeypatch):
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [2048] * 4}))
    built = _record_weights_built(monkeypatch, InfGen)
    with pytest.raises(CheckpointError, match=r"describes [\d,]+ parameters but .*model.safetensors holds only"):
        load_checkpoint(ckpt)
    assert all(d == "meta" for d in built)  # at most the meta-device model param_count counts


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64])
def test_checkpoint_with_non_float_tensor_is_refused(ckpt, dtype):
    w = ckpt / "model.safetensors"
    state = load_file(str(w))
    key = "decoder.conv_out.bias"
    state[key] = torch.ones_like(state[key]).to(dtype)
    save_file(state, str(w))
    with pytest.raises(CheckpointError, match=rf"not floating point: {key} \({dtype}\)"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_checkpoint_with_non_finite_weight_is_refused(ckpt, value):
    w = ckpt / "model.safetensors"
    state = load_file(str(w))
    state["decoder.blocks.0.fc1.weight"][3, 5] = value
    save_file(state, str(w))
    with pytest.raises(CheckpointError, match=r"NaN/inf values: decoder\.blocks\.0\.fc1\.weight \(1 of"):
        load_checkpoint(ckpt)


def test_float16_and_bfloat16_checkpoints_still_load(ckpt, tiny_model):
    w = ckpt / "model.safetensors"
    fp32 = load_file(str(w))
    for dtype in (torch.float16, torch.bfloat16):
        save_file({k: v.to(dtype) for k, v in fp32.items()}, str(w))
        m = load_checkpoint(ckpt)
        assert torch.equal(m.decoder.conv_out.weight, fp32["decoder.conv_out.weight"].to(dtype).float())


# ----------------------------------------------------------------------------- latents
from infgen.ref.model import LATENT_ABS_MAX, check_image, check_latent, check_output, latent_abs_max  # noqa: E402


@pytest.fixture(scope="module")
def zz():
    torch.manual_seed(5)
    return torch.randn(2, 4, 5, 6)


def test_latent_variants_decode_like_the_plain_latent(tiny_model, tiny_cfg, zz):
    with torch.no_grad():
        ref = tiny_model.decode(zz, 24, 40)
        variants = {
            "big-endian numpy": zz.numpy().astype(">f4"),
            "fortran numpy": np.asfortranarray(zz.numpy()),
            "reversed-stride numpy": zz.numpy()[:, :, ::-1, :][:, :, ::-1, :],
            "float64 numpy": zz.double().numpy(),
            "non-contiguous": zz.transpose(2, 3).contiguous().transpose(2, 3),
            "sparse coo": zz.to_sparse(),
            "requires grad": zz.clone().requires_grad_(),
        }
        for name, v in variants.items():
            out = tiny_model.decode(check_latent(v, tiny_cfg), 24, 40)
            assert torch.allclose(out, ref, atol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16])
def test_low_precision_latents_are_widened(tiny_cfg, zz, dtype):
    low = zz.to(dtype)
    z = check_latent(low, tiny_cfg)
    assert z.dtype in (torch.float16, torch.bfloat16, torch.float32)
    assert torch.equal(z.float(), low.float())


@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor")
def test_quantised_latent_is_dequantised(tiny_cfg, zz):
    q = torch.quantize_per_tensor(zz, scale=0.05, zero_point=0, dtype=torch.qint8)
    assert torch.equal(check_latent(q, tiny_cfg), q.dequantize())


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("latent, exc, match", [
    (torch.zeros(1, 4, 5, 5, dtype=torch.complex64), TypeError, "floating.*complex64"),
    (torch.zeros(1, 4, 5, 5, dtype=torch.int64), TypeError, "floating.*int64"),
    (torch.zeros(1, 4, 5, 5, dtype=torch.bool), TypeError, "floating.*bool"),
    (np.zeros((1, 4, 5, 5), dtype=np.complex64), TypeError, "floating array.*complex64"),
    (np.zeros((1, 4, 5, 5), dtype=">i4"), TypeError, "floating array.*>i4"),
    (torch.zeros(1, 4, 5, 5, device="meta"), ValueError, r"meta device.*\(1, 4, 5, 5\)"),
    (torch.nested.nested_tensor([torch.zeros(4, 5, 5)]), TypeError, "nested"),
    ([[[0.0]]], TypeError, "list"),
])
def test_unsupported_latents_are_named(tiny_cfg, latent, exc, match):
    with pytest.raises(exc, match=match):
        check_latent(latent, tiny_cfg)


def test_latent_magnitude_bound(tiny_model, tiny_cfg, zz):
    sf = tiny_cfg.scaling_factor
    assert latent_abs_max(tiny_cfg) == pytest.approx(LATENT_ABS_MAX * sf)
    assert latent_abs_max(tiny_cfg, torch.float16) == pytest.approx(65504 / 64 * sf)
    # At the bound, in fp32 and bf16, the decode stays finite.
    edge = torch.where(zz > 0, 1.0, -1.0) * latent_abs_max(tiny_cfg)
    with torch.no_grad():
        assert torch.isfinite(tiny_model.decode(check_latent(edge, tiny_cfg), 17, 31)).all()
    for big in (latent_abs_max(tiny_cfg) * 1.01, 1e30, -3.0e38):
        z = zz.clone()
        z[1, 2, 3, 4] = big
        with pytest.raises(ValueError, match=re.escape(f"latent magnitude {abs(big):.4g} exceeds")):
            check_latent(z, tiny_cfg)
        with pytest.raises(ValueError, match="latent magnitude"):
            tiny_model.decode(z, 16, 16)
    fp16_edge = latent_abs_max(tiny_cfg, torch.float16)
    check_latent(zz.clamp(-1, 1) * fp16_edge * 0.999, tiny_cfg, torch.float16)
    with pytest.raises(ValueError, match="in float16"):
        check_latent(zz.clamp(-1, 1) * fp16_edge * 1.1, tiny_cfg, torch.float16)


def test_check_output(zz):
    assert check_output(zz) is zz
    for v in (float("nan"), float("inf")):
        x = zz.clone()
        x[0, 1, 2, 3] = v
        with pytest.raises(ValueError, match=r"decode produced 1 non-finite value\(s\) of 240"):
            check_output(x)
    with pytest.raises(ValueError, match="encode produced"):
        check_output(torch.full((1, 4, 2, 2), float("nan"), dtype=torch.float16), "encode")


# ----------------------------------------------------------------------------- images for encode
def test_good_images(tiny_model, tiny_cfg):
    torch.manual_seed(6)
    x = torch.rand(2, 3, 40, 24) * 2 - 1
    assert torch.equal(check_image(x, tiny_cfg), x)
    assert check_image(x[0], tiny_cfg).shape == (1, 3, 40, 24)
    assert torch.equal(check_image(x.numpy().astype(">f8"), tiny_cfg), x)
    assert check_image(x.half(), tiny_cfg).dtype == torch.float32
    assert check_image(torch.ones(1, 3, 8, 9) * 1.0005, tiny_cfg).shape == (1, 3, 8, 9)  # within tolerance
    with torch.no_grad():
        z = tiny_model.encode(check_image(x, tiny_cfg))
    assert z.shape == (2, 4, 5, 3) and torch.isfinite(z).all()


@pytest.mark.parametrize("image, exc, match", [
    (torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8), TypeError, r"uint8.*image / 127\.5 - 1"),
    (np.zeros((1, 3, 16, 16), dtype=np.uint8), TypeError, "floating array.*uint8"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.int32), TypeError, "int32"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.bool), TypeError, "bool"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.complex64), TypeError, "complex64"),
    (torch.full((1, 3, 16, 16), 255.0), ValueError, r"\[-1, 1\], got 255\.\.255"),
    (torch.full((1, 3, 16, 16), -1.5), ValueError, r"-1\.5"),
    (torch.zeros(1, 3, 16, 16).index_fill_(2, torch.tensor([3]), float("nan")), ValueError, "non-finite"),
    (torch.zeros(1, 3, 1, 1), ValueError, r"sides must be 8\.\.2048 pixels.*1x1"),
    (torch.zeros(1, 3, 7, 64), ValueError, "7x64"),
    (torch.zeros(1, 3, 16, 2049), ValueError, "16x2049"),
    (torch.zeros(0, 3, 16, 16), ValueError, "empty"),
    (torch.zeros(16, 16, 3), ValueError, r"permute\(2, 0, 1\)"),
    (torch.zeros(2, 16, 16, 3), ValueError, r"permute\(0, 3, 1, 2\)"),
    (torch.zeros(1, 4, 16, 16), ValueError, r"\(B, 3, H, W\).*\(1, 4, 16, 16\)"),
    (torch.zeros(16, 16), ValueError, r"\(16, 16\)"),
    (torch.zeros(1, 3, 16, 16, device="meta"), ValueError, "meta"),
    ("photo.png", TypeError, "str"),
])
def test_bad_images_are_named(tiny_cfg, image, exc, match):
    with pytest.raises(exc, match=match):
        check_image(image, tiny_cfg)


# ----------------------------------------------------------------------------- files
from infgen.runtime import io as rio  # noqa: E402


def _npy_with_header(path, shape, dtype="<f4", data=b""):
    """A .npy file whose header claims `shape` but holds only `data`."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return path


def test_npy_header_claiming_huge_array_fails_at_once(tmp_path, monkeypatch):
    p = _npy_with_header(tmp_path / "bomb.npy", (1, 4, 100_000, 100_000), data=b"\0" * 64)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reached"))
    with pytest.raises(ValueError, match=r"bomb\.npy.*shape \(1, 4, 100000, 100000\).*160,000,000,000 bytes"):
        rio.load_latent(p)
    small = _npy_with_header(tmp_path / "short.npy", (1, 4, 8, 8), data=b"\0" * 64)
    with pytest.raises(ValueError, match=r"1,024 bytes\) but the file holds 64"):
        rio.load_latent(small)
    obj = _npy_with_header(tmp_path / "obj.npy", (2,), dtype="|O", data=b"\0" * 16)
    with pytest.raises(ValueError, match="plain numeric"):
        rio.load_latent(obj)


def test_latent_file_limits(tmp_path):
    z = torch.randn(1, 4, 8, 8)
    for name in ("z.npy", "z.pt", "z.safetensors"):
        rio.save_latent(z, tmp_path / name)
        assert torch.equal(rio.load_latent(tmp_path / name), z)
        with pytest.raises(ValueError, match="limit"):
            rio.load_latent(tmp_path / name, max_bytes=100)
    rio.save_latent(z.numpy().astype(">f4"), tmp_path / "be.npy")
    assert torch.equal(rio.load_latent(tmp_path / "be.npy").float(), z)
    np.save(tmp_path / "written_be.npy", z.numpy().astype(">f4"))  # a big-endian file from elsewhere
    assert torch.equal(rio.load_latent(tmp_path / "written_be.npy"), z)
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        rio.load_latent(tmp_path / "dir.npy")


def test_torch_zip_unpacking_past_the_limit_is_refused(tmp_path):
    p = tmp_path / "zip.pt"
    torch.save(torch.zeros(1, 4, 64, 64), p)  # 64 KiB of zeros: stored uncompressed by torch
    with pytest.raises(ValueError, match=r"unpacks to [\d,]+ bytes, more than the limit of 1,000"):
        rio.load_latent(p, max_bytes=1000)


def test_image_pixel_limit_and_decompression_bomb(tmp_path, monkeypatch):
    from PIL import Image, ImageFile
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(p)
    assert rio.load_image(p).shape == (1, 3, 200, 300)
    with pytest.raises(ValueError, match=r"300x200 \(WxH\) = 60,000 pixels; images may have 1\.\.59,999"):
        rio.load_image(p, max_pixels=59_999)
    # PNGs whose headers claim 9000 x 9000 (past our limit, under Pillow's) and 50000 x 50000
    # (past Pillow's bomb limit as well) in a few bytes: refused from the header, no pixel decoded.
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(ValueError, match=r"9000x9000 \(WxH\) = 81,000,000 pixels"):
        rio.load_image(_png_header(tmp_path / "b9.png", 9000, 9000))
    bomb = _png_header(tmp_path / "b50.png", 50_000, 50_000)
    with pytest.raises(ValueError, match="decompression bomb"):
        rio.load_image(bomb, max_pixels=10 ** 10)  # past our limit, Pillow's own check holds
    with pytest.raises(ValueError, match="b50.png"):
        rio.load_image(bomb)


def _png_header(path, w, h):
    """A PNG of w x h (1-bit grey) with a header and an empty IDAT: what a bomb's first bytes say."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def test_image_file_that_is_not_png_or_jpeg(tmp_path):
    from PIL import Image
    p = tmp_path / "gif.png"
    Image.new("RGB", (9, 9)).save(p, format="GIF")
    with pytest.raises(ValueError, match="not a readable PNG or JPEG"):
        rio.load_image(p)
    (tmp_path / "trunc.png").write_bytes((tmp_path / "gif.png").read_bytes()[:20])
    with pytest.raises(ValueError, match="trunc.png"):
        rio.load_image(tmp_path / "trunc.png")


def test_save_image_shapes_and_errors(tmp_path):
    from PIL import Image
    torch.manual_seed(7)
    x = torch.rand(3, 10, 14) * 2 - 1
    (p,) = rio.save_image(x, tmp_path / "one.png")
    back = np.asarray(Image.open(p))
    assert back.shape == (10, 14, 3) and np.array_equal(back, rio.image_to_uint8(x)[0])
    assert [q.name for q in rio.save_image(torch.stack([x, -x]), tmp_path / "b.jpg")] == ["b_0.jpg", "b_1.jpg"]
    assert rio.image_to_uint8(x.numpy().astype(">f4")).shape == (1, 10, 14, 3)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        rio.save_image(bad, tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\) or \(3, h, w\), got \(10, 14\)"):
        rio.save_image(x[0], tmp_path / "2d.png")
    with pytest.raises(TypeError, match="uint8"):
        rio.save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "u8.png")
    with pytest.raises(ValueError, match="must end in"):
        rio.save_image(x, tmp_path / "x.bmp")
    with pytest.raises(ValueError, match="does not exist"):
        rio.save_image(x, tmp_path / "no" / "such" / "x.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        rio.save_image(x, tmp_path / "d.png")


def test_check_writable(tmp_path):
    assert rio.check_writable(tmp_path / "a.png", (".png",)) == tmp_path / "a.png"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="does not exist"):
        rio.check_writable(tmp_path / "file" / "a.png")
    with pytest.raises(TypeError, match="int"):
        rio.check_writable(3)
    with pytest.raises(ValueError, match="must end in"):
        rio.save_latent(torch.zeros(4, 2, 2), tmp_path / "z.txt")


# ----------------------------------------------------------------------------- through the engine
def test_engine_refuses_before_work_then_serves(tmp_path, tiny_model, zz, monkeypatch):
    from infgen.runtime.engine import InfGenEngine
    d = save_checkpoint(tiny_model, tmp_path / "{ckpt")
    engine = InfGenEngine(str(d))
    ok = engine.decode(zz, 24, 16)
    with monkeypatch.context() as m:  # no layer runs for a refused request
        m.setattr(torch.nn.Conv2d, "forward", lambda *a: pytest.fail("decode started"))
        for bad in (zz * 1e30, torch.full((1, 4, 300, 300), 0.5)):
            with pytest.raises(ValueError, match="latent"):
                engine.decode(bad, 24, 16)
    assert torch.equal(engine.decode(zz, 24, 16), ok)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["scaling_factor"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="scaling_factor"):
        InfGenEngine(str(d))
