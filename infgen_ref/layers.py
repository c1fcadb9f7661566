"""SDXL VAE building blocks, named exactly like diffusers' so SDXL VAE state dicts load by key.

The forwards the encoder uses (resnet, mid-block attention) are infgen.ref.decode's functions over
the reference ops; the decoder-only blocks have no forward (infgen.ref.decode runs them)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from . import decode as decoding


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1 conv) shortcut. x: (B, C, H, W)."""

    def __init__(self, cin: int, cout: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decoding.resnet(decoding.TORCH_OPS, self, x)


class Attention(nn.Module):
    """The mid block's single-head self-attention over all pixels, with a residual. x: (B, C, H, W)."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decoding.mid_attention(decoding.TORCH_OPS, self, x)


class UNetMidBlock2D(nn.Module):
    """resnet -> attention -> resnet at constant width."""

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups, eps)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample2D(nn.Module):
    """Nearest 2x, then conv3x3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    # No forward: infgen.ref.decode.upsample.


class Downsample2D(nn.Module):
    """Pad right/bottom by one, conv3x3 stride 2 (diffusers' asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, eps: float, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, eps) for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    # No forward: infgen.ref.decode.up_blocks runs the decoder's blocks over an ops table.


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, num_layers: int, groups: int, eps: float, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, eps) for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x
