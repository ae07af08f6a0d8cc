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

/* Best class per anchor over `classes` rows of `n` contiguous values, `stride` apart (a YOLO
 * head, channels first): best value and the first class that has it. Compare-and-select
 * loops; SSE2 has no blend, so they only vectorize well with AVX2 (8400 x 80 float: 0.57 ms
 * baseline, 0.20 ms AVX2). */
#define CLASS_MAX_STEP(B, R, C)                                                                  \
    { const B v = (B)(R)[k]; const int better = v > b; b = better ? v : b; i = better ? (C) : i; }
/* Four class rows per pass over the block: the running best stays in registers across them
 * (one load and store of best/cls per four rows; 0.19 -> see docs/kernels.md). Rows are taken
 * in class order with a strict '>', so the first best class wins, as np.argmax. */
#define CLASS_MAX(T, B)                                                                         \
    for (size_t k = 0; k < n; k++) { best[k] = (B)row0[k]; cls[k] = 0; }                        \
    int c = 1;                                                                                  \
    for (; c + 3 < classes; c += 4) {                                                           \
        const T *restrict r0 = row0 + (size_t)c * stride, *restrict r1 = r0 + stride;          \
        const T *restrict r2 = r1 + stride, *restrict r3 = r2 + stride;                        \
        for (size_t k = 0; k < n; k++) {                                                        \
            B b = best[k];                                                                      \
            int32_t i = cls[k];                                                                 \
            CLASS_MAX_STEP(B, r0, c) CLASS_MAX_STEP(B, r1, c + 1)                                   \
            CLASS_MAX_STEP(B, r2, c + 2) CLASS_MAX_STEP(B, r3, c + 3)                               \
            best[k] = b;                                                                        \
            cls[k] = i;                                                                         \
        }                                                                                       \
    }                                                                                           \
    for (; c < classes; c++) {                                                                  \
        const T *restrict r0 = row0 + (size_t)c * stride;                                      \
        for (size_t k = 0; k < n; k++) {                                                        \
            B b = best[k];                                                                      \
            int32_t i = cls[k];                                                                 \
            CLASS_MAX_STEP(B, r0, c)                                                               \
            best[k] = b;                                                                        \
            cls[k] = i;                                                                         \
        }                                                                                       \
    }

#define CLASS_MAX_FUNCS(SUFFIX, ATTR)                                                           \
    ATTR void lk_class_max_f32_##SUFFIX(const float *restrict row0, size_t stride, int classes,\
                                        size_t n, float *restrict best, int32_t *restrict cls) { \
        CLASS_MAX(float, float)                                                                 \
    }                                                                                           \
    ATTR void lk_class_max_u8_##SUFFIX(const uint8_t *restrict row0, size_t stride, int classes,\
                                       size_t n, int32_t *restrict best, int32_t *restrict cls) { \
        CLASS_MAX(uint8_t, int32_t)                                                             \
    }                                                                                           \
    ATTR void lk_class_max_i8_##SUFFIX(const int8_t *restrict row0, size_t stride, int classes,\
                                       size_t n, int32_t *restrict best, int32_t *restrict cls) { \
        CLASS_MAX(int8_t, int32_t)                                                              \
    }

CLASS_MAX_FUNCS(c, )
#ifdef LK_HAVE_AVX2
CLASS_MAX_FUNCS(avx2, __attribute__((target("avx2"))))
#endif

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
