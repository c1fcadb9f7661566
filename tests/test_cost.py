"""Cost model: docs/design.md's table for the paper preset, and torch's FlopCounterMode as the oracle."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from infgen.ref.config import preset
from infgen.ref.cost import H100_BF16_FLOPS, STAGES, decode_flops, floor_seconds
from infgen.ref.decode import mask_and_q0
from infgen.ref.model import InfGen, token_grid
from infgen.runtime.torch_backend import TorchBackend

# docs/design.md, "Cost model": output side -> TFLOP (total, up-block convs, cross-attention blocks,
# VAE-decoder part) and the H100 floor in ms (the table rounds it to two or three digits).
TABLE = {1024: (12.3, 9.6, 1.8, 10.5, 16), 2048: (55.7, 38.3, 7.2, 48.5, 70), 4096: (328, 153, 28.6, 299.5, 415)}


def _within(x, ref, tol):
    return abs(x - ref) <= tol * abs(ref)


@pytest.mark.parametrize("side", sorted(TABLE))
def test_paper_preset_matches_design_table(side):
    total, up, cross, vae, floor_ms = TABLE[side]
    f = {k: v / 1e12 for k, v in decode_flops(preset("paper"), side, side).items()}
    assert _within(f["total"], total, 0.02), f
    assert _within(f["up_blocks"], up, 0.02), f
    assert _within(f["cross_attn"], cross, 0.02), f
    assert _within(f["mid_block"] + f["up_blocks"], vae, 0.02), f  # the SDXL VAE decoder's share
    assert _within(1e3 * floor_seconds(f["total"] * 1e12), floor_ms, 0.03)


def test_stages_sum_to_total_and_batch_scales(tiny_model):
    """Per-image work scales with the batch; the two INPEs (mask and latent tokens) and the first
    block's queries of the mask tokens depend on the sizes only: once per decode, whatever the batch."""
    cfg = tiny_model.config
    f1 = decode_flops(cfg, 72, 40, latent_hw=(8, 8))
    f3 = decode_flops(cfg, 72, 40, latent_hw=(8, 8), batch=3)
    for f in (f1, f3):
        assert f["total"] == sum(f[k] for k in STAGES)
    assert (f3["mid_block"], f3["up_blocks"]) == (3 * f1["mid_block"], 3 * f1["up_blocks"])
    once = _count(lambda: (mask_and_q0(tiny_model, *token_grid(72, 40, cfg)), tiny_model.decoder.latent_pos(8, 8)))
    assert once > 0 and f3["tokens"] + f3["cross_attn"] == 3 * (f1["tokens"] + f1["cross_attn"]) - 2 * once
    assert floor_seconds(H100_BF16_FLOPS) == 1.0


def test_bad_arguments_name_the_value():
    cfg = preset("tiny")
    for kwargs, match in ((dict(h=0, w=64), "height .* 0"), (dict(h=64, w=64.0), "width .* 64.0"),
                          (dict(h=64, w=64, batch=True), "batch .* True"),
                          (dict(h=64, w=64, latent_hw=(8, -1)), "latent width .* -1")):
        with pytest.raises(ValueError, match=match):
            decode_flops(cfg, **kwargs)


def _count(fn, *args):
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn(*args)
    return fc.get_total_flops()


@pytest.mark.parametrize("h,w,grid", [(64, 64, 16), (72, 40, 8), (17, 129, 5)])
def test_tiny_decode_matches_flop_counter_per_stage(tiny_model, h, w, grid):
    """FlopCounterMode on the CPU counts attention only through the math SDPA path (matmuls)."""
    cfg = tiny_model.config
    Hp, Wp = token_grid(h, w, cfg)
    backend = TorchBackend(tiny_model, torch.device("cpu"), torch.float32)
    backend.tokens.clear()
    z = torch.randn(1, 4, grid, grid)
    expect = decode_flops(cfg, h, w, latent_hw=(grid, grid))
    counted = {}
    x = z
    # The mask tokens and the first queries are counted with the tokens stage (they are cached
    # by the engine, but the cost model counts them once per decode).
    with sdpa_kernel(SDPBackend.MATH):
        counted["tokens+cross_attn"] = _count(lambda: backend.mask_and_q0(Hp, Wp))
        for name, fn in backend.stages(Hp, Wp):
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                x = fn(x)
            counted[name] = counted.get(name, 0) + fc.get_total_flops()
        total = _count(tiny_model.decode, z, h, w)
    assert counted["tokens+cross_attn"] == expect["tokens"] + expect["cross_attn"]
    assert counted["mid_block"] == expect["mid_block"]
    assert counted["up_blocks"] == expect["up_blocks"]
    assert total == expect["total"]


@pytest.mark.parametrize("side", [1024, 4096])
def test_paper_model_on_meta_matches_flop_counter(side):
    """The paper-size model on the meta device: shapes only, so even 4096^2 costs nothing."""
    cfg = preset("paper")
    with torch.device("meta"):
        model = InfGen(cfg)
    z = torch.empty(1, 4, 64, 64, device="meta")
    Hp, Wp = token_grid(side, side, cfg)
    assert _count(model.decode_grid, z, Hp, Wp) == decode_flops(cfg, side, side)["total"]


@pytest.mark.parametrize("side", [1024, 2048])
def test_vae_part_matches_diffusers_sdxl_decoder(side):
    """docs/design.md: the VAE-decoder part equals FlopCounterMode on diffusers' SDXL-config decoder."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers' SDXL decoder is the oracle")
    with torch.device("meta"):
        vae = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
    z = torch.empty(1, 4, side // 8, side // 8, device="meta")
    counted = _count(lambda t: vae.decoder(vae.post_quant_conv(t)), z)
    f = decode_flops(preset("paper"), side, side)
    assert counted == pytest.approx(f["mid_block"] + f["up_blocks"], rel=2e-3)  # + diffusers' conv_in


def test_up_block_traffic_by_hand():
    """Two up blocks (16 then 8 channels), one resnet + 1 per block, a 4x4 token grid, fp32; convs
    past 512 elements banded: the second block's 16-channel convs and the upsampler's conv."""
    from infgen.ref.config import InfGenConfig
    from infgen.ref.cost import up_block_traffic
    cfg = InfGenConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, num_heads=2,
                       num_blocks=1, inpe_fourier_dim=4)
    U0, V, U1 = 16 * 16 * 4, 16 * 64 * 4, 8 * 64 * 4  # 16 ch at 4x4; 16 ch at 8x8; 8 ch at 8x8 (bytes)
    fused = dict(gn_stats=2 * U0 + U1,                              # norm2 of block 0's resnets, of block 1's resnet 1
                 gn_apply=4 * 2 * U0 + 2 * V + 4 * 2 * U1,          # 4 norms in block 0; block 1: norm1 of 16 ch, 3 of 8 ch, conv_norm_out
                 residual_add=2 * 3 * U0 + 2 * 3 * U1,
                 upsample=U0 + 4 * U0,
                 band_copy=2 * V + 2 * U1 + 2 * U1)                 # upsampler's conv; block 1 resnet 0's conv1 and shortcut
    before = dict(fused, gn_stats=4 * U0 + V + 4 * U1)              # every GroupNorm takes its own statistics
    for want, f in ((fused, True), (before, False)):
        got = up_block_traffic(cfg, 8, 8, batch=1, itemsize=4, fused=f, max_elems=512)
        assert got == dict(want, total=sum(want.values())), (f, got)
    assert up_block_traffic(cfg, 8, 8, batch=3, itemsize=2, fused=True, max_elems=512)["gn_apply"] == 3 * fused["gn_apply"] // 2


def test_up_block_traffic_paper_4096_is_design_figure():
    """docs/design.md: about 330 GiB outside the convs at 4096^2 before the fusions."""
    from infgen.ref.cost import up_block_traffic
    before = up_block_traffic(preset("paper"), 4096, 4096, fused=False)["total"] / 2**30
    after = up_block_traffic(preset("paper"), 4096, 4096, fused=True)["total"] / 2**30
    assert 325 < before < 335 and after < before - 40, (before, after)
