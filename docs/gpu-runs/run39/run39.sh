#!/usr/bin/env bash
# Run 39: Nsight Compute, stall reasons and SASS-level profiles of p3n128 and of cuDNN's SDPA
# kernel at 4x2048 (binaries of run 38).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
unxz $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
NCU="/usr/local/cuda/bin/ncu --clock-control none"
M=$(echo smsp__warp_issue_stalled_{barrier,membar,long_scoreboard,short_scoreboard,math_pipe_throttle,wait,mio_throttle,lg_throttle,dispatch_stall,no_instruction,sleeping,branch_resolving,selected,not_selected,misc,drain}_per_warp_active.pct | tr ' ' ,)
M=$M,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__cycles_active.avg,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active
cat > /tmp/sdpa.py <<'PY'
import sys, torch, torch.nn.functional as F
b, t = int(sys.argv[1]), int(sys.argv[2])
q, k, v = (torch.randn(b, 20, t, 64, device="cuda", dtype=torch.float16) for _ in range(3))
for _ in range(5):
    o = F.scaled_dot_product_attention(q, k, v, scale=0.125)
torch.cuda.synchronize()
PY
date -u
echo "=== cuDNN metrics"
timeout 120 $NCU --launch-skip 3 --launch-count 1 -k regex:cudnn --metrics $M python3 /tmp/sdpa.py 4 2048 2>&1 | grep -v "^==PROF==" | tail -30
echo "=== p3n128 metrics"
VIRNUCPRO_FA_VARIANT=p3n128 timeout 150 $NCU --launch-skip 20 --launch-count 1 -k regex:f16_p3n128 --metrics $M $V doctor --device cuda --skip-models --shapes 4x2048 --repeats 3 2>&1 | grep -v "^==PROF==" | sed -n '/virnucpro_flash/,$p' | tail -30
echo "=== SASS"
timeout 150 $NCU --launch-skip 3 --launch-count 1 -k regex:cudnn --set full --import-source no -o /tmp/cudnn python3 /tmp/sdpa.py 4 2048 > /dev/null 2>&1
$NCU --import /tmp/cudnn.ncu-rep --page source --print-source sass --csv > $OUT/cudnn_sass.csv 2>&1
timeout 150 $NCU --launch-skip 20 --launch-count 1 -k regex:f16_p3n128 --set full -o /tmp/p3 $V doctor --device cuda --skip-models --shapes 4x2048 --repeats 3 > /dev/null 2>&1
$NCU --import /tmp/p3.ncu-rep --page source --print-source sass --csv > $OUT/p3n128_sass.csv 2>&1
ls -la $OUT; head -c 600 $OUT/p3n128_sass.csv
date -u
