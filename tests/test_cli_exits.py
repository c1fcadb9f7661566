"""Every tool turns a user error into one `error:` line on stderr and exit status 2 (no traceback),
and checks its output paths before computing (docs/robustness.md, #18 item 3)."""
import subprocess
import sys

import numpy as np
import pytest

from infgen.export import onnx as export_onnx
from infgen.export import trt as export_trt
from infgen.runtime.cli import main as runtime_main
from infgen.train import trainer

from conftest import one_error_line

MISSING = "/nonexistent/infgen-checkpoint"


@pytest.mark.parametrize("argv", [["decode", "{z}", "--size", "64x64"], ["info"], ["demo"], ["profile"],
                                  ["encode", "{png}"]])
def test_runtime_commands_missing_checkpoint(tmp_path, capsys, argv):
    np.save(tmp_path / "z.npy", np.zeros((4, 8, 8), np.float32))
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    argv = [a.format(z=tmp_path / "z.npy", png=tmp_path / "x.png") for a in argv]
    line = one_error_line(capsys, runtime_main([*argv, "--checkpoint", MISSING]))
    assert MISSING in line


def test_profile_out_being_a_file_fails_before_profiling(tmp_path, capsys, monkeypatch):
    out = tmp_path / "taken"
    out.write_text("x")
    import infgen.runtime.cli.profile_measure as pm

    def never(*a, **k):
        raise AssertionError("profiled before checking --out-dir")
    monkeypatch.setattr(pm, "profile", never)
    line = one_error_line(capsys, runtime_main(["profile", "--preset", "tiny", "--size", "64x64", "--out-dir", str(out)]))
    assert str(out) in line and "is a file" in line


def test_decode_refused_by_the_memory_guard_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.zeros((4, 8, 8), np.float32))
    line = one_error_line(capsys, runtime_main(["decode", str(tmp_path / "z.npy"), "--size", "2048x2048",
                                                "--preset", "tiny", "--max-memory", "10MB",
                                                "--out", str(tmp_path / "o.png")]))
    assert "exceeds the memory budget 10.00 MB" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("extra,match", [(["--opset", "5"], "opset must be 22"),
                                         (["--out", "{tmp}/missing/dir/m.onnx"], "does not exist"),
                                         (["--out", "{tmp}"], "is a directory"),
                                         (["--out", "{tmp}/m.txt"], "must end in .onnx"),
                                         (["--checkpoint", MISSING, "--out", "{tmp}/m.onnx"], MISSING)])
def test_export_onnx_user_errors(tmp_path, capsys, monkeypatch, extra, match):
    def never(*a, **k):
        raise AssertionError("exported before checking the arguments")
    monkeypatch.setattr(export_onnx, "export_onnx", never)
    model = [] if "--checkpoint" in extra else ["--preset", "tiny"]
    argv = [*model, *[a.format(tmp=tmp_path) for a in extra]]
    assert match in one_error_line(capsys, export_onnx.main(argv))


def test_export_onnx_library_refuses_other_opsets(tmp_path):
    from infgen.runtime.engine import resolve_model
    with pytest.raises(ValueError, match="opset must be 22.*got 5"):
        export_onnx.export_onnx(resolve_model("tiny"), tmp_path / "m.onnx", opset=5)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("extra,match", [(["--engine-dir", "{file}"], "is a file"),
                                         (["--engine-dir", "{file}/sub"], "is a file"),
                                         (["--checkpoint", MISSING], MISSING),
                                         (["--onnx", "{tmp}/none.onnx"], "none.onnx"),
                                         (["--max-res", "999999"], "--max-res")])
def test_export_trt_user_errors(tmp_path, capsys, extra, match):
    f = tmp_path / "file"
    f.write_text("x")
    model = [] if "--checkpoint" in extra else ["--preset", "tiny"]
    argv = [*model, "--dry-run", "--engine-dir", str(tmp_path / "e"),
            *[a.format(file=f, tmp=tmp_path) for a in extra]]
    assert match in one_error_line(capsys, export_trt.main(argv))
    assert not (tmp_path / "e").exists() or extra[0] != "--engine-dir"


@pytest.mark.parametrize("extra,match", [(["--out-dir", "{file}"], "is a file"), (["--device", "gpu9"], "gpu9"),
                                         (["--config", "{tmp}/none.json"], "none.json")])
def test_train_user_errors(tmp_path, capsys, monkeypatch, extra, match):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setattr(trainer, "train", lambda a: pytest.fail("trained before checking the arguments"))
    argv = ["--preset", "tiny", "--out-dir", str(tmp_path / "run"), *[a.format(file=f, tmp=tmp_path) for a in extra]]
    try:
        rc = trainer.main(argv)
    except SystemExit as exc:  # a bad flag value (--device) is the parser's error: the same one line, status 2
        rc = exc.code
    assert match in one_error_line(capsys, rc)


@pytest.mark.parametrize("module,argv", [("infgen.export.onnx", ["--preset", "tiny", "--opset", "5"]),
                                         ("infgen.train", ["--out-dir", "/dev/null/x"])])
def test_as_a_process_no_traceback(module, argv):
    r = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line.startswith("error: ") for line in r.stderr.strip().splitlines()] == [True]


@pytest.mark.parametrize("argv,match", [
    (["demo", "--preset", "tiny", "--out-dir", "{file}"], "is a file"),
    (["client", "{z}", "--size", "64x64", "--url", "127.0.0.1:1", "--out", "{tmp}/missing/o.png"], "does not exist"),
    (["loadtest", "--preset", "tiny", "--out", "{tmp}"], "is a directory")])
def test_output_paths_checked_before_any_work(tmp_path, capsys, argv, match):
    f = tmp_path / "file"
    f.write_text("x")
    np.save(tmp_path / "z.npy", np.zeros((4, 8, 8), np.float32))
    argv = [a.format(file=f, tmp=tmp_path, z=tmp_path / "z.npy") for a in argv]
    assert match in one_error_line(capsys, runtime_main(argv))
