"""backend="triton": whole decode vs the float64 reference (CPU: Triton interpreter, tiny preset)."""
import os

import pytest
import torch

from infgen.runtime.engine import InfGenEngine
from infgen.runtime.torch_backend import TorchBackend
from infgen.runtime.triton_backend import (TritonBackend, carried_moments, conv2d, fold_query_scale, query_projections,
                                    self_attention, triton_available, unavailable_reason)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def decoded(tiny_model):
    """One interpreter decode (slow) shared by the tests below: batch 2, latent 5x7, grid 6x5."""
    torch.manual_seed(1)
    z = torch.randn(2, 4, 5, 7, device=DEV)
    be = TritonBackend(tiny_model, DEV, torch.float32)
    out = be.run(z, 6, 5)
    ref = TorchBackend(tiny_model, DEV, torch.float64).run(z.double(), 6, 5)
    torch_fp32 = TorchBackend(tiny_model, DEV, torch.float32).run(z, 6, 5)
    return be, z, out, ref, torch_fp32


def test_decode_matches_float64_reference(decoded):
    _, _, out, ref, torch_fp32 = decoded
    assert out.shape == ref.shape == (2, 3, 48, 40)
    err = (out.double() - ref).abs().max().item()
    err_torch = (torch_fp32.double() - ref).abs().max().item()
    assert err <= 2 * err_torch + 1e-4, (err, err_torch)


def test_stages_compose_to_run(decoded):
    be, z, out, _, _ = decoded
    names = [n for n, _ in be.stages(6, 5)]
    assert names == ["tokens+cross_attn", "mid_block", "up_blocks"]
    x = z
    with torch.inference_mode():
        for _, fn in be.stages(6, 5):
            x = fn(x)
    torch.testing.assert_close(x, out, atol=0, rtol=0)


def test_token_cache_is_per_grid_and_bounded(decoded):
    be = decoded[0]
    mask, q0 = be.mask_and_q0(6, 5)
    assert be.mask_and_q0(6, 5)[0] is mask  # cached, not recomputed
    assert mask.shape == (1, 30, be.cfg.token_dim) and q0.shape == mask.shape
    for g in range(1, be.tokens.cache_size + 2):
        be.mask_and_q0(g, 2)
    assert len(be.tokens) == be.tokens.cache_size and (6, 5) not in be.tokens


def test_engine_decodes_with_triton_backend(tiny_model):
    """Through the engine (validation, crop, clamp), batch 1, output size not a multiple of 8."""
    torch.manual_seed(2)
    z = torch.randn(1, 4, 3, 4)
    eng = InfGenEngine(tiny_model, backend="triton", device=DEV)
    ref = InfGenEngine(tiny_model, backend="torch", device=DEV, dtype="fp32")
    img = eng.decode(z, 21, 30)
    assert eng.backend_name == "triton" and img.shape == (1, 3, 21, 30)
    tol = 1e-4 if eng.dtype == torch.float32 else 5e-2
    torch.testing.assert_close(img.float(), ref.decode(z, 21, 30), atol=tol, rtol=0)


def test_cpu_without_interpreter_says_why(monkeypatch, tiny_model):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available(CPU)
    assert "backend='torch'" in unavailable_reason(CPU)
    with pytest.raises(ValueError, match="backend='torch'"):
        TritonBackend(tiny_model, CPU, torch.float32)


def test_bad_options_are_named(tiny_model):
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        TritonBackend(tiny_model, DEV, torch.float32, cuda_graphs="yes")
    with pytest.raises(ValueError, match="cache_size must be"):
        TritonBackend(tiny_model, DEV, torch.float32, cache_size=0)
    if DEV.type == "cpu":
        with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
            TritonBackend(tiny_model, CPU, torch.float32, cuda_graphs=True)


@pytest.mark.parametrize("k", [3, 1])
def test_banded_conv_equals_conv(k):
    """Row bands with halos (used past 2^31 elements) give the unsplit conv, channels-last too."""
    torch.manual_seed(k)
    conv = torch.nn.Conv2d(5, 7, k, padding=k // 2)
    x = torch.randn(2, 5, 23, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = conv2d(x, conv, max_elems=2 * 7 * 9 * 4)  # forces bands of a few rows
        torch.testing.assert_close(got, conv(x), atol=1e-5, rtol=1e-5)
        # each band's store took GroupNorm statistics: the next GroupNorm skips its stats pass
        from infgen.kernels.groupnorm import group_norm_silu, group_norm_silu_ref
        moments = carried_moments(got)
        assert moments is not None and carried_moments(got) is None  # used once
        w, b = torch.randn(7), torch.randn(7)
        torch.testing.assert_close(group_norm_silu(got, w, b, 7, 1e-6, True, moments=moments),
                                   group_norm_silu_ref(got, w, b, 7, 1e-6, True), atol=1e-5, rtol=1e-5)


def test_decode_takes_groupnorm_statistics_in_the_residual_adds(tiny_model, monkeypatch):
    """Every GroupNorm whose input is a resnet's output (a residual add) uses the statistics the
    add took: tiny preset (2 + 4 x 2 resnets), 22 GroupNorms, 15 stats passes: each resnet's norm2
    (10), the mid block's first norm1 (its input: the tokens) and second norm1 (after the attention's
    own residual), and norm1 after each of the 3 upsamplers' convs (unbanded here)."""
    from infgen.kernels import groupnorm
    calls = {"stats": 0, "apply": 0}
    for name, key in (("gn_stats_launch", "stats"), ("gn_apply_launch", "apply")):
        def counted(*a, _f=getattr(groupnorm, name), _k=key, **k):
            calls[_k] += 1
            return _f(*a, **k)
        monkeypatch.setattr(groupnorm, name, counted)
    torch.manual_seed(2)
    be = TritonBackend(tiny_model, DEV, torch.float32)
    z = torch.randn(1, 4, 2, 2, device=DEV)
    out = be.run(z, 2, 3)
    ref = TorchBackend(tiny_model, DEV, torch.float64).run(z.double(), 2, 3)
    assert calls == {"stats": 15, "apply": 22}, calls
    assert (out.double() - ref).abs().max().item() < 1e-3


def test_query_scale_is_folded_into_every_query_projection_once(decoded, tiny_model):
    """The backend's to_q (cross blocks: head dim d / heads; mid block: one head of C) computes
    the source's queries times scale * log2(e); the caller's model is untouched; q0 is pre-scaled."""
    from infgen.kernels.attention import LOG2E
    be = decoded[0]
    ours, src = query_projections(be.model), query_projections(tiny_model)
    assert set(ours) == set(src) and len(ours) == len(tiny_model.decoder.blocks) + 1
    torch.manual_seed(3)
    for name, (lin, hd) in ours.items():
        ref, ref_hd = src[name]
        assert hd == ref_hd == (lin.out_features // tiny_model.decoder.blocks[0].num_heads if ".blocks." in name
                                else lin.out_features)
        x = torch.randn(5, lin.in_features, device=DEV)
        with torch.no_grad():
            torch.testing.assert_close(lin(x), ref.to(DEV)(x) * (LOG2E / hd ** 0.5), atol=1e-5, rtol=1e-5)
        assert ref.weight.device.type == "cpu" and not torch.equal(ref.weight.to(DEV), lin.weight)
    mask, q0 = be.mask_and_q0(6, 5)
    b0 = tiny_model.decoder.blocks[0]
    hd0 = b0.to_q.out_features // b0.num_heads
    with torch.no_grad():
        torch.testing.assert_close(q0, b0.to_q(b0.norm_q(mask.cpu())).to(DEV) * (LOG2E / hd0 ** 0.5),
                                   atol=1e-5, rtol=1e-5)


def test_fold_query_scale_rounds_once_from_the_source(tiny_model):
    """Folding into a bf16 copy rounds the fp32 product once: equal to (w * f).bfloat16()."""
    from infgen.kernels.attention import LOG2E
    from infgen.ref.model import copy_model
    copy = copy_model(tiny_model, CPU, torch.bfloat16)
    fold_query_scale(copy, tiny_model)
    lin, hd = query_projections(copy)["decoder.mid_block.attentions.0.to_q"]
    ref = tiny_model.decoder.mid_block.attentions[0].to_q
    assert torch.equal(lin.weight, (ref.weight * (LOG2E / hd ** 0.5)).bfloat16())
    assert torch.equal(lin.bias, (ref.bias * (LOG2E / hd ** 0.5)).bfloat16())


def test_self_attention_picks_the_d512_kernel_where_it_applies(monkeypatch):
    """The mid-block op calls flash_attention_d512 (q_prescaled passed through) when d512_applies
    says so, else the tl.dot kernel; here the CPU (interpreter) has d512_applies False for real."""
    from infgen.kernels import attention_d512
    from infgen.kernels.attention import LOG2E, attention_ref
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 1, 9, 64, device=DEV) for _ in range(3))
    assert not attention_d512.d512_applies(q, k, v)
    got = self_attention(q * (LOG2E / 8.0), k, v, q_prescaled=True)  # the tl.dot kernel
    torch.testing.assert_close(got, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)
    calls = []
    monkeypatch.delenv("INFGEN_D512", raising=False)
    monkeypatch.setattr(attention_d512, "d512_applies", lambda *a: True)
    monkeypatch.setattr(attention_d512, "flash_attention_d512", lambda *a, **kw: calls.append(kw) or a[0])
    assert self_attention(q, k, v, q_prescaled=True) is q and calls == [{"q_prescaled": True}]


def test_self_attention_honours_the_d512_kill_switch(monkeypatch):
    """INFGEN_D512=0 (what scripts/gpu_check.sh exports when its smoke test fails): the mid block
    runs the tl.dot kernel even where d512_applies says yes, read at call time; 1 turns it back on;
    any other value is refused by name."""
    from infgen.kernels import attention_d512
    from infgen.kernels.attention import LOG2E, attention_ref
    torch.manual_seed(6)
    q, k, v = (torch.randn(1, 1, 9, 64, device=DEV) for _ in range(3))
    calls = []
    monkeypatch.setattr(attention_d512, "d512_applies", lambda *a: True)
    monkeypatch.setattr(attention_d512, "flash_attention_d512", lambda *a, **kw: calls.append(kw) or a[0])
    monkeypatch.setenv("INFGEN_D512", "0")
    got = self_attention(q * (LOG2E / 8.0), k, v, q_prescaled=True)
    assert calls == []
    torch.testing.assert_close(got, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("INFGEN_D512", "1")
    assert self_attention(q, k, v, q_prescaled=True) is q and calls == [{"q_prescaled": True}]
    monkeypatch.setenv("INFGEN_D512", "off")
    with pytest.raises(ValueError, match="INFGEN_D512 must be 0 .* got 'off'"):
        self_attention(q, k, v)


# ----------------------------------------------------------------------------- CUDA
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.sh)")


@pytest.mark.gpu
@gpu
def test_cuda_paper_preset_bf16_matches_fp32_and_graph_replay():
    """Paper preset, random weights, 512x384 output, batch 2: triton bf16 is as close to torch fp32
    as torch bf16 is (rule 6, relative norms); a graph replay equals the captured run; eager ~ graph."""
    from infgen.ref.config import preset
    from infgen.ref.model import InfGen
    torch.manual_seed(0)
    model = InfGen(preset("paper")).eval()
    z = torch.randn(2, 4, 64, 64, device="cuda")
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    ref = TorchBackend(model, DEV, torch.float32).run(z, 64, 48).float()
    err_torch = rel(TorchBackend(model, DEV, torch.bfloat16).run(z, 64, 48), ref)
    be = TritonBackend(model, DEV, torch.bfloat16, cuda_graphs=True)
    out = be.run(z, 64, 48).float()
    again = be.run(z, 64, 48).float()  # graph replay
    assert rel(out, ref) <= 2 * err_torch + 1e-3, (rel(out, ref), err_torch)
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    eager = TritonBackend(model, DEV, torch.bfloat16, cuda_graphs=False).run(z, 64, 48)
    assert rel(eager, out) <= 2 * err_torch + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="needs an sm_90 GPU (run by scripts/gpu_check.sh)")
@pytest.mark.skipif(os.environ.get("INFGEN_D512") == "0", reason="INFGEN_D512=0: the d512 kernel is switched off")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_mid_block_attention_uses_d512_kernel_and_matches_sdpa(dtype, monkeypatch):
    """Paper preset (mid block: one head of 512), the backend's own op table on its pre-scaled
    to_q: the scores-once kernel is chosen and the mid-block attention equals SDPA on the
    reference projections (float64) as closely as SDPA in the same dtype does."""
    from infgen.ref.config import preset
    from infgen.ref.decode import TORCH_OPS, mid_attention
    from infgen.ref.model import InfGen
    from infgen.kernels import attention_d512
    torch.manual_seed(5)
    model = InfGen(preset("paper")).eval()
    be = TritonBackend(model, DEV, dtype, cuda_graphs=False)
    x = torch.randn(2, model.decoder.mid_block.attentions[0].to_q.in_features, 37, 29, device="cuda")
    calls = []
    real = attention_d512.flash_attention_d512
    monkeypatch.setattr(attention_d512, "flash_attention_d512", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    with torch.inference_mode():
        out = mid_attention(be.ops, be.model.decoder.mid_block.attentions[0],
                            x.to(dtype).contiguous(memory_format=torch.channels_last)).float()
        ref = mid_attention(TORCH_OPS, TorchBackend(model, DEV, torch.float64).model.decoder.mid_block.attentions[0],
                            x.double())
        same_dtype = mid_attention(TORCH_OPS, TorchBackend(model, DEV, dtype).model.decoder.mid_block.attentions[0],
                                   x.to(dtype)).double()
    assert calls == [{"q_prescaled": True}]
    err, err_sdpa = (out.double() - ref).abs().max().item(), (same_dtype - ref).abs().max().item()
    assert err <= 2 * err_sdpa + 1e-2, (err, err_sdpa)
