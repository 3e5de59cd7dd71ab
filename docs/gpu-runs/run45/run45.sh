#!/usr/bin/env bash
# Run 45 (2026-11-23): predict on a larger input (16 000 × 5 kb genomes) with the binaries of
# commit 5d584b3 (run 44's), to separate the steady rate from the per-run start-up.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
python3 $D/coding_genomes.py /tmp/g4.fa 4000 &
python3 $D/coding_genomes.py /tmp/g16.fa 16000 &
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
wait
p() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 250 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p warmup4000 /tmp/g4.fa
p genomes16000 /tmp/g16.fa
p genomes4000 /tmp/g4.fa
date -u
