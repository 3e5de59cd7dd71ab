#!/usr/bin/env bash
# Run 65 (2026-11-23): eight partial row maxima and four partial row sums per row (v4f) against
# four partial maxima and two sums (v3f, run 64); p3n128/p3n64 through the fixed harness, bursts
# and sustained loops, alternating.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_v3f fa/fa_v4f; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
{
for r in 1 2 3; do
  echo "--- bursts v3f (run $r)"; /tmp/fa_v3f 30 -1 n | grep -v sms
  echo "--- bursts v4f (run $r)"; /tmp/fa_v4f 30 -1 n | grep -v sms
done
for r in 1 2; do
  for s in 3 2; do
    echo "sustained v3f s$s"; /tmp/fa_v3f 800 $s n | grep -v sms
    echo "sustained v4f s$s"; /tmp/fa_v4f 800 $s n | grep -v sms
  done
done
} 2>&1 | tee $OUT/run65.log
date -u
