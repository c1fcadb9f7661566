"""Files in and out of the runtime: latents (.npy, .pt, .safetensors) and images (PNG, JPEG).

Nothing here executes code from a file: .npy is read with allow_pickle=False, .pt only through
torch.load(weights_only=True), safetensors is data only.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

LATENT_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _existing(path: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} file must end in {', '.join(suffixes)}, got {str(p)!r}")
    if not p.is_file():
        raise FileNotFoundError(f"no such {what} file: {str(p)!r}")
    return p


def _pick(tensors: dict, path: Path) -> torch.Tensor:
    """The tensor under key "latent", or the only tensor of the dict."""
    if "latent" in tensors:
        t = tensors["latent"]
    elif len(tensors) == 1:
        t = next(iter(tensors.values()))
    else:
        raise ValueError(f"{str(path)!r} holds {len(tensors)} entries {sorted(map(str, tensors))[:10]}: "
                         "expected one tensor or a key named 'latent'")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{str(path)!r}: the latent entry is a {type(t).__name__}, not a tensor")
    return t


def load_latent(path: str | Path) -> torch.Tensor:
    """Read a latent (C, h, w) or (B, C, h, w) as stored (no dtype change, on the CPU).

    .npy: a plain array (pickled object arrays are refused); .pt/.pth: a tensor, or a dict holding
    one tensor or a "latent" key; .safetensors: the "latent" tensor or the only tensor."""
    p = _existing(path, LATENT_SUFFIXES, "latent")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:  # numpy's refusal of object arrays, or a malformed header
            raise ValueError(f"{str(p)!r} is not a plain numeric .npy array (pickled data is refused): {exc}") from exc
        except (OSError, EOFError) as exc:
            raise ValueError(f"{str(p)!r} is not a readable .npy file: {exc}") from exc
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise ValueError(f"{str(p)!r} must hold a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
        return torch.from_numpy(np.ascontiguousarray(arr))
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{str(p)!r} holds more than tensors; only weights_only torch files are read: "
                             f"{exc}") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ValueError(f"{str(p)!r} is not a readable torch file: {exc}") from exc
        if isinstance(obj, torch.Tensor):
            return obj
        if isinstance(obj, dict):
            return _pick(obj, p)
        raise ValueError(f"{str(p)!r} must hold a tensor or a dict of tensors, got {type(obj).__name__}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return _pick(load_file(str(p)), p)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{str(p)!r} is not a readable safetensors file: {exc}") from exc


def save_latent(latent, path: str | Path) -> Path:
    """Write a latent tensor or array to .npy, .pt/.pth or .safetensors (key "latent")."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise ValueError(f"latent file must end in {', '.join(LATENT_SUFFIXES)}, got {str(p)!r}")
    t = torch.as_tensor(latent).detach().cpu().contiguous()
    if suffix == ".npy":
        np.save(p, t.numpy())
    elif suffix in (".pt", ".pth"):
        torch.save(t, p)
    else:
        from safetensors.torch import save_file
        save_file({"latent": t}, str(p))
    return p


def load_image(path: str | Path) -> torch.Tensor:
    """PNG/JPEG -> (1, 3, H, W) float32 in [-1, 1] (any mode converted to RGB)."""
    from PIL import Image, UnidentifiedImageError
    p = _existing(path, IMAGE_SUFFIXES, "image")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{str(p)!r} is not a readable image: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous() / 127.5 - 1.0  # (1, 3, H, W)
