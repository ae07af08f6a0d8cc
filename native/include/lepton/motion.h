/* Motion gating: downscaled grayscale difference against a running background. */
#ifndef LEPTON_MOTION_H
#define LEPTON_MOTION_H

#include "lepton/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int width, height;       /* analysis grid (the downscaled frame) */
    uint16_t *background;    /* width * height, 8.8 fixed point; owned by the caller */
    int initialized;
    int alpha_q8;            /* background learning rate, 1..256 (/256 per frame) */
    int threshold;           /* per-pixel absolute difference (0..255) that counts as change */
} lk_motion_state;

typedef struct { int x0, y0, x1, y1; int pixels; } lk_motion_box;  /* grid coordinates, inclusive */

/* `gray` is the analysis-size grayscale frame (width * height bytes, row stride `stride`).
 * Returns the fraction of changed pixels in *score and up to `capacity` boxes of 8-connected
 * changed regions, largest first, in *boxes / *count. `scratch` needs width*height*4 bytes. */
int lk_motion_update(lk_motion_state *state, const uint8_t *gray, int stride, float *score,
                     lk_motion_box *boxes, size_t capacity, size_t *count, uint8_t *scratch,
                     size_t scratch_bytes);

#ifdef __cplusplus
}
#endif
#endif
