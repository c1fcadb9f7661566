"""runtime/trt_backend.py without TensorRT: the execution-context policy (one per profile, created
on first use; one per exact shape on TensorRT 11.1-11.2, issue 4849), driven through a recording
stand-in engine. run() itself needs a GPU and TensorRT and is not run here (docs/export.md)."""
import types
from collections import OrderedDict

import pytest

from infgen.export.plan import bind_shapes, make_plan
from infgen.export.trt import aot_module_leak
from infgen.runtime.trt_backend import TrtBackend, context_key


@pytest.mark.parametrize("version,leaks", [("11.1.0.7", True), ("11.2.1.2", True), ("11.3.0", False),
                                           ("10.13.0.35", False), ("11.0.0", False), ("10.9", False)])
def test_aot_module_leak_versions(version, leaks):
    assert aot_module_leak(version) is leaks


class RecordingContext:
    def __init__(self, log):
        self.log, self.shapes = log, {}

    def set_optimization_profile_async(self, i, stream):
        self.log.append(("profile", i))

    def set_input_shape(self, name, shape):
        if name in self.shapes and self.shapes[name] != shape:
            self.log.append(("shape change", name))
        self.shapes[name] = shape
        return True


class RecordingEngine:
    def __init__(self):
        self.created, self.log = [], []

    def create_execution_context(self, strategy):
        assert strategy == "USER_MANAGED"
        ctx = RecordingContext(self.log)
        self.created.append(ctx)
        return ctx


def backend(per_shape: bool, leak_contexts: int = 2):
    b = object.__new__(TrtBackend)  # __init__ needs TensorRT and a GPU; only the context policy is tested
    b.trt = types.SimpleNamespace(ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="USER_MANAGED"))
    b.engine, b.stream = RecordingEngine(), types.SimpleNamespace(cuda_stream=0)
    b.plan = make_plan(256, 2048, ((1024, 1024), (2048, 2048)), batch=2)
    b.per_shape, b.leak_contexts, b.contexts = per_shape, leak_contexts, OrderedDict()
    return b


def request(b, Hp, Wp, batch=1):
    i, shapes, _ = bind_shapes(b.plan, (batch, 4, 32, 32), Hp, Wp)
    return b._context(i, shapes)


def test_contexts_are_per_profile_and_created_on_first_use():
    b = backend(per_shape=False)
    assert b.engine.created == []
    c0 = request(b, 100, 128)
    assert request(b, 40, 64) is c0 and len(b.engine.created) == 1  # same profile, same context
    c1 = request(b, 200, 256)
    assert c1 is not c0 and b.engine.log == [("profile", 0), ("profile", 1)]


def test_on_leaking_tensorrt_no_context_ever_changes_shape():
    b = backend(per_shape=True, leak_contexts=2)
    a = request(b, 100, 128)
    assert request(b, 100, 128) is a  # the same shape reuses its context
    request(b, 64, 128)
    request(b, 100, 128, batch=2)  # third shape: the least recently used context is dropped
    assert len(b.contexts) == 2 and len(b.engine.created) == 3
    assert all(e[0] != "shape change" for e in b.engine.log)
    assert context_key(0, {"grid": (3, 4)}, True) != context_key(0, {"grid": (3, 5)}, True)
    assert context_key(0, {"grid": (3, 4)}, False) == context_key(0, {"grid": (3, 5)}, False) == 0
