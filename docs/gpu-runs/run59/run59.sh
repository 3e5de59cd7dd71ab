#!/usr/bin/env bash
# Run 59 (2026-11-23): TMA loads (Q, K, V full tiles) passed from the launcher, and the idle
# warpgroup of a sequence's last query block skipping its products. GPU tests; doctor with and
# without TMA (VIRNUCPRO_ATTN_TMA=0); torch SDPA same call; then sustained 4-s loops (power-capped
# steady state, run 58) of the kernel harness: HEAD's kernel (run 57 build, cp.async), the new
# kernel with FA_TMA=0 and =1, the new kernel without the idle skip (TMA on), and PyTorch SDPA,
# at 4x2048 and 8x1026, with nvidia-smi sampling clocks and power.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in virnucpro tests/lib_tests tests/gpu_parity fa/fa_t0 fa/fa_new fa/fa_noskip; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
V=/tmp/virnucpro
date -u
{
timeout 150 /tmp/lib_tests --ignored --test-threads 1 2>&1 | grep -E "^test |test result|panicked|assert"
CARGO_MANIFEST_DIR=$PWD VIRNUCPRO_BIN=$V timeout 150 /tmp/gpu_parity --ignored --test-threads 1 --nocapture 2>&1 | grep -E "cosine|score diff|test result|panicked"
timeout 200 $V doctor --device cuda 2>&1 | grep -E "^\[" | cut -c1-250
} > $OUT/tests.log 2>&1
cat $OUT/tests.log
doc() { timeout 150 env "$@" $V doctor --device cuda --skip-models --shapes 1x502,64x168,8x1026,4x2048 2>&1 | grep -E "^\[PASS\] ENV-04|^\[FAIL|^\s+[0-9]+x[0-9]+ |B x T" | cut -c1-230; }
{
for r in 1 2; do
  echo "--- doctor, TMA (run $r)"; doc VIRNUCPRO_ATTN_TMA=1
  echo "--- doctor, cp.async (run $r)"; doc VIRNUCPRO_ATTN_TMA=0
done
echo "--- torch"
PYTHONUNBUFFERED=1 timeout 240 python3 $D/bench_torch.py --quick --skip-models 2>&1 | grep -E "^attn [0-9]"
} 2>&1 | tee $OUT/attn.log
F=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
ph() { echo "$(date "+%Y/%m/%d %H:%M:%S.%3N")|$1" >> $OUT/phases.txt; echo "== $1"; }
{
for r in 1 2; do
  for s in 3 2; do
    ph "head cp.async s$s"; /tmp/fa_t0 800 $s n | grep -v sms; ph idle; sleep 1
    ph "new cp.async s$s"; FA_TMA=0 /tmp/fa_new 800 $s n | grep -v sms; ph idle; sleep 1
    ph "new tma s$s"; FA_TMA=1 /tmp/fa_new 800 $s n | grep -v sms; ph idle; sleep 1
    ph "noskip tma s$s"; FA_TMA=1 /tmp/fa_noskip 800 $s n | grep -v sms; ph idle; sleep 1
  done
  ph "start torch"; PHASES=$OUT/phases.txt PHASE="torch s3" python3 $D/sdpa_loop.py 4 4 20 2048 64 | tail -4; ph idle; sleep 1
  ph "start torch"; PHASES=$OUT/phases.txt PHASE="torch s2" python3 $D/sdpa_loop.py 4 8 20 1026 64 | tail -4; ph idle; sleep 1
done
} 2>&1 | tee $OUT/sustained.log
kill $SMI
python3 $D/summary58.py $OUT/phases.txt $OUT/smi.csv | tee $OUT/power.txt
date -u
