/* Postprocessing: dequantize, box decoding (SSD anchors, YOLO-style heads), NMS, top-k. */
#ifndef LEPTON_POSTPROCESS_H
#define LEPTON_POSTPROCESS_H

#include "lepton/common.h"
#include "lepton/preprocess.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = (q[i] - zero_point) * scale; `is_signed` selects int8 over uint8 input. */
int lk_dequantize(const uint8_t *q, size_t n, int is_signed, float scale, int zero_point, float *out);

/* Raw SSD box encodings (ty, tx, th, tw) against anchors (ycenter, xcenter, h, w) ->
 * (ymin, xmin, ymax, xmax); scales as in TFLite_Detection_PostProcess (10, 10, 5, 5). */
int lk_ssd_decode(const float *encodings, const float *anchors, size_t n, const float scales[4],
                  float *boxes_out);

/* YOLO-style head rows of `row_len` floats: cx, cy, w, h, [objectness], class scores...
 * Keeps rows whose confidence (objectness * best class score, or best class score) reaches
 * `threshold`; writes (ymin, xmin, ymax, xmax) normalized by (input_w, input_h), scores and
 * classes, and returns the count kept in *kept (at most `capacity`). */
int lk_yolo_decode(const float *rows, size_t n, int row_len, int has_objectness, float threshold,
                   float input_w, float input_h, float *boxes_out, float *scores_out,
                   int32_t *classes_out, size_t capacity, size_t *kept);

/* A YOLO head read in place, in either layout: value (anchor a, channel c) is
 * data[a * anchor_stride + c * channel_stride] (v8/v11 [1, 4 + C, N]: anchor_stride 1,
 * channel_stride N; v5 [1, N, 5 + C]: anchor_stride 5 + C, channel_stride 1), of `dtype`
 * (LK_OUT_FLOAT32, LK_OUT_UINT8, LK_OUT_INT8; integers are real (q - zero_point) * scale).
 * Channels: cx, cy, w, h, [objectness], class scores. */
typedef struct {
    const void *data;
    size_t data_elems;        /* elements readable from data (bounds checking) */
    int dtype;                /* lk_dtype */
    float scale;              /* integer dtypes only */
    int zero_point;
    size_t anchors;
    int channels;
    size_t anchor_stride, channel_stride;
    int has_objectness;
    float threshold;          /* confidence = best class score [* objectness] >= threshold */
    float norm_w, norm_h;     /* box values are divided by these (1: already normalized) */
} lk_yolo_head;

/* Keeps anchors whose confidence reaches the threshold, in anchor order: boxes (ymin, xmin,
 * ymax, xmax), scores, classes (the first best class) and, when index_out is not NULL, the
 * anchor index; at most `capacity`, count in *kept. The same arithmetic as
 * agent.core.heads.yolo_candidates, bit for bit (finite inputs). */
int lk_yolo_decode_head(const lk_yolo_head *head, float *boxes_out, float *scores_out,
                        int32_t *classes_out, int32_t *index_out, size_t capacity, size_t *kept);

/* Class-aware greedy NMS; keep_out receives indices, best score first (ties: lower index).
 * Boxes are (ymin, xmin, ymax, xmax). */
int lk_nms(const float *boxes, const float *scores, const int32_t *classes, size_t n,
           float iou_threshold, size_t max_out, int32_t *keep_out, size_t *kept);

/* The k best indices by score, best first (ties: lower index). */
int lk_topk(const float *scores, size_t n, size_t k, int32_t *index_out);

#ifdef __cplusplus
}
#endif
#endif
