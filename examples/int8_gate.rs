//! The CPU int8 path (`--dtype int8`) against f32 on random weights of the real shapes
//! (ESM2-650M / FastESM2_650 and DNABERT-S): each record's embedding cosine to f32's and the
//! largest difference relative to the row's norm. docs/BENCHMARKS.md ("CPU int8") quotes it.
//!
//! ```text
//! cargo run --release --example kmer_tokenizer -- tests/data/oracle/dnabert /tmp/kmer
//! cargo run --release --example int8_gate -- /tmp/kmer [RECORDS]
//! ```
//!
//! The DNABERT directory gives the tokenizer only (its weights are not read). The records are
//! random: proteins of 120-250 residues, DNA of 300-500 bases, from a fixed seed.

use anyhow::{bail, Context};
use candle_core::Device;
use virnucpro_models::device::DTypeSpec;
use virnucpro_models::embed::{embed_sequences, random_embedding_model, LoadOptions, RandomModel};

/// A small deterministic generator (SplitMix64), so that every run embeds the same records.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn records(
        &mut self,
        n: usize,
        alphabet: &[u8],
        len: (usize, usize),
    ) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let l = len.0 + self.below(len.1 - len.0 + 1);
                let seq = (0..l)
                    .map(|_| alphabet[self.below(alphabet.len())])
                    .collect();
                (format!("r{i}"), seq)
            })
            .collect()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dnabert) = args.first() else {
        bail!("usage: int8_gate DNABERT_DIR [RECORDS]");
    };
    let n: usize = match args.get(1) {
        Some(v) => v.parse().context("RECORDS must be a number")?,
        None => 16,
    };
    if !virnucpro_kernels::cpu_int8_isa().simd {
        bail!("this CPU has no SIMD int8 kernel: --dtype int8 runs as f32 here");
    }
    let files = virnucpro_assets::hub::resolve_model(dnabert)?;
    let mut rng = Rng(0x1a7e);
    let proteins = rng.records(n, b"ACDEFGHIKLMNPQRSTVWY", (120, 250));
    let dna = rng.records(n, b"ACGT", (300, 500));
    println!(
        "CPU int8 kernel: {}; {n} records per model",
        virnucpro_kernels::cpu_int8_isa().kernel
    );
    println!("| model | min cosine | mean cosine | max |diff| / |row| |");
    println!("| --- | --- | --- | --- |");
    for (kind, records, tokenizer) in [
        (RandomModel::Esm2_650m, &proteins, None),
        (RandomModel::DnaBertS, &dna, Some(&files)),
    ] {
        let load = |dtype| {
            random_embedding_model(
                kind,
                tokenizer,
                &Device::Cpu,
                dtype,
                &LoadOptions::default(),
            )
        };
        let want = embed_sequences(&load(DTypeSpec::F32)?, records, 4096)?;
        let got = embed_sequences(&load(DTypeSpec::Int8)?, records, 4096)?;
        let (want, got) = (
            want.embeddings.to_vec2::<f32>()?,
            got.embeddings.to_vec2::<f32>()?,
        );
        let (mut min_cos, mut sum_cos, mut max_rel) = (f64::MAX, 0f64, 0f64);
        for (a, b) in got.iter().zip(&want) {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            let cos = dot / (norm(a) * norm(b));
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from((x - y).abs()))
                .fold(0f64, f64::max);
            min_cos = min_cos.min(cos);
            sum_cos += cos;
            max_rel = max_rel.max(diff / norm(b));
        }
        println!(
            "| {kind} | {min_cos:.6} | {:.6} | {max_rel:.2e} |",
            sum_cos / want.len() as f64
        );
    }
    Ok(())
}
