"""InfGenVAE (runtime/diffusers_vae.py) in diffusers pipelines, on the CPU, with tiny random components.

The engine is the bundled demo checkpoint: its scaling factor (1.6) is far from 1, so a latent
scaled twice or not at all decodes to a visibly different image."""
import importlib.util
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from infgen.ref import DEMO_CHECKPOINT
from infgen.runtime.diffusers_vae import InfGenVAE, diffusers_api
from infgen.runtime.engine import InfGenEngine

# diffusers' classes are imported where they are used, not here: importing them takes about 3 s, which
# every pytest-xdist worker would pay at collection, and only the one running this file needs them.
if importlib.util.find_spec("diffusers") is None:
    pytest.skip("needs diffusers (the .[test] extra)", allow_module_level=True)


@pytest.fixture(scope="module")
def engine():
    return InfGenEngine(str(DEMO_CHECKPOINT))


@pytest.fixture(scope="module")
def z():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 7, 9, generator=g)  # scaled latents, odd non-square grid


class LatentRecorder(torch.nn.Module):
    """A stand-in vae with scaling factor 1: the pipeline hands it its final latent unchanged,
    which is what output_type="latent" returns in pipelines that have it (DiTPipeline has not)."""

    device = torch.device("cpu")

    def __init__(self):
        from diffusers.configuration_utils import FrozenDict
        super().__init__()
        self.config = FrozenDict(scaling_factor=1.0)

    def decode(self, latents, return_dict=True):
        from diffusers.models.autoencoders.vae import DecoderOutput
        self.latents = latents.clone()
        return DecoderOutput(sample=torch.zeros(latents.shape[0], 3, 8, 8))


@pytest.fixture(scope="module")
def dit_pipe():
    """Class-conditional DiT with a one-layer random transformer on an 8x8 latent, DDIM scheduler."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000).eval()
    pipe = DiTPipeline(transformer=transformer, vae=LatentRecorder(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_dit(pipe, vae, **kw):
    pipe.vae = vae
    return pipe(class_labels=[1, 7], num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kw).images


@pytest.fixture(scope="module")
def dit_latents(dit_pipe):
    recorder = LatentRecorder()
    run_dit(dit_pipe, recorder, output_type="pt")
    return recorder.latents  # (2, 4, 8, 8), scaled


def to_pil_like_pipeline(image: torch.Tensor) -> np.ndarray:
    """The DiT pipeline's post-processing of a (B, 3, h, w) [-1, 1] decode -> (B, h, w, 3) uint8."""
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline
    x = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return np.stack([np.asarray(im) for im in DiffusionPipeline.numpy_to_pil(x)])


# ----------------------------------------------------------------------------- pipelines
def test_dit_pipeline_renders_requested_size_equal_to_engine_decode(dit_pipe, dit_latents, engine):
    images = run_dit(dit_pipe, InfGenVAE(engine, size=(72, 100)))
    assert [im.size for im in images] == [(100, 72)] * 2  # PIL sizes are (width, height)
    got = np.stack([np.asarray(im) for im in images]).astype(int)
    direct = engine.decode(dit_latents, 72, 100)
    # Equal up to float32 rounding of the pipeline's 1/scaling_factor and the adapter's undoing of it:
    # the float images agree to 1e-5, so a uint8 pixel can at most flip by one level at a .5 boundary.
    pt = run_dit(dit_pipe, InfGenVAE(engine, size=(72, 100)), output_type="pt")
    assert torch.allclose(pt, (direct / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    diff = np.abs(got - to_pil_like_pipeline(direct))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.abs(got - engine.to_uint8(direct)).max() <= 1  # the engine's own uint8 conversion


def test_dit_pipeline_scale_and_per_call_override(dit_pipe, dit_latents, engine):
    vae = InfGenVAE(engine, scale=1.5)  # 8x8 latent, native 64x64 -> 96x96
    with vae.at(size=(40, 24)):
        images = run_dit(dit_pipe, vae)
    assert images[0].size == (24, 40)
    assert vae.size is None and vae.scale == 1.5  # restored after the block
    pt = run_dit(dit_pipe, vae, output_type="pt")
    assert pt.shape == (2, 3, 96, 96)
    assert torch.allclose(pt, (engine.decode(dit_latents, 96, 96) / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)


def test_pipeline_sees_the_adapter_as_a_component(dit_pipe, engine):
    vae = InfGenVAE(engine)
    dit_pipe.vae = vae
    assert dit_pipe.components["vae"] is vae
    assert dit_pipe.config.vae == ("infgen.runtime.diffusers_vae", "InfGenVAE")
    assert dit_pipe.device == torch.device("cpu")
    assert dit_pipe.to("cpu") is dit_pipe  # pipe.to reaches vae.to(device, dtype) and passes


# ----------------------------------------------------------------------------- scaling and types
def test_no_double_scaling(engine, z):
    vae = InfGenVAE(engine, size=(30, 50))
    sf = vae.config.scaling_factor
    out = vae.decode(z / sf).sample  # what a pipeline passes
    assert torch.allclose(out, engine.decode(z, 30, 50), atol=1e-5, rtol=0)
    assert not torch.allclose(out, engine.decode(z / sf, 30, 50), atol=1e-2), "scaling must matter here"


def test_config_is_autoencoderkl_like(engine):
    cfg = InfGenVAE(engine).config
    shipped = json.loads((DEMO_CHECKPOINT / "config.json").read_text())["scaling_factor"]
    assert cfg.scaling_factor == engine.config.scaling_factor == pytest.approx(shipped)
    assert cfg["scaling_factor"] == cfg.scaling_factor  # dict and attribute access, as FrozenDict gives
    assert cfg.shift_factor is None and cfg.latents_mean is None and cfg.latents_std is None
    assert cfg.force_upcast is False
    assert cfg.latent_channels == 4 and list(cfg.block_out_channels) == list(engine.config.block_out_channels)
    assert 2 ** (len(cfg.block_out_channels) - 1) == engine.config.upscale  # pipelines' vae_scale_factor


@pytest.fixture(scope="module")
def tiny_kl():
    """A random AutoencoderKL with 4 blocks (8x upscale), the reference for return types."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()


def test_decode_returns_autoencoderkl_types(engine, tiny_kl, z):
    from diffusers.models.autoencoders.vae import DecoderOutput
    vae = InfGenVAE(engine)  # scale 1: the native size, as AutoencoderKL decodes
    with torch.no_grad():
        ref, ref_t = tiny_kl.decode(z), tiny_kl.decode(z, return_dict=False)
    out, out_t = vae.decode(z), vae.decode(z, return_dict=False)
    assert type(out) is type(ref) is DecoderOutput
    assert type(out_t) is type(ref_t) is tuple and len(out_t) == len(ref_t) == 1
    assert out.sample.shape == ref.sample.shape == (2, 3, 56, 72)
    assert out.sample.dtype == ref.sample.dtype == torch.float32
    assert torch.equal(out_t[0], out.sample)
    assert out[0] is out.sample  # BaseOutput indexing, as pipelines use `.decode(...)[0]`


def test_encode_returns_autoencoderkl_types(engine, tiny_kl):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    vae = InfGenVAE(engine)
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = tiny_kl.encode(x)
    out = vae.encode(x)
    (dist,) = vae.encode(x, return_dict=False)
    assert type(out) is type(ref) is AutoencoderKLOutput
    assert type(out.latent_dist) is type(ref.latent_dist) is DiagonalGaussianDistribution
    assert type(dist) is DiagonalGaussianDistribution
    assert out.latent_dist.mode().shape == ref.latent_dist.mode().shape == (2, 4, 5, 7)
    sample = out.latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert sample.shape == ref.latent_dist.sample(generator=torch.Generator().manual_seed(0)).shape
    assert torch.equal(sample, out.latent_dist.mode())  # the engine's encoder gives the mean only
    # pipelines multiply by scaling_factor: that gives back the engine's scaled latent
    assert torch.allclose(out.latent_dist.mode() * vae.config.scaling_factor, engine.encode(x), atol=1e-5, rtol=0)


def test_forward_encodes_then_decodes(engine):
    vae = InfGenVAE(engine, size=(24, 32))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = vae(x).sample
    assert out.shape == (1, 3, 24, 32)
    assert torch.allclose(out, engine.decode(engine.encode(x), 24, 32), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- switches, device, dtype
def test_slicing_gives_the_same_images_and_tiling_is_unused(engine, z):
    vae = InfGenVAE(engine, size=(20, 36))
    whole = vae.decode(z).sample
    vae.enable_slicing()
    assert vae.use_slicing
    assert torch.allclose(vae.decode(z).sample, whole, atol=1e-5, rtol=0)
    vae.disable_slicing()
    with pytest.warns(UserWarning, match="tiling is unnecessary"):
        vae.enable_tiling()
    assert vae.use_tiling
    assert torch.equal(vae.decode(z).sample, whole)
    vae.disable_tiling()
    assert not vae.use_tiling


def test_device_dtype_and_to(engine):
    vae = InfGenVAE(engine)
    assert vae.device == engine.device and vae.dtype == engine.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert vae.to("cpu") is vae and vae.to(None, None) is vae and vae.to(torch.float32) is vae
    with pytest.warns(UserWarning, match="ignored"):
        assert vae.to(torch.float16) is vae
    assert vae.dtype == torch.float32
    with pytest.raises(ValueError, match="meta"):
        vae.to("meta")


# ----------------------------------------------------------------------------- bad input
def engine_error(engine, h, w):
    with pytest.raises((ValueError, TypeError)) as info:
        engine.decode(torch.zeros(1, 4, 4, 4), h, w)
    return info.type, str(info.value)


@pytest.mark.parametrize("size", [(0, 64), (64, 9000), (64.0, 64), (64, "64")])
def test_bad_size_gets_the_engine_error(engine, size):
    kind, message = engine_error(engine, *size)
    with pytest.raises(kind) as info:
        InfGenVAE(engine, size=size)
    assert str(info.value) == message
    vae = InfGenVAE(engine)
    with pytest.raises(kind):
        vae.size = size
    with pytest.raises(kind):
        with vae.at(size=size):
            pass
    assert vae.scale == 1.0 and vae.size is None  # a refused size leaves the adapter as it was


def test_scale_too_large_gets_the_engine_error_at_decode(engine, z):
    vae = InfGenVAE(engine, scale=160.0)  # 7x9 latent -> 8960x11520, past the demo's max_size 8192
    kind, message = engine_error(engine, 8960, 11520)
    with pytest.raises(kind) as info:
        vae.decode(z)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs, kind, match", [
    (dict(size=(64, 64), scale=2), ValueError, "not both"),
    (dict(scale=0), ValueError, "scale must be a finite number > 0, got 0"),
    (dict(scale=float("nan")), ValueError, "got nan"),
    (dict(scale="2"), TypeError, "scale must be a number, got str"),
    (dict(scale=True), TypeError, "got bool"),
    (dict(size="1920x1080"), TypeError, "size must be \\(height, width\\)"),
    (dict(size=(1, 2, 3)), TypeError, "size must be"),
])
def test_bad_target_raises_naming_it(engine, kwargs, kind, match):
    with pytest.raises(kind, match=match):
        InfGenVAE(engine, **kwargs)


def test_bad_latent_and_engine(engine):
    vae = InfGenVAE(engine)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\), got \(4, 8, 8\)"):
        vae.decode(torch.zeros(4, 8, 8))
    with pytest.raises(TypeError, match="numpy|ndarray"):
        vae.decode(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="channels"):  # the engine's check: a 16-channel (SD3/Flux) latent
        vae.decode(torch.zeros(1, 16, 8, 8))
    with pytest.raises(TypeError, match="InfGenEngine"):
        InfGenVAE("demo")


def test_runtime_does_not_import_diffusers():
    code = "import sys, runtime, infgen.runtime.diffusers_vae; print('diffusers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", (proc.stdout, proc.stderr[-2000:])


def test_missing_diffusers_names_the_extra(engine, monkeypatch):
    diffusers_api.cache_clear()
    monkeypatch.setitem(sys.modules, "diffusers.configuration_utils", None)
    try:
        with pytest.raises(ImportError, match=r"\.\[diffusers\]"):
            InfGenVAE(engine)
    finally:
        diffusers_api.cache_clear()


# ----------------------------------------------------------------------------- SDXL (needs transformers)
@pytest.fixture(scope="module")
def sdxl_parts():
    """Tiny random SDXL components built from configs (no hub): a 2-block UNet with SDXL's text_time
    conditioning, two 1-layer CLIP text encoders, and a CLIP tokenizer over single ASCII characters."""
    # transformers >= 5 builds a CLIPTokenizer from an in-memory vocabulary (no files, no hub)
    transformers = pytest.importorskip("transformers", minversion="5", reason="SDXL pipelines need transformers")
    from diffusers import DDIMScheduler, UNet2DConditionModel

    chars = [chr(i) for i in range(33, 127)]  # printable ASCII: its own byte-level symbols, no merges
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(chars)},
             **{c + "</w>": 2 + len(chars) + i for i, c in enumerate(chars)}}
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text_cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                           hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                           num_hidden_layers=1, projection_dim=8, max_position_embeddings=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1), use_linear_projection=True,
        cross_attention_dim=16, norm_num_groups=4,  # 16 = both encoders' hidden sizes, concatenated
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 8)  # 6 size/crop ids x 4 + the pooled embedding
    return dict(unet=unet.eval(), text_encoder=transformers.CLIPTextModel(text_cfg).eval(),
                text_encoder_2=transformers.CLIPTextModelWithProjection(text_cfg).eval(),
                tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=DDIMScheduler())


def sdxl_run(pipe, **kw):
    return pipe("a red fox", num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kw).images


def test_sdxl_pipeline_renders_requested_size_equal_to_engine_decode(sdxl_parts, engine):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=InfGenVAE(engine, size=(80, 120)), **sdxl_parts)
    pipe.set_progress_bar_config(disable=True)
    latents = sdxl_run(pipe, height=64, width=64, output_type="latent")  # (1, 4, 8, 8), scaled
    images = sdxl_run(pipe, height=64, width=64)
    assert latents.shape == (1, 4, 8, 8) and images[0].size == (120, 80)
    diff = np.abs(np.asarray(images[0]).astype(int) - engine.to_uint8(engine.decode(latents, 80, 120))[0])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float32 rounding of 1/scaling_factor, as for DiT


def test_sdxl_img2img_encodes_and_decodes_through_the_engine(sdxl_parts, engine):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    pipe = StableDiffusionXLImg2ImgPipeline(vae=InfGenVAE(engine, scale=2), **sdxl_parts)
    pipe.set_progress_bar_config(disable=True)
    photo = Image.open(DEMO_CHECKPOINT / "coffee.jpg").convert("RGB").resize((64, 48))
    latents = sdxl_run(pipe, image=photo, strength=0.5, output_type="latent")
    images = sdxl_run(pipe, image=photo, strength=0.5)
    assert latents.shape == (1, 4, 6, 8) and images[0].size == (128, 96)  # encoded at 64x48, decoded at 2x
    diff = np.abs(np.asarray(images[0]).astype(int) - engine.to_uint8(engine.decode(latents, 96, 128))[0])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_sdxl_refiner_style_latent_input_never_encodes(sdxl_parts, engine):
    """A refiner takes the base's output_type="latent" result as `image` and only decodes."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    class DecodeOnly(InfGenVAE):
        def encode(self, x, return_dict=True):
            raise AssertionError("a 4-channel image is a latent: the pipeline must not encode it")

    pipe = StableDiffusionXLImg2ImgPipeline(vae=DecodeOnly(engine, size=(64, 96)), **sdxl_parts)
    pipe.set_progress_bar_config(disable=True)
    base = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))  # a base pipeline's scaled latent
    latents = sdxl_run(pipe, image=base, strength=0.5, output_type="latent")
    images = sdxl_run(pipe, image=base, strength=0.5)
    assert images[0].size == (96, 64)
    diff = np.abs(np.asarray(images[0]).astype(int) - engine.to_uint8(engine.decode(latents, 64, 96))[0])
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
