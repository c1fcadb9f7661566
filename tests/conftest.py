from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

# Two cores on CI: keep the tests from oversubscribing them. Under pytest-xdist (`-n auto`, the
# README's command) the cores are shared by the workers: one share each, for the worker and for
# the processes it starts (the CLIs, the docs' blocks: OpenMP reads OMP_NUM_THREADS at start-up;
# a child left at every core spins against the other worker, 2-3x slower on 2 cores).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, os.cpu_count() or 1) // WORKERS)
if "PYTEST_XDIST_WORKER" in os.environ:  # not in xdist's controller: its environment is the workers'
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


# The longest files first. `--dist loadfile` hands each worker whole files in collection order (with
# its reordering by test count turned off below), so the long files start at once and the short
# ones fill the gaps at the end; in collection order a 15 s file started last left the other worker
# idle for 10 s. Ordered by each file's seconds on one worker (measured 2026-12-07, 7 to 60 s); a file
# not listed (each under 7 s) runs after these, in collection order. Only the order changes: every
# file's tests stay together, in their order.
LONGEST_FIRST = ("test_docs.py", "test_kernels_attention_d512.py", "test_export_onnx.py", "test_kernels_report.py",
                 "test_trt_plan.py", "test_trt_plugin.py", "test_cache_files.py", "test_install.py", "test_profile.py",
                 "test_demo.py", "test_cli.py", "test_distributed.py", "test_gpu_lease.py", "test_memory.py",
                 "test_properties.py", "test_evaluate_task.py", "test_train.py", "test_walk.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist's default orders files by test count
        config.option.loadscopereorder = False
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        return  # pytest-xdist's controller collects and runs nothing: no torch there (1 s before the workers start)
    import torch
    # Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors. TRITON_INTERPRET is
    # read when @triton.jit decorates (and when triton.language loads its standard library), so it
    # must be set before anything imports triton: here, before collection imports the test modules.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def tiny_cfg():
    from infgen.ref.config import preset
    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    import torch

    from infgen.ref.model import InfGen
    torch.manual_seed(0)
    return InfGen(tiny_cfg).eval()


@pytest.fixture(scope="session", autouse=True)
def run_cache(tmp_path_factory):
    """One export cache for the whole run, shared by every xdist worker: $INFGEN_CACHE points at it
    for the tests and for every process they start (the CLIs, the docs' blocks), so nothing is read
    from or written to the user's ~/.cache/infgen, and an ONNX file one test exported is found by
    the next that asks for the same (weights, config, dtype, flavour)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-onnx-cache"
    root.mkdir(exist_ok=True)
    old = os.environ.get("INFGEN_CACHE")
    os.environ["INFGEN_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("INFGEN_CACHE", None)
    else:
        os.environ["INFGEN_CACHE"] = old


@pytest.fixture(scope="session")
def shared_onnx(tiny_model, run_cache):
    """shared_onnx(dtype, flavour) -> the tiny model's ONNX file in the run's export cache (run_cache):
    each (dtype, flavour) is exported once per run, under a file lock, by whichever test asks first
    (a real export through infgen.export.onnx.cached_export). Tests that damage or replace cache
    entries copy the entry into their own directory first."""
    from filelock import FileLock

    from infgen.export.onnx import cached_export

    def get(dtype="fp32", flavour="onnxruntime"):
        with FileLock(str(run_cache / f".{dtype}-{flavour}.lock")):
            return cached_export(tiny_model, dtype, flavour, cache_dir=run_cache)
    return get


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def one_error_line(capsys, rc) -> str:
    """A tool's user error as the tools' contract has it: exit status 2 and exactly one `error: ...`
    line on stderr, no traceback; returns that line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
