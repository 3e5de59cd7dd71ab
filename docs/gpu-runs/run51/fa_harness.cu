// Kernel-level harness for the Hopper attention kernels (flash_attn_sm90.cu): times the
// persistent variants on doctor's shapes with CUDA events and checks sampled rows against a
// double-precision reference, so variants of the kernel (compile-time knobs, edits) can be
// compared on the device without rebuilding virnucpro. Links the driver for the TMA maps:
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -std=c++17 --expt-relaxed-constexpr \
//        -o fa fa_harness.cu -lcuda
//   [FA_TMA=0] [FA_SPLIT=0] [FA_ONEBUF=1] [FA_HEADS=n] ./fa [repeats [shape index (-1: all) [n: normal data]]]
#include "../../../src/kernels/flash_attn_sm90.cu"

#include <cuda.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e = (x);                                                           \
        if (e != cudaSuccess) {                                                        \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

typedef void (*Kern)(const __half*, const __half*, const __half*, __half*, const uint32_t*,
                     const uint32_t*, const float*, int, long long, long long, long long,
                     long long, long long, long long, long long, long long, long long, long long,
                     long long, long long, float, const float*, const float*, int, int, int, int,
                     int, float*, uint32_t*, int, const TmaMap, const TmaMap, const TmaMap);

static float h2f(__half h) { return __half2float(h); }

int main(int argc, char** argv) {
    const int repeats = argc > 1 ? atoi(argv[1]) : 30;
    const int only = argc > 2 ? atoi(argv[2]) : -1;  // one shape (index) only
    struct Shape { int b, t; const char* var; };
    const Shape shapes[] = {{1, 502, "p3n64"}, {64, 168, "p3n64"}, {8, 1026, "p3n128"},
                            {4, 2048, "p3n128"}, {8, 2048, "p3n128"}};
    // FA_HEADS=n: n heads instead of FastESM2's 20 (more work per launch, same per item).
    const int H = getenv("FA_HEADS") ? atoi(getenv("FA_HEADS")) : 20, D = 64;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
#ifdef FA_SM90_EXP_EMU
    printf("EXP_EMU=%d ", FA_SM90_EXP_EMU);
#endif
    const bool normal = argc > 3 && argv[3][0] == 'n';  // N(0,1) q, k, v instead of uniform
#ifdef ATTN_L2_PREFETCH
    printf("L2 prefetch %d ", ATTN_L2_PREFETCH);  // run 56's knob (removed from attn_common.cuh)
#endif
    printf("sms=%d data=%s\n", sms, normal ? "normal" : "uniform");
    for (int si = 0; si < (int)(sizeof(shapes) / sizeof(shapes[0])); ++si) {
        if (only >= 0 && si != only) continue;
        const Shape& sh = shapes[si];
        const bool n128 = sh.var[3] == '1';  // "p3n128" (runs 51-63 read [4]: every shape ran p3n64)
        const int NWG = 3, BN = n128 ? 128 : 64, BM = 64 * NWG;
        Kern k = n128 ? virnucpro_flash_attn_sm90_f16_p3n128 : virnucpro_flash_attn_sm90_f16_p3n64;
        const size_t n = (size_t)sh.b * H * sh.t * D;
        std::vector<__half> hq(n), hk(n), hv(n);
        srand(1234);
        auto rnd = []() { return (float)rand() / RAND_MAX * 2.f - 1.f; };
        auto gauss = [&]() {
            const float u1 = std::max(1e-7f, (rnd() + 1.f) * 0.5f), u2 = (rnd() + 1.f) * 0.5f;
            return sqrtf(-2.f * logf(u1)) * cosf(6.2831853f * u2);
        };
        for (size_t i = 0; i < n && normal; ++i) {
            hq[i] = __float2half(gauss());
            hk[i] = __float2half(gauss());
            hv[i] = __float2half(gauss());
        }
        for (size_t i = 0; i < n && !normal; ++i) {
            hq[i] = __float2half(rnd() * 2.f);
            hk[i] = __float2half(rnd() * 2.f);
            hv[i] = __float2half(rnd());
        }
        __half *q, *kk, *v, *o;
        uint32_t* lens;
        // FA_ONEBUF=1: q, k, v, o back to back in one allocation (as from a pool) instead of one
        // cudaMalloc each.
        const char* onebuf = getenv("FA_ONEBUF");
        const bool onebuf_on = onebuf && onebuf[0] == '1';
        if (onebuf_on) {
            CK(cudaMalloc(&q, n * 2 * 4 + 4096));
            kk = q + n + 256; v = kk + n + 256; o = v + n + 256;
        } else {
            CK(cudaMalloc(&q, n * 2)); CK(cudaMalloc(&kk, n * 2)); CK(cudaMalloc(&v, n * 2));
            CK(cudaMalloc(&o, n * 2));
        }
        CK(cudaMalloc(&lens, sh.b * 4));
        CK(cudaMemcpy(q, hq.data(), n * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(kk, hk.data(), n * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(v, hv.data(), n * 2, cudaMemcpyHostToDevice));
        std::vector<uint32_t> hl(sh.b, sh.t);
        CK(cudaMemcpy(lens, hl.data(), sh.b * 4, cudaMemcpyHostToDevice));
        const int smem = (2 * BM + STAGES * 2 * BN) * 128 + 1024;
        CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        const int nq = (sh.t + BM - 1) / BM, items = nq * H * sh.b;
        // The work split of kernels::WorkSplit::plan (FA_SPLIT=0: whole items only).
        const int tiles = (sh.t + BN - 1) / BN;
        int grid = std::min(items, sms), n_dp = items;
        const char* env = getenv("FA_SPLIT");
        if (!(env && env[0] == '0') && tiles >= 4 && items > sms && items % sms != 0) {
            n_dp = (items / sms - 1) * sms;
            grid = std::min(sms, (items - n_dp) * tiles);
        }
        float* part = nullptr;
        uint32_t* part_count = nullptr;
        if (n_dp < items) {
            CK(cudaMalloc(&part, (size_t)grid * 2 * 36 * NWG * 128 * 4));
            CK(cudaMalloc(&part_count, (size_t)(items - n_dp) * 4));
            CK(cudaMemset(part_count, 0, (size_t)(items - n_dp) * 4));
        }
        const long long sb = (long long)H * sh.t * D, st = D, shh = (long long)sh.t * D;
        const long long ob = (long long)sh.t * H * D, ot = H * D, oh = D;
        const float scale = 0.125f * 1.4426950408889634f;
        // Tensor maps {64, rows, heads, batch} of Q, K and V, boxes of a query block (Q) or key
        // tile, 128-byte swizzle (the layout of the kernel's tiles), as cuda.rs encodes them.
        // FA_TMA=0: the kernel is told not to use them (all loads by cp.async).
        const char* tma_env = getenv("FA_TMA");
        const int tma = !(tma_env && tma_env[0] == '0');
        TmaMap tmq, tmk, tmv;
        auto encode = [&](TmaMap* tm, void* base, int box_rows) {
            cuuint64_t dims[4] = {64, (cuuint64_t)sh.t, (cuuint64_t)H, (cuuint64_t)sh.b};
            cuuint64_t strides[3] = {(cuuint64_t)st * 2, (cuuint64_t)shh * 2, (cuuint64_t)sb * 2};
            cuuint32_t box[4] = {64, (cuuint32_t)box_rows, 1, 1};
            cuuint32_t es[4] = {1, 1, 1, 1};
            CUresult r = cuTensorMapEncodeTiled((CUtensorMap*)tm, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, base, dims,
                                                strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                CU_TENSOR_MAP_SWIZZLE_128B,
                                                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
            if (r != CUDA_SUCCESS) { fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r); exit(1); }
        };
        encode(&tmq, q, BM);
        encode(&tmk, kk, BN);
        encode(&tmv, v, BN);
        auto launch = [&]() {
            k<<<grid, (NWG + 1) * 128, smem>>>(q, kk, v, o, lens, nullptr, nullptr, sh.t, sb, st,
                                               shh, sb, st, shh, sb, st, shh, ob, ot, oh, scale,
                                               nullptr, nullptr, nq, H, items, n_dp, tiles,
                                               part, part_count, tma, tmq, tmk, tmv);
        };
        for (int i = 0; i < 20; ++i) launch();
        CK(cudaDeviceSynchronize());
        CK(cudaGetLastError());
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float one;
        CK(cudaEventElapsedTime(&one, e0, e1));
        const int inner = std::max(1, std::min(1000, (int)(5.0f / one)));
        std::vector<float> ts;
        for (int r = 0; r < repeats; ++r) {
            CK(cudaEventRecord(e0));
            for (int i = 0; i < inner; ++i) launch();
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            ts.push_back(ms / inner);
        }
        std::sort(ts.begin(), ts.end());
        // Check 256 sampled rows against a double reference, half of them in the last batch
        // entry (the last items, those the split shares out by key tiles).
        std::vector<__half> ho(n);
        CK(cudaMemcpy(ho.data(), o, n * 2, cudaMemcpyDeviceToHost));
        double max_err = 0, max_ref = 0;
        for (int sidx = 0; sidx < 256; ++sidx) {
            const int b = sidx & 1 ? sh.b - 1 : (sidx * 7) % sh.b;
            const int h = (sidx * 5 + sidx / 20) % H, r = (sidx * 997) % sh.t;
            const size_t base = ((size_t)b * H + h) * sh.t * D;
            std::vector<double> sc(sh.t);
            double mx = -1e300;
            for (int j = 0; j < sh.t; ++j) {
                double a = 0;
                for (int d = 0; d < D; ++d)
                    a += (double)h2f(hq[base + (size_t)r * D + d]) * h2f(hk[base + (size_t)j * D + d]);
                sc[j] = a * 0.125;
                mx = std::max(mx, sc[j]);
            }
            double l = 0;
            for (int j = 0; j < sh.t; ++j) { sc[j] = exp(sc[j] - mx); l += sc[j]; }
            for (int d = 0; d < D; ++d) {
                double a = 0;
                for (int j = 0; j < sh.t; ++j) a += sc[j] * h2f(hv[base + (size_t)j * D + d]);
                a /= l;
                const double got = h2f(ho[(size_t)b * ob + (size_t)r * ot + h * oh + d]);
                max_err = std::max(max_err, fabs(got - a));
                max_ref = std::max(max_ref, fabs(a));
            }
        }
        const double flops = 4.0 * sh.b * H * (double)sh.t * sh.t * D;
        printf("%-6s %s%s %dx%d  median %.4f ms  min %.4f  max %.4f  (%.1f TFLOP/s)  max|err| %.2e (max|ref| %.2e)\n",
               sh.var, n_dp < items ? "split" : "whole", tma ? " tma" : "", sh.b, sh.t, ts[ts.size() / 2], ts[0], ts.back(),
               flops / (ts[ts.size() / 2] * 1e-3) / 1e12, max_err, max_ref);
        if (part) { CK(cudaFree(part)); CK(cudaFree(part_count)); }
        CK(cudaFree(q));
        if (!onebuf_on) { CK(cudaFree(kk)); CK(cudaFree(v)); CK(cudaFree(o)); }
        CK(cudaFree(lens));
    }
    return 0;
}
