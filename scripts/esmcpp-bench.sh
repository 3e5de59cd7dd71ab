#!/usr/bin/env bash
# virnucpro against esm.cpp (PyPI `esm-cpp`, a CPU-first C++ ESM-2 engine) on this CPU: the same
# random-weight ESM2-650M checkpoint, the same shapes, the same thread count, each engine in its own
# process, rounds alternating between them; prints tokens/s (real tokens, no padding) and the ratio
# of virnucpro to esm.cpp's best mode.
#
# Usage (from the repository root, after `cargo build --release`):
#   scripts/esmcpp-bench.sh [ROUNDS]          # default 3 rounds
# Variables:
#   VIRNUCPRO        the binary to time (default target/release/virnucpro)
#   VIRNUCPRO_DTYPE  virnucpro's --dtype (default auto)
#   ESMCPP_VENV      where esm.cpp is installed (default ~/.cache/virnucpro-esmcpp/venv)
#   ESMCPP_MODEL     where the checkpoint is written once (default ~/.cache/virnucpro-esmcpp/esm2-650m)
#   THREADS          threads for both engines (default: all cores)
#   ESMCPP_MODES     esm.cpp's modes to time (default "fp32 int8")
#   ESMCPP_WHEELS    a folder of wheels (esm-cpp, numpy<2, and safetensors where the system
#                    Python lacks it) to install from, for a machine without PyPI
#   REPEATS          timed passes per engine, shape and round (default 5; the median is used)
# Shapes: 8 sequences of 168 tokens, and 16 ragged sequences of 125-250 tokens (lengths drawn
# between T/2 and T by each engine with its own seed: compare tokens/s, not milliseconds).
# esm.cpp is slow where it has no AVX-512/AMX/NEON kernels (an AVX2-only CPU): there, one round
# with REPEATS=1 already takes many minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
bin="${VIRNUCPRO:-target/release/virnucpro}"
dtype="${VIRNUCPRO_DTYPE:-auto}"
venv="${ESMCPP_VENV:-$HOME/.cache/virnucpro-esmcpp/venv}"
model="${ESMCPP_MODEL:-$HOME/.cache/virnucpro-esmcpp/esm2-650m}"
threads="${THREADS:-$(nproc)}"
repeats="${REPEATS:-5}"
modes="${ESMCPP_MODES:-fp32 int8}"
[ -x "$bin" ] || { echo "esmcpp-bench: no $bin; run cargo build --release first" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  echo "esmcpp-bench: installing esm-cpp 0.2.1 into $venv" >&2
  if [ -n "${ESMCPP_WHEELS:-}" ]; then
    # Offline: the wheels given, plus what the system Python has (safetensors).
    python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --no-index --find-links "$ESMCPP_WHEELS" "esm-cpp==0.2.1" "numpy<2"
    "$venv/bin/python" -c "import safetensors" 2> /dev/null ||
      "$venv/bin/pip" install -q --no-index --find-links "$ESMCPP_WHEELS" safetensors
  else
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "esm-cpp==0.2.1" "numpy<2" safetensors
  fi
fi
py="$venv/bin/python"
if [ ! -f "$model/model.safetensors" ]; then
  echo "esmcpp-bench: writing a random-weight ESM2-650M checkpoint to $model (2.6 GB)" >&2
  "$py" scripts/esmcpp_bench.py write "$model.tmp"
  rm -rf "$model"; mv "$model.tmp" "$model"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
grep -m1 "model name" /proc/cpuinfo >&2 || true
echo "ISA flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8|asimd|bf16|i8mm)$' | tr '\n' ' ')" >&2
echo "threads: $threads; virnucpro: $("$bin" --version)" >&2
for r in $(seq "$rounds"); do
  for spec in "8x168:" "16x250:--ragged"; do
    shape="${spec%%:*}"; ragged="${spec#*:}"
    "$bin" bench --model "$model" --device cpu --dtype "$dtype" -j "$threads" --shapes "$shape" \
      $ragged --warmup 1 --repeats "$repeats" --json -q \
      | "$py" -c 'import json,sys; d=json.load(sys.stdin); r=d["rows"][0]
print(json.dumps({"engine": "virnucpro " + d["dtype"], "batch": r["batch"], "len": r["len"],
  "ragged": r["ragged"], "real_tokens": r["real_tokens"], "tokens_per_s": r["tokens_per_s"]}))' >>"$log"
    for mode in $modes; do
      # esm.cpp sizes its own thread pool from ESM_NUM_THREADS (not OpenMP's variable), at the
      # first load; without it, it takes every physical core. The summary checks the size.
      ESM_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" "$py" scripts/esmcpp_bench.py esmcpp "$model" --mode "$mode" \
        --shapes "$shape" $ragged --warmup 1 --repeats "$repeats" >>"$log"
    done
    # Each row as it comes: a run cut short still shows what it measured.
    tail -n $((1 + $(echo $modes | wc -w))) "$log" >&2
  done
  echo "esmcpp-bench: round $r of $rounds done" >&2
done
"$py" - "$log" "$threads" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
wrong = {r["threads"] for r in rows if "threads" in r and r["threads"] != int(sys.argv[2])}
if wrong:
    sys.exit(f"esmcpp-bench: esm.cpp ran {sorted(wrong)} threads, not {sys.argv[2]}: no ratio")
by = {}
for r in rows:
    by.setdefault((r["batch"], r["len"], r["ragged"]), {}).setdefault(r["engine"], []).append(r["tokens_per_s"])
for (b, n, rag), engines in sorted(by.items()):
    shape = f"{b}x{n}" + (" ragged" if rag else "")
    med = {e: statistics.median(v) for e, v in engines.items()}
    best_cpp = max((v, e) for e, v in med.items() if e.startswith("esm.cpp"))
    ours = max((v, e) for e, v in med.items() if e.startswith("virnucpro"))
    print(f"{shape}:")
    for e, v in sorted(med.items()):
        print(f"  {e:<28} {v:10.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in engines[e])})")
    print(f"  ratio {ours[1]} / {best_cpp[1]}: {ours[0] / best_cpp[0]:.2f}")
EOF
