//! Writes a random genome FASTA for benchmarking `virnucpro frames`:
//! `cargo run --release --example gen_genome -- OUT.fa [MEGABASES] [SEED]` (default 200 Mb).
//!
//! Contigs of 5 kb to 500 kb (uniform A/C/G/T, a few lower-case stretches and N runs, as in
//! assemblies), 60 bases per line. Deterministic for a given seed.

use std::fs::File;
use std::io::{BufWriter, Write};

/// xorshift64*: fast, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: gen_genome OUT.fa [MEGABASES (default 200)] [SEED (default 1)]");
        std::process::exit(2);
    };
    let megabases: u64 = args
        .get(1)
        .map_or(Ok(200), |s| s.parse())
        .expect("MEGABASES: a number");
    let seed: u64 = args
        .get(2)
        .map_or(Ok(1), |s| s.parse())
        .expect("SEED: a number");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);

    let total = megabases * 1_000_000;
    let mut written = 0u64;
    let mut contig = 0u64;
    let mut seq = Vec::new();
    while written < total {
        contig += 1;
        let len = (5_000 + rng.below(495_000)).min(total - written) as usize;
        seq.clear();
        while seq.len() < len {
            // 32 bases per random number.
            let mut bits = rng.next();
            for _ in 0..32 {
                seq.push(b"ACGT"[(bits & 3) as usize]);
                bits >>= 2;
            }
        }
        seq.truncate(len);
        // A lower-case (soft-masked) stretch and an N gap per contig.
        let at = rng.below(len as u64) as usize;
        seq[at..(at + 2_000).min(len)].make_ascii_lowercase();
        let at = rng.below(len as u64) as usize;
        seq[at..(at + 100).min(len)].fill(b'N');
        writeln!(out, ">contig{contig} len={len} random benchmark sequence")?;
        for line in seq.chunks(60) {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        written += len as u64;
    }
    out.flush()?;
    eprintln!("wrote {path}: {contig} contigs, {written} bases");
    Ok(())
}
