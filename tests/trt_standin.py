"""A minimal stand-in for TensorRT's native module, so NVIDIA's real Python plugin layer runs on the CPU.

The wheel `tensorrt-cu12-bindings` (PyPI, ~1.3 MB; 11.4.0.106 when this was written) installs the
package `tensorrt_bindings`: a native `tensorrt.so`, which cannot load here (no libnvinfer), and
NVIDIA's pure-Python `plugin/` package (register, aot_impl, TensorDesc, ShapeExpr, SymInt32,
KernelLaunchParams, the plugin creator and the AOT plugin class). `install()` puts a module named
`tensorrt` in sys.modules holding only what that plugin package touches, then loads the wheel's
`plugin/` files unchanged as `tensorrt.plugin`. What the stand-in provides, exactly:

- enums: DataType (FLOAT, HALF, BF16, INT32, ...) with aliases float32/float16/bfloat16/int32;
  TensorFormat.LINEAR; DimensionOperation (SUM, PROD, SUB, EQUAL, LESS, FLOOR_DIV, CEIL_DIV, MAX,
  MIN); PluginFieldType; PluginArgType; PluginArgDataType; TensorRTPhase;
  QuickPluginCreationRequest (its presence turns NVIDIA's AOT classes on: IS_AOT_ENABLED);
- IDimensionExpr (a constant or a named symbol combined by DimensionOperation, evaluated by
  `evaluate(expr, env)`) and IExprBuilder (constant, operation, declare_size_tensor);
- Dims (a tuple), DimsExprs (a list of a given length), PluginTensorDesc,
  DynamicPluginTensorDesc, PluginField, PluginFieldCollection;
- empty base classes IPluginV3, IPluginV3QuickCore/Build/Runtime/AOTBuild, IPluginCreatorV3Quick,
  ISymExpr, ITensor; Logger (log() ignored); get_plugin_registry() (register_creator/get_creator).

TensorRT's own part (the C++ builder calling the plugin's methods in its order: creator ->
get_output_data_types -> get_output_shapes -> set_tactic -> get_launch_params -> get_kernel) is
played by tests/test_trt_plugin.py with these objects. Nothing here is NVIDIA's code.
"""
import enum
import importlib.util
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorFormat(enum.IntEnum):
    LINEAR = 0


class DimensionOperation(enum.IntEnum):
    SUM = 0
    PROD = 1
    MAX = 2
    MIN = 3
    SUB = 4
    EQUAL = 5
    LESS = 6
    FLOOR_DIV = 7
    CEIL_DIV = 8


class PluginFieldType(enum.IntEnum):
    FLOAT16 = 0
    FLOAT32 = 1
    FLOAT64 = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    CHAR = 6
    DIMS = 7
    UNKNOWN = 8
    BF16 = 9
    INT64 = 10
    FP8 = 11
    INT4 = 12


PluginArgType = enum.IntEnum("PluginArgType", "INT")
PluginArgDataType = enum.IntEnum("PluginArgDataType", "INT8 INT16 INT32")
TensorRTPhase = enum.IntEnum("TensorRTPhase", "BUILD RUNTIME")
QuickPluginCreationRequest = enum.IntEnum("QuickPluginCreationRequest", "UNKNOWN PREFER_JIT PREFER_AOT STRICT_JIT STRICT_AOT")

_OPS = {DimensionOperation.SUM: lambda a, b: a + b, DimensionOperation.PROD: lambda a, b: a * b,
        DimensionOperation.MAX: max, DimensionOperation.MIN: min, DimensionOperation.SUB: lambda a, b: a - b,
        DimensionOperation.EQUAL: lambda a, b: int(a == b), DimensionOperation.LESS: lambda a, b: int(a < b),
        DimensionOperation.FLOOR_DIV: lambda a, b: a // b, DimensionOperation.CEIL_DIV: lambda a, b: -(-a // b)}


class IDimensionExpr:
    """A build-time constant (value), a named runtime symbol (name), or op(lhs, rhs)."""

    def __init__(self, value=None, name=None, op=None, lhs=None, rhs=None):
        self.value, self.name, self.op, self.lhs, self.rhs = value, name, op, lhs, rhs

    def is_constant(self) -> bool:
        return self.value is not None

    def get_constant_value(self) -> int:
        if self.value is None:
            raise RuntimeError("not a constant expression")
        return self.value


def evaluate(expr: IDimensionExpr, env: dict) -> int:
    """Value of an expression with its symbols bound by env (name -> int)."""
    if expr.value is not None:
        return expr.value
    if expr.name is not None:
        return env[expr.name]
    return _OPS[expr.op](evaluate(expr.lhs, env), evaluate(expr.rhs, env))


class IExprBuilder:
    def constant(self, value: int) -> IDimensionExpr:
        return IDimensionExpr(value=int(value))

    def operation(self, op, lhs: IDimensionExpr, rhs: IDimensionExpr) -> IDimensionExpr:
        if lhs.is_constant() and rhs.is_constant():  # TensorRT folds constants the same way
            return IDimensionExpr(value=_OPS[op](lhs.value, rhs.value))
        return IDimensionExpr(op=op, lhs=lhs, rhs=rhs)

    def declare_size_tensor(self, index, opt, upper):
        return IDimensionExpr(name=f"size_tensor_{index}")


class Dims(tuple):
    MAX_DIMS = 8

    def __new__(cls, shape=()):
        return super().__new__(cls, (shape,) * 0 if isinstance(shape, int) and shape == 0 else shape)


class DimsExprs(list):
    def __init__(self, n: int):
        super().__init__([None] * n)


class PluginTensorDesc:
    def __init__(self, dims=(), type=DataType.FLOAT, format=TensorFormat.LINEAR, scale=1.0):
        self.dims, self.type, self.format, self.scale = Dims(dims), type, format, scale


class DynamicPluginTensorDesc:
    def __init__(self, desc: PluginTensorDesc, min=(), opt=(), max=()):
        self.desc, self.min, self.opt, self.max = desc, Dims(min), Dims(opt), Dims(max)


class PluginField:
    def __init__(self, name, data=None, type=PluginFieldType.UNKNOWN):
        self.name, self.data, self.type = name, data, type


class PluginFieldCollection(list):
    pass


class _Base:
    def __init__(self, *args, **kwargs):
        pass


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, severity=WARNING):
        self.severity = severity

    def log(self, severity, msg):
        pass


class _Registry:
    def __init__(self):
        self.creators = {}

    def register_creator(self, creator, namespace):
        self.creators[(creator.name, creator.plugin_version, namespace)] = creator
        return True

    def get_creator(self, name, version, namespace):
        return self.creators.get((name, version, namespace))


def _nptype(t):
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
            DataType.INT8: np.int8, DataType.BOOL: np.bool_, DataType.INT64: np.int64}[t]


def bindings_plugin_dir() -> Path | None:
    """The `plugin/` folder of the installed tensorrt_bindings wheel (its __init__ is not run), or None."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "plugin"
    return d if (d / "_lib.py").is_file() else None


class _Direct:
    """monkeypatch's setitem/delitem without the undo, for a subprocess that exits afterwards."""

    @staticmethod
    def setitem(d, k, v):
        d[k] = v

    @staticmethod
    def delitem(d, k):
        del d[k]


def install(monkeypatch=_Direct) -> types.ModuleType:
    """Put the stand-in `tensorrt` and NVIDIA's `tensorrt.plugin` into sys.modules (undone by
    monkeypatch, if given); returns tensorrt.plugin."""
    plugin_dir = bindings_plugin_dir()
    if plugin_dir is None:
        raise RuntimeError("pip install tensorrt-cu12-bindings (NVIDIA's plugin layer) to run this test")
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.standin"
    trt.__path__ = []  # a package, so that `import tensorrt.plugin` resolves below
    for name, value in dict(
            DataType=DataType, TensorFormat=TensorFormat, DimensionOperation=DimensionOperation,
            PluginFieldType=PluginFieldType, PluginArgType=PluginArgType, PluginArgDataType=PluginArgDataType,
            TensorRTPhase=TensorRTPhase, QuickPluginCreationRequest=QuickPluginCreationRequest,
            IDimensionExpr=IDimensionExpr, IExprBuilder=IExprBuilder, Dims=Dims, DimsExprs=DimsExprs,
            PluginTensorDesc=PluginTensorDesc, DynamicPluginTensorDesc=DynamicPluginTensorDesc,
            PluginField=PluginField, PluginFieldCollection=PluginFieldCollection, Logger=Logger,
            float32=DataType.FLOAT, float16=DataType.HALF, bfloat16=DataType.BF16, int32=DataType.INT32,
            int8=DataType.INT8, int64=DataType.INT64, bool=DataType.BOOL, nptype=_nptype).items():
        setattr(trt, name, value)
    for name in ("IPluginV3", "IPluginV3QuickCore", "IPluginV3QuickBuild", "IPluginV3QuickRuntime",
                 "IPluginV3QuickAOTBuild", "IPluginCreatorV3Quick", "ISymExpr", "ITensor"):
        setattr(trt, name, type(name, (_Base,), {}))
    registry = _Registry()
    trt.get_plugin_registry = lambda: registry
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for key in [k for k in sys.modules if k.startswith("tensorrt.plugin")]:
        monkeypatch.delitem(sys.modules, key)
    spec = importlib.util.spec_from_file_location("tensorrt.plugin", plugin_dir / "__init__.py",
                                                  submodule_search_locations=[str(plugin_dir)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", module)
    spec.loader.exec_module(module)
    trt.plugin = module
    return module


def launch_params() -> SimpleNamespace:
    """What TensorRT hands get_launch_params to fill: grid/block/shared_mem slots."""
    return SimpleNamespace(grid_x=None, grid_y=None, grid_z=None, block_x=None, block_y=None, block_z=None,
                           shared_mem=None)


class SymExprSetter(list):
    """TensorRT's setter for the extra scalar kernel arguments: nbSymExprs, then [i] = ISymExpr."""

    @property
    def nbSymExprs(self):
        return len(self)

    @nbSymExprs.setter
    def nbSymExprs(self, n):
        self[:] = [None] * n


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def build_kernel(trt, dtype, head_dim: int, scale: float, dims=None):
    """Drive the registered infgen::FlashAttention as TensorRT's builder does: creator ->
    create_plugin(STRICT_AOT) -> get_output_data_types -> get_output_shapes -> set_tactic ->
    get_launch_params -> get_kernel. dims: the inputs' dimension expressions (default B, N
    symbolic, head_dim constant). Returns (creator, launch params, extra-arg setter, kernel name,
    PTX text, output dimension expressions)."""
    creator = trt.get_plugin_registry().get_creator("FlashAttention", "1", "infgen")
    if creator is None:
        raise LookupError("infgen::FlashAttention is not in the plugin registry")
    fields = [trt.PluginField("scale", np.array([scale]), trt.PluginFieldType.FLOAT64)]
    plg = creator.create_plugin("FlashAttention", "infgen", fields, trt.TensorRTPhase.BUILD,
                                trt.QuickPluginCreationRequest.STRICT_AOT)
    out_types = plg.get_output_data_types([dtype] * 3, [3] * 3)
    builder = trt.IExprBuilder()
    if dims is None:
        dims = [IDimensionExpr(name="B"), IDimensionExpr(name="N"), builder.constant(head_dim)]
    out_shapes = plg.get_output_shapes([dims] * 3, [], builder)
    plg.set_tactic(0)
    desc = trt.DynamicPluginTensorDesc(trt.PluginTensorDesc((-1, -1, -1), dtype))
    params, setter = launch_params(), SymExprSetter()
    plg.get_launch_params([dims] * 3, [desc] * 4, 3, params, setter, builder)
    name, ptx = plg.get_kernel([trt.PluginTensorDesc((), dtype)] * 3, [trt.PluginTensorDesc((), dtype)])
    name = name.decode() if isinstance(name, bytes) else name
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    return creator, out_types, params, setter, name, ptx, out_shapes


def ptxas(ptx: str, arch: str = "sm_90a") -> bytes:
    """Assemble a PTX text with the ptxas Triton itself uses for sm_90; returns the cubin."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas
    try:
        tool = get_ptxas(90).path
    except TypeError:  # triton 3.6: get_ptxas() takes no architecture
        tool = get_ptxas().path
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        subprocess.run([str(tool), f"-arch={arch}", "-o", str(out), str(src)], check=True,
                       capture_output=True, text=True)
        return out.read_bytes()


def main(argv=None) -> int:
    """python tests/trt_standin.py DTYPES HEAD_DIMS SCALE ALLOW_TF32 B N: register the plugin for
    sm_90a and, for every dtype x head dim (comma-separated lists, e.g. bfloat16,float32 64,512),
    build its kernel and print one JSON line of what TensorRT would receive (bound at B, N), with
    the compiled kernel's resource usage from cuobjdump, or {"error": ...} when aot_impl refuses.
    Run without TRITON_INTERPRET (kernels cannot be compiled under the interpreter)."""
    import json
    from triton.backends.compiler import GPUTarget

    from infgen.export import trt_plugin
    from infgen.kernels.toolchain import ptx_param_count
    from repo_scripts import load_script  # tests/repo_scripts.py, beside this file
    report = load_script("benchmarks/compile_report.py")
    dtype_names, head_dims, scale, allow_tf32, B, N = (argv or sys.argv[1:])
    install()
    import tensorrt as trt
    trt_plugin.register(target=GPUTarget("cuda", 90, 32), allow_tf32=allow_tf32 == "1")
    compiled = {}
    compile_entry = trt_plugin.compile_entry

    def spy(*args, **kwargs):  # keep Triton's metadata of the kernel aot_impl compiled
        compiled["kernel"], bm = compile_entry(*args, **kwargs)
        return compiled["kernel"], bm

    trt_plugin.compile_entry = spy
    env = {"B": int(B), "N": int(N)}
    for dtype_name in dtype_names.split(","):
        for head_dim in map(int, head_dims.split(",")):
            compiled.clear()
            try:
                creator, out_types, params, setter, name, ptx, out_shapes = build_kernel(
                    trt, getattr(trt, dtype_name), head_dim, float(scale))
            except ValueError as exc:
                print(json.dumps({"dtype": dtype_name, "head_dim": head_dim, "error": str(exc)}))
                continue
            md = compiled["kernel"].metadata
            # the PTX TensorRT gets, assembled by the ptxas in the triton wheel: valid PTX, and its usage
            usage = report.analyse(SimpleNamespace(asm={"cubin": ptxas(ptx)}, metadata=md))
            print(json.dumps({
                "dtype": dtype_name, "head_dim": head_dim,
                "fields": [f.name for f in creator.field_names], "out_types": [t.name for t in out_types],
                "out_shape": [evaluate(e, env) for e in out_shapes[0]],
                "launch": {k: evaluate(getattr(params, k).expr, env) for k in vars(params)},
                "extra": [(evaluate(a.expr, env), a.dtype.name) for a in setter],
                "scratch": [md.global_scratch_size, md.profile_scratch_size], "shared": md.shared,
                "usage": {k: usage[k] for k in ("regs", "stack", "stl", "shared", "mma")},
                "kernel": name, "ptx_params": ptx_param_count(ptx, name),
                "triton_ptx_params": ptx_param_count(compiled["kernel"].asm["ptx"], name),
                "ttir": compiled["kernel"].asm["ttir"],
                "sm_90a": ".target sm_90a" in ptx, "tf32": "tf32" in ptx, "mma": "mma" in ptx}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
