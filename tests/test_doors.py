"""Every file door decodes what it promises or refuses it, every numeric option is bounded and
finite, and the trainer follows the tools' one-line `error:` contract (#33; docs/robustness.md).

Images of every mode, bit depth and orientation (runtime/io.py load_image); one dtype rule for
latents at the API, `decode` and `client` (infgen.ref.model.check_floating); memory sizes that
overflow a float; malformed plan.json files; the trainer's flags, LPIPS and resume files."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from infgen.ref.checks import check_number
from infgen.runtime.cli import main as runtime_main
from infgen.runtime.io import load_image, rgb_pixels
from infgen.train import trainer

from conftest import one_error_line


# ----------------------------------------------------------------------------- images
def gradient(h=40, w=56) -> np.ndarray:
    """(h, w, 3) uint8 with distinct rows, columns and channels: a transposed or clipped load differs."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


def loaded_uint8(path) -> np.ndarray:
    x = load_image(path)  # (1, 3, H, W) in [-1, 1]
    return ((x[0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = loaded_uint8(tmp_path / "g16.png")
    want = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert got.shape == (48, 64, 3) and np.abs(got[..., 0].astype(int) - want).max() <= 1
    assert (got[..., 0] == got[..., 2]).all() and got.mean() < 200  # a clip at 255 made it nearly all white


def test_mode_i_outside_16_bits_and_float_images_are_refused():
    with pytest.raises(ValueError, match=r"mode I values 0..70000 are outside the 16-bit range"):
        rgb_pixels(Image.fromarray(np.array([[0, 70000]], np.int32), "I"), "x.png")
    with pytest.raises(ValueError, match=r"image mode 'F' is not supported"):
        rgb_pixels(Image.fromarray(np.zeros((2, 2), np.float32), "F"), "x.png")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1"])
def test_every_png_mode_loads_as_its_rgb_colours(tmp_path, mode):
    im = Image.fromarray(gradient()).convert(mode)
    im.save(tmp_path / "x.png")
    got = loaded_uint8(tmp_path / "x.png")
    want = np.asarray(im.convert("RGB"))
    assert got.shape == (40, 56, 3) and np.array_equal(got, want)


def test_palette_with_transparency_keeps_its_colours(tmp_path):
    im = Image.fromarray(gradient()).convert("P")
    im.info["transparency"] = 0
    im.save(tmp_path / "t.png", transparency=0)
    got = loaded_uint8(tmp_path / "t.png")
    assert np.array_equal(got, np.asarray(Image.open(tmp_path / "t.png").convert("RGBA").convert("RGB")))


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    Image.fromarray(gradient()).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    got = loaded_uint8(tmp_path / "c.jpg").astype(int)
    assert got.shape == (40, 56, 3) and np.abs(got - gradient().astype(int)).mean() < 8


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    stored = Image.fromarray(gradient(40, 56))  # stored landscape; orientation 6: display rotated 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "r.jpg", quality=100, exif=exif)
    got = loaded_uint8(tmp_path / "r.jpg")
    want = np.asarray(stored.transpose(Image.Transpose.ROTATE_270))
    assert got.shape == (56, 40, 3) and np.abs(got.astype(int) - want.astype(int)).mean() < 4


# ----------------------------------------------------------------------------- latents: one dtype rule
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_latent_files_are_refused_by_decode_and_client_alike(tmp_path, capsys, dtype):
    np.save(tmp_path / "z.npy", np.ones((1, 4, 8, 8), dtype))
    lines = []
    for argv in (["decode", str(tmp_path / "z.npy"), "--preset", "tiny", "--size", "64", "--out",
                  str(tmp_path / "o.png")],
                 ["client", str(tmp_path / "z.npy"), "--size", "64", "--url", "127.0.0.1:1", "--out",
                  str(tmp_path / "o.png")]):
        lines.append(one_error_line(capsys, runtime_main(argv)))
    for line in lines:
        assert f"must be a floating tensor, got dtype torch.{np.dtype(dtype).name if dtype is not np.bool_ else 'bool'}" \
            in line, lines
    assert not (tmp_path / "o.png").exists()


def test_python_client_uses_the_same_rule():
    from infgen.ref.model import check_floating
    for bad in (np.ones((1, 4, 8, 8), np.int32), torch.ones(1, 4, 8, 8, dtype=torch.int64), [[1.0]]):
        with pytest.raises(TypeError, match="must be a"):
            check_floating(bad)
    z = np.zeros((1, 4, 8, 8), np.float16)
    assert check_floating(z) is z


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("value,kind,lo,hi,match", [
    ("nan", float, None, None, "must be a finite number, got 'nan'"),
    ("1e999", float, None, None, "must be a finite number, got '1e999'"),
    (float("inf"), float, 0, None, "must be a finite number"),
    ("1.5", int, 1, None, "must be an integer, got '1.5'"),
    (4.0, int, 1, None, "must be an integer, got 4.0"),
    ("0", int, 1, None, "must be an integer >= 1, got '0'"),
    ("0", float, 0, None, None),
    (True, int, 0, None, "must be a number, got bool"),
    ("2", float, 0, 1, r"must be a finite number in \[0, 1\], got '2'"),
])
def test_one_numeric_rule(value, kind, lo, hi, match):
    if match is None:
        assert check_number("x", value, kind, lo, hi) == 0.0
        with pytest.raises(ValueError, match=r"x must be a finite number > 0, got '0'"):
            check_number("x", value, kind, lo, hi, lo_open=True)
        return
    with pytest.raises((ValueError, TypeError), match=match):
        check_number("x", value, kind, lo, hi)


@pytest.mark.parametrize("value", ["1e999", "9" * 400, 10 ** 400])
def test_max_memory_that_overflows_a_float_is_a_value_error_naming_it(value, tmp_path, capsys):
    from infgen.runtime import InfGenEngine
    with pytest.raises(ValueError, match=r"memory size must be .*at most|memory size must be 1\.\."):
        InfGenEngine("tiny", max_memory=value)
    np.save(tmp_path / "z.npy", np.zeros((1, 4, 8, 8), np.float32))
    line = one_error_line(capsys, runtime_main(["decode", str(tmp_path / "z.npy"), "--preset", "tiny", "--size", "64",
                                                "--max-memory", str(value), "--out", str(tmp_path / "o.png")]))
    assert "memory size" in line and str(value)[:20] in line


# ----------------------------------------------------------------------------- plan.json
def good_plan() -> dict:
    from infgen.export.spec import default_plan
    from infgen.ref.config import preset
    return json.loads(default_plan(preset("tiny")).to_json())


@pytest.mark.parametrize("change,match", [
    (lambda d: [1, 2], "plan must be a JSON object, got list"),
    (lambda d: "plan", "plan must be a JSON object, got str"),
    (lambda d: {**d, "batch": "8"}, r"plan field batch must be an integer >= 1, got '8'"),
    (lambda d: {**d, "upscale": True}, "plan field upscale must be an integer"),
    (lambda d: {**d, "profiles": {"a": 1}}, "plan field profiles must be a list"),
    (lambda d: {**d, "profiles": [[1, 2]]}, r"plan field profiles\[0\] must be an object"),
    (lambda d: {**d, "profiles": [{**d["profiles"][0], "shapes": [1]}]}, r"profiles\[0\] must be an object"),
    (lambda d: {**d, "profiles": [{**d["profiles"][0], "lo": 1.5}]}, r"plan field profiles\[0\].lo must be an integer"),
    (lambda d: {**d, "latent_range": [1, 2]}, "plan field latent_range must be a list of 3 integers"),
    (lambda d: {**d, "extra": 1}, r"unknown \['extra'\]"),
])
def test_malformed_plan_json_is_a_value_error_naming_the_field(tmp_path, change, match):
    from infgen.export.plan import Plan
    from infgen.export.trt import plan_for
    from infgen.ref.config import preset
    text = json.dumps(change(good_plan()))
    with pytest.raises(ValueError, match=match):
        Plan.from_json(text)
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(ValueError, match=match):  # asked for: an error
        plan_for(preset("tiny"), tmp_path, tmp_path / "plan.json")
    plan, where = plan_for(preset("tiny"), tmp_path)  # found in the engine directory, not asked for: the default
    assert where.startswith("default (") and "unreadable: ValueError" in where


def test_a_written_plan_reads_back_equal():
    from infgen.export.plan import Plan
    from infgen.export.spec import default_plan
    from infgen.ref.config import preset
    plan = default_plan(preset("tiny"))
    assert Plan.from_json(plan.to_json()) == plan


# ----------------------------------------------------------------------------- the trainer
FAST = ["--preset", "tiny", "--stage1-steps", "1", "--stage2-steps", "0", "--warm-start-steps", "0",
        "--num-generated", "1", "--batch-size", "1", "--quiet"]


@pytest.mark.parametrize("extra,match", [
    (["--save-every", "0"], "--save-every: must be an integer >= 1, got '0'"),
    (["--log-every", "-1"], "--log-every: must be an integer >= 1, got '-1'"),
    (["--snapshot-every", "-3"], "--snapshot-every: must be an integer >= 0"),
    (["--threads", "-1"], "--threads: must be an integer in [0, 4096], got '-1'"),
    (["--lr", "nan"], "--lr: must be a finite number, got 'nan'"),
    (["--lr", "0"], "--lr: must be a finite number > 0, got '0'"),
    (["--kl-weight", "inf"], "--kl-weight: must be a finite number"),
    (["--max-scale", "1e999"], "--max-scale: must be a finite number"),
    (["--gan-start", "2"], "--gan-start: must be a finite number in [0, 1], got '2'"),
    (["--batch-size", "1.5"], "--batch-size: must be an integer, got '1.5'"),
    (["--grid-min", "20", "--grid-max", "16"], "--grid-min must be <= --grid-max (16), got 20"),
    (["--scales", "1", "9"], "--scales must lie in [1, --max-scale] = [1, 4.0], got (1.0, 9.0)"),
])
def test_trainer_flag_errors_are_one_line(tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.setattr(trainer, "train", lambda a: pytest.fail("trained before checking the arguments"))
    with pytest.raises(SystemExit) as info:
        trainer.main(["--out-dir", str(tmp_path / "run"), *extra])
    line = one_error_line(capsys, info.value.code)
    assert match in line, line


class OneInput(torch.nn.Module):
    def forward(self, x):
        return x.mean()


def test_trainer_refuses_corrupt_or_mismatched_lpips_files(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a torchscript archive")
    line = one_error_line(capsys, trainer.main(["--out-dir", str(tmp_path / "a"), *FAST, "--lpips",
                                                str(tmp_path / "junk.pt")]))
    assert "junk.pt" in line and "is not a TorchScript module" in line
    torch.jit.save(torch.jit.script(OneInput()), str(tmp_path / "one.pt"))
    line = one_error_line(capsys, trainer.main(["--out-dir", str(tmp_path / "b"), *FAST, "--lpips",
                                                str(tmp_path / "one.pt")]))
    assert "one.pt" in line and "does not compute f(x, y)" in line


@pytest.mark.parametrize("state,match", [
    (b"garbage", "is not a readable train state"),
    ({"config": {"scaling_factor": 1.0}, "model": {}, "disc": {}, "step": 0, "stage": 1, "opt": {}, "opt_d": {}},
     "does not match this model and run"),
    ({"config": {"scaling_factor": float("nan")}, "step": 0, "stage": 1}, "config.scaling_factor must be a finite"),
    ({"model": {}}, "does not match this model and run: no entry 'config'"),
    ({"config": {"scaling_factor": 1.0}, "step": -4, "stage": 1}, "step must be an integer >= 0"),
])
def test_trainer_refuses_corrupt_or_mismatched_resume_state(tmp_path, capsys, state, match):
    out = tmp_path / "run"
    out.mkdir()
    if isinstance(state, bytes):
        (out / "train_state.pt").write_bytes(state)
    else:
        torch.save(state, out / "train_state.pt")
    line = one_error_line(capsys, trainer.main(["--out-dir", str(out), *FAST, "--resume"]))
    assert "--resume" in line and match in line, line
    assert math.isfinite(1.0)


# ----------------------------------------------------------------------------- every CLI: a table of bad arguments
@pytest.mark.parametrize("entry,argv,match", [
    ("runtime", ["decode", "{z}", "--size", "96by64"], "'96by64'"),
    ("runtime", ["decode", "{z}", "--size", "64", "--backend", "cudnn"], "invalid choice: 'cudnn'"),
    ("runtime", ["decode", "{z}", "--size", "64", "--preset", "tiny", "--max-memory", "1e999"], "memory size"),
    ("runtime", ["serve", "--http-port", "70000"], "must be a port 1..65535, got '70000'"),
    ("runtime", ["serve", "--max-batch", "0"], "must be an integer >= 1, got '0'"),
    ("runtime", ["serve", "--model-name", "a b"], "model name must be"),
    ("runtime", ["client", "{z}", "--size", "64", "--timeout", "nan"], "--timeout"),
    ("runtime", ["nosuchcommand"], "invalid choice"),
    ("onnx", ["--preset", "tiny", "--opset", "5"], "opset must be 22"),
    ("train", ["--out-dir", "{tmp}/r", "--warmup", "-1"], "--warmup: must be an integer >= 0"),
])
def test_every_cli_answers_bad_arguments_with_one_error_line(tmp_path, capsys, monkeypatch, entry, argv, match):
    from infgen.export import onnx as export_onnx
    monkeypatch.setattr(trainer, "train", lambda a: pytest.fail("trained before checking the arguments"))
    np.save(tmp_path / "z.npy", np.zeros((1, 4, 8, 8), np.float32))
    argv = [a.format(z=tmp_path / "z.npy", tmp=tmp_path) for a in argv]
    main = {"runtime": runtime_main, "onnx": export_onnx.main, "train": trainer.main}[entry]
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and [ln for ln in lines if not ln.startswith("note: ")] == [lines[-1]], err
    assert lines[-1].startswith("error: ") and match in lines[-1], err
