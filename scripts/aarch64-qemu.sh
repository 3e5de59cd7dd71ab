#!/usr/bin/env bash
# The CPU paths on aarch64 (GB10/Grace, Graviton, Apple M under Linux) without an ARM machine:
# cross-builds the unit tests of the kernels and models crates for aarch64-unknown-linux-gnu and
# runs them under qemu-user, once per emulated CPU. They cover the bf16 linear layer (our BFMMLA
# kernel where the emulated CPU has FEAT_BF16, else the emulation), the int8 linear layer
# (rten-gemm's NEON, dot-product or i8mm kernel, whichever the emulated CPU has), the packed CPU
# batches and the f32 oracle parity of ESM2 and DNABERT-S.
#
#   scripts/aarch64-qemu.sh [CPU...]     # default: max cortex-a72
#   GATE=1 scripts/aarch64-qemu.sh ...   # also the bf16 gate: `predict --dtype bf16` on the
#                                        # oracle against the original pipeline, per CPU
#
# `max` has every extension qemu emulates (dot product, i8mm, bf16); `cortex-a72` has plain NEON
# only, so the int8 layer takes rten-gemm's NEON kernel and bf16 is emulated there. Needs rustup and, where missing,
# installs Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (apt-get, as root
# or through sudo). Not part of CI: on 2 cores the cross build takes 15-20 minutes and the tests
# run about ten times slower than natively.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
cpus=("$@")
[ ${#cpus[@]} -gt 0 ] || cpus=(max cortex-a72)

rustup target list --installed | grep -qx "$target" || rustup target add "$target"
missing=()
command -v aarch64-linux-gnu-gcc > /dev/null || missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
    echo "aarch64-qemu: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# The linker and C compiler for crates with C parts (the cc crate reads CC_<target>).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

tests=(-p virnucpro-kernels -p virnucpro-models --lib)
cargo test --locked --release --target "$target" "${tests[@]}" --no-run
for cpu in "${cpus[@]}"; do
    echo "== qemu-aarch64 -cpu $cpu" >&2
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
        cargo test --locked --release --target "$target" "${tests[@]}"
done

[ "${GATE:-0}" = 1 ] || exit 0
# The gate of `--dtype bf16` (docs/ARCHITECTURE.md, "CPU matrix kernels"): on `max` the BFMMLA
# kernel, elsewhere the emulation; scores within 5e-3 of the original pipeline, no call changed.
cargo build --locked --release --target "$target" --bin virnucpro
bin="target/$target/release/virnucpro"
o=tests/data/oracle
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for cpu in "${cpus[@]}"; do
    for esm in fastesm esm2; do
        qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$bin" predict "$o/inputs/genomes.fa" \
            --chunk-len 60 --dnabert "$o/dnabert" --esm "$o/$esm" --device cpu \
            --classifier "$o/classifier/model_full.pth" --out-dir "$tmp/$cpu-$esm" \
            --dtype bf16 2>&1 | grep -o "F32 with bf16 linear layers ([^)]*)" | head -n 1
        python3 - "$tmp/$cpu-$esm/prediction_results.txt" "$o/e2e_$esm/prediction_results.txt" \
            "$cpu $esm" <<'PY'
import sys
rows = lambda p: [l.rstrip("\n").split("\t") for l in open(p)]
got, want = rows(sys.argv[1]), rows(sys.argv[2])
assert len(got) == len(want), f"{len(got)} rows, the original has {len(want)}"
worst = max(abs(float(a[i]) - float(b[i])) for a, b in zip(got[1:], want[1:]) for i in (2, 3))
changed = sum(a[1] != b[1] for a, b in zip(got[1:], want[1:]))
verdict = "passes" if worst <= 5e-3 and changed == 0 else "FAILS"
print(f"{sys.argv[3]}: max score difference {worst:.3e}, calls changed {changed}: {verdict} the gate")
sys.exit(verdict != "passes")
PY
    done
done
