"""Concurrent decode on one engine (docs/robustness.md, threads; #18 item 4): per-size caches with
cache_size=1 forced to evict under several threads, and the triton backend's CUDA-graph buffers."""
import threading

import pytest
import torch

from infgen.runtime.cache import SizeCache
from infgen.runtime.engine import InfGenEngine

SIZES = [(40, 56), (64, 64), (24, 80), (56, 40)]  # (h, w): four token grids, one cache slot


def hammer(engine, jobs, threads: int = 4) -> dict:
    """Run decode(z, h, w) for every job over `threads` threads at once -> {job index: image}."""
    results, errors = {}, []
    start = threading.Barrier(threads)

    def worker(mine):
        start.wait()
        for i in mine:
            z, h, w = jobs[i]
            try:
                results[i] = engine.decode(z, h, w)
            except Exception as exc:  # noqa: BLE001 - reported below with the job
                errors.append((i, exc))
    ts = [threading.Thread(target=worker, args=(range(k, len(jobs), threads),)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    assert not errors, errors
    return results


def test_threads_mixed_sizes_cache_size_1_each_get_their_own_image():
    torch.manual_seed(0)
    jobs = [(torch.randn(1 + i % 2, 4, 6, 6), *SIZES[i % len(SIZES)]) for i in range(16)]
    ref_engine = InfGenEngine("tiny")
    refs = [ref_engine.decode(z, h, w) for z, h, w in jobs]
    engine = InfGenEngine("tiny", cache_size=1)
    out = hammer(engine, jobs)
    assert len(engine.backend.tokens) == 1
    for i, ref in enumerate(refs):
        assert out[i].shape == ref.shape
        assert (out[i] - ref).abs().max().item() <= 1e-5, i  # another job's image differs by ~1


def test_size_cache_makes_each_key_once_under_contention():
    cache, made = SizeCache(1), []
    lock = threading.Lock()

    def make(k):
        with lock:
            made.append(k)
        return ("value", k)

    def worker(k):
        for _ in range(200):
            assert cache.get_or_make(k, lambda: make(k)) == ("value", k)
    ts = [threading.Thread(target=worker, args=(k % 3,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(cache) == 1 and set(made) == {0, 1, 2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by scripts/gpu_check.sh)")
def test_cuda_graph_replays_under_threads_each_get_their_own_image():
    """One captured graph per shape, shared by all threads (cache_size=1 also forces recaptures
    across two shapes): each thread's image equals the eager decode of its own latent."""
    from infgen.runtime.triton_backend import triton_available
    if not triton_available(torch.device("cuda")):
        pytest.skip("triton unavailable")
    torch.manual_seed(0)
    dev = torch.device("cuda")
    jobs = [(torch.randn(2, 4, 8, 8, device=dev), *((64, 64) if i % 3 else (48, 80))) for i in range(24)]
    eager = InfGenEngine("tiny", backend="triton", device="cuda", dtype="fp32", cuda_graphs=False)
    refs = [eager.decode(z, h, w) for z, h, w in jobs]
    engine = InfGenEngine("tiny", backend="triton", device="cuda", dtype="fp32", cuda_graphs=True, cache_size=1)
    out = hammer(engine, jobs, threads=6)
    for i, ref in enumerate(refs):
        torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=1e-4, msg=f"job {i}")
