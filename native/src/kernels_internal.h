/* Internal row kernels shared by the portable and NEON builds of preprocess.c. */
#ifndef LEPTON_KERNELS_INTERNAL_H
#define LEPTON_KERNELS_INTERNAL_H

#include <stdint.h>

/* dst[i] = a[i] * (2048 - wy) + b[i] * wy   (bilinear vertical blend, 11-bit weight) */
void lk_row_blend(const uint8_t *a, const uint8_t *b, int wy, int32_t *dst, int n);
/* dst[i] += row[i] * w   (area vertical accumulation, 8-bit weight) */
void lk_row_accumulate(const uint8_t *row, uint32_t w, uint32_t *dst, int n);
/* BT.601 limited-range YUV -> R, G, B (0..255) for n pixels, as OpenCV's COLOR_YUV2RGB_NV12. */
void lk_yuv_to_rgb(const int32_t *y, const int32_t *u, const int32_t *v, int32_t *r, int32_t *g,
                   int32_t *b, int n);

#endif
