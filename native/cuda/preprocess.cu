// CUDA preprocessing for Jetson Orin (sm_87): NV12 -> bilinear resize -> RGB/BGR -> uint8/int8/
// float32, one thread per output pixel, same integer arithmetic as src/preprocess.c (so the CUDA
// and portable results are bit-identical for bilinear NV12; built with --fmad=false because the
// CPU side is built with -ffp-contract=off). Built only with LEPTON_KERNELS=cuda.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include <mutex>

#include "lepton/cuda.h"

extern "C" int lk_cuda_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

struct Tap { int i0, i1, w; };

__device__ static Tap linear_tap(int i, double scale, double offset, int lo, int hi) {
    double f = (i + 0.5) * scale - 0.5 + offset;
    int s = (int)floor(f);
    double frac = f - s;
    if (s < lo) { s = lo; frac = 0.0; }
    if (s >= hi) { s = hi; frac = 0.0; }
    Tap t;
    t.i0 = s;
    t.i1 = s < hi ? s + 1 : s;
    t.w = (int)floor(frac * 2048.0 + 0.5);
    return t;
}

__device__ static int clamp255(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

__device__ static int bilinear(const uint8_t *plane, int stride, int step, int c, Tap ty, Tap tx) {
    const uint8_t *r0 = plane + (size_t)ty.i0 * stride, *r1 = plane + (size_t)ty.i1 * stride;
    const int a0 = r0[tx.i0 * step + c] * (2048 - ty.w) + r1[tx.i0 * step + c] * ty.w;
    const int a1 = r0[tx.i1 * step + c] * (2048 - ty.w) + r1[tx.i1 * step + c] * ty.w;
    return (a0 * (2048 - tx.w) + a1 * tx.w + (1 << 21)) >> 22;
}

__global__ void nv12_bilinear_kernel(const uint8_t *y_plane, int y_stride, const uint8_t *uv_plane,
                                     int uv_stride, int rx, int ry, int rw, int rh, int out_w,
                                     int out_h, int out_rgb, int dtype, float3 mul, float3 add,
                                     void *out) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= out_w || y >= out_h) return;
    const double sx = (double)rw / out_w, sy = (double)rh / out_h;
    const int cx0 = rx / 2, cx1 = (rx + rw - 1) / 2, cy0 = ry / 2, cy1 = (ry + rh - 1) / 2;
    const Tap tx = linear_tap(x, sx, 0.0, 0, rw - 1), ty = linear_tap(0, sy, y * sy, 0, rh - 1);
    const Tap tcx = linear_tap(x, sx / 2.0, rx / 2.0 - cx0, 0, cx1 - cx0);
    const Tap tcy = linear_tap(0, sy / 2.0, ry / 2.0 - cy0 + y * sy / 2.0, 0, cy1 - cy0);
    const int Y = bilinear(y_plane + (size_t)ry * y_stride + rx, y_stride, 1, 0, ty, tx);
    const uint8_t *uv = uv_plane + (size_t)cy0 * uv_stride + (size_t)cx0 * 2;
    const int U = bilinear(uv, uv_stride, 2, 0, tcy, tcx), V = bilinear(uv, uv_stride, 2, 1, tcy, tcx);
    int yy = Y - 16;
    yy = (yy < 0 ? 0 : yy) * 1220542 + (1 << 19);
    const int uu = U - 128, vv = V - 128;
    const int R = clamp255((yy + 1673527 * vv) >> 20);
    const int G = clamp255((yy - 852492 * vv - 409993 * uu) >> 20);
    const int B = clamp255((yy + 2116026 * uu) >> 20);
    const int c0 = out_rgb ? R : B, c2 = out_rgb ? B : R;
    const float v[3] = {c0 * mul.x + add.x, G * mul.y + add.y, c2 * mul.z + add.z};
    const size_t idx = ((size_t)y * out_w + x) * 3;
    for (int c = 0; c < 3; c++) {
        if (dtype == LK_OUT_FLOAT32) {
            ((float *)out)[idx + c] = v[c];
        } else {
            long q = lrintf(v[c]);
            if (dtype == LK_OUT_UINT8) ((uint8_t *)out)[idx + c] = (uint8_t)(q < 0 ? 0 : (q > 255 ? 255 : q));
            else ((int8_t *)out)[idx + c] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
        }
    }
}

// Device pointers in, device pointer out: on Orin the camera/decoder buffers are already in
// device-visible memory (NVMM), so no copies are made here.
extern "C" int lk_cuda_preprocess_nv12(const uint8_t *y_plane, int y_stride, const uint8_t *uv_plane,
                                       int uv_stride, const lk_preprocess_params *p, void *out,
                                       void *stream_handle) {
    cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
    if (!y_plane || !uv_plane || !p || !out) return LK_EINVAL;
    if (p->out_c != 3 || p->resize != LK_RESIZE_BILINEAR || p->letterbox) return LK_EINVAL;
    dim3 block(32, 8), grid((p->out_w + 31) / 32, (p->out_h + 7) / 8);
    nv12_bilinear_kernel<<<grid, block, 0, stream>>>(
        y_plane, y_stride, uv_plane, uv_stride, p->roi_x, p->roi_y, p->roi_w, p->roi_h, p->out_w,
        p->out_h, p->out_rgb, p->dtype, make_float3(p->mul[0], p->mul[1], p->mul[2]),
        make_float3(p->add[0], p->add[1], p->add[2]), out);
    return cudaGetLastError() == cudaSuccess ? LK_OK : LK_EINVAL;
}

namespace {

// Device buffers reused across calls (one camera, one size): a cudaMalloc per frame would cost
// more than the kernel.
struct DeviceBuffers {
    std::mutex lock;
    uint8_t *y = nullptr, *uv = nullptr;
    void *out = nullptr;
    size_t y_cap = 0, uv_cap = 0, out_cap = 0;
};
DeviceBuffers g_buffers;

template <typename T> bool reserve(T **ptr, size_t *cap, size_t need) {
    if (*cap >= need) return true;
    if (*ptr) cudaFree(*ptr);
    *ptr = nullptr;
    *cap = 0;
    if (cudaMalloc(reinterpret_cast<void **>(ptr), need) != cudaSuccess) return false;
    *cap = need;
    return true;
}

}  // namespace

extern "C" int lk_cuda_preprocess(const lk_image *s, const lk_preprocess_params *p, void *out,
                                  size_t out_bytes) {
    if (!s || !p || !out || !s->plane0) return LK_EINVAL;
    if (s->format != LK_FMT_NV12 || p->resize != LK_RESIZE_BILINEAR || p->letterbox || p->out_c != 3)
        return LK_ENOTSUP;
    if (!s->plane1) return LK_EINVAL;
    if (p->dtype < LK_OUT_UINT8 || p->dtype > LK_OUT_FLOAT32) return LK_EINVAL;
    if (s->width <= 0 || s->height <= 0 || p->out_w <= 0 || p->out_h <= 0) return LK_EINVAL;
    if (s->width > 65535 || s->height > 65535 || p->out_w > 16384 || p->out_h > 16384)
        return LK_EOVERFLOW;
    const size_t cw = (size_t)(s->width + 1) / 2, ch = (size_t)(s->height + 1) / 2;
    if (s->stride0 < s->width || s->stride1 < 0 || (size_t)s->stride1 < 2 * cw) return LK_ERANGE;
    if ((size_t)s->stride0 * (s->height - 1) + s->width > s->plane0_bytes) return LK_ERANGE;
    if ((size_t)s->stride1 * (ch - 1) + 2 * cw > s->plane1_bytes) return LK_ERANGE;
    int rx = p->roi_x, ry = p->roi_y, rw = p->roi_w, rh = p->roi_h;
    if (rx == 0 && ry == 0 && rw == 0 && rh == 0) { rw = s->width; rh = s->height; }
    if (rx < 0 || ry < 0 || rw <= 0 || rh <= 0) return LK_ERANGE;
    if ((long long)rx + rw > s->width || (long long)ry + rh > s->height) return LK_ERANGE;
    static const size_t esize[] = {1, 1, 4};
    const size_t need = (size_t)p->out_w * p->out_h * 3 * esize[p->dtype];
    if (need > out_bytes) return LK_ERANGE;
    if (!lk_cuda_available()) return LK_EDEVICE;

    std::lock_guard<std::mutex> guard(g_buffers.lock);
    DeviceBuffers &b = g_buffers;
    if (!reserve(&b.y, &b.y_cap, (size_t)s->width * s->height) ||
        !reserve(&b.uv, &b.uv_cap, 2 * cw * ch) || !reserve(&b.out, &b.out_cap, need))
        return LK_ENOMEM;
    if (cudaMemcpy2D(b.y, s->width, s->plane0, s->stride0, s->width, s->height,
                     cudaMemcpyHostToDevice) != cudaSuccess ||
        cudaMemcpy2D(b.uv, 2 * cw, s->plane1, s->stride1, 2 * cw, ch, cudaMemcpyHostToDevice) !=
            cudaSuccess)
        return LK_EDEVICE;
    lk_preprocess_params q = *p;
    q.roi_x = rx; q.roi_y = ry; q.roi_w = rw; q.roi_h = rh;
    if (lk_cuda_preprocess_nv12(b.y, s->width, b.uv, (int)(2 * cw), &q, b.out, nullptr) != LK_OK)
        return LK_EDEVICE;
    if (cudaMemcpy(out, b.out, need, cudaMemcpyDeviceToHost) != cudaSuccess) return LK_EDEVICE;
    return LK_OK;
}
