#!/usr/bin/env bash
# Run 73 (2026-11-24): the session's final build: Q descriptors rebuilt per tile with 32-bit steps (p3n128
# without spills), lazy rescaling; doctor times fused, fused+ALiBi, materialized per shape (as
# bench_torch.py times SDPA, SDPA+mask, materialized) and the variant table after all shapes.
# GPU tests, doctor, doctor alternating with torch (30 repeats), torch models, predict, sustained.
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
PYTHONUNBUFFERED=1 timeout 300 python3 $D/bench_torch.py --quick --out $OUT/torch.json > $OUT/torch.log 2>&1; grep -E "^esm|^bert|^mosaic" $OUT/torch.log | head -12
{
for r in 1; do
  for s in 3 2; do for v in new2; do echo "sustained $v s$s"; $D/fa2/fa_$v 800 $s n | grep -v sms; done; done
  python3 $D/sdpa_loop.py 4 4 20 2048 64 | tail -3
  python3 $D/sdpa_loop.py 4 8 20 1026 64 | tail -3
done
} 2>&1 | tee $OUT/sustained.log
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
for r in warmup default default_again; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem.csv &
  MON=$!
  timeout 120 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$r --device cuda 2>&1 | tail -1 | sed "s/^/$r: /" | tee -a $OUT/predict.log
  kill $MON; echo "$r peak memory.used $(sort -n /tmp/mem.csv | tail -1) MiB" | tee -a $OUT/predict.log
done
date -u
