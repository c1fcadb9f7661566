"""Value checks the library shares with the tools: one numeric value, one output path.

    check_number(name, value, kind, lo, hi, lo_open)   a number (or its text), finite, within range
    check_out_dir(d, what)                              an output directory, before any work
    check_out_file(f, what, suffix)                     an output file, before any work

Each raises ValueError/TypeError naming the value and what would be right. The command-line
flags over them (argparse types, the shared flag set, the parser conventions) are infgen.cli.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def check_number(name: str, value, kind: type = float, lo=None, hi=None, lo_open: bool = False):
    """One numeric option's value (a number, or its text) -> kind(value), finite and within
    lo..hi ((lo, hi] when lo_open); ValueError/TypeError naming it and the range otherwise. The one
    rule every numeric option and field follows: bools, NaN, inf, 1e999 and fractions for an int
    are refused, never clipped or truncated."""
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
