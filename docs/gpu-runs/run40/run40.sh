#!/usr/bin/env bash
# Run 40 (prepared 2026-11-23, not yet run: no device was lent for the rest of that session).
# The tree of commit 212e8b7 and later: persistent attention kernels (p3n64 below 768 tokens,
# p3n128 from 768), the opt-in rotary inside the attention kernel (VIRNUCPRO_ROTARY_IN_ATTENTION=1),
# predict enqueueing both models before collecting, MosaicBERT fp32 baseline.
#  1. GPU tests (lib --ignored includes rotary_in_attention_matches_on_gpu), parity with and without
#     the rotary fusion, doctor with it (ENV-04 then checks it too).
#  2. PyTorch baselines in the same call; model benchmarks with and without the rotary fusion.
#  3. Kernel traces of back-to-back attention calls, ours and SDPA's (is run 38/39's gap between
#     isolated and back-to-back timing in the kernels or between them?).
#  4. predict with and without the rotary fusion, memory peak, kernel trace.
# Two device calls (each under 10 minutes): `bash run40.sh a` (1-2), `bash run40.sh b` (3-4).
set -u
PART=${1:-a}
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
R1="env VIRNUCPRO_ROTARY_IN_ATTENTION=1"
if [ "$PART" = a ]; then
{
date -u
timeout 200 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
for r in 0 1; do
  VIRNUCPRO_ROTARY_IN_ATTENTION=$r CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked" | sed "s/^/rotary-in-attention=$r: /"
done
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $R1 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|attention op|doctor" -A6 $OUT/doctor.log | grep -vE "^\s+(f16|bf16|random-weights)" | tail -14
{
for s in 512x168 2x1024 1x2048; do
  timeout 60 $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench"
  timeout 60 $R1 $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench" | sed "s/^/rotary in attention: /"
done
timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench"
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench"
VIRNUCPRO_FA_VARIANT=h2n64 timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench" | sed "s/^/h2n64: /"
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 300 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; tail -30 $OUT/torch.log
fi
if [ "$PART" = b ]; then
# Back-to-back attention calls under the kernel trace: per-call kernel time and the gaps between.
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
timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o1 --device cuda 2>&1 | tail -1 | tee $OUT/predict.log
kill $MON; echo "peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
timeout 200 $R1 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o2 --device cuda 2>&1 | tail -1 | sed "s/^/rotary in attention: /" | tee -a $OUT/predict.log
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_predict.tsv timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o3 --device cuda 2>&1 | tail -1
python3 $D/summary.py $OUT/tr_predict.tsv --last-ms 15000 --top 16 | tee $OUT/predict_trace.log
fi
date -u
