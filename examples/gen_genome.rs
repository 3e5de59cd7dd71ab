//! Writes synthetic genome FASTA for benchmarks (no Python needed):
//!
//! ```text
//! cargo run --release --example gen_genome -- OUT.fa [MEGABASES] [SEED]          # `frames`
//! cargo run --release --example gen_genome -- --coding OUT.fa [RECORDS] [SEED]   # `predict`
//! cargo run --release --example gen_genome -- --uniform OUT.fa [RECORDS] [SEED]  # CPU `predict`
//! ```
//!
//! Default mode (`scripts/bench-frames.sh`): contigs of 5 kb to 500 kb of uniform A/C/G/T, a few
//! lower-case stretches and N runs, as in assemblies, 60 bases per line; 200 Mb by default.
//!
//! `--coding` (the GPU `predict` benchmarks, `scripts/gpu-bench.sh`): RECORDS records (default
//! 4000) of 5,000 bases of random sense codons (no stop codon in the codon frame), 80 bases per
//! line, IDs `r0`, `r1`, ... Each 500-bp chunk then keeps about one open frame of 166 residues,
//! as coding sequence does (plain random DNA keeps ~0.03% of 500-bp frames): 4000 records give
//! 40,000 chunks and about 40,000 frames to score.
//!
//! `--uniform` (the CPU `predict` and journaling benchmarks): RECORDS records (default 200) of
//! 5,000 bases of uniform A/C/G/T, 60 bases per line, IDs `r0`, `r1`, ...
//!
//! Deterministic for a given seed (default 1, `--coding` 5).

use std::fs::File;
use std::io::{BufWriter, Write};

/// xorshift64*: fast, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

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

const USAGE: &str =
    "usage: gen_genome OUT.fa [MEGABASES (default 200)] [SEED (default 1)]\n       \
                     gen_genome --coding OUT.fa [RECORDS (default 4000)] [SEED (default 5)]\n       \
                     gen_genome --uniform OUT.fa [RECORDS (default 200)] [SEED (default 1)]";

fn number(args: &[String], i: usize, default: u64, what: &str) -> u64 {
    args.get(i).map_or(default, |s| {
        s.parse().unwrap_or_else(|_| {
            eprintln!("{what}: expected a number, got `{s}`\n{USAGE}");
            std::process::exit(2)
        })
    })
}

fn main() -> std::io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some(m @ ("--coding" | "--uniform")) => {
            let m = m.to_string();
            args.remove(0);
            m
        }
        _ => String::new(),
    };
    let Some(path) = args.first().cloned() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    match mode.as_str() {
        "--coding" => {
            let records = number(&args, 1, 4000, "RECORDS");
            let seed = number(&args, 2, 5, "SEED");
            coding_records(&path, records, seed)
        }
        "--uniform" => {
            let records = number(&args, 1, 200, "RECORDS");
            let seed = number(&args, 2, 1, "SEED");
            uniform_records(&path, records, seed)
        }
        _ => {
            let megabases = number(&args, 1, 200, "MEGABASES");
            let seed = number(&args, 2, 1, "SEED");
            contigs(&path, megabases, seed)
        }
    }
}

/// Records of 5,000 uniform random bases (the CPU `predict` benchmarks).
fn uniform_records(path: &str, records: u64, seed: u64) -> std::io::Result<()> {
    const LEN: usize = 5_000;
    let mut rng = Rng::new(seed);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut seq = Vec::with_capacity(LEN + 32);
    for i in 0..records {
        random_bases(&mut rng, LEN, &mut seq);
        writeln!(out, ">r{i}")?;
        for line in seq.chunks(60) {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    eprintln!(
        "wrote {path}: {records} records of {LEN} uniform random bases ({} bases)",
        records * LEN as u64
    );
    Ok(())
}

/// `len` uniform random bases into `seq` (replacing its content), 32 per random number.
fn random_bases(rng: &mut Rng, len: usize, seq: &mut Vec<u8>) {
    seq.clear();
    while seq.len() < len {
        let mut bits = rng.next();
        for _ in 0..32 {
            seq.push(b"ACGT"[(bits & 3) as usize]);
            bits >>= 2;
        }
    }
    seq.truncate(len);
}

/// Random contigs with soft-masked stretches and N gaps (`virnucpro frames` benchmarks).
fn contigs(path: &str, megabases: u64, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let total = megabases * 1_000_000;
    let mut written = 0u64;
    let mut contig = 0u64;
    let mut seq = Vec::new();
    while written < total {
        contig += 1;
        let len = (5_000 + rng.below(495_000)).min(total - written) as usize;
        random_bases(&mut rng, len, &mut seq);
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

/// Records of random sense codons (`virnucpro predict` benchmarks on the GPU).
fn coding_records(path: &str, records: u64, seed: u64) -> std::io::Result<()> {
    const LEN: usize = 5_000;
    let mut sense = Vec::with_capacity(61);
    for a in b"ACGT" {
        for b in b"ACGT" {
            for c in b"ACGT" {
                let codon = [*a, *b, *c];
                if !matches!(&codon, b"TAA" | b"TAG" | b"TGA") {
                    sense.push(codon);
                }
            }
        }
    }
    let mut rng = Rng::new(seed);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut seq = Vec::with_capacity(LEN + 3);
    for i in 0..records {
        seq.clear();
        while seq.len() < LEN {
            seq.extend_from_slice(&sense[rng.below(sense.len() as u64) as usize]);
        }
        seq.truncate(LEN);
        writeln!(out, ">r{i}")?;
        for line in seq.chunks(80) {
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    eprintln!(
        "wrote {path}: {records} records of {LEN} bases of random sense codons ({} bases)",
        records * LEN as u64
    );
    Ok(())
}
