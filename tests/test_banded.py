"""Banded decode: the band primitives against torch, and the banded decode against the plain one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infgen.ref.banded import (BandedOps, Normed, Upsampled, band_starts, conv2d_banded, group_stats,
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
    got = Normed(x, norm_affine(stats, norm), silu=True).materialize()
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


# ----------------------------------------------------------------------------- the whole decode
from infgen.ref import decode as D  # noqa: E402
from infgen.ref.banded import banded_ops, tiled_norm_ops  # noqa: E402
from infgen.ref.model import token_grid  # noqa: E402


def _decode(model, ops, z, h, w):
    Hp, Wp = token_grid(h, w, model.config)
    with torch.inference_mode():
        return D.decode_grid(ops, model, z.to(model.dtype), Hp, Wp)[:, :, :h, :w]


@pytest.mark.parametrize("h,w,rows", [(64, 64, 1), (72, 40, 3), (33, 57, 2), (17, 120, 5), (96, 24, None)])
def test_banded_decode_equals_plain_fp32(tiny_model, h, w, rows):
    torch.manual_seed(h + w)
    z = torch.randn(2, 4, 6, 7)
    ref = _decode(tiny_model, D.TORCH_OPS, z, h, w)
    got = _decode(tiny_model, banded_ops(rows), z, h, w)
    assert got.shape == ref.shape == (2, 3, h, w)
    assert (got - ref).abs().max().item() <= 1e-5


def test_banded_decode_bf16_within_bf16_tolerance(tiny_model):
    """rule 6: err(banded bf16) <= 2 err(plain bf16) + atol, both against fp32, relative norms."""
    import copy
    torch.manual_seed(1)
    z = torch.randn(1, 4, 8, 8)
    ref = _decode(tiny_model, D.TORCH_OPS, z, 56, 48).double()
    m16 = copy.deepcopy(tiny_model).to(torch.bfloat16)
    rel = lambda a: float((a.double() - ref).norm() / ref.norm())  # noqa: E731
    err_plain = rel(_decode(m16, D.TORCH_OPS, z, 56, 48))
    err_banded = rel(_decode(m16, banded_ops(2), z, 56, 48))
    assert err_banded <= 2 * err_plain + 1e-2, (err_banded, err_plain)


def tone_shift(img: torch.Tensor, ref: torch.Tensor, tiles: int) -> float:
    """Largest |mean difference| over a tiles x tiles grid of the image: a tone shift, not noise."""
    _, _, H, W = img.shape
    d = (img - ref).double()
    ys, xs = ([round(i * n / tiles) for i in range(tiles + 1)] for n in (H, W))
    return max(abs(d[:, :, a:b, c:e].mean().item()) for a, b in zip(ys, ys[1:]) for c, e in zip(xs, xs[1:]))


def test_per_tile_group_norm_shifts_tone_and_banded_does_not():
    """Demo checkpoint, the bundled photo's latent, 4 x 4 tiles: per-tile GroupNorm statistics
    (a tiled decode) shift the tiles' mean tone; whole-image statistics in bands do not."""
    from PIL import Image
    from infgen.ref import DEMO_CHECKPOINT
    from infgen.runtime.engine import resolve_model
    model = resolve_model(str(DEMO_CHECKPOINT))
    im = torch.tensor(np.asarray(Image.open(DEMO_CHECKPOINT / "coffee.jpg").convert("RGB").resize((96, 96))))
    x = im.permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        z = model.encode(x)
    ref = _decode(model, D.TORCH_OPS, z, 192, 192)
    tiled = _decode(model, tiled_norm_ops(4), z, 192, 192)
    banded = _decode(model, banded_ops(7), z, 192, 192)
    assert tone_shift(banded, ref, 4) < 1e-5
    shift = tone_shift(tiled, ref, 4)
    print(f"per-tile GroupNorm tone shift {shift:.4f}")
    assert shift > 0.02  # 1% of the [-1, 1] range at least


# ----------------------------------------------------------------------------- CUDA (gpu-marked)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_cuda_banded_host_resident_equals_plain(tiny_model):
    """Every conv output in pinned host memory (host_over=0), bands streamed to the GPU."""
    import copy
    m = copy.deepcopy(tiny_model).cuda()
    z = torch.randn(2, 4, 6, 7, device="cuda")
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 convs in both paths, not TF32
    try:
        ref = _decode(m, D.TORCH_OPS, z, 72, 40)
        got = _decode(m, banded_ops(3, compute="cuda", host_over=0), z, 72, 40)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    assert got.device.type in ("cuda", "cpu") and got.shape == ref.shape
    assert (got.to(ref.device) - ref).abs().max().item() <= 1e-4


@pytest.mark.gpu
@cuda
def test_cuda_4k_banded_peak_under_24gb_as_predicted():
    """Paper preset, bf16, 4096^2 through the engine with a 24 GB budget: the plan is banded, and
    the measured peak (max_memory_allocated growth) is under 24 GB and within 20% of predicted."""
    from infgen.runtime.engine import InfGenEngine
    eng = InfGenEngine("paper", device="cuda", dtype="bf16", max_memory="24GB")
    planned = eng.plan(4096, 4096)
    assert planned.mode == "banded", planned
    predicted = planned.peak_bytes
    z = torch.randn(1, 4, 64, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    img = eng.decode(z, 4096, 4096)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert img.shape == (1, 3, 4096, 4096) and bool(torch.isfinite(img).all())
    print(f"4096^2 banded: measured peak {peak / 1e9:.2f} GB, predicted {predicted / 1e9:.2f} GB")
    assert peak < 24e9
    assert abs(peak - predicted) <= 0.2 * peak


# ----------------------------------------------------------------------------- host-resident activations
def test_host_activation_is_row_major_so_each_band_is_one_block():
    from infgen.ref.banded import host_empty, row_major
    x = host_empty((2, 3, 10, 7), torch.float32, pin=False)
    assert x.shape == (2, 3, 10, 7) and row_major(x) and not x.is_contiguous()
    band = x.permute(2, 0, 1, 3)[4:7]
    assert band.is_contiguous() and band.data_ptr() == x.data_ptr() + 4 * 2 * 3 * 7 * 4
    assert not row_major(torch.empty(2, 3, 10, 7))


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_banded_conv_into_and_from_row_major_host_layout_is_exact(rows):
    """Writes into a row-major output and reads of a row-major input (the host-resident path's
    layout) give the plain conv's values."""
    from infgen.ref.banded import host_empty, rows_of
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 6, 3, padding=1)
    x = torch.randn(2, 5, 13, 9)
    xr = host_empty(x.shape, x.dtype, pin=False)
    xr.copy_(x)
    assert torch.equal(rows_of(xr, 4, 9, torch.device("cpu")), x[:, :, 4:9])
    out = host_empty((2, 6, 13, 9), x.dtype, pin=False).fill_(float("nan"))  # poison: an unwritten row fails
    y = conv2d_banded(conv, xr, rows, torch.device("cpu"), torch.device("cpu"), out=out)
    with torch.no_grad():
        assert torch.allclose(y, conv(x), atol=1e-5, rtol=1e-5)


def test_host_placement_checks_the_rounded_pinned_size_against_ram():
    from infgen.ref.banded import host_placement
    GB = 10**9
    assert host_placement(5 * GB, 12 * GB) == "pinned"      # rounds up to 8.6 GB: fits
    assert host_placement(9 * GB, 12 * GB) == "pageable"    # rounds up to 17.2 GB: pageable instead
    assert host_placement(2**33, 2**33) == "pinned"         # a power of two is not rounded
    with pytest.raises(MemoryError, match=r"13\.00 GB exceeds the available RAM \(12\.00 GB\)"):
        host_placement(13 * GB, 12 * GB)
