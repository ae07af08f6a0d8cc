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

/* floor() of a double within int range, inline: x86-64's baseline has no rounding instruction,
 * and floor is a libm call there, thousands of them per frame in the taps. */
static inline int floor_int(double v) {
    const int t = (int)v;
    return t > v ? t - 1 : t;
}

/* OpenCV INTER_LINEAR geometry: half-pixel centres, clamped at the edges of [lo, hi]. */
static void linear_taps(lin_tap *taps, int n, double scale, double offset, int lo, int hi) {
    for (int i = 0; i < n; i++) {
        double f = (i + 0.5) * scale - 0.5 + offset;
        int s = floor_int(f);
        double frac = f - s;
        if (s < lo) { s = lo; frac = 0.0; }
        if (s >= hi) { s = hi; frac = 0.0; }
        taps[i].i0 = s;
        taps[i].i1 = s < hi ? s + 1 : s;
        taps[i].w = floor_int(frac * 2048.0 + 0.5);
    }
}

/* Box [(num0 + i*step) / den, (num0 + (i+1)*step) / den) clipped to [lo, hi), pixel weights in
 * 1/256: each pixel's overlap with the box rounded half up (at least 1). Exact integer
 * arithmetic: in floating point a box that ends on a pixel boundary (12 * (40/24) =
 * 20.000000000000004) reached one pixel further, with the minimum weight. */
static void area_taps(area_tap *taps, int n, int64_t num0, int64_t step, int64_t den, int lo, int hi) {
    const int64_t lo_q = (int64_t)lo * den, hi_q = (int64_t)hi * den;
    for (int i = 0; i < n; i++) {
        int64_t b0 = num0 + i * step, b1 = b0 + step;     /* in units of 1/den */
        if (b0 < lo_q) b0 = lo_q;
        if (b1 > hi_q) b1 = hi_q;
        int s = (int)(b0 / den), e = (int)((b1 + den - 1) / den);   /* b0, b1 >= 0 */
        if (e <= s) e = s + 1;
        if (e > hi) { e = hi; if (s >= e) s = e - 1; }
        taps[i].start = s;
        taps[i].count = e - s;
        /* round(overlap * 256) with ties up, overlap = q / den */
#define LK_W256(q) ((int)((2 * 256 * (q) + den) / (2 * den)))
        if (e - s == 1) {
            const int w = LK_W256(b1 - b0);
            taps[i].wfirst = taps[i].wlast = w < 1 ? 1 : w;
        } else {
            const int wf = LK_W256((int64_t)(s + 1) * den - b0);
            const int wl = LK_W256(b1 - (int64_t)(e - 1) * den);
            taps[i].wfirst = wf < 1 ? 1 : wf;
            taps[i].wlast = wl < 1 ? 1 : wl;
        }
#undef LK_W256
    }
}

static void prefetch_row(const uint8_t *row, int bytes) {
#if defined(__GNUC__)
    for (int i = 0; i < bytes; i += 64) __builtin_prefetch(row + i);
#else
    (void)row; (void)bytes;
#endif
}

/* round(num / den) with ties up, exact: a reciprocal estimate corrected by one step. Sums stay
 * below 2^63, so the conversions go through int64 (one instruction each, unlike uint64). */
static inline uint64_t div_round(uint64_t acc, uint64_t den, double inv) {
    const uint64_t num = acc + den / 2;
    uint64_t q = (uint64_t)(int64_t)((double)(int64_t)num * inv);
    /* Branch-free: the correction's direction is data-dependent and would mispredict. */
    q -= (uint64_t)(q * den > num);
    q += (uint64_t)((q + 1) * den <= num);
    return q;
}

static uint32_t area_weight(const area_tap *t, int k) {
    if (k == 0) return (uint32_t)t->wfirst;
    if (k == t->count - 1) return (uint32_t)t->wlast;
    return 256u;
}

static int area_span(const area_tap *t, int n) {
    int span = 1;
    for (int x = 0; x < n; x++) span = t[x].count > span ? t[x].count : span;
    return span;
}

/* Weight tables and per-column totals of one plane's horizontal area stage. */
typedef struct {
    const int32_t *first;   /* first source column of each output column's span */
    const uint32_t *tab;    /* weights, k-major: tab[k * n + x] (0 outside the box) */
    const uint32_t *tab8;   /* span <= 8: the same weights x-major, 8 per column, or NULL */
    const double *htot;     /* sum of each column's weights */
    const double *hinv;     /* 1 / htot */
    const int32_t *htot_i;  /* htot as int32 and 1 / htot as float, for the int32 path */
    const float *hinv_f;
    int span;
    double htot_max;
} area_plane;

/* One channel of the horizontal area stage: out[x] = round(sum_k row[(first[x] + k) * step] *
 * tab[x][k] / (vtot * htot[x])), exact. Where the sums (and the division's checks, up to
 * 257 * total) fit int32, SIMD sums (eight-wide loads for contiguous spans up to 8, gathers
 * otherwise) and the division in int32 lanes; frames far beyond camera sizes take uint64. */
static void area_row(const uint32_t *row, int step, const area_plane *a, uint64_t vtot,
                     int32_t *sums, int32_t *out, int n) {
    const double vinv = 1.0 / (double)vtot;
    if (512.0 * (double)vtot * a->htot_max < 2147483648.0) {
        if (step == 1 && a->tab8)
            lk_row_area_h8(row, a->first, a->tab8, sums, n);
        else
            lk_row_area_h(row, step, a->first, a->tab, a->span, sums, n);
        lk_row_div_round_i32(sums, a->htot_i, a->hinv_f, (int32_t)vtot, (float)vinv, out, n);
        return;
    }
    for (int x = 0; x < n; x++) {
        const uint32_t *px = row + a->first[x] * step;
        uint64_t acc = 0;
        for (int k = 0; k < a->span; k++)
            acc += (uint64_t)px[k * step] * a->tab[(size_t)k * (size_t)n + (size_t)x];
        out[x] = (int32_t)div_round(acc, vtot * (uint64_t)a->htot[x], vinv * a->hinv[x]);
    }
}

/* Dense form of area taps: output column x sums source columns first[x] + k, k < span, with
 * weight tab[k * n + x] (0 outside its box), so the loop has a fixed length and no
 * data-dependent exit to mispredict. first[x] moves left where the box ends near the row's
 * end, keeping every read inside the ncols columns (span <= ncols). */
static void area_table(const area_tap *t, int n, int span, int ncols, int32_t *first,
                       uint32_t *tab) {
    for (int x = 0; x < n; x++) {
        const int start = t[x].start + span <= ncols ? t[x].start : ncols - span;
        first[x] = start;
        for (int k = 0; k < span; k++) {
            const int rel = start + k - t[x].start;
            tab[(size_t)k * (size_t)n + (size_t)x] =
                rel >= 0 && rel < t[x].count ? area_weight(t + x, rel) : 0u;
        }
    }
}

/* k-major weights (span per column) to x-major rows of eight, zero-filled past the span. */
static void transpose_to8(const uint32_t *tab, int span, int n, uint32_t *tab8) {
    for (int x = 0; x < n; x++)
        for (int k = 0; k < 8; k++)
            tab8[(size_t)x * 8 + (size_t)k] = k < span ? tab[(size_t)k * (size_t)n + (size_t)x] : 0u;
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
        /* scale = min(out_w / rw, out_h / rh) = num / den; sizes rounded half up, exactly (in
         * doubles 85 * 0.7 is 59.49999999999999, so a 59.5 tie went down). */
        const int by_w = (int64_t)p->out_w * j->rh <= (int64_t)p->out_h * j->rw;
        const int64_t num = by_w ? p->out_w : p->out_h, den = by_w ? j->rw : j->rh;
        j->cw = clampi((int)((2 * j->rw * num + den) / (2 * den)), 1, p->out_w);
        j->ch = clampi((int)((2 * j->rh * num + den) / (2 * den)), 1, p->out_h);
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
        lk_row_pack3(p->out_rgb ? r : b, g, p->out_rgb ? b : r, o->u8 + base, j->cw);
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

    /* Scratch: vertical rows (int32) and taps. The per-column arrays carry 8 entries of
     * padding: the planned kernels write (and read weights of) whole groups of eight. */
    const int cwp = cw + 8;
    size_t bytes = (size_t)cw * 2 * sizeof(double) + (size_t)(a_cols + b_cols + 40) * 4 +
                   (size_t)cwp * 10 * 4 +
                   (size_t)cw * 2 * (area ? sizeof(area_tap) : sizeof(lin_tap)) +
                   64;
    /* Zeroed: rows carry 8 columns of padding that eight-wide loads read with weight 0. */
    uint8_t *scratch = (uint8_t *)calloc(1, bytes);
    if (!scratch) return LK_ENOMEM;
    double *a_inv = (double *)scratch, *b_inv = a_inv + cw;
    int32_t *rowa = (int32_t *)(b_inv + cw);
    /* NV12 area: the U and V sums in rows of their own, so both are contiguous. */
    int32_t *row_u = rowa + a_cols + 8, *row_v = row_u + b_cols / 2 + 8;
    int32_t *cy = row_v + b_cols / 2 + 8, *cu = cy + cwp, *cv = cu + cwp, *cr = cv + cwp;
    int32_t *cg = cr + cwp, *cb = cg + cwp;
    /* Bilinear tables: byte offsets of the left tap in the source row, and weights. Area:
     * a_w, b_w hold each column's weight total and a_inv, b_inv its reciprocal. */
    int32_t *a_off = cb + cwp, *a_w = a_off + cwp, *b_off = a_w + cwp, *b_w = b_off + cwp;
    void *taps_a = (void *)(b_w + cwp);
    void *taps_b = (uint8_t *)taps_a + (size_t)cw * (area ? sizeof(area_tap) : sizeof(lin_tap));

    /* Horizontal taps in ROI-relative columns. Chroma (NV12, YUYV) in chroma columns relative
     * to cx0 (NV12) or to the first pair of the ROI (YUYV, whose ROI starts on even x). */
    const double chroma_offset = (j.rx) / 2.0 - (nv12 ? cx0 : j.rx / 2);
    if (area) {
        /* Boxes in exact rationals: luma i*rw/cw; chroma (rx + i*rw/cw)/2 - first chroma column. */
        area_taps((area_tap *)taps_a, cw, 0, j.rw, cw, 0, j.rw);
        const int64_t cfirst = nv12 ? cx0 : j.rx / 2;
        if (j.yuv) area_taps((area_tap *)taps_b, cw, (j.rx - 2 * cfirst) * (int64_t)cw, j.rw,
                             2 * (int64_t)cw, 0,
                             nv12 ? cx1 - cx0 + 1 : (j.rw + 1) / 2);
    } else {
        linear_taps((lin_tap *)taps_a, cw, sx, 0.0, 0, j.rw - 1);
        if (j.yuv) linear_taps((lin_tap *)taps_b, cw, sx / 2.0, chroma_offset, 0,
                               (nv12 ? cx1 - cx0 + 1 : (j.rw + 1) / 2) - 1);
    }
    /* YUYV pairs: element offsets in the packed row. */
    const layout la = yuyv ? (layout){2, 0} : (layout){j.src_bpp, 0};
    const int nch = j.yuv ? 1 : j.src_bpp;
    /* Chroma: NV12 rows hold U,V interleaved per chroma column; YUYV rows hold Y0 U Y1 V per
     * pair, so U of pair i is at 4i + 1 and V at 4i + 3. */
    const int cstep = nv12 ? 2 : 4, ubase = nv12 ? 0 : 1, vbase = nv12 ? 1 : 3;
    double *area_mem = NULL;
    int32_t *sums = NULL;
    void *lin_mem = NULL;
    lk_pair_group *groups = NULL;
    lin_tap *vrows = NULL, *vrows_b = NULL;
    lk_pair_plan plan_a = {NULL, 0, 0, 4}, plan_b = {NULL, 0, 0, 4};
    area_plane ap = {a_off, NULL, NULL, NULL, a_inv, NULL, NULL, 1, 0.0};
    area_plane bp = {b_off, NULL, NULL, NULL, b_inv, NULL, NULL, 1, 0.0};
    if (area) {
        const area_tap *ta = (const area_tap *)taps_a, *tb = (const area_tap *)taps_b;
        ap.span = area_span(ta, cw);
        if (j.yuv) bp.span = area_span(tb, cw);
        area_mem = (double *)malloc((size_t)cw * (3 * sizeof(double) +
                                    (size_t)(ap.span + bp.span + 20) * sizeof(uint32_t)));
        if (!area_mem) { free(scratch); return LK_ENOMEM; }
        double *a_htot = area_mem, *b_htot = a_htot + cw;
        sums = (int32_t *)(b_htot + cw);  /* one row of column sums, in a slot of cw doubles */
        uint32_t *a_tab = (uint32_t *)(b_htot + 2 * cw), *b_tab = a_tab + (size_t)cw * (size_t)ap.span;
        area_table(ta, cw, ap.span, j.rw, a_off, a_tab);
        if (j.yuv) area_table(tb, cw, bp.span, nv12 ? cx1 - cx0 + 1 : (j.rw + 1) / 2, b_off, b_tab);
        for (int x = 0; x < cw; x++) {
            a_htot[x] = area_total(ta + x); a_inv[x] = 1.0 / a_htot[x];
            if (a_htot[x] > ap.htot_max) ap.htot_max = a_htot[x];
            if (j.yuv) {
                b_htot[x] = area_total(tb + x); b_inv[x] = 1.0 / b_htot[x];
                if (b_htot[x] > bp.htot_max) bp.htot_max = b_htot[x];
            }
        }
        ap.tab = a_tab; ap.htot = a_htot; bp.tab = b_tab; bp.htot = b_htot;
        uint32_t *a_tab8 = b_tab + (size_t)cw * (size_t)bp.span, *b_tab8 = a_tab8 + (size_t)cw * 8;
        if (ap.span <= 8) { ap.tab8 = a_tab8; transpose_to8(a_tab, ap.span, cw, a_tab8); }
        if (j.yuv && bp.span <= 8) { bp.tab8 = b_tab8; transpose_to8(b_tab, bp.span, cw, b_tab8); }
        int32_t *a_htot_i = (int32_t *)(b_tab8 + (size_t)cw * 8), *b_htot_i = a_htot_i + cw;
        float *a_hinv_f = (float *)(b_htot_i + cw), *b_hinv_f = a_hinv_f + cw;
        for (int x = 0; x < cw; x++) {
            a_htot_i[x] = (int32_t)a_htot[x]; a_hinv_f[x] = (float)a_inv[x];
            if (j.yuv) { b_htot_i[x] = (int32_t)b_htot[x]; b_hinv_f[x] = (float)b_inv[x]; }
        }
        ap.htot_i = a_htot_i; ap.hinv_f = a_hinv_f; bp.htot_i = b_htot_i; bp.hinv_f = b_hinv_f;
    } else {
        const lin_tap *ta = (const lin_tap *)taps_a, *tb = (const lin_tap *)taps_b;
        for (int x = 0; x < cw; x++) {
            a_off[x] = ta[x].i0 * la.step; a_w[x] = ta[x].w;
            if (j.yuv) { b_off[x] = tb[x].i0 * cstep; b_w[x] = tb[x].w; }
        }
        /* Vertical taps of every output row (luma or packed, then NV12 chroma) and the
         * groups of both plans, in one block. */
        const size_t plan_groups = (size_t)(cw + 7) / 8;
        lin_mem = malloc((size_t)j.ch * 2 * sizeof(lin_tap) + plan_groups * 2 * sizeof(lk_pair_group));
        if (!lin_mem) { free(scratch); return LK_ENOMEM; }
        groups = (lk_pair_group *)lin_mem;
        vrows = (lin_tap *)(groups + 2 * plan_groups);
        vrows_b = vrows + j.ch;
        /* Row by row with the offset as the reference computes it (bit for bit). */
        for (int r = 0; r < j.ch; r++) {
            linear_taps(vrows + r, 1, sy, r * sy, 0, j.rh - 1);
            if (nv12) linear_taps(vrows_b + r, 1, sy / 2.0, j.ry / 2.0 - cy0 + r * sy / 2.0, 0, cy1 - cy0);
        }
        /* Plane A: the luma or packed channels; plane B: chroma U and V (NV12 pairs, or the U
         * and V bytes of YUYV's Y0 U Y1 V). */
        const int a_first[3] = {0, 1, 2}, a_second[3] = {la.step, la.step + 1, la.step + 2};
        const int b_first[2] = {ubase, vbase}, b_second[2] = {ubase + cstep, vbase + cstep};
        lk_pair_plan_build(&plan_a, groups, a_off, a_first, a_second, nch, a_cols, cw);
        if (j.yuv && p->out_c == 3)
            lk_pair_plan_build(&plan_b, groups + plan_groups, b_off, b_first, b_second, 2,
                               nv12 ? b_cols : a_cols, cw);
    }

    area_tap at = {0, 0, 0, 0}, atb = {0, 0, 0, 0};
    const uint8_t *plane0 = src->plane0 + (size_t)j.rx * (size_t)j.src_bpp;
    const uint8_t *plane1 = nv12 ? src->plane1 + (size_t)cx0 * 2 : NULL;
    lk_planned_rows luma = {NULL, NULL, NULL, NULL, 0, &plan_a, a_w}, chroma = luma;

    for (int y = 0; y < p->out_h; y++) {
        const int cyrow = y - j.oy;
        if (cyrow < 0 || cyrow >= j.ch) { emit_row(&j, &o, y, cr, cg, cb, 0); continue; }
        /* Vertical stage. */
        if (area) {
            area_taps(&at, 1, (int64_t)cyrow * j.rh, j.rh, j.ch, 0, j.rh);
            lk_row_area_v(plane0 + (size_t)(j.ry + at.start) * (size_t)src->stride0,
                          (size_t)src->stride0, at.count, (uint32_t)at.wfirst, (uint32_t)at.wlast,
                          (uint32_t *)rowa, NULL, a_cols);
            if (nv12) {
                area_taps(&atb, 1, (int64_t)(j.ry - 2 * cy0) * j.ch + (int64_t)cyrow * j.rh, j.rh,
                          2 * (int64_t)j.ch, 0, cy1 - cy0 + 1);
                lk_row_area_v(plane1 + (size_t)(cy0 + atb.start) * (size_t)src->stride1,
                              (size_t)src->stride1, atb.count, (uint32_t)atb.wfirst,
                              (uint32_t)atb.wlast, (uint32_t *)row_u, (uint32_t *)row_v, b_cols);
            }
        } else {
            /* Bilinear reads only the 2x2 neighbourhoods it needs, straight from the rows, and
             * names the next output row's rows for the kernels to prefetch (the shuffles wait
             * on rows not yet in cache). */
            const int next = cyrow + 1 < j.ch ? cyrow + 1 : cyrow;
            const lin_tap vt = vrows[cyrow];
            luma = (lk_planned_rows){plane0 + (size_t)(j.ry + vt.i0) * (size_t)src->stride0,
                                     plane0 + (size_t)(j.ry + vt.i1) * (size_t)src->stride0,
                                     plane0 + (size_t)(j.ry + vrows[next].i0) * (size_t)src->stride0,
                                     plane0 + (size_t)(j.ry + vrows[next].i1) * (size_t)src->stride0,
                                     vt.w, &plan_a, a_w};
            if (nv12) {
                const lin_tap vtb = vrows_b[cyrow];
                chroma = (lk_planned_rows){
                    plane1 + (size_t)(cy0 + vtb.i0) * (size_t)src->stride1,
                    plane1 + (size_t)(cy0 + vtb.i1) * (size_t)src->stride1,
                    plane1 + (size_t)(cy0 + vrows_b[next].i0) * (size_t)src->stride1,
                    plane1 + (size_t)(cy0 + vrows_b[next].i1) * (size_t)src->stride1,
                    vtb.w, &plan_b, b_w};
            } else {
                chroma = luma;
                chroma.plan = &plan_b;
                chroma.w = b_w;
            }
            /* The planned windows prefetch their last lines; the first line of the first
             * window and the rest of the row here. */
            const int a_from = plan_a.covered < cw ? a_off[plan_a.covered] : a_cols;
            if (plan_a.covered) {
                prefetch_row(luma.next0 + plan_a.groups[0].base, 1);
                prefetch_row(luma.next1 + plan_a.groups[0].base, 1);
            }
            if (nv12 && plan_b.covered) {
                prefetch_row(chroma.next0 + plan_b.groups[0].base, 1);
                prefetch_row(chroma.next1 + plan_b.groups[0].base, 1);
            }
            prefetch_row(luma.next0 + a_from, a_cols - a_from);
            prefetch_row(luma.next1 + a_from, a_cols - a_from);
            if (nv12) {
                const int b_from = plan_b.covered < cw ? b_off[plan_b.covered] : b_cols;
                prefetch_row(chroma.next0 + b_from, b_cols - b_from);
                prefetch_row(chroma.next1 + b_from, b_cols - b_from);
            }
        }
        /* NV12 to plain uint8 RGB/BGR rows, the common camera case: one fused pass where the
         * build has it, the remaining columns (if any) through the separate stages. */
        if (!area && nv12 && p->out_c == 3 && o.identity_u8 && cw == p->out_w) {
            uint8_t *row = o.u8 + (size_t)y * (size_t)p->out_w * 3;
            const int k = lk_row_nv12_rgb_planned(&luma, &chroma, !p->out_rgb, row, cw);
            if (k < cw) {
                lk_row_bilerp(luma.r0, luma.r1, luma.wy, a_off + k, a_w + k, 1, a_cols, cy + k, cw - k);
                lk_row_bilerp_uv(chroma.r0, chroma.r1, chroma.wy, b_off + k, b_w + k, b_cols, cu + k,
                                 cv + k, cw - k);
                lk_row_yuv_rgb_pack(cy + k, cu + k, cv + k, !p->out_rgb, row + (size_t)k * 3, cw - k);
            }
            continue;
        }
        /* Horizontal stage: luma / packed channels. */
        int32_t *dst[3] = {cy, cu, cv};
        if (area) {
            for (int c = 0; c < nch; c++)
                area_row((const uint32_t *)rowa + c, la.step, &ap, area_total(&at), sums, dst[c], cw);
        } else {
            const int k = plan_a.covered;
            lk_row_bilerp_planned(&luma, dst);
            for (int c = 0; c < nch; c++)
                lk_row_bilerp(luma.r0 + c, luma.r1 + c, luma.wy, a_off + k, a_w + k, la.step,
                              a_cols - c, dst[c] + k, cw - k);
        }
        if (!j.yuv) {
            if (nch == 1) { emit_row(&j, &o, y, cy, cy, cy, 0); continue; }
            /* BGR source: cy=B, cu=G, cv=R; RGB source: cy=R, cv=B. */
            if (src->format == LK_FMT_BGR) emit_row(&j, &o, y, cv, cu, cy, 1);
            else emit_row(&j, &o, y, cy, cu, cv, 1);
            continue;
        }
        if (p->out_c == 1) { emit_row(&j, &o, y, cy, cy, cy, 0); continue; }
        if (area) {
            const uint64_t vtot = nv12 ? area_total(&atb) : area_total(&at);
            if (nv12) {
                area_row((const uint32_t *)row_u, 1, &bp, vtot, sums, cu, cw);
                area_row((const uint32_t *)row_v, 1, &bp, vtot, sums, cv, cw);
            } else {
                area_row((const uint32_t *)rowa + ubase, cstep, &bp, vtot, sums, cu, cw);
                area_row((const uint32_t *)rowa + vbase, cstep, &bp, vtot, sums, cv, cw);
            }
        } else {
            const int k = plan_b.covered;
            int32_t *const uv[3] = {cu, cv, NULL};
            lk_row_bilerp_planned(&chroma, uv);
            if (nv12) {
                lk_row_bilerp_uv(chroma.r0, chroma.r1, chroma.wy, b_off + k, b_w + k, b_cols,
                                 cu + k, cv + k, cw - k);
            } else {
                lk_row_bilerp(luma.r0 + ubase, luma.r1 + ubase, chroma.wy, b_off + k, b_w + k,
                              cstep, a_cols - ubase, cu + k, cw - k);
                lk_row_bilerp(luma.r0 + vbase, luma.r1 + vbase, chroma.wy, b_off + k, b_w + k,
                              cstep, a_cols - vbase, cv + k, cw - k);
            }
        }
        if (o.identity_u8 && cw == p->out_w) {  /* plain uint8 RGB/BGR: converted and packed */
            lk_row_yuv_rgb_pack(cy, cu, cv, !p->out_rgb, o.u8 + (size_t)y * (size_t)p->out_w * 3, cw);
            continue;
        }
        lk_yuv_to_rgb(cy, cu, cv, cr, cg, cb, cw);
        emit_row(&j, &o, y, cr, cg, cb, 1);
    }
    free(area_mem);
    free(lin_mem);
    free(scratch);
    return LK_OK;
}
