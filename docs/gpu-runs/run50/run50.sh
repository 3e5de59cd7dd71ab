#!/usr/bin/env bash
# Run 50 (2026-11-23): kernels shipped as fatbins (sm_90/sm_90a machine code + PTX) instead of PTX
# only. GPU tests with the new binaries; start-up cost with the driver's JIT cache disabled, old
# (fd63621, PTX) against new binary; doctor's ENV lines.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro virnucpro_old tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
python3 $D/coding_genomes.py /tmp/g.fa 400 &
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
wait
{
timeout 120 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=/tmp/virnucpro timeout 120 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
t() { # label, binary, env
  local s=$(date +%s.%N)
  timeout 120 $3 $2 predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda --batch-tokens 28672 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/startup.log
  echo "$1 wall $(python3 -c "import time;print(round(time.time()-$s,2))") s" | tee -a $OUT/startup.log
}
NOJIT="env CUDA_CACHE_DISABLE=1"
for r in 1 2; do
  t old_nocache$r /tmp/virnucpro_old "$NOJIT"
  t new_nocache$r /tmp/virnucpro "$NOJIT"
done
t old_cached /tmp/virnucpro_old env
t new_cached /tmp/virnucpro env
cmp /tmp/o_old_cached/prediction_results.txt /tmp/o_new_cached/prediction_results.txt && echo "old and new binaries: identical results" | tee -a $OUT/startup.log
timeout 60 /tmp/virnucpro doctor --device cuda --skip-models --shapes 1x502 > $OUT/doctor.log 2>&1; grep -E "^\[" $OUT/doctor.log
date -u
