#!/usr/bin/env bash
# Run 55 (2026-11-23): predict with the split-attention binary (run 54) on the 4 000-genome
# input (40 154 frames), default --batch-tokens, twice after a warm-up; checks no regression.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
date -u
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
for r in warmup default default_again; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 120 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$r --device cuda 2>&1 | tail -1 | sed "s/^/$r: /" | tee -a $OUT/predict.log
  kill $MON; echo "$r peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
done
date -u
