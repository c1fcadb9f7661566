"""TensorRT build plan: optimisation profiles over the token grid, profile selection, shape
binding, engine cache keys. Everything here runs without TensorRT; only `largest_tensor` needs
the model (the decode run on the meta device, infgen_ref/walk.py: shapes only, no memory, no GPU).

Profiles split the grid's LONG side L = max(H', W') into intervals (lo_i, hi_i]: each listed
opt size closes an interval at its own long side, and a last interval reaches the maximum.
An interval's box is (g_min, g_min) .. (hi, hi) when the decode's largest tensor at that box
and the plan's max batch fits TensorRT's limit (MAX_TENSOR_ELEMENTS); otherwise
it gets two boxes, landscape (s, hi) and portrait (hi, s), s the largest short side that fits;
an interval where no short side >= g_min fits gets none. The runtime picks the first profile
whose interval holds L and whose box holds (H', W'); sizes no profile holds are reported
(`covers` is False) and go to another backend.

    grid    (H', W')               H' = ceil(h / 8)
    latent  (B, C, h_l, w_l)       one latent range for every profile
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import shlex
from dataclasses import asdict, dataclass, field

from infgen.ref.checks import check_number
from infgen.ref.decode import TORCH_OPS
from infgen.ref.walk import ConfigKey, run

# Common output sizes (h, w) in pixels to tune for: 1024^2, 1920x1080, 2048^2, 3840x2160, 4096^2.
DEFAULT_OPT_SIZES = ((1024, 1024), (1080, 1920), (2048, 2048), (2160, 3840), (4096, 4096))
# TensorRT's convolution and normalisation layers index with int32: no tensor may hold 2^31 or
# more elements (TensorRT issues 4123, 4408, 1948). Every profile's largest tensor stays below.
MAX_TENSOR_ELEMENTS = 2**31 - 1

__all__ = ["DEFAULT_OPT_SIZES", "Plan", "Profile", "make_plan", "pick_profile", "covers", "bind_shapes",
           "largest_tensor", "cache_key", "trtexec_command", "polygraphy_command"]
PLAN_VERSION = 2


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: grid long side in (lo, hi]; shapes per input as (min, opt, max);
    elements: the largest conv/GroupNorm tensor at the max shapes (0 if not measured)."""
    lo: int                                   # exclusive lower bound of the long side
    hi: int                                   # inclusive upper bound
    shapes: dict = field(default_factory=dict)  # input name -> (min, opt, max), each a tuple
    elements: int = 0


@dataclass(frozen=True)
class Plan:
    upscale: int
    latent_channels: int
    min_res: int
    max_res: int
    batch: int
    latent_range: tuple                       # (min, opt, max) latent side
    profiles: tuple                           # Profile, ordered by hi (landscape before portrait)
    max_elements: int = 0                     # the cap every profile was sized to (0: uncapped)

    def to_json(self) -> str:
        d = asdict(self)
        d["version"] = PLAN_VERSION
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """A plan.json's text -> Plan; ValueError naming the field for anything but an object of
        the current version whose fields all have their types (ints >= 0, shapes of ints)."""
        try:
            d = json.loads(text)
        except RecursionError as exc:
            raise ValueError("plan JSON is nested too deeply") from exc
        if not isinstance(d, dict):
            raise ValueError(f"plan must be a JSON object, got {type(d).__name__}")
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version must be {PLAN_VERSION}, got {d.get('version')!r}")
        fields = {"upscale", "latent_channels", "min_res", "max_res", "batch", "latent_range", "profiles",
                  "max_elements"}
        unknown, missing = set(d) - fields - {"version"}, fields - {"max_elements"} - set(d)
        if unknown or missing:
            raise ValueError(f"plan fields: unknown {sorted(unknown)}, missing {sorted(missing)}")
        ints = {k: _plan_int(k, d[k], lo=0 if k == "max_elements" else 1)
                for k in ("upscale", "latent_channels", "min_res", "max_res", "batch", "max_elements") if k in d}
        latent_range = _plan_ints("latent_range", d["latent_range"], 3)
        if not isinstance(d["profiles"], list):
            raise ValueError(f"plan field profiles must be a list, got {type(d['profiles']).__name__}")
        profiles = []
        for i, p in enumerate(d["profiles"]):
            where = f"profiles[{i}]"
            if not isinstance(p, dict) or not isinstance(p.get("shapes"), dict):
                raise ValueError(f"plan field {where} must be an object with 'lo', 'hi' and an object 'shapes'")
            shapes = {}
            for name, v in p["shapes"].items():
                if not isinstance(v, list) or len(v) != 3:
                    raise ValueError(f"plan field {where}.shapes.{name} must be [min, opt, max] shapes, got {v!r}"[:300])
                shapes[name] = tuple(_plan_ints(f"{where}.shapes.{name}", s, None) for s in v)
            profiles.append(Profile(_plan_int(f"{where}.lo", p.get("lo"), 0), _plan_int(f"{where}.hi", p.get("hi"), 1),
                                    shapes, _plan_int(f"{where}.elements", p.get("elements", 0), 0)))
        return cls(profiles=tuple(profiles), latent_range=latent_range, **ints)


def _plan_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= 2 ** 62:
        raise ValueError(f"plan field {name} must be an integer >= {lo}, got {v!r}"[:300])
    return v


def _plan_ints(name: str, v, n: int | None) -> tuple:
    if not isinstance(v, list) or (n is not None and len(v) != n) or not 1 <= len(v) <= 8:
        raise ValueError(f"plan field {name} must be a list of {n or '1..8'} integers, got {v!r}"[:300])
    return tuple(_plan_int(f"{name}[{i}]", x, 0) for i, x in enumerate(v))


# ----------------------------------------------------------------------------- tensor volume
def largest_tensor(cfg, batch: int, Hp: int, Wp: int, latent_side: int = 128) -> tuple[int, str]:
    """(elements, module name) of the largest input or output of any Conv2d/GroupNorm of the decode
    of latent (batch, C, latent_side, latent_side) on grid (Hp, Wp): decode_grid run on the meta
    device (infgen_ref/walk.py, shapes only). The TensorRT flavour's op table differs from the
    reference ops in the mid-block attention only, so these are its convs' and norms' tensors."""
    return _largest_tensor(ConfigKey(cfg), batch, Hp, Wp, latent_side)


@functools.lru_cache(maxsize=256)
def _largest_tensor(key: ConfigKey, batch: int, Hp: int, Wp: int, latent_side: int) -> tuple[int, str]:
    return run(key.cfg, Hp, Wp, TORCH_OPS, (latent_side, latent_side), batch).largest


# ----------------------------------------------------------------------------- plan
def make_plan(min_res: int = 256, max_res: int = 4096, opt_sizes=DEFAULT_OPT_SIZES, batch: int = 1,
              upscale: int = 8, latent_channels: int = 4, latent_range=(16, 64, 128), volume=None,
              max_elements: int = MAX_TENSOR_ELEMENTS) -> Plan:
    """Profiles for outputs (h, w) with min_res <= h, w <= max_res, batch 1..batch.

    opt_sizes: (h, w) pixel sizes to tune for; those outside min..max are dropped, and sizes with
    the same grid long side are merged (the first is kept). latent_range: (min, opt, max) side of
    the latent grid accepted by every profile. volume: (batch, Hp, Wp) -> largest tensor's
    elements (e.g. functools.partial(largest_tensor, cfg) -> its [0]); with it every box is capped
    to max_elements (module docstring); without it boxes are square and uncapped."""
    min_res, max_res, batch, upscale, latent_channels, max_elements = (
        check_number(name, v, int, 1) for name, v in (
            ("min_res", min_res), ("max_res", max_res), ("batch", batch), ("upscale", upscale),
            ("latent_channels", latent_channels), ("max_elements", max_elements)))
    if min_res > max_res:
        raise ValueError(f"min_res must be <= max_res, got {min_res} > {max_res}")
    lat = tuple(latent_range)
    if len(lat) != 3 or not all(isinstance(x, int) and x >= 1 for x in lat) or not lat[0] <= lat[1] <= lat[2]:
        raise ValueError(f"latent_range must be (min, opt, max) positive ints in order, got {latent_range!r}")
    g_min, g_max = math.ceil(min_res / upscale), math.ceil(max_res / upscale)
    opts = {}
    for size in opt_sizes:
        if len(size) != 2:
            raise ValueError(f"opt sizes must be (h, w) pairs, got {size!r}")
        h, w = (check_number("opt size", x, int, 1) for x in size)
        gh, gw = math.ceil(h / upscale), math.ceil(w / upscale)
        if g_min <= min(gh, gw) and max(gh, gw) <= g_max:
            opts.setdefault(max(gh, gw), (gh, gw))
    if g_max not in opts:
        opts[g_max] = (g_max, g_max)
    C = latent_channels
    latent_shapes = ((1, C, lat[0], lat[0]), (1, C, lat[1], lat[1]), (batch, C, lat[2], lat[2]))
    profiles, lo = [], g_min - 1
    for hi in sorted(opts):
        for box, elements in _boxes(hi, g_min, batch, volume, max_elements):
            oh, ow = sorted(opts[hi]) if box[0] <= box[1] else sorted(opts[hi], reverse=True)
            opt = (max(g_min, min(oh, box[0])), max(g_min, min(ow, box[1])))
            profiles.append(Profile(lo, hi, {"latent": latent_shapes, "grid": ((g_min, g_min), opt, box)}, elements))
        lo = hi
    if not profiles:
        raise ValueError(f"no grid of {g_min}..{g_max} tokens per side fits {max_elements} elements at batch {batch}")
    return Plan(upscale, latent_channels, min_res, max_res, batch, lat, tuple(profiles),
                max_elements if volume is not None else 0)


def _boxes(hi: int, g_min: int, batch: int, volume, max_elements: int) -> list:
    """[(max grid box, its largest tensor)] for the interval ending at long side hi."""
    if volume is None:
        return [((hi, hi), 0)]
    full = volume(batch, hi, hi)
    if full <= max_elements:
        return [((hi, hi), full)]
    # the decode's tensors grow linearly with the grid's short side: estimate, then walk to confirm
    s = min(hi - 1, max_elements * hi // full)
    while s >= g_min:
        n = volume(batch, s, hi)
        if n <= max_elements:
            return [((s, hi), n), ((hi, s), n)]
        s -= max(1, (n - max_elements) * s // n)
    return []


def pick_profile(plan: Plan, Hp: int, Wp: int) -> int:
    """Index of the first profile whose interval holds max(Hp, Wp) and whose box holds (Hp, Wp);
    ValueError naming the size if none does."""
    L = max(Hp, Wp)
    for i, p in enumerate(plan.profiles):
        lo_box, _, hi_box = p.shapes["grid"]
        if p.lo < L <= p.hi and lo_box[0] <= Hp <= hi_box[0] and lo_box[1] <= Wp <= hi_box[1]:
            return i
    u = plan.upscale
    raise ValueError(f"token grid {Hp}x{Wp} (output {u * Hp}x{u * Wp}) is outside this engine's plan: "
                     f"outputs {plan.min_res}..{plan.max_res} per side"
                     + (f", largest tensor <= {plan.max_elements} elements" if plan.max_elements else ""))


def covers(plan: Plan, batch: int, Hp: int, Wp: int) -> bool:
    """Whether some profile serves batch on grid (Hp, Wp)."""
    try:
        i = pick_profile(plan, Hp, Wp)
    except ValueError:
        return False
    return 1 <= batch <= plan.profiles[i].shapes["latent"][2][0]


def bind_shapes(plan: Plan, latent_shape, Hp: int, Wp: int) -> tuple[int, dict, tuple]:
    """(profile index, {input name: shape}, output shape) for one request, checked against the
    profile's min/max; ValueError naming the bad dimension otherwise."""
    i = pick_profile(plan, Hp, Wp)
    shapes = {"latent": tuple(int(s) for s in latent_shape), "grid": (Hp, Wp)}
    for name, shape in shapes.items():
        lo, _, hi = plan.profiles[i].shapes[name]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise ValueError(f"{name} shape {shape} is outside profile {i}'s range {lo}..{hi}")
    B = shapes["latent"][0]
    return i, shapes, (B, 3, plan.upscale * Hp, plan.upscale * Wp)


# ----------------------------------------------------------------------------- cache keys
def cache_key(onnx_sha256: str, trt_version: str, gpu_name: str, dtype: str, plan: Plan,
              allow_tf32: bool = False) -> str:
    """sha256 hex of what makes an engine valid: the ONNX bytes, TensorRT version, GPU, dtype,
    whether fp32 may use tf32, profiles."""
    parts = {"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu_name, "dtype": dtype, "tf32": bool(allow_tf32),
             "plan": json.loads(plan.to_json())}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- command lines
def _dims(shape) -> str:
    return "x".join(str(s) for s in shape)


def trtexec_command(plan: Plan, onnx_path: str, engine_path: str, timing_cache: str | None = None,
                    plugin_lib: str | None = None) -> str:
    """trtexec equivalent of the build. Each profile is `--profile=i` followed directly by its
    --minShapes/--optShapes/--maxShapes (TensorRT samples/common/sampleOptions.cpp,
    getOptimizationProfiles: the shape flags must sit at the argv positions right after
    --profile; repeated shape flags without --profile are rejected). plugin_lib
    (libinfgen_trt_plugins.so) is loaded with --dynamicPlugins (its getCreators entry point)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    if plugin_lib:
        args.append(f"--dynamicPlugins={plugin_lib}")
    for i, p in enumerate(plan.profiles):
        args.append(f"--profile={i}")
        for flag, j in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            args.append(flag + "=" + ",".join(f"{n}:{_dims(s[j])}" for n, s in p.shapes.items()))
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def polygraphy_command(plan: Plan, onnx_path: str, engine_path: str, timing_cache: str | None = None) -> str:
    """polygraphy equivalent: each --trt-min/opt/max-shapes group makes one profile (in order);
    the timing cache is read with --load-timing-cache and written with --save-timing-cache."""
    args = ["polygraphy", "convert", onnx_path, "--convert-to", "trt", "-o", engine_path, "--strongly-typed"]
    for p in plan.profiles:
        for flag, j in (("--trt-min-shapes", 0), ("--trt-opt-shapes", 1), ("--trt-max-shapes", 2)):
            args.append(flag)
            args.extend(f"{n}:[{','.join(str(x) for x in s[j])}]" for n, s in p.shapes.items())
    if timing_cache:
        args.extend(["--load-timing-cache", timing_cache, "--save-timing-cache", timing_cache])
    return shlex.join(args)
