#!/usr/bin/env bash
# Throughput of `virnucpro frames` on a 200 Mb random genome FASTA (release build).
#
#   scripts/bench-frames.sh [CHUNK_LEN ...]      (default: 300 60)
#
# The genome is generated once by examples/gen_genome.rs into $BENCH_DIR (default
# /tmp/virnucpro-bench, never committed). Each chunk length runs 3 times; MB/s = input file
# bytes / wall seconds. The input is read once beforehand so that the page cache, not the disk,
# feeds the run; outputs go to $BENCH_DIR (a real disk: the final fsync is part of the time).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin virnucpro --example gen_genome
# The target directory as cargo resolved it (a wrapper may redirect CARGO_TARGET_DIR).
target=$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
bin="$target/release/virnucpro"

work=${BENCH_DIR:-/tmp/virnucpro-bench}
mkdir -p "$work"
genome="$work/genome200.fa"
[ -s "$genome" ] || "$target/release/examples/gen_genome" "$genome" 200 1
bytes=$(stat -c %s "$genome")
cat "$genome" > /dev/null

echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "input:   $genome ($bytes bytes)"
lens=("$@")
[ ${#lens[@]} -gt 0 ] || lens=(300 60)
for len in "${lens[@]}"; do
    for run in 1 2 3; do
        out="$work/out$len"
        rm -rf "$out"
        start=$(date +%s.%N)
        /usr/bin/time -f "%M %U %S" -o "$work/time" "$bin" -q frames "$genome" --chunk-len "$len" --out-dir "$out"
        end=$(date +%s.%N)
        read -r rss user sys < "$work/time"
        awk -v b="$bytes" -v s="$start" -v e="$end" -v l="$len" -v r="$run" -v rss="$rss" -v cpu="$(awk -v u="$user" -v k="$sys" 'BEGIN { print u + k }')" \
            'BEGIN { printf "chunk-len %s run %s: %.2f s wall, %.0f MB/s, %.2f CPU s (user+sys), max RSS %.0f MB\n", l, r, e - s, b / (e - s) / 1e6, cpu, rss / 1024 }'
    done
    echo "output:  $(du -sh "$out" | cut -f1) in $out"
done
