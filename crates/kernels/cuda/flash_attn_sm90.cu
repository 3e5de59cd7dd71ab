// Fused multi-head attention forward for head size 64 on Hopper (sm_90a), f16 and bf16: the same
// contract, arguments and batch layouts (padded or packed) as flash_attn.cu, with the products on
// the warpgroup tensor-core instructions (wgmma) that Hopper needs for full speed; mma.sync, which
// flash_attn.cu uses, reaches about two thirds of it there.
//
// One persistent, warp-specialized kernel (described where it starts, below) in two tile shapes:
// p3n64 (three consumer warpgroups of 64 query rows, 64-key tiles, rows shorter than 768) and
// p3n128 (128-key tiles, longer rows). Key/value tiles of BN rows stream through a four-stage
// shared-memory ring. Per tile j and consumer warpgroup:
//   S(j) = Q K(j)^T        wgmma m64nBNk16 x 4, Q and K from shared memory
//   O += P(j-1) V(j-1)     wgmma m64n64k16 x BN/16, P from registers, V from shared memory
//                          (transposed read: V is stored [key][dim] as loaded)
//   online softmax of S(j) on its registers (running max and sum in f32, as in flash_attn.cu),
//   overlapping the P V product issued just before it; then O is rescaled and P(j) packed.
// Tiles live in shared memory in the canonical 128-byte-swizzled layout that the wgmma
// descriptors describe: a 64-element row is 128 bytes, and the 16-byte chunk c of row r is stored
// at chunk c ^ (r % 8), in 1024-byte atoms of 8 rows. That layout is also free of bank conflicts
// for the cp.async writes.
//
// This file is compiled for compute_90a only (arch-specific instructions): the launcher uses it on
// compute capability 9.0 devices and flash_attn.cu everywhere else.

#include "attn_common.cuh"

// A TMA tensor map (CUtensorMap: 128 opaque bytes, 64-byte aligned) as the persistent kernels
// take it by value; declared here so that the kernels need no driver header.
struct alignas(64) TmaMap {
    unsigned long long opaque[16];
};

// K/V ring depth (the launcher's FaVariant::dynamic_smem assumes 4).
#define STAGES 4

namespace {

using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::pack2;
using attn::seq_span;
using attn::store_rows;
using attn::zero_tile;
using attn::smem_u32;
using attn::rescale_acc;
using attn::softmax_scores;

// Shared-memory matrix descriptor of a 128-byte-swizzled tile starting at `addr` (1024-aligned,
// or offset within an atom along K by multiples of 32 bytes): start address and byte offsets in
// 16-byte units; leading offset unused with this swizzle (1 by convention); stride offset 1024
// bytes between 8-row atoms; swizzle mode 1 = 128 bytes.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Accumulators are written asynchronously by wgmma: this empty asm "redefines" them after the
// wait so the compiler cannot hoist their reads above it.
template <int R>
__device__ __forceinline__ void reg_fence(float (&d)[R][4]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
}
// Makes this thread's cp.async writes to shared memory visible to the wgmma (async) proxy.
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The producer warpgroup's copy of rows [row0, row0 + ROWS) x 64 into a swizzled tile (16-byte
// chunk c of row r at chunk c ^ (r % 8)), rows >= valid_rows zero-filled (never read from
// memory): thread t copies chunk t % 8 of rows t / 8 + 16 i, so its swizzle is fixed and its
// source and destination just advance by 16 rows. The producer runs on a few dozen registers
// after setmaxnreg; a generic tile copy spilled there.
template <int ROWS, typename T>
__device__ __forceinline__ void produce_tile(uint32_t dst, const T* base, long long row_stride,
                                             int row0, int valid_rows, int ptid) {
    static_assert(ROWS % 16 == 0, "16 rows per pass of 128 threads");
    const int c = ptid & 7;
    const int r = row0 + (ptid >> 3);
    uint32_t d = dst + (ptid >> 3) * 128 + ((c ^ ((ptid >> 3) & 7)) << 4);
    const T* src = base + (long long)r * row_stride + c * 8;
    const long long step = 16 * row_stride;
#pragma unroll
    for (int i = 0; i < ROWS / 16; ++i) {
        const bool valid = r + 16 * i < valid_rows;
        cp_async16(d + i * 16 * 128, valid ? src : base, valid);
        src += step;
    }
}

// Two f32 values from / to one register of two T.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t u);
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t u) {
    return __half22float2(*reinterpret_cast<const __half2*>(&u));
}
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t u) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u));
}

__device__ __forceinline__ void st_shared16(uint32_t addr, uint4 v) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y),
                 "r"(v.z), "r"(v.w)
                 : "memory");
}

__device__ __forceinline__ uint4 ld_shared16(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

// Rotary embedding (rotate-half, ESM) in the producer, in two steps so that a tile costs one
// memory round trip: copy_tile_pairs issues cp.async for the whole tile (thread t copies chunk
// t % 4, elements 8c..8c+7, and its partner chunk c + 4 of rows t / 4 + 32 i, into the swizzled
// tile; rows >= valid_rows zero-filled), and once they have landed rotate_tile_in_place turns
// each pair by the angle of (row position, i) from the f32 tables cos/sin [positions, 32] (read
// through L1: every head of a block reads the same rows) and writes it back. The arithmetic is
// that of the rotary q/k kernel of fused_ops.cu, so the rotated values are the same. (Loading
// through registers row group by row group, as first written, cost one round trip per 32 rows
// and made the producer the bottleneck: run 41.)
template <int ROWS, typename T>
__device__ __forceinline__ void copy_tile_pairs(uint32_t dst, const T* base, long long row_stride,
                                                int row0, int valid_rows, int ptid) {
    static_assert(ROWS % 32 == 0, "32 rows per pass of 128 threads");
    const int c = ptid & 3;
    const int rr = ptid >> 2;
    const uint32_t d = dst + rr * 128;
    const uint32_t o1 = (uint32_t)((c ^ (rr & 7)) << 4);
    const uint32_t o2 = (uint32_t)(((c + 4) ^ (rr & 7)) << 4);
    const T* src = base + (long long)(row0 + rr) * row_stride + c * 8;
    const long long step = 32 * row_stride;
#pragma unroll
    for (int i = 0; i < ROWS / 32; ++i) {
        const bool valid = row0 + rr + 32 * i < valid_rows;
        cp_async16(d + i * 32 * 128 + o1, valid ? src : base, valid);
        cp_async16(d + i * 32 * 128 + o2, valid ? src + 32 : base, valid);
        src += step;
    }
}

template <int ROWS, typename T>
__device__ __forceinline__ void rotate_tile_in_place(uint32_t dst, int row0, int valid_rows,
                                                     int ptid, const float* __restrict__ cosv,
                                                     const float* __restrict__ sinv) {
    const int c = ptid & 3;
    const int rr = ptid >> 2;
    const uint32_t d = dst + rr * 128;
    const uint32_t o1 = (uint32_t)((c ^ (rr & 7)) << 4);
    const uint32_t o2 = (uint32_t)(((c + 4) ^ (rr & 7)) << 4);
#pragma unroll
    for (int i = 0; i < ROWS / 32; ++i) {
        const int r = row0 + rr + 32 * i;  // also the token's position
        if (r < valid_rows) {               // padding rows are zeros already
            const uint4 x1 = ld_shared16(d + i * 32 * 128 + o1);
            const uint4 x2 = ld_shared16(d + i * 32 * 128 + o2);
            const float4* cp = reinterpret_cast<const float4*>(cosv + r * 32 + c * 8);
            const float4* sp = reinterpret_cast<const float4*>(sinv + r * 32 + c * 8);
            const float4 c0 = __ldg(cp), c1 = __ldg(cp + 1), s0 = __ldg(sp), s1 = __ldg(sp + 1);
            const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            const float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
            const uint32_t a[4] = {x1.x, x1.y, x1.z, x1.w};
            const uint32_t bq[4] = {x2.x, x2.y, x2.z, x2.w};
            uint32_t y1[4], y2[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float2 fa = unpack2<T>(a[j]);
                const float2 fb = unpack2<T>(bq[j]);
                const float c_0 = cs[2 * j], c_1 = cs[2 * j + 1];
                const float s_0 = sn[2 * j], s_1 = sn[2 * j + 1];
                y1[j] = pack2<T>(fa.x * c_0 - fb.x * s_0, fa.y * c_1 - fb.y * s_1);
                y2[j] = pack2<T>(fb.x * c_0 + fa.x * s_0, fb.y * c_1 + fa.y * s_1);
            }
            st_shared16(d + i * 32 * 128 + o1, make_uint4(y1[0], y1[1], y1[2], y1[3]));
            st_shared16(d + i * 32 * 128 + o2, make_uint4(y2[0], y2[1], y2[2], y2[3]));
        }
    }
}

// wgmma wrappers, one struct per element type (the type is part of the instruction).
// ss: D (+)= A B, A [64 x 16] and B [16 x N] from shared memory (both K-major; scale_d = 0 starts
// from zero). rs: D += A B, A from registers (the mma.sync m16n8k16 A-fragment layout, one 16-row
// slice per warp), B read N-major (transposed) from shared memory.
#define WG_ACC4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define WG_ACC_N64(d) \
    WG_ACC4(d, 0), WG_ACC4(d, 1), WG_ACC4(d, 2), WG_ACC4(d, 3), WG_ACC4(d, 4), WG_ACC4(d, 5), \
        WG_ACC4(d, 6), WG_ACC4(d, 7)
#define WG_ACC_N128(d)                                                                          \
    WG_ACC_N64(d), WG_ACC4(d, 8), WG_ACC4(d, 9), WG_ACC4(d, 10), WG_ACC4(d, 11), WG_ACC4(d, 12), \
        WG_ACC4(d, 13), WG_ACC4(d, 14), WG_ACC4(d, 15)
#define WG_REGS_N64 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_REGS_N128 WG_REGS_N64 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_STRUCT(T, TN)                                                                         \
    template <>                                                                                  \
    struct Wg<T> {                                                                               \
        static __device__ __forceinline__ void ss_n64(float (&d)[8][4], uint64_t da, uint64_t db, \
                                                      int scale_d) {                             \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                            \
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32." TN "." TN                 \
                         " {" WG_REGS_N64 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"                     \
                         : WG_ACC_N64(d)                                                         \
                         : "l"(da), "l"(db), "r"(scale_d));                                      \
        }                                                                                        \
        static __device__ __forceinline__ void ss_n128(float (&d)[16][4], uint64_t da,           \
                                                       uint64_t db, int scale_d) {               \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                            \
                         "wgmma.mma_async.sync.aligned.m64n128k16.f32." TN "." TN                \
                         " {" WG_REGS_N128 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                    \
                         : WG_ACC_N128(d)                                                        \
                         : "l"(da), "l"(db), "r"(scale_d));                                      \
        }                                                                                        \
        static __device__ __forceinline__ void rs_n64_bt(float (&d)[8][4], const uint32_t (&a)[4], \
                                                         uint64_t db) {                          \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                            \
                         "wgmma.mma_async.sync.aligned.m64n64k16.f32." TN "." TN                 \
                         " {" WG_REGS_N64 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"       \
                         : WG_ACC_N64(d)                                                         \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));         \
        }                                                                                        \
    };

template <typename T> struct Wg;
WG_STRUCT(__half, "f16")
WG_STRUCT(__nv_bfloat16, "bf16")

// One consumer warpgroup's part of the products and the online softmax: the output
// accumulators, running max and sum, scores S and packed probabilities P of 64 query rows.
template <typename T, int BN, bool ALIBI>
struct WgRows {
    static constexpr int NN = BN / 8;  // n8 column groups of the score accumulator
    static constexpr bool kAlibi = ALIBI;
    float acc[8][4];
    float m_run[2];
    float l_run[2];
    float s[NN][4];
    uint32_t pa[BN / 16][4];  // P of the previous tile, the A operand of O += P V
    uint32_t q_tile;          // shared address of this warpgroup's 64 Q rows
    int qrow;                 // query position of this thread's fragment row g
    int tg;
    int len;
    float scale_log2;
    float slope_log2;

    __device__ __forceinline__ WgRows(uint32_t q_rows, int qrow_, int tg_, int len_, float scale,
                                      float slope)
        : q_tile(q_rows), qrow(qrow_), tg(tg_), len(len_), scale_log2(scale),
          slope_log2(slope) {
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
        m_run[0] = m_run[1] = -INFINITY;
        l_run[0] = l_run[1] = 0.f;
    }

    // S = Q K^T with the K tile at shared address `k_tile` (issued, not waited for).
    __device__ __forceinline__ void issue_qk(uint32_t k_tile) {
        const uint64_t dk = sw128_desc(k_tile);
        // The Q descriptors are rebuilt per tile from the address (a few integer operations):
        // held across the loop, p3n128's consumers spilled them and reloaded them from local
        // memory before every S product. The empty asm keeps ptxas from hoisting them again.
        // The steps along the row add to the 14-bit start-address field only (shared addresses
        // stay below 2^18 bytes), so the adds are 32-bit on the low word.
        uint32_t qa = q_tile;
        asm volatile("" : "+r"(qa));
        const uint64_t dq = sw128_desc(qa);
        const uint32_t dq_lo = (uint32_t)dq;
        const uint64_t dq_hi = dq & 0xFFFFFFFF00000000ull;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {  // 16 head dims = 32 bytes per step along the row
            const uint64_t dqk = dq_hi | (uint32_t)(dq_lo + 2 * kk);
            if constexpr (BN == 128)
                Wg<T>::ss_n128(s, dqk, dk + 2 * kk, kk);
            else
                Wg<T>::ss_n64(s, dqk, dk + 2 * kk, kk);
        }
        wg_commit();
    }
    // O += P V with the V tile at `v_tile` (issued, not waited for).
    __device__ __forceinline__ void issue_pv(uint32_t v_tile) {
        const uint64_t dv = sw128_desc(v_tile);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk)  // 16 keys = two 8-row atoms = 2048 bytes
            Wg<T>::rs_n64_bt(acc, pa[kk], dv + kk * (2048 >> 4));
        wg_commit();
    }
    // Online softmax of S(j) once it has landed; `alpha` rescales O after P(j-1) V has landed.
    __device__ __forceinline__ void softmax(int j, float (&alpha)[2]) {
        reg_fence(s);
        const int key0 = j * BN;
        if (key0 + BN > len)
            softmax_scores<NN, ALIBI, true>(s, m_run, l_run, alpha, qrow, key0, tg, len,
                                            scale_log2, slope_log2);
        else
            softmax_scores<NN, ALIBI, false>(s, m_run, l_run, alpha, qrow, key0, tg, len,
                                             scale_log2, slope_log2);
    }
    // Once the P V product has landed: rescale O, and P(j) to half precision (two n8 groups of
    // the score accumulator are one k16 A fragment).
    __device__ __forceinline__ void rescale_and_pack(const float (&alpha)[2]) {
        reg_fence(acc);
        rescale_acc(acc, alpha);
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            pa[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
            pa[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
            pa[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Warp-specialized, persistent form (the FlashAttention-3 structure). One block per
// multiprocessor walks the work items (query block, head, sequence) blockIdx.x, blockIdx.x +
// gridDim.x, ... (see Sched for the split of the last rounds).
// - A producer warpgroup fills a four-stage K/V ring and signals each stage on an mbarrier
//   ("full"): by TMA bulk copies from one thread where the launcher passed tensor maps, else by
//   cp.async from all 128 (see the entry points); NWG consumer warpgroups wait on it, compute,
//   and hand the stage back on a second mbarrier ("empty"). No block-wide barrier in the loop,
//   so consumers drift apart instead of running in lockstep.
// - A token passed round the consumers on named barriers orders their tensor-core work: while
//   one runs its two products, the others compute their softmax.
// - The producer fetches the next item's Q (two Q buffers, with their own full/empty barriers)
//   and K/V tiles (the ring carries on from item to item) while the consumers finish the current
//   one and write it out, so a block's start-up and final store do not leave the multiprocessor
//   idle (one block of 384-512 threads per multiprocessor; that was a tenth of the time at
//   1-2k tokens, and more for short rows).
// - setmaxnreg moves registers from the producer to the consumers; that warpgroup-wide
//   instruction after the role split is also what lets ptxas see the consumers' code as
//   warpgroup-uniform (without it, or with a single producer warp, it serializes their wgmma:
//   C7520). The producer's copies are written to need few registers (produce_tile): the
//   generic tile copy spilled there.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n.reg .pred p;\nWAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
        "@!p bra WAIT_%=;\n}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once all of this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}
// Tile [c1, c1 + box) x 64 of (c2, c3) from a 4-D tensor map {64, rows, heads, batch} into a
// 128-byte-swizzled tile at `dst`, completing `bytes` on `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const void* tmap, int c1, int c2, int c3,
                                            uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
        "{%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(tmap)), "r"(0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
        : "memory");
}

__device__ __forceinline__ void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
template <int N>
__device__ __forceinline__ void reg_alloc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void reg_dealloc() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// The work of one persistent block, as pieces (item, key tiles [t0, t1)): whole items
// blockIdx.x, + gridDim.x, ... below n_dp, then an equal share of the remaining items' key tiles
// ("stream-K"): those items' tiles, (n_items - n_dp) * tiles_nom units, are cut into gridDim.x
// contiguous ranges, so every block ends within a tile of the others instead of a whole item
// (4x2048 on 132 SMs: 880 items of 16 tiles = 6.67 rounds, 7 without the split). An item cut
// between blocks is combined by the block that finishes last (partial_or_finish).
// tiles_nom: key tiles of the longest row; shorter rows' items have fewer real tiles, so their
// pieces may be short or empty (balanced for uniform batches, correct for all).
struct Sched {
    int n_dp, tiles_nom;
    uint32_t units;  // the launcher keeps units * gridDim.x below 2^31
    __device__ __forceinline__ Sched(int n_items, int n_dp_, int tiles_nom_)
        : n_dp(n_dp_), tiles_nom(tiles_nom_),
          units((uint32_t)(n_items - n_dp_) * (uint32_t)tiles_nom_) {}
    // The block whose range holds tail unit x (ranges are never empty: units >= gridDim.x).
    __device__ __forceinline__ int block_of(uint32_t x) const {
        return (int)(((x + 1) * gridDim.x + units - 1) / units) - 1;
    }
    // Calls piece(item, first key tile, end key tile, split between blocks) for this block's
    // work in order. Two plain loops: one loop around a "next piece" function made ptxas
    // serialize the consumers' wgmma (C7520).
    template <typename F>
    __device__ __forceinline__ void walk(F&& piece) const {
        for (int it = blockIdx.x; it < n_dp; it += gridDim.x) piece(it, 0, 0x7fffffff, false);
        const uint32_t u_end = units * (blockIdx.x + 1) / gridDim.x;
        for (uint32_t u = units * blockIdx.x / gridDim.x; u < u_end;) {
            const uint32_t i = u / (uint32_t)tiles_nom;
            const int t0 = (int)(u - i * (uint32_t)tiles_nom);
            const int t1 = (int)min((uint32_t)tiles_nom, (uint32_t)t0 + (u_end - u));
            // An item's last piece runs to its last real tile (rows longer than tiles_nom
            // tiles, packed batches with a short max_len, keep all their keys).
            piece(n_dp + (int)i, t0, t1 == tiles_nom ? 0x7fffffff : t1,
                  t0 != 0 || t1 != tiles_nom);
            u += (uint32_t)(t1 - t0);
        }
    }
};

// Values per consumer thread in a partial result: its 32 output accumulators, then the running
// max and sum of its two rows.
#define PART_VALUES 36

// End of a piece of a split item (Sched): writes this block's partial result (unnormalised
// output, running max and sum, per consumer thread) to its slot of `part`, and counts the piece
// in part_count[item - n_dp]. The block that counts last has every other piece's result
// visible (each writer fences before counting): it merges them into `w` (the softmax merge:
// rescale each side to the larger max) and returns true to store the rows. Slots: block b
// writes at most two split pieces, the one it starts with (slot 0: the item began in an
// earlier block) and the one it ends with (slot 1: the item begins in b), so `part` holds
// gridDim.x * 2 slots of PART_VALUES * consumer-threads floats, laid out value-major so
// consecutive threads write consecutive words.
template <int NWG, typename W>
__device__ __forceinline__ bool partial_or_finish(W& w, const Sched& sched, int item,
                                                  float* __restrict__ part,
                                                  uint32_t* __restrict__ part_count, int ctid) {
    constexpr int NTC = NWG * 128;
    __shared__ int last;
    const uint32_t iu0 = (uint32_t)(item - sched.n_dp) * (uint32_t)sched.tiles_nom;
    const int bf = sched.block_of(iu0);
    const int bl = sched.block_of(iu0 + sched.tiles_nom - 1);
    auto slot = [&](int b) {
        return part + (size_t)(2 * b + (b == bf ? 1 : 0)) * PART_VALUES * NTC + ctid;
    };
    float* mine = slot(blockIdx.x);
#pragma unroll
    for (int i = 0; i < 32; ++i) __stcg(mine + i * NTC, w.acc[i >> 2][i & 3]);
    __stcg(mine + 32 * NTC, w.m_run[0]);
    __stcg(mine + 33 * NTC, w.m_run[1]);
    __stcg(mine + 34 * NTC, w.l_run[0]);
    __stcg(mine + 35 * NTC, w.l_run[1]);
    __threadfence();
    named_sync(NWG + 1, NTC);  // every consumer thread's part is written and fenced
    if (ctid == 0) last = atomicAdd(part_count + (item - sched.n_dp), 1u) == (uint32_t)(bl - bf);
    named_sync(NWG + 1, NTC);
    if (!last) return false;
    __threadfence();
    const float c = W::kAlibi ? 1.f : w.scale_log2;  // units of the running max -> log2
    for (int b = bf; b <= bl; ++b) {
        if (b == (int)blockIdx.x) continue;
        const float* p = slot(b);
        float a_me[2], a_p[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float m_p = __ldcg(p + (32 + r) * NTC);
            const float l_p = __ldcg(p + (34 + r) * NTC);
            const float m_new = fmaxf(w.m_run[r], m_p);
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            a_me[r] = attn::fast_exp2((w.m_run[r] - m_use) * c);
            a_p[r] = attn::fast_exp2((m_p - m_use) * c);
            w.m_run[r] = m_new;
            w.l_run[r] = w.l_run[r] * a_me[r] + l_p * a_p[r];
        }
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            const int r = (i & 3) >> 1;  // accumulator element e: row e >> 1
            w.acc[i >> 2][i & 3] = w.acc[i >> 2][i & 3] * a_me[r] + __ldcg(p + i * NTC) * a_p[r];
        }
    }
    // Every piece has counted: zero the counter for the next launch (the launcher keeps the
    // workspace between launches on a stream).
    if (ctid == 0) part_count[item - sched.n_dp] = 0;
    return true;
}

template <typename T, int NWG, int BN, bool ALIBI, bool ROT>
__device__ __forceinline__ void attn_fwd_sm90_ps(const T* __restrict__ q, const T* __restrict__ k,
                                                 const T* __restrict__ v, T* __restrict__ o,
                                                 const uint32_t* __restrict__ key_lens,
                                                 const uint32_t* __restrict__ cu_seqlens,
                                                 const float* __restrict__ slopes, int t_rows,
                                                 long long q_sb, long long q_st, long long q_sh,
                                                 long long k_sb, long long k_st, long long k_sh,
                                                 long long v_sb, long long v_st, long long v_sh,
                                                 long long o_sb, long long o_st, long long o_sh,
                                                 float scale_log2,
                                                 const float* __restrict__ rot_cos,
                                                 const float* __restrict__ rot_sin, int n_qblocks,
                                                 int n_heads, int n_items, int n_dp, int tiles_nom,
                                                 float* __restrict__ part,
                                                 uint32_t* __restrict__ part_count,
                                                 uint8_t* smem_raw, bool tma, const void* tm_q,
                                                 const void* tm_k, const void* tm_v) {
    constexpr int BM = NWG * 64;
    // The rotating producer holds a row's values and angles in registers.
    constexpr int REG_PRODUCER = NWG == 2 ? (ROT ? 64 : 40) : (ROT ? 56 : 32);
    constexpr int REG_CONSUMER = NWG == 2 ? (ROT ? 216 : 232) : (ROT ? 152 : 160);
    static_assert(!(ALIBI && ROT), "ALiBi or rotary, not both");
    static_assert((REG_PRODUCER + NWG * REG_CONSUMER) * 128 <= 65536, "register budget");
    static_assert(BN == 64 || BN == 128, "key tile of 64 or 128 rows");
    __shared__ __align__(8) uint64_t bars[2 * STAGES + 4];  // full[], empty[], Q full[2], Q empty[2]
    const uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    auto sQ = [&](int i) { return base + i * BM * 128; };
    auto sK = [&](int st) { return base + 2 * BM * 128 + st * 2 * BN * 128; };
    auto sV = [&](int st) { return base + 2 * BM * 128 + st * 2 * BN * 128 + BN * 128; };
    const uint32_t bar0 = smem_u32(bars);
    auto full = [&](int st) { return bar0 + 8 * st; };
    auto empty = [&](int st) { return bar0 + 8 * (STAGES + st); };
    auto q_full = [&](int i) { return bar0 + 8 * (2 * STAGES + i); };
    auto q_empty = [&](int i) { return bar0 + 8 * (2 * STAGES + 2 + i); };

    const int tid = threadIdx.x;
    const int wg = tid >> 7;
    if (tid == 0) {
        for (int st = 0; st < STAGES; ++st) {
            // Every producer thread: via cp.async, or (rotary) once its tile has landed and
            // been rotated.
            mbar_init(full(st), 128);
            mbar_init(empty(st), NWG * 4);  // one lane per consumer warp
        }
        for (int i = 0; i < 2; ++i) {
            mbar_init(q_full(i), 128);
            mbar_init(q_empty(i), NWG * 4);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    // Work item -> (query block, head, sequence); consecutive items share K/V (L2 reuse).
    struct Item {
        int q0, h, b;
    };
    auto item = [&](int it) {
        const int qb = it % n_qblocks;
        const int hb = it / n_qblocks;
        return Item{qb * BM, hb % n_heads, hb / n_heads};
    };

    if (wg == NWG) {
        reg_dealloc<REG_PRODUCER>();
        const int ptid = tid - NWG * 128;
        int c = 0;  // K/V tiles issued so far (ring position and phase)
        int n = 0;  // items loaded so far (Q buffer and phase)
        // Rotary: a tile can be rotated only once it has landed, so the producer runs one tile
        // behind its loads: it issues the copies of tile e, then waits for tile e - 1 (in flight
        // since the previous step), rotates it and releases it to the consumers. One memory
        // round trip then covers two tiles instead of one (run 46: waiting for each tile before
        // issuing the next made this producer the bottleneck on short rows). No deadlock with
        // four stages: issuing K/V tile c waits for the stage of tile c - 4, which the consumers
        // free once tile c - 3 is full, and tile c - 3 was released before c - 1 was issued; a
        // Q buffer waits for the item two back, whose tiles are all released by then.
        uint32_t pend_dst = 0, pend_bar = 0;
        int pend_row0 = 0, pend_len = 0;
        bool pending = false, pend_q = false;  // a Q tile (BM rows) or a K tile (BN rows)
        auto release_pending = [&]() {
            if (!pending) return;
            if (pend_q)
                rotate_tile_in_place<BM, T>(pend_dst, pend_row0, pend_len, ptid, rot_cos, rot_sin);
            else
                rotate_tile_in_place<BN, T>(pend_dst, pend_row0, pend_len, ptid, rot_cos, rot_sin);
            fence_async_smem();  // the rotated stores and the landed copies, for wgmma
            mbar_arrive(pend_bar);
            pending = false;
        };
        const Sched sched(n_items, n_dp, tiles_nom);
        sched.walk([&](int it, int t0, int t1, bool) {
            const Item w = item(it);
            const attn::SeqSpan sp = seq_span(w.b, key_lens, cu_seqlens, t_rows);
            if (w.q0 >= sp.len) return;  // padding only: the consumers write zeros
            t1 = min(t1, (sp.len + BN - 1) / BN);
            if (t0 >= t1) return;  // no real keys in this piece: nothing to load
            const T* qb = q + w.b * q_sb + sp.start * q_st + w.h * q_sh;
            const T* kb = k + w.b * k_sb + sp.start * k_st + w.h * k_sh;
            const T* vb = v + w.b * v_sb + sp.start * v_st + w.h * v_sh;
            const int tma_b = cu_seqlens != nullptr ? 0 : w.b;  // packed: one "sequence" of rows
            const int qs = n & 1;
            if (n >= 2) mbar_wait(q_empty(qs), ((n >> 1) - 1) & 1);
            if constexpr (ROT) {
                copy_tile_pairs<BM>(sQ(qs), qb, q_st, w.q0, sp.len, ptid);
                cp_async_commit();
                cp_async_wait<1>();  // everything but this Q has landed
                release_pending();
                pend_dst = sQ(qs);
                pend_row0 = w.q0;
                pend_len = sp.len;
                pend_q = true;
                pend_bar = q_full(qs);
                pending = true;
            } else if (tma) {
                // Whole block by TMA even past the sequence's end: query rows are independent,
                // rows past the tensor arrive as zeros, and rows >= len are never stored.
                if (ptid == 0) {
                    mbar_arrive_expect_tx(q_full(qs), BM * 128);
                    tma_load_4d(sQ(qs), tm_q, (int)sp.start + w.q0, w.h, tma_b, q_full(qs));
                } else {
                    mbar_arrive(q_full(qs));
                }
            } else {
                produce_tile<BM>(sQ(qs), qb, q_st, w.q0, sp.len, ptid);
                cp_async_arrive(q_full(qs));
            }
            for (int t = t0; t < t1; ++t, ++c) {
                const int st = c % STAGES;
                if (c >= STAGES) mbar_wait(empty(st), ((c / STAGES) - 1) & 1);
                if constexpr (ROT) {
                    copy_tile_pairs<BN>(sK(st), kb, k_st, t * BN, sp.len, ptid);
                    produce_tile<BN>(sV(st), vb, v_st, t * BN, sp.len, ptid);
                    cp_async_commit();
                    cp_async_wait<1>();
                    release_pending();
                    pend_dst = sK(st);
                    pend_row0 = t * BN;
                    pend_len = sp.len;
                    pend_q = false;
                    pend_bar = full(st);
                    pending = true;
                } else if (tma && ((t + 1) * BN <= sp.len ||
                                   (cu_seqlens == nullptr && sp.len == t_rows))) {
                    // A tile of real keys only, or one that ends past the tensor's rows (TMA
                    // fills those with zeros, as cp.async's zero fill does). Every producer
                    // thread arrives (the barrier counts 128); thread 0 also expects the two
                    // tiles' bytes and issues the copies.
                    if (ptid == 0) {
                        const uint32_t bar = full(st);
                        mbar_arrive_expect_tx(bar, 2 * BN * 128);
                        const int row = (int)sp.start + t * BN;
                        tma_load_4d(sV(st), tm_v, row, w.h, tma_b, bar);
                        tma_load_4d(sK(st), tm_k, row, w.h, tma_b, bar);
                    } else {
                        mbar_arrive(full(st));
                    }
                } else {
                    produce_tile<BN>(sV(st), vb, v_st, t * BN, sp.len, ptid);
                    produce_tile<BN>(sK(st), kb, k_st, t * BN, sp.len, ptid);
                    if (tma) {
                        // A sequence's last, partial tile (keys past its end zero-filled): with
                        // TMA on, the consumers do not fence the tiles they read, so the
                        // producer waits for its copies and fences them itself (once per item).
                        cp_async_commit();
                        cp_async_wait<0>();
                        fence_async_smem();
                        mbar_arrive(full(st));
                    } else {
                        cp_async_arrive(full(st));
                    }
                }
            }
            ++n;
        });
        cp_async_wait<0>();
        if constexpr (ROT) release_pending();
        return;
    }
    reg_alloc<REG_CONSUMER>();

    const int warp = (tid >> 5) & 3;
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int tg = lane & 3;
    // The issue token: consumer w may issue its products once w - 1 has (ids 1..NWG; barrier 0
    // is __syncthreads'). Consumer 0 starts; the last one's first hand-over primes it. It goes
    // round across items.
    auto token_wait = [&]() { named_sync(1 + wg, 256); };
    auto token_pass = [&]() { named_arrive(1 + (wg + 1) % NWG, 256); };
    if (wg == NWG - 1) token_pass();
    auto arrive_one_lane = [&](uint32_t bar) {
        if (lane == 0) mbar_arrive(bar);
    };

    int c = 0;
    int n = 0;
    const Sched sched(n_items, n_dp, tiles_nom);
    sched.walk([&](int it, int t0, int t1, bool split) {
        const Item wi = item(it);
        const attn::SeqSpan sp = seq_span(wi.b, key_lens, cu_seqlens, t_rows);
        if (wi.q0 >= sp.rows) return;
        T* ob = o + wi.b * o_sb + sp.start * o_st + wi.h * o_sh;
        if (wi.q0 >= sp.len) {  // every piece of it writes the same zeros
            zero_tile<BM, NWG * 128>(ob, o_st, wi.q0, sp.rows, tid);
            return;
        }
        const int qs = n & 1;
        const float slope_log2 = ALIBI ? slopes[wi.h] * 1.4426950408889634f : 0.f;
        WgRows<T, BN, ALIBI> w(sQ(qs) + wg * 64 * 128, wi.q0 + wg * 64 + warp * 16 + g, tg,
                               sp.len, scale_log2, slope_log2);
        t1 = min(t1, (sp.len + BN - 1) / BN);
        // A warpgroup whose 64 rows are all padding (the last query block of a sequence: 4x2048
        // at 192 rows leaves one of three idle, 8x1026 two) skips the products and the softmax
        // but keeps its part in the barriers and the token ring; it stores zeros (or an empty
        // partial); -0.6% at 8x1026 (run 59), and less power under the cap. The condition
        // is made warp-uniform with a shuffle, and each branch holds its whole loop: otherwise
        // ptxas serializes every wgmma (C7520, C7514).
        const bool idle = __shfl_sync(0xffffffff, wi.q0 + wg * 64 >= sp.len, 0);
        if (t0 < t1 && idle) {
            mbar_wait(q_full(qs), (n >> 1) & 1);
            int prev = 0;
            for (int j = t0; j < t1; ++j, ++c) {
                const int st = c % STAGES;
                mbar_wait(full(st), (c / STAGES) & 1);  // arrivals stay in the ring's phases
                token_wait();
                token_pass();
                if (j == t1 - 1) arrive_one_lane(q_empty(qs));
                if (j > t0) arrive_one_lane(empty(prev));
                prev = st;
            }
            arrive_one_lane(empty(prev));
            ++n;
        } else if (t0 < t1) {  // else no real keys here: the piece's partial result is empty
            mbar_wait(q_full(qs), (n >> 1) & 1);
            int prev = 0;
            for (int j = t0; j < t1; ++j, ++c) {
                const int st = c % STAGES;
                mbar_wait(full(st), (c / STAGES) & 1);
                // Tiles by cp.async are generic-proxy writes that wgmma (the async proxy) must
                // be fenced against. Tiles by TMA need no fence, and where cp.async remains with
                // TMA on, or under rotary, the producer has fenced its landed copies before it
                // arrived; the fence costs a memory barrier per tile and warp (MEMBAR.ALL.CTA).
                if (!ROT && !tma) fence_async_smem();
                token_wait();
                wg_fence();
                w.issue_qk(sK(st));
                if (j > t0) w.issue_pv(sV(prev));
                // The softmax of S(j) runs while this warpgroup's P(j-1) V(j-1) is still on the
                // tensor cores. The token moves on once S(j) has landed: a named barrier
                // between issuing and this partial wait makes ptxas serialize every wgmma
                // (C7514).
                if (j > t0)
                    wg_wait<1>();
                else
                    wg_wait<0>();
                token_pass();
                if (j == t1 - 1) arrive_one_lane(q_empty(qs));  // the last S has read Q
                float alpha[2];
                w.softmax(j, alpha);
                wg_wait<0>();
                if (j > t0) arrive_one_lane(empty(prev));  // K and V of the previous tile are read
                w.rescale_and_pack(alpha);
                prev = st;
            }
            wg_fence();
            w.issue_pv(sV(prev));
            wg_wait<0>();
            arrive_one_lane(empty(prev));
            reg_fence(w.acc);
            ++n;
        }
        if (!split)
            store_rows<T>(w.acc, w.l_run, w.qrow, sp.len, sp.rows, ob, o_st, tg);
        else if (partial_or_finish<NWG>(w, sched, it, part, part_count, tid))
            store_rows<T>(w.acc, w.l_run, w.qrow, sp.len, sp.rows, ob, o_st, tg);
    });
    // Consumer 0 takes the token the last consumer passed after its final tile, so every named
    // barrier ends balanced.
    if (wg == 0) token_wait();
}
}  // namespace

// Entry points: virnucpro_flash_attn_sm90_<dtype>_p<consumers>n<key tile>; the arguments of
// flash_attn.cu's kernels, then the rotary tables (f32 cos, sin [positions, 32], positions >=
// the rows of any sequence; null: q and k are used as they are), the item count (n_qblocks x
// heads x batch, in that order of nesting), and the split of the work (Sched): n_dp items
// walked whole, the others' key tiles (tiles_nom per item) shared out, with `part` (gridDim.x
// * 2 * 36 * 128 * consumers floats) and `part_count` (n_items - n_dp counters, zero before the
// launch and left zero after it) for the items cut between blocks; n_dp = n_items: no split
// (part and part_count unused, may be null); else (n_items - n_dp) * tiles_nom >= gridDim.x.
// Last, `tma` and three tensor maps (q, k, v; read only when tma != 0): 4-D {64, rows, heads,
// batch} (packed: batch 1, rows all rows) over the same elements and strides as the pointers,
// f16/bf16, boxes {64, 64 * consumers, 1, 1} for q and {64, key tile, 1, 1} for k and v, 128-byte
// swizzle. With them the producer loads full tiles by TMA bulk copies (one thread) instead of
// cp.async (all 128), which costs fewer instructions and less power (runs 57-58); partial
// tiles, and q and k under the in-kernel rotary, stay on cp.async (zero fill past the end).
// Grid: one block per multiprocessor (without a split at most n_items); block (consumers + 1)
// * 128 threads; dynamic shared memory (2 * 64 * consumers + 4 * 2 * key tile) * 128 + 1024
// bytes.
#define TMA_PARAMS                                                                               \
    , int tma, const __grid_constant__ TmaMap tm_q, const __grid_constant__ TmaMap tm_k,         \
        const __grid_constant__ TmaMap tm_v
#define TMA_ARGS , tma != 0, &tm_q, &tm_k, &tm_v
#define FLASH_ATTN_SM90_PS_ENTRY(NAME, T, NWG, BN, ROT_OK)                                     \
    extern "C" __global__ void __launch_bounds__((NWG + 1) * 128, 1)                             \
        NAME(const T* q, const T* k, const T* v, T* o, const uint32_t* key_lens,                 \
             const uint32_t* cu_seqlens, const float* slopes, int t_rows, long long q_sb,        \
             long long q_st, long long q_sh, long long k_sb, long long k_st, long long k_sh,     \
             long long v_sb, long long v_st, long long v_sh, long long o_sb, long long o_st,     \
             long long o_sh, float scale_log2, const float* rot_cos, const float* rot_sin,       \
             int n_qblocks, int n_heads, int n_items, int n_dp, int tiles_nom, float* part,      \
             uint32_t* part_count TMA_PARAMS) {                                                  \
        extern __shared__ uint8_t smem_raw[];                                                    \
        const int mode = slopes != nullptr ? 1 : (ROT_OK && rot_cos != nullptr ? 2 : 0);         \
        if (mode == 1)                                                                           \
            attn_fwd_sm90_ps<T, NWG, BN, true, false>(                                           \
                q, k, v, o, key_lens, cu_seqlens, slopes, t_rows, q_sb, q_st, q_sh, k_sb, k_st,  \
                k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh, scale_log2, rot_cos, rot_sin,          \
                n_qblocks, n_heads, n_items, n_dp, tiles_nom, part, part_count,                  \
                smem_raw TMA_ARGS);                                                              \
        else if (mode == 2)                                                                      \
            attn_fwd_sm90_ps<T, NWG, BN, false, ROT_OK>(                                         \
                q, k, v, o, key_lens, cu_seqlens, slopes, t_rows, q_sb, q_st, q_sh, k_sb, k_st,  \
                k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh, scale_log2, rot_cos, rot_sin,          \
                n_qblocks, n_heads, n_items, n_dp, tiles_nom, part, part_count,                  \
                smem_raw TMA_ARGS);                                                              \
        else                                                                                     \
            attn_fwd_sm90_ps<T, NWG, BN, false, false>(                                          \
                q, k, v, o, key_lens, cu_seqlens, slopes, t_rows, q_sb, q_st, q_sh, k_sb, k_st,  \
                k_sh, v_sb, v_st, v_sh, o_sb, o_st, o_sh, scale_log2, rot_cos, rot_sin,          \
                n_qblocks, n_heads, n_items, n_dp, tiles_nom, part, part_count,                  \
                smem_raw TMA_ARGS);                                                              \
    }

// Rotary in the producer: not for p3n128, whose consumers cannot give up the registers (ptxas
// serializes their wgmma: C7512); the launcher rotates q and k beforehand for that one.
FLASH_ATTN_SM90_PS_ENTRY(virnucpro_flash_attn_sm90_f16_p3n128, __half, 3, 128, false)
FLASH_ATTN_SM90_PS_ENTRY(virnucpro_flash_attn_sm90_bf16_p3n128, __nv_bfloat16, 3, 128, false)
FLASH_ATTN_SM90_PS_ENTRY(virnucpro_flash_attn_sm90_f16_p3n64, __half, 3, 64, true)
FLASH_ATTN_SM90_PS_ENTRY(virnucpro_flash_attn_sm90_bf16_p3n64, __nv_bfloat16, 3, 64, true)

