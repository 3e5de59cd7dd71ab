#!/usr/bin/env bash
# Run 28: where unsynchronized passes spend their device time (CUPTI kernel trace,
# scripts/ktrace), and the SM clock / power while a DNABERT-S benchmark runs.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
unxz() { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; }
unxz $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
ls $(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))') | grep -i cupti || { mkdir -p /tmp/cupti; unxz $D/libcupti.so.13.xz /tmp/cupti/libcupti.so.13; export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/tmp/cupti; }
which nsys ncu 2>&1 | head -2
V=/tmp/virnucpro
date -u; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
tr() {  # name last_ms bench-args...
  local n=$1 ms=$2; shift 2
  CUDA_INJECTION64_PATH=$D/libktrace.so KTRACE_OUT=$OUT/tr_$n.tsv timeout 120 $V bench --device cuda "$@" 2>&1 | grep "^bench"
  python3 $D/summary.py $OUT/tr_$n.tsv --last-ms $ms --top 22
  xz -9 $OUT/tr_$n.tsv
}
tr dnabert128 250 --model dnabert-s --shapes 256x128
tr dnabert110 220 --model dnabert-s --shapes 256x110
tr esm168 1600 --model esm2-650m --shapes 512x168 --repeats 8
tr esm2048 90 --model esm2-650m --shapes 1x2048
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 100 > $OUT/clocks.csv &
MON=$!
timeout 60 $V bench --device cuda --model dnabert-s --shapes 256x128 --repeats 300 2>&1 | grep "^bench"
timeout 60 $V bench --device cuda --model esm2-650m --shapes 512x168 --repeats 40 2>&1 | grep "^bench"
kill $MON
echo "clock samples (MHz, W) during the two runs:"; awk -F', ' '{print $2, $3, $5}' $OUT/clocks.csv | sort | uniq -c | sort -rn | head -12
