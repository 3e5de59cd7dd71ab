#!/usr/bin/env bash
# Run 75 (2026-11-24): the new validation case "f16 rising scores" (keys scaled along the row, so
# a row's maximum moves by tens of log2 units every key tile: the lazy rescaling's update branch
# on every tile): GPU tests (all cases x all variants) and doctor's ENV-04.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
{
timeout 150 /tmp/lib_tests --ignored --test-threads 1 --nocapture 2>&1 | grep -E "^test |test result|panicked|assert|rising|worst"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
timeout 200 $V doctor --device cuda --skip-models --skip-bench --json $OUT/doctor.json 2>&1 | grep -E "^\[" | cut -c1-220
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(c) for c in d['cases'] if 'rising' in str(c)]" $OUT/doctor.json
} 2>&1 | tee $OUT/tests.log
date -u
