#!/usr/bin/env bash
# The CPU paths on aarch64 (GB10/Grace, Graviton, Apple M under Linux) without an ARM machine:
# cross-builds the unit tests of the kernels and models crates for aarch64-unknown-linux-gnu and
# runs them under qemu-user, once per emulated CPU. They cover the int8 linear layer (rten-gemm's
# NEON, dot-product or i8mm kernel, whichever the emulated CPU has), the packed CPU batches and
# the f32 oracle parity of ESM2 and DNABERT-S.
#
#   scripts/aarch64-qemu.sh [CPU...]     # default: max cortex-a72
#
# `max` has every extension qemu emulates (dot product, i8mm, bf16); `cortex-a72` has plain NEON
# only, so the int8 layer takes rten-gemm's NEON kernel there. Needs rustup and, where missing,
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
