#!/usr/bin/env bash
# The CPU bf16 path (`--dtype bf16`: bf16 products on AMX where the CPU has it) on this CPU, in one
# go: which path `doctor` reports, the oracle gate (scores within 5e-3 of the original pipeline,
# no call changed), `bench` tokens/s of bf16, int8 and f32 at 8x168 (ESM2-650M shape) and of
# bf16 and f32 for DNABERT-S, and the FFN products on every bf16 kernel the CPU runs (AMX and
# AVX512-BF16 on a Sapphire Rapids) beside candle's f32 matmul (`bench --ops`). Meant for an AMX machine (e.g. the GPU machine's Xeon), with a
# binary built elsewhere; esm.cpp on the same machine: scripts/esmcpp-bench.sh.
#
# Usage (from the repository root):
#   scripts/cpu-amx-bench.sh [THREADS...]     # default: 2 and all cores
# Variables:
#   VIRNUCPRO     the binary (default target/release/virnucpro)
#   KERNEL_TESTS  the kernels crate's unit-test binary, to run its bf16 tests here (optional)
#   REPEATS       timed passes per bench row (default 2)
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${VIRNUCPRO:-target/release/virnucpro}"
repeats="${REPEATS:-2}"
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(2 "$(nproc)")
[ -x "$bin" ] || { echo "cpu-amx-bench: no $bin; build it first (cargo build --release)" >&2; exit 1; }
o=tests/data/oracle
grep -m1 "model name" /proc/cpuinfo || true
echo "cores: $(nproc); ISA flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(amx_bf16|amx_int8|amx_tile|avx512_bf16|avx512_vnni|avx512f)$' | tr '\n' ' ')"
"$bin" doctor --device cpu 2>&1 | head -n 1
if [ -n "${KERNEL_TESTS:-}" ]; then
    echo "== kernels bf16 tests"
    "$KERNEL_TESTS" bf16 2>&1 | grep -E "^test |test result|panicked"
fi
echo "== gate: --dtype bf16 vs the original pipeline (oracle, 55 frames)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for esm in fastesm esm2; do
    "$bin" predict "$o/inputs/genomes.fa" --chunk-len 60 --dnabert "$o/dnabert" --esm "$o/$esm" \
        --device cpu --classifier "$o/classifier/model_full.pth" --out-dir "$tmp/$esm" \
        --dtype bf16 2>&1 | grep "models:"
    python3 - "$tmp/$esm/prediction_results.txt" "$o/e2e_$esm/prediction_results.txt" "$esm" <<'PY'
import sys
rows = lambda p: [l.rstrip("\n").split("\t") for l in open(p)]
got, want = rows(sys.argv[1]), rows(sys.argv[2])
worst = max(abs(float(a[i]) - float(b[i])) for a, b in zip(got[1:], want[1:]) for i in (2, 3))
changed = sum(a[1] != b[1] for a, b in zip(got[1:], want[1:]))
verdict = "passes" if worst <= 5e-3 and changed == 0 else "FAILS"
print(f"{sys.argv[3]}: max score difference {worst:.3e}, calls changed {changed}: {verdict} the gate")
PY
done
# One bench row as "precision  BxL: tokens/s".
row='import json, sys
d = json.load(sys.stdin)
r = d["rows"][0]
dtype, rate = d["dtype"], r["tokens_per_s"]
shape = "%dx%d%s" % (r["batch"], r["len"], " ragged" if r["ragged"] else "")
print(f"  {dtype:<58} {shape}: {rate:.1f} tokens/s")'
bench() {
    local out
    out=$("$bin" bench --device cpu --json -q "$@" --warmup 1 --repeats "$repeats") || return 1
    python3 -c "$row" <<<"$out"
}
for j in "${threads[@]}"; do
    echo "== bench, $j threads"
    for dt in bf16 int8 f32; do bench --model esm2-650m --dtype "$dt" -j "$j" --shapes 8x168; done
    for dt in bf16 f32; do bench --model dnabert-s --dtype "$dt" -j "$j" --shapes 32x128 --ragged; done
done
for j in "${threads[@]}"; do
    echo "== bench --ops: FFN products, every bf16 kernel vs f32, $j threads, 8x168"
    "$bin" bench --model esm2-650m --device cpu --dtype bf16 --ops --shapes 8x168 -j "$j" 2>&1 |
        grep -E "^(matmul|linear) ffn" || true
done
