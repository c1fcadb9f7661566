"""infgen.cli: the one flag set every command-line tool shares, over infgen.ref.config's tables.

    --size WxH [WxH ...]       output sizes, WIDTHxHEIGHT (3840x2160 is landscape 4K; one number: a square),
                               parsed once by infgen.ref.config.parse_size into (height, width)
    --preset NAME | --checkpoint DIR
                               the model: a preset (demo: the bundled trained checkpoint; paper, tiny: random weights) or a checkpoint directory
    --backend NAME             choices: the engine's BACKENDS tuple (runtime/engine.py), passed in
    --device cpu|cuda[:N]
    --dtype fp32|fp16|bf16     choices: config.DTYPES

Used by `python -m infgen.runtime {decode,encode,info,demo,profile,serve,client,loadtest}` (through
runtime/cli/options.py, which supplies the backend names), `torchrun -m infgen.runtime.distributed`,
`python -m infgen.export.onnx`, `python -m infgen.export.trt`, `python -m infgen.train` and the
scripts. This package sits below export/, train/ and the runtime, just above infgen.ref (its tables
and value checks, infgen.ref.checks), so that all of them can use it: the backend names come in as
an argument, never from an import of runtime/. The library never imports it.

The conventions every tool's parser follows (docs/cli.md): a list is one flag with space-separated
values (nargs="+"); `-o/--out FILE` names an output file, `--out-dir DIR` an output directory; every
flag with a default says it in --help (show_defaults); the usage line names the program the user ran
(prog_name). tool_parser builds a parser that way; guarded runs a tool's body, a user error
becoming one `error: ...` line and exit status 2 (EXIT_USAGE).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infgen.ref.checks import check_number
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


positive_int = number(int, 1)  # argparse type: an integer >= 1


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


# ----------------------------------------------------------------------------- user errors
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
