/* Fused preprocessing. Each output row is built in two stages: a vertical stage that blends
 * (bilinear) or accumulates (area) the source rows it needs over the ROI's width, vectorised by
 * lk_row_* kernels, then a horizontal stage that applies per-column taps, converts colour and
 * quantizes straight into the caller's tensor. Integer arithmetic throughout, so results are
 * exact and reproducible (agent/kernels/reference.py is the executable specification). */
#include "lepton/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_internal.h"

#define LK_MAX_DIM 65535
#define LK_MAX_OUT_DIM 16384

typedef struct { int i0, i1, w; } lin_tap;           /* bilinear: indices and 11-bit weight of i1 */
typedef struct { int start, count, wfirst, wlast; } area_tap; /* 8-bit weights, middle = 256 */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* OpenCV INTER_LINEAR geometry: half-pixel centres, clamped at the edges of [lo, hi]. */
static void linear_taps(lin_tap *taps, int n, double scale, double offset, int lo, int hi) {
    for (int i = 0; i < n; i++) {
        double f = (i + 0.5) * scale - 0.5 + offset;
        int s = (int)floor(f);
        double frac = f - s;
        if (s < lo) { s = lo; frac = 0.0; }
        if (s >= hi) { s = hi; frac = 0.0; }
        taps[i].i0 = s;
        taps[i].i1 = s < hi ? s + 1 : s;
        taps[i].w = (int)floor(frac * 2048.0 + 0.5);
    }
}

/* Box [i*scale + offset, (i+1)*scale + offset) clipped to [lo, hi), pixel weights in 1/256. */
static void area_taps(area_tap *taps, int n, double scale, double offset, int lo, int hi) {
    for (int i = 0; i < n; i++) {
        double b0 = i * scale + offset, b1 = (i + 1) * scale + offset;
        if (b0 < lo) b0 = lo;
        if (b1 > hi) b1 = hi;
        int s = (int)floor(b0), e = (int)ceil(b1);
        if (e <= s) e = s + 1;
        if (e > hi) { e = hi; if (s >= e) s = e - 1; }
        taps[i].start = s;
        taps[i].count = e - s;
        if (e - s == 1) {
            int w = (int)floor((b1 - b0) * 256.0 + 0.5);
            taps[i].wfirst = taps[i].wlast = w < 1 ? 1 : w;
        } else {
            int wf = (int)floor(((s + 1) - b0) * 256.0 + 0.5);
            int wl = (int)floor((b1 - (e - 1)) * 256.0 + 0.5);
            taps[i].wfirst = wf < 1 ? 1 : wf;
            taps[i].wlast = wl < 1 ? 1 : wl;
        }
    }
}

/* Bilinear horizontal stage straight from two source rows, one channel at `step` bytes. The
 * taps hold pixel indices; the 2x2 sum is exact integer arithmetic, rounded once. */
static void bilinear_row1(const uint8_t *r0, const uint8_t *r1, int wy, const lin_tap *taps, int n,
                          int step, int32_t *out) {
    const int32_t wy1 = 2048 - wy;
    for (int x = 0; x < n; x++) {
        const int e0 = taps[x].i0 * step, e1 = taps[x].i1 * step, wx = taps[x].w;
        const int32_t c0 = r0[e0] * wy1 + r1[e0] * wy, c1 = r0[e1] * wy1 + r1[e1] * wy;
        out[x] = (c0 * (2048 - wx) + c1 * wx + (1 << 21)) >> 22;
    }
}

static void bilinear_row3(const uint8_t *r0, const uint8_t *r1, int wy, const lin_tap *taps, int n,
                          int32_t *o0, int32_t *o1, int32_t *o2) {
    const int32_t wy1 = 2048 - wy;
    for (int x = 0; x < n; x++) {
        const uint8_t *a0 = r0 + 3 * taps[x].i0, *b0 = r1 + 3 * taps[x].i0;
        const uint8_t *a1 = r0 + 3 * taps[x].i1, *b1 = r1 + 3 * taps[x].i1;
        const int32_t wx = taps[x].w, wx1 = 2048 - wx;
        o0[x] = ((a0[0] * wy1 + b0[0] * wy) * wx1 + (a1[0] * wy1 + b1[0] * wy) * wx + (1 << 21)) >> 22;
        o1[x] = ((a0[1] * wy1 + b0[1] * wy) * wx1 + (a1[1] * wy1 + b1[1] * wy) * wx + (1 << 21)) >> 22;
        o2[x] = ((a0[2] * wy1 + b0[2] * wy) * wx1 + (a1[2] * wy1 + b1[2] * wy) * wx + (1 << 21)) >> 22;
    }
}

/* round(num / den) with ties up, exact: a reciprocal estimate corrected by one step. */
static inline uint64_t div_round(uint64_t acc, uint64_t den, double inv) {
    const uint64_t num = acc + den / 2;
    uint64_t q = (uint64_t)((double)num * inv);
    if (q * den > num) q--;
    else if ((q + 1) * den <= num) q++;
    return q;
}

static uint32_t area_weight(const area_tap *t, int k) {
    if (k == 0) return (uint32_t)t->wfirst;
    if (k == t->count - 1) return (uint32_t)t->wlast;
    return 256u;
}

static uint32_t area_total(const area_tap *t) {
    if (t->count == 1) return (uint32_t)t->wfirst;
    return (uint32_t)t->wfirst + (uint32_t)t->wlast + 256u * (uint32_t)(t->count - 2);
}

typedef struct {
    const lk_image *src;
    const lk_preprocess_params *p;
    int rx, ry, rw, rh;       /* ROI */
    int cw, ch, ox, oy;       /* content size and offset in the output */
    int yuv;                  /* NV12 or YUYV */
    int src_bpp;              /* bytes per pixel of plane0 (NV12/GRAY 1, YUYV 2, BGR/RGB 3) */
} job;

static int validate(const lk_image *s, const lk_preprocess_params *p, size_t out_bytes, job *j) {
    if (!s || !p || !s->plane0) return LK_EINVAL;
    if (s->format < LK_FMT_NV12 || s->format > LK_FMT_GRAY) return LK_EINVAL;
    if (p->resize != LK_RESIZE_BILINEAR && p->resize != LK_RESIZE_AREA) return LK_EINVAL;
    if (p->dtype < LK_OUT_UINT8 || p->dtype > LK_OUT_FLOAT32) return LK_EINVAL;
    if (p->out_c != 1 && p->out_c != 3) return LK_EINVAL;
    if (s->width <= 0 || s->height <= 0 || p->out_w <= 0 || p->out_h <= 0) return LK_EINVAL;
    if (s->width > LK_MAX_DIM || s->height > LK_MAX_DIM) return LK_EOVERFLOW;
    if (p->out_w > LK_MAX_OUT_DIM || p->out_h > LK_MAX_OUT_DIM) return LK_EOVERFLOW;
    if (p->pad_value < 0 || p->pad_value > 255) return LK_EINVAL;
    static const int bpp[] = {1, 2, 3, 3, 1};
    j->src_bpp = bpp[s->format];
    j->yuv = s->format == LK_FMT_NV12 || s->format == LK_FMT_YUYV;
    if (s->format == LK_FMT_YUYV && (s->width & 1)) return LK_EINVAL;
    const uint64_t row_bytes = (uint64_t)s->width * (uint64_t)j->src_bpp;
    if (s->stride0 < 0 || (uint64_t)s->stride0 < row_bytes) return LK_ERANGE;
    if ((uint64_t)s->stride0 * (uint64_t)(s->height - 1) + row_bytes > s->plane0_bytes) return LK_ERANGE;
    if (s->format == LK_FMT_NV12) {
        if (!s->plane1) return LK_EINVAL;
        const uint64_t cw = (uint64_t)(s->width + 1) / 2, chh = (uint64_t)(s->height + 1) / 2;
        if (s->stride1 < 0 || (uint64_t)s->stride1 < 2 * cw) return LK_ERANGE;
        if ((uint64_t)s->stride1 * (chh - 1) + 2 * cw > s->plane1_bytes) return LK_ERANGE;
    }
    j->rx = p->roi_x; j->ry = p->roi_y; j->rw = p->roi_w; j->rh = p->roi_h;
    if (j->rw == 0 && j->rh == 0 && j->rx == 0 && j->ry == 0) { j->rw = s->width; j->rh = s->height; }
    if (j->rx < 0 || j->ry < 0 || j->rw <= 0 || j->rh <= 0) return LK_ERANGE;
    if ((int64_t)j->rx + j->rw > s->width || (int64_t)j->ry + j->rh > s->height) return LK_ERANGE;
    /* YUYV ROIs start and end on whole pixel pairs, so U and V stay with their Y. */
    if (s->format == LK_FMT_YUYV && ((j->rx | j->rw) & 1)) return LK_EINVAL;
    static const size_t esize[] = {1, 1, 4};
    const uint64_t need = (uint64_t)p->out_w * (uint64_t)p->out_h * (uint64_t)p->out_c * esize[p->dtype];
    if (need > out_bytes) return LK_ERANGE;
    if (p->letterbox) {
        const double sc = fmin((double)p->out_w / j->rw, (double)p->out_h / j->rh);
        j->cw = clampi((int)floor(j->rw * sc + 0.5), 1, p->out_w);
        j->ch = clampi((int)floor(j->rh * sc + 0.5), 1, p->out_h);
        j->ox = (p->out_w - j->cw) / 2;
        j->oy = (p->out_h - j->ch) / 2;
    } else {
        j->cw = p->out_w; j->ch = p->out_h; j->ox = 0; j->oy = 0;
    }
    return LK_OK;
}

typedef struct {
    uint8_t *u8; int8_t *i8; float *f32;
    int identity_u8;
} sink;

static inline void store(const lk_preprocess_params *p, const sink *o, size_t idx, int c, int32_t v) {
    if (o->identity_u8) { o->u8[idx] = (uint8_t)v; return; }
    const float x = (float)v * p->mul[c] + p->add[c];
    if (p->dtype == LK_OUT_FLOAT32) { o->f32[idx] = x; return; }
    long q = lrintf(x);
    if (p->dtype == LK_OUT_UINT8) o->u8[idx] = (uint8_t)(q < 0 ? 0 : (q > 255 ? 255 : q));
    else o->i8[idx] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
}

/* Writes one output row from the R, G, B (or gray in r) content values and the padding. */
static void emit_row(const job *j, const sink *o, int y, const int32_t *r, const int32_t *g,
                     const int32_t *b, int have_rgb) {
    const lk_preprocess_params *p = j->p;
    const int C = p->out_c;
    size_t base = (size_t)y * (size_t)p->out_w * (size_t)C;
    if (o->identity_u8 && C == 3 && have_rgb && y >= j->oy && y < j->oy + j->ch && j->cw == p->out_w) {
        /* The common case: a full-width row of uint8 pixels, no quantization. */
        uint8_t *dst = o->u8 + base;
        const int32_t *c0 = p->out_rgb ? r : b, *c2 = p->out_rgb ? b : r;
        for (int x = 0; x < j->cw; x++) {
            dst[3 * x] = (uint8_t)c0[x];
            dst[3 * x + 1] = (uint8_t)g[x];
            dst[3 * x + 2] = (uint8_t)c2[x];
        }
        return;
    }
    for (int x = 0; x < p->out_w; x++) {
        const int cx = x - j->ox;
        const int inside = y >= j->oy && y < j->oy + j->ch && cx >= 0 && cx < j->cw;
        const size_t idx = base + (size_t)x * (size_t)C;
        if (!inside) {
            for (int c = 0; c < C; c++) store(p, o, idx + (size_t)c, c, p->pad_value);
            continue;
        }
        if (C == 1) {
            int32_t gray = r[cx];
            if (have_rgb) gray = (b[cx] * 1868 + g[cx] * 9617 + r[cx] * 4899 + 8192) >> 14;
            store(p, o, idx, 0, gray);
        } else if (!have_rgb) {
            store(p, o, idx, 0, r[cx]); store(p, o, idx + 1, 1, r[cx]); store(p, o, idx + 2, 2, r[cx]);
        } else if (p->out_rgb) {
            store(p, o, idx, 0, r[cx]); store(p, o, idx + 1, 1, g[cx]); store(p, o, idx + 2, 2, b[cx]);
        } else {
            store(p, o, idx, 0, b[cx]); store(p, o, idx + 1, 1, g[cx]); store(p, o, idx + 2, 2, r[cx]);
        }
    }
}

/* Per-plane geometry of the horizontal stage: element k of a pixel at column i of the
 * vertical-stage row lives at i * step + k + base. */
typedef struct { int step, base; } layout;

int lk_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                  size_t out_bytes, lk_letterbox_info *info) {
    if (!out) return LK_EINVAL;
    job j;
    memset(&j, 0, sizeof j);
    j.src = src;
    j.p = params;
    int rc = validate(src, params, out_bytes, &j);
    if (rc != LK_OK) return rc;
    const lk_preprocess_params *p = params;
    if (info) {
        info->scale = (float)j.cw / (float)j.rw;
        info->offset_x = j.ox; info->offset_y = j.oy; info->content_w = j.cw; info->content_h = j.ch;
    }
    sink o = {(uint8_t *)out, (int8_t *)out, (float *)out, 0};
    o.identity_u8 = p->dtype == LK_OUT_UINT8;
    for (int c = 0; c < p->out_c; c++)
        if (p->mul[c] != 1.0f || p->add[c] != 0.0f) o.identity_u8 = 0;

    const int area = p->resize == LK_RESIZE_AREA;
    const int nv12 = src->format == LK_FMT_NV12, yuyv = src->format == LK_FMT_YUYV;
    const double sx = (double)j.rw / j.cw, sy = (double)j.rh / j.ch;
    /* Plane A: luma (YUV) or the packed pixels; plane B: NV12 chroma. Columns of the vertical
     * stage cover the ROI: for packed formats, rw pixels of src_bpp bytes. */
    const int a_cols = j.rw * j.src_bpp;
    const int cx0 = j.rx / 2, cx1 = (j.rx + j.rw - 1) / 2;      /* chroma columns of the ROI */
    const int cy0 = j.ry / 2, cy1 = (j.ry + j.rh - 1) / 2;
    const int b_cols = nv12 ? 2 * (cx1 - cx0 + 1) : 0;
    const int cw = j.cw;

    /* Scratch: vertical rows (int32) and taps. */
    size_t bytes = (size_t)(a_cols + b_cols + 8) * 4 + (size_t)cw * 6 * 4 +
                   (size_t)cw * 2 * (area ? sizeof(area_tap) : sizeof(lin_tap)) +
                   64;
    uint8_t *scratch = (uint8_t *)malloc(bytes);
    if (!scratch) return LK_ENOMEM;
    int32_t *rowa = (int32_t *)scratch;
    int32_t *rowb = rowa + a_cols + 4;
    int32_t *cy = rowb + b_cols + 4, *cu = cy + cw, *cv = cu + cw, *cr = cv + cw, *cg = cr + cw, *cb = cg + cw;
    void *taps_a = (void *)(cb + cw);
    void *taps_b = (uint8_t *)taps_a + (size_t)cw * (area ? sizeof(area_tap) : sizeof(lin_tap));

    /* Horizontal taps in ROI-relative columns. Chroma (NV12, YUYV) in chroma columns relative
     * to cx0 (NV12) or to the first pair of the ROI (YUYV, whose ROI starts on even x). */
    const double chroma_offset = (j.rx) / 2.0 - (nv12 ? cx0 : j.rx / 2);
    if (area) {
        area_taps((area_tap *)taps_a, cw, sx, 0.0, 0, j.rw);
        if (j.yuv) area_taps((area_tap *)taps_b, cw, sx / 2.0, chroma_offset, 0,
                             nv12 ? cx1 - cx0 + 1 : (j.rw + 1) / 2);
    } else {
        linear_taps((lin_tap *)taps_a, cw, sx, 0.0, 0, j.rw - 1);
        if (j.yuv) linear_taps((lin_tap *)taps_b, cw, sx / 2.0, chroma_offset, 0,
                               (nv12 ? cx1 - cx0 + 1 : (j.rw + 1) / 2) - 1);
    }
    /* YUYV pairs: element offsets in the packed row. */
    const layout la = yuyv ? (layout){2, 0} : (layout){j.src_bpp, 0};

    lin_tap vt = {0, 0, 0}, vtb = {0, 0, 0};
    area_tap at = {0, 0, 0, 0}, atb = {0, 0, 0, 0};
    const uint8_t *plane0 = src->plane0 + (size_t)j.rx * (size_t)j.src_bpp;
    const uint8_t *plane1 = nv12 ? src->plane1 + (size_t)cx0 * 2 : NULL;
    const uint8_t *a_r0 = NULL, *a_r1 = NULL, *b_r0 = NULL, *b_r1 = NULL;

    for (int y = 0; y < p->out_h; y++) {
        const int cyrow = y - j.oy;
        if (cyrow < 0 || cyrow >= j.ch) { emit_row(&j, &o, y, cr, cg, cb, 0); continue; }
        /* Vertical stage. */
        if (area) {
            area_taps(&at, 1, sy, cyrow * sy, 0, j.rh);
            memset(rowa, 0, (size_t)a_cols * 4);
            for (int k = 0; k < at.count; k++)
                lk_row_accumulate(plane0 + (size_t)(j.ry + at.start + k) * (size_t)src->stride0,
                                  area_weight(&at, k), (uint32_t *)rowa, a_cols);
            if (nv12) {
                area_taps(&atb, 1, sy / 2.0, j.ry / 2.0 - cy0 + cyrow * sy / 2.0, 0, cy1 - cy0 + 1);
                memset(rowb, 0, (size_t)b_cols * 4);
                for (int k = 0; k < atb.count; k++)
                    lk_row_accumulate(plane1 + (size_t)(cy0 + atb.start + k) * (size_t)src->stride1,
                                      area_weight(&atb, k), (uint32_t *)rowb, b_cols);
            }
        } else {
            /* Bilinear reads only the 2x2 neighbourhoods it needs, straight from the rows. */
            linear_taps(&vt, 1, sy, cyrow * sy, 0, j.rh - 1);
            a_r0 = plane0 + (size_t)(j.ry + vt.i0) * (size_t)src->stride0;
            a_r1 = plane0 + (size_t)(j.ry + vt.i1) * (size_t)src->stride0;
            if (nv12) {
                linear_taps(&vtb, 1, sy / 2.0, j.ry / 2.0 - cy0 + cyrow * sy / 2.0, 0, cy1 - cy0);
                b_r0 = plane1 + (size_t)(cy0 + vtb.i0) * (size_t)src->stride1;
                b_r1 = plane1 + (size_t)(cy0 + vtb.i1) * (size_t)src->stride1;
            }
        }
        /* Horizontal stage: luma / packed channels. */
        const int nch = j.yuv ? 1 : j.src_bpp;
        int32_t *dst[3] = {cy, cu, cv};
        if (area) {
            const uint64_t vtot = area_total(&at);
            for (int x = 0; x < cw; x++) {
                const area_tap *t = (const area_tap *)taps_a + x;
                const uint64_t tot = vtot * area_total(t);
                const double inv = 1.0 / (double)tot;
                for (int c = 0; c < nch; c++) {
                    const uint32_t *px = (const uint32_t *)rowa + t->start * la.step + c;
                    uint64_t acc = (uint64_t)px[0] * (uint32_t)t->wfirst;
                    if (t->count > 1) {
                        uint64_t mid = 0;
                        for (int k = 1; k < t->count - 1; k++) mid += px[k * la.step];
                        acc += mid * 256u + (uint64_t)px[(t->count - 1) * la.step] * (uint32_t)t->wlast;
                    }
                    dst[c][x] = (int32_t)div_round(acc, tot, inv);
                }
            }
        } else if (nch == 3) {
            bilinear_row3(a_r0, a_r1, vt.w, (const lin_tap *)taps_a, cw, cy, cu, cv);
        } else {
            bilinear_row1(a_r0, a_r1, vt.w, (const lin_tap *)taps_a, cw, la.step, cy);
        }
        if (!j.yuv) {
            if (nch == 1) { emit_row(&j, &o, y, cy, cy, cy, 0); continue; }
            /* BGR source: cy=B, cu=G, cv=R; RGB source: cy=R, cv=B. */
            if (src->format == LK_FMT_BGR) emit_row(&j, &o, y, cv, cu, cy, 1);
            else emit_row(&j, &o, y, cy, cu, cv, 1);
            continue;
        }
        if (p->out_c == 1) { emit_row(&j, &o, y, cy, cy, cy, 0); continue; }
        /* Chroma: NV12 rowb holds U,V interleaved per chroma column; YUYV rowa holds
         * Y0 U Y1 V per pair, so U of pair i is at 4i + 1 and V at 4i + 3. */
        const int cstep = nv12 ? 2 : 4, ubase = nv12 ? 0 : 1, vbase = nv12 ? 1 : 3;
        if (area) {
            const uint32_t *crow = (const uint32_t *)(nv12 ? rowb : rowa);
            const uint64_t vtot = nv12 ? area_total(&atb) : area_total(&at);
            for (int x = 0; x < cw; x++) {
                const area_tap *t = (const area_tap *)taps_b + x;
                const uint64_t tot = vtot * area_total(t);
                uint64_t su = 0, sv = 0;
                for (int k = 0; k < t->count; k++) {
                    const uint32_t w = area_weight(t, k);
                    su += (uint64_t)crow[(t->start + k) * cstep + ubase] * w;
                    sv += (uint64_t)crow[(t->start + k) * cstep + vbase] * w;
                }
                const double inv = 1.0 / (double)tot;
                cu[x] = (int32_t)div_round(su, tot, inv);
                cv[x] = (int32_t)div_round(sv, tot, inv);
            }
        } else {
            const uint8_t *c_r0 = nv12 ? b_r0 : a_r0, *c_r1 = nv12 ? b_r1 : a_r1;
            const int32_t wy = nv12 ? vtb.w : vt.w, wy1 = 2048 - wy;
            for (int x = 0; x < cw; x++) {
                const lin_tap *t = (const lin_tap *)taps_b + x;
                const int e0 = t->i0 * cstep, e1 = t->i1 * cstep;
                const int32_t u0 = c_r0[e0 + ubase] * wy1 + c_r1[e0 + ubase] * wy;
                const int32_t u1 = c_r0[e1 + ubase] * wy1 + c_r1[e1 + ubase] * wy;
                const int32_t v0 = c_r0[e0 + vbase] * wy1 + c_r1[e0 + vbase] * wy;
                const int32_t v1 = c_r0[e1 + vbase] * wy1 + c_r1[e1 + vbase] * wy;
                cu[x] = (u0 * (2048 - t->w) + u1 * t->w + (1 << 21)) >> 22;
                cv[x] = (v0 * (2048 - t->w) + v1 * t->w + (1 << 21)) >> 22;
            }
        }
        lk_yuv_to_rgb(cy, cu, cv, cr, cg, cb, cw);
        emit_row(&j, &o, y, cr, cg, cb, 1);
    }
    free(scratch);
    return LK_OK;
}
