#!/usr/bin/env bash
# Run 5 (issue #5): GPU parity of `predict`/`embed` on the oracle, end-to-end predict throughput
# with random weights of the real shapes, and a full `doctor`. Logs under $OUT.
#   bash .gpu-carry/run5.sh          (from the repository root)
set -u
OUT=${OUT:-/tmp/run5-out}
mkdir -p "$OUT"
DIR=$(cd "$(dirname "$0")" && pwd)
O=tests/data/oracle
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# The binary links libfontconfig/libfreetype (plotters "ttf", `virnucpro plot`), which this device
# lacks: copies from the build host (Debian 12) in $DIR/lib, for the binary only (not for python).
BIN=/tmp/virnucpro-wrap
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s:%s" exec "%s" "$@"\n' "$LD_LIBRARY_PATH" "$DIR/lib" "$DIR/virnucpro" > $BIN
chmod +x $BIN
S="$OUT/summary.txt"
log() { echo "$*" | tee -a "$S"; }
T0=$(date +%s)
log "run5 $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$S"
"$BIN" --version | tee -a "$S"

# ---- a. parity on the oracle -------------------------------------------------------------------
P="$OUT/parity.log"
pred() { # NAME ESM REF [extra args...]
  local name=$1 esm=$2 ref=$3; shift 3
  echo "== predict $name: $*" >> "$P"
  timeout 120 "$BIN" "$@" predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert \
    --esm "$esm" --classifier $O/classifier/model_full.pth --out-dir "$OUT/$name" --device cuda \
    >> "$P" 2>&1
  echo "exit $?" >> "$P"
  python3 "$DIR/compare5.py" pred "$OUT/$name/prediction_results.txt" "$ref/prediction_results.txt" \
    "predict $name ($*)" | tee -a "$S"
}
pred p_fast_fused  $O/fastesm $O/e2e_fastesm --attention fused
pred p_fast_naive  $O/fastesm $O/e2e_fastesm --attention naive
pred p_esm2_fused  $O/esm2    $O/e2e_esm2    --attention fused
pred p_esm2_naive  $O/esm2    $O/e2e_esm2    --attention naive
# f32 (the fused kernel is f16/bf16 only, so auto = materialized here)
echo "== predict p_fast_f32" >> "$P"
timeout 120 "$BIN" predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert --esm $O/fastesm \
  --classifier $O/classifier/model_full.pth --out-dir "$OUT/p_fast_f32" --device cuda --dtype f32 >> "$P" 2>&1
echo "exit $?" >> "$P"
python3 "$DIR/compare5.py" pred "$OUT/p_fast_f32/prediction_results.txt" $O/e2e_fastesm/prediction_results.txt \
  "predict p_fast_f32 (--dtype f32, attention auto)" | tee -a "$S"

emb() { # MODEL INPUT REF ATT
  local model=$1 input=$2 ref=$3 att=$4 name
  name=e_$(basename "$model")_$att
  echo "== embed $name" >> "$P"
  timeout 120 "$BIN" --attention "$att" embed --model $O/$model $O/inputs/$input --out "$OUT/$name.safetensors" \
    --device cuda >> "$P" 2>&1
  echo "exit $?" >> "$P"
  python3 "$DIR/compare5.py" emb "$OUT/$name.safetensors" $O/expected/$ref.safetensors \
    "embed $model $input --attention $att" | tee -a "$S"
}
for att in fused naive; do
  emb esm2 proteins.fa esm2 $att
  emb fastesm proteins.fa fastesm $att
  emb dnabert dna.fa dnabert $att
done
log "parity done at +$(( $(date +%s) - T0 )) s"

# ---- b. end-to-end throughput, random weights of the real shapes --------------------------------
# 2,000 records x 5,000 bases of random sense codons (no stop in the codon frame), so that every
# 500-bp chunk keeps about one open frame, as coding sequence does.
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
log "genome: $(grep -c '>' /tmp/g.fa) records, $(grep -v '>' /tmp/g.fa | tr -d '\n' | wc -c) bases"
nvidia-smi --query-gpu=memory.used --format=csv,noheader | sed 's/^/idle memory.used: /' | tee -a "$S"
tp() { # NAME [extra predict args]
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem_$name.csv" &
  local mon=$!
  local t=$(date +%s.%N)
  timeout 200 "$BIN" predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert $O/dnabert \
    --out-dir /tmp/o_$name --device cuda "$@" > "$OUT/tp_$name.log" 2>&1
  local rc=$?
  local wall=$(python3 -c "import time;print(f'{time.time()-$t:.1f}')")
  sleep 0.5; kill $mon; wait $mon 2>/dev/null
  local peak=$(sort -n "$OUT/mem_$name.csv" | tail -1)
  log "throughput $name ($*): exit $rc, wall ${wall} s, peak memory.used ${peak} MiB"
  tail -n 2 "$OUT/tp_$name.log" | tee -a "$S"
  wc -l < /tmp/o_$name/prediction_results.txt 2>/dev/null | sed 's/^/  prediction_results.txt lines: /' | tee -a "$S"
}
tp default
tp bt32768 --batch-tokens 32768
log "throughput done at +$(( $(date +%s) - T0 )) s"

# ---- c. doctor ---------------------------------------------------------------------------------
timeout 240 "$BIN" doctor --device cuda --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1
echo "doctor exit $?" >> "$OUT/doctor.log"
log "doctor done at +$(( $(date +%s) - T0 )) s"
cat "$OUT/doctor.log"
echo "==== summary"
cat "$S"
