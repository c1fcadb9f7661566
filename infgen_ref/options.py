"""The one flag set every command-line tool shares, over config.py's tables.

    --size WxH [WxH ...]       output sizes, WIDTHxHEIGHT (3840x2160 is landscape 4K; one number: a square),
                               parsed once by config.parse_size into (height, width)
    --preset NAME | --checkpoint DIR
                               the model: random weights of a preset, or a checkpoint directory
    --backend NAME             choices: the engine's BACKENDS tuple (runtime/engine.py), passed in
    --device cpu|cuda[:N]
    --dtype fp32|fp16|bf16     choices: config.DTYPES

Used by `python -m infgen.runtime {decode,encode,info,demo,profile,serve,client,loadtest}` (through
runtime/cli/options.py, which supplies the backend names), `python -m infgen.export.onnx` and
`python -m infgen.export.trt`. This module sits below the runtime so that export/ can use it too: the
backend names come in as an argument, never from an import of runtime/.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from infgen.ref.config import DTYPES, PRESETS, parse_size

SHARED_FLAGS = ("--size", "--preset", "--checkpoint", "--backend", "--device", "--dtype")
DTYPE_CHOICES = tuple(sorted(DTYPES))
SIZE_METAVAR = "WxH"


def size_type(text: str) -> tuple[int, int]:
    """argparse type: 'WIDTHxHEIGHT' (or 'N' for a square) -> (height, width)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def add_size_option(p: argparse.ArgumentParser, *, required: bool = False, default=None,
                    what: str = "output size(s)") -> None:
    """--size WxH [WxH ...] -> args.size, a list of (height, width)."""
    note = "" if default is None else " (default: " + " ".join(f"{w}x{h}" for h, w in default) + ")"
    p.add_argument("--size", type=size_type, nargs="+", required=required, default=default, metavar=SIZE_METAVAR,
                   help=f"{what}, WIDTHxHEIGHT, e.g. --size 3840x2160 1024 (one number: a square){note}")


def add_model_options(p: argparse.ArgumentParser, *, backends: tuple[str, ...] = (), backend_default="torch",
                      several_backends: bool = False, device: bool = True, device_default: str | None = "cpu",
                      device_help: str | None = None, dtype: bool = True, dtype_default: str | None = None,
                      dtype_help: str | None = None, preset_default: str | None = None,
                      checkpoint_help: str | None = None) -> None:
    """The model group: --preset/--checkpoint (exclusive), and --backend (when backends are given),
    --device and --dtype. several_backends: --backend takes a list (the profiler)."""
    g = p.add_argument_group("model (the flags every tool shares)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default=preset_default,
                     help="architecture preset with random weights (for testing and timing)"
                          + ("" if preset_default is None else " (default: %(default)s)"))
    src.add_argument("--checkpoint", metavar="DIR",
                     help=checkpoint_help or "InfGen checkpoint directory (config.json + model.safetensors)")
    if backends:
        if several_backends:
            g.add_argument("--backend", choices=backends, nargs="+", default=list(backend_default),
                           help=f"one or more backends (default: {' '.join(backend_default)})")
        else:
            g.add_argument("--backend", choices=backends, default=backend_default, help="default: %(default)s")
    if device:
        g.add_argument("--device", default=device_default,
                       help=device_help or "cpu or cuda[:N] (default: %(default)s)")
    if dtype:
        g.add_argument("--dtype", choices=DTYPE_CHOICES, default=dtype_default,
                       help=dtype_help or ("compute dtype (default: fp32 on the CPU, bf16 on CUDA)"
                                           if dtype_default is None else "default: %(default)s"))


# ----------------------------------------------------------------------------- user errors and outputs
EXIT_USAGE = 2
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)  # CheckpointError is a ValueError


def user_error(exc: BaseException) -> int:
    """Print one `error: ...` line on stderr for a user error; returns EXIT_USAGE (2)."""
    msg = str(exc).strip().replace("\n", "; ") or type(exc).__name__
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def guarded(run, *args, errors: tuple = ()) -> int:
    """run(*args), a tool's body: a user error (USER_ERRORS or errors; MemoryError too: a request
    too large for this machine) becomes one `error:` line and exit status 2, no traceback."""
    try:
        return run(*args)
    except (*USER_ERRORS, MemoryError, *errors) as exc:
        return user_error(exc)


def check_out_dir(d, what: str = "--out") -> None:
    """An output directory, checked before any work: d is a writable directory, or the nearest
    existing ancestor is one (d will be made). ValueError naming it."""
    p = Path(d)
    while not p.exists():
        if p.is_symlink() or p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(d)!r}: {str(p)!r} is a file, not a directory")
    if not os.access(p if p.exists() else ".", os.W_OK):
        raise ValueError(f"{what} {str(d)!r} is not writable")


def check_out_file(f, what: str = "--out", suffix: str | tuple[str, ...] | None = None) -> None:
    """An output file, checked before any work: not a directory, the suffix (one, or any of
    several) if given, its directory exists and is writable (the tool does not create it). ValueError
    naming the path. infgen.runtime.io.check_writable is this for the library."""
    p = Path(f)
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if p.is_dir():
        raise ValueError(f"{what} path {str(p)!r} is a directory; give a file name")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} file must end in {', '.join(suffixes)}, got {str(p)!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{what} directory {str(parent)!r} does not exist (or is not a directory)")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{what} path {str(p)!r} is not writable")
