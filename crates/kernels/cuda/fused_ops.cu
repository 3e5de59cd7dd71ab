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

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension, one warp per row: the row is held in registers (MAXV 16-byte
// vectors per lane), so it is read from memory once; mean first, then the variance of the
// centred values (two passes over registers, f32), as PyTorch computes it.
//   out[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b
// x, out: contiguous [rows, cols]; w, b: [cols]; cols = cols_vec * (16 / sizeof(T)).
// ---------------------------------------------------------------------------------------------

namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T, int MAXV>
__device__ __forceinline__ void layer_norm_rows(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, T* __restrict__ out,
                                                unsigned rows, unsigned cols_vec, float eps) {
    constexpr int V = 16 / sizeof(T);
    union Vec {
        uint4 u;
        T e[V];
    };
    const unsigned row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4* xv = reinterpret_cast<const uint4*>(x) + (size_t)row * cols_vec;
    uint4* ov = reinterpret_cast<uint4*>(out) + (size_t)row * cols_vec;
    const uint4* wv = reinterpret_cast<const uint4*>(w);
    const uint4* bv = reinterpret_cast<const uint4*>(b);
    Vec r[MAXV];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
        const unsigned c = lane + 32u * i;
        if (c < cols_vec) {
            r[i].u = xv[c];
#pragma unroll
            for (int j = 0; j < V; ++j) sum += to_f(r[i].e[j]);
        }
    }
    const float n = (float)(cols_vec * V);
    const float mean = warp_sum(sum) / n;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
        const unsigned c = lane + 32u * i;
        if (c < cols_vec) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float d = to_f(r[i].e[j]) - mean;
                sq += d * d;
            }
        }
    }
    const float rstd = 1.f / sqrtf(warp_sum(sq) / n + eps);
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
        const unsigned c = lane + 32u * i;
        if (c < cols_vec) {
            Vec wg, bs, o;
            wg.u = wv[c];
            bs.u = bv[c];
#pragma unroll
            for (int j = 0; j < V; ++j)
                o.e[j] = from_f<T>((to_f(r[i].e[j]) - mean) * rstd * to_f(wg.e[j]) + to_f(bs.e[j]));
            ov[c] = o.u;
        }
    }
}

// Rotary embedding (rotate-half) of q and k, read from the fused projection and written
// token-major: qkv [tokens, 3, heads, D] -> q, k [tokens, heads, D]. The position of a token is
// its index within its row of t_len tokens. cos/sin: f32 [positions, D/2]. Each thread rotates 8
// pairs (i, i + D/2) of one head of q or k; D/2 must be a multiple of 8.
template <typename T>
__device__ __forceinline__ void rotary_qk(const T* __restrict__ qkv, const float* __restrict__ cosv,
                                          const float* __restrict__ sinv, T* __restrict__ q,
                                          T* __restrict__ k, unsigned tokens, unsigned t_len,
                                          unsigned heads, unsigned half) {
    union Vec8 {
        uint4 u[sizeof(T) == 4 ? 2 : 1];
        T e[8];
    };
    const unsigned chunks = half / 8;
    const size_t total = (size_t)tokens * 2 * heads * chunks;
    for (size_t g = blockIdx.x * (size_t)blockDim.x + threadIdx.x; g < total;
         g += (size_t)gridDim.x * blockDim.x) {
        const unsigned c = g % chunks;
        size_t rest = g / chunks;
        const unsigned h = rest % heads;
        rest /= heads;
        const unsigned which = rest % 2;  // 0: q, 1: k
        const size_t tok = rest / 2;
        const unsigned pos = tok % t_len;
        const unsigned d = 2 * half;
        const T* src = qkv + (tok * 3 + which) * heads * d + (size_t)h * d + c * 8;
        T* dst = (which ? k : q) + (tok * heads + h) * d + c * 8;
        Vec8 x1, x2, o1, o2;
        constexpr int NU = sizeof(T) == 4 ? 2 : 1;
#pragma unroll
        for (int u = 0; u < NU; ++u) {
            x1.u[u] = reinterpret_cast<const uint4*>(src)[u];
            x2.u[u] = reinterpret_cast<const uint4*>(src + half)[u];
        }
        const float4* cp = reinterpret_cast<const float4*>(cosv + (size_t)pos * half + c * 8);
        const float4* sp = reinterpret_cast<const float4*>(sinv + (size_t)pos * half + c * 8);
        const float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
        const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        const float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float a = to_f(x1.e[j]), bb = to_f(x2.e[j]);
            o1.e[j] = from_f<T>(a * cs[j] - bb * sn[j]);
            o2.e[j] = from_f<T>(bb * cs[j] + a * sn[j]);
        }
#pragma unroll
        for (int u = 0; u < NU; ++u) {
            reinterpret_cast<uint4*>(dst)[u] = o1.u[u];
            reinterpret_cast<uint4*>(dst + half)[u] = o2.u[u];
        }
    }
}

// Gated GELU of DNABERT-S's MLP: g [rows, 2I] -> out [rows, I] = gelu(g[:, :I]) * g[:, I:].
template <typename T>
__device__ __forceinline__ void gated_gelu(const T* __restrict__ g, T* __restrict__ out,
                                           unsigned rows, unsigned i_vec) {
    constexpr int V = 16 / sizeof(T);
    union Vec {
        uint4 u;
        T e[V];
    };
    const uint4* gv = reinterpret_cast<const uint4*>(g);
    uint4* ov = reinterpret_cast<uint4*>(out);
    const size_t n = (size_t)rows * i_vec;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / i_vec, c = i % i_vec;
        Vec a, v, o;
        a.u = gv[r * 2 * i_vec + c];
        v.u = gv[r * 2 * i_vec + i_vec + c];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float y = to_f(a.e[j]);
            o.e[j] = from_f<T>(0.5f * y * (1.f + erff(y * 0.70710678118654752f)) * to_f(v.e[j]));
        }
        ov[i] = o.u;
    }
}


// Embedding lookup: out[r, :] = table[ids[r], :] in 16-byte vectors, one block per row (grid-
// stride); an id past the table gives a zero row (the tokenizers' ids are checked on the host,
// this only keeps a bad one from reading outside the table). candle's index_select moved one
// element per thread with a division each, at ~400 GB/s on an H100.
__device__ __forceinline__ void gather_rows(const uint4* __restrict__ table,
                                            const uint32_t* __restrict__ ids,
                                            uint4* __restrict__ out, unsigned rows,
                                            unsigned cols_vec, unsigned vocab) {
    for (unsigned r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint32_t id = ids[r];
        const uint4* src = table + (size_t)id * cols_vec;
        uint4* dst = out + (size_t)r * cols_vec;
        for (unsigned c = threadIdx.x; c < cols_vec; c += blockDim.x)
            dst[c] = id < vocab ? src[c] : make_uint4(0u, 0u, 0u, 0u);
    }
}

template <typename T> __device__ __forceinline__ float2 load2(const T* p);
template <> __device__ __forceinline__ float2 load2<float>(const float* p) {
    return *reinterpret_cast<const float2*>(p);
}
template <> __device__ __forceinline__ float2 load2<__half>(const __half* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
}
template <> __device__ __forceinline__ float2 load2<__nv_bfloat16>(const __nv_bfloat16* p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// Weighted pooling of the last hidden state: out[b, c] = sum_l w[b, l] * x[b, l, c] in f32
// (x [batch, len, cols] of T, w [batch, len] f32), two columns per thread, grid (column blocks,
// batch). Positions of weight 0 (padding, and for ESM <cls>/<eos>) are not read. Replaces a cast
// of the whole hidden state to f32 and a batched GEMV.
template <typename T>
__device__ __forceinline__ void weighted_pool(const T* __restrict__ x, const float* __restrict__ w,
                                              float* __restrict__ out, unsigned len,
                                              unsigned cols) {
    const unsigned b = blockIdx.y;
    const unsigned c = 2 * (blockIdx.x * blockDim.x + threadIdx.x);
    if (c >= cols) return;
    const T* xb = x + (size_t)b * len * cols + c;
    const float* wb = w + (size_t)b * len;
    float a0 = 0.f, a1 = 0.f;
#pragma unroll 4
    for (unsigned l = 0; l < len; ++l) {
        const float wl = wb[l];
        if (wl != 0.f) {
            const float2 v = load2<T>(xb + (size_t)l * cols);
            a0 = fmaf(wl, v.x, a0);
            a1 = fmaf(wl, v.y, a1);
        }
    }
    out[(size_t)b * cols + c] = a0;
    out[(size_t)b * cols + c + 1] = a1;
}

}  // namespace

#define LN_ENTRY(NAME, T, MAXV)                                                             \
    extern "C" __global__ void NAME(const T* x, const T* w, const T* b, T* out, unsigned rows, \
                                    unsigned cols_vec, float eps) {                         \
        layer_norm_rows<T, MAXV>(x, w, b, out, rows, cols_vec, eps);                        \
    }

LN_ENTRY(virnucpro_layer_norm_f16_4, __half, 4)
LN_ENTRY(virnucpro_layer_norm_f16_8, __half, 8)
LN_ENTRY(virnucpro_layer_norm_f16_16, __half, 16)
LN_ENTRY(virnucpro_layer_norm_bf16_4, __nv_bfloat16, 4)
LN_ENTRY(virnucpro_layer_norm_bf16_8, __nv_bfloat16, 8)
LN_ENTRY(virnucpro_layer_norm_bf16_16, __nv_bfloat16, 16)
LN_ENTRY(virnucpro_layer_norm_f32_4, float, 4)
LN_ENTRY(virnucpro_layer_norm_f32_8, float, 8)
LN_ENTRY(virnucpro_layer_norm_f32_16, float, 16)

#define ROTARY_ENTRY(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T* qkv, const float* cosv, const float* sinv, T* q,  \
                                    T* k, unsigned tokens, unsigned t_len, unsigned heads,     \
                                    unsigned half) {                                          \
        rotary_qk<T>(qkv, cosv, sinv, q, k, tokens, t_len, heads, half);                     \
    }

ROTARY_ENTRY(virnucpro_rotary_qk_f16, __half)
ROTARY_ENTRY(virnucpro_rotary_qk_bf16, __nv_bfloat16)
ROTARY_ENTRY(virnucpro_rotary_qk_f32, float)

#define GATED_ENTRY(NAME, T)                                                                 \
    extern "C" __global__ void NAME(const T* g, T* out, unsigned rows, unsigned i_vec) {      \
        gated_gelu<T>(g, out, rows, i_vec);                                                  \
    }

GATED_ENTRY(virnucpro_gated_gelu_f16, __half)
GATED_ENTRY(virnucpro_gated_gelu_bf16, __nv_bfloat16)
GATED_ENTRY(virnucpro_gated_gelu_f32, float)

extern "C" __global__ void virnucpro_gather_rows(const uint4* table, const uint32_t* ids,
                                                 uint4* out, unsigned rows, unsigned cols_vec,
                                                 unsigned vocab) {
    gather_rows(table, ids, out, rows, cols_vec, vocab);
}

#define POOL_ENTRY(NAME, T)                                                                  \
    extern "C" __global__ void NAME(const T* x, const float* w, float* out, unsigned len,    \
                                    unsigned cols) {                                          \
        weighted_pool<T>(x, w, out, len, cols);                                              \
    }

POOL_ENTRY(virnucpro_weighted_pool_f16, __half)
POOL_ENTRY(virnucpro_weighted_pool_bf16, __nv_bfloat16)
POOL_ENTRY(virnucpro_weighted_pool_f32, float)
