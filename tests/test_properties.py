"""Property tests (#18 item 5): over the config loader and the public decode/encode API, every
draw either returns a finite, correctly shaped result or raises ValueError/TypeError, in bounded
time. Tiny preset, small sizes; max_examples keeps the whole file under a minute on 2 cores."""
import json
import math

import numpy as np
import pytest
import torch

from infgen.ref.config import MAX_PARAMS, InfGenConfig, param_count
from infgen.ref.model import InfGen, check_image
from infgen.runtime.engine import InfGenEngine

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

# deadline: bounded time per draw, generous for a loaded 2-core machine (typical draws take ms)
SETTINGS = dict(deadline=30_000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.function_scoped_fixture])
USER_ERRORS = (ValueError, TypeError)

# ----------------------------------------------------------------------------- config loader
junk = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
                 st.integers(-10, 10), st.lists(st.integers(-2, 3), max_size=3),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
small_int = lambda lo, hi: st.one_of(st.integers(lo, hi), junk)  # noqa: E731
FIELDS = {
    "in_channels": small_int(1, 4),
    "latent_channels": small_int(0, 8),
    "block_out_channels": st.one_of(st.lists(st.sampled_from([0, 4, 8, 12, 16, 24, 32, 2 ** 20, -8]), max_size=5),
                                    st.lists(st.floats(1, 64), min_size=1, max_size=3), junk),
    "layers_per_block": small_int(0, 3),
    "norm_num_groups": small_int(0, 8),
    "norm_eps": st.one_of(st.floats(allow_nan=True, allow_infinity=True), junk),
    "num_blocks": small_int(-1, 3),
    "num_heads": small_int(0, 8),
    "mlp_ratio": st.one_of(st.floats(-1, 8), junk),
    "inpe_fourier_dim": small_int(0, 8),
    "inpe_scale": st.one_of(st.floats(allow_nan=True, allow_infinity=True), junk),
    "inpe_seed": st.one_of(st.integers(-1, 2 ** 65), junk),
    "scaling_factor": st.one_of(st.floats(allow_nan=True, allow_infinity=True), junk),
    "latent_size": small_int(0, 40),
    "max_size": small_int(0, 300),
}
configs = st.fixed_dictionaries({}, optional={**FIELDS, "colour": junk})


def _check_config(cfg: InfGenConfig) -> None:
    """Invariants of every accepted config."""
    for name in ("in_channels", "latent_channels", "layers_per_block", "norm_num_groups", "num_blocks",
                 "num_heads", "inpe_fourier_dim", "inpe_seed", "latent_size", "max_size"):
        assert type(getattr(cfg, name)) is int, name
    for name in ("norm_eps", "mlp_ratio", "inpe_scale", "scaling_factor"):
        assert type(getattr(cfg, name)) is float and math.isfinite(getattr(cfg, name)), name
    assert all(type(c) is int and c > 0 and c % cfg.norm_num_groups == 0 for c in cfg.block_out_channels)
    assert cfg.token_dim % cfg.num_heads == 0 and cfg.norm_eps > 0 and cfg.scaling_factor != 0
    assert cfg.upscale <= cfg.max_size and param_count(cfg) <= MAX_PARAMS


@settings(max_examples=200, **SETTINGS)
@given(d=configs)
def test_config_loader_returns_a_valid_config_or_a_user_error(d):
    try:
        cfg = InfGenConfig.from_dict(d)
    except USER_ERRORS as exc:
        event(f"refused: {type(exc).__name__}")
        cfg = None
    if cfg is not None:
        _check_config(cfg)
    try:
        text = json.dumps(d)
    except (TypeError, ValueError):
        return
    try:
        from_json = InfGenConfig.from_json(text)
    except USER_ERRORS:
        assert cfg is None
        return
    assert from_json == cfg


@settings(max_examples=100, **SETTINGS)
@given(text=st.one_of(st.text(max_size=40), st.text(alphabet="{}[]\":,0123456789.e-tfalsenu ", max_size=60)))
def test_config_json_text_returns_a_config_or_a_user_error(text):
    if not text.lstrip()[:1] in ("{", "["):
        return  # other strings are paths
    try:
        _check_config(InfGenConfig.from_json(text))
    except USER_ERRORS:
        pass


@settings(max_examples=25, **SETTINGS)
@given(d=st.fixed_dictionaries({
    "block_out_channels": st.lists(st.sampled_from([4, 8, 12, 16]), min_size=1, max_size=4),
    "norm_num_groups": st.sampled_from([1, 2, 4]), "num_heads": st.sampled_from([1, 2, 4]),
    "num_blocks": st.integers(0, 2), "layers_per_block": st.integers(1, 2),
    "mlp_ratio": st.floats(0.25, 4), "inpe_fourier_dim": st.integers(1, 8),
    "scaling_factor": st.floats(1e-3, 1e3), "norm_eps": st.floats(1e-8, 1e-1), "max_size": st.just(64),
    "latent_size": st.just(1)}),
    hl=st.integers(1, 5), wl=st.integers(1, 5), h=st.integers(1, 40), w=st.integers(1, 40))
def test_every_accepted_config_builds_a_model_that_decodes(d, hl, wl, h, w):
    try:
        cfg = InfGenConfig.from_dict(d)
    except USER_ERRORS:
        event("config refused")
        return
    torch.manual_seed(0)
    model = InfGen(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg)
    z = torch.randn(1, cfg.latent_channels, min(hl, cfg.max_size // cfg.upscale), min(wl, cfg.max_size // cfg.upscale))
    try:
        with torch.no_grad():
            out = model.decode(z, h, w)
    except USER_ERRORS:
        assert h < cfg.upscale or w < cfg.upscale
        event("size refused")
        return
    event("decoded")
    assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- decode / encode
@pytest.fixture(scope="module", params=["fp32", "bf16"])
def engine(request):
    return InfGenEngine("tiny", backend="torch", device="cpu", dtype=request.param)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
          torch.int64, torch.uint8, torch.bool, torch.complex64]
# Valid draws dominate (about 3 in 4 per argument), so that a fair share of requests decode.
sizes = st.one_of(st.integers(8, 70), st.integers(8, 70), st.integers(8, 70),
                  st.sampled_from([-2, 0, 1, 7, 2049, 10 ** 9, 8.0, 16.5, "16", None, True, np.int64(24),
                                   float("nan")]))


@st.composite
def latents(draw):
    dims = draw(st.sampled_from([(1, 4)] * 3 + [(2, 4)] * 3 + [(None, 4)] * 3 + [(0, 4), (1, 3), (1, 5)]))
    grid = (draw(st.sampled_from([1, 2, 3, 8, 0, 257])), draw(st.sampled_from([1, 2, 5, 8])))
    shape = tuple(d for d in dims if d is not None) + grid
    scale = draw(st.sampled_from([1.0] * 6 + [1e3, 1.3e5, 1.4e5, 1e30]))
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    z = torch.randn(shape, dtype=torch.float64) * scale
    if z.numel() and draw(st.integers(0, 3)) == 0:
        z.view(-1)[draw(st.integers(0, z.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
    dtype = draw(st.sampled_from(DTYPES[:5] * 3 + DTYPES[5:]))
    z = z.to(dtype) if dtype.is_floating_point else z.clamp(-100, 100).to(dtype)
    form = draw(st.sampled_from(["torch"] * 3 + ["numpy", "transposed"] * 2 + ["list"]))
    if form == "numpy" and dtype in (torch.float32, torch.float64, torch.float16, torch.int64, torch.bool):
        a = z.numpy()
        return a.astype(a.dtype.newbyteorder(">")) if draw(st.booleans()) else a  # either byte order
    if form == "transposed" and z.dim() == 4:
        return z.transpose(2, 3).contiguous().transpose(2, 3)
    if form == "list":
        return z.tolist()
    return z


@settings(max_examples=80, **SETTINGS)
@given(z=latents(), h=sizes, w=sizes)
def test_decode_returns_a_finite_image_or_a_user_error(engine, z, h, w):
    try:
        out = engine.decode(z, h, w)
    except USER_ERRORS as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    batch = 1 if np.ndim(z) == 3 else np.shape(z)[0]
    assert out.shape == (batch, 3, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1


@st.composite
def images(draw):
    dims = draw(st.sampled_from([(1, 3)] * 3 + [(2, 3)] * 2 + [(None, 3)] * 2 + [(1, 4), (0, 3)]))
    hw = (draw(st.sampled_from([8, 13, 24, 1, 7])), draw(st.sampled_from([8, 9, 16, 31])))
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    x = torch.rand(tuple(d for d in dims if d is not None) + hw, dtype=torch.float64) * 2 - 1
    x = x * draw(st.sampled_from([1.0] * 5 + [127.5, 1e30]))
    if x.numel() and draw(st.integers(0, 3)) == 0:
        x.view(-1)[0] = draw(st.sampled_from([float("nan"), float("-inf"), 1.0]))
    if draw(st.integers(0, 4)) == 0:
        x = x.movedim(-3, -1)  # channels-last by mistake
    kind = draw(st.sampled_from(["float32"] * 6 + ["float16", "numpy"] * 3 + ["uint8", "int32", "bool", "complex64"]))
    if kind == "uint8":
        return ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    if kind == "numpy":
        return x.numpy().astype(">f4")
    return x.to(getattr(torch, kind))


@settings(max_examples=50, **SETTINGS)
@given(x=images())
def test_encode_returns_a_finite_latent_or_a_user_error(engine, x):
    try:
        z = engine.encode(x)
        image = check_image(x, engine.config)  # the shape encode saw
    except USER_ERRORS as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("encoded")
    B, _, H, W = image.shape
    assert z.shape == (B, engine.config.latent_channels, H // 8, W // 8)
    assert torch.isfinite(z).all()
