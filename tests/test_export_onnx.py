"""ONNX export: graph spec, validity, and onnxruntime parity with the fp32 reference (tiny preset)."""
import math

import numpy as np
import onnx
import pytest
import torch

from infgen.export.onnx import (DYNAMIC_DIMS, PLUGIN_DOMAIN, PLUGIN_OP, ExportDecode, cached_export, export_onnx,
                         model_digest, with_reference_attention)
from infgen.export.plan import make_plan
from infgen.runtime.engine import InfGenEngine
from infgen.runtime.ort_backend import OrtBackend

ATOL = 1e-4
# A small plan for the tiny preset: outputs 16..200 px, batch 1..2, latents 4..16.
SMALL_PLAN = dict(min_res=16, max_res=200, opt_sizes=((64, 64), (40, 96)), batch=2, upscale=8,
                  latent_channels=4, latent_range=(4, 8, 16))


@pytest.fixture(scope="module")
def exported(shared_onnx):
    """(onnxruntime-flavour path, TensorRT-flavour path) of the tiny model in fp32: real exports
    through the export cache, made once per test run (conftest's shared_onnx)."""
    return shared_onnx("fp32", "onnxruntime"), shared_onnx("fp32", "tensorrt")


def session(model_or_path):
    import onnxruntime as ort
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def ort_run(sess, z, Hp, Wp):
    return sess.run(["image"], {"latent": z.numpy(), "grid": np.zeros((Hp, Wp), np.float32)})[0]


def reference(model, z, Hp, Wp):
    with torch.no_grad():
        return model.decode_grid(z, Hp, Wp).numpy()


def plan_corners():
    """(batch, latent side, grid) at every profile's min, opt and max of the small plan."""
    plan = make_plan(**SMALL_PLAN)
    out = []
    for p in plan.profiles:
        for j in range(3):
            lat, grid = p.shapes["latent"][j], p.shapes["grid"][j]
            out.append((lat[0], lat[2], grid))
    return out


def test_graph_inputs_outputs_and_named_dynamic_dims(exported):
    m = onnx.load(str(exported[0]))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.input) + list(m.graph.output)}
    assert dims == {"latent": ["batch", 4, "latent_h", "latent_w"], "grid": ["grid_h", "grid_w"],
                    "image": ["batch", 3, "8*grid_h", "8*grid_w"]}
    assert set(DYNAMIC_DIMS) == {"latent", "grid"}
    assert {o.domain for o in m.opset_import} == {""}
    assert not [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE and i.dims]


def test_checker_and_strict_shape_inference(exported):
    for path in exported:
        onnx.checker.check_model(str(path), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        out = inferred.graph.output[0].type.tensor_type
        assert out.elem_type == onnx.TensorProto.FLOAT


def test_ops_standard_groupnorm_resize(exported):
    ops = {n.op_type for n in onnx.load(str(exported[0])).graph.node}
    assert "GroupNormalization" not in ops and "InstanceNormalization" in ops
    assert "Resize" in ops and "Softmax" in ops


@pytest.mark.parametrize("batch,lat,grid", plan_corners())
def test_onnxruntime_matches_reference_at_plan_corners(tiny_model, exported, batch, lat, grid):
    torch.manual_seed(1)
    z = torch.randn(batch, 4, lat, lat)
    out = ort_run(session(exported[0]), z, *grid)
    ref = reference(tiny_model, z, *grid)
    assert out.shape == ref.shape == (batch, 3, 8 * grid[0], 8 * grid[1])
    assert np.abs(out - ref).max() <= ATOL


@pytest.mark.parametrize("h,w,batch,lat", [(100, 37, 2, (5, 7)), (61, 203, 1, (9, 3)), (17, 17, 2, (4, 4))])
def test_engine_onnxruntime_odd_sizes(tiny_model, exported, h, w, batch, lat):
    """Sizes that are not multiples of 8, non-square, batch 2, through InfGenEngine (crop + clamp)."""
    torch.manual_seed(2)
    z = torch.randn(batch, 4, *lat)
    eng = InfGenEngine(tiny_model, backend="onnxruntime", onnx_path=exported[0])
    assert eng.backend_name == "onnxruntime"
    out = eng.decode(z, h, w)
    with torch.no_grad():
        ref = tiny_model.decode(z, h, w).clamp(-1, 1)
    assert out.shape == (batch, 3, h, w)
    assert (out - ref).abs().max().item() <= ATOL


def test_tensorrt_flavour_has_one_plugin_node_and_standard_rest(exported, tiny_cfg):
    m = onnx.load(str(exported[1]))
    custom = [n for n in m.graph.node if n.domain != ""]
    assert [(n.domain, n.op_type) for n in custom] == [(PLUGIN_DOMAIN, PLUGIN_OP)]
    node = custom[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    C = tiny_cfg.block_out_channels[-1]
    assert attrs["plugin_namespace"] == b"infgen" and attrs["plugin_version"] == b"1"
    assert attrs["aot"] == 1  # TensorRT's parser picks the plugin's AOT implementation
    assert math.isclose(attrs["scale"], 1 / math.sqrt(C), rel_tol=1e-6)
    ops = {n.op_type for n in m.graph.node}
    assert "Resize" in ops and "GroupNormalization" in ops  # fp32: TensorRT >= 10.9 parses both as they are
    inferred = onnx.shape_inference.infer_shapes(m)
    vi = {v.name: v for v in list(inferred.graph.value_info)}
    for name in node.input:
        shape = [d.dim_param or d.dim_value for d in vi[name].type.tensor_type.shape.dim]
        assert shape[0] == "batch" and shape[2] == C and "grid_h" in str(shape[1]) and "grid_w" in str(shape[1])
    assert {(o.domain, o.version) for o in m.opset_import} >= {(PLUGIN_DOMAIN, 1)}


@pytest.mark.parametrize("batch,lat,grid", [(2, (6, 4), (7, 3)), (1, (8, 8), (12, 12))])
def test_tensorrt_flavour_numerics_with_reference_attention(tiny_model, exported, batch, lat, grid):
    """The TensorRT graph minus the plugin (attention as a local function) equals the reference."""
    torch.manual_seed(3)
    z = torch.randn(batch, 4, *lat)
    sess = session(with_reference_attention(onnx.load(str(exported[1]))))
    assert np.abs(ort_run(sess, z, *grid) - reference(tiny_model, z, *grid)).max() <= ATOL


def test_export_module_is_decode_grid_over_the_flavours_ops(tiny_model):
    """Eagerly, both flavours' wrappers compute the reference decode (the plugin op's eager body is SDPA)."""
    torch.manual_seed(4)
    z = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        ref = tiny_model.decode_grid(z, 4, 6)
        for flavour in ("onnxruntime", "tensorrt"):
            out = ExportDecode(tiny_model, flavour)(z, torch.zeros(4, 6))
            assert (out - ref).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="'onnx'"):
        ExportDecode(tiny_model, "onnx")


def test_export_cache_reuses_and_keys(tiny_model, exported):
    path = exported[0]
    mtime = path.stat().st_mtime_ns
    assert cached_export(tiny_model, "fp32", "onnxruntime", cache_dir=path.parents[2]) == path
    assert path.stat().st_mtime_ns == mtime
    base = model_digest(tiny_model, "fp32", "onnxruntime")
    assert model_digest(tiny_model, "fp16", "onnxruntime") != base
    assert model_digest(tiny_model, "fp32", "tensorrt") != base
    other = type(tiny_model)(tiny_model.config)
    assert model_digest(other, "fp32", "onnxruntime") != base


def test_ort_backend_rejects_bad_options(tiny_model, exported, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        OrtBackend(tiny_model, torch.device("cpu"), torch.bfloat16, onnx_path=exported[0])
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OrtBackend(tiny_model, torch.device("cpu"), torch.float32, onnx_path=tmp_path / "nope.onnx")


def test_auto_backend_on_cpu_is_torch_and_reported():
    eng = InfGenEngine("tiny", backend="auto", device="cpu")
    assert eng.backend_name == "torch" and eng.backend.name == "torch"


def no_double(m) -> list:
    """Names of float64 tensors of a model after strict shape inference (values, initializers, constants)."""
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    g = inferred.graph
    bad = [v.name for v in list(g.value_info) + list(g.input) + list(g.output)
           if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    bad += [i.name for i in g.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    bad += [n.name for n in g.node for a in n.attribute
            if a.type == a.TENSOR and a.t.data_type == onnx.TensorProto.DOUBLE]
    return bad


def test_tensorrt_flavour_has_no_double_and_keeps_rewrites_only_where_needed(exported, shared_onnx):
    ort_graph = onnx.load(str(exported[0]))
    assert no_double(ort_graph), "the reference graph carries INPE's float64 coordinates"
    assert no_double(onnx.load(str(exported[1]))) == []
    bf16 = onnx.load(str(shared_onnx("bf16", "tensorrt")))
    ops = {n.op_type for n in bf16.graph.node}
    assert no_double(bf16) == []
    # bf16: statistics in fp32 need the explicit form (TensorRT's importer ignores stash_type)
    assert "GroupNormalization" not in ops and "InstanceNormalization" in ops and "Resize" in ops


class Traced(Exception):
    """Raised by the stand-in exporter below once it has seen the module it was given."""


def test_export_casts_a_copy_and_leaves_the_callers_module_alone(tiny_cfg, tmp_path, monkeypatch):
    """export_onnx hands torch.onnx.export a bf16 copy of the weights; the caller's module keeps its
    dtype and values (the exporter is stood in: what it receives is the point, not the graph)."""
    torch.manual_seed(0)
    from infgen.ref.model import InfGen
    m = InfGen(tiny_cfg).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen = []

    def exporter(module, args, **kwargs):
        seen.append(module)
        raise Traced

    monkeypatch.setattr(torch.onnx, "export", exporter)
    with pytest.raises(Traced):
        export_onnx(m, tmp_path / "bf16_trt.onnx", "bf16", "tensorrt")
    (module,) = seen
    params = list(module.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    assert not {id(p) for p in params} & {id(p) for p in m.parameters()}
    after = m.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())


def test_polygraphy_lint_is_clean_on_the_tensorrt_flavour(exported):
    """polygraphy check lint (onnxruntime-based, runs on the CPU) on the fp32 TensorRT flavour, with
    the reference attention function so onnxruntime can load the custom node. (On a bf16 graph
    lint reports every bf16 node: polygraphy's linter has no numpy type for bfloat16.)"""
    pytest.importorskip("polygraphy")
    pytest.importorskip("onnx_graphsurgeon")
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    m = with_reference_attention(onnx.load(str(exported[1])))
    with tempfile.TemporaryDirectory() as d:
        path, report = Path(d) / "m.onnx", Path(d) / "lint.json"
        onnx.save(m, str(path))
        proc = subprocess.run([sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
                               "check", "lint", str(path), "-o", str(report)], capture_output=True, text=True, timeout=600)
        assert report.is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
        lint = json.loads(report.read_text())
    issues = [e for e in lint.get("lint_entries", []) if e.get("level") in ("exception", "error")]
    assert proc.returncode == 0 and issues == [], issues or proc.stderr[-2000:]


def test_cli_shows_stage_progress_on_a_terminal(tmp_path, capsys, monkeypatch, shared_onnx):
    """On a terminal, python -m infgen.export.onnx shows a bar naming each export stage on stderr (tqdm
    is in the test extra); --no-progress, or a stderr that is not a terminal, shows none. The export
    is stood in by one that announces EXPORT_STAGES and writes the run's shared export: that the real
    export announces each stage is tests/test_cache_files.py's foreign-ONNX test; the CLI exporting
    for real, as a process, is tests/test_trt_plan.py's dry-run test and docs/export.md."""
    import shutil
    import sys

    from infgen.export import onnx as export_cli
    pytest.importorskip("tqdm")
    calls, exported = [], shared_onnx("fp32", "onnxruntime")

    def export(model, out, dtype, flavour, opset, on_stage):
        calls.append((dtype, flavour, opset))
        for stage in export_cli.EXPORT_STAGES:
            on_stage(stage)
        shutil.copyfile(exported, out)
        return out
    monkeypatch.setattr(export_cli, "export_onnx", export)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert export_cli.main(["--preset", "tiny", "-o", str(tmp_path / "m.onnx")]) == 0
    out, err = capsys.readouterr()
    assert calls == [("fp32", "onnxruntime", export_cli.OPSET)] and "wrote " in out
    assert all(stage in err for stage in export_cli.EXPORT_STAGES), err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert export_cli.main(["--preset", "tiny", "-o", str(tmp_path / "m2.onnx")]) == 0
    assert not any(stage in capsys.readouterr().err for stage in export_cli.EXPORT_STAGES)
    quiet = export_cli.StageBar(enabled=False)
    for stage in export_cli.EXPORT_STAGES:
        quiet(stage)
    quiet.close()
    assert export_cli.build_parser().parse_args(["--no-progress"]).no_progress
    assert capsys.readouterr().err == ""
