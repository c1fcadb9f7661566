"""TensorRT engines for the InfGen decode: plan, build, cache, plugin.

    python -m infgen.export.trt --max-res 4096                 # build what the runtime serves
    python -m infgen.export.trt --max-res 4096 --dry-run       # print the plan and commands (no TensorRT, no files)

Lifecycle: plan (export/plan.py: volume-capped optimisation profiles over the token grid) ->
ONNX, TensorRT flavour (export/onnx.py; the mid-block attention is the node
infgen::FlashAttention, export/trt_plugin.py) -> strongly typed engine with one profile per plan
entry, a timing cache and a progress bar -> an entry of the file cache (export/cache.py, the
ONNX export's too) under engine_dir, keyed by (ONNX sha256, TensorRT version, GPU name, dtype,
tf32, plan). `engine_for` is the one entry point: the CLI and runtime/trt_backend.py both call
it, so the engine the CLI builds is the one the runtime loads. A cached engine whose sidecar is
missing, damaged or for another key, or whose bytes differ from it, is rebuilt. TensorRT has
never run in this workplace: docs/export.md says which functions here have never executed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
import time
from pathlib import Path

from dataclasses import dataclass

from infgen.export import cache
from infgen.export.plan import Plan, cache_key, largest_tensor, polygraphy_command, trtexec_command
from infgen.export.spec import (AOT_MODULE_LEAK, DEFAULT_BATCH, DEFAULT_MAX_RES, DEFAULT_MIN_RES, DEFAULT_OPT_SIZES, MAX_TENSOR_ELEMENTS,
                         MIN_TENSORRT, PLUGIN_ID, default_plan)

__all__ = ["PLUGIN_ID", "TensorRTMissing", "EngineUnbuildable", "Engine", "engine_for", "plan_for", "check_volume",
           "import_tensorrt", "aot_module_leak", "build_engine", "engine_path"]



class TensorRTMissing(RuntimeError):
    """TensorRT (the Python package `tensorrt`) is not importable or too old."""


class EngineUnbuildable(RuntimeError):
    """A plan TensorRT cannot build (a profile's tensors pass MAX_TENSOR_ELEMENTS); checked before any build."""


def _version(text: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", str(text))[:2])


def aot_module_leak(trt_version: str) -> bool:
    """Whether this TensorRT leaks a CUDA module per shape change of an AOT plugin (TensorRT
    issue 4849: 11.1 and 11.2). runtime/trt_backend.py then never changes a context's shapes."""
    return _version(trt_version) in AOT_MODULE_LEAK


def import_tensorrt():
    """The tensorrt module, or TensorRTMissing naming the package to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTMissing("TensorRT is not installed: pip install 'tensorrt>=10.9' "
                              "(the package `tensorrt`, with a CUDA GPU and driver)") from exc
    if _version(trt.__version__) < MIN_TENSORRT:
        raise TensorRTMissing(f"TensorRT {trt.__version__} is too old: the Python plugin API needs "
                              f"tensorrt >= {'.'.join(map(str, MIN_TENSORRT))}")
    return trt


# ----------------------------------------------------------------------------- engine cache (no TensorRT)
def engine_path(engine_dir: str | Path, key: str) -> Path:
    """The cached engine for a cache key; its sidecar (infgen.export.cache) is this path + '.json'."""
    return Path(engine_dir) / f"infgen-{key[:24]}.engine"


# ----------------------------------------------------------------------------- plugin (TensorRT + Triton)
def register_plugin(allow_tf32: bool = False) -> None:
    """Register infgen::FlashAttention (export/trt_plugin.py) with TensorRT's plugin registry."""
    import_tensorrt()
    from infgen.export.trt_plugin import register
    register(allow_tf32=allow_tf32)


# ----------------------------------------------------------------------------- build (TensorRT)
def _progress_monitor(trt):
    """An IProgressMonitor printing each build phase's steps (visible progress on long builds)."""

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps, self.t0 = {}, time.perf_counter()

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {phase_name} (0/{num_steps})", flush=True)

        def step_complete(self, phase_name, step):
            n = self.steps.get(phase_name, 0)
            print(f"\r[{time.perf_counter() - self.t0:7.1f}s] {phase_name} ({step + 1}/{n})", end="", flush=True)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            print(f"\n[{time.perf_counter() - self.t0:7.1f}s] {phase_name} done", flush=True)

    return Progress()


def build_engine(onnx_path: str | Path, plan: Plan, timing_cache: str | Path | None = None,
                 verbose: bool = False, allow_tf32: bool = False) -> bytes:
    """Parse the ONNX file into a strongly typed network (precision is the ONNX graph's), add one
    optimisation profile per plan entry, build and serialise. The timing cache is read from and
    written back to timing_cache (an unreadable one is replaced). allow_tf32: fp32 engines may
    use tf32 (TensorRT's TF32 builder flag, on by default, is cleared otherwise, and the plugin
    uses exact fp32 dots)."""
    trt = import_tensorrt()
    register_plugin(allow_tf32)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    if not allow_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    try:
        timing = config.create_timing_cache(cache_bytes)
    except Exception as exc:  # a corrupt cache file: start from an empty one  # noqa: BLE001
        print(f"timing cache {timing_cache} unreadable ({exc}); starting a new one", flush=True)
        timing = config.create_timing_cache(b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    for p in plan.profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in p.shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    config.progress_monitor = _progress_monitor(trt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def gpu_name() -> str:
    import torch
    return torch.cuda.get_device_name()


def timing_cache_path(engine_dir: str | Path, trt_version: str, gpu: str) -> Path:
    """The builder timing cache for one (TensorRT version, GPU): caches are not portable across either."""
    tag = hashlib.sha256(f"{trt_version}|{gpu}".encode()).hexdigest()[:16]
    return Path(engine_dir) / f"timing-{tag}.cache"


# ----------------------------------------------------------------------------- one entry point
def plan_for(cfg, engine_dir: str | Path, plan=None) -> tuple[Plan, str]:
    """(plan, where it came from): plan as given (a Plan, or a plan.json path), else the plan.json
    that `python -m infgen.export.trt` wrote into engine_dir (so the runtime loads what the CLI built),
    else infgen.export.spec.default_plan(cfg). An unreadable plan.json falls back to the default, saying why."""
    if isinstance(plan, Plan):
        return plan, "given"
    path = Path(plan) if plan is not None else Path(engine_dir) / "plan.json"
    if plan is not None or path.is_file():
        try:
            found = Plan.from_json(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as exc:
            if plan is not None:
                raise ValueError(f"plan {str(path)!r} is not a plan file: {exc}") from exc
            return default_plan(cfg), f"default ({path} unreadable: {type(exc).__name__})"
        if (found.upscale, found.latent_channels) != (cfg.upscale, cfg.latent_channels):
            if plan is not None:
                raise ValueError(f"plan {str(path)!r} is for upscale {found.upscale}, {found.latent_channels} "
                                 f"latent channels; the model has {cfg.upscale}, {cfg.latent_channels}")
            return default_plan(cfg), f"default ({path} is for another model)"
        return found, str(path)
    return default_plan(cfg), "default"


def check_volume(cfg, plan: Plan) -> None:
    """EngineUnbuildable naming the profile if any profile's largest conv/GroupNorm tensor, at its
    max shapes, reaches MAX_TENSOR_ELEMENTS (meta-device walk; TensorRT would fail the whole build)."""
    for i, p in enumerate(plan.profiles):
        latent_max = p.shapes["latent"][2]  # (batch, C, side, side)
        n, name = largest_tensor(cfg, latent_max[0], *p.shapes["grid"][2], latent_max[2])
        if n > MAX_TENSOR_ELEMENTS:
            raise EngineUnbuildable(f"profile {i} (grid up to {p.shapes['grid'][2]}, batch {latent_max[0]}) needs "
                                    f"{n} elements in {name}; TensorRT's limit is {MAX_TENSOR_ELEMENTS}")


@dataclass(frozen=True)
class Engine:
    """A valid cached engine: its bytes, file, cache key, plan and the ONNX it was built from."""
    data: bytes
    path: Path
    key: str
    plan: Plan
    onnx: Path


def engine_for(model, dtype, plan=None, engine_dir: str | Path = "engines", *, onnx_path=None, cache_dir=None,
               rebuild: bool = False, allow_tf32: bool = False, trt_version: str | None = None,
               gpu: str | None = None, build=None) -> Engine:
    """The engine for (model, dtype, plan) in engine_dir, built first if missing, corrupt or
    mismatched. model: an InfGen. plan: see plan_for. onnx_path: TensorRT-flavour ONNX (default
    infgen.export.onnx.cached_export into cache_dir). trt_version, gpu: default the installed TensorRT
    and the current CUDA device. build(onnx_path, plan, timing_cache, allow_tf32=...) -> bytes:
    default build_engine. Raises EngineUnbuildable before building a plan TensorRT cannot build."""
    from infgen.ref.config import dtype_name, parse_dtype
    dtype = dtype_name(parse_dtype(dtype))
    plan, _ = plan_for(model.config, engine_dir, plan)
    if trt_version is None:
        trt_version = import_tensorrt().__version__
    gpu = gpu if gpu is not None else gpu_name()
    if onnx_path is None:
        from infgen.export.onnx import cached_export
        onnx_path = cached_export(model, dtype, "tensorrt", cache_dir)
    onnx_path = Path(onnx_path)
    key = cache_key(cache.file_sha256(onnx_path), trt_version, gpu, dtype, plan, allow_tf32)
    path = engine_path(engine_dir, key)
    data, reason = (None, "rebuild requested") if rebuild else cache.read(path, key)
    if data is None:
        check_volume(model.config, plan)
        print(f"building TensorRT engine ({reason}): {len(plan.profiles)} profiles, {dtype}", flush=True)
        data = (build or build_engine)(onnx_path, plan, timing_cache_path(engine_dir, trt_version, gpu),
                                       allow_tf32=allow_tf32)
        cache.store(path, key, lambda tmp: tmp.write_bytes(data), onnx=str(onnx_path), tensorrt=trt_version,
                    gpu=gpu, dtype=dtype, tf32=allow_tf32, plan=json.loads(plan.to_json()))
    return Engine(data, path, key, plan, onnx_path)


# ----------------------------------------------------------------------------- CLI
def add_arguments(ap: argparse.ArgumentParser) -> None:
    from infgen.cli import SIZE_METAVAR, add_model_options, size_type
    add_model_options(ap, device=False, dtype_default="bf16", preset_default="paper")  # infgen.cli (cli/)
    ap.add_argument("--min-res", type=int, default=DEFAULT_MIN_RES, help="smallest output side (pixels)")
    ap.add_argument("--max-res", type=int, default=None, help="largest output side (pixels; default 4096, or the model's max_size if smaller)")
    ap.add_argument("--opt-sizes", type=size_type, nargs="+", default=DEFAULT_OPT_SIZES, metavar=SIZE_METAVAR,
                    help="WIDTHxHEIGHT sizes to tune for")
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="largest batch")
    ap.add_argument("--allow-tf32", action="store_true", help="fp32 engines may use tf32 (default exact fp32)")
    ap.add_argument("--engine-dir", default="engines", metavar="DIR",
                    help="engine cache, plan.json and timing cache (read by the runtime's TensorRT backend)")
    ap.add_argument("--cache-dir", default=None, help="ONNX export cache (default $INFGEN_CACHE or ~/.cache/infgen)")
    ap.add_argument("--onnx", default=None, help="TensorRT-flavour ONNX to build from (default: export it)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan and the equivalent commands; build nothing and write nothing")
    ap.add_argument("--write-plan", action="store_true",
                    help="with --dry-run: write ENGINE_DIR/plan.json, which the runtime reads (a build always does)")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    ap.add_argument("--plugin-lib", type=Path, default=None,
                    help="libinfgen_trt_plugins.so (CMake build, docs/native.md): print the trtexec line that loads it "
                         "and builds from the TensorRT-flavour ONNX, and the Triton Inference Server line")


def build_parser() -> argparse.ArgumentParser:
    from infgen.cli import tool_parser
    return tool_parser("python -m infgen.export.trt", "Build TensorRT engines for InfGen.", add_arguments)


def main(argv=None) -> int:
    from infgen.cli import guarded
    return guarded(_main, build_parser().parse_args(argv), errors=(TensorRTMissing, EngineUnbuildable))


def export_command(args, onnx_path: Path, flavour: str) -> str:
    """The shell line that writes onnx_path: its folder made, then `python -m infgen.export.onnx`
    with this run's model, dtype and the flavour."""
    src = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--preset", args.preset]
    export = ["python", "-m", "infgen.export.onnx", *src, "--dtype", args.dtype, "--flavour", flavour,
              "--out", str(onnx_path)]
    return f"{shlex.join(['mkdir', '-p', str(onnx_path.parent)])} && {shlex.join(export)}"


def _main(args) -> int:
    """The body of main: user errors raise (one `error:` line and exit 2 in main), and the engine
    directory and checkpoint are checked before any work. A dry run writes nothing (--write-plan:
    the plan); a build checks for TensorRT before it writes anything."""
    from infgen.ref.config import preset
    from infgen.ref.checks import check_out_dir
    check_out_dir(args.engine_dir, "--engine-dir")
    if args.onnx is not None and not Path(args.onnx).is_file():
        raise FileNotFoundError(f"--onnx: no such file {args.onnx!r}")
    if args.plugin_lib is not None and not args.plugin_lib.is_file():
        raise ValueError(f"--plugin-lib: no such file {str(args.plugin_lib)!r}; build it with cmake -S . -B build "
                 f"-DTensorRT_ROOT=... && cmake --build build (docs/native.md)")

    if args.checkpoint:
        from infgen.ref.weights import checkpoint_config
        cfg, name = checkpoint_config(args.checkpoint), Path(args.checkpoint).name
    else:
        cfg, name = preset(args.preset), args.preset
    max_res = args.max_res or min(DEFAULT_MAX_RES, cfg.max_size)
    if max_res > cfg.max_size:
        raise ValueError(f"--max-res must be at most the model's max_size {cfg.max_size}, got {max_res}")
    plan = default_plan(cfg, args.min_res, max_res, tuple(args.opt_sizes), args.batch)
    if not args.dry_run:
        import_tensorrt()  # TensorRTMissing: one error line, exit 2, nothing written
    engine_dir = Path(args.engine_dir)
    plan_path = engine_dir / "plan.json"
    if not args.dry_run or args.write_plan:
        engine_dir.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(plan.to_json())
        where = f"written to {plan_path} (the runtime's TensorRT backend reads it from --engine-dir)"
    else:
        where = "not written (--dry-run; add --write-plan to write it)"
    onnx_path = Path(args.onnx or engine_dir / f"infgen_{name}_{args.dtype}_trt.onnx")
    std_onnx = engine_dir / f"infgen_{name}_{args.dtype}.onnx"
    print(f"plan: {len(plan.profiles)} profiles over the token grid, outputs {args.min_res}..{max_res} px, "
          f"batch 1..{args.batch}, largest tensor < {plan.max_elements} elements; {where}")
    for i, p in enumerate(plan.profiles):
        lo, opt, hi = p.shapes["grid"]
        print(f"  profile {i}: grid long side {p.lo + 1}..{p.hi}  min {lo}  opt {opt}  max {hi}  "
              f"largest tensor {p.elements}")
    engine_out = engine_dir / f"infgen_{name}_{args.dtype}.engine"
    cache_file = str(engine_dir / "timing.cache")
    print("# equivalent commands: the standard-op ONNX (trtexec and polygraphy cannot load the Python plugin), "
          "then either builder")
    print(export_command(args, std_onnx, "onnxruntime"))
    print(trtexec_command(plan, str(std_onnx), str(engine_out), cache_file))
    print(polygraphy_command(plan, str(std_onnx), str(engine_out), cache_file))
    if args.plugin_lib is not None:
        lib = args.plugin_lib.resolve()
        autoreg = lib.with_name(lib.name.replace("libinfgen_trt_plugins", "libinfgen_trt_plugins_autoreg"))
        print("# with the native plugin library, trtexec builds the TensorRT-flavour ONNX (infgen::FlashAttention nodes):")
        if args.onnx is None:
            print(export_command(args, onnx_path, "tensorrt"))
        print(trtexec_command(plan, str(onnx_path), str(engine_out), cache_file, str(lib)))
        print("# serve: copy the engine to native/triton_repo/infgen_trt/1/model.plan, then")
        print(shlex.join(["tritonserver", "--model-repository=native/triton_repo",
                          f"--backend-config=tensorrt,plugins={autoreg}"]))
    if args.dry_run:
        return 0
    from infgen.export.onnx import load_model
    model = load_model(args.checkpoint, None if args.checkpoint else args.preset)
    t0 = time.perf_counter()
    engine = engine_for(model, args.dtype, plan, engine_dir, onnx_path=args.onnx, cache_dir=args.cache_dir,
                        rebuild=args.rebuild, allow_tf32=args.allow_tf32)
    print(f"engine: {engine.path} ({len(engine.data) / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
