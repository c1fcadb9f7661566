"""`python -m infgen.runtime`: every subcommand, end to end, in process (main(argv)) and as a real process."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from infgen.cli import size_type
from infgen.ref.weights import save_checkpoint
from infgen.runtime.cli import demo as demo_mod
from infgen.runtime.cli import main, options
from infgen.runtime.io import load_image, load_latent, save_latent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def latent():
    torch.manual_seed(11)
    return torch.randn(4, 6, 5)


@pytest.fixture
def ckpt(tiny_model, tmp_path):
    return str(save_checkpoint(tiny_model, tmp_path / "ck"))


def run_main(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("cmd", ["decode", "encode", "info", "demo", "profile", "serve", "client", "loadtest"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as info:
        main([cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m infgen.runtime {cmd}")
    assert ("--checkpoint" in out) == (cmd != "client")  # the client decodes with the server's model


def test_size_type_is_width_by_height():
    """--size's argparse type (infgen.cli.size_type): WIDTHxHEIGHT -> (height, width); a bad size is
    argparse's error naming it."""
    import argparse
    assert size_type("3840x2160") == (2160, 3840)
    assert size_type("1024") == (1024, 1024)
    for bad in ("abc", "12x", "-5x10", "3.5x2"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad.replace(".", r"\.")):
            size_type(bad)


# ----------------------------------------------------------------------------- latent io
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_latent_io_round_trip(latent, tmp_path, suffix):
    p = save_latent(latent, tmp_path / f"z{suffix}")
    assert torch.equal(load_latent(p), latent)


def test_latent_io_dict_forms(latent, tmp_path):
    torch.save({"latent": latent, "prompt_ids": torch.zeros(3)}, tmp_path / "a.pt")
    torch.save({"x": latent}, tmp_path / "b.pt")
    save_file({"latent": latent, "other": torch.zeros(2)}, str(tmp_path / "c.safetensors"))
    for name in ("a.pt", "b.pt", "c.safetensors"):
        assert torch.equal(load_latent(tmp_path / name), latent)
    save_file({"a": latent, "b": latent.clone()}, str(tmp_path / "d.safetensors"))
    with pytest.raises(ValueError, match=r"2 entries \['a', 'b'\]"):
        load_latent(tmp_path / "d.safetensors")


class NotATensor:
    pass


def test_latent_io_refuses_code_and_garbage(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled data is refused"):
        load_latent(tmp_path / "obj.npy")
    torch.save({"latent": NotATensor()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_latent(tmp_path / "obj.pt")
    for name in ("junk.npy", "junk.pt", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"\x00\x01 definitely not a latent" * 4)
        with pytest.raises(ValueError, match=name):
            load_latent(tmp_path / name)
    with pytest.raises(ValueError, match="z.txt"):
        load_latent(tmp_path / "z.txt")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_latent(tmp_path / "missing.npy")


def test_load_image(tmp_path):
    arr = np.zeros((5, 7, 3), dtype=np.uint8)
    arr[..., 0] = 255
    Image.fromarray(arr).save(tmp_path / "i.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")  # greyscale converts to RGB
    x = load_image(tmp_path / "i.png")
    assert x.shape == (1, 3, 5, 7) and x.dtype == torch.float32
    assert x[0, 0].eq(1).all() and x[0, 1].eq(-1).all()
    assert load_image(tmp_path / "g.png").shape == (1, 3, 5, 7)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png")


# ----------------------------------------------------------------------------- commands
@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_decode_end_to_end(latent, ckpt, tmp_path, capsys, suffix):
    src = save_latent(latent, tmp_path / f"lat{suffix}")
    rc, out, err = run_main(["decode", src, "--size", "24x40", "--out", tmp_path / "o.png", "--checkpoint", ckpt],
                            capsys)
    assert rc == 0, err
    with Image.open(tmp_path / "o.png") as im:
        assert im.format == "PNG" and im.size == (24, 40)
    assert "weights are random" not in err  # a real checkpoint was given


def test_decode_several_sizes_jpeg_and_batch(latent, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_latent(torch.stack([latent, -latent]), tmp_path / "pair.npy")
    rc, out, err = run_main(["decode", "pair.npy", "--size", "17x9", "8x16", "--format", "jpg", "--preset", "tiny"],
                            capsys)
    assert rc == 0, err
    assert "weights are random" in err
    for name, size in (("pair_17x9_0.jpg", (17, 9)), ("pair_17x9_1.jpg", (17, 9)), ("pair_8x16_1.jpg", (8, 16))):
        with Image.open(tmp_path / name) as im:
            assert im.format == "JPEG" and im.size == size


def test_encode_then_decode(tmp_path, capsys):
    Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    rc, out, err = run_main(["encode", tmp_path / "p.png", "--out", tmp_path / "p.safetensors"], capsys)
    assert rc == 0, err
    z = load_latent(tmp_path / "p.safetensors")
    assert z.shape == (1, 4, 4, 6)
    assert "(1, 4, 4, 6)" in out
    rc, out, err = run_main(["decode", tmp_path / "p.safetensors", "--size", "96x64", "-o", tmp_path / "q.jpg"], capsys)
    assert rc == 0, err
    with Image.open(tmp_path / "q.jpg") as im:
        assert im.size == (96, 64)


def test_info(capsys):
    rc, out, err = run_main(["info", "--preset", "paper", "--size", "1024x1024", "2048"], capsys)
    assert rc == 0, err
    assert re.search(r"decoder, shared with the VAE\s+49,490,199 ", out)  # docs/design.md: 49.5 M
    assert "to 1024x1024" in out and "to 2048x2048" in out
    assert re.search(r"total\s+12.3238 TFLOP", out) and re.search(r"total\s+55.7225 TFLOP", out)
    assert re.search(r"H100 floor\s+15.60 ms", out)


def test_info_from_checkpoint(ckpt, capsys):
    rc, out, err = run_main(["info", "--checkpoint", ckpt, "--size", "64x32"], capsys)
    assert rc == 0, err
    assert f"checkpoint {ckpt}" in out and "num_blocks           2" in out and "to 64x32" in out


@pytest.mark.parametrize("argv,match", [
    (["decode", "{z}", "--size", "9000x64"], "width must be 8..8192, got 9000"),
    (["decode", "{z}", "--size", "64x0"], "height must be 8..8192, got 0"),
    (["decode", "{z}", "--size", "64", "--device", "mps"], "'mps'"),
    (["decode", "{z}", "--size", "64", "--out", "x.bmp"], "x.bmp"),
    (["decode", "missing.npy", "--size", "64"], "missing.npy"),
    (["decode", "{z}", "--size", "64", "--checkpoint", "nodir"], "nodir"),
    (["encode", "nothere.png"], "nothere.png"),
    (["info", "--size", "9000"], "9000"),
])
def test_user_errors_exit_2_with_one_line(argv, match, latent, tmp_path, capsys):
    z = save_latent(latent, tmp_path / "z.npy")
    rc, out, err = run_main([a.format(z=z) for a in argv], capsys)
    assert rc == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and match in line[0], err
    assert "Traceback" not in err


def test_bad_size_syntax_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["decode", "z.npy", "--size", "12by7"])
    assert info.value.code == 2
    assert "'12by7'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- demo
def test_demo_random_weights_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(options, "DEMO_CHECKPOINT", tmp_path / "no-such-dir")
    rc, out, err = run_main(["demo", "--out-dir", tmp_path / "d", "--size", "64x48", "17x9"], capsys)
    assert rc == 0, err
    assert "weights are random: the images are noise" in out
    assert "64x48" in out and "17x9" in out
    for name, size in (("decoded_64x48.png", (64, 48)), ("decoded_17x9.png", (17, 9))):
        with Image.open(tmp_path / "d" / name) as im:
            assert im.size == size


def test_demo_uses_bundled_checkpoint(tiny_model, tmp_path, monkeypatch):
    bundled = save_checkpoint(tiny_model, tmp_path / "assets" / "demo")
    monkeypatch.setattr(options, "DEMO_CHECKPOINT", bundled)
    assert options.default_model() == str(bundled)
    lines = []
    rows = demo_mod.run_pattern_demo(tmp_path / "d", [(24, 40)], echo=lines.append)
    text = "\n".join(lines)
    assert "weights are random" not in text and f"checkpoint {bundled}" in text
    assert len(rows) == 1 and rows[0]["seconds"] > 0 and Path(rows[0]["path"]).is_file()


def test_python_dash_m_runtime_in_a_fresh_process(tmp_path):
    """The real entry point, with cwd = the repository root, as a user runs it: a user error is one
    `error:` line and status 2. (Commands that succeed in a fresh process: the docs' blocks,
    tests/test_docs.py, e.g. README's `infgen encode` and `infgen decode`; `demo` in-process below.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    z = save_latent(torch.randn(4, 4, 4), tmp_path / "z.npy")
    r = subprocess.run([sys.executable, "-m", "infgen.runtime", "decode", str(z), "--size", "0x8"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == "error: width must be 8..8192, got 0"


def test_demo_default_is_the_photo_demo_on_the_shipped_checkpoint(tmp_path, capsys):
    """With no --preset/--checkpoint, `demo` decodes the bundled photo with the shipped model and
    prints PSNR/SSIM next to the native-decode + bicubic and + Lanczos baselines."""
    if not (options.DEMO_CHECKPOINT / "model.safetensors").is_file():
        pytest.skip("no demo checkpoint is bundled in this checkout")
    rc, out, err = run_main(["demo", "--out-dir", tmp_path, "--size", "96x64", "40x24"], capsys)
    assert rc == 0, err
    assert "bicubic_psnr" in out and "lanczos_psnr" in out and "evening_glow.jpg" in out
    assert (tmp_path / "contact_sheet.png").is_file()
    assert (tmp_path / "infgen_96x64.png").is_file() and (tmp_path / "bicubic_40x24.png").is_file()
    assert "random" not in out + err


def test_info_plans_8192_under_a_memory_budget(capsys):
    """#14: 8192^2 is within the demo checkpoint's max_size, and info prints the plan per backend
    under --max-memory: the fp32 CPU decode (predicted over 24 GB plain) goes banded."""
    rc, out, err = run_main(["info", "--size", "8192x8192", "--max-memory", "24GB"], capsys)
    assert rc == 0, err
    assert "under a 24.00 GB budget" in out
    cpu = next(line for line in out.splitlines() if "float32" in line and "(CPU" in line)
    assert "-> banded" in cpu
