"""Backends own their weights; the per-size cache; the engine's backend chain for "auto"."""
import threading
from pathlib import Path

import pytest
import torch

from infgen.ref.config import preset
from infgen.ref.decode import STAGES
from infgen.ref.model import InfGen
from infgen.runtime.backend import Backend
from infgen.runtime.cache import SizeCache
from infgen.runtime.engine import InfGenEngine, auto_chain
from infgen.runtime.torch_backend import TorchBackend

CPU = torch.device("cpu")


@pytest.fixture()
def fresh_model():
    torch.manual_seed(0)
    return InfGen(preset("tiny"))  # left in training mode on purpose: the engine must not call .eval()


def snapshot(model):
    return {k: (v.dtype, v.device, v.clone()) for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, (dtype, device, value) in before.items():
        assert after[k].dtype == dtype and after[k].device == device, k
        assert torch.equal(after[k], value), k


# ----------------------------------------------------------------------------- SizeCache
@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True, None])
def test_size_cache_rejects_bad_size(bad):
    with pytest.raises(ValueError, match="cache_size"):
        SizeCache(bad)


def test_size_cache_is_lru_and_bounded():
    c = SizeCache(2)
    made = []
    make = lambda k: (lambda: made.append(k) or f"v{k}")  # noqa: E731
    assert c.get_or_make(1, make(1)) == "v1"
    assert c.get_or_make(2, make(2)) == "v2"
    assert c.get_or_make(1, make(1)) == "v1"  # hit: 1 becomes the most recent
    c.get_or_make(3, make(3))                 # evicts 2, the least recently used
    assert c.keys() == [1, 3] and 2 not in c and len(c) == 2
    c.get_or_make(2, make(2))
    assert made == [1, 2, 3, 2]


def test_size_cache_under_threads_with_evictions():
    """8 threads on a 3-entry cache with 6 keys (evictions all the time): every value returned is
    the one made for its key, the cache never holds more than 3, and no two makes overlap (made
    under the lock, so two threads missing one key cannot both make it)."""
    import random
    import time
    c = SizeCache(3)
    state = {"active": 0, "max_active": 0, "makes": 0}
    lock = threading.Lock()
    errors = []

    def make(k):
        def fn():
            with lock:
                state["active"] += 1
                state["makes"] += 1
                state["max_active"] = max(state["max_active"], state["active"])
            time.sleep(0.0005)  # widen the window a racing second maker would hit
            with lock:
                state["active"] -= 1
            return ("value", k)
        return fn

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(150):
            k = rng.randrange(6)
            v = c.get_or_make(k, make(k))
            if v != ("value", k):
                errors.append((k, v))
            if len(c) > 3:
                errors.append(("size", len(c)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert state["max_active"] == 1
    assert 6 < state["makes"] < 8 * 150  # evictions happened, and so did hits
    assert len(c) == 3 and len(set(c.keys())) == 3


def test_token_cache_of_torch_backend_is_shared_and_bounded(fresh_model):
    be = TorchBackend(fresh_model, CPU, torch.float32, cache_size=2)
    a = be.mask_and_q0(3, 4)
    assert be.mask_and_q0(3, 4)[0] is a[0]
    be.mask_and_q0(5, 5)
    be.mask_and_q0(6, 6)
    assert be.tokens.keys() == [(5, 5), (6, 6)]
    with pytest.raises(ValueError, match="cache_size"):
        TorchBackend(fresh_model, CPU, torch.float32, cache_size=0)


# ----------------------------------------------------------------------------- weight ownership
def test_torch_backend_bf16_leaves_the_callers_module_alone(fresh_model):
    before = snapshot(fresh_model)
    eng = InfGenEngine(fresh_model, backend="torch", device="cpu", dtype="bf16")
    torch.manual_seed(1)
    img = eng.decode(torch.randn(1, 4, 3, 3), 24, 16)
    assert img.shape == (1, 3, 24, 16)
    assert_unchanged(fresh_model, before)
    assert fresh_model.training  # not even .eval() was called on it
    assert eng.backend.model is not fresh_model
    assert eng.backend.model.post_quant_conv.weight.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in eng.backend.model.parameters())


def test_encode_runs_fp32_on_the_reference_weights(fresh_model):
    """With a bf16 backend, encode equals the fp32 reference model's encode (not a bf16 encode)."""
    torch.manual_seed(2)
    x = torch.rand(1, 3, 32, 24) * 2 - 1
    eng = InfGenEngine(fresh_model, backend="torch", device="cpu", dtype="bf16")
    before = snapshot(fresh_model)
    got = eng.encode(x)
    with torch.no_grad():
        want = fresh_model.eval().encode(x)
        bf16 = InfGen(fresh_model.config).to(torch.bfloat16)
        bf16.load_state_dict(fresh_model.state_dict())
        low = bf16.eval().encode(x).float()
    fresh_model.train()
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    assert not torch.equal(low, want)  # the bf16 encode really differs: the check above can fail
    assert_unchanged(fresh_model, before)


def test_backends_decode_equal_to_the_reference(tiny_model):
    torch.manual_seed(3)
    z = torch.randn(2, 4, 4, 5)
    be = TorchBackend(tiny_model, CPU, torch.float32)
    with torch.no_grad():
        ref = tiny_model.decode_grid(z, 3, 4)
    assert torch.allclose(be.run(z, 3, 4), ref, atol=1e-6, rtol=0)
    assert [n for n, _ in be.stages(3, 4)] == list(STAGES)
    assert be.covers(7, 500, 1)


# ----------------------------------------------------------------------------- backend chain
class PartialBackend(Backend):
    """A fake backend covering token grids up to `limit` per side and batch <= 2, recording runs."""

    name = "partial"

    def __init__(self, limit):
        self.limit, self.runs = limit, []

    def covers(self, batch, Hp, Wp):
        return batch <= 2 and max(Hp, Wp) <= self.limit

    def run(self, z, Hp, Wp):
        self.runs.append((z.shape[0], Hp, Wp))
        return torch.full((z.shape[0], 3, 8 * Hp, 8 * Wp), 0.25)


def test_chain_runs_the_first_backend_that_covers(tiny_model):
    eng = InfGenEngine(tiny_model, backend="torch", device="cpu")
    torch_backend = eng.backend
    fake = PartialBackend(limit=4)
    eng.backends = [fake, torch_backend]
    assert eng.backend_name == "torch"  # before any decode: still what was set (the chain's first after init)
    z = torch.randn(1, 4, 3, 3)
    small = eng.decode(z, 32, 24)          # grid 4x3: the fake covers it
    assert eng.backend_name == "partial" and fake.runs == [(1, 4, 3)]
    assert torch.equal(small, torch.full((1, 3, 32, 24), 0.25))
    big = eng.decode(z, 40, 24)            # grid 5x3: falls to torch
    assert eng.backend_name == "torch" and len(fake.runs) == 1
    torch.testing.assert_close(big, tiny_model.decode(z, 40, 24).clamp(-1, 1), atol=1e-6, rtol=0)
    eng.decode(torch.randn(3, 4, 3, 3), 16, 16)  # batch 3: torch
    assert eng.backend_name == "torch" and len(fake.runs) == 1


def test_chain_without_a_covering_backend_names_the_request(tiny_model):
    eng = InfGenEngine(tiny_model, backend="torch", device="cpu")
    eng.backend = PartialBackend(limit=2)
    assert eng.backend_name == "partial"
    with pytest.raises(ValueError, match=r"\['partial'\] covers batch 1 at token grid 5x3"):
        eng.decode(torch.randn(1, 4, 3, 3), 40, 24)


def test_engine_backend_must_be_a_backend(tiny_model):
    """A duck-typed object with name and run is refused by name; the chain stays as it was."""
    import types
    eng = InfGenEngine(tiny_model, backend="torch", device="cpu")
    before = eng.backends
    with pytest.raises(TypeError, match=r"Backend .*got SimpleNamespace"):
        eng.backend = types.SimpleNamespace(name="duck", run=lambda z, Hp, Wp: z)
    assert eng.backends is before and eng.backend_name == "torch"


def test_backend_defaults(tiny_model):
    """What the base class gives a backend that defines only name and run: covers everything, no
    stage breakdown, the reference's attentions, mask tokens computed from its model (the same
    the torch backend caches), and its SizeCache attributes as its caches."""
    class Minimal(Backend):
        name = "minimal"

        def __init__(self, model=None):
            self.model, self.kept = model, SizeCache(2)

        def run(self, z, Hp, Wp):
            return torch.zeros(z.shape[0], 3, 8 * Hp, 8 * Wp)

    bare = Minimal()
    assert bare.covers(7, 500, 1) and bare.stages(3, 4) is None and bare.ops is None
    assert bare.caches() == [bare.kept]
    with pytest.raises(ValueError, match="'minimal' has no torch weights"):
        bare.mask_and_q0(3, 4)
    mask, q0 = Minimal(tiny_model).mask_and_q0(3, 5)
    ref_mask, ref_q0 = TorchBackend(tiny_model, CPU, torch.float32).mask_and_q0(3, 5)
    assert mask.shape[:2] == (1, 15) and len(tiny_model.decoder.blocks) > 0
    torch.testing.assert_close(mask, ref_mask, atol=0, rtol=0)
    torch.testing.assert_close(q0, ref_q0, atol=0, rtol=0)
    with pytest.raises(NotImplementedError, match="Half must define run"):
        type("Half", (Backend,), {"name": "half"})().run(torch.zeros(1, 4, 2, 2), 2, 2)
    # banding and the memory model are declared, not read from names
    assert not bare.supports_banded and bare.memory_model == "torch"
    assert TorchBackend.supports_banded and TorchBackend.memory_model == "torch"
    from infgen.runtime.triton_backend import TritonBackend
    assert TritonBackend.supports_banded and TritonBackend.memory_model == "triton"


def test_banded_true_needs_a_backend_that_supports_it(tiny_model):
    from infgen.runtime.anysize import check_options

    class NoBands(Backend):
        name = "nobands"

        def run(self, z, Hp, Wp):
            return torch.zeros(z.shape[0], 3, 8 * Hp, 8 * Wp)
    with pytest.raises(ValueError, match=r"banded=True needs backend 'torch' or 'triton', got \['nobands'\]"):
        check_options(None, True, None, [NoBands()])
    assert check_options("1GB", True, 4, [NoBands(), TorchBackend(tiny_model, CPU, torch.float32)])[1:] == (True, 4)


def test_auto_on_cpu_is_torch_and_accepts_the_torch_sizes(tiny_model):
    assert auto_chain(CPU) == ["torch"]
    auto = InfGenEngine(tiny_model, backend="auto", device="cpu")
    plain = InfGenEngine(tiny_model, backend="torch", device="cpu")
    assert [b.name for b in auto.backends] == ["torch"] and auto.backend_name == "torch"
    z = torch.randn(1, 4, 2, 2)
    for h, w in [(8, 8), (64, 8), (9, 17)]:
        assert torch.equal(auto.decode(z, h, w), plain.decode(z, h, w))


def test_auto_passes_each_backend_only_its_options(tiny_model, monkeypatch):
    """With a chain of torch and a backend that fails to build, options go where they are taken and
    the failing backend is skipped with its reason; an option no backend takes is a TypeError."""
    import infgen.runtime.engine as engine_mod

    class Broken(Backend):
        name = "broken"

        def __init__(self, model, device, dtype, engine_dir="x"):
            raise RuntimeError("no TensorRT here")

    real = engine_mod.backend_class
    monkeypatch.setattr(engine_mod, "backend_class", lambda n: Broken if n == "tensorrt" else real(n))
    monkeypatch.setattr(engine_mod, "auto_chain", lambda device: ["tensorrt", "torch"])
    eng = InfGenEngine(tiny_model, backend="auto", device="cpu", cache_size=3, engine_dir="e")
    assert [b.name for b in eng.backends] == ["torch"] and eng.backend.tokens.cache_size == 3
    assert "no TensorRT here" in eng.skipped["tensorrt"]
    with pytest.raises(TypeError, match="bogus"):
        InfGenEngine(tiny_model, backend="auto", device="cpu", bogus=1)


def test_tensorrt_covers_is_its_plans_profiles():
    """TrtBackend.covers on a plan (TensorRT itself cannot run here: the object is built bare)."""
    from infgen.export.plan import make_plan
    from infgen.runtime.trt_backend import TrtBackend
    be = object.__new__(TrtBackend)
    be.plan = make_plan(256, 1024, batch=2, upscale=8, latent_channels=4)
    assert be.covers(1, 32, 32) and be.covers(2, 128, 40)
    assert not be.covers(1, 8, 8)       # 64 px: under the plan's min_res, torch's job
    assert not be.covers(1, 129, 64)    # 1032 px: over max_res
    assert not be.covers(3, 64, 64)     # batch over the plan's


def test_auto_chain_ends_at_the_first_backend_covering_every_size(tiny_model, monkeypatch):
    """tensorrt (partial coverage) then triton (covers all): torch is not built, no third weight copy."""
    import infgen.runtime.engine as engine_mod
    built = []

    def fake(name, covers_all):
        class Fake(Backend):
            def __init__(self, model, device, dtype):
                built.append(name)
                self.name = name

            def covers(self, batch, Hp, Wp):
                return covers_all or max(Hp, Wp) <= 4

            def run(self, z, Hp, Wp):
                return torch.zeros(z.shape[0], 3, 8 * Hp, 8 * Wp)
        return Fake

    classes = {"tensorrt": fake("tensorrt", False), "triton": fake("triton", True)}
    real = engine_mod.backend_class
    monkeypatch.setattr(engine_mod, "backend_class", lambda n: classes.get(n) or real(n))
    monkeypatch.setattr(engine_mod, "auto_chain", lambda device: ["tensorrt", "triton", "torch"])
    eng = InfGenEngine(tiny_model, backend="auto", device="cpu")
    assert built == ["tensorrt", "triton"] and [b.name for b in eng.backends] == ["tensorrt", "triton"]
    assert eng.backend_name == "tensorrt"
    z = torch.randn(1, 4, 2, 2)
    eng.decode(z, 32, 32)
    assert eng.backend_name == "tensorrt"
    eng.decode(z, 40, 8)
    assert eng.backend_name == "triton"


# ----------------------------------------------------------------------------- auto with TensorRT that cannot build
@pytest.fixture()
def chain_with_tensorrt(monkeypatch, tmp_path):
    """An engine on the CPU whose "auto" chain is the real auto_chain of a CUDA machine with
    TensorRT and Triton (both probes patched true), and whose TrtBackend runs its real __init__ ->
    locate -> infgen.export.trt.engine_for up to the point of building (the CUDA device guard, the
    device context, the TensorRT version and the GPU name are stood in; no TensorRT here)."""
    import contextlib
    import functools

    import infgen.export.trt as trt_mod
    import infgen.runtime.engine as engine_mod
    import infgen.runtime.triton_backend as triton_mod
    import infgen.runtime.trt_backend as trt_backend_mod
    from infgen.runtime.trt_backend import TrtBackend

    monkeypatch.setattr(trt_backend_mod, "tensorrt_available", lambda: True)
    monkeypatch.setattr(triton_mod, "triton_available", lambda device: True)  # CPU: Triton's interpreter
    real_chain = engine_mod.auto_chain
    assert real_chain(torch.device("cuda")) == ["tensorrt", "triton", "torch"]
    monkeypatch.setattr(engine_mod, "auto_chain", lambda device: real_chain(torch.device("cuda")))
    real_init = TrtBackend.__init__

    @functools.wraps(real_init)  # keeps TrtBackend's signature: the engine routes its options by it
    def on_cuda(self, model, device, dtype, **options):
        real_init(self, model, torch.device("cuda", 0), dtype, **options)

    monkeypatch.setattr(TrtBackend, "__init__", on_cuda)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(trt_mod, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    onnx = tmp_path / "infgen_tensorrt.onnx"
    onnx.write_bytes(b"stand-in: engine_for only hashes it before the volume check")
    return trt_mod, {"engine_dir": str(tmp_path / "engines"), "onnx_path": str(onnx)}


def _decode_matches_torch(eng, tiny_model):
    z = torch.randn(1, 4, 3, 4)
    ref = InfGenEngine(tiny_model, backend="torch", device="cpu")
    torch.testing.assert_close(eng.decode(z, 24, 32), ref.decode(z, 24, 32), atol=1e-4, rtol=0)


@pytest.mark.parametrize("failure", ["unbuildable", "missing"])
def test_auto_falls_back_when_the_tensorrt_engine_cannot_be_built(chain_with_tensorrt, tiny_model, failure,
                                                                   monkeypatch, caplog):
    """tensorrt is "available" but its backend cannot be built: a plan whose profile passes 2^31
    elements (EngineUnbuildable from engine_for's volume check, before any build), or a TensorRT
    that is missing or too old (TensorRTMissing). auto skips it, says why, and the next backend
    (triton) is built and decodes; torch, after a backend covering every size, is not built."""
    from infgen.export.plan import make_plan
    trt_mod, options = chain_with_tensorrt
    if failure == "unbuildable":
        monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: type("trt", (), {"__version__": "10.13.0.35"}))
        options["plan"] = make_plan(256, 4096, batch=8, upscale=tiny_model.config.upscale,
                                    latent_channels=tiny_model.config.latent_channels)  # square, uncapped boxes
        expected = "EngineUnbuildable: profile 3"
    else:
        def missing():
            raise trt_mod.TensorRTMissing("TensorRT 10.3 is too old: the Python plugin API needs tensorrt >= 10.9")
        monkeypatch.setattr(trt_mod, "import_tensorrt", missing)
        expected = "TensorRTMissing: TensorRT 10.3 is too old"
    with caplog.at_level("WARNING", logger="infgen.runtime.engine"):
        eng = InfGenEngine(tiny_model, backend="auto", device="cpu", **options)
    assert list(eng.skipped) == ["tensorrt"] and eng.skipped["tensorrt"].startswith(expected), eng.skipped
    assert "skipping tensorrt" in caplog.text and expected.split(": ")[1] in caplog.text
    assert [b.name for b in eng.backends] == ["triton"] and eng.backend_name == "triton"
    assert not any(Path(options["engine_dir"]).rglob("*")), "nothing was built, cached or timed"
    _decode_matches_torch(eng, tiny_model)
    assert eng.backend_name == "triton"


def test_sizes_tensorrt_does_not_cover_go_to_the_next_backend(tiny_model):
    """A TrtBackend (built bare: no TensorRT here) whose plan covers outputs 256..512 at batch 1
    runs those; a size under min_res, over max_res or a batch over the plan's goes to torch."""
    from infgen.export.plan import make_plan
    from infgen.runtime.trt_backend import TrtBackend
    trt = object.__new__(TrtBackend)
    trt.plan = make_plan(256, 512, ((256, 256),), batch=1, upscale=tiny_model.config.upscale,
                         latent_channels=tiny_model.config.latent_channels)
    runs = []
    trt.run = lambda z, Hp, Wp: runs.append((z.shape[0], Hp, Wp)) or torch.zeros(z.shape[0], 3, 8 * Hp, 8 * Wp)
    eng = InfGenEngine(tiny_model, backend="torch", device="cpu")
    torch_backend = eng.backend
    eng.backends = [trt, torch_backend]
    ref = InfGenEngine(tiny_model, backend="torch", device="cpu")
    z = torch.randn(1, 4, 3, 4)
    assert torch.equal(eng.decode(z, 256, 320), torch.zeros(1, 3, 256, 320))
    assert eng.backend_name == "tensorrt" and runs == [(1, 32, 40)]
    for latent, h, w in [(z, 64, 64), (z, 256, 600), (torch.randn(2, 4, 3, 4), 256, 256)]:
        out = eng.decode(latent, h, w)
        assert eng.backend_name == "torch" and len(runs) == 1, (h, w)
        torch.testing.assert_close(out, ref.decode(latent, h, w), atol=1e-6, rtol=0)
