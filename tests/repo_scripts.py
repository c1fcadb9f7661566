"""Load a repository script that is not part of the installed package (benchmarks/, scripts/) as a
module, once per process: `report = load_script("benchmarks/compile_report.py")`."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(rel_path: str):
    name = Path(rel_path).stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(ROOT / rel_path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / rel_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses and forked workers look the module up by name
    spec.loader.exec_module(mod)
    return mod
