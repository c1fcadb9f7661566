"""InfGen as a diffusers pipeline's `vae`: `pipe.vae = InfGenVAE(engine, size=(2160, 3840))`.

diffusers pipelines end with `image = vae.decode(latents / vae.config.scaling_factor).sample`
followed by their image processor's post-processing. InfGenVAE answers that call like an
AutoencoderKL (DecoderOutput or a 1-tuple, `encode` -> a latent distribution, `config`, `dtype`,
`device`, `to`, the tiling/slicing switches), and decodes with an InfGenEngine at the output size
the user chose, not at 8x the latent grid.

Scaling: a pipeline divides by `scaling_factor` before `decode`, while `InfGenEngine.decode` takes
the scaled latent and divides itself; `decode` multiplies back, so the latent is scaled once.
The InfGen latent space has no shift (`shift_factor` None) and no per-channel mean/std
(`latents_mean`/`latents_std` None), as SDXL's.

The module is named diffusers_vae so it never shadows the `diffusers` package; diffusers itself is
imported on first use only (the runtime does not need it): pip install -e ".[diffusers]".
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings
from contextlib import contextmanager
from types import SimpleNamespace

import torch

from infgen.ref.model import check_size


@functools.cache
def diffusers_api() -> SimpleNamespace:
    """The few diffusers classes the adapter returns, imported once; a clear error without diffusers."""
    try:
        from diffusers.configuration_utils import FrozenDict
        from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput
    except ImportError as exc:
        raise ImportError("InfGenVAE needs diffusers: pip install -e '.[diffusers]'") from exc
    return SimpleNamespace(FrozenDict=FrozenDict, DecoderOutput=DecoderOutput, AutoencoderKLOutput=AutoencoderKLOutput,
                           DiagonalGaussianDistribution=DiagonalGaussianDistribution)


def parse_target(size, scale, config) -> tuple[tuple[int, int] | None, float | None]:
    """size (h, w) | an int for a square | None, scale > 0 | None -> (size, scale); at most one is set.
    Neither -> scale 1.0 (the latent's native size, upscale x the grid, as AutoencoderKL decodes)."""
    if size is not None and scale is not None:
        raise ValueError(f"give size or scale, not both: got size={size!r}, scale={scale!r}")
    if size is not None:
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (size, size)
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise TypeError(f"size must be (height, width) or one int for a square, got {size!r}")
        return check_size(size[0], size[1], config), None  # the engine's own size errors
    if scale is None:
        return None, 1.0
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a number, got {type(scale).__name__} {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return None, float(scale)


class InfGenVAE(torch.nn.Module):
    """An InfGenEngine in the place of a diffusers pipeline's AutoencoderKL.

    engine: an InfGenEngine (any backend, device, dtype). Output size: `size=(h, w)` (height
    first, like InfGenEngine.decode; an int is a square) or `scale=s` (s x the latent's native
    size, upscale x its grid, rounded); neither = scale 1. Change it with the `size`/`scale`
    attributes or for a block of calls with `with vae.at(size=...):`.

    A torch.nn.Module without parameters, so pipelines find its device through the usual module
    paths; the weights live in the engine."""

    def __init__(self, engine, size=None, scale=None):
        super().__init__()
        for attr in ("decode", "encode", "config", "device", "dtype"):
            if not hasattr(engine, attr):
                raise TypeError(f"engine must be an InfGenEngine, got {type(engine).__name__} (no .{attr})")
        api = diffusers_api()
        self.engine = engine
        self._size, self._scale = parse_target(size, scale, engine.config)
        self.use_tiling = False
        self.use_slicing = False
        cfg = engine.config
        # AutoencoderKL's config keys that pipelines read; sample_size is the native image size.
        self.config = api.FrozenDict(
            in_channels=cfg.in_channels, out_channels=3, latent_channels=cfg.latent_channels,
            block_out_channels=list(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups, sample_size=cfg.upscale * cfg.latent_size,
            scaling_factor=cfg.scaling_factor, shift_factor=None, latents_mean=None, latents_std=None,
            force_upcast=False,  # the engine keeps its own precision (bf16 default on CUDA), never fp16-upcast
            use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)

    # ------------------------------------------------------------------ output size
    @property
    def size(self) -> tuple[int, int] | None:
        """The fixed output (height, width), or None when the size follows `scale`."""
        return self._size

    @size.setter
    def size(self, value):
        self._size, self._scale = parse_target(value, None, self.engine.config)

    @property
    def scale(self) -> float | None:
        """The output size as a multiple of the latent's native size, or None when `size` is fixed."""
        return self._scale

    @scale.setter
    def scale(self, value):
        self._size, self._scale = parse_target(None, value, self.engine.config)

    @contextmanager
    def at(self, size=None, scale=None):
        """`with vae.at(size=(1080, 1920)): pipe(...)`: that output size inside the block only.
        Changes this object's state: do not share one InfGenVAE across threads while inside."""
        saved = (self._size, self._scale)
        self._size, self._scale = parse_target(size, scale, self.engine.config)
        try:
            yield self
        finally:
            self._size, self._scale = saved

    def output_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image decoded from a latent grid latent_hw = (h_l, w_l)."""
        if self._size is not None:
            return self._size
        u = self.engine.config.upscale
        return round(self._scale * u * latent_hw[0]), round(self._scale * u * latent_hw[1])

    # ------------------------------------------------------------------ AutoencoderKL API
    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        """The engine's compute dtype. Decoded samples are float32 whatever it is."""
        return self.engine.dtype

    def to(self, *args, **kwargs):
        """Accepts what a pipeline's `.to(...)` passes. The engine is built for one device: another
        device raises ValueError (build the engine there); a dtype is ignored with a warning (the
        engine's dtype is chosen when it is built; the SDXL VAE overflows in fp16)."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if device is not None:
            here = self.engine.device
            if device.type != here.type or (device.index is not None and here.index is not None
                                            and device.index != here.index):
                raise ValueError(f"InfGenVAE runs on its engine's device {here}, asked to move to {device}: "
                                 f"build InfGenEngine(..., device={str(device)!r}) and wrap that instead")
        if dtype is not None and dtype != self.engine.dtype:
            warnings.warn(f"InfGenVAE keeps its engine's dtype {self.engine.dtype}; to({dtype}) ignored", stacklevel=2)
        return self

    def enable_tiling(self, *args, **kwargs):
        """Accepted and not used: InfGen decodes the whole image in one pass (tiles would change it)."""
        warnings.warn("InfGenVAE decodes in one pass at any size; tiling is unnecessary and not used", stacklevel=2)
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False

    def enable_slicing(self):
        """Decode (and encode) a batch one image at a time: less memory, same images."""
        self.use_slicing = True

    def disable_slicing(self):
        self.use_slicing = False

    def _batches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(1)) if self.use_slicing and x.shape[0] > 1 else [x]

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """z: (B, C, h_l, w_l), the latent as pipelines pass it (already divided by scaling_factor)
        -> DecoderOutput(sample=(B, 3, h, w) float32 in [-1, 1]) or (sample,) with return_dict=False.
        generator is accepted for AutoencoderKL's signature; the decode is deterministic."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"latent must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 4:
            raise ValueError(f"latent must have shape (B, C, h, w), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"latent must be a floating tensor, got dtype {z.dtype}")
        h, w = self.output_size(tuple(z.shape[2:]))
        scaled = z.float() * self.config.scaling_factor  # (B, C, h_l, w_l): the engine takes scaled latents
        sample = torch.cat([self.engine.decode(part, h, w) for part in self._batches(scaled)])  # (B, 3, h, w)
        return self.api.DecoderOutput(sample=sample) if return_dict else (sample,)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x: (B, 3, H, W) in [-1, 1] -> AutoencoderKLOutput(latent_dist=...) or (latent_dist,).
        The engine's encoder returns the posterior mean only, so the distribution is deterministic:
        .sample() == .mode() == mean, unscaled (pipelines multiply by scaling_factor)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor, got {type(x).__name__}")
        mean = torch.cat([self.engine.encode(part) for part in self._batches(x)])  # (B, C, H/8, W/8), scaled
        mean = mean / self.config.scaling_factor
        params = torch.cat([mean, torch.zeros_like(mean)], dim=1)  # (B, 2C, H/8, W/8): mean, logvar
        dist = self.api.DiagonalGaussianDistribution(params, deterministic=True)
        return self.api.AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator=None):
        """AutoencoderKL.forward: encode then decode (at this adapter's output size)."""
        dist = self.encode(sample).latent_dist
        z = dist.sample(generator=generator) if sample_posterior else dist.mode()
        return self.decode(z, return_dict=return_dict)

    @property
    def api(self) -> SimpleNamespace:
        return diffusers_api()

    def extra_repr(self) -> str:
        target = f"size={self._size}" if self._size is not None else f"scale={self._scale}"
        return f"engine={getattr(self.engine, 'backend_name', '?')}, {target}, device={self.device}, dtype={self.dtype}"
