#!/usr/bin/env bash
# Run 7 (issue #5): cuBLASLt linear (bias/residual in the GEMM), fused LayerNorm, rotary q/k and
# gated GELU. Correctness (doctor, oracle parity), op profile, whole models with the fused ops on
# and off, end-to-end predict, PyTorch baselines (incl. GEMM rates) in the same call.
#   bash .gpu-carry/run7.sh          (from the repository root; logs under $OUT)
set -u
OUT=${OUT:-/tmp/run7-out}
mkdir -p "$OUT"
DIR=$(cd "$(dirname "$0")" && pwd)
O=tests/data/oracle
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
BIN=$DIR/virnucpro
S="$OUT/summary.txt"
log() { echo "$*" | tee -a "$S"; }
T0=$(date +%s)
log "run7 $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv | tee -a "$S"
"$BIN" --version | tee -a "$S"

# ---- a. doctor (checks incl. the new fused ops; whole-model timings) ---------------------------
timeout 300 "$BIN" doctor --device cuda --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1
log "doctor exit $? at +$(( $(date +%s) - T0 )) s"

# ---- b. parity on the oracle --------------------------------------------------------------------
P="$OUT/parity.log"
pred() { # NAME ESM REF [extra args...]
  local name=$1 esm=$2 ref=$3; shift 3
  echo "== predict $name: $*" >> "$P"
  timeout 120 "$BIN" "$@" predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert \
    --esm "$esm" --classifier $O/classifier/model_full.pth --out-dir "$OUT/$name" --device cuda >> "$P" 2>&1
  echo "exit $?" >> "$P"
  python3 "$DIR/compare5.py" pred "$OUT/$name/prediction_results.txt" "$ref/prediction_results.txt" \
    "predict $name ($*)" | tee -a "$S"
}
pred p_fast_fused $O/fastesm $O/e2e_fastesm --attention fused
pred p_fast_naive $O/fastesm $O/e2e_fastesm --attention naive
pred p_esm2_fused $O/esm2 $O/e2e_esm2 --attention fused
pred p_esm2_naive $O/esm2 $O/e2e_esm2 --attention naive
emb() { # MODEL INPUT REF ATT
  local model=$1 input=$2 ref=$3 att=$4 name
  name=e_$(basename "$model")_$att
  timeout 120 "$BIN" -q --attention "$att" embed --model $O/$model $O/inputs/$input --out "$OUT/$name.safetensors" \
    --device cuda >> "$P" 2>&1
  python3 "$DIR/compare5.py" emb "$OUT/$name.safetensors" $O/expected/$ref.safetensors \
    "embed $model --attention $att" | tee -a "$S"
}
for att in fused naive; do
  emb esm2 proteins.fa esm2 $att; emb fastesm proteins.fa fastesm $att; emb dnabert dna.fa dnabert $att
done
log "parity done at +$(( $(date +%s) - T0 )) s"

# ---- c. op profile and whole models, fused ops on / off -----------------------------------------
B="$OUT/bench.log"
for m in "esm2-650m 512x168" "dnabert-s 256x128"; do
  set -- $m
  echo "== ops $1 $2" >> "$B"
  timeout 120 "$BIN" bench --model $1 --device cuda --ops --shapes $2 >> "$B" 2>&1
done
echo "== esm2-650m fused ops on" >> "$B"
timeout 150 "$BIN" bench --model esm2-650m --device cuda --shapes 512x168,2x1024,1x2048 >> "$B" 2>&1
echo "== esm2-650m ragged fused ops on" >> "$B"
timeout 100 "$BIN" bench --model esm2-650m --device cuda --shapes 512x168 --ragged >> "$B" 2>&1
echo "== esm2-650m fused ops OFF" >> "$B"
VIRNUCPRO_FUSED_OPS=0 timeout 100 "$BIN" bench --model esm2-650m --device cuda --shapes 512x168 >> "$B" 2>&1
echo "== dnabert-s fused ops on" >> "$B"
timeout 100 "$BIN" bench --model dnabert-s --device cuda --shapes 256x128,256x110 >> "$B" 2>&1
echo "== dnabert-s fused ops OFF" >> "$B"
VIRNUCPRO_FUSED_OPS=0 timeout 100 "$BIN" bench --model dnabert-s --device cuda --shapes 256x128 >> "$B" 2>&1
log "bench done at +$(( $(date +%s) - T0 )) s"

# ---- d. end-to-end predict ----------------------------------------------------------------------
python3 - <<'EOF'
import numpy as np
rng = np.random.default_rng(5)
b = np.frombuffer(b"ACGT", dtype=np.uint8)
codons = np.array(np.meshgrid(b, b, b, indexing="ij")).reshape(3, -1).T
stops = {b"TAA", b"TAG", b"TGA"}
sense = np.array([c for c in codons if bytes(c) not in stops])
with open("/tmp/g.fa", "w") as f:
    for i in range(2000):
        seq = sense[rng.integers(0, len(sense), 1667)].reshape(-1)[:5000].tobytes().decode()
        f.write(f">r{i}\n")
        for j in range(0, 5000, 80):
            f.write(seq[j:j + 80] + "\n")
EOF
python3 "$DIR/kmer_tokenizer.py" $O/dnabert /tmp/kmer | tee -a "$S"
tp() { # NAME DNABERT_TOKENIZER_DIR [extra predict args]
  local name=$1 tk=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem_$name.csv" &
  local mon=$!
  timeout 200 "$BIN" predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert $tk \
    --out-dir /tmp/o_$name --device cuda "$@" > "$OUT/tp_$name.log" 2>&1
  local rc=$?
  sleep 0.5; kill $mon; wait $mon 2>/dev/null
  log "predict e2e $name ($tk $*): exit $rc; peak memory.used $(sort -n "$OUT/mem_$name.csv" | tail -1) MiB"
  tail -n 2 "$OUT/tp_$name.log" | tee -a "$S"
}
tp kmer /tmp/kmer
tp oracle_tok $O/dnabert
log "e2e done at +$(( $(date +%s) - T0 )) s"

# ---- e. PyTorch baselines ------------------------------------------------------------------------
PYTHONUNBUFFERED=1 timeout 300 python3 "$DIR/bench_torch.py" --out "$OUT/torch.json" > "$OUT/torch.log" 2>&1
log "torch exit $? at +$(( $(date +%s) - T0 )) s"
tail -n 30 "$OUT/torch.log"
grep -E "^op |tokens/s|seq/s|^esm|^dnabert|^model|^shape|^ *[0-9]+x" "$B" | head -80
tail -n 40 "$OUT/doctor.log"
echo "==== summary"; cat "$S"
