"""One flag set across every tool (infgen.cli, cli/__init__.py): each tool's --help lists the shared flags
that apply to it with the same choices, and --size is WIDTHxHEIGHT everywhere."""
import re

import pytest

from infgen.cli import SHARED_FLAGS
from infgen.ref.config import DTYPES, PRESETS
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
    "infgen.runtime.distributed": {"--size", "--preset", "--checkpoint", "--device", "--dtype"},  # decode's, no engine
    "infgen.train.trainer": {"--preset", "--device"},
}
CHOICES = {"--preset": sorted(PRESETS), "--backend": list(BACKENDS), "--dtype": sorted(DTYPES)}


def help_text(tool: str, capsys) -> str:
    if tool.startswith("infgen."):
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


@pytest.mark.parametrize("tool", [t for t, flags in EXPECTED.items() if "--size" in flags and "." not in t])
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
    assert set(tops) == {"infgen.ref", "infgen.cli", "infgen.kernels", "infgen.export", "infgen.runtime", "infgen.train",
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
            "bad = sorted(m for m in sys.modules if m.split('.')[:3] == ['infgen', 'runtime', 'cli'] "
            "or m.split('.')[0] == 'train'); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    root = Path(__file__).resolve().parents[1]
    for gone in ("runtime/profile.py", "runtime/demo.py", "runtime/demo_photo.py", "infgen_ref/train.py",
                 "benchmarks/decode.py"):
        assert not (root / gone).exists(), gone


# ----------------------------------------------------------------------------- one parser convention (docs/cli.md)
def tool_parsers() -> dict:
    """Every tool's parser by name: each runtime command as `infgen COMMAND`, and the tools run on
    their own (distributed, train, export.onnx, export.trt)."""
    import argparse

    from infgen.export import onnx, trt
    from infgen.runtime import distributed
    from infgen.train import trainer
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {**{f"infgen {c}": p for c, p in sub.choices.items()}, "infgen": top,
            "infgen.runtime.distributed": distributed.build_parser(), "infgen.train": trainer.build_parser(),
            "infgen.export.onnx": onnx.build_parser(), "infgen.export.trt": trt.build_parser()}


TOOLS = ["infgen", *[f"infgen {c}" for c in EXPECTED if "." not in c], "infgen.runtime.distributed", "infgen.train",
         "infgen.export.onnx", "infgen.export.trt"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_flag_with_a_default_says_it_in_help(tool):
    """A flag whose default is something (not None, False or an empty list) mentions it in --help;
    the rendered help formats (no stray %)."""
    import argparse
    parser = tool_parsers()[tool]
    silent = [a.option_strings[-1] for a in parser._actions
              if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)
              and not (isinstance(a.default, (list, tuple)) and not a.default) and "default" not in (a.help or "")]
    assert silent == [], f"{tool}: flags with a default their help does not state: {silent}"
    parser.format_help()


def test_defaults_are_shown_as_typed():
    """Lists space-separated, sizes WIDTHxHEIGHT: what the user would type."""
    parsers = tool_parsers()
    train = " ".join(parsers["infgen.train"].format_help().split())
    assert "--batch-size BATCH_SIZE images per step (default: 8)" in train and "(default: 1 2 4)" in train  # --batch-size, --pyramid
    trt = " ".join(parsers["infgen.export.trt"].format_help().split())
    assert "(default: 1024x1024 1920x1080 2048x2048 3840x2160 4096x4096)" in trt


@pytest.mark.parametrize("tool", TOOLS)
def test_lists_are_one_flag_with_space_separated_values(tool):
    """No tool takes a repeated flag (action="append") or a comma list: every list is nargs="+"."""
    import argparse
    parser = tool_parsers()[tool]
    for a in parser._actions:
        assert not isinstance(a, (argparse._AppendAction, argparse._ExtendAction)), (tool, a.option_strings)
        assert not re.search(r"\bcomma\b|comma-sep", a.help or "", re.I), (tool, a.option_strings, a.help)
        if isinstance(a.default, (list, tuple)) and a.default and a.option_strings:
            assert a.nargs == "+", (tool, a.option_strings)


def test_out_is_a_file_and_out_dir_a_directory():
    """-o/--out FILE names one output file (decode, encode, client, loadtest, distributed,
    export.onnx); --out-dir DIR a directory the tool fills (demo, profile, train)."""
    parsers = tool_parsers()
    for tool, parser in parsers.items():
        flags = {s: a for a in parser._actions for s in a.option_strings}
        if "--out" in flags:
            assert "-o" in flags and flags["-o"] is flags["--out"], tool
            assert "--out-dir" not in flags, tool
    have = {t for t, p in parsers.items() if "--out" in {s for a in p._actions for s in a.option_strings}}
    assert have == {"infgen decode", "infgen encode", "infgen client", "infgen loadtest",
                    "infgen.runtime.distributed", "infgen.export.onnx"}
    dirs = {t for t, p in parsers.items() if "--out-dir" in {s for a in p._actions for s in a.option_strings}}
    assert dirs == {"infgen demo", "infgen profile", "infgen.train"}


def usage(capsys, entry, argv) -> str:
    """The program name in the usage line that entry(argv) prints."""
    with pytest.raises(SystemExit) as info:
        entry(argv)
    assert info.value.code == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("usage: ")
    return line.removeprefix("usage: ").split(" [")[0].split(" {")[0]


@pytest.mark.parametrize("argv0,want", [("/venv/bin/infgen", "infgen decode"),
                                        ("/venv/bin/infgen-decode", "infgen-decode"),
                                        ("/src/runtime/__main__.py", "python -m infgen.runtime decode")])
def test_usage_names_the_program_that_ran(monkeypatch, capsys, argv0, want):
    """The console scripts print their own name; `python -m` (and anything else) the module spelling."""
    from infgen.runtime.cli import tool
    monkeypatch.setattr("sys.argv", [argv0])
    entry, argv = (tool("decode").main, ["--help"]) if "infgen-" in argv0 else (main, ["decode", "--help"])
    assert usage(capsys, entry, argv) == want


@pytest.mark.parametrize("module,script,fallback", [
    ("infgen.export.onnx", "infgen-export-onnx", "python -m infgen.export.onnx"),
    ("infgen.export.trt", "infgen-export-trt", "python -m infgen.export.trt"),
    ("infgen.train.trainer", "infgen-train", "python -m infgen.train"),
    ("infgen.runtime.cli.profiler", "infgen-profile", "python -m infgen.runtime profile"),
    ("infgen.runtime.distributed", None, "torchrun --nproc-per-node N -m infgen.runtime.distributed")])
def test_usage_of_the_standalone_tools(monkeypatch, capsys, module, script, fallback):
    import importlib
    entry = importlib.import_module(module).main
    if script is not None:
        monkeypatch.setattr("sys.argv", [f"/venv/bin/{script}"])
        assert usage(capsys, entry, ["--help"]) == script
    monkeypatch.setattr("sys.argv", [f"/src/{module.replace('.', '/')}.py"])
    assert usage(capsys, entry, ["--help"]) == fallback


def test_installed_console_script_prints_its_own_name():
    """The real entry point, as installed (`pip install -e .`): infgen-decode --help says infgen-decode."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(sys.executable).parent / "infgen-decode"
    if not script.is_file():
        pytest.skip(f"{script} is not installed beside this interpreter")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: infgen-decode "), r.stdout[:200] + r.stderr[-500:]
    r = subprocess.run([sys.executable, "-m", "infgen.runtime", "decode", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m infgen.runtime decode "), r.stdout[:200]
