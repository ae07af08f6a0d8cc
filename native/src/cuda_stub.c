/* Builds without CUDA report it absent and decline every CUDA request. */
#include "lepton/cuda.h"

int lk_cuda_available(void) { return 0; }

int lk_cuda_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                       size_t out_bytes) {
    (void)src; (void)params; (void)out; (void)out_bytes;
    return LK_ENOTSUP;
}
