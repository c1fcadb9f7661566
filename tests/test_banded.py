"""Banded decode: the band primitives against torch, and the banded decode against the plain one."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infgen_ref.banded import (BandedOps, Normed, Upsampled, band_starts, conv2d_banded, group_stats,
                               norm_affine)

CPU = torch.device("cpu")


@pytest.mark.parametrize("H,W,rows", [(1, 5, 1), (7, 3, 1), (13, 9, 4), (16, 16, 16), (17, 11, 100)])
@pytest.mark.parametrize("k", [1, 3])
def test_banded_conv_equals_conv2d(H, W, rows, k):
    torch.manual_seed(H * 31 + k)
    conv = nn.Conv2d(5, 6, k, padding=k // 2)
    x = torch.randn(2, 5, H, W)
    got = conv2d_banded(conv, x, rows, CPU, CPU)
    torch.testing.assert_close(got, conv(x), atol=1e-6, rtol=1e-5)


def test_band_starts_cover_rows_and_reject_bad_rows():
    assert band_starts(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="band rows"):
            band_starts(10, bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 50])
def test_whole_image_group_norm_from_bands_equals_group_norm(dtype, rows):
    torch.manual_seed(rows)
    norm = nn.GroupNorm(4, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(2, 8, 11, 7) * 3 + 5).to(dtype)  # an offset mean: sums of squares cancel badly in fp32
    stats = group_stats(x, 4, rows)
    assert stats[0, 0, 0].item() == 2 * 11 * 7
    scale, shift = norm_affine(stats, norm)
    got = Normed(x, scale, shift, silu=True).materialize()
    ref = F.silu(F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), 1e-6))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_banded_conv_reads_lazy_upsample_and_norm(rows):
    torch.manual_seed(rows)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    norm = nn.GroupNorm(2, 4)
    x = torch.randn(1, 4, 5, 6)
    up = Upsampled(x)
    assert up.shape == (1, 4, 10, 12)
    torch.testing.assert_close(up.materialize(), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    got = conv2d_banded(conv, up, rows, CPU, CPU)
    torch.testing.assert_close(got, conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), atol=1e-6, rtol=1e-5)
    ops = BandedOps(rows)
    got = ops.conv2d(conv, ops.group_norm(norm, x, True))
    torch.testing.assert_close(got, conv(F.silu(norm(x))), atol=1e-5, rtol=1e-5)


def test_banded_ops_reject_bad_band_rows():
    for bad in (0, -3, 1.5, "4", True):
        with pytest.raises(ValueError, match="band_rows"):
            BandedOps(bad)
