"""The one flag set every command-line tool shares, over config.py's tables.

    --size WxH [WxH ...]       output sizes, WIDTHxHEIGHT (3840x2160 is landscape 4K; one number: a square),
                               parsed once by config.parse_size into (height, width)
    --preset NAME | --checkpoint DIR
                               the model: a preset (demo: the bundled trained checkpoint; paper, tiny: random weights) or a checkpoint directory
    --backend NAME             choices: the engine's BACKENDS tuple (runtime/engine.py), passed in
    --device cpu|cuda[:N]
    --dtype fp32|fp16|bf16     choices: config.DTYPES

Used by `python -m infgen.runtime {decode,encode,info,demo,profile,serve,client,loadtest}` (through
runtime/cli/options.py, which supplies the backend names), `torchrun -m infgen.runtime.distributed`,
`python -m infgen.export.onnx`, `python -m infgen.export.trt` and `python -m infgen.train`. This module
sits below the runtime so that export/ can use it too: the backend names come in as an argument, never
from an import of runtime/.

The conventions every tool's parser follows (docs/cli.md): a list is one flag with space-separated
values (nargs="+"); `-o/--out FILE` names an output file, `--out-dir DIR` an output directory; every
flag with a default says it in --help (show_defaults); the usage line names the program the user ran
(prog_name). tool_parser builds a parser that way.
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


def check_number(name: str, value, kind: type = float, lo=None, hi=None, lo_open: bool = False):
    """One numeric option's value (a number, or its text) -> kind(value), finite and within
    lo..hi ((lo, hi] when lo_open); ValueError/TypeError naming it and the range otherwise. The one
    rule every numeric option and field follows: bools, NaN, inf, 1e999 and fractions for an int
    are refused, never clipped or truncated."""
    import math
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    what = "an integer" if kind is int else "a finite number"
    try:
        x = (int(value.strip()) if isinstance(value, str) else value) if kind is int else float(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be {what}, got {value!r}") from exc
    if kind is int and (isinstance(x, float) or not isinstance(x, int)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if kind is float and not math.isfinite(x):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    low_ok = lo is None or (x > lo if lo_open else x >= lo)
    if not low_ok or (hi is not None and x > hi):
        rng = (f"{'>' if lo_open else '>='} {lo}" if hi is None else f"<= {hi}" if lo is None
               else f"in {'(' if lo_open else '['}{lo}, {hi}]")
        raise ValueError(f"{name} must be {what} {rng}, got {value!r}")
    return x


def number(kind: type = float, lo=None, hi=None, lo_open: bool = False):
    """argparse type for check_number: type=number(int, 1) is an integer >= 1, type=number(float,
    0, lo_open=True) a finite number > 0."""
    def parse(text: str):
        try:
            return check_number("value", text, kind, lo, hi, lo_open)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from exc
    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in its message
    return parse


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
                     help="demo: the bundled trained checkpoint; paper, tiny: the architecture with random "
                          "weights (for testing and timing)"
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


# ----------------------------------------------------------------------------- parsers
def prog_name(default: str) -> str:
    """The program name for a usage line: the console script the user ran, by its own name (infgen,
    infgen-decode, infgen-export-onnx, ...), else default, the tool's `python -m ...` spelling (under
    `python -m`, sys.argv[0] is the module's file; in a test it is the test runner)."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    name = name[:-4] if name.lower().endswith(".exe") else name
    return name if name.startswith("infgen") and "." not in name else default


def _shown(value) -> str:
    """A default as the user would type it: lists space-separated, sizes WIDTHxHEIGHT."""
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v[1]}x{v[0]}" if isinstance(v, tuple) and len(v) == 2 else str(v) for v in value)
    return str(value)


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Append ' (default: X)' to the help of every flag that has a default (not None, False or an
    empty list) and whose help does not say it yet; subcommands' parsers too. Returns parser."""
    for action in parser._actions:  # argparse lists a parser's actions nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)
            continue
        d = action.default
        if (not action.option_strings or action.help == argparse.SUPPRESS or d is None or d is False
                or d == argparse.SUPPRESS or (isinstance(d, (list, tuple)) and not d)
                or "default" in (action.help or "")):
            continue
        note = f"default: {_shown(d)}".replace("%", "%%")
        action.help = f"{action.help} ({note})" if action.help else note
    return parser


class ToolParser(argparse.ArgumentParser):
    """argparse, with a usage error as the tools' one `error: ...` line and exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def tool_parser(prog: str, description: str, add_arguments=None) -> argparse.ArgumentParser:
    """A tool's parser: prog_name(prog) in the usage line, description as written, add_arguments(parser)
    called, then show_defaults; a usage error is one `error:` line (ToolParser)."""
    parser = ToolParser(prog=prog_name(prog), description=description,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments is not None:
        add_arguments(parser)
    return show_defaults(parser)


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
