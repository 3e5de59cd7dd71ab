// Fused epilogues of the encoders' linear layers, one pass over memory instead of two or three:
//   out = act(x + bias)            (act: identity or exact erf-GELU)
//   out = x + bias + residual
// x, residual, out: contiguous [rows, cols]; bias: [cols]. f16, bf16 or f32, computed in f32.
// 16-byte vector loads and stores: cols must be a multiple of 16 / sizeof(T).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename T, int ACT, bool RES>
__device__ __forceinline__ void bias_epilogue(const T* __restrict__ x, const T* __restrict__ bias,
                                              const T* __restrict__ res, T* __restrict__ out,
                                              unsigned n_vec, unsigned cols_vec) {
    constexpr int V = 16 / sizeof(T);
    union Vec {
        uint4 u;
        T e[V];
    };
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* bv = reinterpret_cast<const uint4*>(bias);
    const uint4* rv = reinterpret_cast<const uint4*>(res);
    uint4* ov = reinterpret_cast<uint4*>(out);
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec;
         i += gridDim.x * blockDim.x) {
        Vec a, b, r, o;
        a.u = xv[i];
        b.u = bv[i % cols_vec];
        if (RES) r.u = rv[i];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            float y = to_f(a.e[j]) + to_f(b.e[j]);
            if (ACT == 1) y = 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
            if (RES) y += to_f(r.e[j]);
            o.e[j] = from_f<T>(y);
        }
        ov[i] = o.u;
    }
}

}  // namespace

#define BIAS_ENTRY(NAME, T, ACT, RES)                                                      \
    extern "C" __global__ void NAME(const T* x, const T* bias, const T* res, T* out,       \
                                    unsigned n_vec, unsigned cols_vec) {                   \
        bias_epilogue<T, ACT, RES>(x, bias, res, out, n_vec, cols_vec);                    \
    }

BIAS_ENTRY(virnucpro_bias_f16, __half, 0, false)
BIAS_ENTRY(virnucpro_bias_gelu_f16, __half, 1, false)
BIAS_ENTRY(virnucpro_bias_res_f16, __half, 0, true)
BIAS_ENTRY(virnucpro_bias_bf16, __nv_bfloat16, 0, false)
BIAS_ENTRY(virnucpro_bias_gelu_bf16, __nv_bfloat16, 1, false)
BIAS_ENTRY(virnucpro_bias_res_bf16, __nv_bfloat16, 0, true)
BIAS_ENTRY(virnucpro_bias_f32, float, 0, false)
BIAS_ENTRY(virnucpro_bias_gelu_f32, float, 1, false)
BIAS_ENTRY(virnucpro_bias_res_f32, float, 0, true)
