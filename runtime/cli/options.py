"""What the runtime's tools share: the flag set (infgen.cli) with the engine's backend
names, the default model, building the engine from the flags, and the one error convention
(one `error: ...` line on stderr, exit status 2)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infgen import cli as _cli
from infgen.cli import add_size_option, guarded, positive_int, size_type  # noqa: F401 - add_size_option, size_type re-exported
from infgen.ref import DEMO_CHECKPOINT
from infgen.ref.weights import TRAINED_PRESETS
from infgen.runtime.engine import BACKENDS
from infgen.runtime.engine import default_model as engine_default_model

RANDOM_NOTICE = "weights are random: the images are noise (no trained checkpoint was given or bundled)"
DEFAULT_MODEL_HELP = ("InfGen checkpoint directory (config.json + model.safetensors); default: the bundled demo "
                      "checkpoint if installed, else --preset tiny")


def add_model_options(p: argparse.ArgumentParser, **kw) -> None:
    """infgen.cli.add_model_options with the engine's BACKENDS as the --backend choices
    (backends=() where a tool runs no engine)."""
    kw.setdefault("checkpoint_help", DEFAULT_MODEL_HELP)
    kw.setdefault("backends", BACKENDS)
    _cli.add_model_options(p, **kw)


def add_memory_options(p: argparse.ArgumentParser, banded: bool = True) -> None:
    """The any-size flags (docs/anysize.md): --max-memory, --band-rows and (decode) --banded."""
    g = p.add_argument_group("memory (docs/anysize.md)")
    g.add_argument("--max-memory", metavar="BYTES", help="memory budget for one decode, e.g. 24GB or 512MiB "
                   "(default: free device memory, or available RAM, minus 10%%); past it the decode runs in bands")
    if banded:
        g.add_argument("--banded", choices=("auto", "on", "off"), default="auto",
                       help="banded decode: auto (when the plain one would not fit the budget), on, off "
                            "(default: %(default)s)")
    g.add_argument("--band-rows", type=positive_int, help="rows per band (default: sized by bytes)")


def default_model() -> str:
    """The bundled demo checkpoint directory if present, else the "tiny" preset (random weights):
    engine.default_model, the model of InfGenEngine() too."""
    return engine_default_model(DEMO_CHECKPOINT)


def model_spec(args) -> str:
    """--checkpoint DIR, else --preset NAME (--preset demo: the bundled checkpoint's directory), else
    default_model()."""
    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_dir():
            raise FileNotFoundError(f"--checkpoint must be a directory, got {args.checkpoint!r}")
        return args.checkpoint
    if args.preset in TRAINED_PRESETS:
        return str(TRAINED_PRESETS[args.preset])
    return args.preset or default_model()


def load_engine(args):
    """The InfGenEngine the flags name; says on stderr when its weights are random."""
    from infgen.runtime.engine import InfGenEngine
    memory = {}
    if hasattr(args, "max_memory"):
        memory = dict(max_memory=args.max_memory, band_rows=args.band_rows,
                      banded={"auto": "auto", "on": True, "off": False}[getattr(args, "banded", "auto")])
    engine = InfGenEngine(model_spec(args), backend=args.backend, device=args.device, dtype=args.dtype, **memory)
    if engine.random_weights:
        print(f"note: {RANDOM_NOTICE}", file=sys.stderr)
    return engine


def tool_main(prog: str, doc: str, add_arguments, run, argv=None, errors: tuple = ()) -> int:
    """A tool run on its own (the infgen-serve entry point, `python -m infgen.runtime.cli.serve`): parse, run,
    turn user errors into one line and exit status 2 (infgen.cli.guarded). ImportError: an
    optional package is missing (its message says which). prog: the console script, infgen-COMMAND;
    the usage line says it when that is what ran, else `python -m infgen.runtime COMMAND`."""
    command = prog.removeprefix("infgen-")
    parser = _cli.tool_parser(f"python -m infgen.runtime {command}", doc.split("\n\n")[0], add_arguments)
    args = parser.parse_args(argv)
    return guarded(run, args, errors=errors)
