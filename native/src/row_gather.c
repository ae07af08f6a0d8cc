/* Row kernels written by hand for x86-64 AVX2 (gathers, byte shuffles, pmaddwd: what compilers
 * do not find), the bilinear shuffles, the fused NV12 -> RGB pass and the YUV -> RGB packing
 * also for NEON: the bilinear horizontal stage, the area stages and their exact division, and
 * the output packing. The portable C beside each is the reference; each variant's kernels
 * form one table (at the end), chosen at load by dispatch.c, and are bit-exact with it. */
#include "kernels_internal.h"

#include <math.h>
#include <string.h>

static void bilerp_c(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                     const int32_t *restrict off, const int32_t *restrict w, int step, int limit,
                     int32_t *restrict out, int n) {
    (void)limit;
    const int32_t wy1 = 2048 - wy;
    for (int x = 0; x < n; x++) {
        const int e0 = off[x], wx = w[x];
        const int e1 = wx ? e0 + step : e0;
        const int32_t c0 = r0[e0] * wy1 + r1[e0] * wy, c1 = r0[e1] * wy1 + r1[e1] * wy;
        out[x] = (c0 * (2048 - wx) + c1 * wx + (1 << 21)) >> 22;
    }
}

static void bilerp_uv_c(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                        const int32_t *restrict off, const int32_t *restrict w, int limit,
                        int32_t *restrict u, int32_t *restrict v, int n) {
    (void)limit;
    const int32_t wy1 = 2048 - wy;
    for (int x = 0; x < n; x++) {
        const int e0 = off[x], wx = w[x], wx1 = 2048 - wx;
        const int e1 = wx ? e0 + 2 : e0;
        const int32_t u0 = r0[e0] * wy1 + r1[e0] * wy, u1 = r0[e1] * wy1 + r1[e1] * wy;
        const int32_t v0 = r0[e0 + 1] * wy1 + r1[e0 + 1] * wy;
        const int32_t v1 = r0[e1 + 1] * wy1 + r1[e1 + 1] * wy;
        u[x] = (u0 * wx1 + u1 * wx + (1 << 21)) >> 22;
        v[x] = (v0 * wx1 + v1 * wx + (1 << 21)) >> 22;
    }
}

static void pack3_c(const int32_t *restrict c0, const int32_t *restrict c1,
                    const int32_t *restrict c2, uint8_t *restrict dst, int n) {
    for (int x = 0; x < n; x++) {
        dst[3 * x] = (uint8_t)c0[x];
        dst[3 * x + 1] = (uint8_t)c1[x];
        dst[3 * x + 2] = (uint8_t)c2[x];
    }
}

/* lk_yuv_to_rgb then lk_row_pack3, through a small buffer. */
static void yuv_rgb_pack_c(const int32_t *restrict y, const int32_t *restrict u,
                           const int32_t *restrict v, int swap_rb, uint8_t *restrict dst, int n) {
    int32_t r[64], g[64], b[64];
    for (int x = 0; x < n; x += 64) {
        const int m = n - x < 64 ? n - x : 64;
        lk_yuv_to_rgb_c(y + x, u + x, v + x, r, g, b, m);
        pack3_c(swap_rb ? b : r, g, swap_rb ? r : b, dst + 3 * (size_t)x, m);
    }
}

static void area_h_c(const uint32_t *restrict row, int step, const int32_t *restrict first,
                     const uint32_t *restrict tab, int span, int32_t *restrict acc, int n) {
    for (int x = 0; x < n; x++) {
        const uint32_t *px = row + first[x] * step;
        uint32_t sum = 0;
        for (int k = 0; k < span; k++) sum += px[k * step] * tab[(size_t)k * (size_t)n + (size_t)x];
        acc[x] = (int32_t)sum;
    }
}

typedef void accumulate_fn(const uint8_t *restrict, uint32_t, uint32_t *restrict, int);

/* The area vertical stage with a given row accumulation (portable or NEON). */
static inline __attribute__((always_inline)) void area_v_with(
        accumulate_fn *accumulate, const uint8_t *first, size_t stride, int count,
        uint32_t wfirst, uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2, int n) {
    const uint8_t *last = first + (size_t)(count - 1) * stride;
    const uint32_t wl = count > 1 ? wlast : 0u;
    if (!dst2) {
        for (int i = 0; i < n; i++) dst[i] = first[i] * wfirst + last[i] * wl;
        for (int k = 1; k < count - 1; k++) accumulate(first + (size_t)k * stride, 256u, dst, n);
        return;
    }
    for (int i = 0; i < n / 2; i++) {
        dst[i] = first[2 * i] * wfirst + last[2 * i] * wl;
        dst2[i] = first[2 * i + 1] * wfirst + last[2 * i + 1] * wl;
    }
    for (int k = 1; k < count - 1; k++) {
        const uint8_t *row = first + (size_t)k * stride;
        for (int i = 0; i < n / 2; i++) {
            dst[i] += (uint32_t)row[2 * i] << 8;
            dst2[i] += (uint32_t)row[2 * i + 1] << 8;
        }
    }
}

static void area_v_c(const uint8_t *first, size_t stride, int count, uint32_t wfirst,
                     uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2, int n) {
    area_v_with(lk_row_accumulate_c, first, stride, count, wfirst, wlast, dst, dst2, n);
}

#ifdef LK_HAVE_NEON
static void area_v_neon(const uint8_t *first, size_t stride, int count, uint32_t wfirst,
                        uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2, int n) {
    area_v_with(lk_row_accumulate_neon, first, stride, count, wfirst, wlast, dst, dst2, n);
}
#endif

static void area_h8_c(const uint32_t *restrict row, const int32_t *restrict first,
                      const uint32_t *restrict tab8, int32_t *restrict acc, int n) {
    for (int x = 0; x < n; x++) {
        const uint32_t *px = row + first[x], *w = tab8 + 8 * (size_t)x;
        uint32_t sum = 0;
        for (int k = 0; k < 8; k++) sum += px[k] * w[k];
        acc[x] = (int32_t)sum;
    }
}

static void div_round_i32_c(const int32_t *restrict num, const int32_t *restrict den,
                            const float *restrict inv, int32_t scale, float inv_scale,
                            int32_t *restrict out, int n) {
    (void)inv; (void)inv_scale;
    for (int x = 0; x < n; x++) {
        const int32_t t = den[x] * scale;
        out[x] = (num[x] + t / 2) / t;
    }
}

#ifdef LK_HAVE_NEON
#include <arm_neon.h>
#endif

void lk_pair_plan_build(lk_pair_plan *plan, lk_pair_group *groups, const int32_t *off,
                        const int *first, const int *second, int channels, int limit, int n) {
    plan->groups = groups;
    plan->channels = channels;
    plan->covered = 0;
    plan->chunks = 4;
    if (!lk_rows()->pair_shuffles) return;
    /* The window size follows the widest group (taps further apart need 128 bytes, which
     * costs twice the shuffles but still beats gathers). */
    int reach = 0;
    for (int g = 0; 8 * g < n && reach <= 16 * LK_PAIR_MAX_CHUNKS; g++) {
        const int last = 8 * g + 7 < n ? 8 * g + 7 : n - 1;
        for (int c = 0; c < channels; c++) {
            const int far = off[last] + second[c] - off[8 * g] + 1;
            reach = far > reach ? far : reach;
        }
    }
    plan->chunks = reach <= 64 ? 4 : LK_PAIR_MAX_CHUNKS;
    const int window = 16 * plan->chunks;
    if (window > limit) return;
    for (int g = 0; 8 * g < n; g++) {
        lk_pair_group *grp = groups + g;
        /* Near the row's end the window slides left to stay inside it. */
        const int base = off[8 * g] + window <= limit ? off[8 * g] : limit - window;
        int fits = 1;
        for (int c = 0; c < channels; c++) memset(grp->mask[c], 0x80, (size_t)window);
        grp->base = base;
        for (int c = 0; c < channels && fits; c++)
            for (int k = 0; k < 8 && fits; k++) {
                const int x = 8 * g + k < n ? 8 * g + k : n - 1;
                const int at[2] = {off[x] + first[c] - base, off[x] + second[c] - base};
                for (int t = 0; t < 2; t++) {
                    if (at[t] < 0 || at[t] >= window) { fits = 0; break; }
                    grp->index[c][2 * k + t] = (uint8_t)at[t];
                    grp->mask[c][at[t] >> 4][2 * k + t] = (uint8_t)(at[t] & 15);
                }
            }
        if (!fits) return;
        plan->covered = 8 * g + 8 < n ? 8 * g + 8 : n;
    }
}

#ifdef LK_HAVE_AVX2
#include <immintrin.h>

#define LK_AVX2 __attribute__((target("avx2")))

/* Eight (r0 * wy1 + r1 * wy) sums, exact in 32 bits (at most 255 * 2048). */
LK_AVX2 static inline __m256i vblend8(__m256i a, __m256i b, __m256i wy1, __m256i wy) {
    return _mm256_add_epi32(_mm256_mullo_epi32(a, wy1), _mm256_mullo_epi32(b, wy));
}

LK_AVX2 static inline __m256i hblend8(__m256i c0, __m256i c1, __m256i wx) {
    const __m256i wx1 = _mm256_sub_epi32(_mm256_set1_epi32(2048), wx);
    const __m256i s = _mm256_add_epi32(_mm256_mullo_epi32(c0, wx1), _mm256_mullo_epi32(c1, wx));
    return _mm256_srai_epi32(_mm256_add_epi32(s, _mm256_set1_epi32(1 << 21)), 22);
}

/* Vector lanes read 4 bytes from each offset, so they stop where that would pass `limit`
 * (offsets grow with x); the scalar loop finishes the row. */
static int vector_prefix(const int32_t *off, int reach, int limit, int n) {
    int m = n;
    while (m > 0 && off[m - 1] + reach > limit) m--;
    return m & ~7;
}

LK_AVX2 static void bilerp_avx2(const uint8_t *restrict r0, const uint8_t *restrict r1,
                                int32_t wy, const int32_t *restrict off,
                                const int32_t *restrict w, int step, int limit,
                                int32_t *restrict out, int n) {
    const int m = vector_prefix(off, step + 4, limit, n);
    const __m256i wyv = _mm256_set1_epi32(wy), wy1v = _mm256_set1_epi32(2048 - wy);
    const __m256i lo = _mm256_set1_epi32(0xFF);
    const __m128i shift = _mm_cvtsi32_si128(8 * step);
    const int one_load = step <= 3;
    for (int x = 0; x < m; x += 8) {
        const __m256i e0 = _mm256_loadu_si256((const __m256i *)(off + x));
        const __m256i wx = _mm256_loadu_si256((const __m256i *)(w + x));
        const __m256i g0 = _mm256_i32gather_epi32((const int *)r0, e0, 1);
        const __m256i g1 = _mm256_i32gather_epi32((const int *)r1, e0, 1);
        __m256i a1, b1;
        if (one_load) {
            a1 = _mm256_and_si256(_mm256_srl_epi32(g0, shift), lo);
            b1 = _mm256_and_si256(_mm256_srl_epi32(g1, shift), lo);
        } else {
            const __m256i e1 = _mm256_add_epi32(e0, _mm256_set1_epi32(step));
            a1 = _mm256_and_si256(_mm256_i32gather_epi32((const int *)r0, e1, 1), lo);
            b1 = _mm256_and_si256(_mm256_i32gather_epi32((const int *)r1, e1, 1), lo);
        }
        const __m256i c0 = vblend8(_mm256_and_si256(g0, lo), _mm256_and_si256(g1, lo), wy1v, wyv);
        const __m256i c1 = vblend8(a1, b1, wy1v, wyv);
        _mm256_storeu_si256((__m256i *)(out + x), hblend8(c0, c1, wx));
    }
    bilerp_c(r0, r1, wy, off + m, w + m, step, limit, out + m, n - m);
}

LK_AVX2 static void bilerp_uv_avx2(const uint8_t *restrict r0, const uint8_t *restrict r1,
                                   int32_t wy, const int32_t *restrict off,
                                   const int32_t *restrict w, int limit, int32_t *restrict u,
                                   int32_t *restrict v, int n) {
    const int m = vector_prefix(off, 4, limit, n);
    const __m256i wyv = _mm256_set1_epi32(wy), wy1v = _mm256_set1_epi32(2048 - wy);
    const __m256i lo = _mm256_set1_epi32(0xFF);
    for (int x = 0; x < m; x += 8) {
        const __m256i e0 = _mm256_loadu_si256((const __m256i *)(off + x));
        const __m256i wx = _mm256_loadu_si256((const __m256i *)(w + x));
        /* One dword per row holds U0 V0 U1 V1 (bytes 0..3). */
        const __m256i g0 = _mm256_i32gather_epi32((const int *)r0, e0, 1);
        const __m256i g1 = _mm256_i32gather_epi32((const int *)r1, e0, 1);
        const __m256i u0 = vblend8(_mm256_and_si256(g0, lo), _mm256_and_si256(g1, lo), wy1v, wyv);
        const __m256i v0 = vblend8(_mm256_and_si256(_mm256_srli_epi32(g0, 8), lo),
                                   _mm256_and_si256(_mm256_srli_epi32(g1, 8), lo), wy1v, wyv);
        const __m256i u1 = vblend8(_mm256_and_si256(_mm256_srli_epi32(g0, 16), lo),
                                   _mm256_and_si256(_mm256_srli_epi32(g1, 16), lo), wy1v, wyv);
        const __m256i v1 = vblend8(_mm256_srli_epi32(g0, 24), _mm256_srli_epi32(g1, 24), wy1v, wyv);
        _mm256_storeu_si256((__m256i *)(u + x), hblend8(u0, u1, wx));
        _mm256_storeu_si256((__m256i *)(v + x), hblend8(v0, v1, wx));
    }
    bilerp_uv_c(r0, r1, wy, off + m, w + m, limit, u + m, v + m, n - m);
}

LK_AVX2 static void pack3_avx2(const int32_t *restrict c0, const int32_t *restrict c1,
                               const int32_t *restrict c2, uint8_t *restrict dst, int n) {
    /* Eight pixels: the low byte of each lane, interleaved c0 c1 c2, 24 bytes stored. */
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1);
    const __m128i order = _mm_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1);
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        const __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(c0 + x)), pick);
        const __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(c1 + x)), pick);
        const __m256i c = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(c2 + x)), pick);
        /* Per 128-bit half: a0..a3 | b0..b3 | c0..c3 as dwords 0, 1, 2 after the unpacks. */
        const __m256i ab = _mm256_unpacklo_epi32(a, b);
        const __m256i abc = _mm256_unpacklo_epi64(ab, c);
        const __m128i lo4 = _mm_shuffle_epi8(_mm256_castsi256_si128(abc), order);
        const __m128i hi4 = _mm_shuffle_epi8(_mm256_extracti128_si256(abc, 1), order);
        uint8_t *d = dst + 3 * x;
        const uint32_t lo_tail = (uint32_t)_mm_extract_epi32(lo4, 2);
        const uint32_t hi_tail = (uint32_t)_mm_extract_epi32(hi4, 2);
        _mm_storel_epi64((__m128i *)d, lo4);
        memcpy(d + 8, &lo_tail, 4);
        _mm_storel_epi64((__m128i *)(d + 12), hi4);
        memcpy(d + 20, &hi_tail, 4);
    }
    pack3_c(c0 + x, c1 + x, c2 + x, dst + 3 * x, n - x);
}

LK_AVX2 static void area_h_avx2(const uint32_t *restrict row, int step,
                                const int32_t *restrict first, const uint32_t *restrict tab,
                                int span, int32_t *restrict acc, int n) {
    /* Across eight output columns at a time: no serial chain over the span. */
    const __m256i stepv = _mm256_set1_epi32(step);
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        __m256i idx = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(first + x)), stepv);
        __m256i sum = _mm256_setzero_si256();
        for (int k = 0; k < span; k++) {
            const __m256i v = _mm256_i32gather_epi32((const int *)row, idx, 4);
            const __m256i w = _mm256_loadu_si256((const __m256i *)(tab + (size_t)k * (size_t)n + x));
            sum = _mm256_add_epi32(sum, _mm256_mullo_epi32(v, w));
            idx = _mm256_add_epi32(idx, stepv);
        }
        _mm256_storeu_si256((__m256i *)(acc + x), sum);
    }
    for (; x < n; x++) {  /* the tail on its own: the weights' stride is n, not n - x */
        const uint32_t *px = row + first[x] * step;
        uint32_t sum = 0;
        for (int k = 0; k < span; k++) sum += px[k * step] * tab[(size_t)k * (size_t)n + (size_t)x];
        acc[x] = (int32_t)sum;
    }
}

LK_AVX2 static void area_v_avx2(const uint8_t *first, size_t stride, int count, uint32_t wfirst,
                                uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2,
                                int n) {
    /* Sixteen columns at a time: the first and last rows through pmaddwd (their bytes
     * interleaved and widened to int16 pairs, times (wfirst, wlast)); the rows between, all of
     * weight 256, summed as uint16 (up to 257 rows of 255 fit) and shifted in. One pass, and
     * NV12's U and V come out split, where pairs of rows took two passes and a third to split. */
    if (count > 259) {  /* beyond what uint16 lanes sum: downscales far past camera sizes */
        area_v_c(first, stride, count, wfirst, wlast, dst, dst2, n);
        return;
    }
    const uint8_t *last = first + (size_t)(count - 1) * stride;
    const __m256i wpair = _mm256_set1_epi32((int32_t)(wfirst | ((count > 1 ? wlast : 0u) << 16)));
    const __m256i uv_order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m128i a = _mm_loadu_si128((const __m128i *)(first + i));
        const __m128i b = _mm_loadu_si128((const __m128i *)(last + i));
        __m256i lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), wpair);
        __m256i hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)), wpair);
        if (count > 2) {
            const uint8_t *row = first + stride + i;
            __m256i sum16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)row));
            for (int k = 2; k < count - 1; k++) {
                row += stride;
                sum16 = _mm256_add_epi16(sum16, _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)row)));
            }
            lo = _mm256_add_epi32(lo, _mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm256_castsi256_si128(sum16)), 8));
            hi = _mm256_add_epi32(hi, _mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm256_extracti128_si256(sum16, 1)), 8));
        }
        if (!dst2) {
            _mm256_storeu_si256((__m256i *)(dst + i), lo);
            _mm256_storeu_si256((__m256i *)(dst + i + 8), hi);
        } else {  /* U0 V0 U1 V1 ... to U0..U7 and V0..V7 */
            const __m256i l = _mm256_permutevar8x32_epi32(lo, uv_order);
            const __m256i h = _mm256_permutevar8x32_epi32(hi, uv_order);
            _mm256_storeu_si256((__m256i *)(dst + i / 2), _mm256_permute2x128_si256(l, h, 0x20));
            _mm256_storeu_si256((__m256i *)(dst2 + i / 2), _mm256_permute2x128_si256(l, h, 0x31));
        }
    }
    if (i < n) {  /* the last columns; pairs stay whole (n is even where split) */
        const size_t half = (size_t)i / 2;
        area_v_c(first + i, stride, count, wfirst, wlast, dst2 ? dst + half : dst + i,
                 dst2 ? dst2 + half : NULL, n - i);
    }
}

LK_AVX2 static void area_h8_avx2(const uint32_t *restrict row, const int32_t *restrict first,
                                 const uint32_t *restrict tab8, int32_t *restrict acc, int n) {
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        __m256i p[8];
        for (int i = 0; i < 8; i++)
            p[i] = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(row + first[x + i])),
                                      _mm256_loadu_si256((const __m256i *)(tab8 + 8 * (size_t)(x + i))));
        /* Eight horizontal sums at once: pairwise adds, then the two 128-bit halves. */
        const __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
        const __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
        const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
        const __m256i sums = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                              _mm256_permute2x128_si256(u0, u1, 0x31));
        _mm256_storeu_si256((__m256i *)(acc + x), sums);
    }
    area_h8_c(row, first + x, tab8 + 8 * (size_t)x, acc + x, n - x);
}

LK_AVX2 static void div_round_i32_avx2(const int32_t *restrict num, const int32_t *restrict den,
                                       const float *restrict inv, int32_t scale,
                                       float inv_scale, int32_t *restrict out, int n) {
    /* A float estimate is within one of the quotient (relative error ~2^-22 on at most 256);
     * the corrections are exact in int32. */
    const __m256i sc = _mm256_set1_epi32(scale), one = _mm256_set1_epi32(1);
    const __m256 isc = _mm256_set1_ps(inv_scale);
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        const __m256i t = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(den + x)), sc);
        const __m256i m = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(num + x)),
                                           _mm256_srli_epi32(t, 1));
        const __m256 r = _mm256_mul_ps(_mm256_loadu_ps(inv + x), isc);
        __m256i q = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(m), r));
        /* q * t > m: one too many; (q + 1) * t <= m: one too few (compare masks are -1). */
        q = _mm256_add_epi32(q, _mm256_cmpgt_epi32(_mm256_mullo_epi32(q, t), m));
        q = _mm256_sub_epi32(q, _mm256_cmpgt_epi32(
            _mm256_add_epi32(m, one), _mm256_mullo_epi32(_mm256_add_epi32(q, one), t)));
        _mm256_storeu_si256((__m256i *)(out + x), q);
    }
    div_round_i32_c(num + x, den + x, inv + x, scale, inv_scale, out + x, n - x);
}

/* The window of one group: 16-byte chunk q of r0 in the low lane of win[q], of r1 in the high. */
LK_AVX2 static inline __attribute__((always_inline)) void planned_window(
        const lk_planned_rows *rows, const lk_pair_group *grp, int chunks, __m256i *win) {
    /* The next output row's window, fetched while this one computes: its last line (the
     * first is the previous window's last, or was fetched before the row). */
    for (int at = 64; at < 16 * chunks; at += 64) {
        _mm_prefetch((const char *)(rows->next0 + grp->base + at - 1), _MM_HINT_T0);
        _mm_prefetch((const char *)(rows->next1 + grp->base + at - 1), _MM_HINT_T0);
    }
    _mm_prefetch((const char *)(rows->next0 + grp->base + 16 * chunks - 1), _MM_HINT_T0);
    _mm_prefetch((const char *)(rows->next1 + grp->base + 16 * chunks - 1), _MM_HINT_T0);
    for (int q = 0; q < chunks; q++)
        win[q] = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(rows->r0 + grp->base + 16 * q))),
            _mm_loadu_si128((const __m128i *)(rows->r1 + grp->base + 16 * q)), 1);
}

/* (2048 - wx, wx) of eight outputs as int16 pairs for pmaddwd. */
LK_AVX2 static inline __m256i weight_pairs(const int32_t *w) {
    const __m256i wx = _mm256_loadu_si256((const __m256i *)w);
    return _mm256_or_si256(_mm256_sub_epi32(_mm256_set1_epi32(2048), wx), _mm256_slli_epi32(wx, 16));
}

/* Channel c of eight outputs: out = ((a*wx1 + b*wx) * wy1 + (c*wx1 + d*wx) * wy + 2^21) >> 22
 * with a, b from r0 and c, d from r1, the same integer as the vertical-first form (all below
 * 2^31). The shuffles put the (first, second) bytes of r0 in the low lane, of r1 in the high. */
LK_AVX2 static inline __attribute__((always_inline)) __m256i planned_channel(
        const __m256i *win, const uint8_t (*mask)[16], int chunks, __m256i wpair, __m256i wy1v,
        __m256i wyv) {
    __m256i bytes = _mm256_shuffle_epi8(win[0], _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)mask[0])));
    for (int q = 1; q < chunks; q++)
        bytes = _mm256_or_si256(bytes, _mm256_shuffle_epi8(win[q], _mm256_broadcastsi128_si256(
            _mm_loadu_si128((const __m128i *)mask[q]))));
    const __m256i top = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes)), wpair);
    const __m256i bot = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1)), wpair);
    const __m256i sum = _mm256_add_epi32(_mm256_mullo_epi32(top, wy1v), _mm256_mullo_epi32(bot, wyv));
    return _mm256_srai_epi32(_mm256_add_epi32(sum, _mm256_set1_epi32(1 << 21)), 22);
}

/* `chunks` is a constant at each call below, so the window stays in registers. */
LK_AVX2 static inline __attribute__((always_inline)) void bilerp_planned_body(
        const lk_planned_rows *rows, int32_t *const out[3], const int chunks) {
    const __m256i wyv = _mm256_set1_epi32(rows->wy), wy1v = _mm256_set1_epi32(2048 - rows->wy);
    const lk_pair_plan plan = *rows->plan;
    for (int g = 0; 8 * g < plan.covered; g++) {
        const lk_pair_group *grp = plan.groups + g;
        __m256i win[LK_PAIR_MAX_CHUNKS];
        planned_window(rows, grp, chunks, win);
        const __m256i wpair = weight_pairs(rows->w + 8 * g);
        for (int c = 0; c < plan.channels; c++)
            _mm256_storeu_si256((__m256i *)(out[c] + 8 * g),
                                planned_channel(win, grp->mask[c], chunks, wpair, wy1v, wyv));
    }
}

LK_AVX2 static void bilerp_planned_avx2(const lk_planned_rows *rows, int32_t *const out[3]) {
    if (rows->plan->chunks == 4) bilerp_planned_body(rows, out, 4);
    else bilerp_planned_body(rows, out, LK_PAIR_MAX_CHUNKS);
}

/* Eight pixels of lk_yuv_to_rgb then lk_row_pack3, 24 bytes at dst (32 stored where `wide`:
 * the 8 past them belong to the next pixels, written later). */
LK_AVX2 static inline __attribute__((always_inline)) void yuv_rgb_store8(
        __m256i y, __m256i u, __m256i v, int swap_rb, uint8_t *dst, int wide) {
    const __m256i c128 = _mm256_set1_epi32(128);
    const __m256i uu = _mm256_sub_epi32(u, c128), vv = _mm256_sub_epi32(v, c128);
    const __m256i yy = _mm256_add_epi32(
        _mm256_mullo_epi32(_mm256_max_epi32(_mm256_sub_epi32(y, _mm256_set1_epi32(16)),
                                            _mm256_setzero_si256()), _mm256_set1_epi32(1220542)),
        _mm256_set1_epi32(1 << 19));
    const __m256i r = _mm256_srai_epi32(
        _mm256_add_epi32(yy, _mm256_mullo_epi32(vv, _mm256_set1_epi32(1673527))), 20);
    const __m256i g = _mm256_srai_epi32(_mm256_sub_epi32(yy, _mm256_add_epi32(
        _mm256_mullo_epi32(vv, _mm256_set1_epi32(852492)),
        _mm256_mullo_epi32(uu, _mm256_set1_epi32(409993)))), 20);
    const __m256i b = _mm256_srai_epi32(
        _mm256_add_epi32(yy, _mm256_mullo_epi32(uu, _mm256_set1_epi32(2116026))), 20);
    /* The saturating packs clamp to 0..255: per lane c0 x4, c1 x4, c2 x4, c2 x4 as bytes. */
    const __m256i px = _mm256_packus_epi16(_mm256_packs_epi32(swap_rb ? b : r, g),
                                           _mm256_packs_epi32(swap_rb ? r : b, swap_rb ? r : b));
    const __m256i order = _mm256_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1,
                                           0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1);
    const __m256i rgb = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(px, order),
                                                    _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
    if (wide) {
        _mm256_storeu_si256((__m256i *)dst, rgb);
    } else {
        _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(rgb));
        _mm_storel_epi64((__m128i *)(dst + 16), _mm256_extracti128_si256(rgb, 1));
    }
}

LK_AVX2 static inline __attribute__((always_inline)) int nv12_rgb_body(
        const lk_planned_rows *luma, const lk_planned_rows *chroma, int swap_rb, uint8_t *dst,
        int n, const int ca, const int cb) {
    const __m256i wyv = _mm256_set1_epi32(luma->wy), wy1v = _mm256_set1_epi32(2048 - luma->wy);
    const __m256i wcv = _mm256_set1_epi32(chroma->wy), wc1v = _mm256_set1_epi32(2048 - chroma->wy);
    const lk_pair_plan pa = *luma->plan, pb = *chroma->plan;
    const int covered = pa.covered < pb.covered ? pa.covered : pb.covered;
    const int whole = covered / 8, done = covered == n ? n : 8 * whole;
    for (int g = 0; 8 * g < done; g++) {
        const lk_pair_group *ga = pa.groups + g, *gb = pb.groups + g;
        __m256i ywin[LK_PAIR_MAX_CHUNKS], cwin[LK_PAIR_MAX_CHUNKS];
        planned_window(luma, ga, ca, ywin);
        planned_window(chroma, gb, cb, cwin);
        const __m256i cpair = weight_pairs(chroma->w + 8 * g);
        const __m256i y = planned_channel(ywin, ga->mask[0], ca, weight_pairs(luma->w + 8 * g),
                                          wy1v, wyv);
        const __m256i u = planned_channel(cwin, gb->mask[0], cb, cpair, wc1v, wcv);
        const __m256i v = planned_channel(cwin, gb->mask[1], cb, cpair, wc1v, wcv);
        if (8 * g + 8 <= n) {
            yuv_rgb_store8(y, u, v, swap_rb, dst + 24 * (size_t)g, 8 * g + 16 <= n);
        } else {  /* the partial last group */
            uint8_t last[32];
            yuv_rgb_store8(y, u, v, swap_rb, last, 1);
            memcpy(dst + 24 * (size_t)g, last, 3 * (size_t)(n - 8 * g));
        }
    }
    return done;
}

LK_AVX2 static int nv12_rgb_planned_avx2(const lk_planned_rows *luma,
                                         const lk_planned_rows *chroma, int swap_rb,
                                         uint8_t *dst, int n) {
    if (luma->plan->chunks == 4 && chroma->plan->chunks == 4)
        return nv12_rgb_body(luma, chroma, swap_rb, dst, n, 4, 4);
    return nv12_rgb_body(luma, chroma, swap_rb, dst, n, luma->plan->chunks, chroma->plan->chunks);
}

LK_AVX2 static void yuv_rgb_pack_avx2(const int32_t *restrict y, const int32_t *restrict u,
                                      const int32_t *restrict v, int swap_rb,
                                      uint8_t *restrict dst, int n) {
    int x = 0;
    for (; x + 8 <= n; x += 8)
        yuv_rgb_store8(_mm256_loadu_si256((const __m256i *)(y + x)),
                       _mm256_loadu_si256((const __m256i *)(u + x)),
                       _mm256_loadu_si256((const __m256i *)(v + x)), swap_rb, dst + 3 * (size_t)x,
                       x + 16 <= n);
    yuv_rgb_pack_c(y + x, u + x, v + x, swap_rb, dst + 3 * (size_t)x, n - x);
}

static void bilerp_planned_x86(const lk_planned_rows *rows, int32_t *const out[3]) {
    if (rows->plan->covered > 0) bilerp_planned_avx2(rows, out);
}

static int nv12_rgb_planned_x86(const lk_planned_rows *luma, const lk_planned_rows *chroma,
                                int swap_rb, uint8_t *dst, int n) {
    if (luma->plan->covered == 0 || chroma->plan->covered == 0) return 0;
    return nv12_rgb_planned_avx2(luma, chroma, swap_rb, dst, n);
}
#endif

#ifdef LK_HAVE_NEON
/* The 64- or 128-byte window of one group in both rows. */
typedef struct { uint8x16x4_t top, bot, top2, bot2; int wide; } neon_window;

static inline __attribute__((always_inline)) void neon_planned_window(
        const lk_planned_rows *rows, const lk_pair_group *grp, int wide, neon_window *win) {
    __builtin_prefetch(rows->next0 + grp->base);
    __builtin_prefetch(rows->next1 + grp->base);
    win->wide = wide;
    win->top = vld1q_u8_x4(rows->r0 + grp->base);
    win->bot = vld1q_u8_x4(rows->r1 + grp->base);
    win->top2 = win->top;
    win->bot2 = win->bot;
    if (wide) {  /* bytes 64..127 of a 128-byte window */
        win->top2 = vld1q_u8_x4(rows->r0 + grp->base + 64);
        win->bot2 = vld1q_u8_x4(rows->r1 + grp->base + 64);
    }
}

/* out = ((a*wx1 + b*wx) * wy1 + (c*wx1 + d*wx) * wy + 2^21) >> 22 as on x86, for channel c of
 * eight outputs (w: their weights): tbl pulls the (first, second) bytes from the window of both
 * rows (tbl, then tbx for the second 64 bytes of a 128-byte window). */
static inline __attribute__((always_inline)) uint32x4x2_t neon_planned_channel(
        const neon_window *win, const uint8_t index[16], const int32_t *w, uint32_t wy) {
    const uint16x8_t wx = vcombine_u16(vmovn_u32(vreinterpretq_u32_s32(vld1q_s32(w))),
                                       vmovn_u32(vreinterpretq_u32_s32(vld1q_s32(w + 4))));
    const uint16x8_t wx1 = vsubq_u16(vdupq_n_u16(2048), wx);
    const uint8x16_t idx = vld1q_u8(index);
    uint8x16_t pt = vqtbl4q_u8(win->top, idx), pb = vqtbl4q_u8(win->bot, idx);
    if (win->wide) {  /* tbx keeps the lanes whose index is out of its table's range */
        const uint8x16_t hi = vsubq_u8(idx, vdupq_n_u8(64));
        pt = vqtbx4q_u8(pt, win->top2, hi);
        pb = vqtbx4q_u8(pb, win->bot2, hi);
    }
    /* Even bytes: first taps; odd bytes: second taps. */
    const uint8x8x2_t t = vuzp_u8(vget_low_u8(pt), vget_high_u8(pt));
    const uint8x8x2_t b = vuzp_u8(vget_low_u8(pb), vget_high_u8(pb));
    const uint16x8_t ta = vmovl_u8(t.val[0]), tb = vmovl_u8(t.val[1]);
    const uint16x8_t ba = vmovl_u8(b.val[0]), bb = vmovl_u8(b.val[1]);
    uint32x4x2_t out;
    for (int h = 0; h < 2; h++) {
        const uint16x4_t w1 = h ? vget_high_u16(wx1) : vget_low_u16(wx1);
        const uint16x4_t w0 = h ? vget_high_u16(wx) : vget_low_u16(wx);
        uint32x4_t th = vmull_u16(h ? vget_high_u16(ta) : vget_low_u16(ta), w1);
        th = vmlal_u16(th, h ? vget_high_u16(tb) : vget_low_u16(tb), w0);
        uint32x4_t bh = vmull_u16(h ? vget_high_u16(ba) : vget_low_u16(ba), w1);
        bh = vmlal_u16(bh, h ? vget_high_u16(bb) : vget_low_u16(bb), w0);
        const uint32x4_t sum = vmlaq_n_u32(vmlaq_n_u32(vdupq_n_u32(1u << 21), th, 2048u - wy),
                                           bh, wy);
        out.val[h] = vshrq_n_u32(sum, 22);
    }
    return out;
}

static void neon_bilerp_planned(const lk_planned_rows *rows, int32_t *const out[3]) {
    const lk_pair_plan plan = *rows->plan;
    for (int g = 0; 8 * g < plan.covered; g++) {
        const lk_pair_group *grp = plan.groups + g;
        neon_window win;
        neon_planned_window(rows, grp, plan.chunks > 4, &win);
        for (int c = 0; c < plan.channels; c++) {
            const uint32x4x2_t v = neon_planned_channel(&win, grp->index[c], rows->w + 8 * g,
                                                        (uint32_t)rows->wy);
            vst1q_s32(out[c] + 8 * g, vreinterpretq_s32_u32(v.val[0]));
            vst1q_s32(out[c] + 8 * g + 4, vreinterpretq_s32_u32(v.val[1]));
        }
    }
}

/* Four pixels of lk_yuv_to_rgb, narrowed to bytes with saturation (the clamp to 0..255). */
static inline void neon_yuv_rgb4(uint32x4_t y, uint32x4_t u, uint32x4_t v, int16x4_t *r,
                                 int16x4_t *g, int16x4_t *b) {
    const int32x4_t c128 = vdupq_n_s32(128);
    const int32x4_t uu = vsubq_s32(vreinterpretq_s32_u32(u), c128);
    const int32x4_t vv = vsubq_s32(vreinterpretq_s32_u32(v), c128);
    int32x4_t yy = vmaxq_s32(vsubq_s32(vreinterpretq_s32_u32(y), vdupq_n_s32(16)), vdupq_n_s32(0));
    yy = vaddq_s32(vmulq_n_s32(yy, 1220542), vdupq_n_s32(1 << 19));
    *r = vqmovn_s32(vshrq_n_s32(vmlaq_n_s32(yy, vv, 1673527), 20));
    *g = vqmovn_s32(vshrq_n_s32(vmlaq_n_s32(vmlaq_n_s32(yy, vv, -852492), uu, -409993), 20));
    *b = vqmovn_s32(vshrq_n_s32(vmlaq_n_s32(yy, uu, 2116026), 20));
}

static int neon_nv12_rgb_planned(const lk_planned_rows *luma, const lk_planned_rows *chroma,
                                 int swap_rb, uint8_t *dst, int n) {
    const lk_pair_plan pa = *luma->plan, pb = *chroma->plan;
    const int covered = pa.covered < pb.covered ? pa.covered : pb.covered;
    const int done = covered == n ? n : 8 * (covered / 8);
    for (int g = 0; 8 * g < done; g++) {
        const lk_pair_group *ga = pa.groups + g, *gb = pb.groups + g;
        neon_window ywin, cwin;
        neon_planned_window(luma, ga, pa.chunks > 4, &ywin);
        neon_planned_window(chroma, gb, pb.chunks > 4, &cwin);
        const uint32x4x2_t y = neon_planned_channel(&ywin, ga->index[0], luma->w + 8 * g,
                                                    (uint32_t)luma->wy);
        const uint32x4x2_t u = neon_planned_channel(&cwin, gb->index[0], chroma->w + 8 * g,
                                                    (uint32_t)chroma->wy);
        const uint32x4x2_t v = neon_planned_channel(&cwin, gb->index[1], chroma->w + 8 * g,
                                                    (uint32_t)chroma->wy);
        int16x4_t r[2], gr[2], b[2];
        for (int h = 0; h < 2; h++) neon_yuv_rgb4(y.val[h], u.val[h], v.val[h], r + h, gr + h, b + h);
        uint8x8x3_t px;
        px.val[0] = vqmovun_s16(swap_rb ? vcombine_s16(b[0], b[1]) : vcombine_s16(r[0], r[1]));
        px.val[1] = vqmovun_s16(vcombine_s16(gr[0], gr[1]));
        px.val[2] = vqmovun_s16(swap_rb ? vcombine_s16(r[0], r[1]) : vcombine_s16(b[0], b[1]));
        if (8 * g + 8 <= n) {
            vst3_u8(dst + 24 * (size_t)g, px);
        } else {  /* the partial last group */
            uint8_t last[24];
            vst3_u8(last, px);
            memcpy(dst + 24 * (size_t)g, last, 3 * (size_t)(n - 8 * g));
        }
    }
    return done;
}

static void neon_yuv_rgb_pack(const int32_t *restrict y, const int32_t *restrict u,
                              const int32_t *restrict v, int swap_rb, uint8_t *restrict dst,
                              int n) {
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        int16x4_t r[2], g[2], b[2];
        for (int h = 0; h < 2; h++)
            neon_yuv_rgb4(vreinterpretq_u32_s32(vld1q_s32(y + x + 4 * h)),
                          vreinterpretq_u32_s32(vld1q_s32(u + x + 4 * h)),
                          vreinterpretq_u32_s32(vld1q_s32(v + x + 4 * h)), r + h, g + h, b + h);
        uint8x8x3_t px;
        px.val[0] = vqmovun_s16(swap_rb ? vcombine_s16(b[0], b[1]) : vcombine_s16(r[0], r[1]));
        px.val[1] = vqmovun_s16(vcombine_s16(g[0], g[1]));
        px.val[2] = vqmovun_s16(swap_rb ? vcombine_s16(r[0], r[1]) : vcombine_s16(b[0], b[1]));
        vst3_u8(dst + 3 * (size_t)x, px);
    }
    yuv_rgb_pack_c(y + x, u + x, v + x, swap_rb, dst + 3 * (size_t)x, n - x);
}
#endif

/* The portable build plans no groups: the planned kernels have nothing to do. */
static void bilerp_planned_none(const lk_planned_rows *rows, int32_t *const out[3]) {
    (void)rows; (void)out;
}

static int nv12_rgb_planned_none(const lk_planned_rows *luma, const lk_planned_rows *chroma,
                                 int swap_rb, uint8_t *dst, int n) {
    (void)luma; (void)chroma; (void)swap_rb; (void)dst; (void)n;
    return 0;
}

const lk_row_kernels lk_rows_portable = {
    "portable", LK_VARIANT_PORTABLE, 0, lk_row_accumulate_c, lk_yuv_to_rgb_c, area_v_c,
    area_h8_c, div_round_i32_c, area_h_c, bilerp_c, bilerp_uv_c, bilerp_planned_none,
    nv12_rgb_planned_none, yuv_rgb_pack_c, pack3_c, lk_class_max_f32_c, lk_class_max_u8_c,
    lk_class_max_i8_c,
};

#ifdef LK_HAVE_AVX2
const lk_row_kernels lk_rows_avx2 = {
    "avx2", LK_VARIANT_AVX2, 1, lk_row_accumulate_avx2, lk_yuv_to_rgb_avx2, area_v_avx2,
    area_h8_avx2, div_round_i32_avx2, area_h_avx2, bilerp_avx2, bilerp_uv_avx2,
    bilerp_planned_x86, nv12_rgb_planned_x86, yuv_rgb_pack_avx2, pack3_avx2,
    lk_class_max_f32_avx2, lk_class_max_u8_avx2, lk_class_max_i8_avx2,
};
#endif

#ifdef LK_HAVE_NEON
const lk_row_kernels lk_rows_neon = {
    "neon", LK_VARIANT_NEON, 1, lk_row_accumulate_neon, lk_yuv_to_rgb_neon, area_v_neon,
    area_h8_c, div_round_i32_c, area_h_c, bilerp_c, bilerp_uv_c, neon_bilerp_planned,
    neon_nv12_rgb_planned, neon_yuv_rgb_pack, pack3_c, lk_class_max_f32_c, lk_class_max_u8_c,
    lk_class_max_i8_c,
};
#endif
