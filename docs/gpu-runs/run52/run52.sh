#!/usr/bin/env bash
# Run 52 (2026-11-23): why the harness times p3n128 at 4x2048 ~11% slower than doctor does.
# Same call: harness (uniform and normal data), doctor's attention table (stop-13 binary),
# torch SDPA; Nsight Compute elapsed/active cycles and clocks for all three kernels at 4x2048.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
unxz $D/fa/fa_base.xz /tmp/fa_base; chmod +x /tmp/fa_base
unxz $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
date -u
{
/tmp/fa_base 30 -1 u
/tmp/fa_base 30 -1 n
timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T"
/tmp/fa_base 30 -1 n
PYTHONUNBUFFERED=1 timeout 240 python3 $D/bench_torch.py --quick --skip-models 2>&1 | grep -E "^attn"
/tmp/fa_base 30 -1 u
} 2>&1 | tee $OUT/timing.log
NCU="/usr/local/cuda/bin/ncu --clock-control none"
M=gpu__time_duration.sum,sm__cycles_active.avg,sm__cycles_elapsed.avg,sm__cycles_elapsed.avg.per_second,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum
cat > /tmp/sdpa.py <<'PY'
import sys, torch, torch.nn.functional as F
b, t = int(sys.argv[1]), int(sys.argv[2])
q, k, v = (torch.randn(b, 20, t, 64, device="cuda", dtype=torch.float16) for _ in range(3))
for _ in range(5):
    o = F.scaled_dot_product_attention(q, k, v, scale=0.125)
torch.cuda.synchronize()
PY
{
echo "=== ncu harness uniform"; timeout 90 $NCU --launch-skip 5 --launch-count 1 --metrics $M /tmp/fa_base 1 3 u 2>&1 | grep -E "^    [a-z]"
echo "=== ncu harness normal"; timeout 90 $NCU --launch-skip 5 --launch-count 1 --metrics $M /tmp/fa_base 1 3 n 2>&1 | grep -E "^    [a-z]"
echo "=== ncu doctor p3n128"; VIRNUCPRO_FA_VARIANT=p3n128 timeout 150 $NCU --launch-skip 20 --launch-count 1 -k regex:f16_p3n128 --metrics $M $V doctor --device cuda --skip-models --shapes 4x2048 --repeats 3 2>&1 | grep -E "^    [a-z]"
echo "=== ncu cudnn"; timeout 120 $NCU --launch-skip 3 --launch-count 1 -k regex:cudnn --metrics $M python3 /tmp/sdpa.py 4 2048 2>&1 | grep -E "^    [a-z]"
} 2>&1 | tee $OUT/ncu.log
date -u
