"""InfGen configuration: one dataclass, presets as a plain dict, JSON round trip."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .walk import meta_model

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


# Limits on what a config may describe (ValueError past them). A config is a few hundred bytes;
# the paper preset has 112 M parameters; MAX_PARAMS is 2 G (8 GB in fp32), checked on the model
# built on the meta device (param_count: shapes only) before any module with weights is built.
MAX_PARAMS = 2_000_000_000
MAX_CONFIG_BYTES = 64 * 1024
MAX_SIDE = 32768                     # the largest max_size a config may set
SCALING_RANGE = (1e-6, 1e6)          # |scaling_factor|; the decode divides by it
# Fields a checkpoint's config.json must state: everything that shapes the numbers but not the
# tensor shapes (scaling_factor, norm_eps, num_heads, INPE) and the architecture the tensors are
# checked against. latent_size and max_size are limits of use and may take their defaults.
CHECKPOINT_REQUIRED = ("in_channels", "latent_channels", "block_out_channels", "layers_per_block",
                       "norm_num_groups", "norm_eps", "num_blocks", "num_heads", "mlp_ratio",
                       "inpe_fourier_dim", "inpe_scale", "inpe_seed", "scaling_factor")


def _int(name: str, v, lo: int, hi: int) -> int:
    """An integer field (not bool, not float) in lo..hi, else TypeError/ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"config field {name} must be an int, got {type(v).__name__} {v!r}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"config field {name} must be {lo}..{hi}, got {v!r}")
    return int(v)


def _real(name: str, v) -> float:
    """A finite real field (int or float, not bool), else TypeError/ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"config field {name} must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"config field {name} must be finite, got {v!r}")
    return v


def param_count(cfg: "InfGenConfig") -> int:
    """Parameters of InfGen(cfg), encoder included: counted on the model built on the meta device
    (shapes only, no memory: infgen_ref/walk.py), so before any module with weights exists."""
    return sum(p.numel() for p in meta_model(cfg).parameters())


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"config JSON repeats the key(s) {dup}")
    return dict(pairs)


@dataclass
class InfGenConfig:
    """Every architecture choice of InfGen. Defaults are the paper preset (SDXL VAE + 8 blocks).

    Every field is type- and range-checked in __post_init__ (TypeError/ValueError naming the field
    and value), and so is the parameter count the config implies (<= MAX_PARAMS)."""

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
    max_size: int = 16384                # largest output height or width (past one GPU's memory the
                                         # engine decodes in bands: docs/anysize.md)
    # derived
    token_dim: int = field(init=False)
    head_dim: int = field(init=False)
    upscale: int = field(init=False)     # pixels per latent / mask token

    def __post_init__(self):
        self.in_channels = _int("in_channels", self.in_channels, 3, 3)  # RGB: images are (B, 3, H, W)
        self.latent_channels = _int("latent_channels", self.latent_channels, 1, 64)
        ch = self.block_out_channels
        if isinstance(ch, (str, bytes)) or not isinstance(ch, (list, tuple)) or not 1 <= len(ch) <= 8:
            raise TypeError(f"config field block_out_channels must be a list of 1..8 ints, got {ch!r}")
        self.block_out_channels = tuple(_int(f"block_out_channels[{i}]", c, 1, 65536) for i, c in enumerate(ch))
        self.layers_per_block = _int("layers_per_block", self.layers_per_block, 1, 64)
        self.norm_num_groups = _int("norm_num_groups", self.norm_num_groups, 1, 65536)
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"config field block_out_channels: channels {c} not divisible by "
                                 f"norm_num_groups {self.norm_num_groups}")
        self.norm_eps = _real("norm_eps", self.norm_eps)
        if not 0 < self.norm_eps <= 1:
            raise ValueError(f"config field norm_eps must be in (0, 1], got {self.norm_eps!r}")
        self.num_blocks = _int("num_blocks", self.num_blocks, 0, 256)
        self.token_dim = self.block_out_channels[-1]
        self.num_heads = _int("num_heads", self.num_heads, 1, self.token_dim)
        if self.token_dim % self.num_heads:
            raise ValueError(f"config field num_heads {self.num_heads} does not divide token_dim "
                             f"{self.token_dim} (the last of block_out_channels)")
        self.head_dim = self.token_dim // self.num_heads
        self.mlp_ratio = _real("mlp_ratio", self.mlp_ratio)
        if not 0 < self.mlp_ratio <= 64 or self.mlp_dim < 1:
            raise ValueError(f"config field mlp_ratio must be in (0, 64] with token_dim * mlp_ratio >= 1, "
                             f"got {self.mlp_ratio!r}")
        self.inpe_fourier_dim = _int("inpe_fourier_dim", self.inpe_fourier_dim, 1, 4096)
        self.inpe_scale = _real("inpe_scale", self.inpe_scale)
        if not 0 < self.inpe_scale <= 1e4:
            raise ValueError(f"config field inpe_scale must be in (0, 1e4], got {self.inpe_scale!r}")
        self.inpe_seed = _int("inpe_seed", self.inpe_seed, 0, 2 ** 63 - 2)  # seed + 1 is used too
        self.scaling_factor = _real("scaling_factor", self.scaling_factor)
        lo, hi = SCALING_RANGE
        if not lo <= abs(self.scaling_factor) <= hi:
            raise ValueError(f"config field scaling_factor must be non-zero with magnitude {lo:g}..{hi:g}, "
                             f"got {self.scaling_factor!r}")
        self.upscale = 2 ** (len(self.block_out_channels) - 1)
        self.max_size = _int("max_size", self.max_size, self.upscale, MAX_SIDE)
        self.latent_size = _int("latent_size", self.latent_size, 1, self.max_size // self.upscale)
        n = param_count(self)
        if n > MAX_PARAMS:
            raise ValueError(f"config describes {n:,} parameters ({n * 4 / 1e9:.1f} GB in fp32), more than "
                             f"the limit of {MAX_PARAMS:,}; block_out_channels {list(self.block_out_channels)}, "
                             f"num_blocks {self.num_blocks}, mlp_ratio {self.mlp_ratio}")

    @property
    def mlp_dim(self) -> int:
        return int(self.token_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict, required: tuple[str, ...] = ()) -> "InfGenConfig":
        """A config from a dict of fields; unknown fields and missing `required` ones are errors."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict of fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(map(str, set(d) - known))
        missing = [k for k in required if k not in d]
        if unknown or missing:
            raise ValueError("; ".join(
                ([f"unknown config fields {unknown}; known: {sorted(known)}"] if unknown else [])
                + ([f"config lacks required fields {missing} (no defaults are assumed for a "
                    f"checkpoint: scaling_factor differs between models)"] if missing else [])))
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path, required: tuple[str, ...] = ()) -> "InfGenConfig":
        """A config from JSON text or a JSON file. A Path, or a str naming an existing file or
        directory, is a path (a directory is an error); other strs starting with { or [ are JSON text.
        At most MAX_CONFIG_BYTES; no repeated keys; `required` fields must be present."""
        if isinstance(text_or_path, Path) or not isinstance(text_or_path, str):
            p = Path(text_or_path)
        elif text_or_path.lstrip()[:1] in ("{", "[") and not os.path.exists(text_or_path):
            p = None
        else:
            p = Path(text_or_path)
        if p is None:
            text, where = text_or_path, "config"
        else:
            where = f"config {str(p)!r}"
            if p.is_dir():
                raise ValueError(f"{where} is a directory, not a JSON file")
            if not p.is_file():
                raise FileNotFoundError(f"no such config file: {str(p)!r}")
            if p.stat().st_size > MAX_CONFIG_BYTES:
                raise ValueError(f"{where} is {p.stat().st_size:,} bytes, more than {MAX_CONFIG_BYTES:,}")
            try:
                text = p.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where} is not UTF-8 text: {exc}") from exc
        if len(text) > MAX_CONFIG_BYTES:
            raise ValueError(f"{where} is {len(text):,} characters, more than {MAX_CONFIG_BYTES:,}")
        try:
            d = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ValueError(f"{where} is nested too deeply to be a config") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, required)


# name -> kwargs; this dict is the CLI's --preset choices.
PRESETS: dict[str, dict] = {
    "paper": {},
    "tiny": dict(block_out_channels=(16, 32, 32, 64), layers_per_block=1, norm_num_groups=8,
                 num_blocks=2, num_heads=4, inpe_fourier_dim=16, max_size=2048),
    "demo": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=4, num_blocks=2,
                 num_heads=4, inpe_fourier_dim=32, latent_size=16, max_size=8192),
}


def preset(name: str, **overrides) -> InfGenConfig:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return InfGenConfig(**{**PRESETS[name], **overrides})
