#!/usr/bin/env bash
# Run 72 (2026-11-24): harness, p3n128: new2 (run 71's kernel) against spec (-DFA_SPEC_EXP:
# exponentials against the reference maximum while the tile's maxima are taken; no overflow
# guard yet, an experiment), bursts alternating and sustained 4-s loops.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
date -u
{
for r in 1 2 3; do
  for v in new2 spec; do echo "--- bursts $v (round $r)"; $D/fa2/fa_$v 30 2 n | grep -v sms; $D/fa2/fa_$v 30 3 n | grep -v sms; done
done
for r in 1 2; do for v in new2 spec; do echo "sustained $v 4x2048"; $D/fa2/fa_$v 800 3 n | grep -v sms; echo "sustained $v 8x1026"; $D/fa2/fa_$v 800 2 n | grep -v sms; done; done
for v in new2 spec; do echo "short $v"; $D/fa2/fa_$v 30 0 n | grep -v sms; $D/fa2/fa_$v 30 1 n | grep -v sms; done
} 2>&1 | tee $OUT/harness.log
date -u
