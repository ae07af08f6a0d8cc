/* Motion gating on a small grayscale frame: absolute difference against a running background
 * (8.8 fixed point), a changed-pixel score, and bounding boxes of 8-connected changed regions. */
#include "lepton/motion.h"

#include <string.h>

int lk_motion_update(lk_motion_state *st, const uint8_t *gray, int stride, float *score,
                     lk_motion_box *boxes, size_t capacity, size_t *count, uint8_t *scratch,
                     size_t scratch_bytes) {
    if (!st || !gray || !score || !count || !st->background || !scratch) return LK_EINVAL;
    if (capacity && !boxes) return LK_EINVAL;
    const int w = st->width, h = st->height;
    if (w <= 0 || h <= 0 || w > 4096 || h > 4096) return LK_ERANGE;
    if (stride < w) return LK_ERANGE;
    if (st->alpha_q8 < 1 || st->alpha_q8 > 256 || st->threshold < 0 || st->threshold > 255)
        return LK_EINVAL;
    const size_t n = (size_t)w * (size_t)h;
    if (scratch_bytes < n * 4) return LK_ERANGE;
    *count = 0;
    *score = 0.0f;
    uint16_t *bg = st->background;
    if (!st->initialized) {
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) bg[(size_t)y * w + x] = (uint16_t)(gray[(size_t)y * stride + x] << 8);
        st->initialized = 1;
        return LK_OK;
    }
    uint8_t *mask = scratch;              /* n bytes: 1 = changed, 2 = visited */
    int32_t *stack = (int32_t *)(scratch + ((n + 3) & ~(size_t)3));
    const size_t stack_cap = (scratch_bytes - ((n + 3) & ~(size_t)3)) / sizeof(int32_t);
    size_t changed = 0;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = gray + (size_t)y * stride;
        uint16_t *b = bg + (size_t)y * w;
        uint8_t *m = mask + (size_t)y * w;
        for (int x = 0; x < w; x++) {
            const int cur = row[x] << 8, back = b[x];
            const int diff = (cur > back ? cur - back : back - cur) >> 8;
            m[x] = diff > st->threshold;
            changed += m[x];
            b[x] = (uint16_t)(back + ((cur - back) * st->alpha_q8) / 256);
        }
    }
    *score = (float)changed / (float)n;
    if (!capacity || !changed) return LK_OK;
    size_t nboxes = 0;
    for (size_t seed = 0; seed < n; seed++) {
        if (mask[seed] != 1) continue;
        lk_motion_box box = {(int)(seed % (size_t)w), (int)(seed / (size_t)w), 0, 0, 0};
        box.x1 = box.x0; box.y1 = box.y0;
        size_t top = 0;
        stack[top++] = (int32_t)seed;
        mask[seed] = 2;
        while (top) {
            const int32_t i = stack[--top];
            const int x = i % w, y = i / w;
            box.pixels++;
            if (x < box.x0) box.x0 = x;
            if (x > box.x1) box.x1 = x;
            if (y < box.y0) box.y0 = y;
            if (y > box.y1) box.y1 = y;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    const int nx = x + dx, ny = y + dy;
                    if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
                    const size_t j = (size_t)ny * w + nx;
                    if (mask[j] == 1 && top < stack_cap) { mask[j] = 2; stack[top++] = (int32_t)j; }
                }
        }
        /* Keep the `capacity` largest regions, largest first (ties: earlier seed first). */
        size_t pos = nboxes < capacity ? nboxes : capacity;
        while (pos > 0 && boxes[pos - 1].pixels < box.pixels) pos--;
        if (pos < capacity) {
            size_t last = nboxes < capacity ? nboxes : capacity - 1;
            memmove(boxes + pos + 1, boxes + pos, (last - pos) * sizeof(lk_motion_box));
            boxes[pos] = box;
            if (nboxes < capacity) nboxes++;
        }
    }
    *count = nboxes;
    return LK_OK;
}
