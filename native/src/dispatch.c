/* Run-time dispatch of the row kernels: one CPU check at load picks the best table this build
 * compiled (AVX2 on x86-64 where the CPU has it, NEON on aarch64, else portable C), and
 * LEPTON_KERNELS_VARIANT=portable|avx2|neon|auto overrides it. The lk_row_* entry points call
 * through that table; lk_variant_name() reports it. */
#include <stdlib.h>
#include <string.h>

#include "kernels_internal.h"

/* Best first: "auto" takes the first one this CPU runs. */
static const lk_row_kernels *const known[] = {
#ifdef LK_HAVE_AVX2
    &lk_rows_avx2,
#endif
#ifdef LK_HAVE_NEON
    &lk_rows_neon,
#endif
    &lk_rows_portable,
};

static const lk_row_kernels *active = &lk_rows_portable;

static int cpu_runs(const lk_row_kernels *rows) {
#ifdef LK_HAVE_AVX2
    if (rows == &lk_rows_avx2) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
#endif
    (void)rows;
    return 1;  /* portable C runs anywhere; every aarch64 CPU has NEON */
}

int lk_rows_select(const char *name) {
    const int automatic = name == NULL || *name == '\0' || strcmp(name, "auto") == 0;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        if (!automatic && strcmp(name, known[i]->name) != 0) continue;
        if (!cpu_runs(known[i])) {
            if (automatic) continue;
            return LK_ENOTSUP;
        }
        active = known[i];
        return LK_OK;
    }
    return LK_EINVAL;
}

/* Runs when the library loads, before any kernel; an override this build or CPU cannot honour
 * falls back to the best variant (the Python side reports the mismatch). */
__attribute__((constructor)) static void choose_rows(void) {
    if (lk_rows_select(getenv("LEPTON_KERNELS_VARIANT")) != LK_OK) lk_rows_select("auto");
}

const lk_row_kernels *lk_rows(void) { return active; }

#if defined(LK_WITH_CUDA)
int lk_variant(void) { return LK_VARIANT_CUDA; }
const char *lk_variant_name(void) { return "cuda"; }
#else
int lk_variant(void) { return active->id; }
const char *lk_variant_name(void) { return active->name; }
#endif

void lk_row_accumulate(const uint8_t *restrict row, uint32_t w, uint32_t *restrict dst, int n) {
    active->row_accumulate(row, w, dst, n);
}

void lk_yuv_to_rgb(const int32_t *restrict y, const int32_t *restrict u, const int32_t *restrict v,
                   int32_t *restrict r, int32_t *restrict g, int32_t *restrict b, int n) {
    active->yuv_to_rgb(y, u, v, r, g, b, n);
}

void lk_row_area_v(const uint8_t *first, size_t stride, int count, uint32_t wfirst,
                   uint32_t wlast, uint32_t *restrict dst, uint32_t *restrict dst2, int n) {
    active->row_area_v(first, stride, count, wfirst, wlast, dst, dst2, n);
}

void lk_row_area_h8(const uint32_t *restrict row, const int32_t *restrict first,
                    const uint32_t *restrict tab8, int32_t *restrict acc, int n) {
    active->row_area_h8(row, first, tab8, acc, n);
}

void lk_row_div_round_i32(const int32_t *restrict num, const int32_t *restrict den,
                          const float *restrict inv, int32_t scale, float inv_scale,
                          int32_t *restrict out, int n) {
    active->row_div_round_i32(num, den, inv, scale, inv_scale, out, n);
}

void lk_row_area_h(const uint32_t *restrict row, int step, const int32_t *restrict first,
                   const uint32_t *restrict tab, int span, int32_t *restrict acc, int n) {
    active->row_area_h(row, step, first, tab, span, acc, n);
}

void lk_row_bilerp(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                   const int32_t *restrict off, const int32_t *restrict w, int step, int limit,
                   int32_t *restrict out, int n) {
    active->row_bilerp(r0, r1, wy, off, w, step, limit, out, n);
}

void lk_row_bilerp_uv(const uint8_t *restrict r0, const uint8_t *restrict r1, int32_t wy,
                      const int32_t *restrict off, const int32_t *restrict w, int limit,
                      int32_t *restrict u, int32_t *restrict v, int n) {
    active->row_bilerp_uv(r0, r1, wy, off, w, limit, u, v, n);
}

void lk_row_bilerp_planned(const lk_planned_rows *rows, int32_t *const out[3]) {
    active->row_bilerp_planned(rows, out);
}

int lk_row_nv12_rgb_planned(const lk_planned_rows *luma, const lk_planned_rows *chroma,
                            int swap_rb, uint8_t *dst, int n) {
    return active->row_nv12_rgb_planned(luma, chroma, swap_rb, dst, n);
}

void lk_row_yuv_rgb_pack(const int32_t *restrict y, const int32_t *restrict u,
                         const int32_t *restrict v, int swap_rb, uint8_t *restrict dst, int n) {
    active->row_yuv_rgb_pack(y, u, v, swap_rb, dst, n);
}

void lk_row_pack3(const int32_t *restrict c0, const int32_t *restrict c1,
                  const int32_t *restrict c2, uint8_t *restrict dst, int n) {
    active->row_pack3(c0, c1, c2, dst, n);
}
