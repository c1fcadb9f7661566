"""Cache files are verified by content hash, never loaded blindly (#18 item 1, #34): the one file
cache (infgen.export.cache) of both artifacts it holds, exported ONNX files (cached_export) and
TensorRT engines (engine_for, the build stubbed). Every damage to an entry makes its caller build
it again, once, and load what it built."""
import hashlib
import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import infgen.export.onnx as export_mod
from infgen.export import cache
from infgen.export.cache import check, data_path, file_sha256, sidecar_path
from infgen.export.onnx import cached_export, model_digest
from infgen.export.plan import make_plan
from infgen.export.trt import engine_for
from infgen.runtime.engine import InfGenEngine

KINDS = ("onnx", "engine")
# A plan the tiny preset's engine could be built for: outputs 16..200 px, batch 1..2.
SMALL_PLAN = make_plan(16, 200, ((64, 64),), batch=2, upscale=8, latent_channels=4, latent_range=(4, 8, 16))


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
def exported(tiny_model, tmp_path_factory, shared_onnx):
    """(cache dir, path) of a real export of the tiny preset through the cache: the run's shared
    export (conftest's shared_onnx), its entry (file + sidecar) copied into a cache of this module's
    own, which the tests damage; the copy is found valid, not exported again."""
    import shutil
    src = shared_onnx("fp32", "onnxruntime")
    d = tmp_path_factory.mktemp("cache")
    entry = d / src.relative_to(src.parents[2])
    shutil.copytree(src.parent, entry.parent)
    assert cached_export(tiny_model, "fp32", "onnxruntime", cache_dir=d) == entry
    return d, entry


class Entry:
    """One cache entry made by its real caller, whose build is a stand-in that counts its calls:
    the ONNX export writes the bytes of a real export; the TensorRT build returns bytes naming the plan."""

    def __init__(self, kind, tiny_model, exported, tmp_path, monkeypatch):
        self.kind, self.builds, self.fail = kind, 0, None
        if kind == "onnx":
            good = exported[1].read_bytes()

            def export(model, out, dtype, flavour):
                self.builds += 1
                if self.fail == "external data":  # what the exporter writes for weights over 2 GB
                    data_path(out).write_bytes(b"weights")
                elif self.fail:
                    raise RuntimeError("export failed")
                out.write_bytes(good)
                return out
            monkeypatch.setattr(export_mod, "export_onnx", export)
            self.load = lambda: cached_export(tiny_model, "fp32", "onnxruntime", cache_dir=tmp_path)
            self.key = model_digest(tiny_model, "fp32", "onnxruntime")
            self.fields = {"flavour": "onnxruntime", "dtype": "fp32"}
            self.foreign = foreign_onnx
        else:
            onnx_file = tmp_path / "m.onnx"
            onnx_file.write_bytes(b"stands in for the TensorRT-flavour ONNX (the build is stubbed)")

            def build(onnx_path, plan, timing_cache, allow_tf32=False):
                self.builds += 1
                if self.fail:
                    raise RuntimeError("build failed")
                return b"ENGINE" + plan.to_json().encode()

            def load():
                return engine_for(tiny_model, "bf16", SMALL_PLAN, tmp_path / "engines", onnx_path=onnx_file,
                                  trt_version="10.13.0.35", gpu="NVIDIA H100 80GB HBM3", build=build).path
            self.load = load
            self.key = None  # from the first load
            self.fields = {"onnx": str(onnx_file), "tensorrt": "10.13.0.35", "gpu": "NVIDIA H100 80GB HBM3",
                           "dtype": "bf16", "tf32": False, "plan": json.loads(SMALL_PLAN.to_json())}
            other = make_plan(16, 120, ((64, 64),), batch=1, upscale=8, latent_channels=4, latent_range=(4, 8, 16))
            self.foreign = lambda path: path.write_bytes(b"ENGINE" + other.to_json().encode())  # another engine
        self.path = self.load()
        if self.key is None:
            self.key = json.loads(sidecar_path(self.path).read_text())["key"]
        self.good, self.builds = self.path.read_bytes(), 0

    def temporaries(self) -> list:
        return [p.name for p in self.path.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.fixture(params=KINDS)
def entry(request, tiny_model, exported, tmp_path, monkeypatch):
    return Entry(request.param, tiny_model, exported, tmp_path, monkeypatch)


def test_sidecar_holds_key_size_sha256_and_the_callers_fields(entry):
    meta = json.loads(sidecar_path(entry.path).read_text())
    assert meta["key"] == entry.key
    assert meta["size"] == len(entry.good) == entry.path.stat().st_size
    assert meta["sha256"] == file_sha256(entry.path) == hashlib.sha256(entry.good).hexdigest()
    assert {k: meta[k] for k in entry.fields} == entry.fields
    assert entry.temporaries() == []
    if entry.kind == "onnx":
        assert entry.path.parent.name == entry.key[:32] and entry.path.name == "model.onnx"
    else:
        assert entry.path.name == f"infgen-{entry.key[:24]}.engine"


def sidecar_with(**changes):
    def damage(e):
        side = sidecar_path(e.path)
        side.write_text(json.dumps({**json.loads(side.read_text()), **changes}))
    return damage


def write_sidecar(data: bytes):
    return lambda e: sidecar_path(e.path).write_bytes(data)


# damage -> (what it does to the entry, words of the reason it is refused; None: any reason)
DAMAGES = {
    "foreign file": (lambda e: e.foreign(e.path), None),
    "no file": (lambda e: e.path.unlink(), "not cached"),
    "no sidecar": (lambda e: sidecar_path(e.path).unlink(), "not cached"),
    "sidecar not utf-8": (write_sidecar(b"\xff\xfe\x00garbage"), "not UTF-8"),
    "sidecar not json": (write_sidecar(b"{not json"), "not JSON"),
    "sidecar nested json": (write_sidecar(("[" * 100000 + "]" * 100000).encode()), "not JSON"),
    "sidecar a list": (write_sidecar(b"[]"), "not a JSON object"),
    "sidecar null": (write_sidecar(b"null"), "not a JSON object"),
    "sidecar too large": (write_sidecar(b" " * (cache.MAX_SIDECAR_BYTES + 1)), "too large"),
    "sidecar for another key": (sidecar_with(key="f" * 64), "key mismatch"),
    "sidecar key null": (write_sidecar(b'{"key": null}'), "key mismatch"),
    "sidecar size a string": (lambda e: sidecar_with(size=str(len(e.good)))(e), "size mismatch"),
    "sidecar wrong sha": (sidecar_with(sha256="0" * 64), "corrupt"),
    "sidecar sha an int": (sidecar_with(sha256=5), "corrupt"),
    "truncated file": (lambda e: e.path.write_bytes(e.good[: len(e.good) // 2]), "size mismatch"),
    "flipped byte": (lambda e: e.path.write_bytes(e.good[:-1] + bytes([e.good[-1] ^ 1])), "corrupt"),
    "stale data file": (lambda e: data_path(e.path).write_bytes(b"x" * 10), "size mismatch"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_entry_is_rebuilt_once_never_loaded(entry, damage):
    do, words = DAMAGES[damage]
    do(entry)
    reason = check(entry.path, entry.key)
    assert reason is not None and (words is None or words in reason), reason
    if entry.path.is_file():  # what the engine cache reads: the same verdict on the bytes read
        assert cache.read(entry.path, entry.key) == (None, reason)
    assert entry.load() == entry.path
    assert entry.builds == 1  # built again, once
    assert entry.path.read_bytes() == entry.good and check(entry.path, entry.key) is None
    assert not data_path(entry.path).exists() and entry.temporaries() == []
    entry.load()
    assert entry.builds == 1  # the rebuilt entry is loaded, not built again


@pytest.mark.parametrize("fail", ["build raises", "external data"])
def test_a_failed_build_leaves_no_entry_and_no_temporary_file(entry, fail):
    """The sidecar goes first and comes back last: rebuilding a damaged entry with a build that
    fails (or, for the ONNX cache, an export with external data, which cannot be renamed) leaves
    nothing loadable behind."""
    if fail == "external data" and entry.kind == "engine":
        pytest.skip("an engine is one file: only an ONNX export writes external data")
    entry.path.write_bytes(entry.good[:-1])
    entry.fail = fail
    with pytest.raises(ValueError if fail == "external data" else RuntimeError,
                       match="too large for the ONNX cache" if fail == "external data" else "failed"):
        entry.load()
    assert check(entry.path, entry.key) is not None and cache.read(entry.path, entry.key)[0] is None
    assert entry.temporaries() == [] and not any(p.name.endswith(".data") for p in entry.path.parent.iterdir())
    entry.fail = None
    entry.load()
    assert entry.builds == 2 and check(entry.path, entry.key) is None


def test_file_sha256_covers_the_external_data_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"graph")
    assert file_sha256(path) == hashlib.sha256(b"graph").hexdigest()
    data_path(path).write_bytes(b"weights")
    assert file_sha256(path) == hashlib.sha256(b"graphweights").hexdigest()
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.onnx")


def test_replace_file_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "profile.json"
    assert cache.replace_file(path, b"old") == path
    cache.replace_file(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["profile.json"]


def test_foreign_onnx_is_reexported_and_decodes_like_the_reference(tiny_model, exported, monkeypatch):
    """Another valid ONNX put at the cache's path: the runtime exports again, for real, once, gets
    the first export's bytes (the export is deterministic) and decodes like the reference. The real
    export announces each of EXPORT_STAGES, in order, to its on_stage (what the CLI's progress bar
    shows: tests/test_export_onnx.py)."""
    d, path = exported
    good = path.read_bytes()
    real_export, exports, stages = export_mod.export_onnx, [], []

    def export(model, out, dtype, flavour):
        exports.append(flavour)
        return real_export(model, out, dtype, flavour, on_stage=stages.append)
    monkeypatch.setattr(export_mod, "export_onnx", export)
    foreign_onnx(path)
    assert check(path, model_digest(tiny_model, "fp32", "onnxruntime")) is not None
    eng = InfGenEngine(tiny_model, backend="onnxruntime", cache_dir=d)
    assert exports == ["onnxruntime"]  # re-exported once, not loaded
    assert stages == list(export_mod.EXPORT_STAGES)
    assert path.read_bytes() == good
    torch.manual_seed(0)
    z = torch.randn(1, 4, 6, 6)
    ref = InfGenEngine(tiny_model).decode(z, 40, 56)
    assert (eng.decode(z, 40, 56) - ref).abs().max().item() <= 1e-4
