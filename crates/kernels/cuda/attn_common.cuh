// Helpers shared by the fused attention kernels (flash_attn.cu: mma.sync, any sm_80+ GPU;
// flash_attn_sm90.cu: wgmma, Hopper only).
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace attn {

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
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Online-softmax update of one m-tile's scores `s` (16 rows x 8*NN keys, this thread's fragment
// of an mma/wgmma accumulator):
// ALIBI: add -slope * |i - j|; MASK: keys >= len get -inf (only the last key tile needs it).
// Without ALiBi the running max is kept in raw score units and the scale is folded into one FFMA
// per element (exp2(s * c - m * c)); with ALiBi the scores are moved to log2 units first.
// softmax_scores does everything but the rescaling of the output accumulators by `alpha` (the
// wgmma kernel does that later, once the previous P V product has landed); softmax_tile does both.
template <int NN, bool ALIBI, bool MASK>
__device__ __forceinline__ void softmax_scores(float (&s)[NN][4], float (&m_run)[2],
                                               float (&l_run)[2], float (&alpha)[2], int qrow,
                                               int key0, int tg, int len, float scale_log2,
                                               float slope_log2) {
    // Row maxima as four independent partial maxima per row, combined at the end: one running
    // maximum per row was a chain of 8 * NN / 4 dependent FMNMX (ptxas does not reassociate
    // them), ~150 cycles of latency per row and tile on the consumers' critical path.
    float pm[2][4];
#pragma unroll
    for (int nt = 0; nt < NN; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = key0 + nt * 8 + tg * 2 + (e & 1);
            float x = s[nt][e];
            if (ALIBI) {
                const int qpos = qrow + (e >> 1) * 8;
                x = fmaf(x, scale_log2, -slope_log2 * fabsf((float)(qpos - key)));
            }
            if (MASK && key >= len) x = -INFINITY;
            s[nt][e] = x;
            float& p = pm[e >> 1][(nt & 1) * 2 + (e & 1)];
            p = nt < 2 ? x : fmaxf(p, x);
        }
    }
    float mx[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) mx[r] = fmaxf(fmaxf(pm[r][0], pm[r][1]), fmaxf(pm[r][2], pm[r][3]));
    const float c = ALIBI ? 1.f : scale_log2;  // units of s -> log2 units
    float mc[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
        // Lazy rescaling: the reference maximum moves only when the tile's maximum exceeds it by
        // more than 8 (log2 units), so probabilities stay below 2^8 (f16 and the f32 sums hold
        // that) and most tiles keep alpha = 1, which skips the 32 multiplies rescaling O.
        // (m_run = -inf: the difference is +inf, or NaN when the tile is masked too: no move.)
        if ((mx[r] - m_run[r]) * c > 8.f) {
            alpha[r] = fast_exp2((m_run[r] - mx[r]) * c);
            m_run[r] = mx[r];
        } else {
            alpha[r] = 1.f;
        }
        const float m_use = m_run[r] == -INFINITY ? 0.f : m_run[r];  // no (-inf) - (-inf)
        mc[r] = m_use * c;
    }
    // Two partial sums per row: shorter dependency chains.
    float rs[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
    for (int nt = 0; nt < NN; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float p = fast_exp2(fmaf(s[nt][e], c, -mc[e >> 1]));
            s[nt][e] = p;
            rs[e >> 1][e & 1] += p;
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) l_run[r] = fmaf(l_run[r], alpha[r], rs[r][0] + rs[r][1]);
}

__device__ __forceinline__ void rescale_acc(float (&acc)[8][4], const float (&alpha)[2]) {
    // Rescale the accumulators only when some row's reference maximum moved (lazy rescaling in
    // softmax_scores: rare after the first tile).
    if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            acc[nt][0] *= alpha[0];
            acc[nt][1] *= alpha[0];
            acc[nt][2] *= alpha[1];
            acc[nt][3] *= alpha[1];
        }
    }
}

template <int NN, bool ALIBI, bool MASK>
__device__ __forceinline__ void softmax_tile(float (&s)[NN][4], float (&m_run)[2], float (&l_run)[2],
                                             float (&acc)[8][4], int qrow, int key0, int tg,
                                             int len, float scale_log2, float slope_log2) {
    float alpha[2];
    softmax_scores<NN, ALIBI, MASK>(s, m_run, l_run, alpha, qrow, key0, tg, len, scale_log2,
                                    slope_log2);
    rescale_acc(acc, alpha);
}

// Packs two f32 values into one register of two T (f16 or bf16), low half first.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

// The rows of batch entry b. Packed (cu_seqlens != null): rows cu_seqlens[b] .. cu_seqlens[b+1]
// of one buffer, all real. Padded: t_rows rows from the entry's own start, the first
// key_lens[b] real.
struct SeqSpan {
    long long start;  // first row of this sequence
    int len;          // real tokens
    int rows;         // rows of the output that belong to this sequence
};
__device__ __forceinline__ SeqSpan seq_span(int b, const uint32_t* __restrict__ key_lens,
                                            const uint32_t* __restrict__ cu_seqlens, int t_rows) {
    if (cu_seqlens != nullptr) {
        const uint32_t s0 = cu_seqlens[b];
        const uint32_t s1 = cu_seqlens[b + 1];
        const int len = s1 > s0 ? (int)(s1 - s0) : 0;
        return {(long long)s0, len, len};
    }
    const uint32_t kl = key_lens[b];
    return {0, kl < (uint32_t)t_rows ? (int)kl : t_rows, t_rows};
}

// A query tile of BM rows from q0 that is all padding: zeros (rows < `rows`), no math.
template <int BM, int NT, typename T>
__device__ __forceinline__ void zero_tile(T* ob, long long o_st, int q0, int rows, int tid) {
    const uint4 z = make_uint4(0, 0, 0, 0);
    for (int idx = tid; idx < BM * 64 / 8; idx += NT) {
        const int r = idx >> 3;
        const int c = (idx & 7) * 8;
        if (q0 + r < rows) *reinterpret_cast<uint4*>(ob + (long long)(q0 + r) * o_st + c) = z;
    }
}

// Normalises and writes this thread's part of a 16-row output fragment (rows qrow and qrow + 8,
// the mma accumulator layout): divides by the row sums (partial per thread, summed over the
// quad here); rows >= len are written as zeros, rows >= `rows` not at all.
template <typename T>
__device__ __forceinline__ void store_rows(const float (&acc)[8][4], const float (&l_run)[2],
                                           int qrow, int len, int rows, T* ob, long long o_st,
                                           int tg) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_run[r];
        l += __shfl_xor_sync(0xffffffff, l, 1);
        l += __shfl_xor_sync(0xffffffff, l, 2);
        const int qpos = qrow + r * 8;
        const float inv = (qpos < len && l > 0.f) ? 1.f / l : 0.f;
        if (qpos < rows) {
            T* orow = ob + (long long)qpos * o_st + tg * 2;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
                *reinterpret_cast<uint32_t*>(orow + nt * 8) =
                    pack2<T>(acc[nt][2 * r] * inv, acc[nt][2 * r + 1] * inv);
        }
    }
}

}  // namespace attn
