"""The runtime installs beside the ML ecosystem (#31): one import namespace, `infgen`.

transformers 5 depends on HuggingFace's PyPI package `kernels`; a wheel of ours that put files in
site-packages/kernels/ (or export/, runtime/, train/, all PyPI names) would overwrite it and break
transformers in the user's environment, and uninstalling would leave it broken. Here the wheel is
built from this checkout and installed non-editably into a fresh venv that holds HuggingFace's
`kernels` in the same site-packages (transformers, diffusers and torch come from this environment
through a path entry), then uninstalled, checking imports and `kernels`' files at each step.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOREIGN_TOPS = ("kernels", "export", "runtime", "train", "infgen_ref", "native", "cli")  # names that must not be installed

# Installed, not imported: the checks import them in the venv (importing transformers here would cost
# every pytest-xdist worker half a second at collection).
if importlib.util.find_spec("transformers") is None:
    pytest.skip("needs transformers (the .[test] extra)", allow_module_level=True)
if importlib.util.find_spec("kernels") is None:
    pytest.skip("needs HuggingFace's kernels (a transformers 5 dependency, the .[test] extra)", allow_module_level=True)


def run(*args, cwd=None, timeout=300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


# Run in the fresh venv: what a user's `import` sees there (cwd = the repository root, on sys.path as
# with `python -c`, to show the checkout's folders do not shadow installed packages either). With
# the argument "diffusers", diffusers too (beside the installed runtime; after the uninstall it is
# left out: diffusers lives in the base environment, which neither pip run in the venv touches).
PROBE = """
import json, sys
import transformers, kernels
if sys.argv[1:] == ["diffusers"]:
    from diffusers import AutoencoderKL
import transformers.integrations.hub_kernels  # imports CUDAProperties & co. from HuggingFace's kernels
out = {"kernels": kernels.__file__, "has_cuda_properties": hasattr(kernels, "CUDAProperties")}
try:
    import infgen.runtime
    from infgen.runtime import InfGenEngine
    out["infgen"] = infgen.runtime.__file__
except ImportError as exc:
    out["infgen"] = None
    out["infgen_error"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of this checkout's tracked files (setuptools' build/ stays out of the tree)."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():  # a file deleted in the work tree but still in the index is skipped
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src)
    (whl,) = out.glob("infgen_runtime-*.whl")
    return whl


def test_wheel_puts_everything_under_infgen(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"infgen"}, sorted(tops)
    for sub in ("ref", "cli", "kernels", "export", "runtime", "train", "native"):
        assert any(n.startswith(f"infgen/{sub}/") for n in names), f"infgen/{sub}/ missing from the wheel"
    assert "infgen/ref/assets/demo/model.safetensors" in names  # the bundled demo checkpoint ships
    assert "infgen/__init__.py" not in names  # `infgen` is a namespace package: nothing to overwrite either


def test_install_and_uninstall_beside_transformers(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)  # pip runs from here, on the venv (pip --python)
    py = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", py)
    site = Path(run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    # torch, transformers, diffusers and kernels' own dependencies come from this environment, after the
    # venv's own site-packages (a plain path line: this environment's editable install is not active there)
    here = Path(metadata.distribution("transformers").locate_file(""))
    (site / "zz_base_env.pth").write_text(f"{here}\n")
    kernels_version = metadata.version("kernels")
    run(*pip, "install", "-q", "--no-deps", "--ignore-installed", f"kernels=={kernels_version}")
    kernels_dir = site / "kernels"
    assert kernels_dir.is_dir()
    before = tree_hash(kernels_dir)

    run(*pip, "install", "-q", "--no-deps", wheel)
    installed = json.loads(run(py, "-c", PROBE, "diffusers", cwd=ROOT).splitlines()[-1])
    assert installed["kernels"].startswith(str(kernels_dir)) and installed["has_cuda_properties"]
    assert installed["infgen"] is not None and installed["infgen"].startswith(str(site / "infgen")), installed
    assert tree_hash(kernels_dir) == before, "installing the runtime changed HuggingFace's kernels"
    for top in FOREIGN_TOPS:
        assert not (site / top / "__init__.py").exists() or top == "kernels", f"site-packages/{top}/ was installed"
    record = (next(site.glob("infgen_runtime-*.dist-info")) / "RECORD").read_text().splitlines()
    ours = {line.split(",")[0].split("/")[0] for line in record}
    assert not ours & set(FOREIGN_TOPS), sorted(ours & set(FOREIGN_TOPS))
    # the console scripts run from anywhere
    assert "usage" in run(venv / "bin" / "infgen-export-trt", "--help", cwd=tmp_path).lower()

    run(*pip, "uninstall", "-y", "-q", "infgen-runtime")
    after = json.loads(run(py, "-c", PROBE, cwd=tmp_path).splitlines()[-1])
    assert after["infgen"] is None and after["has_cuda_properties"], after
    assert tree_hash(kernels_dir) == before, "uninstalling the runtime changed HuggingFace's kernels"
    assert not [p for p in (site / "infgen").rglob("*") if p.is_file()]  # pip may leave the empty namespace folder
