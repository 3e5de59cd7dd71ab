#!/usr/bin/env bash
# Run 54 (2026-11-23): the split with a workspace kept per device (no allocation or memset per
# call) and only when there are more items than SMs. GPU tests; doctor's attention table with
# and without the split (VIRNUCPRO_ATTN_SPLIT=0), alternating; kernel harness with 4 and 5 K/V
# stages (-DSTAGES), split and whole; torch SDPA, same call.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity fa/fa_s4 fa/fa_s5; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
{
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
doc() { timeout 150 env "$@" $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\[PASS\] ENV-04|^\[FAIL|^\s+[0-9]+x[0-9]+ |B x T" | cut -c1-230; }
{
for r in 1 2; do
  echo "--- doctor, split (run $r)"; doc VIRNUCPRO_ATTN_SPLIT=1
  echo "--- doctor, no split (run $r)"; doc VIRNUCPRO_ATTN_SPLIT=0
done
echo "--- harness"
for r in 1 2; do
  echo "stages 4 split"; /tmp/fa_s4 30 -1 n | grep -v sms
  echo "stages 5 split"; /tmp/fa_s5 30 -1 n | grep -v sms
  echo "stages 4 whole"; FA_SPLIT=0 /tmp/fa_s4 30 -1 n | grep -v sms
  echo "stages 5 whole"; FA_SPLIT=0 /tmp/fa_s5 30 -1 n | grep -v sms
done
echo "--- torch"
PYTHONUNBUFFERED=1 timeout 240 python3 $D/bench_torch.py --quick --skip-models 2>&1 | grep -E "^attn [0-9]"
echo "--- doctor, split (run 3)"; doc VIRNUCPRO_ATTN_SPLIT=1
} 2>&1 | tee $OUT/attn.log
date -u
