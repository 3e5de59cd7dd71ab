#!/usr/bin/env bash
# Run 53 (2026-11-23): persistent attention kernels share out their last rounds by key tiles
# (stream-K style split, kernels::WorkSplit). GPU tests; doctor (ENV-04 checks every variant
# against the materialized path, split included) with the split and without
# (VIRNUCPRO_ATTN_SPLIT=0); kernel harness with and without (FA_SPLIT=0); torch SDPA, same call.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity fa/fa_split; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
{
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor exit" $OUT/doctor.log | cut -c1-200
grep -E "^\s+[0-9]+x[0-9]+ |B x T" $OUT/doctor.log | head -12
{
echo "--- doctor attention, no split"
VIRNUCPRO_ATTN_SPLIT=0 timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T"
echo "--- harness split / whole / split"
/tmp/fa_split 30 -1 n
FA_SPLIT=0 /tmp/fa_split 30 -1 n
/tmp/fa_split 30 -1 n
echo "--- doctor attention, split"
timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T"
} 2>&1 | tee $OUT/attn.log
PYTHONUNBUFFERED=1 timeout 240 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; grep -E "^attn|^esm|^bert|^mosaic|EsmModel|tokens/s|seq/s" $OUT/torch.log | head -30
echo "--- doctor attention, split, after torch"
timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T" | tee -a $OUT/attn.log
date -u
