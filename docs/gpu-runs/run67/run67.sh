#!/usr/bin/env bash
# Run 67 (2026-11-24): does the driver accept the tensor maps in the model paths (projection
# outputs viewed as [B, H, T, 64] with strides t = H*64, h = 64: not monotonic)? predict and
# bench with RUST_LOG=virnucpro=debug (a refused map logs one debug line and falls back to
# cp.async), and predict with VIRNUCPRO_ATTN_TMA=0 for comparison.
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" $D/virnucpro.xz /tmp/virnucpro; chmod +x /tmp/virnucpro
V=/tmp/virnucpro
date -u
python3 $D/coding_genomes.py /tmp/g.fa 4000
python3 $D/kmer_tokenizer.py tests/data/oracle/dnabert /tmp/kmer > /dev/null
{
for r in tma tma_again no_tma tma_3; do
  if [ $r = no_tma ]; then E="VIRNUCPRO_ATTN_TMA=0"; else E="VIRNUCPRO_ATTN_TMA=1"; fi
  env $E RUST_LOG=virnucpro=debug timeout 120 $V predict /tmp/g.fa --chunk-len 500 --random-weights esm2-650m --dnabert /tmp/kmer --out-dir /tmp/o_$r --device cuda > /tmp/p_$r.log 2>&1
  echo "$r: $(tail -1 /tmp/p_$r.log | cut -c1-220)"; echo "$r: TMA refusals logged: $(grep -c 'refused a TMA' /tmp/p_$r.log)"
done
cmp /tmp/o_tma/prediction_results.txt /tmp/o_no_tma/prediction_results.txt && echo "results identical with and without TMA"
RUST_LOG=virnucpro=debug timeout 120 $V bench --device cuda --model dnabert-s --shapes 256x128 > /tmp/b.log 2>&1; grep -E "256x128|refused" /tmp/b.log | head -5
RUST_LOG=virnucpro=debug timeout 120 $V bench --device cuda --model esm2-650m --shapes 4x1024 > /tmp/b2.log 2>&1; grep -E "4x1024|refused" /tmp/b2.log | head -5
} 2>&1 | tee $OUT/run67.log
date -u
