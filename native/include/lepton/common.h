/* Lepton native kernels: shared types and status codes. */
#ifndef LEPTON_COMMON_H
#define LEPTON_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every entry point returns one of these; the Python wrappers turn non-zero into KernelError. */
typedef enum {
    LK_OK = 0,
    LK_EINVAL = 1,     /* a NULL pointer, a zero size or an unknown enum value */
    LK_ERANGE = 2,     /* a size, stride or ROI outside what the buffers hold */
    LK_ENOMEM = 3,     /* scratch allocation failed */
    LK_EOVERFLOW = 4,  /* dimensions whose byte count would overflow */
    LK_ENOTSUP = 5,    /* a valid request this implementation does not handle (CUDA subset) */
    LK_EDEVICE = 6     /* the GPU reported an error (no device, launch or copy failed) */
} lk_status;

/* The implementation that runs: the row kernels chosen at load (the best this CPU runs, or
 * LEPTON_KERNELS_VARIANT=portable|avx2|neon), or CUDA in a CUDA build. */
typedef enum {
    LK_VARIANT_PORTABLE = 0,
    LK_VARIANT_NEON = 1,
    LK_VARIANT_CUDA = 2,
    LK_VARIANT_AVX2 = 3
} lk_variant_id;

int lk_variant(void);               /* an lk_variant_id */
const char *lk_variant_name(void);  /* "portable", "avx2", "neon" or "cuda" */

#ifdef __cplusplus
}
#endif
#endif
