#!/usr/bin/env bash
# Run 57 (2026-11-23): TMA bulk tensor copies for p3n128's full K/V tiles (harness built with
# -DFA_TMA=1 against -DFA_TMA=0), two alternating rounds.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_t0 fa/fa_t1; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
{
for r in 1 2 3; do
  echo "cp.async"; /tmp/fa_t0 30 -1 n | grep -v sms
  echo "TMA"; /tmp/fa_t1 30 -1 n | grep -v sms
done
} 2>&1 | tee $OUT/attn.log
date -u
