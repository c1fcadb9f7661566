"""The runtime's applications: `python -m infgen.runtime COMMAND` (or the `infgen` entry point).

    decode    latent file -> images at any sizes          runtime/cli/decode.py
    encode    image -> latent file                        runtime/cli/encode.py
    info      config, parameters, FLOPs, the floor        runtime/cli/info.py
    demo      the bundled photo (or a test pattern)       runtime/cli/demo.py
    profile   latency, memory, TFLOP/s per stage          runtime/cli/profiler.py (+ profile_measure, profile_report)
    serve     Triton Inference Server                     runtime/cli/serve.py
    client    decode on a server                          runtime/cli/client.py
    loadtest  Locust against a server                     runtime/cli/loadtest.py

Each tool module has HELP, add_arguments(parser), run(args) and main(argv) (its own entry point,
`infgen-<command>`). The flags they share (--size WIDTHxHEIGHT, --preset/--checkpoint, --backend,
--device, --dtype) are defined once, in infgen.cli (cli/__init__.py). User errors print one `error: ...`
line on stderr and exit with status 2. The library (engine, backends, io, serving) never imports
this package.
"""
from __future__ import annotations

import argparse
import importlib

COMMANDS = {"decode": "decode", "encode": "encode", "info": "info", "demo": "demo", "profile": "profiler",
            "serve": "serve", "client": "client", "loadtest": "loadtest"}  # command -> module in infgen.runtime.cli


def tool(command: str):
    """The module behind a command (imported on first use: serve's and profile's imports stay lazy)."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {sorted(COMMANDS)}, got {command!r}")
    return importlib.import_module(f"infgen.runtime.cli.{COMMANDS[command]}")


def build_parser() -> argparse.ArgumentParser:
    """`infgen COMMAND ...` (usage: infgen decode ...) or `python -m infgen.runtime COMMAND ...`."""
    from infgen.cli import ToolParser, prog_name, show_defaults
    parser = ToolParser(  # a usage error is one `error:` line, as every tool's
        prog=prog_name("python -m infgen.runtime"),
        description="InfGen runtime: decode one latent into an image of any size in one pass.",
        epilog="Sizes are WIDTHxHEIGHT (3840x2160 is landscape 4K); one number means a square.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        mod = tool(command)
        p = sub.add_parser(command, help=mod.HELP, description=mod.__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(module=mod)
    return show_defaults(parser)


def main(argv: list[str] | None = None) -> int:
    from infgen.cli import guarded
    args = build_parser().parse_args(argv)
    extra = args.module.user_errors() if hasattr(args.module, "user_errors") else ()
    # ImportError: a backend's optional package is missing (its message says which).
    return guarded(args.module.run, args, errors=tuple(extra))
