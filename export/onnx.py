"""ONNX export of the InfGen decode: one graph for every output size.

    python -m infgen.export.onnx --preset tiny --out infgen_tiny.onnx
    python -m infgen.export.onnx --checkpoint ckpt/ --dtype bf16 --flavour tensorrt --out infgen_trt.onnx

The spec, in one place (STYLE rule 9):

    inputs   latent (batch, C, latent_h, latent_w) float32   scaled diffusion latent
             grid   (grid_h, grid_w)              float32   values unused; its SHAPE is the
                                                            mask-token grid (H', W')
    output   image  (batch, 3, 8*grid_h, 8*grid_w) float32  uncropped, unclamped
    dynamic  batch, latent_h, latent_w, grid_h, grid_w
    opset    OPSET (22), default ONNX domain only, plus "infgen" in the TensorRT flavour

Two flavours of the same function:
Both are infgen.ref.decode.decode_grid over an op table (export_ops):
- "onnxruntime": the reference ops (TORCH_OPS). Standard ops only:
  attention is MatMul/Softmax/MatMul, GroupNorm is Reshape + InstanceNormalization + affine
  Mul/Add, nearest 2x is Resize(nearest, asymmetric, floor).
- "tensorrt": the mid-block self-attention (one head, head dim = channels, 512 for the paper
  preset) is one node infgen::FlashAttention (aot=1) that TensorRT's ONNX parser hands to the
  plugin of export/trt_plugin.py (its kernel is the project's Triton flash kernel). No float64
  tensors; GroupNormalization-21 kept as is in fp32 and expanded as above in bf16/fp16; nearest
  2x is Resize (`tensorrt_rewrites` says why each rewrite is kept).
See docs/export.md for why each op is expressed as it is.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from infgen.export import cache
from infgen.export.spec import DYNAMIC_DIMS, FLAVOURS, INPUTS, OPSET, OUTPUTS, PLUGIN_VERSION  # the spec
from infgen.export.spec import PLUGIN_NAME as PLUGIN_OP
from infgen.export.spec import PLUGIN_NAMESPACE as PLUGIN_DOMAIN
from infgen.ref.config import dtype_name, parse_dtype
from infgen.ref.decode import TORCH_OPS, Ops, decode_grid
from infgen.ref.model import InfGen, copy_model

# Sample shapes traced by torch.export: every dynamic size >= 2 (0 and 1 get specialised).
SAMPLE_BATCH, SAMPLE_LATENT, SAMPLE_GRID = 2, (4, 6), (3, 5)
# What export_onnx reports to its on_stage callback, in order (the CLI's progress bar).
EXPORT_STAGES = ("trace and convert (torch.export)", "save", "graph rewrites", "check (onnx.checker)")


# ----------------------------------------------------------------------------- custom op
@torch.library.custom_op("infgen::flash_attention", mutates_args=())
def flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The torch custom op infgen::flash_attention, which the TensorRT flavour exports as the plugin
    node infgen::FlashAttention (not the Triton kernel infgen.kernels.attention.flash_attention).
    Single-head attention softmax(q k^T * scale) v: q, k, v (B, N, D) -> (B, N, D). Eager: PyTorch SDPA."""
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]


@flash_attention_op.register_fake
def _(q, k, v, scale):
    return torch.empty_like(q)


def _plugin_schema():
    """OpSchema of infgen::FlashAttention (the exporter needs it to know the node's one output)."""
    import onnx
    S = onnx.defs.OpSchema
    return S(PLUGIN_OP, PLUGIN_DOMAIN, 1,
             inputs=[S.FormalParameter(n, "T") for n in ("q", "k", "v")],
             outputs=[S.FormalParameter("o", "T")],
             type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
             attributes=[S.Attribute("scale", S.AttrType.FLOAT, "softmax scale"),
                         S.Attribute("plugin_namespace", S.AttrType.STRING, "TensorRT plugin namespace"),
                         S.Attribute("plugin_version", S.AttrType.STRING, "TensorRT plugin version"),
                         S.Attribute("aot", S.AttrType.INT, "1: use the plugin's ahead-of-time implementation")])


def _flash_attention_onnx(q, k, v, scale: float):
    """Translation of infgen::flash_attention into one ONNX node in the "infgen" domain.
    plugin_namespace / plugin_version are the attributes TensorRT's parser looks plugins up by;
    aot=1 asks it for the plugin's AOT implementation (TensorRT's quickly_deployable_plugins sample:
    a bool attribute "aot", which ONNX stores as INT 1)."""
    import onnxscript
    op = onnxscript.values.Op(onnxscript.values.Opset(PLUGIN_DOMAIN, 1), PLUGIN_OP, _plugin_schema())
    return op(q, k, v, scale=scale, plugin_namespace=PLUGIN_DOMAIN, plugin_version=PLUGIN_VERSION, aot=1)


# ----------------------------------------------------------------------------- export module
def _flash_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The mid block's attention core as infgen::flash_attention. q, k, v (B, 1, N, C) -> (B, 1, N, C)."""
    return flash_attention_op(q[:, 0], k[:, 0], v[:, 0], 1.0 / math.sqrt(q.shape[-1]))[:, None]


def export_ops(flavour: str) -> Ops:
    """The op table of a flavour: the reference ops, and for TensorRT the plugin attention (nearest
    2x stays Resize: TensorRT's Resize takes bf16, docs/export.md)."""
    if flavour == "onnxruntime":
        return TORCH_OPS
    if flavour == "tensorrt":
        return dataclasses.replace(TORCH_OPS, self_attention=_flash_self_attention)
    raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")


class ExportDecode(nn.Module):
    """(latent (B, C, h_l, w_l) float32, grid (H', W')) -> image (B, 3, 8H', 8W') float32:
    infgen.ref.decode.decode_grid over the flavour's op table."""

    def __init__(self, model: InfGen, flavour: str):
        super().__init__()
        self.ops = export_ops(flavour)
        self.model, self.flavour = model, flavour

    def forward(self, latent: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        Hp, Wp = grid.shape
        return decode_grid(self.ops, self.model, latent, Hp, Wp).float()  # (B, 3, 8H', 8W')


def sample_inputs(cfg, batch: int = SAMPLE_BATCH, latent=SAMPLE_LATENT, grid=SAMPLE_GRID):
    """(latent, grid) example tensors with the given shapes."""
    return (torch.randn(batch, cfg.latent_channels, *latent), torch.zeros(*grid))


# ----------------------------------------------------------------------------- export
def check_opset(opset) -> None:
    """The exporter writes (and its graph rewrites and checks assume) opset OPSET only: any other
    is refused rather than written as OPSET under another name (ValueError naming it)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset != OPSET:
        raise ValueError(f"opset must be {OPSET} (the export spec's; others are not supported), got {opset!r}")


@contextlib.contextmanager
def quiet_exporter():
    """Silence two messages torch.onnx's exporter prints on every export that say nothing about
    ours: one log line per torchvision op it would register a translation for (nms, roi_align, ...)
    when torchvision is not installed (the decode uses no torchvision op), and torch's own
    FutureWarning on its deprecated pytree LeafSpec. Other warnings and errors pass."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        log.setLevel(level)


def export_onnx(model: InfGen, out: str | Path, dtype="fp32", flavour: str = "onnxruntime",
                opset: int = OPSET, on_stage=None) -> Path:
    """Export model (cast to dtype, on the CPU) to out; returns out. External data (out + '.data')
    is written when the weights pass 2 GB. Validated with onnx.checker and strict shape inference.
    on_stage(name): called as each of EXPORT_STAGES starts (a progress bar)."""
    import onnx
    stage = on_stage or (lambda name: None)
    check_opset(opset)
    dtype = parse_dtype(dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = copy_model(model, "cpu", dtype)  # the caller's module is not touched
    module = ExportDecode(model, flavour).eval()
    D = torch.export.Dim.DYNAMIC
    dynamic = {name: {axis: D for axis in axes} for name, axes in DYNAMIC_DIMS.items()}
    table = {torch.ops.infgen.flash_attention.default: _flash_attention_onnx}
    stage(EXPORT_STAGES[0])
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(module, sample_inputs(model.config), dynamo=True, opset_version=opset,
                                    input_names=list(INPUTS), output_names=list(OUTPUTS),
                                    dynamic_shapes=dynamic, custom_translation_table=table,
                                    optimize=True, verbose=False)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = nbytes >= 2 * 1024**3 - 64 * 1024**2
    for p in (out, out.with_name(out.name + ".data")):
        p.unlink(missing_ok=True)
    stage(EXPORT_STAGES[1])
    program.save(str(out), external_data=external)
    stage(EXPORT_STAGES[2])
    proto = onnx.load(str(out), load_external_data=False)
    name_dims(proto)
    if flavour == "tensorrt":
        tensorrt_rewrites(proto, dtype)
    else:
        expand_group_norm(proto)
    onnx.save(proto, str(out))
    stage(EXPORT_STAGES[3])
    check_onnx(out)
    return out


def name_dims(proto) -> None:
    """Rename the exporter's symbols (s38, 8*s38, ...) to DYNAMIC_DIMS names everywhere in the graph."""
    g = proto.graph
    rename = {}
    for inp in g.input:
        for axis, name in DYNAMIC_DIMS.get(inp.name, {}).items():
            sym = inp.type.tensor_type.shape.dim[axis].dim_param
            if sym:
                rename[sym] = name
    if not rename:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(rename, key=len, reverse=True))) + r")\b")
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: rename[m.group(1)], d.dim_param)


def expand_group_norm(proto) -> int:
    """Rewrite every GroupNormalization-21 node as Cast(float) -> Reshape (B, G, -1) ->
    InstanceNormalization -> Reshape back -> Cast like X -> per-channel Mul/Add: the same function
    (stash_type=1 statistics in fp32, per-channel affine) in ops every TensorRT parser reads the
    same way. Returns the number of nodes rewritten."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    g = proto.graph
    nodes, n = [], 0
    for node in g.node:
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        G, eps = int(attrs["num_groups"]), float(attrs.get("epsilon", 1e-5))
        x, scale, bias = node.input
        t = f"{node.name or node.output[0]}_gn"
        g.initializer.extend([numpy_helper.from_array(np.array([0, G, -1], np.int64), f"{t}_shape"),
                              numpy_helper.from_array(np.ones(G, np.float32), f"{t}_ones"),
                              numpy_helper.from_array(np.zeros(G, np.float32), f"{t}_zeros"),
                              numpy_helper.from_array(np.array([1, 2], np.int64), f"{t}_axes")])
        nodes += [helper.make_node("Cast", [x], [f"{t}_xf"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Reshape", [f"{t}_xf", f"{t}_shape"], [f"{t}_grouped"]),
                  helper.make_node("InstanceNormalization", [f"{t}_grouped", f"{t}_ones", f"{t}_zeros"],
                                   [f"{t}_normed"], epsilon=eps),
                  helper.make_node("Shape", [x], [f"{t}_xshape"]),
                  helper.make_node("Reshape", [f"{t}_normed", f"{t}_xshape"], [f"{t}_back"]),
                  helper.make_node("CastLike", [f"{t}_back", x], [f"{t}_y"]),
                  helper.make_node("Unsqueeze", [scale, f"{t}_axes"], [f"{t}_scale"]),
                  helper.make_node("Unsqueeze", [bias, f"{t}_axes"], [f"{t}_bias"]),
                  helper.make_node("Mul", [f"{t}_y", f"{t}_scale"], [f"{t}_scaled"]),
                  helper.make_node("Add", [f"{t}_scaled", f"{t}_bias"], list(node.output))]
        n += 1
    del g.node[:]
    g.node.extend(nodes)
    return n


def tensorrt_rewrites(proto, dtype: torch.dtype) -> dict:
    """The TensorRT flavour's graph rewrites, each kept only where a TensorRT >= 10.9 (MIN_TENSORRT)
    needs it (docs/export.md, "Graph hygiene"): DOUBLE tensors become FLOAT (TensorRT has no
    float64: its parser would cast them down itself); GroupNormalization-21 is expanded for bf16
    and fp16 only (TensorRT 10.9 parses opset-21 GroupNormalization, but its importer does not
    read stash_type, so fp32 statistics need the explicit Casts); Resize stays (TensorRT's Resize
    takes bf16). Returns the number of rewrites of each kind."""
    return {"double": demote_double(proto),
            "group_norm": expand_group_norm(proto) if dtype != torch.float32 else 0}


def demote_double(proto) -> int:
    """Make every float64 tensor float32: Cast(to=DOUBLE) nodes, DOUBLE initializers and Constant
    values, and DOUBLE entries of value_info. The float64 in the exported graph is INPE's token
    coordinates ((i + 0.5) / h over Range on the grid's shape); in fp32 they differ by at most
    1 ulp before the model's own Cast to fp32. Returns the number of tensors changed."""
    from onnx import TensorProto, numpy_helper
    g, n = proto.graph, 0
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.DOUBLE:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float32"), init.name))
            n += 1
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.DOUBLE:
                a.i, n = TensorProto.FLOAT, n + 1
            elif a.type == a.TENSOR and a.t.data_type == TensorProto.DOUBLE:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float32"), a.t.name))
                n += 1
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.DOUBLE:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return n


def check_onnx(path: str | Path) -> None:
    """onnx.checker (full check, by path so external data works) + strict shape inference."""
    import onnx
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", strict_mode=True)
    Path(str(path) + ".inferred").unlink()


def with_reference_attention(proto):
    """A copy of a TensorRT-flavour model in which infgen::FlashAttention is defined as a local
    function with the standard-op body MatMul(Softmax(MatMul(q, k^T) * scale), v), so onnxruntime
    can run the TensorRT-flavour graph. (TensorRT's parser would inline such a function instead of
    calling the plugin, which is why the exported file does not carry it.)"""
    import onnx
    from onnx import helper
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    scale = helper.make_node("Constant", [], ["s"])
    scale.attribute.append(onnx.AttributeProto(name="value_float", type=onnx.AttributeProto.FLOAT,
                                               ref_attr_name="scale"))
    nodes = [scale,
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("CastLike", ["s", "qk"], ["sc"]),
             helper.make_node("Mul", ["qk", "sc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"])]
    fn = helper.make_function(PLUGIN_DOMAIN, PLUGIN_OP, ["q", "k", "v"], ["o"], nodes,
                              [helper.make_opsetid("", OPSET)],
                              attributes=["scale", "plugin_namespace", "plugin_version", "aot"])
    m.functions.append(fn)
    return m


# ----------------------------------------------------------------------------- cache + CLI
def model_digest(model: InfGen, dtype, flavour: str, opset: int = OPSET) -> str:
    """sha256 of everything an export depends on: weights, config, dtype, flavour, opset, torch."""
    h = hashlib.sha256()
    h.update(model.config.to_json().encode())
    h.update(f"{dtype_name(parse_dtype(dtype))}|{flavour}|{opset}|{torch.__version__}".encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cached_export(model: InfGen, dtype="fp32", flavour: str = "onnxruntime", cache_dir=None) -> Path:
    """The ONNX file for (weights, config, dtype, flavour), exported on first use into cache_dir
    (default $INFGEN_CACHE or ~/.cache/infgen) as onnx/<digest[:32]>/model.onnx, an entry of the
    file cache (infgen.export.cache, keyed by model_digest): every use checks the file against its
    sidecar model.onnx.json (written after the file: no sidecar, no load); a missing or damaged
    sidecar or a file whose bytes differ (e.g. another valid ONNX put at the cache's path) is
    re-exported, never loaded. A model whose weights need external data (over 2 GB) is refused
    (ValueError): export it with python -m infgen.export.onnx."""
    root = Path(cache_dir or os.environ.get("INFGEN_CACHE") or Path.home() / ".cache" / "infgen")
    digest = model_digest(model, dtype, flavour)
    path = root / "onnx" / digest[:32] / "model.onnx"
    if cache.check(path, digest) is None:
        return path

    def write(tmp: Path) -> None:
        export_onnx(model, tmp, dtype, flavour)
        if cache.data_path(tmp).exists():  # the .onnx names its data file: the pair cannot be renamed
            raise ValueError(f"model too large for the ONNX cache ({cache.data_path(tmp).name}); "
                             "export it with python -m infgen.export.onnx")
    return cache.store(path, digest, write, flavour=flavour, dtype=dtype_name(parse_dtype(dtype)))


def load_model(checkpoint=None, preset_name=None) -> InfGen:
    """A checkpoint directory, else a preset ("demo": the bundled trained checkpoint; others random)."""
    from infgen.ref.weights import load_checkpoint, preset_model
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    return preset_model(preset_name)


RANDOM_WEIGHTS_WARNING = ("warning: exporting RANDOM weights (--preset {name}): the ONNX model decodes noise; "
                          "give --checkpoint DIR (or --preset demo) to export trained weights")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    from infgen.cli import add_model_options
    add_model_options(ap, device=False, dtype_default="fp32", preset_default="paper")  # infgen.cli (cli/)
    ap.add_argument("--flavour", choices=FLAVOURS, default="onnxruntime")
    ap.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset; only {OPSET} (the spec's) is supported")
    ap.add_argument("-o", "--out", metavar="FILE", default=None,
                    help="output .onnx (default: infgen_<preset or checkpoint folder>_<dtype>[_trt].onnx)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bar (default: one on stderr when it is a terminal and tqdm is installed)")


def build_parser() -> argparse.ArgumentParser:
    from infgen.cli import tool_parser
    return tool_parser("python -m infgen.export.onnx", __doc__.split("\n")[0], add_arguments)


def main(argv=None) -> int:
    """python -m infgen.export.onnx: user errors (bad opset, output path, checkpoint) are one `error:` line
    and exit status 2, found before the export starts."""
    from infgen.cli import guarded
    return guarded(_main, build_parser().parse_args(argv))


class StageBar:
    """A tqdm bar over EXPORT_STAGES on stderr, as export_onnx's on_stage; without tqdm (optional:
    the profile, train and test extras have it) or when disabled, nothing is shown."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=len(EXPORT_STAGES), file=sys.stderr, leave=False,
                            bar_format="ONNX export: stage {n}/{total} [{elapsed}{postfix}]")

    def __call__(self, name: str) -> None:  # a stage starts
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)
            self.bar.refresh()  # stages can start within tqdm's mininterval of each other

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _main(args) -> int:
    from infgen.ref.checks import check_out_file
    check_opset(args.opset)
    name = Path(args.checkpoint).name if args.checkpoint else args.preset
    out = Path(args.out or f"infgen_{name}_{args.dtype}{'_trt' if args.flavour == 'tensorrt' else ''}.onnx")
    check_out_file(out, "--out", ".onnx")
    model = load_model(args.checkpoint, None if args.checkpoint else args.preset)
    from infgen.ref.weights import TRAINED_PRESETS
    if not args.checkpoint and args.preset not in TRAINED_PRESETS:
        print(RANDOM_WEIGHTS_WARNING.format(name=args.preset), file=sys.stderr, flush=True)
    bar = StageBar(not args.no_progress and sys.stderr.isatty())
    t0 = time.perf_counter()
    try:
        export_onnx(model, out, args.dtype, args.flavour, args.opset, on_stage=bar)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    data = out.with_name(out.name + ".data")
    size = out.stat().st_size + (data.stat().st_size if data.exists() else 0)
    print(f"wrote {out} ({size / 1e6:.1f} MB{', external data ' + data.name if data.exists() else ''}) "
          f"opset {onnx_opset(out)}, flavour {args.flavour}, {args.dtype}, in {dt:.1f} s")
    return 0


def onnx_opset(path) -> int:
    """The default-domain opset a written ONNX file declares."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


if __name__ == "__main__":
    sys.exit(main())
