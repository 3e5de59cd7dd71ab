#!/usr/bin/env bash
# Run 51 (2026-11-23): share of the softmax exponentials on the FMA pipe (poly_exp2) in the
# Hopper attention kernels: kernel harness (fa_harness.cu) built with FA_SM90_EXP_EMU = 0..4
# eighths, doctor's shapes plus 8x2048, two alternating rounds; Nsight Compute pipe use at 4x2048.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for e in 0 1 2 3 4; do unxz $D/fa/fa_e$e.xz /tmp/fa_e$e; chmod +x /tmp/fa_e$e; done
date -u; nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
for round in 1 2; do
  for e in 0 1 2 3 4; do timeout 60 /tmp/fa_e$e 30; done
done 2>&1 | tee $OUT/harness.log
NCU="/usr/local/cuda/bin/ncu --clock-control none"
M=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,sm__cycles_active.avg
for e in 0 2 4; do
  echo "=== ncu EXP_EMU=$e 4x2048"
  timeout 90 $NCU --launch-skip 5 --launch-count 1 --metrics $M /tmp/fa_e$e 1 3 2>&1 | grep -E "pct|duration|cycles_active.avg " 
done 2>&1 | tee $OUT/ncu.log
date -u
