#!/usr/bin/env bash
# Run 62 (2026-11-23): row maxima of the online softmax as four partial maxima per row (the
# single running maximum was a 32-long chain of dependent FMNMX per row). Harness: run 61's
# kernel (fa_v2) against this one (fa_v3), bursts (30 x 5 ms) and sustained 4-s loops, all shapes.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_v2 fa/fa_v3; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
{
for r in 1 2; do
  echo "--- bursts v2 (run $r)"; /tmp/fa_v2 30 -1 n | grep -v sms
  echo "--- bursts v3 (run $r)"; /tmp/fa_v3 30 -1 n | grep -v sms
done
for r in 1 2; do
  for s in 3 2; do
    echo "sustained v2 s$s"; /tmp/fa_v2 800 $s n | grep -v sms
    echo "sustained v3 s$s"; /tmp/fa_v3 800 $s n | grep -v sms
  done
done
} 2>&1 | tee $OUT/run62.log
date -u
