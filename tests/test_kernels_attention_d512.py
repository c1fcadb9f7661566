"""Scores-once head-dim-512 attention (kernels/attention_d512.py).

CPU (CI): the runtime configuration compiled for sm_90a without a GPU, in a fresh process (the test
session imports triton with TRITON_INTERPRET=1, under which Gluon cannot compile): it compiles,
fits in shared memory, spills nothing, uses HGMMA, and computes each score once. The launcher's
input checks. GPU (sm_90, gpu-marked): against the float64 reference (STYLE rule 6) and the tl.dot
kernel at odd sizes, ragged tails, batch > 1, strided views.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infgen.kernels.attention import attention_ref, flash_attention
from infgen.kernels.attention_d512 import (HEAD_DIM, PIPELINED_CONFIGS, RUNTIME_CONFIG, SHARED_LIMIT, SWEEP_CONFIGS,
                                    compile_d512, d512_applies, d512_unsupported_reason, flash_attention_d512,
                                    gluon_interpreted, score_work)

ROOT = Path(__file__).resolve().parents[1]
ATOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


# ----------------------------------------------------------------------------- compile for sm_90a (CPU)
@pytest.fixture(scope="session")
def all_rows():
    """static_checks rows of the runtime, sweep and pipelined configurations, bf16 and fp16, from one
    `python -m infgen.kernels.attention_d512 --json` run without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "infgen.kernels.attention_d512", "--configs", "runtime", "sweep",
                           "pipelined", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def compiled_rows(all_rows):
    """The runtime and sweep configurations' rows."""
    rows = [r for r in all_rows if r["set"] in ("runtime", "sweep")]
    assert len(rows) == 2 * (1 + len(SWEEP_CONFIGS))
    return rows


@pytest.fixture(scope="session")
def runtime_rows(compiled_rows):
    rows = [r for r in compiled_rows if r["set"] == "runtime"]
    assert [r["dtype"] for r in rows] == ["bf16", "fp16"]
    return rows


def test_runtime_config_compiles_fits_and_does_not_spill(runtime_rows):
    """As the triton backend launches it: queries pre-scaled (q_prescaled)."""
    for r in runtime_rows:
        assert "error" not in r, r.get("error")
        assert r["q_prescaled"] is True
        assert r["config"] == RUNTIME_CONFIG.__dict__
        assert r["shared_bytes"] <= SHARED_LIMIT and r["fits_shared"], r["shared_bytes"]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack_bytes"] == 0, r
        assert r["registers"] <= 255


def test_runtime_config_uses_hgmma_for_both_products(runtime_rows):
    bn = RUNTIME_CONFIG.block_n
    for r in runtime_rows:
        # Q K^T: 512 / 16 k-steps of m64n{bn}k16; P V: two warpgroups x bn / 16 k-steps of m64n256k16.
        assert r["hgmma"] == {f"64x{bn}x16": HEAD_DIM // 16, "64x256x16": 2 * bn // 16}, r["hgmma"]


def test_runtime_config_computes_each_score_once(runtime_rows):
    for r in runtime_rows:
        s = r["scores"]
        assert s["score_dots"] == 1 and s["replication"] == 1 and s["issuing_warpgroups"] == 1, s
        assert s["sass_score_hgmma"] == s["min_score_hgmma_per_tile"], s


# Lines of the tl.dot kernel's TTGIR (kernels/attention.py on main, head dim 512, 64x32 tiles, 8 warps,
# 2 stages; triton 3.9 for sm_90a; locations cut), the ones score_work reads: its ragged-tail Q K^T
# with all 8 warps on the query axis of a 64-row block, and its P V.
TLDOT_TTGIR = """#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 256, 16]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 16, 16]}>
module attributes {"ttg.num-ctas" = 1 : i32, "ttg.num-warps" = 8 : i32, ttg.target = "cuda:90", "ttg.threads-per-warp" = 32 : i32, "ttng.two-ctas" = false} {
      %c = ttng.warp_group_dot %q_56, %s_100, %cst_6 {inputPrecision = 0 : i32} : !ttg.memdesc<64x512xbf16, #shared, #smem> * !ttg.memdesc<512x32xbf16, #shared1, #smem> -> tensor<64x32xf32, #mma1>
      %c_121 = ttng.warp_group_dot %acc_120, %v_104, %acc_118 {inputPrecision = 0 : i32} : tensor<64x32xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>> * !ttg.memdesc<32x512xbf16, #shared, #smem> -> tensor<64x512xf32, #mma>
"""


def test_score_work_flags_the_tl_dot_kernels_duplicate_scores():
    sass = "HGMMA.64x16x16.F32.BF16 ;\n" * 64
    s = score_work(TLDOT_TTGIR, sass, 64, 32)
    assert s["score_dots"] == 1 and s["replication"] == 2 and s["issuing_warpgroups"] == 2, s
    assert s["sass_score_hgmma"] == {"64x16x16": 64} and s["min_score_hgmma_per_tile"] == {"64x16x16": 64}
    with pytest.raises(ValueError, match="no warpgroup dot with a 64x64 result"):
        score_work(TLDOT_TTGIR, sass, 64, 64)


def test_sweep_lists_only_configs_that_fit(compiled_rows):
    sweep = [r for r in compiled_rows if r["set"] == "sweep"]
    assert [r["config"] for r in sweep[::2]] == [c.__dict__ for c in SWEEP_CONFIGS]
    for r in sweep:
        assert "error" not in r, r.get("error")
        assert r["fits_shared"] and r["spill_stores"] == 0, r
        assert r["scores"]["replication"] == 1, r["scores"]


@pytest.fixture(scope="session")
def pipelined_rows(all_rows):
    """The pipelined option's rows (bf16, fp16; q_prescaled False)."""
    return [r for r in all_rows if r["set"] == "pipelined"]


def test_pipelined_option_compiles_clean_with_an_async_wgmma_wait(pipelined_rows):
    """Double-buffered 32-key K/V, warpgroup 0 pipelined: fits, no spills, scores once, and a
    `wgmma.wait_group 1` (S of tile j+1 waited while P V of tile j still runs). Q K^T appears twice
    in SASS (prologue and loop): 2 x 512/16 m64n32k16; P V: warpgroup 0 in loop and epilogue
    (2 x 32/16) plus warpgroup 1 (32/16) m64n256k16."""
    assert len(pipelined_rows) == 2 * len(PIPELINED_CONFIGS)
    for r in pipelined_rows:
        assert "error" not in r, r.get("error")
        bn = r["config"]["block_n"]
        assert r["config"]["pipelined"] and r["config"]["stages"] >= 2
        assert r["fits_shared"] and r["shared_bytes"] <= SHARED_LIMIT, r["shared_bytes"]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack_bytes"] == 0, r
        assert r["hgmma"] == {f"64x{bn}x16": 2 * HEAD_DIM // 16, "64x256x16": 3 * bn // 16}, r["hgmma"]
        assert 1 in r["wgmma_wait_depths"], r["wgmma_wait_depths"]
        assert r["scores"]["replication"] == 1 and r["scores"]["issuing_warpgroups"] == 1, r["scores"]


def test_compile_rejects_bad_dtype_and_the_interpreter():
    with pytest.raises(ValueError, match="dtype must be one of"):
        compile_d512(RUNTIME_CONFIG, torch.float32)
    if gluon_interpreted():  # the CPU test session (conftest sets TRITON_INTERPRET=1 before triton loads)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            compile_d512()


# ----------------------------------------------------------------------------- launcher checks (any machine)
def test_unsupported_reasons_name_the_problem():
    x = torch.randn(1, 1, 8, HEAD_DIM, dtype=torch.bfloat16)
    assert "bfloat16 or float16" in d512_unsupported_reason(x.float(), x.float(), x.float())
    small = torch.randn(1, 1, 8, 256, dtype=torch.bfloat16)
    assert "512" in d512_unsupported_reason(small, small, small)
    assert "tensors" in d512_unsupported_reason(x, x, None)
    if not torch.cuda.is_available():
        assert "CUDA" in d512_unsupported_reason(x, x, x) and not d512_applies(x, x, x)


def test_bad_inputs_are_named():
    x = torch.randn(1, 1, 8, HEAD_DIM, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="k must have dtype"):
        flash_attention_d512(x, x.half(), x)
    with pytest.raises(ValueError, match="k must be"):
        flash_attention_d512(x, torch.randn(1, 2, 8, HEAD_DIM, dtype=torch.bfloat16), x)
    with pytest.raises(ValueError, match="v must have k's shape"):
        flash_attention_d512(x, x, torch.randn(1, 1, 9, HEAD_DIM, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="head dim must be 512"):
        y = torch.randn(1, 1, 8, 64, dtype=torch.bfloat16)
        flash_attention_d512(y, y, y)
    with pytest.raises(ValueError, match="4-D"):
        flash_attention_d512(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="unit stride"):
        t = x.transpose(2, 3).contiguous().transpose(2, 3)
        flash_attention_d512(t, t, t)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        flash_attention_d512(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match="bfloat16 or float16 only"):
        flash_attention_d512(x.float(), x.float(), x.float())
    with pytest.raises(ValueError, match="scale must be None when q_prescaled"):
        flash_attention_d512(x, x, x, scale=0.1, q_prescaled=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            flash_attention_d512(x, x, x)


# ----------------------------------------------------------------------------- sm_90 GPU
def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


sm90 = pytest.mark.skipif(not _sm90(), reason="needs an sm_90 GPU (H100/H200): wgmma, TMA, setmaxnreg "
                                               "(run by scripts/gpu_check.sh on a lent GPU)")


def check(out, q, k, v, scale=None):
    """err(kernel) <= 2 err(torch, same dtype) + atol, both against float64; every element written."""
    assert torch.isfinite(out).all(), "unwritten (poisoned) or non-finite output"
    ref = attention_ref(q.double(), k.double(), v.double(), scale)
    err = (out.double() - ref).abs().max().item()
    err_torch = (attention_ref(q, k, v, scale).double() - ref).abs().max().item()
    assert err <= 2 * err_torch + ATOL[q.dtype], (err, err_torch)


def poisoned(B, H, M, dtype):
    """(B, H, M, 512) view of a NaN-filled (B, M, H, 512) buffer."""
    return torch.full((B, M, H, HEAD_DIM), float("nan"), device="cuda", dtype=dtype).transpose(1, 2)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B,M,N", [
    (1, 4097, 4097),     # self-attention, ragged tails on both axes
    (2, 41, 41),         # batch 2, less than one query block and one key tile
    (3, 1025, 777),      # M != N, batch 3
    (1, 3, 1),           # one key, three queries
    (1, 16411, 16411),   # several hundred key tiles
])
def test_cuda_matches_reference(B, M, N, dtype):
    torch.manual_seed(B * 100003 + M)
    q = torch.randn(B, 1, M, HEAD_DIM, device="cuda", dtype=dtype)
    k, v = (torch.randn(B, 1, N, HEAD_DIM, device="cuda", dtype=dtype) for _ in range(2))
    assert d512_applies(q, k, v)
    out = flash_attention_d512(q, k, v, out=poisoned(B, 1, M, dtype))
    check(out, q, k, v)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("config", SWEEP_CONFIGS, ids=lambda c: f"n{c.block_n}s{c.stages}")
def test_cuda_sweep_configs_match_tl_dot_kernel(config):
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 1, 2049, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ours = flash_attention_d512(q, k, v, config=config)
    check(ours, q, k, v)
    torch.testing.assert_close(ours.float(), flash_attention(q, k, v).float(), atol=2 * ATOL[q.dtype], rtol=0)


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("config", PIPELINED_CONFIGS, ids=lambda c: f"n{c.block_n}s{c.stages}-pipelined")
@pytest.mark.parametrize("B,M,N", [(1, 4097, 4097), (2, 41, 41), (1, 3, 1), (3, 1025, 777)])
def test_cuda_pipelined_option_matches_reference(config, B, M, N):
    """The pipelined option (never run yet): one key tile (no loop), ragged tails, M != N, batch > 1."""
    torch.manual_seed(B * 7919 + N)
    q = torch.randn(B, 1, M, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, 1, N, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    check(flash_attention_d512(q, k, v, out=poisoned(B, 1, M, q.dtype), config=config), q, k, v)


@pytest.mark.gpu
@sm90
def test_cuda_layout_scale_packed_qkv_and_broadcast_batch():
    """Default output layout; scale; head views of a packed (B, L, 3 * 512) QKV (no copy); a query
    set broadcast over the batch (batch stride 0); several heads."""
    torch.manual_seed(11)
    B, L = 2, 777
    qkv = torch.randn(B, L, 3 * HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    q, k, v = (qkv[..., j * HEAD_DIM:(j + 1) * HEAD_DIM].unsqueeze(1) for j in range(3))
    out = flash_attention_d512(q, k, v, scale=0.02)
    assert out.shape == (B, 1, L, HEAD_DIM) and out.transpose(1, 2).is_contiguous()
    check(out, q, k, v, 0.02)
    q1 = torch.randn(1, 1, 100, HEAD_DIM, device="cuda", dtype=torch.bfloat16).expand(B, -1, -1, -1)
    check(flash_attention_d512(q1, k, v), q1.contiguous(), k, v)
    qh, kh, vh = (torch.randn(1, 3, 130, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    check(flash_attention_d512(qh, kh, vh), qh, kh, vh, 1 / math.sqrt(HEAD_DIM))


@pytest.mark.gpu
@sm90
def test_cuda_ablations_compute_what_they_keep():
    """Without Q K^T the scores are zero, so attention is the mean of V; without P V the output is
    zero. Both run the rest of the pipeline (loads, softmax, barriers) and write every element."""
    from infgen.kernels import attention_d512
    from repo_scripts import load_script
    ablations = load_script("benchmarks/attention_d512.py").ablations(attention_d512)
    torch.manual_seed(13)
    q, k, v = (torch.randn(1, 1, 300, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    no_qk = flash_attention_d512(q, k, v, out=poisoned(1, 1, 300, q.dtype), products=ablations["no_qk"])
    mean_v = v.double().mean(2, keepdim=True).expand_as(no_qk)
    assert (no_qk.double() - mean_v).abs().max().item() <= ATOL[q.dtype]
    no_pv = flash_attention_d512(q, k, v, out=poisoned(1, 1, 300, q.dtype), products=ablations["no_pv"])
    assert (no_pv == 0).all()


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_q_prescaled_matches_scaled_softmax(dtype):
    """q * scale * log2(e) with q_prescaled=True (what the triton backend passes) computes
    softmax(q k^T * scale) v: the Q_PRESCALED variant drops the multiply, not the scale."""
    from infgen.kernels.attention import LN2, LOG2E
    torch.manual_seed(17)
    q, k, v = (torch.randn(2, 1, 1031, HEAD_DIM, device="cuda", dtype=dtype) for _ in range(3))
    scale = 1 / math.sqrt(HEAD_DIM)
    q_pre = (q.float() * (scale * LOG2E)).to(dtype)
    out = flash_attention_d512(q_pre, k, v, q_prescaled=True, out=poisoned(2, 1, 1031, dtype))
    check(out, q_pre, k, v, LN2)  # softmax(q_pre k^T / log2(e)) v = softmax(q k^T * scale) v
