"""The 2-CTA cluster head-dim-512 kernel (kernels/attention_d512_cluster.py): its sm_90a compile and
the multi-CTA protocol visible in it (CPU, triton >= 3.9), its accounting, its refusals, and on an
sm_90 GPU with triton >= 3.9 its results against float64."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infgen.kernels import attention_d512_cluster as cl
from infgen.kernels.attention_d512 import HALF, HEAD_DIM, SHARED_LIMIT, D512Config
from infgen.kernels.roofline import attention_roofline
from repo_scripts import load_script  # tests/repo_scripts.py

ROOT = Path(__file__).resolve().parents[1]
multicast = pytest.mark.skipif(not cl.HAS_MULTICAST, reason=cl.NO_MULTICAST)


@pytest.fixture(scope="module")
def rows():
    """static_checks of the bf16 and fp16 builds, compiled in a fresh process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "infgen.kernels.attention_d512_cluster"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@multicast
def test_compiles_as_a_2_cta_cluster_without_spills(rows):
    assert [r["dtype"] for r in rows] == ["bfloat16", "float16"]
    for r in rows:
        assert r["cluster_ctas"] == cl.CLUSTER == 2
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["stack_bytes"] == 0, r
        assert r["fits_shared"] and r["shared_bytes"] <= SHARED_LIMIT, r["shared_bytes"]
        assert r["registers"] <= 255


@multicast
def test_each_cta_computes_its_own_rows_scores_once_on_the_tensor_cores(rows):
    """Per CTA the single-CTA kernel's work: Q K^T for its 64 rows once (512/16 m64n64k16 per tile),
    P V by two warpgroups (2 x 64/16 m64n256k16)."""
    bn = cl.RUNTIME_CONFIG.block_n
    for r in rows:
        assert r["hgmma"] == {f"64x{bn}x16": HEAD_DIM // 16, "64x256x16": 2 * bn // 16}, r["hgmma"]
        assert r["scores"]["replication"] == 1 and r["scores"]["issuing_warpgroups"] == 1, r["scores"]


@multicast
def test_k_and_v_are_multicast_and_released_by_both_ctas(rows):
    """Every K/V box is a multicast copy (64-column boxes: K 512/64, each V half 256/64), the three
    slot releases (K, V[:, :256] by warpgroup 0, V[:, 256:] by warpgroup 1) arrive on the lead CTA's
    cluster barriers, and each CTA arms its own ready barriers (3 before the partitions, 2 in
    warpgroup 0, 1 in warpgroup 1, plus Q's)."""
    for r in rows:
        assert r["multicast_copies"] == HEAD_DIM // 64 + 2 * (HALF // 64), r
        assert r["remote_arrivals"] == 3, r
        assert r["arming"] == 3 + 2 + 1 + 1, r


def test_its_accounting_passes_600_tflops_and_doubles_the_l2_bound():
    d512_tiling = load_script("benchmarks/compile_report.py").d512_tiling
    one = attention_roofline(d512_tiling(64), 65536)
    two = attention_roofline(d512_tiling(64, cluster=cl.CLUSTER), 65536)
    assert two["flop_per_l2_byte"] == pytest.approx(2 * one["flop_per_l2_byte"], rel=0.01)  # Q, O once
    assert two["bound_tflops"] >= 600 > 450 > one["bound_tflops"]


@multicast
def test_the_compile_report_lists_it_beside_the_single_cta_kernel():
    d512_entries = load_script("benchmarks/compile_report.py").d512_entries
    entries = [e for e in d512_entries() if "option" in e.used_by]
    cluster = [e for e in entries if e.kernel == "attn_d512_cluster_kernel"]
    assert {e.dtype for e in cluster} == {"bf16", "fp16"}
    assert all(e.tiling.cluster == 2 and e.expect_hgmma for e in cluster)
    assert any(e.kernel == "attn_d512_kernel" for e in d512_entries())


def test_without_multicast_it_refuses_with_the_reason(monkeypatch):
    monkeypatch.setattr(cl, "HAS_MULTICAST", False)
    with pytest.raises(RuntimeError, match="no multicast TMA"):
        cl.compile_d512_cluster()
    x = torch.zeros(1, 1, 8, HEAD_DIM, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="flash_attention_d512"):
        cl.flash_attention_d512_cluster(x, x, x)


@multicast
def test_bad_inputs_and_configs_are_named():
    x = torch.zeros(1, 1, 8, HEAD_DIM, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="scale must be None"):
        cl.flash_attention_d512_cluster(x, x, x, scale=0.1, q_prescaled=True)
    with pytest.raises(ValueError, match="head dim must be 512"):
        y = torch.zeros(1, 1, 8, 256, dtype=torch.bfloat16)
        cl.flash_attention_d512_cluster(y, y, y)
    with pytest.raises(ValueError, match="no pipelined variant"):
        cl.compile_d512_cluster(D512Config(pipelined=True))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            cl.flash_attention_d512_cluster(x, x, x)


# ----------------------------------------------------------------------------- sm_90 GPU, triton >= 3.9
def _sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.gpu
@multicast
@pytest.mark.skipif(not _sm90(), reason="needs an sm_90 GPU (H100/H200): TMA multicast, clusters")
@pytest.mark.parametrize("B,M,N", [(1, 4097, 4097), (2, 41, 41), (1, 3, 1), (3, 1025, 777), (1, 200, 129)])
def test_cuda_matches_reference(B, M, N):
    """Never run yet: ragged clusters (41 rows: the second CTA has none), one key, M != N, batch 3."""
    from test_kernels_attention_d512 import check, poisoned  # pytest puts tests/ on sys.path
    torch.manual_seed(B * 31 + M)
    q = torch.randn(B, 1, M, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, 1, N, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    check(cl.flash_attention_d512_cluster(q, k, v, out=poisoned(B, 1, M, q.dtype)), q, k, v)
