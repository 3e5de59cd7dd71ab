#!/usr/bin/env bash
# Run 35 (experiment, not kept): x3n128 = s3n128 with the exponentials two at a time in half
# precision (ex2.approx.f16x2), now that wgmma runs asynchronously. All variants against the
# materialized path (accuracy), doctor's timing table, SDPA in the same call, whole-model 1x2048
# and 2x1024 for s3n128 and x3n128.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
timeout 200 $V doctor --device cuda > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "ENV-04|attention op" -A5 $OUT/doctor.log | grep -vE "^\s+(f16|bf16|random-weights)" | tail -8
for fv in s3n128 x3n128; do VIRNUCPRO_FA_VARIANT=$fv timeout 60 $V bench --device cuda --model esm2-650m --shapes 1x2048,2x1024 2>&1 | grep "^bench" | sed "s/^/$fv: /"; done
PYTHONUNBUFFERED=1 timeout 100 python3 $D/bench_torch.py --quick --skip-models > $OUT/torch.log 2>&1; grep "^attn " $OUT/torch.log | tail -4
