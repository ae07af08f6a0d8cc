/* CUDA preprocessing (Jetson Orin): built with LEPTON_KERNELS=cuda, stubs otherwise. */
#ifndef LEPTON_CUDA_H
#define LEPTON_CUDA_H

#include "lepton/preprocess.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when this build has CUDA kernels and a device is present. */
int lk_cuda_available(void);

/* Host buffers in, host buffer out; the same result as lk_preprocess, bit for bit. Handles NV12,
 * bilinear, 3 channels, no letterbox; anything else returns LK_ENOTSUP (the caller uses the
 * CPU kernel). Device buffers are kept between calls; calls are serialized by a mutex. */
int lk_cuda_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                       size_t out_bytes);

/* Device pointers in and out (NVMM buffers on Orin), launched on a cudaStream_t passed as
 * `stream` (NULL: the default stream); the ROI must be explicit. */
int lk_cuda_preprocess_nv12(const uint8_t *y_plane, int y_stride, const uint8_t *uv_plane,
                            int uv_stride, const lk_preprocess_params *params, void *out,
                            void *stream);

#ifdef __cplusplus
}
#endif
#endif
