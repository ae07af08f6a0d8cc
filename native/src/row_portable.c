/* Portable row kernels: the reference the NEON versions are checked against. */
#include "kernels_internal.h"

#if !defined(__ARM_NEON) || defined(LK_FORCE_PORTABLE)

LK_VECTOR_CLONES
void lk_row_accumulate(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n) {
    for (int i = 0; i < n; i++) dst[i] += (uint32_t)row[i] * w;
}

static inline int32_t clamp255(int32_t v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

LK_VECTOR_CLONES
void lk_yuv_to_rgb(const int32_t *restrict y, const int32_t *restrict u, const int32_t *restrict v,
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

#endif
