#!/usr/bin/env bash
# Run 56 (2026-11-23): the copies' L2 fetch-size hint (cp.async .L2::128B / ::256B, harness built
# with -DATTN_L2_PREFETCH) and the harness's tensors in one allocation (FA_ONEBUF=1) instead of
# four; doctor's attention table on the same machine for reference.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro fa/fa_l0 fa/fa_l128 fa/fa_l256; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
{
for r in 1 2; do
  for pf in 0 128 256; do
    echo "prefetch $pf, separate buffers"; /tmp/fa_l$pf 30 -1 n | grep -v sms
    echo "prefetch $pf, one buffer"; FA_ONEBUF=1 /tmp/fa_l$pf 30 -1 n | grep -v sms
  done
done
echo "--- doctor"
timeout 150 /tmp/virnucpro doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T" | cut -c1-230
} 2>&1 | tee $OUT/attn.log
date -u
