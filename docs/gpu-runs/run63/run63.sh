#!/usr/bin/env bash
# Run 63 (2026-11-23): why the warps of p3n128 wait at 4x2048, against cuDNN's kernel: Nsight
# Compute warp-stall breakdown (per issued instruction) and the top stall locations (SASS).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_v3; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
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
NCU="/usr/local/cuda/bin/ncu --clock-control none"
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_pipe_xu.sum,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
date -u
{
echo "=== ours (harness v3, 4x2048)"; timeout 150 $NCU --launch-skip 5 --launch-count 1 --metrics $M /tmp/fa_v3 1 3 n 2>&1 | grep -E "^    [a-z]" | grep -vE " 0(\.0+)?$"
echo "=== cudnn (4x2048)"; timeout 150 $NCU --launch-skip 3 --launch-count 1 -k regex:cudnn --metrics $M python3 /tmp/sdpa1.py 4 20 2048 2>&1 | grep -E "^    [a-z]" | grep -vE " 0(\.0+)?$"
echo "=== ours source counters"; timeout 150 $NCU --launch-skip 5 --launch-count 1 --section SourceCounters /tmp/fa_v3 1 3 n 2>&1 | grep -vE "^==PROF==|^\s*$" | tail -60
} 2>&1 | tee $OUT/run63.log
date -u
