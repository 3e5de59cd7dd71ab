#!/usr/bin/env bash
# Run 38: persistent warp-specialized attention (p3n128, p2n128, p3n64, p2n64) and the producer
# without spills: GPU tests, doctor (all variants), whole FastESM2 passes per variant.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
timeout 200 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|mismatch|error" | head -20
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
timeout 200 $V doctor --device cuda --skip-models 2>&1 | grep -E "^\[|attention op|doctor" -A5 | grep -vE "^\s+(f16|bf16|random-weights)" | tail -9
for var in s3n128 p3n128 p2n128; do for s in 2x1024 1x2048; do VIRNUCPRO_FA_VARIANT=$var timeout 60 $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench" | sed "s/^/$var /"; done; done
for var in h2n64 p3n64 p2n64 p3n128; do VIRNUCPRO_FA_VARIANT=$var timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 2>&1 | grep "^bench" | sed "s/^/$var /"; done
for var in h2n64 p3n64 p2n64; do VIRNUCPRO_FA_VARIANT=$var timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128 2>&1 | grep "^bench" | sed "s/^/$var /"; done
date -u
