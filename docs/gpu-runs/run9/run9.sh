#!/usr/bin/env bash
# Run 9 (issue #5): cuBLASLt workspace size vs GEMM rate, long-row op profile, embeddings kept on
# the device across batches (predict), PyTorch in the same call.
set -u
OUT=${OUT:-/tmp/run9-out}
mkdir -p "$OUT"
DIR=$(cd "$(dirname "$0")" && pwd)
O=tests/data/oracle
W=/tmp/run9-work; mkdir -p $W
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
BIN=$DIR/virnucpro
S="$OUT/summary.txt"
log() { echo "$*" | tee -a "$S"; }
T0=$(date +%s)
log "run9 $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,clocks.sm,power.draw --format=csv,noheader | tee -a "$S"
for esm in fastesm esm2; do
  timeout 120 "$BIN" -q predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert --esm $O/$esm \
    --classifier $O/classifier/model_full.pth --out-dir "$W/p_$esm" --device cuda >> "$OUT/parity.log" 2>&1
  python3 "$DIR/compare5.py" pred "$W/p_$esm/prediction_results.txt" $O/e2e_$esm/prediction_results.txt "predict $esm (auto)" | tee -a "$S"
done
B="$OUT/bench.log"
bench() { echo "== $*" >> "$B"; timeout 150 "$BIN" bench --device cuda "$@" >> "$B" 2>&1; }
for ws in 1 4 32; do
  VIRNUCPRO_GEMM_WORKSPACE_MB=$ws bench --model esm2-650m --ops --shapes 512x168
  echo "== ws $ws" >> "$B"
  VIRNUCPRO_GEMM_WORKSPACE_MB=$ws bench --model esm2-650m --shapes 512x168,1x2048
done
bench --model esm2-650m --ops --shapes 1x2048
bench --model dnabert-s --shapes 256x128,256x110
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader | tee -a "$S"
log "bench done at +$(( $(date +%s) - T0 )) s"
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
python3 "$DIR/kmer_tokenizer.py" $O/dnabert $W/kmer >> "$S"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$W/mem.csv" &
MON=$!
timeout 200 "$BIN" predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert $W/kmer \
  --out-dir $W/o_tp --device cuda > "$OUT/tp.log" 2>&1
log "predict e2e exit $?; peak memory.used $(sort -n "$W/mem.csv" | tail -1) MiB"
kill $MON; tail -n 1 "$OUT/tp.log" | tee -a "$S"
PYTHONUNBUFFERED=1 timeout 300 python3 "$DIR/bench_torch.py" --out "$OUT/torch.json" > "$OUT/torch.log" 2>&1
log "torch exit $? at +$(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader | tee -a "$S"
grep -E "^gemm|^esm|^attn" "$OUT/torch.log" | tail -12
grep -E "^op (matmul|linear)|^bench |^== " "$B"
grep -E "^op " "$B" | tail -24
echo "==== summary"; cat "$S"
