"""One memory-and-batching policy (#34 item 1): engine.plan(h, w, batch) is what engine.decode runs.

For a table of sizes, batches, budgets and options chosen so that every mode occurs (plain,
sub-batches, banded whole and in sub-batches, banded-host, refuse), the plan is compared with what
decode did, recorded at the executors: each plain run (backend.run) and each banded run
(anysize.run_banded: its batch, host_over, and the rows per band of its last conv, the output's).
Budgets are derived from the memory model (predict_peak), so the table follows it.
"""
import pytest
import torch

from infgen.ref import banded
from infgen.ref.config import preset
from infgen.ref.memory import predict_peak
from infgen.runtime import anysize
from infgen.runtime.anysize import MemoryBudgetError
from infgen.runtime.engine import InfGenEngine

CFG = preset("tiny")


def gathered(h: int, w: int, batch: int) -> int:
    """The (batch, 3, H, W) fp32 output sub-batches are gathered into."""
    return batch * 3 * h * w * 4


def plain(h, w, b):
    return predict_peak(CFG, h, w, b)


def banded_peak(h, w, b, rows=None):
    return predict_peak(CFG, h, w, b, mode="banded", band_rows=rows)


# (id, h, w, batch, engine options, budget (bytes, a string, or None: free RAM), expected mode, sub-batch)
CASES = [
    ("plain", 64, 64, 2, {}, "1TB", "plain", 2),
    ("sub-batches of 2", 64, 48, 3, {}, plain(64, 48, 2) + gathered(64, 48, 3), "sub-batches", 2),
    ("sub-batches of 1, banded off", 96, 96, 3, {"banded": False}, plain(96, 96, 1) + gathered(96, 96, 3),
     "sub-batches", 1),
    ("banded", 128, 128, 1, {"band_rows": 8}, (banded_peak(128, 128, 1, 8) + plain(128, 128, 1)) // 2, "banded", 1),
    ("banded, rows by bytes", 160, 160, 1, {}, banded_peak(160, 160, 1), "banded", 1),
    ("banded in sub-batches", 128, 128, 2, {"band_rows": 8}, banded_peak(128, 128, 1, 8) + gathered(128, 128, 2),
     "banded", 1),
    ("forced banded", 40, 56, 2, {"banded": True, "band_rows": 3}, None, "banded", 2),
    ("refuse", 96, 80, 2, {}, "1MB", "refuse", 0),
    ("refuse, banded off", 128, 128, 1, {"banded": False}, banded_peak(128, 128, 1), "refuse", 0),
]


def record_runs(monkeypatch, eng) -> list:
    """What decode runs: ("plain", batch, None, None) per backend.run, ("banded", batch, host_over,
    rows per band of the output conv) per run_banded."""
    runs, starts = [], []
    run = eng.backend.run

    def plain_run(z, Hp, Wp):
        runs.append(("plain", z.shape[0], None, None))
        return run(z, Hp, Wp)
    monkeypatch.setattr(eng.backend, "run", plain_run)
    band_starts = banded.band_starts
    monkeypatch.setattr(banded, "band_starts", lambda H, rows: (starts.append(rows), band_starts(H, rows))[1])
    run_banded = anysize.run_banded

    def banded_run(backend, z, Hp, Wp, band_rows, host_over=None, on_band=None):
        starts.clear()
        out = run_banded(backend, z, Hp, Wp, band_rows, host_over, on_band)
        runs.append(("banded", z.shape[0], host_over, starts[-1]))  # the last conv: conv_out, at the output size
        return out
    monkeypatch.setattr(anysize, "run_banded", banded_run)
    return runs


def executed(runs: list, batch: int) -> tuple:
    """(mode, sub_batch, band_rows, host_over) of the recorded runs, as a DecodePlan names them."""
    kinds = {r[0] for r in runs}
    assert len(kinds) == 1, runs  # one path per decode: never plain runs and banded runs mixed
    sizes = [r[1] for r in runs]
    k = sizes[0]
    assert sizes == [min(k, batch - i) for i in range(0, batch, k)], sizes  # runs of k, the last the rest
    kind, _, host_over, rows = runs[0]
    if kind == "plain":
        return ("plain" if k == batch else "sub-batches"), k, None, None
    return ("banded-host" if host_over is not None else "banded"), k, rows, host_over


@pytest.fixture(scope="module")
def reference():
    return InfGenEngine("tiny", banded=False)


@pytest.mark.parametrize("name,h,w,batch,options,budget,mode,sub", CASES, ids=[c[0] for c in CASES])
def test_plan_is_what_decode_runs(monkeypatch, reference, name, h, w, batch, options, budget, mode, sub):
    eng = InfGenEngine("tiny", max_memory=budget, **options)
    planned = eng.plan(h, w, batch)
    assert (planned.mode, planned.sub_batch) == (mode, sub), planned  # the table covers every mode
    z = torch.randn(batch, 4, 6, 7, generator=torch.Generator().manual_seed(batch))
    runs = record_runs(monkeypatch, eng)
    if mode == "refuse":
        with pytest.raises(MemoryBudgetError) as exc:
            eng.decode(z, h, w)
        assert str(exc.value) == planned.reason and runs == []  # refused before any work, with the plan's reason
        assert f"batch {batch} at {w}x{h} refused" in planned.reason
        return
    img = eng.decode(z, h, w)
    assert executed(runs, batch) == (planned.mode, planned.sub_batch, planned.band_rows, planned.host_over)
    assert img.shape == (batch, 3, h, w)
    assert (img - reference.decode(z, h, w)).abs().max().item() <= 1e-4  # every plan decodes the same image
    if budget is not None and not isinstance(budget, str):
        assert planned.peak_bytes <= budget


def test_banded_host_plan_is_what_decode_runs(monkeypatch):
    """On CUDA a decode whose banded peak is over the budget keeps its largest activations in host
    memory. The engine is told it is on CUDA (the plan streams to host) while its tensors stay on
    the CPU, so the run itself happens here: decode hands run_banded the plan's host_over."""
    budget = banded_peak(192, 192, 1, 8) - 1  # banded alone does not fit
    eng = InfGenEngine("tiny", max_memory=budget, band_rows=8)
    eng.device = torch.device("cuda")
    monkeypatch.setattr(eng, "check", lambda latent, h, w: (latent, h, w))  # no copy to a device this host lacks
    planned = eng.plan(192, 192, 1)
    assert planned.mode == "banded-host" and planned.host_over is not None and planned.peak_bytes <= budget
    runs = record_runs(monkeypatch, eng)
    z = torch.randn(1, 4, 6, 7, generator=torch.Generator().manual_seed(0))
    img = eng.decode(z, 192, 192)
    assert executed(runs, 1) == (planned.mode, planned.sub_batch, planned.band_rows, planned.host_over)
    ref = InfGenEngine("tiny", banded=False).decode(z, 192, 192)
    assert (img - ref).abs().max().item() <= 1e-4


def test_plan_refuses_a_bad_batch():
    eng = InfGenEngine("tiny")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=f"batch must be an int >= 1, got {bad!r}"):
            eng.plan(64, 64, bad)
