"""Weights: diffusers' AutoencoderKL as the oracle for the shared layers; InfGen checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from infgen.ref.config import InfGenConfig
from infgen.ref.decode import TORCH_OPS, mid_block, up_blocks
from infgen.ref.model import InfGen
from infgen.ref.weights import (NEW_PREFIXES, CheckpointError, load_checkpoint, load_sdxl_vae,
                                save_checkpoint)

from conftest import rel_err

diffusers = pytest.importorskip("diffusers", reason="diffusers is the oracle for the SDXL VAE layers")


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory, tiny_cfg):
    """A randomly initialised diffusers AutoencoderKL with the tiny preset's SDXL-like config, saved."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=tiny_cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tiny_cfg.block_out_channels, layers_per_block=tiny_cfg.layers_per_block,
        norm_num_groups=tiny_cfg.norm_num_groups, sample_size=64,
        scaling_factor=tiny_cfg.scaling_factor).eval()
    d = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(d, safe_serialization=True)
    return vae, d / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def loaded(vae_file, tiny_cfg):
    torch.manual_seed(1)
    return load_sdxl_vae(InfGen(tiny_cfg).eval(), vae_file[1])


@pytest.mark.parametrize("shape", [(2, 3, 64, 48), (1, 3, 70, 50)])
def test_encode_equals_diffusers(vae_file, loaded, shape):
    vae = vae_file[0]
    torch.manual_seed(2)
    x = torch.rand(*shape) * 2 - 1
    with torch.no_grad():
        ours = loaded.encode(x)
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-5


def test_decoder_tail_equals_diffusers(vae_file, loaded):
    """mid_block -> up_blocks -> conv_norm_out -> SiLU -> conv_out on one feature map."""
    dec = vae_file[0].decoder
    torch.manual_seed(3)
    f = torch.randn(2, loaded.config.token_dim, 5, 7)
    with torch.no_grad():
        ours = up_blocks(TORCH_OPS, loaded, mid_block(TORCH_OPS, loaded, f))
        x = dec.mid_block(f)
        for b in dec.up_blocks:
            x = b(x)
        ref = dec.conv_out(dec.conv_act(dec.conv_norm_out(x)))
    assert ours.shape == ref.shape == (2, 3, 40, 56)
    assert rel_err(ours, ref) <= 1e-5


def test_decoder_head_equals_diffusers(vae_file, loaded):
    """post_quant_conv and decoder.conv_in: the other shared layers of the decode path."""
    vae = vae_file[0]
    torch.manual_seed(4)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ours = loaded.decoder.conv_in(loaded.post_quant_conv(z))
        ref = vae.decoder.conv_in(vae.post_quant_conv(z))
    assert rel_err(ours, ref) <= 1e-6


def test_new_layers_are_left_as_initialised(vae_file, tiny_cfg):
    torch.manual_seed(1)
    model = InfGen(tiny_cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(NEW_PREFIXES)}
    load_sdxl_vae(model, vae_file[1])
    after = model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def _legacy(state):
    """Older diffusers attention names and 1x1-conv-shaped attention weights."""
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in state.items():
        if ".attentions." in k:
            for new, old in names.items():
                if f".{new}." in k:
                    k = k.replace(f".{new}.", f".{old}.")
                    if k.endswith("weight"):
                        v = v[:, :, None, None].contiguous()
        out[k] = v
    return out


def test_legacy_attention_keys_load(vae_file, loaded, tiny_cfg, tmp_path):
    state = load_file(str(vae_file[1]))
    legacy = _legacy(state)
    assert any(".proj_attn." in k for k in legacy) and any(v.dim() == 4 and ".query." in k for k, v in legacy.items())
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(path))
    model = load_sdxl_vae(InfGen(tiny_cfg).eval(), path)
    ref = loaded.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith(NEW_PREFIXES):
            assert torch.equal(v, ref[k]), k


def test_bad_vae_keys_all_listed_in_one_error(vae_file, tiny_cfg, tmp_path):
    state = load_file(str(vae_file[1]))
    del state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["encoder.conv_in.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as info:
        load_sdxl_vae(InfGen(tiny_cfg), path)
    msg = str(info.value)
    assert "missing: decoder.conv_out.bias" in msg
    assert "unexpected: decoder.extra.weight" in msg
    assert "mis-shaped: encoder.conv_in.weight: file (1, 2, 3, 3)" in msg


def test_missing_vae_file(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.safetensors"):
        load_sdxl_vae(InfGen(tiny_cfg), tmp_path / "nothere.safetensors")


# ----------------------------------------------------------------------------- InfGen checkpoints
@pytest.fixture
def ckpt(tiny_model, tmp_path):
    return save_checkpoint(tiny_model, tmp_path / "ckpt")


def test_checkpoint_round_trip_identical_decode(tiny_model, ckpt):
    loaded = load_checkpoint(ckpt)
    assert loaded.config == tiny_model.config
    torch.manual_seed(5)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z, 40, 56), tiny_model.decode(z, 40, 56))
    with torch.no_grad():
        for k, v in tiny_model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k


def test_corrupt_checkpoint_file(ckpt):
    w = ckpt / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ckpt)
    w.write_bytes(b"\x00garbage" * 100)  # not safetensors at all
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ckpt)


def test_checkpoint_without_config_or_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(ckpt)


def test_checkpoint_with_bad_config_json(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text(json.dumps({"num_blocks": 2, "colour": "blue"}))
    with pytest.raises(CheckpointError, match="colour"):
        load_checkpoint(ckpt)


def test_checkpoint_config_not_matching_tensors(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    json.dump({**cfg, "num_blocks": 3}, open(ckpt / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"missing: decoder\.blocks\.2\."):
        load_checkpoint(ckpt)
    json.dump({**cfg, "mlp_ratio": 2.0}, open(ckpt / "config.json", "w"))
    shape_msg = r"mis-shaped: decoder\.blocks\.0\.fc1\.bias: file \(256,\) vs model \(128,\)"
    with pytest.raises(CheckpointError, match=shape_msg):
        load_checkpoint(ckpt)
    json.dump({**cfg, "num_blocks": 1}, open(ckpt / "config.json", "w"))
    with pytest.raises(CheckpointError, match=r"unexpected: decoder\.blocks\.1\."):
        load_checkpoint(ckpt)


def test_config_json_round_trip(tiny_cfg):
    assert InfGenConfig.from_json(tiny_cfg.to_json()) == tiny_cfg
