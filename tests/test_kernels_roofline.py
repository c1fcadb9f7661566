"""Byte/FLOP accounting of attention tilings (infgen.kernels.roofline), against hand-computed cases.
Pure arithmetic: nothing compiles or runs."""
import pytest

from repo_scripts import load_script  # tests/repo_scripts.py

report = load_script("benchmarks/compile_report.py")
from infgen.kernels.roofline import H100, AttentionTiling, Hardware, attention_roofline, smem_bytes_per_tile

M = 65_536


def test_h100_rates_follow_from_per_sm_figures():
    assert H100.tensor_flops == pytest.approx(989.4e12, rel=1e-3)      # 132 x 4,096 x 1.83 GHz
    assert H100.smem_bytes_s == pytest.approx(30.92e12, rel=1e-3)      # 132 x 128 B x 1.83 GHz
    assert Hardware(l2_bytes_s=7e12).l2_bytes_s == 7e12


def test_flops_and_l2_bytes_of_the_scores_once_kernel():
    """64 query rows, 64 keys, d512, bf16: K + V of a tile = 2 x 64 x 512 x 2 B = 131,072 B for
    4 x 64 x 64 x 512 = 8,388,608 FLOP: 64 FLOP per byte (Q and O add 2 x 64 x 512 x 2 B per block)."""
    t = AttentionTiling(64, 64, 512, p_smem_readers=1)
    r = attention_roofline(t, M)
    assert r["flops"] == r["executed_flops"] == 4 * M * M * 512
    blocks = tiles = M // 64
    assert r["l2_bytes"] == blocks * 2 * 64 * 512 * 2 + blocks * tiles * 131_072
    assert r["flop_per_l2_byte"] == pytest.approx(64, rel=2e-3)
    assert r["limit"] == "L2"
    assert r["bound_tflops"] == pytest.approx(64 * 5.5, rel=2e-3)


def test_doubling_block_m_or_sharing_kv_over_a_cluster_halves_l2_bytes_per_flop():
    base = attention_roofline(AttentionTiling(64, 64), M)
    for other in (AttentionTiling(128, 64), AttentionTiling(64, 64, cluster=2)):
        r = attention_roofline(other, M)
        kv = lambda x: x["l2_bytes"] - 2 * M * 512 * 2  # noqa: E731 - K/V part (Q read and O written once)
        assert kv(r) * 2 == kv(base), other
    assert attention_roofline(AttentionTiling(64, 64, cluster=2, p_smem_readers=1), M)["bound_tflops"] >= 600


def test_shared_memory_bytes_per_tile_by_hand():
    """Scores-once, 64 x 64: Q K^T reads Q (64 KiB) and K (64 KiB); P V reads V once (64 KiB, two
    halves); P written and read once for warpgroup 1 (2 x 8 KiB); TMA writes K and V (128 KiB)."""
    KiB = 1024
    assert smem_bytes_per_tile(AttentionTiling(64, 64, p_smem_readers=1)) == (64 + 64 + 64 + 16 + 128) * KiB
    # tl.dot, 64 x 32, scores twice, Q K^T as m64n16k16: Q re-read per 16 keys by both warpgroups
    t = AttentionTiling(64, 32, score_replication=2, score_instr_n=16)
    assert smem_bytes_per_tile(t) == 2 * (2 * 64 + 32) * KiB + 32 * KiB + 64 * KiB
    r = attention_roofline(t, M)
    assert r["executed_flops"] == 1.5 * r["flops"]
    assert r["limit"] == "shared memory" and r["bound_tflops"] < attention_roofline(AttentionTiling(64, 32), M)[
        "bound_tflops"]


def test_hbm_reads_kv_once_per_wave_when_it_does_not_fit_in_l2():
    small = attention_roofline(AttentionTiling(64, 64), 4096)          # K + V = 8 MiB: fits in L2
    assert small["hbm_bytes"] == 4 * 4096 * 512 * 2
    big = attention_roofline(AttentionTiling(64, 64), M)               # 128 MiB of K + V, 1,024 blocks
    waves = -(-(M // 64) // 132)
    assert big["hbm_bytes"] == 2 * M * 512 * 2 + waves * 2 * M * 512 * 2


def test_bad_tilings_name_the_value():
    with pytest.raises(ValueError, match="cluster must be >= 1, got 0"):
        AttentionTiling(64, 64, cluster=0)
    with pytest.raises(ValueError, match="block_m must be"):
        AttentionTiling(96, 64)
    with pytest.raises(ValueError, match="M and N must be >= 1"):
        attention_roofline(AttentionTiling(64, 64), 0)


def test_report_designs_table_sets_the_old_kernel_beside_the_cluster_design():
    md = report.designs_table()
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines()[2:]}
    assert rows.keys() == report.DESIGNS.keys()
    bound = {name: attention_roofline(t, report.ROOFLINE_TOKENS)["bound_tflops"] for name, t in report.DESIGNS.items()}
    built = "scores-once d512, 64x64, as built (runtime)"
    cluster = "scores-once d512, 64x64, 2-CTA cluster, K/V multicast (built, triton >= 3.9, never run)"
    assert bound[built] < 450 <= 600 <= bound[cluster]
    assert f"{bound[cluster]:.0f} (L2)" in rows[cluster]
