"""Property tests (#18 item 5): over the config loader and the public decode/encode API, every
draw either returns a finite, correctly shaped result or raises ValueError/TypeError, in bounded
time. Tiny preset, small sizes; max_examples keeps the whole file under a minute on 2 cores."""
import json
import math

import numpy as np
import pytest
import torch

from infgen.ref.config import MAX_PARAMS, PRESETS, InfGenConfig, param_count
from infgen.ref.model import InfGen, check_image
from infgen.runtime.engine import InfGenEngine

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings, strategies as st  # noqa: E402

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
# Fields that every preset accepts at any of these values, whatever the other fields are.
SAFE_FIELDS = {"norm_eps": st.floats(1e-8, 1e-1), "inpe_scale": st.floats(0.01, 100), "inpe_seed": st.integers(0, 2 ** 32),
               "scaling_factor": st.floats(1e-3, 1e3), "mlp_ratio": st.floats(0.5, 4), "num_blocks": st.integers(0, 3),
               "layers_per_block": st.integers(1, 2), "latent_size": st.integers(1, 8)}


@st.composite
def config_draws(draw):
    """(fields, known_valid): a preset's fields (the paper's defaults, tiny or demo) with safe
    overrides, then, about half the time, fields of any type and value on top. known_valid: no
    field of the second kind was drawn, so the loader must accept the dict."""
    base = {"paper": {}, **PRESETS}[draw(st.sampled_from(["paper", "tiny", "demo"]))]
    d = {**base, **draw(st.fixed_dictionaries({}, optional=SAFE_FIELDS))}
    risky = draw(st.one_of(st.just({}), configs))
    return {**d, **risky}, not risky


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


@settings(max_examples=300, **SETTINGS)
@given(draw=config_draws())
@example(draw=({}, True))                       # the paper preset: every default
@example(draw=(dict(PRESETS["tiny"]), True))
def test_config_loader_returns_a_valid_config_or_a_user_error(draw):
    """Any dict is a valid config or a ValueError/TypeError, the same from JSON text; a dict of
    known-valid fields is accepted (so the test fails if the loader always refuses)."""
    d, known_valid = draw
    try:
        cfg = InfGenConfig.from_dict(d)
    except USER_ERRORS as exc:
        assert not known_valid, f"refused valid fields {d}: {exc}"
        event(f"refused: {type(exc).__name__}")
        cfg = None
    if cfg is not None:
        event("accepted")
        _check_config(cfg)
    try:
        text = json.dumps(d)
    except (TypeError, ValueError):
        assert not known_valid
        return
    try:
        from_json = InfGenConfig.from_json(text)
    except USER_ERRORS:
        assert cfg is None
        return
    assert from_json == cfg


@st.composite
def config_texts(draw):
    """(text, fields): JSON text of known-valid fields (fields: that dict), or any text (None)."""
    d, known_valid = draw(config_draws())
    if known_valid and draw(st.booleans()):
        return json.dumps(d), d
    return draw(st.one_of(st.text(max_size=40), st.text(alphabet="{}[]\":,0123456789.e-tfalsenu ", max_size=60))), None


@settings(max_examples=150, **SETTINGS)
@given(draw=config_texts())
@example(draw=(json.dumps(PRESETS["demo"]), PRESETS["demo"]))
@example(draw=("[1, 2]", None))
def test_config_json_text_returns_a_config_or_a_user_error(draw):
    """JSON text of valid fields loads to the config those fields make; other text that starts
    like JSON (the rest are paths) loads to a valid config or raises ValueError/TypeError."""
    text, fields = draw
    if fields is not None:
        assert InfGenConfig.from_json(text) == InfGenConfig.from_dict(fields)
        return
    if not text.lstrip()[:1] in ("{", "["):
        event("a path")
        return
    try:
        cfg = InfGenConfig.from_json(text)
    except USER_ERRORS as exc:
        event(f"refused: {type(exc).__name__}")
        assert str(exc)
        return
    event("accepted")
    _check_config(cfg)


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
    """Every draw is a valid config (channels divisible by the groups, heads dividing the last
    width, max_size >= upscale): it loads, builds a model of param_count parameters, and decodes
    every size upscale..max_size; a smaller side, and only that, is a user error."""
    cfg = InfGenConfig.from_dict(d)
    torch.manual_seed(0)
    model = InfGen(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg)
    z = torch.randn(1, cfg.latent_channels, min(hl, cfg.max_size // cfg.upscale), min(wl, cfg.max_size // cfg.upscale))
    if h < cfg.upscale or w < cfg.upscale:
        event("size refused")
        with pytest.raises(ValueError, match="must be"):
            model.decode(z, h, w)
        return
    with torch.no_grad():
        out = model.decode(z, h, w)
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
    """(latent, known_valid): known_valid when every choice drawn is one the engine accepts (4
    channels, a 1..256 grid, |z| ~ 1, finite, a floating dtype, a tensor or an array)."""
    dims = draw(st.sampled_from([(1, 4)] * 3 + [(2, 4)] * 3 + [(None, 4)] * 3 + [(0, 4), (1, 3), (1, 5)]))
    grid = (draw(st.sampled_from([1, 2, 3, 8, 0, 257])), draw(st.sampled_from([1, 2, 5, 8])))
    shape = tuple(d for d in dims if d is not None) + grid
    scale = draw(st.sampled_from([1.0] * 6 + [1e3, 1.3e5, 1.4e5, 1e30]))
    valid = dims[-1] == 4 and dims[0] != 0 and grid[0] not in (0, 257) and scale == 1.0
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    z = torch.randn(shape, dtype=torch.float64) * scale
    if z.numel() and draw(st.integers(0, 3)) == 0:
        special = draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
        z.view(-1)[draw(st.integers(0, z.numel() - 1))] = special
        valid = valid and special == 0.0
    dtype = draw(st.sampled_from(DTYPES[:5] * 3 + DTYPES[5:]))
    valid = valid and dtype.is_floating_point
    z = z.to(dtype) if dtype.is_floating_point else z.clamp(-100, 100).to(dtype)
    form = draw(st.sampled_from(["torch"] * 3 + ["numpy", "transposed"] * 2 + ["list"]))
    if form == "numpy" and dtype in (torch.float32, torch.float64, torch.float16, torch.int64, torch.bool):
        a = z.numpy()
        return (a.astype(a.dtype.newbyteorder(">")) if draw(st.booleans()) else a), valid  # either byte order
    if form == "transposed" and z.dim() == 4:
        return z.transpose(2, 3).contiguous().transpose(2, 3), valid
    if form == "list":
        return z.tolist(), False
    return z, valid


@settings(max_examples=80, **SETTINGS)
@given(draw=latents(), h=sizes, w=sizes)
@example(draw=(torch.randn(1, 4, 2, 3), True), h=16, w=24)
@example(draw=(np.random.default_rng(0).standard_normal((4, 3, 3)).astype(">f4"), True), h=9, w=70)
def test_decode_returns_a_finite_image_or_a_user_error(engine, draw, h, w):
    """Every draw decodes to a finite image in [-1, 1] or raises ValueError/TypeError; a
    known-valid latent at int sizes 8..70 decodes (so the test fails if decode always raises)."""
    z, valid = draw
    valid = valid and all(type(s) is int and 8 <= s <= 70 for s in (h, w))
    try:
        out = engine.decode(z, h, w)
    except USER_ERRORS as exc:
        assert not valid, f"refused a valid request: {exc}"
        event(f"refused: {type(exc).__name__}")
        return
    event("decoded")
    batch = 1 if np.ndim(z) == 3 else np.shape(z)[0]
    assert out.shape == (batch, 3, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() <= 1


@st.composite
def images(draw):
    """(image, known_valid): known_valid when every choice drawn is one encode accepts (3 channels
    first, sides 8..2048, values in [-1, 1], finite, a floating dtype)."""
    dims = draw(st.sampled_from([(1, 3)] * 3 + [(2, 3)] * 2 + [(None, 3)] * 2 + [(1, 4), (0, 3)]))
    hw = (draw(st.sampled_from([8, 13, 24, 1, 7])), draw(st.sampled_from([8, 9, 16, 31])))
    valid = dims[-1] == 3 and dims[0] != 0 and hw[0] >= 8
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    x = torch.rand(tuple(d for d in dims if d is not None) + hw, dtype=torch.float64) * 2 - 1
    scale = draw(st.sampled_from([1.0] * 5 + [127.5, 1e30]))
    x, valid = x * scale, valid and scale == 1.0
    if x.numel() and draw(st.integers(0, 3)) == 0:
        x.view(-1)[0] = special = draw(st.sampled_from([float("nan"), float("-inf"), 1.0]))
        valid = valid and special == 1.0
    if draw(st.integers(0, 4)) == 0:
        x, valid = x.movedim(-3, -1), False  # channels-last by mistake
    kind = draw(st.sampled_from(["float32"] * 6 + ["float16", "numpy"] * 3 + ["uint8", "int32", "bool", "complex64"]))
    if kind == "uint8":
        return ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8), False
    if kind == "numpy":
        return x.numpy().astype(">f4"), valid
    return x.to(getattr(torch, kind)), valid and kind in ("float32", "float16")


@settings(max_examples=50, **SETTINGS)
@given(draw=images())
@example(draw=(torch.rand(1, 3, 16, 24) * 2 - 1, True))
@example(draw=(np.linspace(-1, 1, 3 * 9 * 31).reshape(3, 9, 31).astype(">f4"), True))
def test_encode_returns_a_finite_latent_or_a_user_error(engine, draw):
    """Every draw encodes to a finite latent or raises ValueError/TypeError; a known-valid image
    encodes (so the test fails if encode always raises)."""
    x, valid = draw
    try:
        z = engine.encode(x)
        image = check_image(x, engine.config)  # the shape encode saw
    except USER_ERRORS as exc:
        assert not valid, f"refused a valid image: {exc}"
        event(f"refused: {type(exc).__name__}")
        return
    event("encoded")
    B, _, H, W = image.shape
    assert z.shape == (B, engine.config.latent_channels, H // 8, W // 8)
    assert torch.isfinite(z).all()


# ----------------------------------------------------------------------------- the server's request parsers
@st.composite
def serving_requests(draw):
    """A request the model function may receive: mostly well formed, with one field perturbed or not."""
    b = draw(st.integers(0, 3))
    zdtype = draw(st.sampled_from([np.float32, np.float32, np.float32, np.float64, np.int32]))
    shape = (b, draw(st.sampled_from([4, 4, 3])), draw(st.integers(0, 300)), draw(st.integers(1, 12)))
    if draw(st.booleans()) and shape[2] > 12:
        shape = (shape[0], shape[1], 8, shape[3])
    z = np.zeros(shape, zdtype)
    if z.size and z.dtype.kind == "f" and draw(st.booleans()):
        z.flat[draw(st.integers(0, z.size - 1))] = draw(st.sampled_from([np.nan, np.inf, 1.0]))
    rows = b if draw(st.integers(0, 9)) else b + 1
    hdtype = draw(st.sampled_from([np.int32, np.int32, np.int64, np.float32]))
    h = np.full((rows, 1), draw(st.sampled_from([64, 8, 7, 2048, 2049, 512, -5])), hdtype)
    w = np.full((rows, 1), draw(st.sampled_from([64, 96, 8, 4000])), np.int32)
    if rows > 1 and draw(st.integers(0, 4)) == 0:
        w[-1] = 72
    return {"latent": z, "height": h, "width": w}


def _valid_request(r, cfg, max_pixels) -> bool:
    """The spec check_request implements, written out independently."""
    z, h, w = r["latent"], r["height"], r["width"]
    if z.dtype != np.float32 or z.ndim != 4 or z.shape[1] != cfg.latent_channels or 0 in z.shape:
        return False
    b = z.shape[0]
    if h.dtype.kind not in "iu" or w.dtype.kind not in "iu" or h.shape != (b, 1) or w.shape != (b, 1):
        return False
    if len(set(h.ravel().tolist())) != 1 or len(set(w.ravel().tolist())) != 1:
        return False
    hh, ww = int(h[0, 0]), int(w[0, 0])
    grid = cfg.max_size // cfg.upscale
    return (cfg.upscale <= hh <= cfg.max_size and cfg.upscale <= ww <= cfg.max_size and b * hh * ww <= max_pixels
            and z.shape[2] <= grid and z.shape[3] <= grid and bool(np.isfinite(z).all()))


@settings(max_examples=300, **SETTINGS)
@given(r=serving_requests())
@example(r={"latent": np.zeros((2, 4, 8, 12), np.float32), "height": np.full((2, 1), 64, np.int32),
            "width": np.full((2, 1), 96, np.int32)})
def test_server_request_check_accepts_exactly_the_valid_requests(r):
    """check_request returns (latent, h, w) for every request the spec allows (so it cannot pass by
    always raising) and a ValueError/TypeError for every other."""
    from infgen.ref.config import preset
    from infgen.runtime.serving import check_request
    cfg, max_pixels = preset("tiny"), 2 * 256 * 256
    valid = _valid_request(r, cfg, max_pixels)
    event(f"valid: {valid}")
    if valid:
        z, h, w = check_request(r, cfg, max_pixels)
        assert z is r["latent"] and (h, w) == (int(r["height"][0, 0]), int(r["width"][0, 0]))
    else:
        with pytest.raises(USER_ERRORS):
            check_request(r, cfg, max_pixels)


DTYPE_BYTES = {"FP32": 4, "INT32": 4, "UINT8": 1, "FP64": 8, "BYTES": 1}


@st.composite
def infer_bodies(draw):
    """An HTTP inference request's JSON part and the binary bytes after it; well formed or not."""
    inputs = []
    for name in draw(st.lists(st.sampled_from(["latent", "height", "width"]), min_size=0, max_size=3)):
        dtype = draw(st.sampled_from([*DTYPE_BYTES, "FP8", 5]))
        shape = draw(st.one_of(st.lists(st.integers(0, 9), max_size=4),
                               st.lists(st.sampled_from([-1, 100000, 2 ** 40, 1.5, True, "4"]), min_size=1, max_size=4),
                               st.just("1,4")))
        inp = {"name": name, "datatype": dtype, "shape": shape}
        count = math.prod(shape) if isinstance(shape, list) and all(type(d) is int for d in shape) else 3
        if draw(st.booleans()):
            n = count if draw(st.integers(0, 4)) and 0 <= count <= 2000 else max(0, min(count, 50) - 1)
            inp["data"] = [0] * n
        elif isinstance(dtype, str) and dtype in DTYPE_BYTES:
            inp["parameters"] = {"binary_data_size": count * DTYPE_BYTES[dtype] + draw(st.sampled_from([0, 0, 0, 4]))}
        inputs.append(inp)
    doc = draw(st.sampled_from([{"inputs": inputs}, {"inputs": inputs}, inputs, {"id": "x"}]))
    text = json.dumps(doc).encode()
    if draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text, draw(st.integers(0, 4096))


@settings(max_examples=300, **SETTINGS)
@given(body=infer_bodies())
@example(body=(json.dumps({"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, 4, 8, 8],
                                       "parameters": {"binary_data_size": 1024}},
                                      {"name": "height", "datatype": "INT32", "shape": [1, 1], "data": [64]}]}).encode(),
               1024))
def test_http_gate_passes_valid_requests_and_refuses_the_rest_with_a_status(body):
    """The gate's check returns None for a request whose every input is consistent and within the
    limit, and otherwise raises Refused with a 4xx status and a message; nothing else escapes."""
    from infgen.runtime.gate import DTYPE_BYTES as SIZES, Refused, check_infer
    text, binary_len = body
    max_bytes = 4096
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    expect_ok = isinstance(doc, dict) and isinstance(doc.get("inputs"), list) and bool(doc["inputs"])
    total_binary = total = 0
    for inp in (doc["inputs"] if expect_ok else []):
        shape, dtype = inp["shape"], inp["datatype"]
        if dtype not in SIZES or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            expect_ok = False
            break
        n = math.prod(shape) * SIZES[dtype]
        total += n
        size = inp.get("parameters", {}).get("binary_data_size")
        if n > max_bytes or total > max_bytes or (size is not None and dtype != "BYTES" and size != n):
            expect_ok = False
            break
        if size is not None:
            total_binary += size
        elif "data" not in inp or len(inp["data"]) != math.prod(shape):
            expect_ok = False
            break
    expect_ok = expect_ok and total_binary <= binary_len
    event(f"accepted: {expect_ok}")
    if expect_ok:
        assert check_infer(text, binary_len, max_bytes) is None
    else:
        with pytest.raises(Refused) as info:
            check_infer(text, binary_len, max_bytes)
        assert info.value.status in (400, 413) and str(info.value)


# ----------------------------------------------------------------------------- the trainer's arguments
TRAIN_FLAGS = {  # flag -> (valid values, invalid values)
    "--stage1-steps": (["0", "5"], ["-1", "1.5", "x"]),
    "--batch-size": (["1", "8"], ["0", "-2", "nan"]),
    "--save-every": (["1", "200"], ["0", "-5"]),
    "--log-every": (["1", "10"], ["0", "-1"]),
    "--snapshot-every": (["0", "50"], ["-1"]),
    "--threads": (["0", "2"], ["-1", "9999"]),
    "--lr": (["2e-4", "1"], ["0", "-1e-3", "nan", "inf", "1e999"]),
    "--kl-weight": (["0", "1e-6"], ["-1", "inf"]),
    "--gan-start": (["0", "0.5", "1"], ["1.5", "nan"]),
    "--max-scale": (["1", "4"], ["0.5", "inf"]),
    "--init-logvar": (["-10", "0"], ["nan", "-1e999"]),
    "--seed": (["0", "7"], ["-1", "2.5"]),
}


@settings(max_examples=120, **SETTINGS)
@given(picks=st.lists(st.tuples(st.sampled_from(sorted(TRAIN_FLAGS)), st.booleans(), st.integers(0, 9)),
                      max_size=4, unique_by=lambda t: t[0]))
def test_trainer_arguments_parse_to_bounded_values_or_one_error_line(picks, capsys):
    """Valid flags always parse (so the test fails if the parser always refuses) into finite values
    within bounds; any invalid one is exit status 2 with one `error:` line naming it."""
    from infgen.train.trainer import parse_args
    argv, bad = ["--out-dir", "/tmp/never-written"], []
    for flag, ok, i in picks:
        values = TRAIN_FLAGS[flag][0 if ok else 1]
        argv += [flag, values[i % len(values)]]
        if not ok:
            bad.append(flag)
    capsys.readouterr()
    if not bad:
        a = parse_args(argv)
        for name in ("lr", "kl_weight", "gan_start", "max_scale", "init_logvar"):
            assert math.isfinite(getattr(a, name))
        assert a.save_every >= 1 and a.log_every >= 1 and a.threads >= 0 and a.batch_size >= 1 and a.lr > 0
        return
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert any(flag in err[0] for flag in bad), err
