#!/usr/bin/env bash
# Run 68 (2026-11-24): the review's refactor (tensor-map pointers taken only for persistent
# variants; one switch helper; dynamic_smem from key_tile): GPU tests, doctor, predict with debug
# logging (no TMA refusal expected), results against TMA off.
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
timeout 200 $V doctor --device cuda --skip-models 2>&1 | grep -E "^\[|^\s+[0-9]+x[0-9]+ " | cut -c1-200
python3 $D/coding_genomes.py /tmp/g.fa 1000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
for r in tma no_tma; do
  if [ $r = no_tma ]; then E="VIRNUCPRO_ATTN_TMA=0"; else E="VIRNUCPRO_ATTN_TMA=1"; fi
  env $E RUST_LOG=virnucpro=debug timeout 120 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$r --device cuda > /tmp/p_$r.log 2>&1
  echo "$r: $(tail -1 /tmp/p_$r.log | cut -c1-200)"; echo "$r: TMA refusals logged: $(grep -c 'refused a TMA' /tmp/p_$r.log)"
done
cmp /tmp/o_tma/prediction_results.txt /tmp/o_no_tma/prediction_results.txt && echo "results identical with and without TMA"
} 2>&1 | tee $OUT/run68.log
date -u
