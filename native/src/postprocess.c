/* Postprocessing kernels. Float arithmetic in the same order as agent/kernels/reference.py
 * (built with -ffp-contract=off) so NMS keeps identical sets. */
#include "lepton/postprocess.h"

#include <math.h>
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

int lk_nms(const float *boxes, const float *scores, const int32_t *classes, size_t n,
           float iou_threshold, size_t max_out, int32_t *keep, size_t *kept) {
    if (!boxes || !scores || !classes || !keep || !kept) return LK_EINVAL;
    *kept = 0;
    if (n == 0 || max_out == 0) return LK_OK;
    int32_t *order = order_by_score(scores, n);
    uint8_t *suppressed = (uint8_t *)calloc(n, 1);
    if (!order || !suppressed) { free(order); free(suppressed); return LK_ENOMEM; }
    size_t k = 0;
    for (size_t p = 0; p < n && order[p] >= 0; p++) {
        const int32_t i = order[p];
        if (suppressed[i]) continue;
        keep[k++] = i;
        if (k >= max_out) break;
        for (size_t q = p + 1; q < n && order[q] >= 0; q++) {
            const int32_t j = order[q];
            if (!suppressed[j] && classes[j] == classes[i] &&
                iou(boxes + 4 * (size_t)i, boxes + 4 * (size_t)j) > iou_threshold)
                suppressed[j] = 1;
        }
    }
    *kept = k;
    free(order);
    free(suppressed);
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
