#!/usr/bin/env bash
# Run 71 (2026-11-24): doctor times the default variant first at each shape (as bench_torch.py
# times SDPA first); the Q descriptor steps as 32-bit adds (fa_new2; fa_new = run 70's kernel).
# GPU tests, doctor alternating with torch's attention (30 repeats each, as doctor's), harness
# bursts/sustained new vs new2, ncu stall samples by opcode for new2 at 4x2048.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
{
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
timeout 200 $V doctor --device cuda --json $OUT/doctor.json > $OUT/doctor.log 2>&1; echo "doctor exit $?" >> $OUT/doctor.log
grep -E "^\[|doctor exit" $OUT/doctor.log | cut -c1-220
grep -E "^\s+[0-9]+x[0-9]+ |B x T" $OUT/doctor.log | cut -c1-200 | head -12
doc() { timeout 150 $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\s+[0-9]+x[0-9]+ |B x T" | cut -c1-200; }
{
for r in 1 2 3; do
  echo "--- doctor (run $r)"; doc
  echo "--- torch attention, 30 repeats (run $r)"; PYTHONUNBUFFERED=1 timeout 200 python3 $D/bench_torch.py --skip-models 2>&1 | grep -E "^attn [0-9]"
done
} 2>&1 | tee $OUT/attn.log
{
for r in 1 2; do
  for v in new new2; do echo "--- bursts $v (round $r)"; $D/fa2/fa_$v 30 2 n | grep -v sms; $D/fa2/fa_$v 30 3 n | grep -v sms; done
done
for r in 1 2; do for v in new new2; do echo "sustained $v 4x2048"; $D/fa2/fa_$v 800 3 n | grep -v sms; done; done
} 2>&1 | tee $OUT/harness.log
NCU="/usr/local/cuda/bin/ncu --clock-control none"
timeout 200 $NCU --launch-skip 5 --launch-count 1 --section SourceCounters --section WarpStateStats --page source --print-source sass --csv $D/fa2/fa_new2 1 3 n > /tmp/src.csv 2>/dev/null
python3 $D/top_sass2.py /tmp/src.csv 2>&1 | tee $OUT/ncu_sass.log
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio,smsp__inst_executed.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
timeout 150 $NCU --launch-skip 5 --launch-count 1 --metrics $M $D/fa2/fa_new2 1 3 n 2>&1 | grep -E "^    [a-z]|^  virnucpro" | grep -vE " 0(\.0+)?$" | tee $OUT/ncu_metrics.log
date -u
