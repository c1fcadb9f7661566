"""Progress and quiet (#31 item 5): the engine's progress callback, the tools' bars (stderr, only on
a terminal and past a delay), the load test's duration line and quiet stop, the profiler's wrapped
error text and its plot of CPU data against the H100 floor."""
import io

import pytest
import torch

from infgen.ref import banded
from infgen.ref.memory import band_count, predict_peak
from infgen.runtime.cli import loadtest, profile_report, progress
from infgen.runtime.engine import InfGenEngine


@pytest.fixture(scope="module")
def latent():
    return torch.randn(2, 4, 7, 9, generator=torch.Generator().manual_seed(0))  # (B, C, h_l, w_l), odd grid


# ----------------------------------------------------------------------------- engine callback
@pytest.mark.parametrize("size,band_rows", [((72, 104), None), ((40, 97), 3)])
def test_banded_progress_once_per_conv_band_with_the_total(monkeypatch, latent, size, band_rows):
    bands = []
    write_rows = banded.write_rows

    def spy(out, r0, band):  # the decode's writes; the memory model's meta-device walk writes too, not counted
        if out.device.type != "meta":
            bands.append(r0)
        return write_rows(out, r0, band)
    monkeypatch.setattr(banded, "write_rows", spy)
    eng = InfGenEngine("tiny", banded=True, band_rows=band_rows)
    calls = []
    img = eng.decode(latent, *size, progress=lambda done, total: calls.append((done, total)))
    assert img.shape == (2, 3, *size)
    total = band_count(eng.config, *size, 2, eng.dtype, band_rows, latent_hw=(7, 9))
    assert len(bands) == total > 40  # every conv band written, as many as the model predicts
    assert calls == [(i + 1, total) for i in range(total)]
    torch.testing.assert_close(img, eng.decode(latent, *size))  # the callback changes nothing


def test_plain_progress_once_per_sub_batch_in_samples(latent):
    eng = InfGenEngine("tiny", banded=False)
    calls = []
    eng.decode(latent, 40, 56, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 2)]  # the whole batch in one run
    one = predict_peak(eng.config, 40, 56, 1) + 3 * 3 * 40 * 56 * 4  # one latent and the gathered output
    split = InfGenEngine("tiny", banded=False, max_memory=one)
    planned = split.plan(40, 56, 3)
    assert (planned.mode, planned.sub_batch) == ("sub-batches", 1)
    calls.clear()
    split.decode(torch.cat([latent, latent[:1]]), 40, 56, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# ----------------------------------------------------------------------------- bars
class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_only_on_a_terminal_and_past_the_delay():
    if progress.tqdm_class() is None:
        pytest.skip("tqdm is not installed (the bars are optional)")
    pipe = io.StringIO()
    with progress.Bar("decode", file=pipe) as bar:  # not a terminal: no bar
        bar(1, 4)
        bar(4, 4)
    assert not bar.enabled and pipe.getvalue() == ""
    tty = Tty()
    with progress.Bar("decode", file=tty) as bar:  # a terminal, a job shorter than the delay: nothing
        bar(4, 4)
    assert bar.enabled and tty.getvalue() == ""
    tty = Tty()
    with progress.Bar("decode", "band", file=tty, delay=0) as bar:
        bar(2, 4)
        bar(4, 4)
    assert "decode:" in tty.getvalue() and "/4 " in tty.getvalue()  # drawn (then cleared: leave=False)
    tty = Tty()
    with progress.Bar("decode", file=tty, enabled=False, delay=0) as bar:  # --no-progress
        bar(4, 4)
    assert tty.getvalue() == ""


def test_no_bar_without_tqdm(monkeypatch):
    monkeypatch.setattr(progress, "tqdm_class", lambda: None)
    tty = Tty()
    with progress.Bar("decode", total=4, file=tty, delay=0) as bar:
        bar(4, 4)
        bar.update(1)
        assert bar.wait(lambda: 7) == 7
        bar.write("a line")
    assert not bar.enabled and tty.getvalue() == "a line\n"


def test_bar_wait_returns_and_raises_in_the_callers_thread():
    if progress.tqdm_class() is None:
        pytest.skip("tqdm is not installed (the bars are optional)")
    tty = Tty()
    with progress.Bar("request", total=1, file=tty, delay=0) as bar:
        assert bar.wait(lambda: 3, interval=0.01) == 3
        with pytest.raises(ValueError, match="bad size"):
            bar.wait(lambda: (_ for _ in ()).throw(ValueError("bad size")), interval=0.01)


def test_decode_cli_draws_no_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    import numpy as np

    from infgen.runtime.cli.decode import main
    z = tmp_path / "z.npy"
    np.save(z, np.random.default_rng(0).standard_normal((4, 8, 8)).astype(np.float32))
    for extra in ([], ["--no-progress"]):
        assert main([str(z), "--size", "48x40", "--preset", "tiny", "--banded", "on",
                     "-o", str(tmp_path / "x.png"), *extra]) == 0
        out, err = capsys.readouterr()
        assert "wrote" in out and "|" not in err and "band" not in err


# ----------------------------------------------------------------------------- load test
def test_loadtest_says_how_long_it_will_run():
    line = loadtest.duration_line([(256, 256), (512, 512)], [1, 2, 4, 8], 30, 5)
    assert "2 size(s) x 4 user count(s) = 8 run(s) of 30 s" in line
    assert "240 s (4.0 min) of load" in line and "6 direct decodes before each run" in line


def test_loadtest_stops_its_server_without_the_signal_line(capsys):
    class Server:  # PyTriton echoes tritonserver's stdout with print() while it stops
        def stop(self):
            print("Signal (2) received.")
            print("W1206 something else tritonserver said")
    loadtest.stop_quietly(Server())
    out, err = capsys.readouterr()
    assert out == "" and "Signal" not in err and "something else" in err


# ----------------------------------------------------------------------------- profiler
MESSAGE = ("RuntimeError: TensorRT engine build failed for the profile min=(1, 4, 64, 64) opt=(1, 4, 64, 64) "
           "max=(1, 4, 128, 128): the builder ran out of device memory while choosing tactics for "
           "/decoder/up_blocks.3/resnets.2/conv2/Conv_output_0 (needs a GPU with at least 24 GB)")


@pytest.mark.parametrize("width,max_lines", [(40, 3), (60, 10), (100, 3), (17, 20)])
def test_wrapped_error_text_cuts_no_word(width, max_lines):
    lines = profile_report.wrap_message(MESSAGE, width, max_lines)
    words = MESSAGE.split()
    assert 1 < len(lines) <= max_lines
    assert all(len(ln) <= width for ln in lines)
    got = " ".join(lines)
    if got.endswith(" ..."):  # shortened at a word boundary
        got = got[:-4]
    assert "".join(words).startswith("".join(got.split()))  # nothing lost or reordered
    broken = [w for w in got.split() if w not in words]
    assert all(any(w in long for long in words if len(long) > width) for w in broken)  # only over-long words


def report(device: str, median_s: float, failed: bool = False) -> dict:
    rows = []
    for mp, floor_s in ((0.0164, 3.2e-6), (0.0655, 1.1e-5)):
        rows.append({"target": "torch", "status": "ok", "megapixels": mp, "median_s": median_s * mp / 0.0164,
                     "floor_s": floor_s, "width": 128, "height": 128, "message": None})
    if failed:
        rows.append({"target": "tensorrt", "status": "error", "megapixels": 0.0164, "median_s": None,
                     "floor_s": 3.2e-6, "width": 128, "height": 128, "message": MESSAGE})
    return {"rows": rows, "floor": {"peak_flops": 790e12}, "device": {"type": device, "name": device},
            "model": {"source": "preset tiny"}}


def texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def test_plot_leaves_out_a_floor_far_below_the_data_and_says_so():
    pytest.importorskip("matplotlib")
    fig = profile_report.figure(report("cpu", 0.25, failed=True))
    (ax,) = fig.axes  # one axis: no second scale
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["torch"]
    lo, hi = ax.get_ylim()
    assert lo > 1e-2  # the CPU data keep the axis, not squashed against a 1e-6 floor
    note = texts(fig)
    assert "not drawn" in note and "790 TFLOP/s" in note
    assert "tensorrt 128x128 error:" in note
    assert all(len(ln) <= 100 for ln in note.splitlines())


def test_plot_draws_a_floor_near_the_data_on_the_same_axis():
    pytest.importorskip("matplotlib")
    fig = profile_report.figure(report("cuda", 2e-5))
    (ax,) = fig.axes
    assert [ln.get_label() for ln in ax.get_lines()] == ["torch", "cost-model floor (790 TFLOP/s)"]
    assert fig.texts == []
