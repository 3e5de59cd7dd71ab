//! `virnucpro bench`: embedding throughput of one model on synthetic token batches.
//!
//! The model is a checkpoint (directory or Hub ID) or a real architecture with seeded random
//! weights (`esm2-650m`, `esm2-3b`, `dnabert-s`): weights do not change the time. Each batch shape
//! `B x T` is a batch of `B` rows padded to `T` tokens; rows are all `T` long, or (with
//! `ragged`) of random length in `T/2..=T`. Throughput counts real tokens only.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::device::{resolve_dtype, DTypeSpec};
use crate::kernels::{self, AttentionImpl};
use crate::models::config::ModelFamily;
use crate::models::dnabert::{DnaBert, DnaBertConfig};
use crate::models::esm::{Esm, EsmConfig};
use crate::models::weights::RandomWeights;
use crate::models::{Encoder, TokenBatch};
use crate::pipeline::embed::{load_embedding_model, LoadOptions, RandomModel, DNABERT_S_CONFIG};
use crate::pipeline::timing::{self, Timing};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `esm2-650m`, `esm2-3b`, `dnabert-s` (random weights) or a model directory / Hub ID.
    pub model: String,
    pub dtype: DTypeSpec,
    /// (batch, padded length) shapes.
    pub shapes: Vec<(usize, usize)>,
    /// Random row lengths in `T/2..=T` instead of all `T`.
    pub ragged: bool,
    pub warmup: usize,
    pub repeats: usize,
    /// Attention implementations to time (each sets the process-wide choice in turn).
    pub attention: Vec<AttentionImpl>,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub len: usize,
    pub ragged: bool,
    pub attention: AttentionImpl,
    /// Real tokens per batch (special tokens included).
    pub real_tokens: usize,
    pub time: Timing,
    pub tokens_per_s: f64,
    pub seqs_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub family: String,
    pub hidden: usize,
    pub device: String,
    pub dtype: String,
    pub rows: Vec<BenchRow>,
}

/// A model to time: the encoder plus what the synthetic batches need.
pub struct BenchModel {
    pub encoder: Box<dyn Encoder>,
    pub family: ModelFamily,
    pub dtype: DType,
    pub source: String,
    /// Token ids for synthetic rows: (first, last, pad, lowest ordinary id, vocabulary size).
    specials: (u32, u32, u32, u32, u32),
}

/// Builds the model of `spec` (a named random shape, or a checkpoint) on `device`.
pub fn build_model(spec: &str, device: &Device, dtype: DTypeSpec) -> Result<BenchModel> {
    const SEED: u64 = 0x5eed;
    // ESM alphabet: <cls>=0 <pad>=1 <eos>=2, residues from 4; DNABERT-S: [CLS]=1 [SEP]=2
    // [PAD]=3, k-mers from 5.
    let esm_ids = (0, 2, 1, 4, 24);
    match spec.parse::<RandomModel>() {
        Ok(RandomModel::Esm2_650m) | Ok(RandomModel::Esm2_3b) => {
            let cfg = if spec.eq_ignore_ascii_case("esm2-650m") {
                EsmConfig::esm2_650m()
            } else {
                EsmConfig::esm2_3b()
            };
            let dt = resolve_dtype(dtype, ModelFamily::Esm, device);
            let vb = RandomWeights { seed: SEED }.into_var_builder(dt, device);
            // FastESM2 applies no token-dropout scaling; the time is the same either way.
            let enc = Esm::load(vb, &cfg, false)?;
            Ok(BenchModel {
                encoder: Box::new(enc),
                family: ModelFamily::Esm,
                dtype: dt,
                source: format!("random-weights:{spec}"),
                specials: esm_ids,
            })
        }
        Ok(RandomModel::DnaBertS) => {
            let cfg: DnaBertConfig =
                serde_json::from_str(DNABERT_S_CONFIG).context("built-in DNABERT-S config")?;
            let dt = resolve_dtype(dtype, ModelFamily::DnaBert, device);
            let vb = RandomWeights { seed: SEED }.into_var_builder(dt, device);
            let enc = DnaBert::load(vb, &cfg)?;
            Ok(BenchModel {
                encoder: Box::new(enc),
                family: ModelFamily::DnaBert,
                dtype: dt,
                source: "random-weights:dnabert-s".into(),
                specials: (1, 2, 3, 5, cfg.vocab_size as u32),
            })
        }
        Err(_) => {
            let m = load_embedding_model(spec, device, dtype, &LoadOptions::default())?;
            let specials = match m.family {
                ModelFamily::Esm => esm_ids,
                ModelFamily::DnaBert => (1, 2, m.tokenizer.pad_id(), 5, 4096),
            };
            Ok(BenchModel {
                encoder: m.encoder,
                family: m.family,
                dtype: m.dtype,
                source: m.source,
                specials,
            })
        }
    }
}

/// A synthetic batch: `b` rows padded to `t`, first/last special tokens, random ids between.
pub fn synthetic_batch(
    model: &BenchModel,
    b: usize,
    t: usize,
    ragged: bool,
    seed: u64,
) -> TokenBatch {
    let (first, last, pad, lo, vocab) = model.specials;
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut ids = vec![pad; b * t];
    let mut lengths = Vec::with_capacity(b);
    for row in 0..b {
        let len = if ragged && t >= 6 {
            let lo_len = t / 2;
            lo_len + (next() % (t - lo_len + 1) as u64) as usize
        } else {
            t
        }
        .max(3);
        let r = &mut ids[row * t..row * t + len];
        r[0] = first;
        r[len - 1] = last;
        for x in &mut r[1..len - 1] {
            *x = lo + (next() % (vocab - lo) as u64) as u32;
        }
        lengths.push(len);
    }
    TokenBatch {
        ids,
        lengths,
        max_len: t,
    }
}

/// Builds the model of `opts` and times it ([`run_model`]).
pub fn run(opts: &BenchOptions, device: &Device) -> Result<BenchReport> {
    let model = build_model(&opts.model, device, opts.dtype)
        .with_context(|| format!("cannot build model `{}`", opts.model))?;
    run_model(
        &model,
        device,
        &opts.shapes,
        opts.ragged,
        opts.warmup,
        opts.repeats,
        &opts.attention,
    )
}

/// Times `forward_pooled` on every shape and attention implementation (median of `repeats`
/// after `warmup` runs). Prints one line per row on stderr.
pub fn run_model(
    model: &BenchModel,
    device: &Device,
    shapes: &[(usize, usize)],
    ragged: bool,
    warmup: usize,
    repeats: usize,
    attention: &[AttentionImpl],
) -> Result<BenchReport> {
    let before = kernels::attention_impl();
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for &(b, t) in shapes {
            let batch = synthetic_batch(model, b, t, ragged, 0x9e37 + (b * 131 + t) as u64);
            let real: usize = batch.lengths.iter().sum();
            for &imp in attention {
                kernels::set_attention_impl(imp);
                let time = timing::measure(device, warmup, repeats, 1.0, || {
                    model.encoder.forward_pooled(&batch).map(drop)
                })
                .with_context(|| format!("{} at {b}x{t}, attention {imp}", model.source))?;
                let sec = time.median_ms * 1e-3;
                let row = BenchRow {
                    batch: b,
                    len: t,
                    ragged,
                    attention: imp,
                    real_tokens: real,
                    time,
                    tokens_per_s: real as f64 / sec,
                    seqs_per_s: b as f64 / sec,
                };
                eprintln!(
                    "bench {} {b}x{t}{} attention={imp}: {:.2} ms/batch, {:.0} tokens/s, {:.1} seqs/s",
                    model.source,
                    if ragged { " ragged" } else { "" },
                    time.median_ms,
                    row.tokens_per_s,
                    row.seqs_per_s
                );
                rows.push(row);
            }
        }
        Ok(())
    })();
    kernels::set_attention_impl(before);
    result?;
    if rows.is_empty() {
        bail!("nothing to measure: give at least one shape");
    }
    Ok(BenchReport {
        model: model.source.clone(),
        family: model.family.to_string(),
        hidden: model.encoder.hidden_size(),
        device: crate::device::device_name(device),
        dtype: format!("{:?}", model.dtype).to_lowercase(),
        rows,
    })
}

/// The report as an aligned table.
pub fn table(rep: &BenchReport) -> String {
    let mut s = format!(
        "model {} ({}, hidden {}) on {} in {}\n{:>10} {:>7} {:>9} {:>12} {:>14} {:>12}\n",
        rep.model,
        rep.family,
        rep.hidden,
        rep.device,
        rep.dtype,
        "B x T",
        "ragged",
        "attention",
        "ms/batch",
        "tokens/s",
        "seqs/s"
    );
    for r in &rep.rows {
        s.push_str(&format!(
            "{:>10} {:>7} {:>9} {:>12.2} {:>14.0} {:>12.1}\n",
            format!("{}x{}", r.batch, r.len),
            if r.ragged { "yes" } else { "no" },
            r.attention.to_string(),
            r.time.median_ms,
            r.tokens_per_s,
            r.seqs_per_s
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_a_tiny_model_on_cpu() -> Result<()> {
        // Whole path on the CPU with a small shape: build, batch, time, table.
        let model = BenchModel {
            encoder: Box::new(Esm::load(
                RandomWeights { seed: 1 }.into_var_builder(DType::F32, &Device::Cpu),
                &{
                    let mut c = EsmConfig::esm2_650m();
                    c.num_hidden_layers = 1;
                    c.hidden_size = 64;
                    c.num_attention_heads = 2;
                    c.intermediate_size = 128;
                    c
                },
                false,
            )?),
            family: ModelFamily::Esm,
            dtype: DType::F32,
            source: "tiny".into(),
            specials: (0, 2, 1, 4, 24),
        };
        let batch = synthetic_batch(&model, 3, 12, true, 5);
        assert_eq!(batch.ids.len(), 36);
        assert!(batch.lengths.iter().all(|&l| (6..=12).contains(&l)));
        let out = model.encoder.forward_pooled(&batch)?;
        assert_eq!(out.dims(), &[3, 64]);
        Ok(())
    }
}
