/* The generated kernel table (native/aot.py writes infgen_kernels_table.c); internal to the library. */
#ifndef INFGEN_KERNELS_TABLE_H
#define INFGEN_KERNELS_TABLE_H

#include "infgen_kernels.h"

#define INFGEN_INTERNAL __attribute__((visibility("hidden")))

INFGEN_INTERNAL extern const infgen_kernel_info infgen_table[];
INFGEN_INTERNAL extern const int infgen_table_size;
INFGEN_INTERNAL extern const char infgen_table_build_info[];

#endif
