#!/usr/bin/env bash
# Run 47 (2026-11-23): the rotating attention producer one tile behind its loads (issue tile e,
# then wait for, rotate and release tile e - 1), plus run 46's changes. Part a: GPU tests, doctor,
# model benchmarks, PyTorch in the same call. Part b: predict (rotary inside / outside attention),
# trace.
set -u
PART=${1:-a}
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
NR="env VIRNUCPRO_ROTARY_IN_ATTENTION=0"
date -u
if [ "$PART" = a ]; then
{
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 150 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor" $OUT/doctor.log | head -30
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor.log | head -8
{
for c in "env" "$NR"; do
  timeout 60 $c $V bench --device cuda --model esm2-650m --shapes 512x168 2>&1 | grep "^bench" | sed "s/^/[$c] /"
  timeout 60 $c $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench" | sed "s/^/[$c] /"
done
timeout 60 $V bench --device cuda --model esm2-650m --shapes 2x1024,1x2048 2>&1 | grep "^bench"
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench"
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 240 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; grep -E "^attn|^esm|^bert|^mosaic|EsmModel|tokens/s|seq/s" $OUT/torch.log | head -30
fi
if [ "$PART" = b ]; then
python3 $D/coding_genomes.py /tmp/g.fa 4000 &
python3 $D/coding_genomes.py /tmp/g8.fa 8000 &
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
wait
p() { # label, input, env prefix, extra args
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 150 $3 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda ${@:4} 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p warmup /tmp/g.fa env
p default /tmp/g.fa env
p rotary_outside /tmp/g.fa "$NR"
p default_again /tmp/g.fa env
cmp /tmp/o_default/prediction_results.txt /tmp/o_rotary_outside/prediction_results.txt && echo "results identical with rotary inside and outside attention" | tee -a $OUT/predict.log
p default8000 /tmp/g8.fa env
p default8000_again /tmp/g8.fa env
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=/tmp/tr_predict.tsv timeout 150 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_tr --device cuda 2>&1 | tail -1
python3 $D/summary.py /tmp/tr_predict.tsv --last-ms 15000 --top 12 | tee $OUT/predict_trace.log
fi
date -u
