#!/usr/bin/env bash
# Run 69 (2026-11-24): p3n128 kernel variants in the harness (bursts alternating, then sustained
# 4-s loops at 4x2048): head = a1112e2's kernel; desc = Q descriptors rebuilt per tile (no
# spills); lazy = desc + lazy rescaling (the reference max moves only by > 8 in log2 units);
# tcsum = lazy + row sums of P on the tensor cores (m64n8k16 against a tile of ones);
# tcsum_eager = desc + tcsum without lazy rescaling.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
V="head desc lazy tcsum tcsum_eager"
date -u
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv,noheader
{
for r in 1 2; do
  for v in $V; do echo "--- bursts $v (round $r)"; $D/fa2/fa_$v 30 2 n | grep -v sms; $D/fa2/fa_$v 30 3 n | grep -v sms; done
done
for r in 1 2; do
  for v in head lazy tcsum; do echo "--- sustained $v 4x2048 (round $r)"; $D/fa2/fa_$v 800 3 n | grep -v sms; done
done
echo "--- short shapes (p3n64), head vs tcsum"
for v in head tcsum head tcsum; do echo "$v"; $D/fa2/fa_$v 30 0 n | grep -v sms; $D/fa2/fa_$v 30 1 n | grep -v sms; done
} 2>&1 | tee $OUT/run69.log
date -u
