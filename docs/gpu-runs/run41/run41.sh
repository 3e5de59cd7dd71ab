#!/usr/bin/env bash
# Run 41 (2026-11-23): run 40's plan plus the opt-in GELU epilogue (VIRNUCPRO_GELU_EPILOGUE=1:
# ESM's ffn1 bias + GELU in the cuBLASLt GEMM, tanh approximation) next to the opt-in rotary
# inside the attention kernel (VIRNUCPRO_ROTARY_IN_ATTENTION=1).
#  a: GPU tests; parity for the four combinations; doctor with both (ENV-04 checks both);
#     model benchmarks per combination; the op profile; PyTorch baselines (MosaicBERT fp32 new).
#  b: kernel traces of back-to-back attention calls (ours, SDPA); predict per combination,
#     memory peak, kernel trace of predict.
set -u
PART=${1:-a}
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
combo() { case $1 in base) echo "env";; R) echo "env VIRNUCPRO_ROTARY_IN_ATTENTION=1";; G) echo "env VIRNUCPRO_GELU_EPILOGUE=1";; RG) echo "env VIRNUCPRO_ROTARY_IN_ATTENTION=1 VIRNUCPRO_GELU_EPILOGUE=1";; esac; }
if [ "$PART" = a ]; then
{
date -u
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
for c in base R G RG; do
  CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 $(combo $c) /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked" | sed "s/^/$c: /"
done
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $(combo RG) $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|attention op|doctor|gelu|rotary" $OUT/doctor.log | head -40
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor.log | head -8
{
for s in 512x168 2x1024 1x2048; do
  for c in base R G RG; do
    if [ $s != 512x168 ] && [ $c = R -o $c = RG ]; then continue; fi
    timeout 60 $(combo $c) $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench" | sed "s/^/$c: /"
  done
done
for c in base RG; do timeout 60 $(combo $c) $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench" | sed "s/^/$c: /"; done
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench"
timeout 90 $V bench --device cuda --model esm2-650m --shapes 512x168 --ops 2>&1 | tail -22
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 300 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; tail -32 $OUT/torch.log
fi
if [ "$PART" = b ]; then
cat > /tmp/sdpa_loop.py <<'PY'
import torch, torch.nn.functional as F
q, k, v = (torch.randn(4, 20, 2048, 64, device="cuda", dtype=torch.float16) for _ in range(3))
for _ in range(500):
    o = F.scaled_dot_product_attention(q, k, v, scale=0.125)
torch.cuda.synchronize()
PY
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_attn.tsv timeout 120 $V doctor --device cuda --skip-models --shapes 4x2048 > /dev/null 2>&1
python3 $D/summary.py $OUT/tr_attn.tsv --last-ms 400 --top 8 | tee $OUT/attn_trace.log
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_sdpa.tsv timeout 120 python3 /tmp/sdpa_loop.py
python3 $D/summary.py $OUT/tr_sdpa.tsv --last-ms 50 --top 4 | tee $OUT/sdpa_trace.log
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
MON=$!
timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o1 --device cuda 2>&1 | tail -1 | sed "s/^/base: /" | tee $OUT/predict.log
kill $MON; echo "peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
for c in R G RG; do
  timeout 200 $(combo $c) $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$c --device cuda 2>&1 | tail -1 | sed "s/^/$c: /" | tee -a $OUT/predict.log
done
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_predict.tsv timeout 200 $(combo RG) $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o3 --device cuda 2>&1 | tail -1
python3 $D/summary.py $OUT/tr_predict.tsv --last-ms 15000 --top 16 | tee $OUT/predict_trace.log
fi
date -u
