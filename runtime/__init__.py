"""InfGen deployment runtime: `from infgen.runtime import InfGenEngine`."""
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.engine import BACKENDS, InfGenEngine

__all__ = ["BACKENDS", "InfGenEngine", "MemoryBudgetError"]
