/* Fused preprocessing: source frame -> ROI -> resize -> colour order -> quantize, in one pass
 * over the output, written straight into the caller's buffer (the interpreter's input tensor). */
#ifndef LEPTON_PREPROCESS_H
#define LEPTON_PREPROCESS_H

#include "lepton/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LK_FMT_NV12 = 0, LK_FMT_YUYV = 1, LK_FMT_BGR = 2, LK_FMT_RGB = 3, LK_FMT_GRAY = 4 } lk_format;
typedef enum { LK_RESIZE_BILINEAR = 0, LK_RESIZE_AREA = 1 } lk_resize;
typedef enum { LK_OUT_UINT8 = 0, LK_OUT_INT8 = 1, LK_OUT_FLOAT32 = 2 } lk_dtype;

typedef struct {
    int format;              /* lk_format */
    int width, height;       /* pixels */
    const uint8_t *plane0;   /* Y for NV12, packed pixels otherwise */
    int stride0;             /* bytes per row of plane0 */
    const uint8_t *plane1;   /* interleaved UV for NV12, else NULL */
    int stride1;
    size_t plane0_bytes;     /* bytes readable from plane0 (bounds checking) */
    size_t plane1_bytes;
} lk_image;

typedef struct {
    int roi_x, roi_y, roi_w, roi_h;   /* crop in source pixels; roi_w = roi_h = 0: whole frame */
    int out_w, out_h, out_c;          /* output tensor shape (out_c 1 or 3) */
    int out_rgb;                      /* 3 channels: 1 = R,G,B order, 0 = B,G,R */
    int resize;                       /* lk_resize */
    int letterbox;                    /* keep aspect ratio, pad the rest */
    int pad_value;                    /* pixel value (0..255) of the padding, before quantization */
    int dtype;                        /* lk_dtype */
    float mul[3], add[3];             /* out = pixel * mul[c] + add[c]; rounded and saturated
                                         for integer outputs (identity: mul 1, add 0) */
} lk_preprocess_params;

typedef struct {
    float scale;        /* output pixels per ROI pixel */
    int offset_x, offset_y, content_w, content_h;  /* where the image lies inside the output */
} lk_letterbox_info;

/* Writes out_h * out_w * out_c elements of `dtype` to `out` (out_bytes must hold them). */
int lk_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                  size_t out_bytes, lk_letterbox_info *info);

#ifdef __cplusplus
}
#endif
#endif
