#!/usr/bin/env bash
# Run 8 (issue #5): cuBLASLt algorithm tuning (VIRNUCPRO_GEMM_TUNE on/off), naive-attention fix;
# doctor, oracle parity, op profile, whole models, end-to-end predict, PyTorch in the same call.
#   bash .gpu-carry/run8.sh   (from the repository root; logs under $OUT, 8 files at most)
set -u
OUT=${OUT:-/tmp/run8-out}
mkdir -p "$OUT"
DIR=$(cd "$(dirname "$0")" && pwd)
O=tests/data/oracle
W=/tmp/run8-work; mkdir -p $W
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
BIN=$DIR/virnucpro
S="$OUT/summary.txt"
log() { echo "$*" | tee -a "$S"; }
T0=$(date +%s)
log "run8 $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader | tee -a "$S"
timeout 300 "$BIN" doctor --device cuda --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1
log "doctor exit $? at +$(( $(date +%s) - T0 )) s"
P="$OUT/parity.log"
pred() { local name=$1 esm=$2 ref=$3; shift 3
  timeout 120 "$BIN" -q "$@" predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert \
    --esm "$esm" --classifier $O/classifier/model_full.pth --out-dir "$W/$name" --device cuda >> "$P" 2>&1
  python3 "$DIR/compare5.py" pred "$W/$name/prediction_results.txt" "$ref/prediction_results.txt" "predict $name ($*)" | tee -a "$S"; }
for att in fused naive; do
  pred p_fast_$att $O/fastesm $O/e2e_fastesm --attention $att
  pred p_esm2_$att $O/esm2 $O/e2e_esm2 --attention $att
done
emb() { local model=$1 input=$2 att=$3
  timeout 120 "$BIN" -q --attention "$att" embed --model $O/$model $O/inputs/$input --out "$W/e_${model}_$att.safetensors" --device cuda >> "$P" 2>&1
  python3 "$DIR/compare5.py" emb "$W/e_${model}_$att.safetensors" $O/expected/$model.safetensors "embed $model --attention $att" | tee -a "$S"; }
for att in fused naive; do emb esm2 proteins.fa $att; emb fastesm proteins.fa $att; emb dnabert dna.fa $att; done
log "parity done at +$(( $(date +%s) - T0 )) s"
B="$OUT/bench.log"
bench() { echo "== $*" >> "$B"; timeout 150 "$BIN" bench --device cuda "$@" >> "$B" 2>&1; }
bench --model esm2-650m --ops --shapes 512x168
VIRNUCPRO_GEMM_TUNE=0 bench --model esm2-650m --ops --shapes 512x168
bench --model dnabert-s --ops --shapes 256x128
bench --model esm2-650m --shapes 512x168,2x1024,1x2048
bench --model esm2-650m --shapes 512x168 --ragged
VIRNUCPRO_GEMM_TUNE=0 bench --model esm2-650m --shapes 512x168,2x1024,1x2048
bench --model dnabert-s --shapes 256x128,256x110
VIRNUCPRO_GEMM_TUNE=0 bench --model dnabert-s --shapes 256x128,256x110
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
T="$OUT/tp.log"
tp() { local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$W/mem_$name.csv" &
  local mon=$!
  echo "== $name $*" >> "$T"
  timeout 200 "$BIN" predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert $W/kmer \
    --out-dir $W/o_$name --device cuda "$@" >> "$T" 2>&1
  local rc=$?; sleep 0.5; kill $mon; wait $mon 2>/dev/null
  log "predict e2e $name ($*): exit $rc; peak memory.used $(sort -n "$W/mem_$name.csv" | tail -1) MiB"
  tail -n 1 "$T" | tee -a "$S"; }
tp default
tp bt32k --batch-tokens 32768
log "e2e done at +$(( $(date +%s) - T0 )) s"
PYTHONUNBUFFERED=1 timeout 300 python3 "$DIR/bench_torch.py" --out "$OUT/torch.json" > "$OUT/torch.log" 2>&1
log "torch exit $? at +$(( $(date +%s) - T0 )) s"
tail -n 22 "$OUT/torch.log"
grep -E "^op |^bench " "$B"
grep -E "ENV|x[0-9]+ |speed|tokens/s|2x|FAIL|error" "$OUT/doctor.log" | head -60
echo "==== summary"; cat "$S"
