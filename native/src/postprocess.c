/* Postprocessing kernels. Float arithmetic in the same order as agent/kernels/reference.py
 * (built with -ffp-contract=off) so NMS keeps identical sets. */
#include "lepton/postprocess.h"

#include "kernels_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int lk_dequantize(const uint8_t *q, size_t n, int is_signed, float scale, int zero_point, float *out) {
    if (!q || !out) return LK_EINVAL;
    const float zp = (float)zero_point;
    if (is_signed) {
        const int8_t *s = (const int8_t *)q;
        for (size_t i = 0; i < n; i++) out[i] = ((float)s[i] - zp) * scale;
    } else {
        for (size_t i = 0; i < n; i++) out[i] = ((float)q[i] - zp) * scale;
    }
    return LK_OK;
}

int lk_ssd_decode(const float *enc, const float *anchors, size_t n, const float scales[4], float *boxes) {
    if (!enc || !anchors || !scales || !boxes) return LK_EINVAL;
    if (scales[0] <= 0 || scales[1] <= 0 || scales[2] <= 0 || scales[3] <= 0) return LK_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const float *e = enc + 4 * i, *a = anchors + 4 * i;
        const float yc = e[0] / scales[0] * a[2] + a[0];
        const float xc = e[1] / scales[1] * a[3] + a[1];
        const float h = expf(e[2] / scales[2]) * a[2];
        const float w = expf(e[3] / scales[3]) * a[3];
        float *b = boxes + 4 * i;
        b[0] = yc - h * 0.5f;
        b[1] = xc - w * 0.5f;
        b[2] = yc + h * 0.5f;
        b[3] = xc + w * 0.5f;
    }
    return LK_OK;
}

int lk_yolo_decode(const float *rows, size_t n, int row_len, int has_obj, float threshold,
                   float input_w, float input_h, float *boxes, float *scores, int32_t *classes,
                   size_t capacity, size_t *kept) {
    if (!rows || !boxes || !scores || !classes || !kept) return LK_EINVAL;
    const int first_class = has_obj ? 5 : 4;
    if (row_len <= first_class || input_w <= 0 || input_h <= 0) return LK_EINVAL;
    size_t k = 0;
    for (size_t i = 0; i < n && k < capacity; i++) {
        const float *r = rows + (size_t)row_len * i;
        int best = 0;
        float best_score = r[first_class];
        for (int c = 1; c < row_len - first_class; c++)
            if (r[first_class + c] > best_score) { best_score = r[first_class + c]; best = c; }
        const float conf = has_obj ? r[4] * best_score : best_score;
        if (!(conf >= threshold)) continue;
        const float cx = r[0] / input_w, cy = r[1] / input_h;
        const float hw = r[2] / input_w * 0.5f, hh = r[3] / input_h * 0.5f;
        boxes[4 * k] = cy - hh;
        boxes[4 * k + 1] = cx - hw;
        boxes[4 * k + 2] = cy + hh;
        boxes[4 * k + 3] = cx + hw;
        scores[k] = conf;
        classes[k] = best;
        k++;
    }
    *kept = k;
    return LK_OK;
}

/* Real value of element i of a head of dtype D. */
#define YOLO_REAL_F32(p, i) (((const float *)(p))[i])
#define YOLO_REAL_U8(p, i) (((float)((const uint8_t *)(p))[i] - zp) * scale)
#define YOLO_REAL_I8(p, i) (((float)((const int8_t *)(p))[i] - zp) * scale)
#define YOLO_RAW_U8(p, i) (((const uint8_t *)(p))[i])
#define YOLO_RAW_I8(p, i) (((const int8_t *)(p))[i])

/* Anchors per block. Channels first, each class row of a block is one sequential stream; long
 * blocks keep the prefetcher on it (512-anchor blocks jump between 80 short streams and ran
 * 0.72 ms on 8400 x 80 float, 4096: see docs/kernels.md). The block's best values (64 KiB)
 * stay in L2. */
enum { YOLO_BLOCK = 4096 };

/* Best class per anchor of one block [a0, a0 + n), comparing raw values: for integers with a
 * positive scale the raw order is the real order, so only the winner is dequantized. */
#define BEST_float best_raw_float
#define BEST_int32_t best_raw_int
#define YOLO_BEST(RAW, T)                                                                       \
    do {                                                                                        \
        for (size_t k = 0; k < n; k++) {                                                        \
            BEST_##T[k] = RAW(h->data, (a0 + k) * as + (size_t)first * cs);                 \
            best_cls[k] = 0;                                                                    \
        }                                                                                       \
        for (int c = 1; c < classes; c++) {                                                     \
            const size_t base = (size_t)(first + c) * cs;                                       \
            for (size_t k = 0; k < n; k++) {                                                    \
                const T v = RAW(h->data, (a0 + k) * as + base);                                 \
                const int better = v > BEST_##T[k];                                         \
                BEST_##T[k] = better ? v : BEST_##T[k];                                 \
                best_cls[k] = better ? c : best_cls[k];                                         \
            }                                                                                   \
        }                                                                                       \
    } while (0)

int lk_yolo_decode_head(const lk_yolo_head *h, float *boxes, float *scores, int32_t *classes_out,
                        int32_t *index_out, size_t capacity, size_t *kept) {
    if (!h || !h->data || !boxes || !scores || !classes_out || !kept) return LK_EINVAL;
    *kept = 0;
    const int first = h->has_objectness ? 5 : 4;
    const int classes = h->channels - first;
    if (classes < 1 || h->norm_w <= 0 || h->norm_h <= 0 || h->anchor_stride == 0 ||
        h->channel_stride == 0)
        return LK_EINVAL;
    if (h->dtype != LK_OUT_FLOAT32 && h->dtype != LK_OUT_UINT8 && h->dtype != LK_OUT_INT8)
        return LK_EINVAL;
    if (h->anchors == 0) return LK_OK;
    /* The last element read must lie inside the buffer (overflow-safe). */
    const size_t as = h->anchor_stride, cs = h->channel_stride;
    if ((h->anchors - 1) > (SIZE_MAX - ((size_t)h->channels - 1) * cs) / as) return LK_EOVERFLOW;
    if ((h->anchors - 1) * as + ((size_t)h->channels - 1) * cs >= h->data_elems) return LK_ERANGE;
    const float zp = (float)h->zero_point, scale = h->scale;
    const int integer = h->dtype != LK_OUT_FLOAT32;
    const int raw_order = integer && scale > 0.0f;
    float *scratch = (float *)malloc(4 * YOLO_BLOCK * sizeof(float));
    if (!scratch) return LK_ENOMEM;
    float *best_raw_float = scratch, *best_real = scratch + YOLO_BLOCK;
    int32_t *best_raw_int = (int32_t *)(scratch + 2 * YOLO_BLOCK);
    int32_t *best_cls = (int32_t *)(scratch + 3 * YOLO_BLOCK);
    size_t k_out = 0;
    for (size_t a0 = 0; a0 < h->anchors && k_out < capacity; a0 += YOLO_BLOCK) {
        const size_t n = h->anchors - a0 < YOLO_BLOCK ? h->anchors - a0 : YOLO_BLOCK;
        const size_t start = a0 * as + (size_t)first * cs;
        if (as == 1 && h->dtype == LK_OUT_FLOAT32) {
            lk_rows()->class_max_f32((const float *)h->data + start, cs, classes, n, best_raw_float, best_cls);
            for (size_t k = 0; k < n; k++) best_real[k] = best_raw_float[k];
        } else if (as == 1 && raw_order && h->dtype == LK_OUT_UINT8) {
            lk_rows()->class_max_u8((const uint8_t *)h->data + start, cs, classes, n, best_raw_int, best_cls);
            for (size_t k = 0; k < n; k++) best_real[k] = ((float)best_raw_int[k] - zp) * scale;
        } else if (as == 1 && raw_order) {
            lk_rows()->class_max_i8((const int8_t *)h->data + start, cs, classes, n, best_raw_int, best_cls);
            for (size_t k = 0; k < n; k++) best_real[k] = ((float)best_raw_int[k] - zp) * scale;
        } else if (h->dtype == LK_OUT_FLOAT32) {
            YOLO_BEST(YOLO_REAL_F32, float);
            for (size_t k = 0; k < n; k++) best_real[k] = best_raw_float[k];
        } else if (raw_order && h->dtype == LK_OUT_UINT8) {
            YOLO_BEST(YOLO_RAW_U8, int32_t);
            for (size_t k = 0; k < n; k++) best_real[k] = ((float)best_raw_int[k] - zp) * scale;
        } else if (raw_order) {
            YOLO_BEST(YOLO_RAW_I8, int32_t);
            for (size_t k = 0; k < n; k++) best_real[k] = ((float)best_raw_int[k] - zp) * scale;
        } else if (h->dtype == LK_OUT_UINT8) {
            YOLO_BEST(YOLO_REAL_U8, float);
            for (size_t k = 0; k < n; k++) best_real[k] = best_raw_float[k];
        } else {
            YOLO_BEST(YOLO_REAL_I8, float);
            for (size_t k = 0; k < n; k++) best_real[k] = best_raw_float[k];
        }
        for (size_t k = 0; k < n && k_out < capacity; k++) {
            const size_t at = (a0 + k) * as;
#define YOLO_VALUE(i) (h->dtype == LK_OUT_FLOAT32 ? YOLO_REAL_F32(h->data, (i))               \
                       : h->dtype == LK_OUT_UINT8 ? YOLO_REAL_U8(h->data, (i))                 \
                       : YOLO_REAL_I8(h->data, (i)))
            /* The confidence first: most anchors stop here, before their box is read. */
            const float conf = h->has_objectness ? YOLO_VALUE(at + 4 * cs) * best_real[k]
                                                 : best_real[k];
            if (!(conf >= h->threshold)) continue;
            float v[4];
            for (int c = 0; c < 4; c++) v[c] = YOLO_VALUE(at + (size_t)c * cs);
#undef YOLO_VALUE
            const float cx = v[0] / h->norm_w, cy = v[1] / h->norm_h;
            const float hw = v[2] / h->norm_w * 0.5f, hh = v[3] / h->norm_h * 0.5f;
            float *b = boxes + 4 * k_out;
            b[0] = cy - hh;
            b[1] = cx - hw;
            b[2] = cy + hh;
            b[3] = cx + hw;
            scores[k_out] = conf;
            classes_out[k_out] = best_cls[k];
            if (index_out) index_out[k_out] = (int32_t)(a0 + k);
            k_out++;
        }
    }
    free(scratch);
    *kept = k_out;
    return LK_OK;
}

/* Stable order by score, best first, ties by index; NaN scores sort last. */
static int32_t *order_by_score(const float *scores, size_t n) {
    int32_t *order = (int32_t *)malloc((n ? n : 1) * sizeof(int32_t));
    if (!order) return NULL;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) if (!isnan(scores[i])) order[m++] = (int32_t)i;
    /* Bottom-up merge sort: stable, re-entrant (no qsort comparator state), O(n log n). */
    int32_t *tmp = (int32_t *)malloc((n ? n : 1) * sizeof(int32_t)); /* both hold n: they swap */
    if (!tmp) { free(order); return NULL; }
    for (size_t width = 1; width < m; width *= 2) {
        for (size_t lo = 0; lo < m; lo += 2 * width) {
            size_t mid = lo + width < m ? lo + width : m, hi = lo + 2 * width < m ? lo + 2 * width : m;
            size_t a = lo, b = mid, t = lo;
            while (a < mid && b < hi) {
                const int32_t ia = order[a], ib = order[b];
                const int take_b = scores[ib] > scores[ia] || (scores[ib] == scores[ia] && ib < ia);
                tmp[t++] = take_b ? order[b++] : order[a++];
            }
            while (a < mid) tmp[t++] = order[a++];
            while (b < hi) tmp[t++] = order[b++];
        }
        int32_t *swap = order; order = tmp; tmp = swap;
    }
    free(tmp);
    for (size_t i = m; i < n; i++) order[i] = -1;
    return order;
}

static float iou(const float *a, const float *b) {
    const float ymin = fmaxf(a[0], b[0]), xmin = fmaxf(a[1], b[1]);
    const float ymax = fminf(a[2], b[2]), xmax = fminf(a[3], b[3]);
    const float ih = fmaxf(ymax - ymin, 0.0f), iw = fmaxf(xmax - xmin, 0.0f);
    const float inter = ih * iw;
    const float area_a = (a[2] - a[0]) * (a[3] - a[1]);
    const float area_b = (b[2] - b[0]) * (b[3] - b[1]);
    const float uni = area_a + area_b - inter;
    return uni > 0.0f ? inter / fmaxf(uni, 1e-12f) : 0.0f;
}

/* Greedy NMS in the form "a box is kept unless a kept box of its class overlaps it by more
 * than the threshold": the same kept set as suppressing forward from each kept box, but each
 * candidate is compared only with the boxes kept so far (of its class), not with every later
 * candidate: O(n * kept) instead of O(n^2) when most candidates are suppressed (YOLO heads
 * give many near-copies of each object). */
int lk_nms(const float *boxes, const float *scores, const int32_t *classes, size_t n,
           float iou_threshold, size_t max_out, int32_t *keep, size_t *kept) {
    if (!boxes || !scores || !classes || !keep || !kept) return LK_EINVAL;
    *kept = 0;
    if (n == 0 || max_out == 0) return LK_OK;
    int32_t *order = order_by_score(scores, n);
    if (!order) return LK_ENOMEM;
    size_t k = 0;
    for (size_t p = 0; p < n && order[p] >= 0 && k < max_out; p++) {
        const int32_t i = order[p];
        const float *bi = boxes + 4 * (size_t)i;
        int suppressed = 0;
        for (size_t q = 0; q < k; q++) {
            const int32_t j = keep[q];
            if (classes[j] == classes[i] && iou(boxes + 4 * (size_t)j, bi) > iou_threshold) {
                suppressed = 1;
                break;
            }
        }
        if (!suppressed) keep[k++] = i;
    }
    *kept = k;
    free(order);
    return LK_OK;
}

int lk_topk(const float *scores, size_t n, size_t k, int32_t *index_out) {
    if (!scores || !index_out) return LK_EINVAL;
    if (k > n) return LK_ERANGE;
    int32_t *order = order_by_score(scores, n);
    if (!order) return LK_ENOMEM;
    for (size_t i = 0; i < k; i++) index_out[i] = order[i];
    free(order);
    return LK_OK;
}
