#!/usr/bin/env bash
# The pinned Snakemake (+ the Slurm executor plugin) of .ci/snakemake-requirements.txt in a
# virtual environment, created once and reused while the pins stay the same. Prints the
# environment's bin directory (put it first on PATH); progress goes to stderr.
#
#   PATH="$(scripts/snakemake-venv.sh):$PATH" VIRNUCPRO_REQUIRE_SNAKEMAKE=1 cargo test --test integration workflow::
#
# VIRNUCPRO_SNAKEMAKE_VENV: where (default ~/.cache/virnucpro-ci/snakemake-HASH, HASH from the
# pins). Needs python3 >= 3.11 (Snakemake 9) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
req=.ci/snakemake-requirements.txt
hash=$(sha256sum "$req" | cut -c1-12)
venv="${VIRNUCPRO_SNAKEMAKE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/virnucpro-ci/snakemake-$hash}"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "snakemake-venv.sh: Snakemake 9 needs Python 3.11 or newer; python3 is $(python3 --version 2>&1)" >&2
  exit 1
fi
mkdir -p "$(dirname "$venv")"
# One creator at a time (CI runs of several work trees share the cache).
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/snakemake" ] && [ -e "$venv/.complete" ]; then
  echo "snakemake-venv.sh: reusing $venv" >&2
else
  echo "snakemake-venv.sh: creating $venv (pip, about a minute)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  touch "$venv/.complete"
fi
"$venv/bin/snakemake" --version >/dev/null
echo "$venv/bin"
