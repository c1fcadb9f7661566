/* libinfgen_kernels: the InfGen runtime's Triton kernels, compiled ahead of time for sm_90a
 * (native/aot.py) and launched from C with explicit shapes, strides and a CUDA stream.
 *
 * No CUDA library is linked: the driver (libcuda.so.1) is loaded at the first launch, so the
 * library loads and reports its kernel table on machines without a GPU. Launches go into the
 * calling thread's current CUDA context (the CUDA runtime's primary context after cudaSetDevice,
 * or any context made current with cuCtxSetCurrent) on the given stream, asynchronously.
 *
 * Every function returns an infgen_status; on failure infgen_last_error() names the bad value
 * (thread-local, valid until the thread's next call into the library). Element counts and
 * strides are in elements, not bytes. Device pointers must be 16-byte aligned.
 */
#ifndef INFGEN_KERNELS_H
#define INFGEN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#if defined(INFGEN_KERNELS_BUILD)
#define INFGEN_API __attribute__((visibility("default")))
#else
#define INFGEN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st; /* CUstream and cudaStream_t are both `struct CUstream_st *`; NULL: the legacy default stream */

typedef enum {
    INFGEN_SUCCESS = 0,
    INFGEN_ERROR_INVALID_VALUE = 1,      /* a shape, stride, pointer or scale the kernels cannot take */
    INFGEN_ERROR_NOT_COMPILED = 2,       /* no variant for this head dim / width / dtype in the table */
    INFGEN_ERROR_NO_DRIVER = 3,          /* libcuda.so.1 could not be loaded, or is older than CUDA 12.0 */
    INFGEN_ERROR_UNSUPPORTED_DEVICE = 4, /* the current device is not compute capability 9.0 (sm_90a) */
    INFGEN_ERROR_CUDA = 5                /* a CUDA driver call failed (message has its name and error) */
} infgen_status;

typedef enum { INFGEN_BF16 = 0, INFGEN_FP16 = 1 } infgen_dtype;
/* INPE comes in the form kernels/inpe.py has at build time: INFGEN_KERNEL_INPE (grid -> features ->
 * MLP in one kernel; infgen_inpe) before kernels #10, INFGEN_KERNEL_INPE_MLP (the MLP over given
 * features; infgen_inpe_mlp) since. The other function returns INFGEN_ERROR_NOT_COMPILED. */
typedef enum { INFGEN_KERNEL_ATTENTION = 0, INFGEN_KERNEL_INPE = 1, INFGEN_KERNEL_INPE_MLP = 2 } infgen_kernel_kind;

/* One compiled kernel variant (read-only; the table lives as long as the library). */
typedef struct {
    const char *name;          /* e.g. "attention_d512_bf16" */
    const char *symbol;        /* the kernel's entry name inside the cubin */
    int kind;                  /* infgen_kernel_kind */
    int dtype;                 /* infgen_dtype */
    int dim;                   /* head dim (attention) or embedding width (inpe) */
    int tile_m;                /* attention: query rows per program; inpe: tokens per program */
    int tile_n;                /* attention: keys per inner step; inpe: fc2 output columns (inpe_mlp: hidden units) per step */
    int num_warps;             /* block = 32 * num_warps threads */
    int num_stages;            /* software pipelining depth it was compiled with */
    int flags;                 /* attention: 1 = for M, N multiples of 16; inpe: 1 = adds a vector to every row */
    int num_freqs;             /* inpe: Fourier frequencies F; 0 for attention */
    int shared;                /* dynamic shared memory per block, bytes */
    int num_params;            /* kernel parameters in the cubin (num_args + Triton's scratch pointers) */
    int num_args;              /* runtime arguments the launcher passes */
    int arch;                  /* 90: sm_90a */
    const char *args;          /* the runtime arguments in kernel order, comma-separated */
    const unsigned char *cubin;
    size_t cubin_size;
} infgen_kernel_info;

/* The kernel table: infgen_kernel_count() entries, 0 <= index < count (NULL otherwise). */
INFGEN_API int infgen_kernel_count(void);
INFGEN_API const infgen_kernel_info *infgen_kernel_get(int index);
/* "triton X.Y.Z, sm_90a, N kernels": what built the table. */
INFGEN_API const char *infgen_build_info(void);

/* Loads the CUDA driver and initialises it (cuInit). Launches call it themselves; hosts may call
 * it first to tell "no driver" from other errors. Safe to call from any thread, any number of times. */
INFGEN_API infgen_status infgen_init(void);

/* Message for the calling thread's last failed call ("" when none). */
INFGEN_API const char *infgen_last_error(void);

/* Flash attention forward, no mask: o = softmax(q k^T * scale) v, softmax in fp32.
 *   q (batch, heads, m, head_dim), k and v (batch, heads, n, head_dim), o like q, all `dtype`;
 *   *_strides = {batch, head, row} strides in elements, each a multiple of 16 and < 2^31
 *   (0 broadcasts); the head_dim stride is 1.
 *   head_dim: a compiled one (64, 512); batch * heads <= 65535; m, n >= 1; scale > 0 and finite.
 * (batch, m, heads * head_dim) buffers viewed per head have strides {m*heads*head_dim, head_dim,
 * heads*head_dim}. */
INFGEN_API infgen_status infgen_attention_fwd(
    infgen_dtype dtype, const void *q, const void *k, const void *v, void *o,
    int32_t batch, int32_t heads, int32_t m, int32_t n, int32_t head_dim,
    const int64_t q_strides[3], const int64_t k_strides[3], const int64_t v_strides[3],
    const int64_t o_strides[3], float scale, struct CUstream_st *stream);

/* INPE (the INFGEN_KERNEL_INPE form): positional embeddings of a (grid_h, grid_w) token grid.
 *   out (grid_h * grid_w, dim) row-major in `dtype`; fourier_b (3, num_freqs) float32;
 *   fc1_weight (dim, 2 * num_freqs), fc1_bias (dim,), fc2_weight (dim, dim), fc2_bias (dim,),
 *   add (dim,) or NULL (a vector added to every row: the mask token), all `dtype`, contiguous.
 *   dim and num_freqs: a compiled pair (512, 64). */
INFGEN_API infgen_status infgen_inpe(
    infgen_dtype dtype, void *out, const float *fourier_b,
    const void *fc1_weight, const void *fc1_bias, const void *fc2_weight, const void *fc2_bias,
    const void *add, int32_t grid_h, int32_t grid_w, int32_t num_freqs, int32_t dim,
    struct CUstream_st *stream);

/* INPE's MLP over given Fourier features (the INFGEN_KERNEL_INPE_MLP form):
 *   out (tokens, dim) = fc2(gelu(fc1(feat))) + fc2_bias (+ add), row-major in `dtype`;
 *   feat (tokens, 2 * num_freqs): [cos(2 pi p B), sin(2 pi p B)] of the grid's sphere points, as
 *   infgen.ref.inpe.fourier_features computes them (fp32 math), stored in `dtype`;
 *   weights and add as for infgen_inpe. dim and num_freqs: a compiled pair (512, 64). */
INFGEN_API infgen_status infgen_inpe_mlp(
    infgen_dtype dtype, void *out, const void *feat,
    const void *fc1_weight, const void *fc1_bias, const void *fc2_weight, const void *fc2_bias,
    const void *add, int32_t tokens, int32_t num_freqs, int32_t dim, struct CUstream_st *stream);

#ifdef __cplusplus
}
#endif
#endif /* INFGEN_KERNELS_H */
