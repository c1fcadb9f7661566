"""The numpy half of the latent dtype rule, with no torch import: InfGenClient (runtime/client.py)
checks a latent with it before sending, and infgen.ref.model.check_floating applies it to numpy
arrays at every other door (the API, `decode`, the `client` CLI)."""
from __future__ import annotations

import numpy as np


def check_floating_array(a: np.ndarray, what: str = "latent") -> np.ndarray:
    """A numpy array of a floating dtype is returned unchanged; integer, bool, complex and object
    dtypes are a TypeError naming the dtype (never cast: an integer latent is not a diffusion latent)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{what} must be a floating array, got numpy dtype {a.dtype}")
    return a
