"""Reference InfGen: the frozen SDXL-VAE encoder and the transformer-augmented decoder.

Module names follow diffusers' AutoencoderKL (encoder.*, quant_conv, post_quant_conv,
decoder.conv_in / mid_block / up_blocks / conv_norm_out / conv_out) so that an SDXL VAE
state dict loads by key; InfGen's new layers live under decoder.conv_tokens, decoder.latent_pos,
decoder.mask_pos, decoder.mask_token, decoder.blocks and decoder.norm_tokens.
"""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import decode as decoding
from .arrays import check_floating_array
from .inpe import INPE
from .layers import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D

if TYPE_CHECKING:  # annotations only: config.py builds this model (on the meta device) to count its parameters
    from .config import InfGenConfig


# ----------------------------------------------------------------------------- input checks
def check_size(h, w, cfg: InfGenConfig) -> tuple[int, int]:
    """Output height and width: integers in upscale..max_size, else ValueError/TypeError naming them."""
    out = []
    for name, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            if isinstance(v, float) and v.is_integer():
                raise TypeError(f"{name} must be an int, got float {v!r}")
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        v = int(v)
        if not cfg.upscale <= v <= cfg.max_size:
            raise ValueError(f"{name} must be {cfg.upscale}..{cfg.max_size}, got {v}")
        out.append(v)
    return out[0], out[1]


# The decoder sees z / scaling_factor. Latents of diffusion models are O(1) after scaling; this
# bound on |z / scaling_factor| (1e6) keeps every layer of an fp32/bf16 decode in range, and is
# tightened to finfo.max / 64 (1023) for fp16, whose range the SDXL VAE exceeds anyway.
LATENT_ABS_MAX = 1e6
FP16_HEADROOM = 64
IMAGE_RANGE_TOL = 1e-3       # images may overshoot [-1, 1] by this much (resampling ringing)
_NATIVE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def latent_abs_max(cfg: InfGenConfig, dtype: torch.dtype | None = None) -> float:
    """The largest |z| (scaled latent) check_latent accepts for a decode computed in dtype."""
    unscaled = LATENT_ABS_MAX
    if dtype is not None:
        unscaled = min(unscaled, torch.finfo(dtype).max / FP16_HEADROOM)
    return unscaled * abs(cfg.scaling_factor)


def native_array(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array in the machine's byte order (torch.from_numpy takes no other)."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))


def check_floating(x, what: str = "latent"):
    """The one dtype rule for latents at every door (check_latent for the API and `decode`, the
    `client` CLI and InfGenClient before sending): a torch tensor or numpy array of a floating
    dtype is returned unchanged; integer, bool, complex and object dtypes are a TypeError naming
    the dtype (never cast: an integer latent is not a diffusion latent). The numpy half is
    infgen.ref.arrays.check_floating_array, which the torch-free client imports."""
    if isinstance(x, np.ndarray):
        check_floating_array(x, what)
    elif isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got dtype {x.dtype}")
    else:
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _from_numpy(a: np.ndarray, what: str) -> torch.Tensor:
    """A numpy array in any byte order and layout -> torch tensor (float kinds only)."""
    check_floating(a, what)
    if a.dtype.itemsize > 8:  # long double: no torch dtype
        a = a.astype(np.float64)
    return torch.from_numpy(native_array(a))


def _as_tensor(x, what: str) -> torch.Tensor:
    """numpy array | torch tensor -> a strided, non-quantised torch tensor with values (not meta)."""
    if isinstance(x, np.ndarray):
        return _from_numpy(x, what)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError(f"{what} must be a regular tensor, got a nested tensor")
    if x.is_meta:
        raise ValueError(f"{what} is on the meta device: it has a shape {tuple(x.shape)} but no values")
    if x.is_quantized:
        x = x.dequantize()
    return x.detach()


def _finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n, idx = int(bad.sum()), tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{what} contains {n} non-finite value(s) (NaN or inf), e.g. {x[idx].item()} "
                         f"at index {idx}")


def _floating(x: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
    """Floating dtypes pass (float8 and the like widened to float32); others are a TypeError."""
    if not hint:
        check_floating(x, what)
    elif not x.is_floating_point():
        raise TypeError(f"{what} must be a floating tensor, got dtype {x.dtype}{hint}")
    return x if x.dtype in _NATIVE_FLOATS else x.float()


def check_latent(z, cfg: InfGenConfig, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A (B, C, h, w) or (C, h, w) floating latent, finite and within latent_abs_max(cfg, dtype)
    -> (B, C, h, w), detached, strided. dtype is the compute dtype of the decode (None: fp32 bound).

    Accepted as well: numpy arrays in either byte order, non-contiguous views, sparse and quantised
    tensors (made dense / dequantised), float8 and other floating dtypes (widened to float32).
    Refused: meta tensors (ValueError), integer, bool and complex dtypes (TypeError)."""
    z = _as_tensor(z, "latent")
    if z.dim() == 3:
        z = z[None]
    if z.dim() != 4:
        raise ValueError(f"latent must have shape (B, {cfg.latent_channels}, h, w) or "
                         f"({cfg.latent_channels}, h, w), got {tuple(z.shape)}")
    if z.shape[1] != cfg.latent_channels:
        raise ValueError(f"latent must have {cfg.latent_channels} channels, got shape {tuple(z.shape)}")
    if z.shape[0] < 1 or z.shape[2] < 1 or z.shape[3] < 1:
        raise ValueError(f"latent has an empty dimension: shape {tuple(z.shape)}")
    max_grid = cfg.max_size // cfg.upscale
    if z.shape[2] > max_grid or z.shape[3] > max_grid:
        raise ValueError(f"latent grid must be at most {max_grid}x{max_grid}, got {tuple(z.shape[2:])}")
    z = _floating(z, "latent")
    if z.layout != torch.strided:
        z = z.to_dense()
    _finite(z, "latent")
    bound, big = latent_abs_max(cfg, dtype), float(z.abs().max())
    if big > bound:
        name = str(dtype or torch.float32).removeprefix("torch.")
        raise ValueError(f"latent magnitude {big:.4g} exceeds {bound:.4g} (|z / scaling_factor| <= "
                         f"{bound / abs(cfg.scaling_factor):.4g} in {name}, "
                         f"scaling_factor {cfg.scaling_factor}): not a diffusion latent, and it would overflow")
    return z


def check_image(image, cfg: InfGenConfig) -> torch.Tensor:
    """An image for encode: (B, 3, H, W) or (3, H, W), floating, finite, in [-1, 1] (+- 1e-3),
    each side upscale..max_size -> (B, 3, H, W) float32, detached.

    uint8 0..255 and other integer images are a TypeError saying how to convert; channels-last
    (H, W, 3) a ValueError saying how to permute."""
    x = _as_tensor(image, "image")
    C, shape = cfg.in_channels, tuple(x.shape)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != C:
        perm = {3: "(2, 0, 1)", 4: "(0, 3, 1, 2)"}.get(len(shape))
        hint = f"; channels-last? use image.permute{perm}" if perm and shape[-1] == C else ""
        raise ValueError(f"image must have shape (B, {C}, H, W) or ({C}, H, W), got {shape}{hint}")
    B, _, H, W = x.shape
    if B < 1:
        raise ValueError(f"image batch is empty: shape {tuple(x.shape)}")
    lo, hi = cfg.upscale, cfg.max_size
    if not (lo <= H <= hi and lo <= W <= hi):
        raise ValueError(f"image sides must be {lo}..{hi} pixels (the encoder downsamples by {lo}), "
                         f"got {H}x{W} (HxW)")
    hint = "; for 0..255 pixels pass image / 127.5 - 1" if x.dtype == torch.uint8 else ""
    x = _floating(x, "image", hint)
    if x.layout != torch.strided:
        x = x.to_dense()
    _finite(x, "image")
    mn, mx = float(x.min()), float(x.max())
    if mn < -1 - IMAGE_RANGE_TOL or mx > 1 + IMAGE_RANGE_TOL:
        raise ValueError(f"image values must be in [-1, 1], got {mn:.4g}..{mx:.4g} "
                         "(0..1 images: image * 2 - 1; 0..255: image / 127.5 - 1)")
    return x.float()


def check_output(x: torch.Tensor, what: str = "decode") -> torch.Tensor:
    """The last check before a result leaves the engine: every value finite, else ValueError
    (the computation overflowed its dtype, e.g. fp16, whose range the SDXL VAE exceeds)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{what} produced {int(bad.sum())} non-finite value(s) of {x.numel()} in dtype "
                         f"{x.dtype}: the computation overflowed; decode in fp32 or bf16")
    return x


def token_grid(h: int, w: int, cfg: InfGenConfig) -> tuple[int, int]:
    """Mask-token grid (H', W') for an output of (h, w): ceil division by the upscale factor."""
    return math.ceil(h / cfg.upscale), math.ceil(w / cfg.upscale)


# ----------------------------------------------------------------------------- modules
class Encoder(nn.Module):
    """SDXL VAE encoder: image (B, 3, H, W) -> moments (B, 2C, H/8, W/8)."""

    def __init__(self, cfg: InfGenConfig):
        super().__init__()
        ch, g, eps = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, eps, i < len(ch) - 1)
            for i in range(len(ch))])
        self.mid_block = UNetMidBlock2D(ch[-1], g, eps)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=eps)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class CrossAttnBlock(nn.Module):
    """Pre-norm block: mask tokens attend to latent tokens, then an MLP. Both residual
    (infgen.ref.decode.cross_block)."""

    def __init__(self, cfg: InfGenConfig):
        super().__init__()
        d = cfg.token_dim
        self.num_heads = cfg.num_heads
        self.norm_q = nn.LayerNorm(d)
        self.norm_kv = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d)
        self.to_k = nn.Linear(d, d)
        self.to_v = nn.Linear(d, d)
        self.to_out = nn.Linear(d, d)
        self.norm_mlp = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, d)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, d) -> (B, heads, N, d / heads), a view."""
        B, N, D = t.shape
        return t.view(B, N, self.num_heads, D // self.num_heads).transpose(1, 2)  # (B, h, N, hd)

    # No forward: infgen.ref.decode.cross_block runs the block over an ops table.


class InfGenDecoder(nn.Module):
    """Latent features + output grid -> image. Shared layers keep diffusers' Decoder names."""

    def __init__(self, cfg: InfGenConfig):
        super().__init__()
        ch, g, eps, d = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps, cfg.token_dim
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        # InfGen's new layers: Table 1's extra conv, token generation, cross-attention blocks.
        self.conv_tokens = nn.Conv2d(ch[-1], d, 3, padding=1)
        self.latent_pos = INPE(d, cfg.inpe_fourier_dim, cfg.inpe_scale, cfg.inpe_seed)
        self.mask_pos = INPE(d, cfg.inpe_fourier_dim, cfg.inpe_scale, cfg.inpe_seed + 1)
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList([CrossAttnBlock(cfg) for _ in range(cfg.num_blocks)])
        self.norm_tokens = nn.LayerNorm(d)
        # The SDXL VAE decoder from the mid block on.
        self.mid_block = UNetMidBlock2D(ch[-1], g, eps)
        rev = list(reversed(ch))
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, eps, i < len(ch) - 1)
            for i in range(len(ch))])
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)

    def mask_tokens(self, Hp: int, Wp: int) -> torch.Tensor:
        """Mask tokens for an (H', W') grid: (1, H'W', d). Depends only on the size and weights."""
        return (self.mask_token + self.mask_pos(Hp, Wp))[None]

    def latent_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent after post_quant_conv (B, C, h, w) -> latent tokens (B, h*w, d)."""
        return decoding.latent_tokens(decoding.TORCH_OPS, self, z)

    # No forward: the decode is infgen.ref.decode.decode_grid over the whole InfGen (it starts at
    # post_quant_conv), with the reference ops as InfGen.decode_grid or a backend's ops table.


class InfGen(nn.Module):
    """encode(image) -> scaled latent; decode(z, h, w) -> image of any size in one pass."""

    def __init__(self, cfg: InfGenConfig):
        super().__init__()
        self.config = cfg
        c = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.decoder = InfGenDecoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) in [-1, 1] -> scaled latent (posterior mean): (B, C, H/8, W/8), each stride-2 stage rounding down as diffusers does."""
        image = check_image(image, self.config)  # (B, 3, H, W) float in [-1, 1], finite, size in range
        moments = self.quant_conv(self.encoder(image.to(self.dtype)))  # (B, 2C, h, w)
        mean = moments[:, : self.config.latent_channels]
        return mean * self.config.scaling_factor

    def decode_grid(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """Scaled latent (B, C, h, w) -> uncropped image (B, 3, 8H', 8W'). No input checks."""
        return decoding.decode_grid(decoding.TORCH_OPS, self, z, Hp, Wp)

    def decode(self, z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Scaled latent (B, C, h_l, w_l) -> image (B, 3, h, w), unclamped."""
        h, w = check_size(h, w, self.config)
        z = check_latent(z, self.config)
        Hp, Wp = token_grid(h, w, self.config)
        return self.decode_grid(z, Hp, Wp)[:, :, :h, :w]

    @torch.no_grad()
    def extrapolate(self, z: torch.Tensor, h: int, w: int, max_step: float = 2.0) -> torch.Tensor:
        """Training-free extrapolation: decode at most max_step x larger, re-encode, repeat.

        Step sizes grow geometrically from the latent's native size (upscale * grid) to (h, w)."""
        h, w = check_size(h, w, self.config)
        z = check_latent(z, self.config)
        if not (isinstance(max_step, numbers.Real) and max_step > 1):
            raise ValueError(f"max_step must be a number > 1, got {max_step!r}")
        u = self.config.upscale
        nh, nw = u * z.shape[2], u * z.shape[3]
        ratio = max(h / nh, w / nw)
        steps = max(1, math.ceil(math.log(ratio) / math.log(max_step) - 1e-9)) if ratio > 1 else 1
        for i in range(1, steps):
            f = (i / steps)
            sh = round(nh * (h / nh) ** f / u) * u
            sw = round(nw * (w / nw) ** f / u) * u
            image = self.decode(z, max(sh, u), max(sw, u)).clamp(-1, 1)
            z = self.encode(image)
        return self.decode(z, h, w)


def copy_model(model: InfGen, device=None, dtype: torch.dtype | None = None, channels_last: bool = False) -> InfGen:
    """A new InfGen (eval, no gradients: an inference copy) owning a copy of model's weights on
    `device` in `dtype` (floating tensors only; None keeps each). Built on the meta device and filled
    with load_state_dict(..., assign=True), so no random init runs and no second copy is made;
    `model` is never touched. channels_last: 4-D weights (convs) in channels-last layout."""
    if not isinstance(model, InfGen):
        raise TypeError(f"model must be an InfGen, got {type(model).__name__}")
    with torch.device("meta"):
        new = InfGen(model.config)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None,
                          copy=True)
        state[k] = v.contiguous(memory_format=torch.channels_last) if (channels_last and v.dim() == 4) else v
    new.load_state_dict(state, assign=True)
    if device is not None:  # INPE's Fourier matrix is not a weight: put it on the device now
        for m in new.modules():
            if isinstance(m, INPE):
                m.fourier_matrix(device)
    return new.eval().requires_grad_(False)
