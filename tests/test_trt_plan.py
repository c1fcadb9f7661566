"""The TensorRT path up to TensorRT: plan, profile selection, shape binding, cache keys, the CLI.
None of these need TensorRT; the build itself is not tested here. The engine cache's
invalidation (damaged entries) is tested with the ONNX cache's in tests/test_cache_files.py."""
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infgen.export.spec import DEFAULT_MAX_RES
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import one_error_line
from infgen.export.plan import (DEFAULT_OPT_SIZES, Plan, bind_shapes, cache_key, covers, make_plan, pick_profile,
                         polygraphy_command, trtexec_command)

PLAN_4K = make_plan(256, 4096, DEFAULT_OPT_SIZES, batch=2)


def test_default_plan_profiles():
    grids = [p.shapes["grid"] for p in PLAN_4K.profiles]
    # one profile per common size, opt at that size, min/opt/max ordered in every dim
    assert [g[1] for g in grids] == [(128, 128), (135, 240), (256, 256), (270, 480), (512, 512)]
    for p in PLAN_4K.profiles:
        for name, (lo, opt, hi) in p.shapes.items():
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (name, lo, opt, hi)
    assert PLAN_4K.profiles[0].lo == 31 and PLAN_4K.profiles[-1].hi == 512
    assert PLAN_4K.profiles[-1].shapes["latent"][2][0] == 2  # max batch


@settings(max_examples=300, deadline=None)
@given(h=st.integers(256, 4096), w=st.integers(256, 4096), b=st.integers(1, 2), lat=st.integers(16, 128))
def test_every_size_in_exactly_the_picked_profile(h, w, b, lat):
    Hp, Wp = math.ceil(h / 8), math.ceil(w / 8)
    i = pick_profile(PLAN_4K, Hp, Wp)
    holding = [j for j, p in enumerate(PLAN_4K.profiles) if p.lo < max(Hp, Wp) <= p.hi]
    assert holding == [i]
    lo, _, hi = PLAN_4K.profiles[i].shapes["grid"]
    assert lo[0] <= Hp <= hi[0] and lo[1] <= Wp <= hi[1]
    j, shapes, out = bind_shapes(PLAN_4K, (b, 4, lat, lat), Hp, Wp)
    assert j == i and shapes == {"latent": (b, 4, lat, lat), "grid": (Hp, Wp)}
    assert out == (b, 3, 8 * Hp, 8 * Wp)


@settings(max_examples=100, deadline=None)
@given(lo=st.integers(8, 2000), span=st.integers(0, 3000),
       opts=st.lists(st.tuples(st.integers(8, 5000), st.integers(8, 5000)), max_size=6))
def test_random_plans_cover_min_to_max(lo, span, opts):
    plan = make_plan(lo, lo + span, opts, batch=1)
    g_min, g_max = math.ceil(lo / 8), math.ceil((lo + span) / 8)
    assert plan.profiles[0].lo == g_min - 1 and plan.profiles[-1].hi == g_max
    for a, b in zip(plan.profiles, plan.profiles[1:]):
        assert a.hi == b.lo  # contiguous, disjoint intervals
    for L in {g_min, g_max, (g_min + g_max) // 2}:
        for Hp, Wp in ((L, g_min), (g_min, L), (L, L)):
            lo_s, _, hi_s = plan.profiles[pick_profile(plan, Hp, Wp)].shapes["grid"]
            assert lo_s[0] <= Hp <= hi_s[0] and lo_s[1] <= Wp <= hi_s[1]


def test_out_of_plan_requests_name_the_size():
    with pytest.raises(ValueError, match="513x10"):
        pick_profile(PLAN_4K, 513, 10)
    with pytest.raises(ValueError, match="outside this engine's plan"):
        pick_profile(PLAN_4K, 100, 20)  # 160 px < min_res 256
    with pytest.raises(ValueError, match="latent shape"):
        bind_shapes(PLAN_4K, (3, 4, 64, 64), 128, 128)  # batch 3 > 2
    with pytest.raises(ValueError, match="latent shape"):
        bind_shapes(PLAN_4K, (1, 4, 8, 64), 128, 128)  # latent side 8 < 16


@pytest.mark.parametrize("kwargs,match", [
    (dict(min_res=512, max_res=256), "min_res"), (dict(batch=0), "batch"), (dict(max_res=1.5), "max_res"),
    (dict(latent_range=(64, 16, 128)), "latent_range"), (dict(opt_sizes=((1, 2, 3),)), "opt sizes"),
    (dict(opt_sizes=((1024.5, 1024),)), "opt size must be an integer"), (dict(upscale=0), "upscale must be an integer >= 1")])
def test_make_plan_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_plan(**kwargs)


def test_plan_json_round_trip():
    assert Plan.from_json(PLAN_4K.to_json()) == PLAN_4K


def test_cache_key_changes_with_every_part():
    parts = dict(onnx_sha256="a" * 64, trt_version="10.9.0", gpu_name="NVIDIA H100", dtype="bf16", plan=PLAN_4K)
    base = cache_key(**parts)
    assert base == cache_key(**parts)
    changes = dict(onnx_sha256="b" * 64, trt_version="10.13.0", gpu_name="NVIDIA H200", dtype="fp16",
                   plan=make_plan(256, 2048))
    for k, v in changes.items():
        assert cache_key(**{**parts, k: v}) != base, k


def parse_trtexec_profiles(command: str) -> list[dict]:
    """The optimisation profiles trtexec builds from a command line, by the rules of TensorRT's
    samples/common/sampleOptions.cpp (main, a892d222): argv entries `--key=value` keep their
    position; each `--profile=i` (in argv order) takes the --minShapes/--optShapes/--maxShapes
    found at the positions directly after it, at most one of each; a missing selector is
    broadcast from the others (processShapes); indices must be unique and cover 0..n-1; without
    any --profile one set of shape flags makes profile 0, and shape flags left over after either
    path are an error. Shapes: comma-separated `name:DxDxD`, the name before the last ':'.
    Returns [{input name: (min, opt, max)}] per profile index; ValueError where trtexec throws."""
    args = []  # (key, value, position), argv order
    for pos, a in enumerate(shlex.split(command)[1:], start=1):
        key, _, value = a.partition("=")
        args.append([key, value, pos])

    def take(key, pos=None):
        for entry in args:
            if entry[0] == key and (pos is None or entry[2] - pos == 1):
                args.remove(entry)
                return entry
        return None

    def shapes(value):
        out = {}
        for item in value.split(","):
            name, _, dims = item.rpartition(":")
            out[name.replace("'", "")] = tuple(int(d) for d in dims.split("x"))
        return out

    def process(found):
        names = set().union(*(found[s] for s in found))
        order = {"min": ("opt", "max"), "opt": ("max", "min"), "max": ("opt", "min")}
        full = {}
        for sel in ("min", "opt", "max"):
            src = sel if sel in found else next(s for s in order[sel] if s in found)
            full[sel] = found[src]
        return {n: (full["min"][n], full["opt"][n], full["max"][n]) for n in names}

    profiles = {}
    while (entry := take("--profile")) is not None:
        index, pos, found = int(entry[1]), entry[2], {}
        for _ in range(3):
            for sel in ("min", "max", "opt"):
                if sel not in found and (e := take(f"--{sel}Shapes", pos)) is not None:
                    found[sel], pos = shapes(e[1]), pos + 1
                    break
            else:
                break
        if index in profiles:
            raise ValueError("Optimization profile index cannot be the same.")
        profiles[index] = process(found) if found else {}
    if profiles and (sorted(profiles) != list(range(len(profiles))) or not all(profiles.values())):
        raise ValueError("Found invalid or missing shape spec at profile index")
    if not profiles:
        found = {sel: shapes(e[1]) for sel in ("min", "opt", "max") if (e := take(f"--{sel}Shapes"))}
        profiles = {0: process(found)} if found else {}
    if any(k in ("--minShapes", "--optShapes", "--maxShapes") for k, _, _ in args):
        raise ValueError("Multiple --minShapes/--optShapes/--maxShapes without --profile are not allowed.")
    return [profiles[i] for i in sorted(profiles)]


def test_trtexec_line_parses_by_sampleoptions_rules():
    t = trtexec_command(PLAN_4K, "m.onnx", "m.engine", "t.cache")
    assert "--stronglyTyped" in shlex.split(t) and "--timingCacheFile=t.cache" in shlex.split(t)
    parsed = parse_trtexec_profiles(t)
    assert parsed == [dict(p.shapes) for p in PLAN_4K.profiles]
    # the old line (shape triples repeated without --profile) is what trtexec rejects
    old = re.sub(r" --profile=\d+", "", t)
    with pytest.raises(ValueError, match="without --profile"):
        parse_trtexec_profiles(old)
    with pytest.raises(ValueError, match="cannot be the same"):
        parse_trtexec_profiles(t.replace("--profile=1", "--profile=0"))


def test_polygraphy_line_parses_with_polygraphys_own_argparse():
    pytest.importorskip("polygraphy")
    from polygraphy.tools.args import TrtConfigArgs, TrtLoadEngineBytesArgs, TrtLoadNetworkArgs
    from polygraphy.tools.convert import Convert
    p = polygraphy_command(PLAN_4K, "m.onnx", "m.engine", "t.cache")
    argv = shlex.split(p)
    assert argv[:2] == ["polygraphy", "convert"]
    tool = Convert()
    args = tool.setup_parser().parse_args(argv[2:])
    tool.parse(args)
    profiles = tool.arg_groups[TrtConfigArgs].profile_dicts
    assert len(profiles) == len(PLAN_4K.profiles)
    for got, want in zip(profiles, PLAN_4K.profiles):
        assert {n: tuple(tuple(s) for s in shp) for n, shp in got.items()} == dict(want.shapes)
    assert tool.arg_groups[TrtConfigArgs].load_timing_cache == "t.cache"
    assert tool.arg_groups[TrtLoadEngineBytesArgs].save_timing_cache == "t.cache"
    assert tool.arg_groups[TrtLoadNetworkArgs].strongly_typed
    with pytest.raises(SystemExit):  # the flag the old line used does not exist
        tool.setup_parser().parse_args(["m.onnx", "-o", "x", "--timing-cache", "t.cache"])


def test_cli_dry_run_writes_plan_and_prints_commands(tmp_path, capsys):
    """In this process (the entry point as a process: the next test)."""
    from infgen.export.trt import main
    assert main(["--max-res", "4096", "--dry-run", "--write-plan", "--engine-dir", str(tmp_path / "eng")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "eng").iterdir()) == ["plan.json"]
    plan = Plan.from_json((tmp_path / "eng" / "plan.json").read_text())
    assert plan.max_res == 4096 and plan.max_elements == 2**31 - 1
    # 5 intervals; the 3840x2160 and 4096 ones split into landscape + portrait boxes
    assert len(plan.profiles) == 7 and all(p.elements < 2**31 for p in plan.profiles)
    assert "trtexec --onnx=" in out and "polygraphy convert" in out


def test_cli_dry_run_writes_nothing_and_its_commands_make_the_onnx_they_read(tmp_path):
    """--dry-run in an empty directory (HOME there too) leaves it empty; then the printed export line,
    run as printed in a shell, writes exactly the ONNX file the trtexec and polygraphy lines read.
    That export (a random-weights preset, a stderr that is not a terminal) says so in one `warning:`
    line and nothing else: torch.onnx's torchvision lines and its pytree FutureWarning (nothing to do
    with this graph) are silenced; a process, as those come from loggers set up once per process."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "infgen.export.trt", "--preset", "tiny", "--dtype", "fp32",
                        "--max-res", "1024", "--dry-run"], capture_output=True, text=True, cwd=work, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert list(work.iterdir()) == [] and list(home.iterdir()) == []
    assert "not written" in r.stdout
    lines = r.stdout.splitlines()
    export = next(ln for ln in lines if "-m infgen.export.onnx" in ln)
    trtexec = shlex.split(next(ln for ln in lines if ln.startswith("trtexec ")))
    polygraphy = shlex.split(next(ln for ln in lines if ln.startswith("polygraphy ")))
    out = shlex.split(export.split("&&")[-1])
    out = out[out.index("--out") + 1]
    onnx_read = next(a.removeprefix("--onnx=") for a in trtexec if a.startswith("--onnx="))
    assert onnx_read == polygraphy[2] == out
    assert "--preset tiny" in export and "--dtype fp32" in export and "--flavour onnxruntime" in export
    r = subprocess.run(["bash", "-c", export], capture_output=True, text=True, cwd=work,
                       env={**os.environ, **env}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: exporting RANDOM weights (--preset tiny)"), lines
    assert r.stdout.startswith("wrote ") and onnx_read in r.stdout.splitlines()[0], r.stdout
    assert (work / onnx_read).is_file()
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == sorted(
        [str(Path(onnx_read).parent), onnx_read])


def test_cli_build_without_tensorrt_names_the_package(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; this test checks the message when it is missing")
    except ImportError:
        pass
    from infgen.export.trt import main
    rc = main(["--max-res", "2048", "--preset", "tiny", "--engine-dir", str(tmp_path / "eng")])
    line = one_error_line(capsys, rc)
    assert "pip install 'tensorrt" in line
    assert not (tmp_path / "eng").exists()  # checked before anything is written


def test_cli_rejects_max_res_beyond_the_model(tmp_path, capsys):
    from infgen.export.trt import main
    rc = main(["--preset", "tiny", "--max-res", "4096", "--dry-run", "--engine-dir", str(tmp_path)])
    assert "max_size 2048" in one_error_line(capsys, rc)


# ----------------------------------------------------------------------------- volume-capped plans
@pytest.fixture(scope="module")
def paper_plans():
    from infgen.export.spec import default_plan
    from infgen.ref.config import preset
    cfg = preset("paper")
    return cfg, {b: default_plan(cfg, batch=b) for b in (1, 2)}


def test_every_profile_of_the_default_plan_fits_tensorrts_limit(paper_plans):
    from infgen.export.plan import largest_tensor
    cfg, plans = paper_plans
    for batch, plan in plans.items():
        assert plan.max_elements == 2**31 - 1 and plan.profiles
        for i, p in enumerate(plan.profiles):
            _, _, box = p.shapes["grid"]
            lat_max = p.shapes["latent"][2]
            n, name = largest_tensor(cfg, lat_max[0], *box, lat_max[2])
            assert lat_max[0] == batch and n == p.elements and n < 2**31, (batch, i, box, n, name)
        # the plan reaches the default max resolution (4096, under the model's max_size) on the long side
        assert plan.profiles[-1].hi == min(DEFAULT_MAX_RES, cfg.max_size) // cfg.upscale


def test_landscape_and_portrait_boxes_where_the_square_does_not_fit(paper_plans):
    from infgen.export.plan import largest_tensor
    cfg, plans = paper_plans
    plan = plans[1]
    assert largest_tensor(cfg, 1, 480, 480)[0] >= 2**31  # the 3840^2 box is too big ...
    assert covers(plan, 1, 270, 480) and covers(plan, 1, 480, 270)  # ... 3840x2160 both ways fits
    assert not covers(plan, 1, 480, 480) and not covers(plan, 1, 512, 512)
    assert covers(plan, 1, 128, 512) and covers(plan, 1, 256, 256)
    assert not covers(plans[2], 2, 270, 480) and covers(plans[2], 2, 135, 240)  # boxes sized at max batch
    assert not covers(plan, 2, 128, 128)  # batch beyond the plan
    with pytest.raises(ValueError, match="480x480 .*largest tensor <= 2147483647"):
        pick_profile(plan, 480, 480)
    for Hp, Wp in ((270, 480), (480, 270), (100, 512), (512, 100), (200, 200), (32, 32)):
        i = pick_profile(plan, Hp, Wp)
        lo, opt, hi = plan.profiles[i].shapes["grid"]
        assert lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]
        assert lo[0] <= Hp <= hi[0] and lo[1] <= Wp <= hi[1]


def test_volume_cap_drops_intervals_nothing_fits():
    plan = make_plan(256, 1024, ((1024, 1024),), batch=1, volume=lambda b, h, w: b * h * w * 1000,
                     max_elements=128 * 40 * 1000)
    # square 128^2 box is over the cap; short side 40 fits: landscape + portrait
    assert [p.shapes["grid"][2] for p in plan.profiles] == [(40, 128), (128, 40)]
    with pytest.raises(ValueError, match="no grid of 32..128 tokens per side fits 3968 elements"):
        make_plan(256, 1024, ((1024, 1024),), volume=lambda b, h, w: h * w, max_elements=31 * 128)


# ----------------------------------------------------------------------------- one entry point
class FakeBuild:
    """Stands in for TensorRT's build: records its calls, returns bytes naming the plan."""

    def __init__(self):
        self.calls = []

    def __call__(self, onnx_path, plan, timing_cache, allow_tf32=False):
        self.calls.append((Path(onnx_path), plan, Path(timing_cache), allow_tf32))
        return b"ENGINE" + plan.to_json().encode()


def test_cli_engine_is_the_engine_the_backend_loads(tmp_path, monkeypatch, tiny_cfg, shared_onnx):
    """python -m infgen.export.trt --min-res 128 builds (build stubbed); TrtBackend's engine_for, with no
    plan given, finds that same engine in the same engine_dir: same key, same file, no rebuild."""
    import types

    from infgen.export import trt as export_trt
    from infgen.ref.model import InfGen
    from infgen.runtime.trt_backend import TrtBackend
    torch.manual_seed(0)
    tiny_model = InfGen(tiny_cfg).eval()  # its own copy: the export casts the model it is given
    fake = types.SimpleNamespace(__version__="10.13.0.35")
    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(export_trt, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr("infgen.export.onnx.load_model", lambda checkpoint, preset_name: tiny_model)
    build = FakeBuild()
    monkeypatch.setattr(export_trt, "build_engine", build)
    eng = tmp_path / "engines"
    # the ONNX files the engines are built from: this run's shared export cache (same weights: seed 0)
    cache = shared_onnx("bf16", "tensorrt").parents[2]
    assert shared_onnx("fp32", "tensorrt").parents[2] == cache
    args = ["--preset", "tiny", "--min-res", "128", "--max-res", "1024", "--batch", "2", "--dtype", "bf16",
            "--engine-dir", str(eng), "--cache-dir", str(cache)]
    assert export_trt.main(args) == 0
    assert len(build.calls) == 1 and build.calls[0][1].min_res == 128
    built = sorted(eng.glob("infgen-*.engine"))
    assert len(built) == 1
    found = TrtBackend.locate(tiny_model, torch.bfloat16, engine_dir=eng, cache_dir=cache)
    assert found.path == built[0] and found.plan.min_res == 128 and found.plan.batch == 2
    assert len(build.calls) == 1  # loaded, not rebuilt
    # the timing cache is keyed by TensorRT version and GPU
    other = export_trt.timing_cache_path(eng, "10.13.0.35", "NVIDIA H200")
    assert build.calls[0][2] == export_trt.timing_cache_path(eng, "10.13.0.35", "NVIDIA H100 80GB HBM3") != other
    # another dtype, or tf32, is another engine
    export_trt.engine_for(tiny_model, "fp32", None, eng, cache_dir=cache, allow_tf32=True)
    assert len(build.calls) == 2 and build.calls[1][3] is True
    # a corrupt plan.json: the default plan, said so, never an exception
    (eng / "plan.json").write_bytes(b"\xff")
    plan, why = export_trt.plan_for(tiny_model.config, eng)
    assert plan.min_res == 256 and "unreadable" in why


def test_engine_for_refuses_a_plan_tensorrt_cannot_build_before_building(tmp_path, tiny_model):
    from infgen.export.trt import EngineUnbuildable, engine_for
    build = FakeBuild()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used: the build is stubbed")
    big = make_plan(256, 2048, ((2048, 2048),), batch=64, upscale=8, latent_channels=4)  # uncapped square boxes
    with pytest.raises(EngineUnbuildable, match="profile 0 .*TensorRT's limit is 2147483647"):
        engine_for(tiny_model, "bf16", big, tmp_path, onnx_path=onnx, trt_version="10.9", gpu="g", build=build)
    assert build.calls == []
