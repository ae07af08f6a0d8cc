/* Postprocessing: dequantize, box decoding (SSD anchors, YOLO-style heads), NMS, top-k. */
#ifndef LEPTON_POSTPROCESS_H
#define LEPTON_POSTPROCESS_H

#include "lepton/common.h"

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
