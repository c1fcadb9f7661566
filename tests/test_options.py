"""One flag set across every tool (infgen_ref/options.py): each tool's --help lists the shared flags
that apply to it with the same choices, and --size is WIDTHxHEIGHT everywhere."""
import re

import pytest

from infgen.ref.config import DTYPES, PRESETS
from infgen.ref.options import SHARED_FLAGS
from infgen.runtime.cli import build_parser, main
from infgen.runtime.engine import BACKENDS

MODEL = {"--preset", "--checkpoint", "--backend", "--device", "--dtype"}
# tool -> the shared flags it has; everything else must be absent
EXPECTED = {
    "decode": {"--size", *MODEL},
    "encode": MODEL,
    "info": {"--size", "--preset", "--checkpoint"},  # shapes and FLOPs on the meta device: no engine
    "demo": {"--size", *MODEL},
    "profile": {"--size", *MODEL},
    "serve": MODEL,
    "client": {"--size"},  # the server's model decodes
    "loadtest": {"--size", *MODEL},
    "infgen.export.onnx": {"--preset", "--checkpoint", "--dtype"},
    "infgen.export.trt": {"--preset", "--checkpoint", "--dtype"},
}
CHOICES = {"--preset": sorted(PRESETS), "--backend": list(BACKENDS), "--dtype": sorted(DTYPES)}


def help_text(tool: str, capsys) -> str:
    if tool.startswith("infgen.export."):
        import importlib
        entry = importlib.import_module(tool).main
        argv = ["--help"]
    else:
        entry, argv = main, [tool, "--help"]
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("tool", list(EXPECTED))
def test_help_lists_the_shared_flags_with_the_same_choices(tool, capsys):
    text = help_text(tool, capsys)
    present = {f for f in SHARED_FLAGS if re.search(rf"(^|\s|\[){re.escape(f)}(\s|$|\]|,)", text, re.M)}
    assert present == EXPECTED[tool]
    for flag, choices in CHOICES.items():
        if flag in present:
            listed = re.findall(rf"{re.escape(flag)} \{{([^}}]*)\}}", text)
            assert listed and all(c.split(",") == choices for c in listed), (flag, listed)
    if "--size" in present:
        assert re.search(r"--size WxH \[WxH \.\.\.\]", text) and "WIDTHxHEIGHT" in text


def test_the_standalone_entry_points_have_the_same_flags(capsys):
    """`infgen-serve`, `infgen-profile`, ...: the same modules' parsers as `python -m infgen.runtime COMMAND`."""
    from infgen.runtime.cli import tool
    for command in ("decode", "profile", "serve", "client"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        sub = capsys.readouterr().out
        with pytest.raises(SystemExit):
            tool(command).main(["--help"])
        alone = capsys.readouterr().out
        strip = lambda t: t[t.index("options:"):]  # noqa: E731 - the usage line names the program
        assert strip(sub) == strip(alone), command


REQUIRED = {"decode": ["z.npy"], "client": ["z.npy"]}


@pytest.mark.parametrize("tool", [t for t, flags in EXPECTED.items() if "--size" in flags])
def test_size_is_width_by_height_everywhere(tool):
    """--size 96x64 is 96 wide and 64 high: (h, w) = (64, 96) in every tool; one number is a square."""
    parser = build_parser()
    args = parser.parse_args([tool, *REQUIRED.get(tool, []), "--size", "96x64", "40"])
    assert args.size == [(64, 96), (40, 40)]


@pytest.mark.parametrize("tool", ["decode", "profile", "client"])
def test_bad_size_is_a_usage_error_naming_it(tool, capsys):
    with pytest.raises(SystemExit) as info:
        main([tool, *REQUIRED.get(tool, []), "--size", "96by64"])
    assert info.value.code == 2
    assert "'96by64'" in capsys.readouterr().err


def test_backend_and_dtype_choices_come_from_one_table(capsys):
    """Every choice the tools accept is the engine's BACKENDS and config's DTYPES, and nothing else."""
    parser = build_parser()
    for tool in ("decode", "serve", "demo"):
        with pytest.raises(SystemExit):
            parser.parse_args([tool, *REQUIRED.get(tool, []), "--backend", "cudnn"])
        assert "invalid choice: 'cudnn'" in capsys.readouterr().err
    args = parser.parse_args(["profile", "--backend", *BACKENDS, "--dtype", "bf16"])
    assert args.backend == list(BACKENDS) and args.dtype == "bf16"


def test_entry_points_resolve_and_packages_are_listed():
    """[project.scripts] names callables that exist; [tool.setuptools] packages lists every package."""
    import importlib
    from pathlib import Path
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    scripts = meta["project"]["scripts"]
    assert scripts["infgen"] == "infgen.runtime.cli:main"
    for name, target in scripts.items():
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func)), name
    # every folder of Python files under a mapped folder is listed, under the one `infgen` namespace
    package_dir = meta["tool"]["setuptools"]["package-dir"]
    tops = {name: folder for name, folder in package_dir.items() if name.count(".") == 1}
    assert set(tops) == {"infgen.ref", "infgen.kernels", "infgen.export", "infgen.runtime", "infgen.train",
                         "infgen.native"}
    packages = {".".join([name, *p.parent.relative_to(root / folder).parts])
                for name, folder in tops.items() for p in (root / folder).rglob("*.py")
                if "tests" not in p.relative_to(root / folder).parts}
    assert set(meta["tool"]["setuptools"]["packages"]) == packages
    assert "xformers" not in meta["project"]["optional-dependencies"]


def test_library_and_applications_are_apart():
    """The library (infgen.runtime.engine, backends, io, serving) imports neither infgen.runtime.cli nor train/;
    the old application modules are gone."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, runtime, infgen.runtime.engine, infgen.runtime.io, infgen.runtime.serving, infgen.runtime.ort_backend, "
            "infgen.runtime.trt_backend, infgen.runtime.triton_backend, infgen.ref.model, infgen.ref.weights, infgen.export.onnx, "
            "infgen.export.trt; "
            "bad = sorted(m for m in sys.modules if m.startswith('infgen.runtime.cli') or m.split('.')[0] == 'train'); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(__file__).resolve().parents[1]
    for gone in ("runtime/profile.py", "runtime/demo.py", "runtime/demo_photo.py", "infgen_ref/train.py",
                 "benchmarks/decode.py"):
        assert not (root / gone).exists(), gone
