"""InfGen configuration: one dataclass, presets as a plain dict, JSON round trip."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    """'fp32' | 'fp16' | 'bf16' | torch.float32 | ... -> torch.dtype, or ValueError naming the value."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        key = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "half": "fp16",
               "float": "fp32"}.get(dtype, dtype)
        if key in DTYPES:
            return DTYPES[key]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or the torch dtype), got {dtype!r}")


def parse_size(text) -> tuple[int, int]:
    """A size as users write it, 'WIDTHxHEIGHT' ('3840x2160' is landscape 4K) or 'N' for a square,
    -> (height, width), the order of tensor shapes. Range checks belong to the model's config."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"size must be WIDTHxHEIGHT like 3840x2160 (or one number for a square), got {text!r}")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else w
    return h, w


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


@dataclass
class InfGenConfig:
    """Every architecture choice of InfGen. Defaults are the paper preset (SDXL VAE + 8 blocks)."""

    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2            # encoder resnets per block; the decoder has one more
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    num_blocks: int = 8                  # cross-attention blocks
    num_heads: int = 8
    mlp_ratio: float = 4.0
    inpe_fourier_dim: int = 64           # Gaussian frequencies; features are 2x this (cos, sin)
    inpe_scale: float = 1.0              # std of the Fourier matrix B
    inpe_seed: int = 0                   # B is drawn from this seed at build time, not stored in checkpoints
    scaling_factor: float = 0.13025
    latent_size: int = 64                # the default latent grid (64 for SDXL, 32 for DiT-style)
    max_size: int = 4096                 # largest output height or width
    # derived
    token_dim: int = field(init=False)
    head_dim: int = field(init=False)
    upscale: int = field(init=False)     # pixels per latent / mask token

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.token_dim = self.block_out_channels[-1]
        if self.token_dim % self.num_heads:
            raise ValueError(f"token_dim {self.token_dim} is not divisible by num_heads {self.num_heads}")
        self.head_dim = self.token_dim // self.num_heads
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
        self.upscale = 2 ** (len(self.block_out_channels) - 1)
        if self.max_size < self.upscale:
            raise ValueError(f"max_size must be >= {self.upscale}, got {self.max_size}")

    @property
    def mlp_dim(self) -> int:
        return int(self.token_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "InfGenConfig":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "InfGenConfig":
        p = Path(text_or_path)
        text = p.read_text() if not str(text_or_path).lstrip().startswith("{") else str(text_or_path)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError(f"config JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)


# name -> kwargs; this dict is the CLI's --preset choices.
PRESETS: dict[str, dict] = {
    "paper": {},
    "tiny": dict(block_out_channels=(16, 32, 32, 64), layers_per_block=1, norm_num_groups=8,
                 num_blocks=2, num_heads=4, inpe_fourier_dim=16, max_size=2048),
    "demo": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=4, num_blocks=2,
                 num_heads=4, inpe_fourier_dim=32, latent_size=16, max_size=2048),
}


def preset(name: str, **overrides) -> InfGenConfig:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return InfGenConfig(**{**PRESETS[name], **overrides})
