"""Two-phase channels-last GroupNorm(+SiLU) kernel vs a float64 reference (STYLE rule 6)."""
import pytest
import torch

from infgen.kernels.groupnorm import Moments, add_stats, add_stats_ref, group_norm_silu, group_norm_silu_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CL = torch.channels_last


def check(out, x, w, b, G, silu):
    assert torch.isfinite(out).all(), "unwritten (poisoned) or non-finite output"
    ref = group_norm_silu_ref(x.double(), w.double(), b.double(), G, 1e-6, silu)
    err = (out.double() - ref).abs().max().item()
    err_torch = (group_norm_silu_ref(x, w, b, G, 1e-6, silu).double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[x.dtype], (err, err_torch)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,H,W,G,silu", [
    (2, 64, 7, 9, 8, True),      # tiny preset's widths; batch 2
    (1, 96, 13, 5, 32, True),    # 3 channels per group, C not a power of two
    (3, 24, 33, 17, 6, False),   # mid-block attention's norm (no SiLU); several chunks + a ragged one
    (1, 512, 3, 3, 32, True),    # paper width, 16 channels per group
])
def test_matches_reference(B, C, H, W, G, silu, dtype):
    torch.manual_seed(C + H)
    x = (torch.randn(B, C, H, W, device=DEV) * 3 + 5).to(dtype).contiguous(memory_format=CL)
    w, b = torch.randn(C, device=DEV), torch.randn(C, device=DEV)
    out = torch.full_like(x, float("nan"))
    y = group_norm_silu(x, w, b, G, 1e-6, silu, out=out)
    assert y is out and y.is_contiguous(memory_format=CL)
    check(y, x, w, b, G, silu)


def test_large_mean_small_spread_is_stable():
    """Shifted chunk moments: mean 1000, std 0.01 in fp32 (E[x^2] - E[x]^2 would lose it all)."""
    torch.manual_seed(4)
    x = (1000 + 0.01 * torch.randn(2, 32, 23, 19, device=DEV, dtype=torch.float64)).float().contiguous(memory_format=CL)
    w, b = torch.randn(32, device=DEV), torch.randn(32, device=DEV)
    ref = group_norm_silu_ref(x.double(), w.double(), b.double(), 4)
    err = (group_norm_silu(x, w, b, 4).double() - ref).abs().max().item()
    assert err < 1e-4, err


def test_token_layout_b_p_c():
    torch.manual_seed(5)
    x = torch.randn(2, 50, 32, device=DEV)
    w, b = torch.randn(32, device=DEV), torch.randn(32, device=DEV)
    check(group_norm_silu(x, w, b, 8), x, w, b, 8, True)


def test_bad_inputs_are_named():
    x = torch.randn(1, 16, 4, 4, device=DEV)
    w = torch.ones(16, device=DEV)
    with pytest.raises(ValueError, match="channels_last"):
        group_norm_silu(x, w, w, 4)
    xc = x.contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="groups must be a positive divisor"):
        group_norm_silu(xc, w, w, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        group_norm_silu(xc, torch.ones(8, device=DEV), w, 4)
    with pytest.raises(ValueError, match="eps must be > 0"):
        group_norm_silu(xc, w, w, 4, eps=0.0)
    with pytest.raises(TypeError, match="x must be float32"):
        group_norm_silu(xc.long(), w, w, 4)
    with pytest.raises(ValueError, match="x must be"):
        group_norm_silu(x[0, 0], w, w, 4)


# ----------------------------------------------------------------------------- CUDA, larger
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.sh)")


@pytest.mark.gpu
@gpu
def test_cuda_1024_square_bf16():
    torch.manual_seed(6)
    x = torch.randn(1, 256, 1024, 1024, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL)
    w, b = torch.randn(256, device="cuda"), torch.randn(256, device="cuda")
    check(group_norm_silu(x, w, b, 32), x, w, b, 32, True)


@pytest.mark.gpu
@gpu
def test_cuda_past_2_31_elements():
    """(1, 256, 4096, 4096) bf16: 4.3 G elements, the 4K decode's largest activation. Checks
    pixels at both ends (the last ones sit past 2^31) against float64 statistics."""
    need = 2 * 256 * 4096 * 4096 * 2 + (4 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB free on the GPU, {free / 2**30:.0f} GiB are")
    torch.manual_seed(7)
    B, C, H, W, G = 1, 256, 4096, 4096, 32
    x = torch.empty(B, C, H, W, device="cuda", dtype=torch.bfloat16, memory_format=CL)
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
    for r in range(0, H, 512):  # fill without a float32 copy of the whole tensor
        nhwc[:, r:r + 512].copy_(torch.randn(B, 512, W, C, device="cuda") * (1 + r / H) + r / H)
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    y = group_norm_silu(x, w, b, G)
    # float64 statistics per group, accumulated band by band
    s1 = torch.zeros(G, device="cuda", dtype=torch.float64)
    s2 = torch.zeros(G, device="cuda", dtype=torch.float64)
    for r in range(0, H, 256):
        band = nhwc[0, r:r + 256].double().reshape(-1, G, C // G)
        s1 += band.sum((0, 2))
        s2 += band.square().sum((0, 2))
    n = H * W * (C // G)
    mean = s1 / n
    rstd = torch.rsqrt(s2 / n - mean.square() + 1e-6)
    ynhwc = y.permute(0, 2, 3, 1)
    for rows in (slice(0, 4), slice(H - 4, H)):  # the last rows lie past element 2^31
        xb = nhwc[0, rows].double().reshape(-1, G, C // G)
        ref = ((xb - mean[:, None]) * rstd[:, None]).reshape(-1, C) * w.double() + b.double()
        ref = torch.nn.functional.silu(ref)
        err = (ynhwc[0, rows].double().reshape(-1, C) - ref).abs()
        # fp32 statistics, then one rounding to bf16: within half a bf16 spacing of the float64
        # value (plus fp32's own error); allow one spacing. |y| reaches 8-30 here, where a
        # spacing is 0.06-0.125: an absolute tolerance would fail correct results.
        tol = bf16_spacing(ref) + 1e-6
        assert (err <= tol).all(), (rows, (err / tol).max().item())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,H,W,G", [
    (2, 64, 7, 9, 8),       # tiny preset's width; batch 2
    (1, 96, 13, 5, 32),     # C not a power of two
    (3, 24, 33, 17, 6),     # several chunks + a ragged one
])
def test_add_stats_is_the_residual_add_and_its_groupnorm_statistics(B, C, H, W, G, dtype):
    """y = h + x in place, and GroupNorm+SiLU of y from the carried moments (no stats pass)."""
    torch.manual_seed(C + W)
    h = (torch.randn(B, C, H, W, device=DEV) * 3 + 5).to(dtype).contiguous(memory_format=CL)
    x = torch.randn(B, C, H, W, device=DEV).to(dtype).contiguous(memory_format=CL)
    ref = h.double() + x.double()
    y, m = add_stats(h.clone(), x)
    err = (y.double() - ref).abs()
    err_torch = (add_stats_ref(h, x).double() - ref).abs()
    # One rounding of the exact sum: half a spacing on a GPU (to nearest) and in PyTorch; Triton's
    # interpreter rounds toward zero (up to one spacing), so allow one spacing of the dtype at |y|.
    spacing = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-3))))
    assert (err <= torch.maximum(2 * err_torch, spacing) + 1e-6).all(), (err.max().item(), err_torch.max().item())
    assert m.shift0.shape == m.dmean.shape == m.m2.shape and m.n.sum().item() == H * W
    w, b = torch.randn(C, device=DEV), torch.randn(C, device=DEV)
    out = torch.full_like(y, float("nan"))
    check(group_norm_silu(y, w, b, G, 1e-6, True, out=out, moments=m), y, w, b, G, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_add_stats_stores_bands_into_a_larger_tensor(dtype):
    """The banded conv's store: each band (a row slice of a taller conv output: its own batch
    stride) copied into rows of the output, moments of the bands concatenated = the whole image's."""
    torch.manual_seed(7)
    B, C, H, W, G = 2, 40, 11, 6, 5
    full = (torch.randn(B, C, H, W, device=DEV) * 2 - 3).to(dtype).contiguous(memory_format=CL)
    out = torch.full_like(full, float("nan"))
    parts = []
    for r0, r1 in ((0, 4), (4, 9), (9, 11)):  # each band computed with a row of halo on both sides
        a, b = max(0, r0 - 1), min(H, r1 + 1)
        conv_out = full[:, :, a:b].contiguous(memory_format=CL)  # (B, C, b-a, W), as a conv returns it
        parts.append(add_stats(conv_out[:, :, r0 - a:r1 - a], None, out[:, :, r0:r1])[1])
    assert torch.equal(out, full)
    w, b = torch.randn(C, device=DEV), torch.randn(C, device=DEV)
    check(group_norm_silu(out, w, b, G, 1e-6, False, moments=Moments.cat(parts)), out, w, b, G, False)


def test_add_stats_bad_inputs_are_named():
    x = torch.randn(1, 16, 4, 4, device=DEV).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="r must have channels-last"):
        add_stats(x, torch.randn(1, 16, 4, 4, device=DEV))
    with pytest.raises(TypeError, match="r must have dtype"):
        add_stats(x, x.half())
    with pytest.raises(ValueError, match="out must have x's shape"):
        add_stats(x, None, x[:, :, :2])
    with pytest.raises(ValueError, match="moments must be"):
        group_norm_silu(x, torch.ones(16, device=DEV), torch.zeros(16, device=DEV), 4,
                        moments=add_stats(x[:, :8].contiguous(memory_format=CL))[1])


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance between adjacent bfloat16 numbers at |x| (normal range)."""
    exp = torch.floor(torch.log2(x.abs().clamp_min(torch.finfo(torch.bfloat16).tiny)))
    return torch.finfo(torch.bfloat16).eps * torch.exp2(exp)


def test_bf16_spacing():
    """The tolerance helper above: spacing(x) is the gap to the next bfloat16 up from x."""
    x = torch.tensor([1.0, 1.5, 8.0, 30.0, 0.01], dtype=torch.float64)
    up = torch.nextafter(x.bfloat16(), torch.tensor(float("inf"), dtype=torch.bfloat16)).double()
    torch.testing.assert_close(bf16_spacing(x), up - x.bfloat16().double(), rtol=0, atol=0)
