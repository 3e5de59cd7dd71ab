// Fused multi-head attention forward for head size 64 (flash-attention style), f16 and bf16.
//
//   out[b, t, h, :] = sum_j softmax_j( scale * q_t . k_j  -  slope_h * |t - j| ) * v_j
//
// over the keys j < len(b) only (key-padding mask); query rows t >= len(b) are written as zeros.
// Scores never reach device memory: each block keeps a 64-row query tile on chip and streams
// 64-key tiles of K and V through shared memory, with the softmax computed online (running row
// maximum and row sum, both in f32) and P·V accumulated in f32 registers.
//
// Tensor cores: mma.sync.m16n8k16 (f16/bf16 in, f32 accumulate), operands fetched from shared
// memory with ldmatrix; K/V tiles are double-buffered with cp.async so the next tile's load
// overlaps the current tile's math. 4 warps per block, 16 query rows per warp.
//
// Two batch layouts, one kernel:
//   * padded: q/k/v rows of batch entry b start at b * stride_b; `key_lens[b]` real tokens of
//     `t_rows` rows in memory; rows in [len, t_rows) of the output are zeros.
//   * packed (varlen): `cu_seqlens[b] .. cu_seqlens[b+1]` are the rows of sequence b in one
//     [total, heads, 64] buffer; nothing is computed or written for padding (there is none).
// Inputs may have any strides (in elements) for batch, token and head, as long as the head
// dimension is contiguous and every row starts 16-byte aligned (strides multiple of 8).

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define HD 64        // head size
#define BM 64        // query rows per block
#define BN 64        // keys per tile
#define NTHREADS 128 // 4 warps
#define SROW 72      // shared-memory row pitch in elements: 144 bytes, ldmatrix without bank conflicts

namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;  // 0 bytes read: the 16 destination bytes are zero-filled
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

template <typename T> struct Mma;
template <> struct Mma<__half> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};
template <> struct Mma<__nv_bfloat16> {
    static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                               uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
};

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Copies rows [row0, row0 + 64) x 64 of a strided tensor into a shared tile; rows >= valid_rows
// are zero-filled (never read from memory), so padding or the next sequence's rows never reach
// the math (0 * garbage could be NaN).
template <typename T>
__device__ __forceinline__ void load_tile(T* smem, const T* base, long long row_stride, int row0,
                                          int valid_rows, int tid) {
#pragma unroll
    for (int i = 0; i < (BM * HD / 8) / NTHREADS; ++i) {
        const int idx = tid + i * NTHREADS;  // 16-byte chunk index
        const int r = idx >> 3;
        const int c = (idx & 7) * 8;
        const bool valid = row0 + r < valid_rows;
        const T* src = valid ? base + (long long)(row0 + r) * row_stride + c : base;
        cp_async16(smem_u32(smem + r * SROW + c), src, valid);
    }
}

template <typename T>
__device__ __forceinline__ void attn_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ o,
                                         const uint32_t* __restrict__ key_lens,
                                         const uint32_t* __restrict__ cu_seqlens,
                                         const float* __restrict__ slopes, int t_rows,
                                         long long q_sb, long long q_st, long long q_sh,
                                         long long k_sb, long long k_st, long long k_sh,
                                         long long v_sb, long long v_st, long long v_sh,
                                         long long o_sb, long long o_st, long long o_sh,
                                         float scale_log2) {
    __shared__ __align__(128) T sQ[BM * SROW];
    __shared__ __align__(128) T sK[2][BN * SROW];
    __shared__ __align__(128) T sV[2][BN * SROW];

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;   // row within an 8-row group of the mma fragment
    const int tg = lane & 3;   // column pair within the fragment
    const int tile = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    long long start;  // first row of this sequence
    int len;          // real tokens
    int rows;         // rows of the output that belong to this sequence
    if (cu_seqlens != nullptr) {
        const uint32_t s0 = cu_seqlens[b];
        const uint32_t s1 = cu_seqlens[b + 1];
        start = s0;
        len = s1 > s0 ? (int)(s1 - s0) : 0;
        rows = len;
    } else {
        start = 0;
        const uint32_t kl = key_lens[b];
        len = kl < (uint32_t)t_rows ? (int)kl : t_rows;
        rows = t_rows;
    }
    const int q0 = tile * BM;
    if (q0 >= rows) return;

    const T* qb = q + b * q_sb + start * q_st + h * q_sh;
    const T* kb = k + b * k_sb + start * k_st + h * k_sh;
    const T* vb = v + b * v_sb + start * v_st + h * v_sh;
    T* ob = o + b * o_sb + start * o_st + h * o_sh;

    if (q0 >= len) {
        // The whole tile is padding: zeros, no math.
        const uint4 z = make_uint4(0, 0, 0, 0);
        for (int idx = tid; idx < BM * HD / 8; idx += NTHREADS) {
            const int r = idx >> 3;
            const int c = (idx & 7) * 8;
            if (q0 + r < rows) *reinterpret_cast<uint4*>(ob + (long long)(q0 + r) * o_st + c) = z;
        }
        return;
    }

    const int n_tiles = (len + BN - 1) / BN;
    const float slope_log2 = slopes != nullptr ? slopes[h] * 1.4426950408889634f : 0.f;

    load_tile(sQ, qb, q_st, q0, len, tid);
    load_tile(sK[0], kb, k_st, 0, len, tid);
    load_tile(sV[0], vb, v_st, 0, len, tid);
    cp_async_commit();

    uint32_t qf[4][4];  // this warp's 16 query rows as A fragments, 4 k-steps of 16 dims
    float acc[8][4];    // 16 rows x 64 dims of output, 8 n-tiles of 8 dims
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 units), rows g and g + 8
    float l_run[2] = {0.f, 0.f};              // running sum, this thread's columns only

    const int qrow0 = q0 + warp * 16 + g;  // query position of fragment rows g and g + 8

    for (int j = 0; j < n_tiles; ++j) {
        const int buf = j & 1;
        if (j + 1 < n_tiles) {
            load_tile(sK[buf ^ 1], kb, k_st, (j + 1) * BN, len, tid);
            load_tile(sV[buf ^ 1], vb, v_st, (j + 1) * BN, len, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = kk * 16 + (lane >> 4) * 8;
                ldsm_x4(qf[kk], smem_u32(sQ + r * SROW + c));
            }
        }

        // S = Q K^T for this warp's 16 rows x 64 keys.
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
            uint32_t kf[2][4];
            const T* krow = sK[buf] + (nt * 8 + (lane & 7)) * SROW + (lane >> 3) * 8;
            ldsm_x4(kf[0], smem_u32(krow));
            ldsm_x4(kf[1], smem_u32(krow + 32));
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                Mma<T>::run(s[nt], qf[kk], kf[kk >> 1][(kk & 1) * 2], kf[kk >> 1][(kk & 1) * 2 + 1]);
        }

        // Scale, bias, mask; row maxima.
        float mx[2] = {-INFINITY, -INFINITY};
        const int key0 = j * BN;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = key0 + nt * 8 + tg * 2 + (e & 1);
                const int qpos = qrow0 + (e >> 1) * 8;
                float x = s[nt][e] * scale_log2;
                if (slopes != nullptr) x -= slope_log2 * fabsf((float)(qpos - key));
                if (key >= len) x = -INFINITY;
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], m_use[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
            const float m_new = fmaxf(m_run[r], mx[r]);
            m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // no (-inf) - (-inf)
            alpha[r] = fast_exp2(m_run[r] - m_use[r]);
            m_run[r] = m_new;
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = fast_exp2(s[nt][e] - m_use[e >> 1]);
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) l_run[r] = l_run[r] * alpha[r] + rs[r];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            acc[nt][0] *= alpha[0];
            acc[nt][1] *= alpha[0];
            acc[nt][2] *= alpha[1];
            acc[nt][3] *= alpha[1];
        }

        // O += P V: P straight from the score registers (C layout of two n-tiles == A layout).
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t pa[4];
            pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int nd = 0; nd < 4; ++nd) {
                uint32_t vf[4];
                const int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = nd * 16 + (lane >> 4) * 8;
                ldsm_x4_t(vf, smem_u32(sV[buf] + r * SROW + c));
                Mma<T>::run(acc[2 * nd], pa, vf[0], vf[1]);
                Mma<T>::run(acc[2 * nd + 1], pa, vf[2], vf[3]);
            }
        }
        __syncthreads();  // every warp is done with `buf` before it is refilled
    }

    // Normalise and write; padded query rows get zeros.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const int qpos = qrow0 + r * 8;
        const float inv = (qpos < len && l > 0.f) ? 1.f / l : 0.f;
        if (qpos < rows) {
            T* orow = ob + (long long)qpos * o_st + tg * 2;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const uint32_t w = Mma<T>::pack(acc[nt][2 * r] * inv, acc[nt][2 * r + 1] * inv);
                *reinterpret_cast<uint32_t*>(orow + nt * 8) = w;
            }
        }
    }
}

}  // namespace

#define FLASH_ATTN_ENTRY(NAME, T)                                                               \
    extern "C" __global__ void __launch_bounds__(NTHREADS)                                      \
        NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* key_lens,                \
             const uint32_t* cu_seqlens, const float* slopes, int t_rows, long long q_sb,       \
             long long q_st, long long q_sh, long long k_sb, long long k_st, long long k_sh,    \
             long long v_sb, long long v_st, long long v_sh, long long o_sb, long long o_st,    \
             long long o_sh, float scale_log2) {                                                \
        attn_fwd<T>(q, k, v, o, key_lens, cu_seqlens, slopes, t_rows, q_sb, q_st, q_sh, k_sb,   \
                    k_st, k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh, scale_log2);                \
    }

FLASH_ATTN_ENTRY(virnucpro_flash_attn_f16, __half)
FLASH_ATTN_ENTRY(virnucpro_flash_attn_bf16, __nv_bfloat16)
