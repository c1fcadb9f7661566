"""The exported decode graph, declared once (STYLE rule 9): names, dynamic dims, opset, plugin id.

Read by export/onnx.py (what it writes), export/trt.py (engine build, the CLI) and
runtime/trt_backend.py (binding), so the CLI and the runtime agree on what an engine is. The
profile defaults (DEFAULT_OPT_SIZES, MAX_TENSOR_ELEMENTS) are export/plan.py's, named here too,
and default_plan is that module's make_plan with the spec's defaults.

    inputs   latent (batch, C, latent_h, latent_w) float32   scaled diffusion latent
             grid   (grid_h, grid_w)              float32   values unused; its SHAPE is the
                                                            mask-token grid (H', W')
    output   image  (batch, 3, 8*grid_h, 8*grid_w) float32  uncropped, unclamped
"""
from infgen.export.plan import DEFAULT_OPT_SIZES, MAX_TENSOR_ELEMENTS, largest_tensor, make_plan

__all__ = ["OPSET", "FLAVOURS", "INPUTS", "OUTPUTS", "DYNAMIC_DIMS", "PLUGIN_NAMESPACE", "PLUGIN_NAME",
           "PLUGIN_VERSION", "PLUGIN_ID", "DEFAULT_OPT_SIZES", "DEFAULT_MIN_RES", "DEFAULT_MAX_RES", "DEFAULT_BATCH",
           "MAX_TENSOR_ELEMENTS", "MIN_TENSORRT", "AOT_MODULE_LEAK", "default_plan"]

OPSET = 22
FLAVOURS = ("onnxruntime", "tensorrt")
INPUTS = ("latent", "grid")
OUTPUTS = ("image",)
# input name -> {axis: dim name}; the output's dims follow (batch, 3, 8*grid_h, 8*grid_w).
DYNAMIC_DIMS = {"latent": {0: "batch", 2: "latent_h", 3: "latent_w"}, "grid": {0: "grid_h", 1: "grid_w"}}

# The mid-block attention in the TensorRT flavour: node op type PLUGIN_NAME in domain PLUGIN_NAMESPACE,
# attributes scale, plugin_namespace, plugin_version, aot=1. The native library
# (native/src/trt_plugin.cpp) registers the same name, namespace and version.
PLUGIN_NAMESPACE, PLUGIN_NAME, PLUGIN_VERSION = "infgen", "FlashAttention", "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"

DEFAULT_MIN_RES = 256
DEFAULT_MAX_RES = 4096   # engines stop here by default (min with the model's max_size); larger sizes go on
DEFAULT_BATCH = 1
# TensorRT versions: the Python plugin API (tensorrt.plugin, AOT) needs 10.9; 11.1 and 11.2 leak
# a CUDA module per shape change in AOT plugins (TensorRT issue 4849).
MIN_TENSORRT = (10, 9)
AOT_MODULE_LEAK = ((11, 1), (11, 2))


def default_plan(cfg, min_res: int = DEFAULT_MIN_RES, max_res: int | None = None, opt_sizes=DEFAULT_OPT_SIZES,
                 batch: int = DEFAULT_BATCH):
    """The plan every TensorRT engine of a model config is built with unless another is given: outputs
    min_res..max_res (default min(DEFAULT_MAX_RES, the model's max_size)), batch 1..batch, boxes capped so the decode's
    largest conv/GroupNorm tensor stays under MAX_TENSOR_ELEMENTS (the decode run on the meta device)."""
    lat = (16, 64, 128)

    def volume(b, Hp, Wp):
        return largest_tensor(cfg, b, Hp, Wp, lat[2])[0]

    return make_plan(min_res, max_res or min(DEFAULT_MAX_RES, cfg.max_size), opt_sizes, batch, cfg.upscale, cfg.latent_channels,
                     lat, volume=volume)
