#!/usr/bin/env bash
# Run 16: in-place rotary; GPU tests, doctor checks, model timings, e2e predict.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
for f in virnucpro tests/lib_tests tests/gpu_parity; do
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f)
done
V=/tmp/virnucpro
date -u
/tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result"
$V doctor --device cuda 2>&1 | grep -E "^\[|fused ops"
$V bench --device cuda --model esm2-650m --ops --shapes 512x168 2>&1 | grep -E "^op (rotary|attention fused)"
for s in 512x168 2x1024 1x2048; do $V bench --device cuda --model esm2-650m --shapes $s 2>&1 | grep "^bench"; done
$V bench --device cuda --model esm2-650m --shapes 512x168 --ragged 2>&1 | grep "^bench"
$V bench --device cuda --model dnabert-s --shapes 256x128 2>&1 | grep "^bench"
VIRNUCPRO_PROFILE=1 $V bench --device cuda --model esm2-650m --shapes 512x168 --repeats 3 2>&1 | grep -E "^esm|^profile"
python3 - <<'EOF'
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
EOF
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
MON=$!
$V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_tp --device cuda 2>&1 | tail -1
kill $MON; echo "peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB"
