#!/usr/bin/env bash
# Run 30: (1) DNABERT-S without the q/k/v copies and with the token-type row folded into the
# embedding table; (2) the wgmma attention kernels without the branch that made ptxas serialize
# every wgmma (C7520), plus three warp-specialized variants (s3n128, s2n128, s2n64). GPU tests,
# doctor (all variants), PyTorch baselines, model benchmarks, predict with a kernel trace.
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
for fv in h2n64 s2n64 s2n128 s3n128 h3n128; do VIRNUCPRO_FA_VARIANT=$fv timeout 60 $V bench --device cuda --model esm2-650m --shapes 1x2048,512x168 2>&1 | grep "^bench" | sed "s/^/$fv: /"; done
} > $OUT/bench.log 2>&1
cat $OUT/bench.log
PYTHONUNBUFFERED=1 timeout 300 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; tail -22 $OUT/torch.log
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
CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_predict.tsv timeout 200 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o2 --device cuda 2>&1 | tail -1
python3 $D/summary.py $OUT/tr_predict.tsv --last-ms 15000 --top 16 | tee $OUT/predict_trace.log
xz -9 $OUT/*.tsv
