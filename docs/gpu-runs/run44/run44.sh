#!/usr/bin/env bash
# Run 44 (2026-11-23): the committed defaults (rotary inside attention, GELU epilogue, 24 576
# tokens per GPU batch, GEMM timing only for buckets of >= 4096 rows): GPU tests, doctor, predict.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
python3 $D/coding_genomes.py /tmp/g.fa 4000 &
python3 $D/coding_genomes.py /tmp/g8.fa 8000 &
{
date -u
timeout 200 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
wait
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
p() { # label, input, extra args
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 200 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda ${@:3} 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p warmup /tmp/g.fa
p default /tmp/g.fa
p default8000 /tmp/g8.fa
p bt16k /tmp/g.fa --batch-tokens 16384
p default_again /tmp/g.fa
timeout 200 $V doctor --device cuda > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor" $OUT/doctor.log
grep -E "^\s+[0-9]+x[0-9]+ " $OUT/doctor.log | head -8
date -u
