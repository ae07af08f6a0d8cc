/* Internal row kernels shared by the portable and NEON builds of preprocess.c. */
#ifndef LEPTON_KERNELS_INTERNAL_H
#define LEPTON_KERNELS_INTERNAL_H

#include <stdint.h>

/* On x86-64 the baseline (SSE2) has no 32-bit integer min/max or multiply, so these loops
 * only vectorise with newer ISAs: build AVX2 and SSE4.1 clones, chosen at load time (ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define LK_VECTOR_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define LK_VECTOR_CLONES
#endif

/* dst[i] += row[i] * w   (area vertical accumulation, 8-bit weight) */
void lk_row_accumulate(const uint8_t *row, uint32_t w, uint32_t *dst, int n);
/* BT.601 limited-range YUV -> R, G, B (0..255) for n pixels, as OpenCV's COLOR_YUV2RGB_NV12. */
void lk_yuv_to_rgb(const int32_t *y, const int32_t *u, const int32_t *v, int32_t *r, int32_t *g,
                   int32_t *b, int n);

#endif
