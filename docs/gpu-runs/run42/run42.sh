#!/usr/bin/env bash
# Run 42 (2026-11-23): GELU epilogue on by default; rotary-in-attention producer that copies a
# whole tile with cp.async and rotates it in place (one round trip per tile); ESM embedding
# lookup from a pre-multiplied table; predict prepares unit N+1 on the host while the device
# runs unit N, collects each unit with one copy. One device call.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
R="env VIRNUCPRO_ROTARY_IN_ATTENTION=1"
{
date -u
timeout 200 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
for c in 0 1; do
  VIRNUCPRO_ROTARY_IN_ATTENTION=$c CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked" | sed "s/^/rotary-in-attention=$c: /"
done
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $R $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor|checks" $OUT/doctor.log | head -20
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor.log | head -8
{
for c in 0 1; do
  VIRNUCPRO_ROTARY_IN_ATTENTION=$c timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 2>&1 | grep "^bench" | sed "s/^/R=$c: /"
  VIRNUCPRO_ROTARY_IN_ATTENTION=$c timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench" | sed "s/^/R=$c: /"
done
timeout 60 $V bench --device cuda --model esm2-650m --shapes 2x1024,1x2048 2>&1 | grep "^bench"
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench"
VIRNUCPRO_ROTARY_IN_ATTENTION=1 timeout 90 $V bench --device cuda --model esm2-650m --shapes 512x168 --ops 2>&1 | grep -E "attention|rotary"
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
for c in 0 1; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  VIRNUCPRO_ROTARY_IN_ATTENTION=$c timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$c --device cuda 2>&1 | tail -1 | sed "s/^/R=$c: /" | tee -a $OUT/predict.log
  kill $MON; echo "R=$c peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
done
cmp /tmp/o_0/prediction_results.txt /tmp/o_1/prediction_results.txt > /dev/null 2>&1 && echo "results identical" || python3 - <<'PY' | tee -a $OUT/predict.log
import csv
def load(p):
    with open(p) as f: return {r[0]: [float(x) for x in r[2:4]] for r in csv.reader(f, delimiter="\t") if r and r[0] != "Sequence_ID"}
try:
    a, b = load("/tmp/o_0/prediction_results.txt"), load("/tmp/o_1/prediction_results.txt")
    print("rotary on/off: frames", len(a), len(b), "max |score diff|", max(abs(a[k][i]-b[k][i]) for k in a for i in range(2)))
except Exception as e: print("compare failed", e)
PY
ls /tmp/o_0
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_predict.tsv timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o3 --device cuda 2>&1 | tail -1
python3 $D/summary.py $OUT/tr_predict.tsv --last-ms 15000 --top 16 | tee $OUT/predict_trace.log
date -u
