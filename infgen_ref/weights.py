"""Weights: SDXL VAE (diffusers format) into InfGen's shared layers; InfGen checkpoints.

An InfGen checkpoint is a directory holding `config.json` (InfGenConfig) and
`model.safetensors`. Nothing here unpickles: safetensors only.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import DEMO_CHECKPOINT
from .config import CHECKPOINT_REQUIRED, InfGenConfig, param_count, preset
from .model import InfGen

# InfGen's own layers: not in an SDXL VAE checkpoint, left initialised by load_sdxl_vae.
NEW_PREFIXES = ("decoder.conv_tokens.", "decoder.latent_pos.", "decoder.mask_pos.", "decoder.mask_token",
                "decoder.blocks.", "decoder.norm_tokens.")
# Older diffusers checkpoints name the mid-block attention like this.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# Presets that name trained weights: --preset demo and InfGenEngine("demo") load the bundled
# checkpoint. The trainer (`python -m infgen.train --preset demo`) builds the architecture alone.
TRAINED_PRESETS = {"demo": DEMO_CHECKPOINT}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as is: lists every missing, unexpected or mis-shaped key."""


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def _check_values(state: dict[str, torch.Tensor], source: str) -> None:
    """Every tensor floating point and finite; all offending keys in one CheckpointError.

    Integer, bool and complex tensors would be cast silently by copy_; NaN/inf weights decode to
    NaN images. float8 and other small floats are checked through float32."""
    wrong_dtype, non_finite = [], []
    for k, t in state.items():
        if not t.is_floating_point():
            wrong_dtype.append(f"{k} ({t.dtype})")
            continue
        v = t if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else t.float()
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            non_finite.append(f"{k} ({bad} of {t.numel()})")
    if wrong_dtype or non_finite:
        lines = [f"cannot load {source}:"]
        if wrong_dtype:
            lines.append(f"  {len(wrong_dtype)} not floating point: " + ", ".join(wrong_dtype[:20])
                         + (" ..." if len(wrong_dtype) > 20 else ""))
        if non_finite:
            lines.append(f"  {len(non_finite)} with NaN/inf values: " + ", ".join(non_finite[:20])
                         + (" ..." if len(non_finite) > 20 else ""))
        raise CheckpointError("\n".join(lines))


def _map_vae_key(key: str, t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The one load-time re-layout: legacy attention names, and 1x1-conv attention weights -> Linear."""
    parts = key.split(".")
    if "attentions" in parts and parts[-2] in _LEGACY_ATTN:
        key = ".".join(parts[:-2] + [_LEGACY_ATTN[parts[-2]], parts[-1]])
    if ".attentions." in key and key.endswith("weight") and t.dim() == 4 and t.shape[2:] == (1, 1):
        t = t[:, :, 0, 0]
    return key, t


def _assign(model: InfGen, state: dict[str, torch.Tensor], expected: set[str], source: str) -> None:
    """Copy state into model, checking the key set and every shape first; all problems in one error."""
    own = model.state_dict()
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in expected & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or misshaped:
        lines = [f"cannot load {source}:"]
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"  {len(keys)} {what}: " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for k in expected:
            own[k].copy_(state[k])


def load_sdxl_vae(model: InfGen, path: str | Path) -> InfGen:
    """Load a diffusers-format SDXL VAE (safetensors) into the encoder and the shared decoder layers."""
    path = Path(path)
    state = dict(_map_vae_key(k, v) for k, v in _read_safetensors(path).items())
    _check_values(state, str(path))
    expected = {k for k in model.state_dict() if not k.startswith(NEW_PREFIXES)}
    _assign(model, state, expected, str(path))
    return model


def save_checkpoint(model: InfGen, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (float32 or the model's dtype) into directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.config.to_json(d / "config.json")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "infgen"})
    return d


def load_checkpoint(directory: str | Path) -> InfGen:
    """Read an InfGen checkpoint directory; any mismatch between config and tensors is an error.

    Order: config (every field checked, CHECKPOINT_REQUIRED present, parameter count under the
    limit) -> the weights file is large enough for that count (1 byte per parameter at least:
    float8) -> tensors read, floating and finite -> model built -> keys and shapes checked."""
    d = Path(directory)
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    cfg = checkpoint_config(d)
    if not w_path.is_file():
        raise FileNotFoundError(f"no such weights file: {w_path}")
    n, size = param_count(cfg), w_path.stat().st_size
    if size < n:
        raise CheckpointError(f"{cfg_path} describes {n:,} parameters but {w_path} holds only {size:,} bytes")
    state = _read_safetensors(w_path)
    _check_values(state, str(w_path))
    model = InfGen(cfg)
    _assign(model, state, set(model.state_dict()), str(w_path))
    return model.eval()


def preset_model(name: str) -> InfGen:
    """A preset's model: "demo" is the bundled trained checkpoint (TRAINED_PRESETS), the others
    (paper, tiny) their architecture with seed-0 random weights, the global RNG untouched."""
    if name in TRAINED_PRESETS:
        d = TRAINED_PRESETS[name]
        if not (d / "model.safetensors").is_file():
            raise FileNotFoundError(f"preset {name!r} is the bundled checkpoint {d}, which is not installed "
                                    f"(reinstall the package, or pass a checkpoint directory)")
        return load_checkpoint(d)
    cfg = preset(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return InfGen(cfg).eval()


def checkpoint_config(directory: str | Path) -> InfGenConfig:
    """The config of a checkpoint directory, every CHECKPOINT_REQUIRED field stated; CheckpointError
    (a ValueError) naming the file for a bad one."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no such checkpoint directory: {str(d)!r}")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{d} is not an InfGen checkpoint: no config.json")
    try:
        return InfGenConfig.from_json(cfg_path, required=CHECKPOINT_REQUIRED)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: bad config: {exc}") from exc


__all__ = ["CheckpointError", "load_sdxl_vae", "save_checkpoint", "load_checkpoint", "checkpoint_config",
           "NEW_PREFIXES"]
