#!/usr/bin/env bash
# Run 6: the binary starts without fontconfig/freetype; parity with DNABERT in bf16 (auto) vs f16.
set -u
DIR=$(cd "$(dirname "$0")" && pwd)
O=tests/data/oracle
export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13,os;print(os.path.join(nvidia.cu13.__path__[0],"lib"))')
BIN=$DIR/virnucpro
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
ldd $BIN | grep -E 'fontconfig|freetype|not found' || echo "ldd: no fontconfig/freetype, nothing missing"
$BIN --version
for esm in fastesm esm2; do
  ref=$O/e2e_$esm
  for att in fused naive; do
    for dt in auto f16; do
      n=p_${esm}_${att}_${dt}
      $BIN -q --attention $att predict $O/inputs/genomes.fa --chunk-len 60 --dnabert $O/dnabert --esm $O/$esm \
        --classifier $O/classifier/model_full.pth --out-dir /tmp/$n --device cuda --dtype $dt || echo "$n: exit $?"
      python3 $DIR/compare5.py pred /tmp/$n/prediction_results.txt $ref/prediction_results.txt "predict $esm --attention $att --dtype $dt"
    done
  done
done
for dt in auto f16; do
  $BIN -q embed --model $O/dnabert $O/inputs/dna.fa --out /tmp/e_dna_$dt.safetensors --device cuda --dtype $dt
  python3 $DIR/compare5.py emb /tmp/e_dna_$dt.safetensors $O/expected/dnabert.safetensors "embed dnabert --dtype $dt"
done
$BIN plot /tmp/p_fastesm_fused_auto/prediction_results.txt --out /tmp/plot && ls -la /tmp/plot
