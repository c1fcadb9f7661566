"""Flash attention kernel vs a float64 reference (STYLE rule 6). CPU: Triton interpreter."""
import math

import pytest
import torch
import torch.nn.functional as F

from infgen.kernels.attention import LOG2E, attention_ref, flash_attention

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(out, q, k, v, scale=None):
    """err(kernel) <= 2 err(torch, same dtype) + atol, both against float64; every element written."""
    assert torch.isfinite(out).all(), "unwritten (poisoned) or non-finite output"
    ref = attention_ref(q.double(), k.double(), v.double(), scale)
    err = (out.double() - ref).abs().max().item()
    err_torch = (attention_ref(q, k, v, scale).double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[q.dtype], (err, err_torch)


def poisoned(shape, dtype):
    """(B, H, M, D) view of a NaN-filled (B, M, H, D) buffer."""
    B, H, M, D = shape
    return torch.full((B, M, H, D), float("nan"), device=DEV, dtype=dtype).transpose(1, 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,M,N,D", [
    (2, 3, 77, 45, 64),     # cross-attention shape: heads of 64, M != N, ragged tails
    (1, 2, 130, 97, 16),    # the tiny preset's heads of 16; several key tiles + tail
    (2, 1, 41, 41, 512),    # mid-block self-attention: one head of 512, batch 2
    (3, 2, 19, 1, 40),      # one key; head dim not a power of two
])
def test_matches_reference(B, H, M, N, D, dtype):
    torch.manual_seed(B * 1000 + M)
    q = torch.randn(B, H, M, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H, N, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H, N, D, device=DEV, dtype=dtype)
    out = flash_attention(q, k, v, out=poisoned((B, H, M, D), dtype))
    check(out, q, k, v)


def test_default_output_layout_and_scale():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 21, 32, device=DEV) for _ in range(3))
    out = flash_attention(q, k, v, scale=0.3)
    assert out.shape == (2, 3, 21, 32)
    assert out.transpose(1, 2).is_contiguous()  # (B, M, H, D) buffer: merging heads is free
    check(out, q, k, v, 0.3)


def test_strided_views_packed_qkv_and_broadcast_batch():
    """Head-split views of projections, a packed (B, L, 3C) QKV, and a batch-stride-0 query set."""
    torch.manual_seed(2)
    B, L, Hh, D = 2, 37, 2, 32
    qkv = torch.randn(B, L, 3 * Hh * D, device=DEV)
    q, k, v = (qkv[..., j * Hh * D:(j + 1) * Hh * D].view(B, L, Hh, D).transpose(1, 2) for j in range(3))
    check(flash_attention(q, k, v), q, k, v)
    q1 = torch.randn(1, 29, Hh, D, device=DEV).transpose(1, 2).expand(B, -1, -1, -1)
    out = flash_attention(q1, k, v)
    check(out, q1.contiguous(), k, v)


def test_matches_sdpa():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 4, n, 16, device=DEV) for n in (50, 33, 33))
    torch.testing.assert_close(flash_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_named():
    q = torch.randn(1, 2, 8, 16, device=DEV)
    with pytest.raises(TypeError, match="k must have dtype"):
        flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="k must be"):
        flash_attention(q, torch.randn(1, 3, 8, 16, device=DEV), q)
    with pytest.raises(ValueError, match="v must have k's shape"):
        flash_attention(q, q, torch.randn(1, 2, 9, 16, device=DEV))
    with pytest.raises(ValueError, match="unit stride"):
        flash_attention(q.transpose(2, 3), q.transpose(2, 3), q.transpose(2, 3))
    with pytest.raises(ValueError, match="head dim must be"):
        big = torch.randn(1, 1, 4, 520, device=DEV)
        flash_attention(big, big, big)
    with pytest.raises(ValueError, match="4-D"):
        flash_attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        flash_attention(q.double(), q.double(), q.double())


# ----------------------------------------------------------------------------- CUDA, larger
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.sh)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kv_tma", [False, True], ids=["ptr", "tma"])
@pytest.mark.parametrize("M", [4097, 16411])
def test_cuda_head_dim_512(M, kv_tma):
    torch.manual_seed(M)
    q, k, v = (torch.randn(1, 1, M, 512, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = flash_attention(q, k, v, out=poisoned((1, 1, M, 512), torch.bfloat16), kv_tma=kv_tma)
    check(out, q, k, v)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kv_tma", [False, True], ids=["ptr", "tma"])
def test_cuda_cross_attention_paper_shape(kv_tma):
    torch.manual_seed(5)
    B, H, M, N, D = 2, 8, 9001, 4096, 64
    q = torch.randn(B, M, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(2))
    out = flash_attention(q, k, v, out=poisoned((B, H, M, D), torch.bfloat16), kv_tma=kv_tma)
    check(out, q, k, v, 1 / math.sqrt(D))


@pytest.mark.gpu
@gpu
def test_cuda_fp32_runs_sdpa_at_head_dim_512():
    """fp32 on CUDA goes to torch SDPA (the kernel's fp32 tiles do not fit an H100, benchmarks/compile_report.py)."""
    torch.manual_seed(8)
    q, k, v = (torch.randn(2, 1, 3001, 512, device="cuda") for _ in range(3))
    out = flash_attention(q, k, v, out=poisoned((2, 1, 3001, 512), torch.float32))
    check(out, q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_q_prescaled_matches_scaled_softmax(dtype):
    """q * scale * log2(e) with q_prescaled=True computes softmax(q k^T * scale) v."""
    torch.manual_seed(11)
    B, H, M, N, D = 2, 3, 37, 70, 32
    q, k, v = (torch.randn(B, H, L, D, device=DEV, dtype=dtype) for L in (M, N, N))
    scale = 0.37
    q_pre = (q.double() * scale * LOG2E).to(dtype)
    out = flash_attention(q_pre, k, v, q_prescaled=True, out=poisoned((B, H, M, D), dtype))
    # the reference sees the same pre-scaled (and rounded) q, with the scale undone exactly
    check(out, q_pre, k, v, 1.0 / LOG2E)
    with pytest.raises(ValueError, match="scale must be None when q_prescaled"):
        flash_attention(q_pre, k, v, scale=scale, q_prescaled=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,M,N,D", [(2, 3, 77, 45, 64), (1, 1, 41, 41, 512), (2, 2, 19, 33, 40)])
def test_kv_tma_matches_reference(B, H, M, N, D, dtype):
    """K/V through tensor descriptors: ragged key tails and head dims that are not powers of two
    read as zeros past the tensor, like the masked loads."""
    torch.manual_seed(B + M + D)
    q = torch.randn(B, H, M, D, device=DEV, dtype=dtype)
    kv = torch.randn(B, N, 2 * H * D, device=DEV, dtype=dtype)  # a packed K|V projection, head-split views
    k = kv[..., :H * D].view(B, N, H, D).transpose(1, 2)
    v = kv[..., H * D:].view(B, N, H, D).transpose(1, 2)
    out = flash_attention(q, k, v, kv_tma=True, out=poisoned((B, H, M, D), dtype))
    check(out, q, k, v)


def test_kv_tma_refuses_unaligned_strides_and_bad_scales():
    q = torch.randn(1, 2, 8, 10, device=DEV, dtype=torch.bfloat16)  # rows of 20 bytes
    with pytest.raises(ValueError, match=r"kv_tma needs k .*strides \(160, 80, 10, 1\)"):
        flash_attention(q, q, q, kv_tma=True)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            flash_attention(q, q, q, scale=bad)
