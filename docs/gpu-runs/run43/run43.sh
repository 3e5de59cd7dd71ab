#!/usr/bin/env bash
# Run 43 (2026-11-23): predict with the rotary inside attention (the new default), per batch
# token budget, without GEMM tuning, and on twice the input (start-up amortized). Binaries of run 42.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
export VIRNUCPRO_ROTARY_IN_ATTENTION=1
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/coding_genomes.py /tmp/g8.fa 8000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
p() { # label, input, extra args
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 200 $V predict $2 --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$1 --device cuda ${@:3} 2>&1 | tail -1 | sed "s/^/$1: /" | tee -a $OUT/predict.log
  kill $MON; echo "$1 peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
}
p default /tmp/g.fa
p bt32k /tmp/g.fa --batch-tokens 32768
p bt48k /tmp/g.fa --batch-tokens 49152
VIRNUCPRO_GEMM_TUNE=0 p notune /tmp/g.fa
p default8000 /tmp/g8.fa
p default_again /tmp/g.fa
date -u
