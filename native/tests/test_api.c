/* libinfgen_kernels from C, no GPU needed: the kernel table, every input check (each returns its
 * status and names the bad value), and, where no CUDA driver exists, a clean INFGEN_ERROR_NO_DRIVER
 * instead of a crash. Exit 0 when every check passes. */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "infgen_kernels.h"

static int failures, checks;

#define EXPECT(cond, ...)                                  \
    do {                                                   \
        checks++;                                          \
        if (!(cond)) {                                     \
            failures++;                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

/* status and message of one call: expect `want` and `needle` inside infgen_last_error() */
static void expect_error(infgen_status got, infgen_status want, const char *needle, const char *what) {
    const char *msg = infgen_last_error();
    EXPECT(got == want, "%s: status %d, want %d (%s)", what, (int)got, (int)want, msg);
    EXPECT(strstr(msg, needle) != NULL, "%s: message '%s' does not name '%s'", what, msg, needle);
}

/* fake, 16-byte aligned device addresses: only ever reach the driver when none is installed */
#define P(x) ((void *)(uintptr_t)(0x10000 * (x)))

static infgen_status attention(infgen_dtype dt, const void *q, int32_t batch, int32_t heads, int32_t m, int32_t n,
                               int32_t d, int64_t q_row, float scale) {
    int64_t qs[3] = {m * q_row, d, q_row}, ks[3] = {(int64_t)n * heads * d, d, (int64_t)heads * d};
    return infgen_attention_fwd(dt, q, P(2), P(3), P(4), batch, heads, m, n, d, qs, ks, ks, qs, scale, NULL);
}

static void test_table(void) {
    int count = infgen_kernel_count();
    EXPECT(count > 0, "empty kernel table");
    EXPECT(infgen_kernel_get(-1) == NULL && infgen_kernel_get(count) == NULL, "out-of-range index gave an entry");
    EXPECT(strstr(infgen_build_info(), "sm_90a") != NULL, "build info '%s' does not say sm_90a", infgen_build_info());
    int attention = 0, inpe = 0, inpe_mlp = 0;
    for (int i = 0; i < count; i++) {
        const infgen_kernel_info *k = infgen_kernel_get(i);
        EXPECT(k != NULL && k->name[0] != '\0', "entry %d has no name", i);
        if (k == NULL) continue;
        EXPECT(k->cubin_size > 4 && memcmp(k->cubin, "\x7f" "ELF", 4) == 0, "%s: cubin is not an ELF image", k->name);
        EXPECT(k->num_warps == 4 || k->num_warps == 8, "%s: num_warps %d", k->name, k->num_warps);
        EXPECT(k->num_params >= k->num_args && k->num_args > 0, "%s: %d params for %d args", k->name, k->num_params,
               k->num_args);
        EXPECT(k->arch == 90, "%s: arch %d", k->name, k->arch);
        attention += k->kind == INFGEN_KERNEL_ATTENTION;
        inpe += k->kind == INFGEN_KERNEL_INPE;
        inpe_mlp += k->kind == INFGEN_KERNEL_INPE_MLP;
    }
    EXPECT(attention == 8, "want attention d64 and d512 in bf16 and fp16, general and rows16, got %d attention kernels",
           attention);
    EXPECT(inpe + inpe_mlp == 4 && (inpe == 0 || inpe_mlp == 0),
           "want INPE (one form) bf16/fp16 with and without add, got %d + %d INPE kernels", inpe, inpe_mlp);
}

static void test_attention_checks(void) {
    expect_error(attention((infgen_dtype)7, P(1), 1, 1, 64, 64, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "got 7", "bad dtype");
    expect_error(attention(INFGEN_BF16, NULL, 1, 1, 64, 64, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "q must be a device pointer", "null q");
    expect_error(attention(INFGEN_BF16, (void *)0x10008, 1, 1, 64, 64, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "q must be 16-byte aligned", "misaligned q");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 0, 64, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "m must be >= 1, got 0", "empty m");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 64, -3, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "n must be >= 1, got -3", "negative n");
    expect_error(attention(INFGEN_BF16, P(1), 300, 300, 64, 64, 64, 64, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "got 90000", "batch * heads past the grid");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 64, 64, 64, 64, NAN), INFGEN_ERROR_INVALID_VALUE,
                 "scale must be finite and > 0", "NaN scale");
    expect_error(attention(INFGEN_FP16, P(1), 1, 1, 64, 64, 64, 64, -1.0f), INFGEN_ERROR_INVALID_VALUE,
                 "got -1", "negative scale");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 64, 64, 128, 128, 0.1f), INFGEN_ERROR_NOT_COMPILED,
                 "head_dim 128", "head dim not compiled");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 64, 64, 64, 72, 0.125f), INFGEN_ERROR_INVALID_VALUE,
                 "q_strides[2] (row stride) must be a multiple of 16", "row stride not a multiple of 16");
    expect_error(attention(INFGEN_BF16, P(1), 1, 1, 1, 64, 512, (int64_t)1 << 27, 0.04f), INFGEN_ERROR_INVALID_VALUE,
                 "overflows int32", "row stride times the tile past int32");
    int64_t ok[3] = {4096, 64, 64};
    expect_error(infgen_attention_fwd(INFGEN_BF16, P(1), P(2), P(3), P(4), 1, 1, 64, 64, 64, ok, NULL, ok, ok, 0.125f,
                                      NULL),
                 INFGEN_ERROR_INVALID_VALUE, "k_strides must point to 3 strides", "null strides");
}

static void test_inpe_checks(void) {
    expect_error(infgen_inpe(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 0, 8, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "grid_h must be >= 1, got 0", "empty grid");
    expect_error(infgen_inpe(INFGEN_BF16, P(1), NULL, P(3), P(4), P(5), P(6), NULL, 4, 8, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "fourier_b must be a device pointer", "null fourier_b");
    expect_error(infgen_inpe(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), (void *)0x10004, 4, 8, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "add must be 16-byte aligned", "misaligned add");
    expect_error(infgen_inpe(INFGEN_FP16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 4, 8, 64, 256, NULL),
                 INFGEN_ERROR_NOT_COMPILED, "dim 256", "width not compiled");
    expect_error(infgen_inpe(INFGEN_FP16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 65536, 65536, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "below 2^31 tokens", "grid past int32");
}

static void test_inpe_mlp_checks(void) {
    expect_error(infgen_inpe_mlp(INFGEN_BF16, P(1), NULL, P(3), P(4), P(5), P(6), NULL, 100, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "feat must be a device pointer", "null feat");
    expect_error(infgen_inpe_mlp(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 0, 64, 512, NULL),
                 INFGEN_ERROR_INVALID_VALUE, "tokens must be >= 1, got 0", "no tokens");
    expect_error(infgen_inpe_mlp(INFGEN_FP16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 100, 64, 384, NULL),
                 INFGEN_ERROR_NOT_COMPILED, "dim 384", "width not compiled");
}

static int has_kind(int kind) {
    for (int i = 0; i < infgen_kernel_count(); i++)
        if (infgen_kernel_get(i)->kind == kind) return 1;
    return 0;
}

/* With no CUDA driver on the machine, valid calls stop at the driver, with a status, not a crash. */
static void test_without_driver(void) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (cuda != NULL) {
        infgen_status s = infgen_init();
        EXPECT(s == INFGEN_SUCCESS || s == INFGEN_ERROR_NO_DRIVER || s == INFGEN_ERROR_CUDA,
               "infgen_init with a driver: status %d (%s)", (int)s, infgen_last_error());
        printf("CUDA driver present: infgen_init -> %d (%s); the GPU test covers launches\n", (int)s,
               infgen_last_error());
        dlclose(cuda);
        return;
    }
    expect_error(infgen_init(), INFGEN_ERROR_NO_DRIVER, "libcuda.so.1", "init without a driver");
    expect_error(attention(INFGEN_BF16, P(1), 2, 8, 1025, 4097, 64, 512, 0.125f), INFGEN_ERROR_NO_DRIVER,
                 "libcuda.so.1", "attention without a driver");
    if (has_kind(INFGEN_KERNEL_INPE)) {
        expect_error(infgen_inpe(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), P(7), 135, 240, 64, 512, NULL),
                     INFGEN_ERROR_NO_DRIVER, "libcuda.so.1", "INPE without a driver");
        expect_error(infgen_inpe_mlp(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 100, 64, 512, NULL),
                     INFGEN_ERROR_NOT_COMPILED, "kernels/inpe.py has the other", "the absent INPE form");
    } else {
        expect_error(infgen_inpe_mlp(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), P(7), 135 * 240, 64, 512, NULL),
                     INFGEN_ERROR_NO_DRIVER, "libcuda.so.1", "INPE MLP without a driver");
        expect_error(infgen_inpe(INFGEN_BF16, P(1), P(2), P(3), P(4), P(5), P(6), NULL, 4, 8, 64, 512, NULL),
                     INFGEN_ERROR_NOT_COMPILED, "kernels/inpe.py has the other", "the absent INPE form");
    }
}

int main(void) {
    test_table();
    test_attention_checks();
    test_inpe_checks();
    test_inpe_mlp_checks();
    test_without_driver();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
