#!/usr/bin/env bash
# Run 74 (2026-11-24): run 73's binary; more same-call pairs of doctor's attention table and
# bench_torch.py's (30 repeats each), the order alternating (doctor first, then torch first).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
unxz $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
date -u
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv,noheader
doc() { echo "--- doctor (pair $1)"; timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ " | cut -c1-100; }
tor() { echo "--- torch attention, 30 repeats (pair $1)"; PYTHONUNBUFFERED=1 timeout 200 python3 $D/bench_torch.py --skip-models 2>&1 | grep -E "^attn [0-9]"; }
{
for r in 1 2 3 4 5 6; do
  if [ $((r % 2)) = 1 ]; then doc $r; tor $r; else tor $r; doc $r; fi
done
} 2>&1 | tee $OUT/attn.log
date -u
