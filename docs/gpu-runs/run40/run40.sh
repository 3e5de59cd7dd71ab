#!/usr/bin/env bash
# Run 40: persistent attention kernels (p3n64 below 768 tokens, p3n128 from 768), rotary inside the
# attention kernel for ESM (p3n64), MosaicBERT fp32 baseline: GPU tests, doctor, PyTorch baselines
# in the same call, model benchmarks (with and without the rotary fusion), end-to-end predict.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
{
date -u
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 200 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|attention op|doctor" -A6 $OUT/doctor.log | grep -vE "^\s+(f16|bf16|random-weights)" | tail -14
{
for s in 512x168 2x1024 1x2048; do timeout 60 $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench"; done
timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench"
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench"
for s in 512x168 1x2048; do VIRNUCPRO_ROTARY_IN_ATTENTION=0 timeout 60 $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench" | sed "s/^/no rotary fusion: /"; done
VIRNUCPRO_FA_VARIANT=h2n64 timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128,256x110 2>&1 | grep "^bench" | sed "s/^/h2n64: /"
VIRNUCPRO_FA_VARIANT=p2n128 timeout 60 $V bench --device cuda --model esm2-650m --shapes 1x2048 2>&1 | grep "^bench" | sed "s/^/p2n128 (rotary fused): /"
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 300 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; tail -26 $OUT/torch.log
python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(5)
b = np.frombuffer(b"ACGT", dtype=np.uint8)
codons = np.array(np.meshgrid(b, b, b, indexing="ij")).reshape(3, -1).T
stops = {b"TAA", b"TAG", b"TGA"}
sense = np.array([c for c in codons if bytes(c) not in stops])
with open("/tmp/g.fa", "w") as f:
    for i in range(4000):
        seq = sense[rng.integers(0, len(sense), 1667)].reshape(-1)[:5000].tobytes().decode()
        f.write(f">r{i}\n")
        for j in range(0, 5000, 80):
            f.write(seq[j:j + 80] + "\n")
PY
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
MON=$!
timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o1 --device cuda 2>&1 | tail -1 | tee $OUT/predict.log
kill $MON; echo "peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
