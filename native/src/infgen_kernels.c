/* libinfgen_kernels: input checks, CUDA driver loading and launches for the AOT kernel table.
 *
 * Lifecycle: first launch -> dlopen("libcuda.so.1") and resolve the driver entry points through
 * cuGetProcAddress (CUDA >= 12.0 drivers) -> cuInit -> per kernel, on first use: load its cubin
 * with cuLibraryLoadData (context-independent) and set its dynamic shared memory limit once per
 * device -> per launch: cuKernelGetFunction for the current context, cuLaunchKernel on the stream.
 * Triton's two scratch-pointer parameters get null pointers (native/aot.py refuses kernels that
 * would need scratch memory).
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "infgen_kernels_table.h"

#define MAX_KERNELS 64
#define MAX_DEVICES 64
#define MAX_PARAMS 32
#define LOG2E 1.4426950408889634f
#define INT32_LIMIT 2147483648LL /* 2^31 */

/* The runtime arguments each launcher below passes, in order; the table records what each kernel
 * was compiled with, and a mismatch (a kernel changed without native/aot.py) refuses to launch. */
static const char ATTENTION_ARGS[] =
    "Q,K,V,O,stride_qb,stride_qh,stride_qm,stride_kb,stride_kh,stride_kn,stride_vb,stride_vh,stride_vn,"
    "stride_ob,stride_oh,stride_om,H,M,N,qk_scale";
static const char INPE_ARGS[] = "OUT,FB,W1,B1,W2,B2,ADD,T,GH,GW,F,D";
static const char INPE_MLP_ARGS[] = "OUT,FEAT,W1,B1,W2,B2,ADD,T,F2,D";

/* ----------------------------------------------------------------------------- errors */
static _Thread_local char last_error[512];

static infgen_status fail(infgen_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *infgen_last_error(void) { return last_error; }
int infgen_kernel_count(void) { return infgen_table_size; }
const char *infgen_build_info(void) { return infgen_table_build_info; }

const infgen_kernel_info *infgen_kernel_get(int index) {
    return index >= 0 && index < infgen_table_size ? &infgen_table[index] : NULL;
}

/* ----------------------------------------------------------------------------- driver */
static struct {
    PFN_cuInit_v2000 init;
    PFN_cuGetErrorString_v6000 error_string;
    PFN_cuCtxGetDevice_v2000 ctx_get_device;
    PFN_cuDeviceGetAttribute_v2000 device_attribute;
    PFN_cuLibraryLoadData_v12000 library_load_data;
    PFN_cuLibraryGetKernel_v12000 library_get_kernel;
    PFN_cuKernelSetAttribute_v12000 kernel_set_attribute;
    PFN_cuKernelGetFunction_v12000 kernel_get_function;
    PFN_cuLaunchKernel_v4000 launch_kernel;
} cu;
static pthread_once_t driver_once = PTHREAD_ONCE_INIT;
static infgen_status driver_status;
static char driver_message[512];

static void load_driver(void) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        driver_status = INFGEN_ERROR_NO_DRIVER;
        snprintf(driver_message, sizeof driver_message,
                 "cannot load the CUDA driver (%s): libinfgen_kernels needs an NVIDIA GPU and its driver", dlerror());
        return;
    }
    PFN_cuGetProcAddress_v12000 get_proc = (PFN_cuGetProcAddress_v12000)dlsym(lib, "cuGetProcAddress_v2");
    if (get_proc == NULL) {
        driver_status = INFGEN_ERROR_NO_DRIVER;
        snprintf(driver_message, sizeof driver_message,
                 "the CUDA driver has no cuGetProcAddress_v2: it is older than CUDA 12.0, which libinfgen_kernels needs");
        return;
    }
    const struct { const char *name; void **fn; } entries[] = {
        {"cuInit", (void **)&cu.init},
        {"cuGetErrorString", (void **)&cu.error_string},
        {"cuCtxGetDevice", (void **)&cu.ctx_get_device},
        {"cuDeviceGetAttribute", (void **)&cu.device_attribute},
        {"cuLibraryLoadData", (void **)&cu.library_load_data},
        {"cuLibraryGetKernel", (void **)&cu.library_get_kernel},
        {"cuKernelSetAttribute", (void **)&cu.kernel_set_attribute},
        {"cuKernelGetFunction", (void **)&cu.kernel_get_function},
        {"cuLaunchKernel", (void **)&cu.launch_kernel},
    };
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        CUdriverProcAddressQueryResult found;
        /* 12000: the ABI of each entry point as of CUDA 12.0, matching the PFN_*_v types above */
        CUresult r = get_proc(entries[i].name, entries[i].fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &found);
        if (r != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS || *entries[i].fn == NULL) {
            driver_status = INFGEN_ERROR_NO_DRIVER;
            snprintf(driver_message, sizeof driver_message,
                     "the CUDA driver has no %s (error %d): libinfgen_kernels needs a CUDA 12.0+ driver",
                     entries[i].name, (int)r);
            return;
        }
    }
    CUresult r = cu.init(0);
    if (r != CUDA_SUCCESS) {
        const char *text = NULL;
        cu.error_string(r, &text);
        driver_status = r == CUDA_ERROR_NO_DEVICE ? INFGEN_ERROR_NO_DRIVER : INFGEN_ERROR_CUDA;
        snprintf(driver_message, sizeof driver_message, "cuInit failed: %s (%d)", text ? text : "?", (int)r);
    }
}

infgen_status infgen_init(void) {
    pthread_once(&driver_once, load_driver);
    if (driver_status != INFGEN_SUCCESS) return fail(driver_status, "%s", driver_message);
    return INFGEN_SUCCESS;
}

static infgen_status cuda_fail(CUresult r, const char *call, const char *name) {
    const char *text = NULL;
    cu.error_string(r, &text);
    return fail(INFGEN_ERROR_CUDA, "%s failed for %s: %s (%d)", call, name, text ? text : "?", (int)r);
}

/* ----------------------------------------------------------------------------- kernel state */
static struct {
    CUlibrary library;
    CUkernel kernel;
    unsigned long long configured; /* bit d: shared-memory limit set on device d */
} state[MAX_KERNELS];
static int device_cc[MAX_DEVICES]; /* major * 10 + minor; 0 = not read yet */
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;

/* Load (once) and configure (once per device) kernel `index`; the function for the current context. */
static infgen_status prepare_locked(int index, CUdevice dev) {
    const infgen_kernel_info *info = &infgen_table[index];
    CUresult r;
    if (device_cc[dev] == 0) {
        int major = 0, minor = 0;
        if ((r = cu.device_attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)) != CUDA_SUCCESS ||
            (r = cu.device_attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)) != CUDA_SUCCESS)
            return cuda_fail(r, "cuDeviceGetAttribute(COMPUTE_CAPABILITY)", info->name);
        device_cc[dev] = major * 10 + minor;
    }
    if (device_cc[dev] != info->arch)
        return fail(INFGEN_ERROR_UNSUPPORTED_DEVICE,
                    "device %d has compute capability %d.%d; %s is compiled for sm_%da (compute capability %d.%d) only",
                    (int)dev, device_cc[dev] / 10, device_cc[dev] % 10, info->name, info->arch, info->arch / 10,
                    info->arch % 10);
    if (state[index].kernel == NULL) {
        if ((r = cu.library_load_data(&state[index].library, info->cubin, NULL, NULL, 0, NULL, NULL, 0)) != CUDA_SUCCESS)
            return cuda_fail(r, "cuLibraryLoadData", info->name);
        if ((r = cu.library_get_kernel(&state[index].kernel, state[index].library, info->symbol)) != CUDA_SUCCESS)
            return cuda_fail(r, "cuLibraryGetKernel", info->name);
    }
    if (!(state[index].configured >> dev & 1ULL)) {
        if (info->shared > 48 * 1024 &&
            (r = cu.kernel_set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, info->shared,
                                         state[index].kernel, dev)) != CUDA_SUCCESS)
            return cuda_fail(r, "cuKernelSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", info->name);
        state[index].configured |= 1ULL << dev;
    }
    return INFGEN_SUCCESS;
}

static infgen_status launch(int index, const char *expected_args, unsigned grid_x, unsigned grid_y,
                            void **args, struct CUstream_st *stream) {
    const infgen_kernel_info *info = &infgen_table[index];
    if (strcmp(info->args, expected_args) != 0)
        return fail(INFGEN_ERROR_NOT_COMPILED,
                    "%s was compiled with the arguments (%s) but the launcher passes (%s): the kernel changed; "
                    "update native/aot.py and native/src/infgen_kernels.c together", info->name, info->args,
                    expected_args);
    if (index >= MAX_KERNELS || info->num_params > MAX_PARAMS || info->num_params < info->num_args)
        return fail(INFGEN_ERROR_NOT_COMPILED, "%s: kernel table entry out of the launcher's limits", info->name);
    infgen_status s = infgen_init();
    if (s != INFGEN_SUCCESS) return s;
    CUdevice dev;
    CUresult r = cu.ctx_get_device(&dev);
    if (r != CUDA_SUCCESS)
        return cuda_fail(r, "cuCtxGetDevice (no current CUDA context on this thread? call cudaSetDevice or "
                            "cuCtxSetCurrent first)", info->name);
    if (dev < 0 || dev >= MAX_DEVICES)
        return fail(INFGEN_ERROR_UNSUPPORTED_DEVICE, "device ordinal %d is past the %d devices supported", (int)dev,
                    MAX_DEVICES);
    pthread_mutex_lock(&state_lock);
    s = prepare_locked(index, dev);
    CUkernel kernel = state[index].kernel;
    pthread_mutex_unlock(&state_lock);
    if (s != INFGEN_SUCCESS) return s;
    CUfunction fn;
    if ((r = cu.kernel_get_function(&fn, kernel)) != CUDA_SUCCESS)
        return cuda_fail(r, "cuKernelGetFunction", info->name);
    static const CUdeviceptr null_scratch = 0; /* global and profile scratch: unused (size 0) */
    void *params[MAX_PARAMS];
    for (int i = 0; i < info->num_params; i++) params[i] = i < info->num_args ? args[i] : (void *)&null_scratch;
    r = cu.launch_kernel(fn, grid_x, grid_y, 1, 32 * (unsigned)info->num_warps, 1, 1, (unsigned)info->shared,
                         (CUstream)stream, params, NULL);
    if (r != CUDA_SUCCESS) return cuda_fail(r, "cuLaunchKernel", info->name);
    return INFGEN_SUCCESS;
}

/* ----------------------------------------------------------------------------- checks */
static infgen_status check_dtype(infgen_dtype dtype) {
    if (dtype != INFGEN_BF16 && dtype != INFGEN_FP16)
        return fail(INFGEN_ERROR_INVALID_VALUE, "dtype must be INFGEN_BF16 (0) or INFGEN_FP16 (1), got %d", (int)dtype);
    return INFGEN_SUCCESS;
}

static infgen_status check_pointer(const void *p, const char *name, int nullable) {
    if (p == NULL && !nullable) return fail(INFGEN_ERROR_INVALID_VALUE, "%s must be a device pointer, got NULL", name);
    if ((uintptr_t)p % 16 != 0)
        return fail(INFGEN_ERROR_INVALID_VALUE, "%s must be 16-byte aligned, got %p", name, p);
    return INFGEN_SUCCESS;
}

static infgen_status check_positive(int64_t v, const char *name) {
    if (v < 1) return fail(INFGEN_ERROR_INVALID_VALUE, "%s must be >= 1, got %lld", name, (long long)v);
    return INFGEN_SUCCESS;
}

/* Strides {batch, head, row}: multiples of 16 (the kernels are compiled with that hint), >= 0, and
 * small enough that the kernel's int32 in-tile offsets (row * stride for row < rows_per_tile) fit. */
static infgen_status check_strides(const int64_t *s, const char *name, int rows_per_tile, int32_t *out) {
    static const char *axis[3] = {"batch", "head", "row"};
    if (s == NULL) return fail(INFGEN_ERROR_INVALID_VALUE, "%s must point to 3 strides, got NULL", name);
    for (int i = 0; i < 3; i++) {
        if (s[i] < 0 || s[i] >= INT32_LIMIT || s[i] % 16 != 0)
            return fail(INFGEN_ERROR_INVALID_VALUE, "%s[%d] (%s stride) must be a multiple of 16 in [0, 2^31), got %lld",
                        name, i, axis[i], (long long)s[i]);
        out[i] = (int32_t)s[i];
    }
    if (s[2] * rows_per_tile >= INT32_LIMIT)
        return fail(INFGEN_ERROR_INVALID_VALUE, "%s[2] (row stride) %lld times the %d-row tile overflows int32",
                    name, (long long)s[2], rows_per_tile);
    return INFGEN_SUCCESS;
}

/* Index of the variant (kind, dtype, dim[, flags, num_freqs]), or -1 with the error set. */
static int find_variant(int kind, infgen_dtype dtype, int dim, int flags, int num_freqs) {
    char compiled[256] = "";
    size_t used = 0;
    for (int i = 0; i < infgen_table_size; i++) {
        const infgen_kernel_info *k = &infgen_table[i];
        if (k->kind != kind) continue;
        if (k->dtype == (int)dtype && k->dim == dim && k->flags == flags && k->num_freqs == num_freqs) return i;
        if (used < sizeof compiled)
            used += (size_t)snprintf(compiled + used, sizeof compiled - used, "%s%s", used ? ", " : "", k->name);
    }
    if (kind == INFGEN_KERNEL_ATTENTION)
        fail(INFGEN_ERROR_NOT_COMPILED, "no attention kernel for head_dim %d, dtype %d in libinfgen_kernels "
             "(compiled: %s); add it to native/aot.py", dim, (int)dtype, compiled);
    else
        fail(INFGEN_ERROR_NOT_COMPILED, "no %s kernel for dim %d, num_freqs %d, dtype %d in libinfgen_kernels "
             "(compiled: %s)", kind == INFGEN_KERNEL_INPE ? "INPE (grid form, infgen_inpe)" : "INPE MLP (infgen_inpe_mlp)",
             dim, num_freqs, (int)dtype, used ? compiled : "none of this form: kernels/inpe.py has the other");
    return -1;
}

#define CHECK(expr)                                  \
    do {                                             \
        infgen_status check_status_ = (expr);        \
        if (check_status_ != INFGEN_SUCCESS) return check_status_; \
    } while (0)

/* ----------------------------------------------------------------------------- public launchers */
infgen_status infgen_attention_fwd(infgen_dtype dtype, const void *q, const void *k, const void *v, void *o,
                                   int32_t batch, int32_t heads, int32_t m, int32_t n, int32_t head_dim,
                                   const int64_t q_strides[3], const int64_t k_strides[3],
                                   const int64_t v_strides[3], const int64_t o_strides[3], float scale,
                                   struct CUstream_st *stream) {
    CHECK(check_dtype(dtype));
    CHECK(check_pointer(q, "q", 0));
    CHECK(check_pointer(k, "k", 0));
    CHECK(check_pointer(v, "v", 0));
    CHECK(check_pointer(o, "o", 0));
    CHECK(check_positive(batch, "batch"));
    CHECK(check_positive(heads, "heads"));
    CHECK(check_positive(m, "m"));
    CHECK(check_positive(n, "n"));
    CHECK(check_positive(head_dim, "head_dim"));
    if ((int64_t)batch * heads > 65535)
        return fail(INFGEN_ERROR_INVALID_VALUE, "batch * heads must be at most 65535 (grid y), got %lld",
                    (long long)batch * heads);
    if (!(isfinite(scale) && scale > 0.0f))
        return fail(INFGEN_ERROR_INVALID_VALUE, "scale must be finite and > 0, got %g", (double)scale);
    /* the rows16 variant (compiled for M, N multiples of 16) when the counts allow it */
    int index = m % 16 == 0 && n % 16 == 0 ? find_variant(INFGEN_KERNEL_ATTENTION, dtype, head_dim, 1, 0) : -1;
    if (index < 0) index = find_variant(INFGEN_KERNEL_ATTENTION, dtype, head_dim, 0, 0);
    if (index < 0) return INFGEN_ERROR_NOT_COMPILED;
    const infgen_kernel_info *info = &infgen_table[index];
    int32_t qs[3], ks[3], vs[3], os[3];
    CHECK(check_strides(q_strides, "q_strides", info->tile_m, qs));
    CHECK(check_strides(k_strides, "k_strides", info->tile_n, ks));
    CHECK(check_strides(v_strides, "v_strides", info->tile_n, vs));
    CHECK(check_strides(o_strides, "o_strides", info->tile_m, os));
    float qk_scale = scale * LOG2E;
    void *args[] = {&q, &k, &v, &o, &qs[0], &qs[1], &qs[2], &ks[0], &ks[1], &ks[2], &vs[0], &vs[1], &vs[2],
                    &os[0], &os[1], &os[2], &heads, &m, &n, &qk_scale};
    unsigned grid_x = (unsigned)((m + info->tile_m - 1) / info->tile_m);
    return launch(index, ATTENTION_ARGS, grid_x, (unsigned)(batch * heads), args, stream);
}

infgen_status infgen_inpe(infgen_dtype dtype, void *out, const float *fourier_b, const void *fc1_weight,
                          const void *fc1_bias, const void *fc2_weight, const void *fc2_bias, const void *add,
                          int32_t grid_h, int32_t grid_w, int32_t num_freqs, int32_t dim,
                          struct CUstream_st *stream) {
    CHECK(check_dtype(dtype));
    CHECK(check_pointer(out, "out", 0));
    CHECK(check_pointer(fourier_b, "fourier_b", 0));
    CHECK(check_pointer(fc1_weight, "fc1_weight", 0));
    CHECK(check_pointer(fc1_bias, "fc1_bias", 0));
    CHECK(check_pointer(fc2_weight, "fc2_weight", 0));
    CHECK(check_pointer(fc2_bias, "fc2_bias", 0));
    CHECK(check_pointer(add, "add", 1));
    CHECK(check_positive(grid_h, "grid_h"));
    CHECK(check_positive(grid_w, "grid_w"));
    CHECK(check_positive(num_freqs, "num_freqs"));
    CHECK(check_positive(dim, "dim"));
    int64_t tokens = (int64_t)grid_h * grid_w;
    if (tokens >= INT32_LIMIT)
        return fail(INFGEN_ERROR_INVALID_VALUE, "grid_h * grid_w must be below 2^31 tokens, got %lld", (long long)tokens);
    int index = find_variant(INFGEN_KERNEL_INPE, dtype, dim, add != NULL, num_freqs);
    if (index < 0) return INFGEN_ERROR_NOT_COMPILED;
    const infgen_kernel_info *info = &infgen_table[index];
    const void *add_arg = add != NULL ? add : fc2_bias; /* not read without HAS_ADD; any valid pointer */
    int32_t t = (int32_t)tokens;
    void *args[] = {&out, &fourier_b, &fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias, &add_arg,
                    &t, &grid_h, &grid_w, &num_freqs, &dim};
    unsigned grid_x = (unsigned)((tokens + info->tile_m - 1) / info->tile_m);
    return launch(index, INPE_ARGS, grid_x, 1, args, stream);
}

infgen_status infgen_inpe_mlp(infgen_dtype dtype, void *out, const void *feat, const void *fc1_weight,
                              const void *fc1_bias, const void *fc2_weight, const void *fc2_bias, const void *add,
                              int32_t tokens, int32_t num_freqs, int32_t dim, struct CUstream_st *stream) {
    CHECK(check_dtype(dtype));
    CHECK(check_pointer(out, "out", 0));
    CHECK(check_pointer(feat, "feat", 0));
    CHECK(check_pointer(fc1_weight, "fc1_weight", 0));
    CHECK(check_pointer(fc1_bias, "fc1_bias", 0));
    CHECK(check_pointer(fc2_weight, "fc2_weight", 0));
    CHECK(check_pointer(fc2_bias, "fc2_bias", 0));
    CHECK(check_pointer(add, "add", 1));
    CHECK(check_positive(tokens, "tokens"));
    CHECK(check_positive(num_freqs, "num_freqs"));
    CHECK(check_positive(dim, "dim"));
    int index = find_variant(INFGEN_KERNEL_INPE_MLP, dtype, dim, add != NULL, num_freqs);
    if (index < 0) return INFGEN_ERROR_NOT_COMPILED;
    const infgen_kernel_info *info = &infgen_table[index];
    const void *add_arg = add != NULL ? add : fc2_bias; /* not read without HAS_ADD; any valid pointer */
    int32_t feat_width = 2 * num_freqs;
    void *args[] = {&out, &feat, &fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias, &add_arg, &tokens, &feat_width, &dim};
    unsigned grid_x = (unsigned)(((int64_t)tokens + info->tile_m - 1) / info->tile_m);
    return launch(index, INPE_MLP_ARGS, grid_x, 1, args, stream);
}
