/* NEON row kernels for aarch64; bit-exact with row_portable.c (checked by native/tests). */
#include "kernels_internal.h"

#ifdef LK_HAVE_NEON
#include <arm_neon.h>

void lk_row_accumulate_neon(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n) {
    int i = 0;
    if (w <= 0xFFFF) {
        const uint16x4_t w4 = vdup_n_u16((uint16_t)w);
        for (; i + 8 <= n; i += 8) {
            const uint16x8_t p = vmovl_u8(vld1_u8(row + i));
            vst1q_u32(dst + i, vmlal_u16(vld1q_u32(dst + i), vget_low_u16(p), w4));
            vst1q_u32(dst + i + 4, vmlal_u16(vld1q_u32(dst + i + 4), vget_high_u16(p), w4));
        }
    }
    for (; i < n; i++) dst[i] += (uint32_t)row[i] * w;
}

static inline int32x4_t clamp255x4(int32x4_t v) {
    return vminq_s32(vmaxq_s32(v, vdupq_n_s32(0)), vdupq_n_s32(255));
}

void lk_yuv_to_rgb_neon(const int32_t *restrict y, const int32_t *restrict u, const int32_t *restrict v,
                   int32_t *restrict r, int32_t *restrict g, int32_t *restrict b, int n) {
    const int32x4_t half = vdupq_n_s32(1 << 19), c128 = vdupq_n_s32(128), c16 = vdupq_n_s32(16);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        int32x4_t yy = vmaxq_s32(vsubq_s32(vld1q_s32(y + i), c16), vdupq_n_s32(0));
        yy = vaddq_s32(vmulq_n_s32(yy, 1220542), half);
        const int32x4_t uu = vsubq_s32(vld1q_s32(u + i), c128);
        const int32x4_t vv = vsubq_s32(vld1q_s32(v + i), c128);
        const int32x4_t rr = vmlaq_n_s32(yy, vv, 1673527);
        const int32x4_t gg = vmlaq_n_s32(vmlaq_n_s32(yy, vv, -852492), uu, -409993);
        const int32x4_t bb = vmlaq_n_s32(yy, uu, 2116026);
        vst1q_s32(r + i, clamp255x4(vshrq_n_s32(rr, 20)));
        vst1q_s32(g + i, clamp255x4(vshrq_n_s32(gg, 20)));
        vst1q_s32(b + i, clamp255x4(vshrq_n_s32(bb, 20)));
    }
    for (; i < n; i++) {
        int32_t yy = y[i] - 16;
        yy = (yy < 0 ? 0 : yy) * 1220542 + (1 << 19);
        const int32_t uu = u[i] - 128, vv = v[i] - 128;
        int32_t t;
        t = (yy + 1673527 * vv) >> 20; r[i] = t < 0 ? 0 : (t > 255 ? 255 : t);
        t = (yy - 852492 * vv - 409993 * uu) >> 20; g[i] = t < 0 ? 0 : (t > 255 ? 255 : t);
        t = (yy + 2116026 * uu) >> 20; b[i] = t < 0 ? 0 : (t > 255 ? 255 : t);
    }
}

#endif
