"""The memory plan decode runs (docs/robustness.md, memory pressure): batch split -> banded -> refuse,
before any work; an OOM that slips through releases the caches and leaves the engine usable.
tests/test_planner.py checks that engine.plan() is what decode runs."""
import pytest
import torch

from infgen.ref.config import preset
from infgen.ref.memory import predict_peak
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.engine import InfGenEngine

CFG = preset("tiny")


def spy_runs(engine) -> list:
    """Record the batch of every backend.run call."""
    seen, run = [], engine.backend.run

    def spy(z, Hp, Wp):
        seen.append(z.shape[0])
        return run(z, Hp, Wp)
    engine.backend.run = spy
    return seen


def test_impossible_request_fails_fast_then_a_normal_decode_succeeds():
    eng = InfGenEngine("tiny", max_memory="50MB")
    seen = spy_runs(eng)
    z = torch.randn(64, 4, 8, 8)
    with pytest.raises(MemoryBudgetError, match=r"predicted peak .* exceeds the memory budget 50\.00 MB") as exc:
        eng.decode(z, 2048, 2048)
    assert isinstance(exc.value, ValueError) and "batch 64 at 2048x2048" in str(exc.value)
    assert seen == []
    img = eng.decode(torch.randn(1, 4, 8, 8), 64, 64)
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_batch_is_split_into_sub_batches_that_fit_and_matches_the_whole():
    z = torch.randn(4, 4, 8, 8)
    ref = InfGenEngine("tiny").decode(z, 96, 80)
    gathered = 4 * 3 * 96 * 80 * 4
    budget = predict_peak(CFG, 96, 80, 2) + gathered  # two at a time fit, three do not
    eng = InfGenEngine("tiny", max_memory=budget)
    seen = spy_runs(eng)
    out = eng.decode(z, 96, 80)
    assert seen == [2, 2]
    assert (out - ref).abs().max().item() <= 1e-5


def test_banded_only_when_no_plain_sub_batch_fits():
    z = torch.randn(2, 4, 8, 8)
    ref = InfGenEngine("tiny").decode(z, 128, 128)
    plain1 = predict_peak(CFG, 128, 128, 1)
    banded1 = predict_peak(CFG, 128, 128, 1, mode="banded", band_rows=8)
    assert banded1 < plain1
    eng = InfGenEngine("tiny", max_memory=banded1 + 2 * 3 * 128 * 128 * 4, band_rows=8)
    seen = spy_runs(eng)
    out = eng.decode(z, 128, 128)
    assert seen == []  # no plain run: banded, one latent at a time
    assert (out - ref).abs().max().item() <= 1e-4  # banded sums in another order


def test_banded_false_refuses_instead_of_banding():
    eng = InfGenEngine("tiny", banded=False, max_memory="1MB")
    with pytest.raises(MemoryBudgetError, match="batch 1 at 80x96 refused"):
        eng.decode(torch.randn(1, 4, 8, 8), 96, 80)


@pytest.mark.parametrize("oom", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), MemoryError(),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: "
                                              "can't allocate memory: you tried to allocate 8589934592 bytes")])
def test_oom_that_slips_through_releases_caches_and_engine_stays_usable(oom):
    eng = InfGenEngine("tiny")
    z = torch.randn(1, 4, 8, 8)
    ref = eng.decode(z, 64, 64)
    assert len(eng.backend.tokens) == 1
    run, calls = eng.backend.run, []

    def flaky(z, Hp, Wp):
        calls.append(1)
        if len(calls) == 1:
            raise oom
        return run(z, Hp, Wp)
    eng.backend.run = flaky
    with pytest.raises(MemoryBudgetError, match="ran out of memory .*caches released"):
        eng.decode(z, 64, 64)
    assert len(eng.backend.tokens) == 0
    assert (eng.decode(z, 64, 64) - ref).abs().max().item() == 0


def test_other_runtime_errors_pass_through_unchanged():
    eng = InfGenEngine("tiny")

    def broken(z, Hp, Wp):
        raise RuntimeError("shape mismatch")
    eng.backend.run = broken
    with pytest.raises(RuntimeError, match="shape mismatch"):
        eng.decode(torch.randn(1, 4, 8, 8), 64, 64)


class FakeCudaMemory:
    """torch.cuda's memory queries for an engine that believes it is on CUDA: `driver_free` before
    and after empty_cache(), and the caching allocator's reserved/allocated bytes."""

    def __init__(self, monkeypatch, driver_free, after_empty, reserved=0, allocated=0):
        self.driver_free, self.after_empty, self.reserved, self.allocated = driver_free, after_empty, reserved, allocated
        self.emptied = 0
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.driver_free, 80 << 30))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)

    def empty_cache(self):
        self.emptied += 1
        self.driver_free, self.reserved = self.after_empty, self.allocated


def cuda_engine_with_caches():
    """A CPU engine whose per-size caches hold entries, then told it runs on CUDA (the guard only plans)."""
    from infgen.runtime.cache import SizeCache
    eng = InfGenEngine("tiny")
    eng.decode(torch.randn(1, 4, 8, 8), 64, 64)
    eng.device = torch.device("cuda")
    caches = [c for b in eng.backends for c in vars(b).values() if isinstance(c, SizeCache)]
    assert sum(len(c) for c in caches) > 0
    return eng, caches


def test_free_memory_counts_the_allocators_reusable_blocks(monkeypatch):
    from infgen.runtime.anysize import free_memory
    FakeCudaMemory(monkeypatch, driver_free=1000, after_empty=1000, reserved=700, allocated=200)
    assert free_memory(torch.device("cuda")) == 1000 + 500


def test_second_large_decode_plans_plain_over_cached_blocks(monkeypatch):
    """After a first decode PyTorch keeps its freed activations cached: they count as free."""
    eng, caches = cuda_engine_with_caches()
    peak = predict_peak(CFG, 256, 256, 1)
    mem = FakeCudaMemory(monkeypatch, driver_free=peak // 4, after_empty=peak // 4, reserved=2 * peak, allocated=0)
    p = eng.plan(256, 256)
    assert (p.mode, p.sub_batch) == ("plain", 1)
    assert mem.emptied == 0 and sum(len(c) for c in caches) > 0  # nothing released: it fit as it was


def test_caches_released_before_banding_or_refusing(monkeypatch):
    """Memory held by per-size caches (CUDA graph pools) is given back before a decode is banded or refused."""
    eng, caches = cuda_engine_with_caches()
    peak = predict_peak(CFG, 256, 256, 1)
    mem = FakeCudaMemory(monkeypatch, driver_free=1 << 20, after_empty=2 * peak, reserved=0, allocated=0)
    assert eng.plan(256, 256).mode == "plain"
    assert mem.emptied == 1 and sum(len(c) for c in caches) == 0
    # nothing left to release: the plan stands as the budget allows (here refused), caches untouched
    mem.driver_free = mem.after_empty = 1 << 10
    assert eng.plan(256, 256).mode == "refuse"
    assert mem.emptied == 1


def test_max_memory_is_a_fixed_budget_nothing_released(monkeypatch):
    eng, caches = cuda_engine_with_caches()
    eng.max_memory = 1 << 20
    mem = FakeCudaMemory(monkeypatch, driver_free=80 << 30, after_empty=80 << 30)
    assert eng.plan(2048, 2048).mode == "refuse"
    assert mem.emptied == 0 and sum(len(c) for c in caches) > 0
