#!/usr/bin/env bash
# Device run 3: attention table with the per-length variant, per-op profiles, ESM long rows.
set -u
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
date -u '+%Y-%m-%d %H:%M:%S UTC' > "$OUT/machine.txt"; nvidia-smi >> "$OUT/machine.txt" 2>&1
B=./virnucpro
for c in "bench --model esm2-650m --device cuda --ops --shapes 512x168" \
         "bench --model dnabert-s --device cuda --ops --shapes 256x128" \
         "bench --model dnabert-s --device cuda --dtype f32 --ops --shapes 256x128" \
         "bench --model esm2-650m --device cuda --shapes 1x2048,2x1024 --compare-attention"; do
  echo "== virnucpro $c" >> "$OUT/ops.log"; $B $c >> "$OUT/ops.log" 2>/dev/null; echo "exit $?" >> "$OUT/ops.log"
done
$B doctor --skip-models --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1; echo "doctor exit $?" >> "$OUT/doctor.log"
cat "$OUT/ops.log"; tail -n 12 "$OUT/doctor.log"
