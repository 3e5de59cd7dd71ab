#!/usr/bin/env bash
# Run 64 (2026-11-23): the harness fixed to run p3n128 where it says so (runs 51-63 ran p3n64 for
# every shape: it read the wrong character of the variant's name). p3n128 bursts: run 61's kernel
# (v2f: single running max) against the tree max (v3f), TMA on and off; sustained loops; then
# Nsight Compute stall breakdown and the top stall SASS lines of p3n128 at 4x2048.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_v2f fa/fa_v3f; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
date -u
{
for r in 1 2; do
  echo "--- bursts v2f (run $r)"; /tmp/fa_v2f 30 -1 n | grep -v sms
  echo "--- bursts v3f (run $r)"; /tmp/fa_v3f 30 -1 n | grep -v sms
  echo "--- bursts v3f cp.async (run $r)"; FA_TMA=0 /tmp/fa_v3f 30 -1 n | grep -v sms
done
for r in 1 2; do
  echo "sustained v2f 4x2048"; /tmp/fa_v2f 800 3 n | grep -v sms
  echo "sustained v3f 4x2048"; /tmp/fa_v3f 800 3 n | grep -v sms
done
} 2>&1 | tee $OUT/run64.log
NCU="/usr/local/cuda/bin/ncu --clock-control none"
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
{
echo "=== ours p3n128 (harness v3f, 4x2048)"; timeout 150 $NCU --launch-skip 5 --launch-count 1 --metrics $M /tmp/fa_v3f 1 3 n 2>&1 | grep -E "^    [a-z]|^  virnucpro" | grep -vE " 0(\.0+)?$"
timeout 200 $NCU --launch-skip 5 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv /tmp/fa_v3f 1 3 n > /tmp/src.csv 2>/dev/null
python3 $D/top_sass.py /tmp/src.csv
} 2>&1 | tee $OUT/ncu.log
date -u
