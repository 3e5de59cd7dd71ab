#!/usr/bin/env python3
"""The synthetic genomes of the GPU `predict` benchmarks (docs/BENCHMARKS.md, runs 5-40).

N records of 5,000 random sense codons' bases (no stop codon in the codon frame, seed 5), so each
500-bp chunk keeps about one open frame of 166 residues, as coding sequence does (plain random DNA
keeps ~0.03% of 500-bp frames). 80 bases per line. The same numbers as the generator the earlier
run scripts carried inline, so results stay comparable.

Usage: python3 scripts/coding_genomes.py OUT.fa [N (default 4000)]
"""
import sys

import numpy as np


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
    rng = np.random.default_rng(5)
    b = np.frombuffer(b"ACGT", dtype=np.uint8)
    codons = np.array(np.meshgrid(b, b, b, indexing="ij")).reshape(3, -1).T
    stops = {b"TAA", b"TAG", b"TGA"}
    sense = np.array([c for c in codons if bytes(c) not in stops])
    with open(out, "w") as f:
        for i in range(n):
            seq = sense[rng.integers(0, len(sense), 1667)].reshape(-1)[:5000].tobytes().decode()
            f.write(f">r{i}\n")
            for j in range(0, 5000, 80):
                f.write(seq[j:j + 80] + "\n")


if __name__ == "__main__":
    main()
