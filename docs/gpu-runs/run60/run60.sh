#!/usr/bin/env bash
# Run 60 (2026-11-23): where do the ~17 us per call between our loop time and cuDNN's at 4x2048
# go, when an isolated kernel takes about the same cycles (ncu, run 52)? cuDNN's launch
# configuration (ncu LaunchStats), its kernels' timeline in a loop (torch.profiler: gaps or
# overlap between calls), ours with nsys if present, and the per-launch cost from 20 against 80
# heads (4x the work per launch) for both.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro fa/fa_new; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
ls /usr/local/cuda/bin/ | grep -E "nsys|ncu" ; which nsys
NCU="/usr/local/cuda/bin/ncu --clock-control none"
cat > /tmp/sdpa1.py <<'PY'
import sys, torch
import torch.nn.functional as F
b, h, t = (int(x) for x in sys.argv[1:4])
q, k, v = (torch.randn(b, h, t, 64, device="cuda", dtype=torch.float16) for _ in range(3))
with torch.inference_mode():
    for _ in range(5):
        F.scaled_dot_product_attention(q, k, v, scale=0.125)
torch.cuda.synchronize()
PY
{
echo "=== torch timeline 4x20x2048"; python3 $D/sdpa_trace.py 4 20 2048
echo "=== torch timeline 8x20x1026"; python3 $D/sdpa_trace.py 8 20 1026
echo "=== ncu cudnn launch"; timeout 120 $NCU --launch-skip 3 --launch-count 1 -k regex:cudnn --section LaunchStats --section Occupancy python3 /tmp/sdpa1.py 4 20 2048 2>&1 | grep -vE "^==PROF==|^    -+ |^\s*$" | head -60
echo "=== ncu ours launch"; FA_TMA=1 timeout 120 $NCU --launch-skip 5 --launch-count 1 --section LaunchStats /tmp/fa_new 1 3 n 2>&1 | grep -vE "^==PROF==|^    -+ |^\s*$" | head -40
for hh in 20 80; do
  echo "=== harness heads $hh"; FA_HEADS=$hh /tmp/fa_new 30 3 n | grep -v sms; FA_HEADS=$hh /tmp/fa_new 30 2 n | grep -v sms
  echo "=== torch heads $hh"; python3 $D/sdpa_loop.py 2 4 $hh 2048 64 | tail -2; python3 $D/sdpa_loop.py 2 8 $hh 1026 64 | tail -2
done
} 2>&1 | tee $OUT/run60.log
# CUPTI kernel trace (scripts/ktrace): per-kernel device time and the gaps between kernels in
# a loop, ours (harness, doctor) and cuDNN's, 4x2048.
export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
KT="env CUDA_INJECTION64_PATH=$D/libktrace.so"
{
echo "=== ktrace harness TMA 4x2048"; $KT KTRACE_OUT=/tmp/h.tsv FA_TMA=1 /tmp/fa_new 60 3 n | grep -v sms; python3 $D/summary.py /tmp/h.tsv --last-ms 200 --top 5
echo "=== ktrace doctor 4x2048"; $KT KTRACE_OUT=/tmp/d.tsv /tmp/virnucpro doctor --device cuda --skip-models --shapes 4x2048 2>&1 | grep -E "^\s+4x2048"; python3 $D/summary.py /tmp/d.tsv --last-ms 100000 --top 12
echo "=== ktrace torch 4x2048"; $KT KTRACE_OUT=/tmp/t.tsv python3 $D/sdpa_loop.py 2 4 20 2048 64 | tail -1; python3 $D/summary.py /tmp/t.tsv --last-ms 200 --top 5
} 2>&1 | tee $OUT/ktrace.log
date -u
