"""`python -m infgen.runtime profile` (runtime/cli/profiler.py, profile_measure.py, profile_report.py) on the CPU
with the tiny preset: outputs, the cost split, failing rows, JSON after every row, no optional packages."""
import argparse
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from infgen.ref.cost import decode_flops
from infgen.ref.model import token_grid
from infgen.runtime.cli import main
from infgen.runtime.cli import profile_measure as prof
from infgen.runtime.cli import profile_report as report_mod
from infgen.runtime.backend import Backend
from infgen.runtime.cli.options import size_type
from infgen.runtime.engine import InfGenEngine

SIZES = ["128x128", "192x128"]  # WIDTHxHEIGHT; tiny decodes in ~50-100 ms on one core


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: two threads on a shared two-core machine spend their time waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One CLI run: torch (with its stage chain) and tensorrt (not installable here)."""
    out = tmp_path_factory.mktemp("profile")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["profile", "--preset", "tiny", "--size", *SIZES, "--backend", "torch", "tensorrt",
                   "--baselines", "none", "--warmup", "3", "--iters", "15", "--out-dir", str(out), "--no-progress"])
    return rc, buf.getvalue(), out


class RaisingBackend(Backend):
    """A backend whose run raises the given exception (a broken or out-of-memory backend)."""

    name = "raising"

    def __init__(self, exc):
        self.exc = exc

    def run(self, z, Hp, Wp):
        raise self.exc


class BrokenStagesBackend(Backend):
    """run works (the torch backend's), stages raises: the breakdown fails, the row does not."""

    name = "broken-stages"

    def __init__(self, inner):
        self.inner = inner

    def run(self, z, Hp, Wp):
        return self.inner.run(z, Hp, Wp)

    def stages(self, Hp, Wp):
        raise RuntimeError("stage chain exploded")


def engine_with(backend_fn):
    def build(model, device, dtype):
        engine = InfGenEngine(model, backend="torch", device=device, dtype=dtype)
        engine.backend = backend_fn(engine.backend)
        return engine
    return build


def test_cli_writes_table_json_and_png(cli_run):
    rc, stdout, out = cli_run
    assert rc == 0
    assert "median ms" in stdout and "% floor" in stdout
    assert "tokens+cross_attn" in stdout and "to_uint8" in stdout
    report = json.loads((out / "profile.json").read_text())
    pytest.importorskip("jsonschema").validate(report, report_mod.SCHEMA)  # absent on the GPU image: skip, not a collection error
    assert report["device"]["type"] == "cpu"
    assert report["versions"]["torch"] == torch.__version__
    assert len(report["git_commit"]) == 40 or report["git_commit"] == "unknown"
    ok = [r for r in report["rows"] if r["target"] == "torch"]
    assert [(r["width"], r["height"]) for r in ok] == [(128, 128), (192, 128)]
    for r in ok:
        assert r["status"] == "ok", r["message"]
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["images_per_s"] == pytest.approx(1 / r["median_s"])
        assert r["peak_memory_bytes"] > 0
        assert r["tflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e12)
        assert r["floor_share"] == pytest.approx(r["floor_s"] / r["median_s"])
        assert [s["name"] for s in r["stages"]] == ["tokens+cross_attn", "mid_block", "up_blocks", "to_uint8"]
    # TensorRT cannot be installed here: its rows say so and the run went on.
    trt = [r for r in report["rows"] if r["target"] == "tensorrt"]
    assert len(trt) == 2 and all(r["status"] in ("unavailable", "error") and r["message"] for r in trt)
    with Image.open(out / "profile.png") as im:
        im.load()
        assert im.size[0] > 100 and im.size[1] > 100
        assert im.convert("L").getextrema()[0] < 128  # something was drawn on the white canvas


def test_stage_flops_add_up_to_the_cost_model(cli_run, tiny_cfg):
    report = json.loads((cli_run[2] / "profile.json").read_text())
    for r in (r for r in report["rows"] if r["stages"]):
        total = decode_flops(tiny_cfg, r["height"], r["width"])["total"]
        assert r["flops"] == pytest.approx(total, rel=1e-12)
        assert sum(s["flops"] for s in r["stages"]) == pytest.approx(total, rel=1e-12)
        assert r["stages"][-1]["flops"] == 0  # to_uint8


def test_stage_chain_does_the_work_of_end_to_end(cli_run, tiny_model):
    """Each iteration runs the end-to-end path, then the stage chain: the chain computes the same
    image (so their time ratio compares like with like), and each row reports the ratio (a
    measurement: its value is not asserted, timings on a shared machine vary)."""
    report = json.loads((cli_run[2] / "profile.json").read_text())
    rows = [r for r in report["rows"] if r["stages"]]
    assert [(r["width"], r["height"]) for r in rows] == [(128, 128), (192, 128)]
    assert all(r["stage_sum_over_end_to_end"] > 0 for r in rows)
    engine = InfGenEngine(tiny_model, backend="torch", device="cpu", dtype="fp32")
    torch.manual_seed(0)
    z = torch.randn(1, 4, 5, 7)
    h, w = 61, 43
    x = engine.check(z, h, w)[0]
    with torch.no_grad():
        for _, fn in prof.stage_chain(engine, *token_grid(h, w, engine.config), h, w):
            x = fn(x)
        want = engine.to_uint8(engine.decode(z, h, w))
    assert np.array_equal(np.asarray(x), np.asarray(want))


def test_failing_rows_do_not_stop_the_run(tiny_model):
    fp32 = torch.float32
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    def no_build(model, device, dtype):
        raise RuntimeError("engine file is corrupt")

    targets = [
        prof.Target("broken", "torch", fp32, build=engine_with(lambda b: RaisingBackend(ValueError("boom")))),
        prof.Target("oom", "torch", fp32, build=engine_with(lambda b: RaisingBackend(oom))),
        prof.Target("no-build", "torch", fp32, build=no_build),
        prof.Target("bad-stages", "torch", fp32, build=engine_with(BrokenStagesBackend)),
        prof.Target("torch", "torch", fp32),
    ]
    sizes = [(64, 64), (64, 96)]
    rows = prof.profile(tiny_model, "cpu", sizes, targets, warmup=0, iters=2, progress=False)
    by = {(r["target"], r["width"]): r for r in rows}
    assert len(rows) == len(targets) * len(sizes)
    for w in (64, 96):
        assert by["broken", w]["status"] == "error" and "boom" in by["broken", w]["message"]
        assert by["oom", w]["status"] == "OOM" and "out of memory" in by["oom", w]["message"]
        assert by["no-build", w]["status"] == "error" and "corrupt" in by["no-build", w]["message"]
        bad = by["bad-stages", w]
        assert bad["status"] == "ok" and bad["median_s"] > 0 and bad["stages"] is None
        assert "stage chain exploded" in bad["stages_error"]
        assert by["torch", w]["status"] == "ok" and by["torch", w]["stages"]
    report = report_mod.make_report(rows, torch.device("cpu"), "tiny", tiny_model.config, {}, {})
    pytest.importorskip("jsonschema").validate(report, report_mod.SCHEMA)  # absent on the GPU image: skip, not a collection error
    table = report_mod.format_table(report)
    assert "OOM" in table and "boom" in table and "stage chain exploded" in table


def test_sizes_past_the_limits_are_skipped(tiny_model):
    t = [prof.Target("torch", "torch", torch.float32)]
    rows = prof.profile(tiny_model, "cpu", [(64, 64), (2160, 3840), (512, 512)], t, warmup=0, iters=1,
                        max_megapixels=0.1, progress=False)
    assert [r["status"] for r in rows] == ["ok", "skipped", "skipped"]
    assert "max_size 2048" in rows[1]["message"] and "--max-megapixels" in rows[2]["message"]


def test_targets_and_sizes_parse():
    cpu = torch.device("cpu")
    targets, aliases = prof.make_targets(["torch", "onnxruntime"], ["torch-fp32", "torch-bf16"], torch.float32, cpu)
    assert [(t.name, t.dtype) for t in targets] == [("torch", torch.float32), ("onnxruntime", torch.float32),
                                                    ("torch-bf16", torch.bfloat16)]
    assert aliases == {"torch-fp32": "torch"}
    assert size_type("1920x1080") == (1080, 1920)
    with pytest.raises(argparse.ArgumentTypeError, match="1920-1080"):
        size_type("1920-1080")
    with pytest.raises(ValueError, match="cudnn"):
        prof.make_targets(["cudnn"], [], torch.float32, cpu)
    with pytest.raises(ValueError, match="torch-int8"):
        prof.make_targets([], ["torch-int8"], torch.float32, cpu)
    with pytest.raises(ValueError, match="iters"):
        prof.profile("tiny", "cpu", [(64, 64)], targets, iters=0)


def test_json_is_written_after_every_row(tiny_model, tmp_path):
    """on_row sees the rows so far after each one: the tool writes profile.json there."""
    seen = []
    t = [prof.Target("torch", "torch", torch.float32), prof.Target("torch-bf16", "torch", torch.bfloat16)]
    prof.profile(tiny_model, "cpu", [(64, 64), (64, 96)], t, warmup=0, iters=1, progress=False,
                 on_row=lambda rows: seen.append([(r["target"], r["width"]) for r in rows]))
    assert seen == [[("torch", 64)], [("torch", 64), ("torch", 96)],
                    [("torch", 64), ("torch", 96), ("torch-bf16", 64)],
                    [("torch", 64), ("torch", 96), ("torch-bf16", 64), ("torch-bf16", 96)]]


def test_runs_without_tqdm_and_matplotlib(tmp_path, capsys, monkeypatch):
    """The GPU image has neither: the profile still runs, writes profile.json and says why no PNG."""
    import builtins
    real_import = builtins.__import__

    def no_optional(name, *args, **kw):
        if name.split(".")[0] in ("tqdm", "matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_optional)
    rc = main(["profile", "--preset", "tiny", "--size", "96x64", "--backend", "torch", "--baselines", "none",
               "--warmup", "0", "--iters", "1", "--out-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "matplotlib is not installed" in out and not (tmp_path / "profile.png").exists()
    rows = json.loads((tmp_path / "profile.json").read_text())["rows"]
    assert [(r["height"], r["width"], r["status"]) for r in rows] == [(64, 96, "ok")]  # --size 96x64: 64 high
