/* Portable row kernels: the reference the SIMD versions are checked against. On x86-64 the
 * same loops are compiled a second time for AVX2 (the baseline, SSE2, has no 32-bit integer
 * min/max or multiply, so they only vectorise with it); dispatch.c picks one at load. */
#include "kernels_internal.h"

static inline __attribute__((always_inline)) void accumulate(const uint8_t *restrict row,
                                                             uint32_t w, uint32_t *restrict dst,
                                                             int n) {
    for (int i = 0; i < n; i++) dst[i] += (uint32_t)row[i] * w;
}

static inline int32_t clamp255(int32_t v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

static inline __attribute__((always_inline)) void yuv_to_rgb(
        const int32_t *restrict y, const int32_t *restrict u, const int32_t *restrict v,
        int32_t *restrict r, int32_t *restrict g, int32_t *restrict b, int n) {
    for (int i = 0; i < n; i++) {
        int32_t yy = y[i] - 16;
        yy = (yy < 0 ? 0 : yy) * 1220542;
        const int32_t uu = u[i] - 128, vv = v[i] - 128;
        r[i] = clamp255((yy + (1 << 19) + 1673527 * vv) >> 20);
        g[i] = clamp255((yy + (1 << 19) - 852492 * vv - 409993 * uu) >> 20);
        b[i] = clamp255((yy + (1 << 19) + 2116026 * uu) >> 20);
    }
}

void lk_row_accumulate_c(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n) {
    accumulate(row, w, dst, n);
}

void lk_yuv_to_rgb_c(const int32_t *restrict y, const int32_t *restrict u,
                     const int32_t *restrict v, int32_t *restrict r, int32_t *restrict g,
                     int32_t *restrict b, int n) {
    yuv_to_rgb(y, u, v, r, g, b, n);
}

#ifdef LK_HAVE_AVX2
__attribute__((target("avx2")))
void lk_row_accumulate_avx2(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n) {
    accumulate(row, w, dst, n);
}

__attribute__((target("avx2")))
void lk_yuv_to_rgb_avx2(const int32_t *restrict y, const int32_t *restrict u,
                        const int32_t *restrict v, int32_t *restrict r, int32_t *restrict g,
                        int32_t *restrict b, int n) {
    yuv_to_rgb(y, u, v, r, g, b, n);
}
#endif
