#!/usr/bin/env bash
# One device session: GPU facts, `virnucpro doctor` (validation + fused-attention timings),
# optional `virnucpro bench` runs, and the PyTorch baselines, all logged under $OUT.
#
#   bash gpu-device-run.sh [DIR]      # DIR holds virnucpro (or virnucpro.xz) and bench_torch.py
#
# Extra virnucpro commands can be listed, one per line, in DIR/extra-commands.txt (each is run
# as `virnucpro <line>`, output in $OUT/extra.log). Needs the CUDA 13 runtime libraries: taken from
# the PyTorch install (nvidia.cu13) when LD_LIBRARY_PATH does not already have them.
set -u
DIR=$(cd "${1:-$(dirname "$0")}" && pwd)
OUT=${OUT:-/tmp/virnucpro-gpu-out}
mkdir -p "$OUT"
if python3 -c 'import nvidia.cu13' 2>/dev/null; then
  CU13=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
  export LD_LIBRARY_PATH="$CU13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
{ date -u '+%Y-%m-%d %H:%M:%S UTC'; uname -m; nvidia-smi; \
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv; } \
  > "$OUT/machine.txt" 2>&1
head -1 "$OUT/machine.txt"; grep -A1 '^name' "$OUT/machine.txt"
BIN="$DIR/virnucpro"
if [ ! -x "$BIN" ] && [ -f "$DIR/virnucpro.xz" ]; then
  BIN=/tmp/virnucpro
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$DIR/virnucpro.xz" "$BIN"
  chmod +x "$BIN"
fi
"$BIN" --version
"$BIN" doctor --json "$OUT/doctor.json" > "$OUT/doctor.log" 2>&1
echo "doctor exit $?" >> "$OUT/doctor.log"
if [ -f "$DIR/extra-commands.txt" ]; then
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    echo "== virnucpro $line" >> "$OUT/extra.log"
    # shellcheck disable=SC2086
    "$BIN" $line >> "$OUT/extra.log" 2>&1
    echo "exit $?" >> "$OUT/extra.log"
  done < "$DIR/extra-commands.txt"
fi
PYTHONUNBUFFERED=1 python3 "$DIR/bench_torch.py" --out "$OUT/torch.json" ${TORCH_ARGS:-} > "$OUT/torch.log" 2>&1
echo "bench_torch exit $?" >> "$OUT/torch.log"
# The end of the output is what comes back first: the logs, shortest summaries last.
[ -f "$OUT/extra.log" ] && tail -n 60 "$OUT/extra.log"
tail -n 25 "$OUT/torch.log"
cat "$OUT/doctor.log"
