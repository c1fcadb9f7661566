"""Cache files are verified by content hash, never loaded blindly (#18 item 1, last bullet): the
ONNX export cache's sidecar sha256; TensorRT's engine sidecar is covered in tests/test_trt_plan.py."""
import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from infgen.export.onnx import cached_export, file_sha256, sidecar_path, verify_cached
from infgen.runtime.engine import InfGenEngine


def foreign_onnx(path) -> None:
    """A valid ONNX with the decode's input and output names that is not the decode (image = latent)."""
    g = helper.make_graph(
        [helper.make_node("Identity", ["latent"], ["image"])], "foreign",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["B", 4, "h", "w"]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["H", "W"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 4, "h", "w"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 22)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def cached(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    path = cached_export(tiny_model, "fp32", "onnxruntime", cache_dir=d)
    return d, path


def test_sidecar_written_at_export_time(cached):
    d, path = cached
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["sha256"] == file_sha256(path)
    assert path.parent.name == meta["key"][:32]


@pytest.mark.parametrize("damage", ["foreign onnx", "no sidecar", "sidecar not utf-8", "sidecar nested json",
                                    "sidecar wrong sha", "truncated file"])
def test_damaged_entry_is_rebuilt_and_decodes_like_the_reference(tiny_model, cached, damage, monkeypatch):
    """Each damage makes the cache export again, once, and load what it exported. The export is
    deterministic: the foreign-ONNX case re-exports for real and gets the first export's bytes; the
    other cases stand in an export that writes those bytes (an export takes seconds; the cache's
    decision and bookkeeping after it are what differ per damage)."""
    import infgen.export.onnx as export_mod
    d, path = cached
    good = path.read_bytes()
    real_export, exports = export_mod.export_onnx, []

    def export(model, out, dtype, flavour):
        exports.append((dtype, flavour))
        if damage == "foreign onnx":
            return real_export(model, out, dtype, flavour)
        out.write_bytes(good)
        return out
    monkeypatch.setattr(export_mod, "export_onnx", export)
    side = sidecar_path(path)
    if damage == "foreign onnx":
        foreign_onnx(path)
    elif damage == "no sidecar":
        side.unlink()
    elif damage == "sidecar not utf-8":
        side.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "sidecar nested json":
        side.write_text("[" * 100000 + "]" * 100000)
    elif damage == "sidecar wrong sha":
        meta = json.loads(side.read_text())
        side.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    else:
        path.write_bytes(good[: len(good) // 2])
    key = json.loads(side.read_text())["key"] if damage == "foreign onnx" else None
    assert verify_cached(path, key or "x") is not None
    eng = InfGenEngine(tiny_model, backend="onnxruntime", cache_dir=d)
    assert [f for _, f in exports] == ["onnxruntime"]  # re-exported once, not loaded
    assert path.read_bytes() == good
    assert verify_cached(path, json.loads(side.read_text())["key"]) is None
    torch.manual_seed(0)
    z = torch.randn(1, 4, 6, 6)
    ref = InfGenEngine(tiny_model).decode(z, 40, 56)
    assert (eng.decode(z, 40, 56) - ref).abs().max().item() <= 1e-4
