"""Fused INPE kernel vs a float64 reference (STYLE rule 6) and vs the reference module."""
import copy

import pytest
import torch

from infgen.ref.inpe import INPE
from infgen.kernels.inpe import inpe_embed, inpe_embed_ref, inpe_module

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def weights(m: INPE, dtype):
    return [m.B] + [t.detach().to(DEV, dtype) for t in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("h,w,D,F,add", [
    (5, 7, 64, 16, True),     # tiny preset's widths, with the mask token
    (13, 3, 48, 12, False),   # widths not powers of two
    (1, 1, 64, 16, True),     # a single token
    (9, 11, 128, 64, False),  # 99 tokens: several programs, ragged tail
])
def test_matches_reference(h, w, D, F, add, dtype):
    torch.manual_seed(h * w + D)
    m = INPE(D, F, 1.0, seed=h)
    B, *mlp = weights(m, dtype)
    vec = torch.randn(D, device=DEV) * 0.02 if add else None
    out = torch.full((h * w, D), float("nan"), device=DEV, dtype=dtype)
    y = inpe_embed(h, w, B, *mlp, add=None if vec is None else vec.to(dtype), out=out)
    assert y is out and torch.isfinite(y).all(), "unwritten (poisoned) or non-finite output"
    ref = inpe_embed_ref(h, w, B, *[t.double() for t in mlp], add=None if vec is None else vec.double())
    err = (y.double() - ref).abs().max().item()
    err_torch = (inpe_embed_ref(h, w, B, *mlp, add=None if vec is None else vec.to(dtype)).double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[dtype], (err, err_torch)


def test_equals_reference_module_mask_tokens(tiny_model):
    """The kernel with a decoder's mask_pos weights and mask token gives decoder.mask_tokens."""
    dec = copy.deepcopy(tiny_model.decoder).to(DEV)
    got = inpe_module(6, 5, dec.mask_pos, add=dec.mask_token)
    want = dec.mask_tokens(6, 5)[0]
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_named():
    m = INPE(32, 16, 1.0, 0)
    B, *mlp = weights(m, torch.float32)
    with pytest.raises(ValueError, match="grid h must be a positive int"):
        inpe_embed(0, 3, B, *mlp)
    with pytest.raises(ValueError, match="B must be"):
        inpe_embed(2, 3, B[:2], *mlp)
    with pytest.raises(ValueError, match="fc2_weight must have shape"):
        inpe_embed(2, 3, B, mlp[0], mlp[1], mlp[2][:, :16], mlp[3])
    with pytest.raises(TypeError, match="fc2_bias must have dtype"):
        inpe_embed(2, 3, B, mlp[0], mlp[1], mlp[2], mlp[3].half())
    with pytest.raises(ValueError, match="add must have shape"):
        inpe_embed(2, 3, B, *mlp, add=torch.zeros(7, device=DEV))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.sh)")
def test_cuda_paper_width_4k_grid():
    """Paper preset widths (D 512, F 64) on the 4096^2 mask grid (512 x 512 tokens), bf16."""
    torch.manual_seed(0)
    m = INPE(512, 64, 1.0, 1)
    B, *mlp = weights(m, torch.bfloat16)
    vec = torch.randn(512, device="cuda") * 0.02
    y = inpe_embed(512, 512, B, *mlp, add=vec.bfloat16(), out=torch.full((512 * 512, 512), float("nan"), device="cuda", dtype=torch.bfloat16))
    ref = inpe_embed_ref(512, 512, B, *[t.double() for t in mlp], add=vec.double())
    err = (y.double() - ref).abs().max().item()
    err_torch = (inpe_embed_ref(512, 512, B, *mlp, add=vec.bfloat16()).double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[torch.bfloat16], (err, err_torch)
