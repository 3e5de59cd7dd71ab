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

#include "attn_common.cuh"

#define HD 64        // head size
#define BN 64        // keys per tile
#define SROW 72      // shared-memory row pitch in elements: 144 bytes, ldmatrix without bank conflicts

namespace {

using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::ldsm_x4;
using attn::pack2;
using attn::seq_span;
using attn::store_rows;
using attn::zero_tile;
using attn::smem_u32;
using attn::softmax_tile;

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
};

// Copies rows [row0, row0 + ROWS) x 64 of a strided tensor into a shared tile; rows >= valid_rows
// are zero-filled (never read from memory), so padding or the next sequence's rows never reach
// the math (0 * garbage could be NaN).
template <int ROWS, int NT, typename T>
__device__ __forceinline__ void load_tile(T* smem, const T* base, long long row_stride, int row0,
                                          int valid_rows, int tid) {
    static_assert((ROWS * HD / 8) % NT == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int i = 0; i < (ROWS * HD / 8) / NT; ++i) {
        const int idx = tid + i * NT;  // 16-byte chunk index
        const int r = idx >> 3;
        const int c = (idx & 7) * 8;
        const bool valid = row0 + r < valid_rows;
        const T* src = valid ? base + (long long)(row0 + r) * row_stride + c : base;
        cp_async16(smem_u32(smem + r * SROW + c), src, valid);
    }
}

// WARPS warps per block, each owning MT m-tiles of 16 query rows: BM = WARPS * 16 * MT query rows
// per block. Shared memory: two buffers of (K tile, V tile); the Q tile is staged in the second
// buffer before the loop (it lives in registers afterwards), so BM <= 2 * BN.
template <typename T, int WARPS, int MT, bool ALIBI>
__device__ __forceinline__ void attn_fwd(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ o,
                                         const uint32_t* __restrict__ key_lens,
                                         const uint32_t* __restrict__ cu_seqlens,
                                         const float* __restrict__ slopes, int t_rows,
                                         long long q_sb, long long q_st, long long q_sh,
                                         long long k_sb, long long k_st, long long k_sh,
                                         long long v_sb, long long v_st, long long v_sh,
                                         long long o_sb, long long o_st, long long o_sh,
                                         float scale_log2, T* smem) {
    constexpr int NT = WARPS * 32;
    constexpr int BM = WARPS * 16 * MT;
    static_assert(BM <= 2 * BN, "the Q tile is staged in the second K/V buffer");
    T* const sQ = smem + 2 * BN * SROW;
    auto sK = [&](int buf) { return smem + buf * 2 * BN * SROW; };
    auto sV = [&](int buf) { return smem + buf * 2 * BN * SROW + BN * SROW; };

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;   // row within an 8-row group of the mma fragment
    const int tg = lane & 3;   // column pair within the fragment
    const int tile = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;

    const attn::SeqSpan sp = seq_span(b, key_lens, cu_seqlens, t_rows);
    const long long start = sp.start;
    const int len = sp.len;
    const int rows = sp.rows;
    const int q0 = tile * BM;
    if (q0 >= rows) return;

    const T* qb = q + b * q_sb + start * q_st + h * q_sh;
    const T* kb = k + b * k_sb + start * k_st + h * k_sh;
    const T* vb = v + b * v_sb + start * v_st + h * v_sh;
    T* ob = o + b * o_sb + start * o_st + h * o_sh;

    if (q0 >= len) {  // the whole tile is padding
        zero_tile<BM, NT>(ob, o_st, q0, rows, tid);
        return;
    }

    const int n_tiles = (len + BN - 1) / BN;
    const float slope_log2 = ALIBI ? slopes[h] * 1.4426950408889634f : 0.f;

    // Prologue: Q and the first K/V tile; Q goes to registers, freeing the second buffer.
    load_tile<BM, NT>(sQ, qb, q_st, q0, len, tid);
    load_tile<BN, NT>(sK(0), kb, k_st, 0, len, tid);
    load_tile<BN, NT>(sV(0), vb, v_st, 0, len, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[MT][4][4];  // A fragments: m-tile, k-step of 16 dims
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const int r = (warp * MT + mt) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
            const int c = kk * 16 + (lane >> 4) * 8;
            ldsm_x4(qf[mt][kk], smem_u32(sQ + r * SROW + c));
        }
    __syncthreads();

    float acc[MT][8][4];  // output: m-tile, n-tile of 8 dims, fragment
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][i][e] = 0.f;
    float m_run[MT][2];  // running max (log2 units), rows g and g + 8
    float l_run[MT][2];  // running sum, this thread's columns only
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        m_run[mt][0] = m_run[mt][1] = -INFINITY;
        l_run[mt][0] = l_run[mt][1] = 0.f;
    }

    for (int j = 0; j < n_tiles; ++j) {
        const int buf = j & 1;
        if (j + 1 < n_tiles) {
            load_tile<BN, NT>(sK(buf ^ 1), kb, k_st, (j + 1) * BN, len, tid);
            load_tile<BN, NT>(sV(buf ^ 1), vb, v_st, (j + 1) * BN, len, tid);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T* Ks = sK(buf);
        const T* Vs = sV(buf);

        // S = Q K^T: MT x 16 rows x 64 keys per warp; each K fragment feeds MT products.
        float s[MT][8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            uint32_t kf[2][4];
            const T* krow = Ks + (nt * 8 + (lane & 7)) * SROW + (lane >> 3) * 8;
            ldsm_x4(kf[0], smem_u32(krow));
            ldsm_x4(kf[1], smem_u32(krow + 32));
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
                    Mma<T>::run(s[mt][nt], qf[mt][kk], kf[kk >> 1][(kk & 1) * 2],
                                kf[kk >> 1][(kk & 1) * 2 + 1]);
            }
        }

        const int key0 = j * BN;
        const bool mask = key0 + BN > len;  // only the last tile has keys past the end
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int qrow = q0 + (warp * MT + mt) * 16 + g;  // position of fragment row g
            if (mask)
                softmax_tile<8, ALIBI, true>(s[mt], m_run[mt], l_run[mt], acc[mt], qrow, key0, tg,
                                          len, scale_log2, slope_log2);
            else
                softmax_tile<8, ALIBI, false>(s[mt], m_run[mt], l_run[mt], acc[mt], qrow, key0, tg,
                                           len, scale_log2, slope_log2);
        }

        // O += P V: P straight from the score registers (C layout of two n-tiles == A layout);
        // each V fragment feeds MT products.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = pack2<T>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack2<T>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack2<T>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack2<T>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int nd = 0; nd < 4; ++nd) {
                uint32_t vf[4];
                const int r = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = nd * 16 + (lane >> 4) * 8;
                ldsm_x4_t(vf, smem_u32(Vs + r * SROW + c));
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    Mma<T>::run(acc[mt][2 * nd], pa[mt], vf[0], vf[1]);
                    Mma<T>::run(acc[mt][2 * nd + 1], pa[mt], vf[2], vf[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with `buf` before it is refilled
    }

    // Normalise and write; padded query rows get zeros.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
        store_rows<T>(acc[mt], l_run[mt], q0 + (warp * MT + mt) * 16 + g, len, rows, ob, o_st, tg);
}

}  // namespace

// Entry points: virnucpro_flash_attn_<dtype>_w<warps>m<m-tiles per warp>; all take the same
// arguments, and the block size is 32 * warps threads, the grid (ceil(rows / BM), heads, batch)
// with BM = 16 * warps * m-tiles.
#define FLASH_ATTN_ENTRY(NAME, T, WARPS, MT)                                                    \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                    \
        NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* key_lens,                \
             const uint32_t* cu_seqlens, const float* slopes, int t_rows, long long q_sb,       \
             long long q_st, long long q_sh, long long k_sb, long long k_st, long long k_sh,    \
             long long v_sb, long long v_st, long long v_sh, long long o_sb, long long o_st,    \
             long long o_sh, float scale_log2) {                                                \
        __shared__ __align__(128) T smem[4 * BN * SROW];                                        \
        if (slopes != nullptr)                                                                  \
            attn_fwd<T, WARPS, MT, true>(q, k, v, o, key_lens, cu_seqlens, slopes, t_rows, q_sb, \
                                         q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh, o_sb,   \
                                         o_st, o_sh, scale_log2, smem);                          \
        else                                                                                    \
            attn_fwd<T, WARPS, MT, false>(q, k, v, o, key_lens, cu_seqlens, slopes, t_rows,     \
                                          q_sb, q_st, q_sh, k_sb, k_st, k_sh, v_sb, v_st, v_sh,  \
                                          o_sb, o_st, o_sh, scale_log2, smem);                   \
    }

FLASH_ATTN_ENTRY(virnucpro_flash_attn_f16_w4m1, __half, 4, 1)
FLASH_ATTN_ENTRY(virnucpro_flash_attn_bf16_w4m1, __nv_bfloat16, 4, 1)
FLASH_ATTN_ENTRY(virnucpro_flash_attn_f16_w4m2, __half, 4, 2)
FLASH_ATTN_ENTRY(virnucpro_flash_attn_bf16_w4m2, __nv_bfloat16, 4, 2)
