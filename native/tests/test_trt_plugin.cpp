// ctest infgen_trt_plugin (built only with TensorRT headers; needs no TensorRT library or GPU):
// plays TensorRT's part against libinfgen_trt_plugins.so through its plugin-library entry points
// (getCreators, setLoggerFinder), the way IPluginRegistry::loadLibrary and the ONNX parser use
// them: creator identity and fields, createPlugin from the ONNX node's attributes, the build-phase
// queries (types, shapes, formats, configure), serialisation round trip, and enqueue, which
// without a CUDA driver must fail with a logged message rather than crash.
//
//   test_trt_plugin path/to/libinfgen_trt_plugins.so path/to/libinfgen_trt_plugins_autoreg.so
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int checks = 0, failures = 0;

void expect(bool cond, std::string const& what) {
    ++checks;
    if (!cond) {
        ++failures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

class CapturingLogger : public ILogger {
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override {
        if (severity <= Severity::kERROR) last = msg;
    }
    std::string last;
};

class Finder : public ILoggerFinder {
public:
    ILogger* findLogger() override { return &logger; }
    CapturingLogger logger;
};

class NoExprBuilder : public IExprBuilder {};  // the plugin never builds expressions

PluginTensorDesc desc(DataType type, std::vector<int64_t> const& dims) {
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i) d.dims.d[i] = dims[i];
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.scale = -1.0F;
    return d;
}

DynamicPluginTensorDesc dyn(DataType type, std::vector<int64_t> const& dims) {
    DynamicPluginTensorDesc d{};
    d.desc = desc(type, dims);
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::printf("usage: %s libinfgen_trt_plugins.so libinfgen_trt_plugins_autoreg.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    expect(lib != nullptr, std::string("dlopen plugin library: ") + (lib ? "" : dlerror()));
    if (lib == nullptr) return 1;
    using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    expect(getCreators != nullptr && setLoggerFinder != nullptr, "entry points getCreators and setLoggerFinder exported");
    expect(dlsym(lib, "infgen_attention_fwd") == nullptr, "libinfgen_kernels' API stays internal to the plugin library");
    if (getCreators == nullptr || setLoggerFinder == nullptr) return 1;
    static Finder finder;
    setLoggerFinder(&finder);

    // creator: identity and fields
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    expect(n == 1 && creators != nullptr, "one creator");
    expect(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    expect(std::strcmp(creator->getPluginName(), "FlashAttention") == 0, "plugin name FlashAttention");
    expect(std::strcmp(creator->getPluginNamespace(), "infgen") == 0, "namespace infgen");
    expect(std::strcmp(creator->getPluginVersion(), "1") == 0, "version 1");
    PluginFieldCollection const* names = creator->getFieldNames();
    expect(names->nbFields == 1 && std::strcmp(names->fields[0].name, "scale") == 0 &&
               names->fields[0].type == PluginFieldType::kFLOAT32,
           "one field: scale, float32");

    // createPlugin as the ONNX parser calls it: the node's attributes as fields
    PluginFieldCollection empty{};
    expect(creator->createPlugin("attn", &empty, TensorRTPhase::kBUILD) == nullptr, "no scale: no plugin");
    expect(finder.logger.last.find("field scale must be given") != std::string::npos,
           "missing scale is logged: '" + finder.logger.last + "'");
    float const scale = 1.0F / std::sqrt(512.0F);
    char const ns[] = "infgen";
    std::vector<PluginField> fields = {PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, sizeof ns),
                                       PluginField("scale", &scale, PluginFieldType::kFLOAT32, 1)};
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    IPluginV3* plugin = creator->createPlugin("attn", &fc, TensorRTPhase::kBUILD);
    expect(plugin != nullptr, "plugin from fields {plugin_namespace, scale}");
    if (plugin == nullptr) return 1;
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    expect(core && build && runtime, "core, build and runtime capabilities");
    expect(std::strcmp(core->getPluginName(), "FlashAttention") == 0 && std::strcmp(core->getPluginNamespace(), "infgen") == 0,
           "plugin object names itself like its creator");

    // build phase
    expect(build->getNbOutputs() == 1, "one output");
    DataType in3[3] = {DataType::kBF16, DataType::kBF16, DataType::kBF16};
    DataType out1[1] = {DataType::kFLOAT};
    expect(build->getOutputDataTypes(out1, 1, in3, 3) == 0 && out1[0] == DataType::kBF16, "output dtype = q's");
    std::vector<DynamicPluginTensorDesc> io = {dyn(DataType::kBF16, {2, -1, 512}), dyn(DataType::kBF16, {2, -1, 512}),
                                               dyn(DataType::kBF16, {2, -1, 512}), dyn(DataType::kBF16, {2, -1, 512})};
    expect(build->supportsFormatCombination(0, io.data(), 3, 1), "bf16 linear q supported");
    io[0].desc.type = DataType::kFLOAT;
    expect(!build->supportsFormatCombination(0, io.data(), 3, 1), "fp32 q refused (no fp32 kernel)");
    io[0].desc.type = DataType::kHALF;
    expect(build->supportsFormatCombination(0, io.data(), 3, 1), "fp16 q supported");
    io[1].desc.type = DataType::kBF16;
    expect(!build->supportsFormatCombination(1, io.data(), 3, 1), "k must take q's dtype");
    io[0].desc.type = DataType::kBF16;
    io[0].desc.format = TensorFormat::kCHW32;
    expect(!build->supportsFormatCombination(0, io.data(), 3, 1), "non-linear format refused");
    io[0].desc.format = TensorFormat::kLINEAR;

    expect(build->configurePlugin(io.data(), 3, io.data() + 3, 1) == 0, "configure bf16 (2, L, 512)");
    std::vector<DynamicPluginTensorDesc> bad = {dyn(DataType::kBF16, {2, -1, 128}), dyn(DataType::kBF16, {2, -1, 128}),
                                                dyn(DataType::kBF16, {2, -1, 128}), dyn(DataType::kBF16, {2, -1, 128})};
    expect(build->configurePlugin(bad.data(), 3, bad.data() + 3, 1) != 0, "head dim 128 refused at build");
    expect(finder.logger.last.find("head dim 128") != std::string::npos, "refusal names the head dim: '" + finder.logger.last + "'");

    DimsExprs shapes[3]{};
    for (auto& s : shapes) s.nbDims = 3;
    DimsExprs outShape{};
    NoExprBuilder exprBuilder;
    expect(build->getOutputShapes(shapes, 3, nullptr, 0, &outShape, 1, exprBuilder) == 0 && outShape.nbDims == 3,
           "output shape = q's (3-D)");
    shapes[1].nbDims = 4;
    expect(build->getOutputShapes(shapes, 3, nullptr, 0, &outShape, 1, exprBuilder) != 0, "4-D k refused");

    // serialisation round trip: the fields TensorRT stores in the engine recreate the plugin
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    expect(saved->nbFields == 1 && std::strcmp(saved->fields[0].name, "scale") == 0 &&
               *static_cast<float const*>(saved->fields[0].data) == scale,
           "serialised field scale");
    IPluginV3* restored = creator->createPlugin("attn", saved, TensorRTPhase::kRUNTIME);
    expect(restored != nullptr, "plugin recreated from its serialised fields");

    // runtime
    std::vector<PluginTensorDesc> rt = {desc(DataType::kBF16, {2, 1000, 512}), desc(DataType::kBF16, {2, 900, 512}),
                                        desc(DataType::kBF16, {2, 900, 512}), desc(DataType::kBF16, {2, 1000, 512})};
    expect(runtime->onShapeChange(rt.data(), 3, rt.data() + 3, 1) == 0, "shapes q (2,1000,512), k/v (2,900,512)");
    rt[2].dims.d[1] = 901;
    expect(runtime->onShapeChange(rt.data(), 3, rt.data() + 3, 1) != 0, "v unlike k refused");
    rt[2].dims.d[1] = 900;
    void const* inputs[3] = {reinterpret_cast<void*>(0x10000), reinterpret_cast<void*>(0x20000), reinterpret_cast<void*>(0x30000)};
    void* outputs[1] = {reinterpret_cast<void*>(0x40000)};
    if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD) == nullptr && dlopen("libcuda.so.1", RTLD_LAZY) == nullptr) {
        finder.logger.last.clear();
        expect(runtime->enqueue(rt.data(), rt.data() + 3, inputs, outputs, nullptr, nullptr) != 0,
               "enqueue without a CUDA driver fails");
        expect(finder.logger.last.find("libcuda.so.1") != std::string::npos,
               "and logs why: '" + finder.logger.last + "'");
    }
    IPluginV3* attached = runtime->attachToContext(nullptr);
    expect(attached != nullptr, "attachToContext clones");
    delete attached;
    delete restored;
    delete plugin;

    // the load-time-registering variant loads cleanly in a process without TensorRT
    void* autoreg = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    expect(autoreg != nullptr, std::string("dlopen autoreg library: ") + (autoreg ? "" : dlerror()));

    std::printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
