"""InfGen deployment runtime: `from runtime import InfGenEngine`."""
from runtime.anysize import MemoryBudgetError
from runtime.engine import BACKENDS, InfGenEngine

__all__ = ["BACKENDS", "InfGenEngine", "MemoryBudgetError"]
