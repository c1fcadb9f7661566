// libinfgen_trt_plugins: the TensorRT IPluginV3 plugin infgen::FlashAttention (version "1") on
// libinfgen_kernels' ahead-of-time attention kernel.
//
// Same name, namespace, version, inputs, output and field as the Python plugin of export/trt.py,
// so the TensorRT-flavour ONNX of export/onnx.py (node FlashAttention, domain infgen, attributes
// scale, plugin_namespace="infgen", plugin_version="1") builds with either.
//
//   inputs  q (B, M, D), k (B, N, D), v (B, N, D): one head, contiguous, bf16 or fp16, one dtype
//   output  o (B, M, D) like q;  field  scale (float32): softmax scale
//   D: a head dim compiled into libinfgen_kernels (64, 512)
//
// Two ways in (docs/export.md):
//   built as libinfgen_trt_plugins.so: the plugin-library entry points getCreators() and
//     setLoggerFinder(), for trtexec --dynamicPlugins and IPluginRegistry::loadLibrary;
//   built with INFGEN_TRT_AUTOREGISTER as libinfgen_trt_plugins_autoreg.so: registers the creator
//     when the library is loaded, for trtexec --staticPlugins, Triton's TensorRT backend
//     (--backend-config=tensorrt,plugins=...) and LD_PRELOAD. Load one of the two, not both:
//     loadLibrary fails when a creator of the same name is already registered.
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

#include "infgen_kernels.h"

#ifdef INFGEN_TRT_AUTOREGISTER
#include <dlfcn.h>
#endif

#define INFGEN_EXPORT __attribute__((visibility("default")))

namespace {

using namespace nvinfer1;

constexpr char kPluginName[] = "FlashAttention";
constexpr char kPluginVersion[] = "1";
constexpr char kPluginNamespace[] = "infgen";

ILoggerFinder* gLoggerFinder = nullptr;

void logError(std::string const& message) {
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    std::string text = std::string("infgen::FlashAttention: ") + message;
    if (logger != nullptr)
        logger->log(ILogger::Severity::kERROR, text.c_str());
    else
        std::fprintf(stderr, "[infgen] %s\n", text.c_str());
}

bool toInfgenDtype(DataType type, infgen_dtype* out) {
    if (type == DataType::kBF16) { *out = INFGEN_BF16; return true; }
    if (type == DataType::kHALF) { *out = INFGEN_FP16; return true; }
    return false;
}

// Whether libinfgen_kernels holds an attention kernel for this head dim and dtype.
bool headDimCompiled(int64_t headDim, infgen_dtype dtype) {
    for (int i = 0; i < infgen_kernel_count(); ++i) {
        infgen_kernel_info const* k = infgen_kernel_get(i);
        if (k->kind == INFGEN_KERNEL_ATTENTION && k->dtype == static_cast<int>(dtype) && k->dim == headDim) return true;
    }
    return false;
}

class FlashAttentionPlugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit FlashAttentionPlugin(float scale) : mScale(scale) {}

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }
    IPluginV3* clone() noexcept override { return new (std::nothrow) FlashAttentionPlugin(mScale); }

    // IPluginV3OneCore
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbInputs != 3 || nbOutputs != 1) return fail("takes 3 inputs (q, k, v) and gives 1 output");
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                            int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                            IExprBuilder& /*exprBuilder*/) noexcept override {
        if (nbInputs != 3 || nbOutputs != 1) return fail("takes 3 inputs (q, k, v) and gives 1 output");
        for (int32_t i = 0; i < 3; ++i)
            if (inputs[i].nbDims != 3)
                return fail("q, k and v must be 3-D (B, L, D); input " + std::to_string(i) + " has " +
                            std::to_string(inputs[i].nbDims) + " dims");
        outputs[0] = inputs[0];  // o: (B, M, D) like q
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t /*nbInputs*/,
                                   int32_t /*nbOutputs*/) noexcept override {
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return d.type == DataType::kBF16 || d.type == DataType::kHALF;
        return d.type == inOut[0].desc.type;  // k, v and o take q's dtype
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                            int32_t nbOutputs) noexcept override {
        if (nbInputs != 3 || nbOutputs != 1) return fail("takes 3 inputs (q, k, v) and gives 1 output");
        infgen_dtype dtype;
        if (!toInfgenDtype(in[0].desc.type, &dtype)) return fail("q must be bf16 or fp16");
        int64_t const headDim = in[0].desc.dims.d[2];
        if (headDim < 0) return fail("the head dim (q's last dim) must be static, got a dynamic dim");
        if (!headDimCompiled(headDim, dtype))
            return fail("no kernel for head dim " + std::to_string(headDim) +
                        " in libinfgen_kernels (compiled: 64 and 512; see native/aot.py)");
        for (int32_t i = 1; i < 3; ++i)
            if (in[i].desc.dims.d[2] != headDim)
                return fail("k and v must have q's head dim " + std::to_string(headDim));
        return 0;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
        if (nbInputs != 3 || nbOutputs != 1) return fail("takes 3 inputs (q, k, v) and gives 1 output");
        Dims const& q = in[0].dims;
        Dims const& k = in[1].dims;
        Dims const& v = in[2].dims;
        if (k.d[0] != q.d[0] || k.d[2] != q.d[2] || v.d[0] != k.d[0] || v.d[1] != k.d[1] || v.d[2] != k.d[2])
            return fail("k and v must be (B, N, D) with q's B and D, and v like k");
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                    void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override {
        infgen_dtype dtype;
        if (!toInfgenDtype(inputDesc[0].type, &dtype)) return fail("q must be bf16 or fp16");
        int64_t const batch = inputDesc[0].dims.d[0], m = inputDesc[0].dims.d[1], d = inputDesc[0].dims.d[2];
        int64_t const n = inputDesc[1].dims.d[1];
        if (batch > INT32_MAX || m > INT32_MAX || n > INT32_MAX)
            return fail("B, M and N must fit int32, got (" + std::to_string(batch) + ", " + std::to_string(m) + ", " +
                        std::to_string(n) + ")");
        // contiguous (B, L, D), one head: strides {batch, head, row}
        int64_t const qStrides[3] = {m * d, 0, d};
        int64_t const kvStrides[3] = {n * d, 0, d};
        infgen_status status = infgen_attention_fwd(
            dtype, inputs[0], inputs[1], inputs[2], outputs[0], static_cast<int32_t>(batch), 1,
            static_cast<int32_t>(m), static_cast<int32_t>(n), static_cast<int32_t>(d), qStrides, kvStrides,
            kvStrides, qStrides, mScale, reinterpret_cast<struct CUstream_st*>(stream));
        if (status != INFGEN_SUCCESS) return fail(infgen_last_error());
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mField = PluginField("scale", &mScale, PluginFieldType::kFLOAT32, 1);
        mFields.nbFields = 1;
        mFields.fields = &mField;
        return &mFields;
    }

private:
    static int32_t fail(std::string const& message) {
        logError(message);
        return -1;
    }

    float mScale;
    PluginField mField;
    PluginFieldCollection mFields;
};

class FlashAttentionCreator : public IPluginCreatorV3One {
public:
    FlashAttentionCreator() {
        mFieldNames = PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1);
        mFields.nbFields = 1;
        mFields.fields = &mFieldNames;
    }

    IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                            TensorRTPhase /*phase*/) noexcept override {
        float scale = NAN;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            if (f.name == nullptr || std::strcmp(f.name, "scale") != 0) continue;  // plugin_namespace, plugin_version
            if (f.type == PluginFieldType::kFLOAT32 && f.length == 1)
                scale = *static_cast<float const*>(f.data);
            else if (f.type == PluginFieldType::kFLOAT64 && f.length == 1)
                scale = static_cast<float>(*static_cast<double const*>(f.data));
            else {
                logError("field scale must be one float32, got type " + std::to_string(static_cast<int>(f.type)) +
                         " x " + std::to_string(f.length));
                return nullptr;
            }
        }
        if (!(std::isfinite(scale) && scale > 0.0F)) {
            logError("field scale must be given, finite and > 0, got " + std::to_string(scale));
            return nullptr;
        }
        return new (std::nothrow) FlashAttentionPlugin(scale);
    }

    PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }
    AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
    AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    PluginField mFieldNames;
    PluginFieldCollection mFields;
};

FlashAttentionCreator gCreator;

#ifdef INFGEN_TRT_AUTOREGISTER
#define INFGEN_STR2(x) #x
#define INFGEN_STR(x) INFGEN_STR2(x)
// Registers the creator with the process's TensorRT when this library is loaded. libnvinfer must
// already be loaded (trtexec, Triton's TensorRT backend) or be this library's dependency (built
// with TensorRT's lib/ found, for LD_PRELOAD); it is looked up without loading it.
__attribute__((constructor)) void registerAtLoad() {
    char const* soname = "libnvinfer.so." INFGEN_STR(NV_TENSORRT_MAJOR);
    void* nvinfer = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
    if (nvinfer == nullptr) {
        std::fprintf(stderr, "[infgen] %s is not loaded in this process: infgen::FlashAttention not registered "
                             "(load libinfgen_trt_plugins.so through --dynamicPlugins / loadLibrary instead)\n", soname);
        return;
    }
    using GetRegistry = IPluginRegistry* (*)();
    auto getRegistry = reinterpret_cast<GetRegistry>(dlsym(nvinfer, "getPluginRegistry"));
    IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr || !registry->registerCreator(gCreator, kPluginNamespace))
        std::fprintf(stderr, "[infgen] could not register infgen::FlashAttention with %s\n", soname);
}
#endif

}  // namespace

// Plugin-library entry points (TensorRT developer guide, "Plugin Shared Libraries").
extern "C" INFGEN_EXPORT void setLoggerFinder(ILoggerFinder* finder) { gLoggerFinder = finder; }

extern "C" INFGEN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static IPluginCreatorInterface* const creators[] = {&gCreator};
    nbCreators = 1;
    return creators;
}
