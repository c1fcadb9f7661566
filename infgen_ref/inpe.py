"""Implicit Neural Positional Encoding (INPE).

A token at row i, column j of an (H, W) grid sits at the normalised point
((i + 0.5) / H, (j + 0.5) / W) in [0, 1]^2, whatever the grid size, so a 64x64 latent grid
and a 512x384 mask grid share one coordinate scale. The point is mapped onto the unit
sphere (latitude and longitude each spanning (-pi/2, pi/2), which keeps the map injective),
lifted to Fourier features [cos(2 pi p B), sin(2 pi p B)] with a fixed Gaussian matrix B
(3 x F), and turned into a d-dimensional embedding by a two-layer MLP.

B is derived from the config (seed, size, scale), not stored in checkpoints, and the features
are always computed in float32 whatever the model dtype: a bf16 B would move the phases by
up to ~0.02 rad.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def grid_coords(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised token centres of an (h, w) grid, row-major: (h*w, 2) in (0, 1)."""
    ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1).to(dtype)  # (h*w, 2)


def sphere(uv: torch.Tensor) -> torch.Tensor:
    """(N, 2) points in [0, 1]^2 -> (N, 3) points on the unit sphere."""
    lat = (uv[:, 0] - 0.5) * math.pi
    lon = (uv[:, 1] - 0.5) * math.pi
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon),
                        torch.sin(lat)], dim=-1)  # (N, 3)


def fourier_features(p: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(N, 3) sphere points, B (3, F) -> (N, 2F) features [cos, sin]."""
    proj = 2 * math.pi * p @ B  # (N, F)
    return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)


class INPE(nn.Module):
    """Grid size (h, w) -> positional embeddings (h*w, dim)."""

    def __init__(self, dim: int, fourier_dim: int, scale: float, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.B = torch.randn(3, fourier_dim, generator=g, dtype=torch.float64, device="cpu").float() * scale
        self.fc1 = nn.Linear(2 * fourier_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def fourier_matrix(self, device) -> torch.Tensor:
        """B (3, F) float32 on `device`, copied there once (a CPU->GPU copy inside a CUDA graph
        capture would fail; the first eager call makes the copy)."""
        device = torch.device(device)
        if self.B.device != device:
            self.B = self.B.to(device)
        return self.B

    def embed_points(self, uv: torch.Tensor) -> torch.Tensor:
        """uv: (N, 2) normalised coordinates -> (N, dim)."""
        B = self.fourier_matrix(uv.device)
        feats = fourier_features(sphere(uv.float()), B)  # (N, 2F) float32
        return self.fc2(F.gelu(self.fc1(feats.to(self.fc1.weight.dtype))))  # (N, dim)

    def forward(self, h: int, w: int) -> torch.Tensor:
        return self.embed_points(grid_coords(h, w, device=self.fc1.weight.device))
