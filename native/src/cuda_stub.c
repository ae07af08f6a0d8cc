/* Builds without CUDA report it absent. */
int lk_cuda_available(void) { return 0; }
