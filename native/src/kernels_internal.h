/* Internal row kernels shared by the portable and NEON builds of preprocess.c. */
#ifndef LEPTON_KERNELS_INTERNAL_H
#define LEPTON_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "lepton/common.h"

/* Which SIMD row kernels this build compiles: AVX2 on x86-64 (GCC's target attribute, so the
 * rest of the build stays baseline x86-64), NEON on aarch64. LK_FORCE_PORTABLE (LEPTON_KERNELS=ref)
 * compiles them out. Which compiled set runs is decided once, at load, in dispatch.c. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(LK_FORCE_PORTABLE)
#define LK_HAVE_AVX2 1
#endif
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(LK_FORCE_PORTABLE)
#define LK_HAVE_NEON 1
#endif

/* Outputs never overlap inputs: `restrict` lets the compiler vectorise without alias checks. */

/* dst[i] += row[i] * w   (area vertical accumulation, 8-bit weight) */
void lk_row_accumulate(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n);
/* BT.601 limited-range YUV -> R, G, B (0..255) for n pixels, as OpenCV's COLOR_YUV2RGB_NV12. */
void lk_yuv_to_rgb(const int32_t *restrict y, const int32_t *restrict u, const int32_t *restrict v,
                   int32_t *restrict r, int32_t *restrict g, int32_t *restrict b, int n);

/* The area vertical stage of one output row, overwriting dst: the sum over its count rows
 * (first, then every stride bytes) of row[i] * weight, the weight wfirst for the first row,
 * wlast for the last (a single row: wfirst) and 256 between. Where dst2 is given, the columns
 * alternate between two channels (NV12's U, V): even columns' sums go to dst[i / 2], odd ones'
 * to dst2[i / 2]. Exact in uint32 for any frame up to 65535 rows. */
void lk_row_area_v(const uint8_t *first, size_t stride, int count, uint32_t wfirst,
                   uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2, int n);
/* acc[x] = sum over k < 8 of row[first[x] + k] * tab8[8 * x + k]: the area horizontal sums for
 * contiguous columns and spans up to 8, exact while the sums fit int32 (the caller checks);
 * reads up to 7 columns past the last span (rows are padded). */
void lk_row_area_h8(const uint32_t *restrict row, const int32_t *restrict first,
                    const uint32_t *restrict tab8, int32_t *restrict acc, int n);
/* out[x] = (num[x] + t / 2) / t with t = den[x] * scale, in integers: num + t and 257 * t
 * must fit int32 (the caller checks). inv and inv_scale (the reciprocals as floats) let the
 * AVX2 version estimate the quotient and correct it by one step, exactly. */
void lk_row_div_round_i32(const int32_t *restrict num, const int32_t *restrict den,
                          const float *restrict inv, int32_t scale, float inv_scale,
                          int32_t *restrict out, int n);
/* acc[x] = sum over k < span of row[(first[x] + k) * step] * tab[k * n + x]: the area
 * horizontal sums (weights laid out k-major), exact while they fit int32 (the caller checks). */
void lk_row_area_h(const uint32_t *restrict row, int step, const int32_t *restrict first,
                   const uint32_t *restrict tab, int span, int32_t *restrict acc, int n);

/* Bilinear horizontal stage straight from two source rows (exact, the 2x2 formula):
 * v(e) = r0[e] * (2048 - wy) + r1[e] * wy,
 * out[x] = (v(off[x]) * (2048 - w[x]) + v(off[x] + step) * w[x] + 2^21) >> 22,
 * the second tap read only where w[x] > 0 (at the right edge w is 0). `limit` is how many bytes
 * of r0 and r1 may be read. On x86-64 an AVX2 version with gathers is chosen at load time. */
void lk_row_bilerp(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                   const int32_t *restrict off, const int32_t *restrict w, int step, int limit,
                   int32_t *restrict out, int n);
/* The same for interleaved U,V pairs (NV12 chroma): U at off[x], V at off[x] + 1, the second
 * tap's pair at off[x] + 2. */
void lk_row_bilerp_uv(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                      const int32_t *restrict off, const int32_t *restrict w, int limit,
                      int32_t *restrict u, int32_t *restrict v, int n);
/* Bilinear taps of up to three channels of one plane, read through byte shuffles of a 64- or
 * 128-byte window per group of eight outputs instead of gathers (x86-64 AVX2 pshufb, aarch64
 * NEON tbl; a portable build plans no group and the kernels above do all the work). Channel c
 * of output x reads bytes off[x] + first[c] and off[x] + second[c]. */
#define LK_PAIR_MAX_CHUNKS 8
typedef struct {
    int32_t base;              /* window start, bytes into the row */
    uint8_t index[3][16];      /* per channel: window offsets of (first, second) for 8 outputs */
    uint8_t mask[3][LK_PAIR_MAX_CHUNKS][16];  /* per 16-byte chunk: pshufb indices (0x80: none) */
} lk_pair_group;
typedef struct {
    lk_pair_group *groups;
    int covered;               /* outputs [0, covered) are planned, in (covered + 7) / 8 groups */
    int channels;
    int chunks;                /* window size in 16-byte chunks: 4 (64 bytes) or 8 */
} lk_pair_plan;
/* Plans the leading groups whose windows stay inside `limit` bytes and hold every tap; groups
 * must hold room for (n + 7) / 8 entries. The last group may be partial: its lanes past n
 * repeat output n - 1, and the kernels below write all eight lanes, so their outputs (and the
 * weights they read) need 8 entries of padding past n. */
void lk_pair_plan_build(lk_pair_plan *plan, lk_pair_group *groups, const int32_t *off,
                        const int *first, const int *second, int channels, int limit, int n);
/* Two source rows of one plane as the planned kernels read them: their vertical weight, the
 * plan and horizontal weights, and the next output row's rows to prefetch (or r0, r1 again). */
typedef struct {
    const uint8_t *r0, *r1, *next0, *next1;
    int32_t wy;
    const lk_pair_plan *plan;
    const int32_t *w;
} lk_planned_rows;
/* out[c][x] for x < plan->covered, exactly as lk_row_bilerp with the plan's taps. */
void lk_row_bilerp_planned(const lk_planned_rows *rows, int32_t *const out[3]);
/* NV12 straight to n interleaved uint8 pixels (R, G, B, or B, G, R where swap_rb): luma and
 * chroma bilerp, lk_yuv_to_rgb and lk_row_pack3 fused, exactly equal to them, kept in registers.
 * Writes the leading outputs both plans cover and returns how many (0 where this build has no
 * fused kernel); the caller finishes the row. */
int lk_row_nv12_rgb_planned(const lk_planned_rows *luma, const lk_planned_rows *chroma,
                            int swap_rb, uint8_t *dst, int n);

/* lk_yuv_to_rgb then lk_row_pack3 (R, G, B or, where swap_rb, B, G, R) in one pass. */
void lk_row_yuv_rgb_pack(const int32_t *restrict y, const int32_t *restrict u,
                         const int32_t *restrict v, int swap_rb, uint8_t *restrict dst, int n);
/* Interleaves three channels of 0..255 values into n pixels of uint8. */
void lk_row_pack3(const int32_t *restrict c0, const int32_t *restrict c1,
                  const int32_t *restrict c2, uint8_t *restrict dst, int n);

/* The row kernels of one variant. dispatch.c picks one table at load (CPU check, then the
 * LEPTON_KERNELS_VARIANT override) and the lk_row_* functions above call through it. */
typedef struct {
    const char *name;          /* "portable", "avx2", "neon": what lk_variant_name reports */
    int id;                    /* lk_variant_id */
    int pair_shuffles;         /* lk_pair_plan_build plans groups for the *_planned kernels */
    void (*row_accumulate)(const uint8_t *restrict, uint32_t, uint32_t *restrict, int);
    void (*yuv_to_rgb)(const int32_t *restrict, const int32_t *restrict, const int32_t *restrict,
                       int32_t *restrict, int32_t *restrict, int32_t *restrict, int);
    void (*row_area_v)(const uint8_t *, size_t, int, uint32_t, uint32_t, uint32_t *restrict,
                       uint32_t *restrict, int);
    void (*row_area_h8)(const uint32_t *restrict, const int32_t *restrict,
                        const uint32_t *restrict, int32_t *restrict, int);
    void (*row_div_round_i32)(const int32_t *restrict, const int32_t *restrict,
                              const float *restrict, int32_t, float, int32_t *restrict, int);
    void (*row_area_h)(const uint32_t *restrict, int, const int32_t *restrict,
                       const uint32_t *restrict, int, int32_t *restrict, int);
    void (*row_bilerp)(const uint8_t *restrict, const uint8_t *restrict, int32_t,
                       const int32_t *restrict, const int32_t *restrict, int, int,
                       int32_t *restrict, int);
    void (*row_bilerp_uv)(const uint8_t *restrict, const uint8_t *restrict, int32_t,
                          const int32_t *restrict, const int32_t *restrict, int,
                          int32_t *restrict, int32_t *restrict, int);
    void (*row_bilerp_planned)(const lk_planned_rows *, int32_t *const[3]);
    int (*row_nv12_rgb_planned)(const lk_planned_rows *, const lk_planned_rows *, int, uint8_t *,
                                int);
    void (*row_yuv_rgb_pack)(const int32_t *restrict, const int32_t *restrict,
                             const int32_t *restrict, int, uint8_t *restrict, int);
    void (*row_pack3)(const int32_t *restrict, const int32_t *restrict, const int32_t *restrict,
                      uint8_t *restrict, int);
    /* YOLO heads, channels first: best class per anchor (lk_class_max_*). */
    void (*class_max_f32)(const float *restrict, size_t, int, size_t, float *restrict,
                          int32_t *restrict);
    void (*class_max_u8)(const uint8_t *restrict, size_t, int, size_t, int32_t *restrict,
                         int32_t *restrict);
    void (*class_max_i8)(const int8_t *restrict, size_t, int, size_t, int32_t *restrict,
                         int32_t *restrict);
} lk_row_kernels;

#define LK_CLASS_MAX_DECLS(SUFFIX)                                                              \
    void lk_class_max_f32_##SUFFIX(const float *restrict, size_t, int, size_t,                 \
                                   float *restrict, int32_t *restrict);                         \
    void lk_class_max_u8_##SUFFIX(const uint8_t *restrict, size_t, int, size_t,                \
                                  int32_t *restrict, int32_t *restrict);                        \
    void lk_class_max_i8_##SUFFIX(const int8_t *restrict, size_t, int, size_t,                 \
                                  int32_t *restrict, int32_t *restrict);
LK_CLASS_MAX_DECLS(c)
#ifdef LK_HAVE_AVX2
LK_CLASS_MAX_DECLS(avx2)
#endif

/* The tables (row_gather.c) and the loops they share (row_portable.c, row_neon.c). */
extern const lk_row_kernels lk_rows_portable;
void lk_row_accumulate_c(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n);
void lk_yuv_to_rgb_c(const int32_t *restrict y, const int32_t *restrict u,
                     const int32_t *restrict v, int32_t *restrict r, int32_t *restrict g,
                     int32_t *restrict b, int n);
#ifdef LK_HAVE_AVX2
extern const lk_row_kernels lk_rows_avx2;
void lk_row_accumulate_avx2(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n);
void lk_yuv_to_rgb_avx2(const int32_t *restrict y, const int32_t *restrict u,
                        const int32_t *restrict v, int32_t *restrict r, int32_t *restrict g,
                        int32_t *restrict b, int n);
#endif
#ifdef LK_HAVE_NEON
extern const lk_row_kernels lk_rows_neon;
void lk_row_accumulate_neon(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n);
void lk_yuv_to_rgb_neon(const int32_t *restrict y, const int32_t *restrict u,
                        const int32_t *restrict v, int32_t *restrict r, int32_t *restrict g,
                        int32_t *restrict b, int n);
#endif

/* The table in use (chosen once, at load). */
const lk_row_kernels *lk_rows(void);
/* Switches to the named variant ("auto": the best this CPU runs); LK_EINVAL for a name this
 * build does not know, LK_ENOTSUP for one this CPU cannot run. Not thread-safe: for the C
 * self-test, which runs every check under each variant. */
int lk_rows_select(const char *name);

#endif
