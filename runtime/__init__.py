"""InfGen deployment runtime: `from infgen.runtime import InfGenEngine`.

The names below are imported on first use, so importing a torch-free module of this package
(`infgen.runtime.client`, `infgen.runtime.gate`) does not load torch or the engine."""
from __future__ import annotations

import importlib

_LAZY = {"BACKENDS": "infgen.runtime.engine", "InfGenEngine": "infgen.runtime.engine",
         "MemoryBudgetError": "infgen.runtime.anysize"}  # name -> the module that defines it

__all__ = ["BACKENDS", "InfGenEngine", "MemoryBudgetError"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
