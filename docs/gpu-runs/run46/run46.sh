#!/usr/bin/env bash
# Run 46 (2026-11-23): cudarc event tracking off by default (VIRNUCPRO_EVENT_TRACKING=1 keeps it),
# embedding lookup and pooling as fused kernels. Part a: GPU tests, doctor, attention and model
# benchmarks with tracking off/on, PyTorch in the same call. Part b: predict off/on, traces.
set -u
PART=${1:-a}
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do [ -x /tmp/$(basename $f) ] || { unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); }; done
V=/tmp/virnucpro
ET="env VIRNUCPRO_EVENT_TRACKING=1"
date -u
if [ "$PART" = a ]; then
{
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 150 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor|lookup|pool" $OUT/doctor.log | head -30
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor.log | head -8
timeout 90 $ET $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 > $OUT/doctor_et.log 2>&1
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor_et.log | sed "s/^/tracking on: /" | head -8
{
for c in "env" "$ET"; do
  timeout 60 $c $V bench --device cuda --model esm2-650m --shapes 512x168,1x2048 2>&1 | grep "^bench" | sed "s/^/[$c] /"
  timeout 60 $c $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench" | sed "s/^/[$c] /"
  timeout 60 $c $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench" | sed "s/^/[$c] /"
done
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 120 python3 $D/bench_torch.py --quick --skip-models --out $OUT/torch.json > $OUT/torch.log 2>&1; tail -8 $OUT/torch.log
timeout 60 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 > $OUT/doctor_again.log 2>&1
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor_again.log | sed "s/^/again: /" | head -8
fi
if [ "$PART" = b ]; then
python3 $D/coding_genomes.py /tmp/g.fa 4000 &
python3 $D/coding_genomes.py /tmp/g8.fa 8000 &
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
wait
p() { # label, input, env prefix
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 150 $3 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda ${@:4} 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p warmup /tmp/g.fa env
p default /tmp/g.fa env
p tracking_on /tmp/g.fa "$ET"
p default_again /tmp/g.fa env
p tracking_on_again /tmp/g.fa "$ET"
cmp /tmp/o_default/prediction_results.txt /tmp/o_tracking_on/prediction_results.txt && echo "results identical with and without tracking" | tee -a $OUT/predict.log
p default8000 /tmp/g8.fa env
p bt32k /tmp/g.fa "env" --batch-tokens 32768
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=/tmp/tr_predict.tsv timeout 150 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_tr --device cuda 2>&1 | tail -1
python3 $D/summary.py /tmp/tr_predict.tsv --last-ms 15000 --top 20 | tee $OUT/predict_trace.log
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=/tmp/tr_attn.tsv timeout 60 $V doctor --device cuda --skip-models --shapes 4x2048 > /dev/null 2>&1
python3 $D/summary.py /tmp/tr_attn.tsv --last-ms 200 --top 6 | tee $OUT/attn_trace.log
fi
date -u
