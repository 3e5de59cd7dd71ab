#!/usr/bin/env bash
# Run 48 (2026-11-23): run 47's binaries; predict per batch budget on 80 k and 160 k frames, for the
# choice of the GPU default --batch-tokens (memory target: weights + 2 GiB).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
[ -x /tmp/virnucpro ] || { python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro; }
V=/tmp/virnucpro
date -u
python3 $D/coding_genomes.py /tmp/g8.fa 8000 &
python3 $D/coding_genomes.py /tmp/g16.fa 16000 &
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
wait
p() { # label, input, extra args
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 150 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda ${@:3} 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p g8_bt24k /tmp/g8.fa
p g8_bt28k /tmp/g8.fa --batch-tokens 28672
p g8_bt32k /tmp/g8.fa --batch-tokens 32768
p g16_bt24k /tmp/g16.fa
p g16_bt28k /tmp/g16.fa --batch-tokens 28672
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
date -u
