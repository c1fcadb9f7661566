"""TensorRT engines for the InfGen decode: plan, build, cache, plugin.

    python -m export.trt --max-res 4096                 # build what the runtime serves
    python -m export.trt --max-res 4096 --dry-run       # plan only (no TensorRT needed)

Lifecycle: plan (export/plan.py: optimisation profiles over the token grid) -> ONNX, TensorRT
flavour (export/onnx.py; the mid-block attention is the node infgen::FlashAttention) ->
strongly typed engine with one profile per plan entry, a timing cache and a progress bar ->
cache under engine_dir, keyed by (ONNX sha256, TensorRT version, GPU name, dtype, plan).
A cached engine whose sidecar metadata is missing, corrupt or for another key is rebuilt.

The plugin: TensorRT's Python plugin API (tensorrt.plugin, TensorRT >= 10.9) registers
infgen::FlashAttention with an ahead-of-time implementation: the project's Triton flash kernel
(kernels/attention.py, attn_fwd_kernel) compiled to PTX at build time and embedded in the
engine, so running the engine needs no Python. TensorRT has never run in this workplace: see
docs/export.md for which functions here have never executed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from infgen_ref.config import parse_size
from export.spec import MIN_TENSORRT, PLUGIN_ID  # noqa: F401  (PLUGIN_ID: kept for importers)
from export.plan import (DEFAULT_OPT_SIZES, Plan, cache_key, engine_metadata, make_plan,
                         polygraphy_command, trtexec_command, validate_cached)



class TensorRTMissing(RuntimeError):
    """TensorRT (the Python package `tensorrt`) is not importable or too old."""


def import_tensorrt():
    """The tensorrt module, or TensorRTMissing naming the package to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTMissing("TensorRT is not installed: pip install 'tensorrt>=10.9' "
                              "(the package `tensorrt`, with a CUDA GPU and driver)") from exc
    version = tuple(int(x) for x in trt.__version__.split(".")[:2])
    if version < MIN_TENSORRT:
        raise TensorRTMissing(f"TensorRT {trt.__version__} is too old: the Python plugin API needs "
                              f"tensorrt >= {'.'.join(map(str, MIN_TENSORRT))}")
    return trt


# ----------------------------------------------------------------------------- engine cache (no TensorRT)
def engine_paths(engine_dir: str | Path, key: str) -> tuple[Path, Path]:
    """(engine file, metadata JSON) for a cache key."""
    d = Path(engine_dir)
    return d / f"infgen-{key[:24]}.engine", d / f"infgen-{key[:24]}.json"


def read_cached(engine_dir: str | Path, key: str) -> tuple[bytes | None, str]:
    """(engine bytes, "ok") if a valid cached engine exists for key, else (None, reason)."""
    engine, meta = engine_paths(engine_dir, key)
    data = engine.read_bytes() if engine.is_file() else None
    text = meta.read_text() if meta.is_file() else None
    reason = validate_cached(key, text, data)
    return (data, "ok") if reason is None else (None, reason)


def write_cached(engine_dir: str | Path, key: str, engine_bytes: bytes, **fields) -> Path:
    """Write the engine, then its metadata (the metadata is the commit: no metadata, no load)."""
    engine, meta = engine_paths(engine_dir, key)
    engine.parent.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    engine.write_bytes(engine_bytes)
    meta.write_text(json.dumps(engine_metadata(key, engine_bytes, **fields), indent=1))
    return engine


def file_sha256(path: str | Path) -> str:
    """sha256 of an ONNX file and its external data file, if any."""
    h = hashlib.sha256()
    for p in (Path(path), Path(str(path) + ".data")):
        if p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- plugin (TensorRT + Triton)
def register_plugin(allow_tf32: bool = False) -> None:
    """Register infgen::FlashAttention (export/trt_plugin.py) with TensorRT's plugin registry."""
    import_tensorrt()
    from export.trt_plugin import register
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
    written back to timing_cache. allow_tf32: fp32 engines may use tf32 (TensorRT's TF32 builder
    flag, on by default in TensorRT, is cleared otherwise, and the plugin uses exact fp32 dots)."""
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
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
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


def load_or_build(onnx_path: str | Path, plan: Plan, dtype: str, engine_dir: str | Path,
                  rebuild: bool = False):
    """(deserialised ICudaEngine, engine path): the cached engine for (ONNX, TensorRT, GPU, dtype,
    plan), built first if missing, corrupt, mismatched, or not deserialisable."""
    trt = import_tensorrt()
    register_plugin()
    key = cache_key(file_sha256(onnx_path), trt.__version__, gpu_name(), dtype, plan)
    data, reason = (None, "rebuild requested") if rebuild else read_cached(engine_dir, key)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data) if data is not None else None
    if engine is None:
        print(f"building TensorRT engine ({reason if data is None else 'cached engine did not deserialise'})",
              flush=True)
        data = build_engine(onnx_path, plan, Path(engine_dir) / "timing.cache")
        write_cached(engine_dir, key, data, onnx=str(onnx_path), tensorrt=trt.__version__, gpu=gpu_name(),
                     dtype=dtype, plan=json.loads(plan.to_json()))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine it just built")
    return engine, engine_paths(engine_dir, key)[0]


# ----------------------------------------------------------------------------- CLI
def parse_sizes(text: str) -> tuple:
    """argparse type: '1024x1024,1920x1080' (WIDTHxHEIGHT, as every tool here) -> ((1024, 1024), (1080, 1920)) as (h, w)."""
    try:
        return tuple(parse_size(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv=None) -> int:
    from infgen_ref.config import PRESETS, preset
    ap = argparse.ArgumentParser(prog="python -m export.trt", description="Build TensorRT engines for InfGen.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="InfGen checkpoint directory")
    src.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    ap.add_argument("--min-res", type=int, default=256, help="smallest output side (pixels)")
    ap.add_argument("--max-res", type=int, default=4096, help="largest output side (pixels)")
    ap.add_argument("--opt-sizes", type=parse_sizes, default=DEFAULT_OPT_SIZES,
                    help="WIDTHxHEIGHT sizes to tune for, comma-separated (default: 1024x1024,1920x1080,"
                         "2048x2048,3840x2160,4096x4096)")
    ap.add_argument("--batch", type=int, default=1, help="largest batch")
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--engine-dir", default="engines")
    ap.add_argument("--onnx", default=None, help="TensorRT-flavour ONNX to build from (default: export it)")
    ap.add_argument("--dry-run", action="store_true", help="write the plan and print commands; build nothing")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    ap.add_argument("--plugin-lib", type=Path, default=None,
                    help="libinfgen_trt_plugins.so (CMake build, docs/native.md): print the trtexec line that loads it "
                         "and builds from the TensorRT-flavour ONNX, and the Triton Inference Server line")
    args = ap.parse_args(argv)
    if args.plugin_lib is not None and not args.plugin_lib.is_file():
        ap.error(f"--plugin-lib: no such file {str(args.plugin_lib)!r}; build it with cmake -S . -B build "
                 f"-DTensorRT_ROOT=... && cmake --build build (docs/native.md)")

    if args.checkpoint:
        from infgen_ref.weights import checkpoint_config
        cfg, name = checkpoint_config(args.checkpoint), Path(args.checkpoint).name
    else:
        cfg, name = preset(args.preset), args.preset
    if args.max_res > cfg.max_size:
        ap.error(f"--max-res must be at most the model's max_size {cfg.max_size}, got {args.max_res}")
    try:
        plan = make_plan(args.min_res, args.max_res, args.opt_sizes, args.batch, cfg.upscale, cfg.latent_channels)
    except ValueError as exc:
        ap.error(str(exc))
    engine_dir = Path(args.engine_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    plan_path = engine_dir / "plan.json"
    plan_path.write_text(plan.to_json())
    onnx_path = Path(args.onnx or engine_dir / f"infgen_{name}_{args.dtype}_trt.onnx")
    std_onnx = onnx_path.with_name(onnx_path.name.replace("_trt.onnx", ".onnx"))
    print(f"plan: {len(plan.profiles)} profiles over the token grid, outputs {args.min_res}..{args.max_res} px, "
          f"batch 1..{args.batch}; written to {plan_path}")
    for i, p in enumerate(plan.profiles):
        lo, opt, hi = p.shapes["grid"]
        print(f"  profile {i}: grid long side {p.lo + 1}..{p.hi}  min {lo}  opt {opt}  max {hi}")
    engine_out = engine_dir / f"infgen_{name}_{args.dtype}.engine"
    print("# equivalent commands (standard-op ONNX from `python -m export.onnx`: trtexec and polygraphy "
          "cannot load the Python plugin)")
    print(trtexec_command(plan, str(std_onnx), str(engine_out), str(engine_dir / "timing.cache")))
    print(polygraphy_command(plan, str(std_onnx), str(engine_out), str(engine_dir / "timing.cache")))
    if args.plugin_lib is not None:
        lib = args.plugin_lib.resolve()
        autoreg = lib.with_name(lib.name.replace("libinfgen_trt_plugins", "libinfgen_trt_plugins_autoreg"))
        print("# with the native plugin library, trtexec builds the TensorRT-flavour ONNX (infgen::FlashAttention nodes):")
        src = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--preset", args.preset]
        print(shlex.join(["python", "-m", "export.onnx", *src, "--dtype", args.dtype, "--flavour", "tensorrt",
                          "--out", str(onnx_path)]))
        print(trtexec_command(plan, str(onnx_path), str(engine_out), str(engine_dir / "timing.cache"), str(lib)))
        print("# serve: copy the engine to native/triton_repo/infgen_trt/1/model.plan, then")
        print(shlex.join(["tritonserver", "--model-repository=native/triton_repo",
                          f"--backend-config=tensorrt,plugins={autoreg}"]))
    if args.dry_run:
        return 0
    try:
        import_tensorrt()
    except TensorRTMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not onnx_path.is_file():
        from export.onnx import export_onnx, load_model
        print(f"exporting {onnx_path} (TensorRT flavour, {args.dtype})", flush=True)
        export_onnx(load_model(args.checkpoint, None if args.checkpoint else args.preset), onnx_path,
                    args.dtype, "tensorrt")
    t0 = time.perf_counter()
    _, path = load_or_build(onnx_path, plan, args.dtype, engine_dir, rebuild=args.rebuild)
    print(f"engine: {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
