/* Checks the row kernels chosen at load (NEON on aarch64, AVX2 on x86-64 where the CPU has it)
 * against the portable C reference of the same build, switched to through the dispatcher: row
 * kernels on odd lengths and unaligned pointers, and whole lk_preprocess calls over formats,
 * ROIs, strides, resize modes and dtypes.
 * Planes end right before an inaccessible page, so a vector load or gather that reads past
 * the last row faults (sanitizers do not see gathers).
 * Exit status 0 when every comparison is bit-exact. Run by cross/test-neon.sh under qemu. */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lepton/preprocess.h"
#include "../src/kernels_internal.h"

/* The variant under test (chosen at load, or by LEPTON_KERNELS_VARIANT) and the reference. */
static const lk_row_kernels *simd;
static const lk_row_kernels *const ref = &lk_rows_portable;

static void use(const lk_row_kernels *rows) {
    if (lk_rows_select(rows->name) != LK_OK) {
        fprintf(stderr, "cannot select the %s kernels\n", rows->name);
        exit(2);
    }
}

/* lk_preprocess under the variant under test (into o1) and the reference (into o2). */
static void preprocess_both(const lk_image *img, const lk_preprocess_params *p, uint8_t *o1,
                            uint8_t *o2, size_t n, int *rc1, int *rc2) {
    use(simd);
    *rc1 = lk_preprocess(img, p, o1, n, NULL);
    use(ref);
    *rc2 = lk_preprocess(img, p, o2, n, NULL);
    use(simd);
}

static uint32_t state = 2463534242u;
static uint32_t rnd(void) { state ^= state << 13; state ^= state >> 17; state ^= state << 5; return state; }
static int range(int lo, int hi) { return lo + (int)(rnd() % (uint32_t)(hi - lo + 1)); }

static int failures = 0, checks = 0;
static void expect(int ok, const char *what, int a, int b) {
    checks++;
    if (!ok && failures++ < 20) fprintf(stderr, "MISMATCH %s (%d, %d)\n", what, a, b);
}

/* `bytes` bytes that end where a PROT_NONE page begins. */
static uint8_t *guarded(size_t bytes, size_t *mapped) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    *mapped = (bytes + page - 1) / page * page + page;
    uint8_t *base = mmap(NULL, *mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); exit(2); }
    if (mprotect(base + *mapped - page, page, PROT_NONE) != 0) { perror("mprotect"); exit(2); }
    return base + *mapped - page - bytes;
}

static void unguard(uint8_t *p, size_t bytes, size_t mapped) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap(p + bytes + page - mapped, mapped);
}

static void rows(void) {
    for (int n = 0; n < 70; n++) {
        for (int shift = 0; shift < 4; shift++) {
            uint8_t src[96];
            uint32_t a[96], b[96];
            for (int i = 0; i < 96; i++) { src[i] = (uint8_t)rnd(); a[i] = b[i] = rnd() & 0xFFFFF; }
            uint32_t w = (uint32_t)range(0, 256);
            simd->row_accumulate(src + shift, w, a, n);
            ref->row_accumulate(src + shift, w, b, n);
            expect(memcmp(a, b, sizeof a) == 0, "row_accumulate", n, shift);
            int32_t y[96], u[96], v[96], r1[96], g1[96], b1[96], r2[96], g2[96], b2[96];
            for (int i = 0; i < 96; i++) { y[i] = range(0, 255); u[i] = range(0, 255); v[i] = range(0, 255); }
            memset(r1, 0, sizeof r1); memset(g1, 0, sizeof g1); memset(b1, 0, sizeof b1);
            memset(r2, 0, sizeof r2); memset(g2, 0, sizeof g2); memset(b2, 0, sizeof b2);
            simd->yuv_to_rgb(y + shift, u, v + shift, r1, g1, b1, n);
            ref->yuv_to_rgb(y + shift, u, v + shift, r2, g2, b2, n);
            expect(!memcmp(r1, r2, sizeof r1) && !memcmp(g1, g2, sizeof g1) && !memcmp(b1, b2, sizeof b1),
                   "yuv_to_rgb", n, shift);
            uint8_t px1[3 * 96], px2[3 * 96];
            memset(px1, 0, sizeof px1); memset(px2, 0, sizeof px2);
            simd->row_yuv_rgb_pack(y + shift, u, v + shift, shift & 1, px1, n);
            ref->row_yuv_rgb_pack(y + shift, u, v + shift, shift & 1, px2, n);
            expect(!memcmp(px1, px2, sizeof px1), "yuv_rgb_pack", n, shift);
        }
    }
}

static void preprocess(int iterations) {
    for (int it = 0; it < iterations; it++) {
        const int fmt = range(0, 4);
        int w = range(1, 97), h = range(1, 61);
        if (fmt == LK_FMT_YUYV) w = w < 2 ? 2 : w - (w & 1);
        static const int bpp[] = {1, 2, 3, 3, 1};
        const int stride0 = w * bpp[fmt] + range(0, 9);
        const int cw = (w + 1) / 2, ch = (h + 1) / 2, stride1 = 2 * cw + range(0, 5);
        /* The last row ends the plane: no stride padding after it. */
        const size_t b0 = (size_t)stride0 * (h - 1) + (size_t)w * bpp[fmt];
        const size_t b1 = (size_t)stride1 * (ch - 1) + 2 * (size_t)cw;
        size_t m0, m1;
        uint8_t *p0 = guarded(b0, &m0), *p1 = guarded(b1, &m1);
        for (size_t i = 0; i < b0; i++) p0[i] = (uint8_t)rnd();
        for (size_t i = 0; i < b1; i++) p1[i] = (uint8_t)rnd();
        lk_image img = {fmt, w, h, p0, stride0, fmt == LK_FMT_NV12 ? p1 : NULL, stride1, b0, b1};
        lk_preprocess_params p;
        memset(&p, 0, sizeof p);
        if (rnd() & 1) {
            p.roi_x = range(0, w - 1); p.roi_y = range(0, h - 1);
            p.roi_w = range(1, w - p.roi_x); p.roi_h = range(1, h - p.roi_y);
            if (fmt == LK_FMT_YUYV) {
                p.roi_x -= p.roi_x & 1;
                p.roi_w = p.roi_w < 2 ? 2 : p.roi_w - (p.roi_w & 1);
                if (p.roi_x + p.roi_w > w) p.roi_x = 0;
            }
        }
        p.out_w = range(1, 40); p.out_h = range(1, 40); p.out_c = (rnd() & 1) ? 3 : 1;
        p.out_rgb = rnd() & 1; p.resize = rnd() & 1; p.letterbox = rnd() & 1;
        p.pad_value = range(0, 255); p.dtype = range(0, 2);
        for (int c = 0; c < 3; c++) {
            p.mul[c] = (rnd() & 1) ? 1.0f : (float)range(1, 300) / 100.0f;
            p.add[c] = (rnd() & 1) ? 0.0f : (float)range(-130, 130);
        }
        const size_t esize = p.dtype == LK_OUT_FLOAT32 ? 4 : 1;
        const size_t n = (size_t)p.out_w * p.out_h * p.out_c * esize;
        uint8_t *o1 = malloc(n), *o2 = malloc(n);
        int rc1, rc2;
        preprocess_both(&img, &p, o1, o2, n, &rc1, &rc2);
        expect(rc1 == rc2, "preprocess status", rc1, rc2);
        if (rc1 == 0) expect(memcmp(o1, o2, n) == 0, "preprocess output", fmt, p.resize);
        free(o1); free(o2);
        unguard(p0, b0, m0); unguard(p1, b1, m1);
    }
}

/* Camera-sized frames, where the shuffle-planned, fused and eight-wide vector paths cover whole
 * rows (the random cases above are small), every format, both resize modes and channel orders,
 * output widths that end in a partial group of eight. */
static void camera_sizes(void) {
    static const struct { int fmt, w, h, ow, oh; } cases[] = {
        {LK_FMT_NV12, 1280, 720, 300, 300}, {LK_FMT_NV12, 640, 480, 224, 224},
        {LK_FMT_GRAY, 640, 480, 200, 150}, {LK_FMT_YUYV, 640, 480, 320, 240},
        {LK_FMT_BGR, 320, 240, 160, 120}, {LK_FMT_RGB, 300, 200, 96, 96},
        {LK_FMT_BGR, 1280, 720, 300, 300}, {LK_FMT_BGR, 960, 540, 256, 256},
        {LK_FMT_YUYV, 1280, 720, 224, 224}, {LK_FMT_NV12, 1920, 1080, 300, 300},
        {LK_FMT_NV12, 1280, 720, 301, 171}, {LK_FMT_BGR, 640, 480, 203, 97},
    };
    static const int bpp[] = {1, 2, 3, 3, 1};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int fmt = cases[i].fmt, w = cases[i].w, h = cases[i].h;
        const size_t b0 = (size_t)w * bpp[fmt] * h, b1 = (size_t)w * (h / 2);
        size_t m0, m1;
        uint8_t *p0 = guarded(b0, &m0), *p1 = guarded(b1, &m1);
        for (size_t k = 0; k < b0; k++) p0[k] = (uint8_t)rnd();
        for (size_t k = 0; k < b1; k++) p1[k] = (uint8_t)rnd();
        lk_image img = {fmt, w, h, p0, w * bpp[fmt], fmt == LK_FMT_NV12 ? p1 : NULL, w, b0, b1};
        for (int mode = 0; mode < 4; mode++) {  /* bilinear, area; RGB, then BGR out */
            lk_preprocess_params p;
            memset(&p, 0, sizeof p);
            p.out_w = cases[i].ow; p.out_h = cases[i].oh; p.out_c = 3; p.out_rgb = mode < 2;
            p.resize = mode & 1; p.dtype = LK_OUT_UINT8;
            for (int c = 0; c < 3; c++) { p.mul[c] = 1.0f; p.add[c] = 0.0f; }
            const size_t n = (size_t)p.out_w * p.out_h * 3;
            uint8_t *o1 = malloc(n), *o2 = malloc(n);
            int rc1, rc2;
            preprocess_both(&img, &p, o1, o2, n, &rc1, &rc2);
            expect(rc1 == 0 && rc2 == 0, "camera-size status", rc1, rc2);
            expect(memcmp(o1, o2, n) == 0, "camera-size output", fmt, mode);
            free(o1); free(o2);
        }
        unguard(p0, b0, m0); unguard(p1, b1, m1);
    }
}

/* The area vertical stage over 1..7 rows and past the 257 rows a uint16 lane sums, plain and
 * split into two channels, on guarded rows. */
static void area_vertical(void) {
    static const int counts[] = {1, 2, 3, 4, 5, 6, 7, 258, 300, 600};
    for (int n = 1; n < 70; n += (n < 40 ? 1 : 7)) {
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
            const int count = counts[c];
            const int split = n % 2 == 0 && (rnd() & 1), stride = n + range(0, 5);
            const size_t bytes = (size_t)stride * (size_t)(count - 1) + (size_t)n;
            size_t mapped;
            uint8_t *rows = guarded(bytes, &mapped);
            for (size_t i = 0; i < bytes; i++) rows[i] = count > 7 ? (uint8_t)(255 - (rnd() & 3)) : (uint8_t)rnd();
            const uint32_t wfirst = (uint32_t)range(1, 256);
            const uint32_t wlast = count == 1 ? wfirst : (uint32_t)range(1, 256);
            uint32_t a[70], a2[70], b[70], b2[70];
            memset(a, 0xA5, sizeof a); memset(a2, 0xA5, sizeof a2);
            memset(b, 0xA5, sizeof b); memset(b2, 0xA5, sizeof b2);
            simd->row_area_v(rows, (size_t)stride, count, wfirst, wlast, a, split ? a2 : NULL, n);
            ref->row_area_v(rows, (size_t)stride, count, wfirst, wlast, b, split ? b2 : NULL, n);
            expect(!memcmp(a, b, sizeof a) && !memcmp(a2, b2, sizeof a2), "row_area_v", n, count);
            unguard(rows, bytes, mapped);
        }
    }
}

int main(int argc, char **argv) {
    const int iterations = argc > 1 ? atoi(argv[1]) : 2000;
    simd = lk_rows();
    printf("variant: %s\n", lk_variant_name());
    rows();
    area_vertical();
    preprocess(iterations);
    camera_sizes();
    printf("%d checks, %d mismatches\n", checks, failures);
    if (failures == 0) printf("%d passed, 0 failed\n", checks);
    return failures ? 1 : 0;
}
