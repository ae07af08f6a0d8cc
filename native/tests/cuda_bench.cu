// Times the CUDA NV12 preprocess kernel alone (device buffers in and out, as with NVMM buffers on
// Orin) and through lk_cuda_preprocess (host copies included), against the CPU lk_preprocess, and
// checks all three agree bit for bit. Build: make -f native/tests/cuda.mk; run: build/cuda/bench.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>

#include "lepton/cuda.h"

static double now_ms() {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main() {
    const int w = 1920, h = 1080, ow = 300, oh = 300, reps = 200;
    const size_t ysize = (size_t)w * h, uvsize = ysize / 2, osize = (size_t)ow * oh * 3;
    uint8_t *y = (uint8_t *)malloc(ysize), *uv = (uint8_t *)malloc(uvsize);
    uint8_t *cpu = (uint8_t *)malloc(osize), *gpu = (uint8_t *)malloc(osize), *dev_out = (uint8_t *)malloc(osize);
    srand(7);
    for (size_t i = 0; i < ysize; i++) y[i] = rand() & 255;
    for (size_t i = 0; i < uvsize; i++) uv[i] = rand() & 255;
    lk_image img = {LK_FMT_NV12, w, h, y, w, uv, w, ysize, uvsize};
    lk_preprocess_params p = {};
    p.out_w = ow; p.out_h = oh; p.out_c = 3; p.out_rgb = 1; p.dtype = LK_OUT_UINT8;
    for (int c = 0; c < 3; c++) { p.mul[c] = 1.f; p.add[c] = 0.f; }
    if (!lk_cuda_available()) { fprintf(stderr, "no CUDA device\n"); return 2; }

    double t0 = now_ms();
    for (int i = 0; i < reps; i++) lk_preprocess(&img, &p, cpu, osize, nullptr);
    const double cpu_ms = (now_ms() - t0) / reps;

    if (lk_cuda_preprocess(&img, &p, gpu, osize) != LK_OK) return 3;
    t0 = now_ms();
    for (int i = 0; i < reps; i++) lk_cuda_preprocess(&img, &p, gpu, osize);
    const double host_path_ms = (now_ms() - t0) / reps;

    uint8_t *dy, *duv, *dout;
    cudaMalloc(&dy, ysize); cudaMalloc(&duv, uvsize); cudaMalloc(&dout, osize);
    cudaMemcpy(dy, y, ysize, cudaMemcpyHostToDevice);
    cudaMemcpy(duv, uv, uvsize, cudaMemcpyHostToDevice);
    lk_preprocess_params q = p;
    q.roi_w = w; q.roi_h = h;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    lk_cuda_preprocess_nv12(dy, w, duv, w, &q, dout, nullptr);
    cudaEventRecord(e0);
    for (int i = 0; i < reps; i++) lk_cuda_preprocess_nv12(dy, w, duv, w, &q, dout, nullptr);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float kernel_total = 0;
    cudaEventElapsedTime(&kernel_total, e0, e1);
    cudaMemcpy(dev_out, dout, osize, cudaMemcpyDeviceToHost);

    const bool same = !memcmp(cpu, gpu, osize) && !memcmp(cpu, dev_out, osize);
    printf("{\"case\": \"nv12_1080p_to_300_linear\", \"cpu_ref_ms\": %.4f, \"cuda_host_path_ms\": %.4f, "
           "\"cuda_kernel_ms\": %.4f, \"bit_exact\": %s}\n",
           cpu_ms, host_path_ms, kernel_total / reps, same ? "true" : "false");
    return same ? 0 : 1;
}
