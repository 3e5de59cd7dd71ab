#!/usr/bin/env bash
# Run 58 (2026-11-23): is our 4x2048 attention slower than cuDNN's because the GPU clocks down
# under it (power), not for want of cycles? Sustained 5-s loops of the kernel harness (cp.async
# and TMA builds of run 57) and of PyTorch SDPA, with nvidia-smi sampling SM clock, power and
# the clock-event reasons every 100 ms.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
for f in fa/fa_t0 fa/fa_t1; do unxz $D/$f.xz /tmp/$(basename $f); chmod +x /tmp/$(basename $f); done
nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,TEMPERATURE > $OUT/smi_q.txt 2>&1
F=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$F --format=csv,noheader >/dev/null 2>&1 || F=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active
nvidia-smi --query-gpu=$F --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
ph() { echo "$(date "+%Y/%m/%d %H:%M:%S.%3N")|$1" | tee -a $OUT/phases.txt; }
sleep 2
for r in 1 2; do
  ph "ours cp.async"; /tmp/fa_t0 1000 3 n | tee -a $OUT/attn.log; ph idle; sleep 2
  ph "ours TMA"; /tmp/fa_t1 1000 3 n | tee -a $OUT/attn.log; ph idle; sleep 2
  ph "torch sdpa"; python3 $D/sdpa_loop.py 5 | tee -a $OUT/attn.log; ph idle; sleep 2
done
kill $SMI
python3 $D/summary58.py $OUT/phases.txt $OUT/smi.csv | tee $OUT/summary.txt
