// A minimal kernel tracer for machines without Nsight: a CUDA injection library that records
// every kernel, memcpy and memset of the process through CUPTI's activity API and writes them as
// tab-separated lines (kind, start ns, end ns, name) to $KTRACE_OUT when the process exits.
// `scripts/ktrace/summary.py` turns that into time per kernel and the idle gaps between them.
//
// Build (CUPTI headers and library: pip `nvidia-cuda-cupti`, see scripts/ktrace/README.md):
//   gcc -O2 -shared -fPIC -I$CU/include ktrace.c -o libktrace.so -L$CU/lib -l:libcupti.so.13
// Use:
//   CUDA_INJECTION64_PATH=$PWD/libktrace.so KTRACE_OUT=/tmp/trace.tsv virnucpro bench ...
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE (8u << 20)

static FILE* out;

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = (uint8_t*)aligned_alloc(8, BUF_SIZE);
    *size = BUF_SIZE;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t size,
                                      size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity* rec = NULL;
    while (out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
        switch (rec->kind) {
            case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
            case CUPTI_ACTIVITY_KIND_KERNEL: {
                const CUpti_ActivityKernel10* k = (const CUpti_ActivityKernel10*)rec;
                fprintf(out, "K\t%llu\t%llu\t%s\t%d,%d,%d\t%d\n", (unsigned long long)k->start,
                        (unsigned long long)k->end, k->name, k->gridX, k->gridY, k->gridZ,
                        k->blockX);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMCPY: {
                const CUpti_ActivityMemcpy6* m = (const CUpti_ActivityMemcpy6*)rec;
                fprintf(out, "C\t%llu\t%llu\tmemcpy kind %d\t%llu\t0\n",
                        (unsigned long long)m->start, (unsigned long long)m->end,
                        (int)m->copyKind, (unsigned long long)m->bytes);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMSET: {
                const CUpti_ActivityMemset4* m = (const CUpti_ActivityMemset4*)rec;
                fprintf(out, "S\t%llu\t%llu\tmemset\t%llu\t0\n", (unsigned long long)m->start,
                        (unsigned long long)m->end, (unsigned long long)m->bytes);
                break;
            }
            default:
                break;
        }
    }
    free(buffer);
}

static void flush_at_exit(void) {
    cuptiActivityFlushAll(1);
    if (out) {
        fclose(out);
        out = NULL;
    }
}

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
int InitializeInjection(void) {
    const char* path = getenv("KTRACE_OUT");
    out = fopen(path ? path : "ktrace.tsv", "w");
    if (!out) {
        fprintf(stderr, "ktrace: cannot open %s\n", path ? path : "ktrace.tsv");
        return 0;
    }
    cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    atexit(flush_at_exit);
    return 1;
}
