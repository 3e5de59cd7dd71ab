//! Embedding: model loading ([`load_embedding_model`]), length-sorted token-budget batching
//! ([`embed_sequences`]) and the `embed` command ([`run`]).
//!
//! The predict pipeline uses the first two:
//!
//! ```no_run
//! use virnucpro::device::{DTypeSpec, select_device, DeviceSpec};
//! use virnucpro::pipeline::embed::{embed_sequences, load_embedding_model, LoadOptions};
//!
//! let device = select_device(DeviceSpec::Auto)?;
//! let model = load_embedding_model("Synthyra/FastESM2_650", &device, DTypeSpec::Auto,
//!                                  &LoadOptions::default())?;
//! let proteins = vec![("p1", b"MKV".to_vec()), ("p2", b"MSTNPKPQRK".to_vec())];
//! let out = embed_sequences(&model, &proteins, model.default_batch_tokens())?;
//! assert_eq!(out.embeddings.dims(), &[2, model.hidden_size]); // f32, on the CPU, input order
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::device::{device_name, resolve_dtype, select_device, DTypeSpec, DeviceSpec};
use crate::input::fasta::RecordReader;
use crate::models::config::{ModelConfig, ModelFamily};
use crate::models::dnabert::{DnaBert, DnaBertConfig, DnaBertTokenizer};
use crate::models::esm::{Esm, EsmConfig, TokenDropout};
use crate::models::hub::{resolve_model, ModelFiles};
use crate::models::tokenize::EsmTokenizer;
use crate::models::weights::{Checkpoint, RandomWeights};
use crate::models::{Encoder, SeqTokenizer, TokenBatch};
use crate::output::atomic::AtomicFile;

/// Default `--batch-tokens` on the CPU (padded tokens per forward pass).
pub const DEFAULT_BATCH_TOKENS_CPU: usize = 4096;
/// Default `--batch-tokens` on a GPU.
pub const DEFAULT_BATCH_TOKENS_GPU: usize = 16384;

/// A loaded embedding model: encoder + tokenizer + what the output files record about it.
pub struct EmbeddingModel {
    pub encoder: Box<dyn Encoder>,
    pub tokenizer: Box<dyn SeqTokenizer>,
    pub family: ModelFamily,
    pub hidden_size: usize,
    /// The directory or Hub ID it came from (or `random-weights:<kind>`).
    pub source: String,
    /// The pooling rule, as written to embedding files.
    pub pooling: String,
    pub device: Device,
    /// Compute dtype (embeddings are always returned in f32).
    pub dtype: DType,
}

impl fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("family", &self.family)
            .field("hidden_size", &self.hidden_size)
            .field("source", &self.source)
            .field("device", &device_name(&self.device))
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// A token budget that suits the device.
    pub fn default_batch_tokens(&self) -> usize {
        if self.device.is_cpu() {
            DEFAULT_BATCH_TOKENS_CPU
        } else {
            DEFAULT_BATCH_TOKENS_GPU
        }
    }
}

/// Options of [`load_embedding_model`] beyond device and dtype.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// ESM token-dropout rescaling (ignored for DNABERT).
    pub esm_token_dropout: TokenDropout,
}

/// Loads an embedding model from a local directory or a Hugging Face Hub ID (see
/// [`crate::models::hub`]): architecture from `config.json`, weights from safetensors or
/// `pytorch_model.bin`, tokenizer from `vocab.txt` (ESM) or `tokenizer.json` (DNABERT).
///
/// `dtype` `Auto` resolves per family and device ([`crate::device::resolve_dtype`]).
pub fn load_embedding_model(
    spec: &str,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    let files = resolve_model(spec)?;
    load_from_files(files, device, dtype, options)
        .with_context(|| format!("cannot load model `{spec}`"))
}

/// Builds the model from already resolved files.
pub fn load_from_files(
    files: ModelFiles,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    let family = files.family();
    let dtype = resolve_dtype(dtype, family, device);
    let config_origin = files.config_path.display().to_string();
    let checkpoint = Checkpoint::open(&files.weights, family.checkpoint_prefix(), &config_origin)?;
    let vb = checkpoint.into_var_builder(dtype, device);
    let started = Instant::now();
    let (encoder, tokenizer, summary): (Box<dyn Encoder>, Box<dyn SeqTokenizer>, String) =
        match &files.config {
            ModelConfig::Esm(cfg) => {
                let (drop, why) = options.esm_token_dropout.resolve(cfg);
                let tokenizer = EsmTokenizer::from_file(&files.tokenizer)?;
                check_esm_vocab(cfg, &tokenizer, &files.tokenizer)?;
                let encoder = Esm::load(vb, cfg, drop)?;
                (
                    Box::new(encoder),
                    Box::new(tokenizer),
                    format!("{}; token-dropout scaling {why}", esm_summary(cfg)),
                )
            }
            ModelConfig::DnaBert(cfg) => {
                let limit = dnabert_token_limit(&files.tokenizer, cfg);
                let tokenizer = DnaBertTokenizer::from_file(&files.tokenizer, limit)?;
                let encoder = DnaBert::load(vb, cfg)?;
                (Box::new(encoder), Box::new(tokenizer), "DNABERT".into())
            }
        };
    tracing::info!(
        "model {} ({summary}) from {} on {} in {:?}, loaded in {:.1}s",
        files.source,
        files.weights.describe(),
        device_name(device),
        dtype,
        started.elapsed().as_secs_f64()
    );
    Ok(EmbeddingModel {
        hidden_size: encoder.hidden_size(),
        encoder,
        tokenizer,
        family,
        source: files.source,
        pooling: family.pooling().to_string(),
        device: device.clone(),
        dtype,
    })
}

fn esm_summary(cfg: &EsmConfig) -> String {
    format!(
        "{}: {} layers, hidden {}, {} heads",
        cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
    )
}

/// The vocabulary must fit the embedding table, or lookups would go out of range.
fn check_esm_vocab(cfg: &EsmConfig, tok: &EsmTokenizer, path: &Path) -> anyhow::Result<()> {
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "{} has {} tokens but config.json says vocab_size {}; the tokenizer does not belong \
             to this model",
            path.display(),
            tok.vocab_size(),
            cfg.vocab_size
        );
    }
    Ok(())
}

/// Real-size architectures with random weights, for benchmarks only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomModel {
    /// ESM2-650M / FastESM2_650 shape: 33 layers, hidden 1280, 20 heads, FFN 5120.
    Esm2_650m,
    /// ESM2-3B shape: 36 layers, hidden 2560, 40 heads, FFN 10240.
    Esm2_3b,
    /// DNABERT-S shape: 12 layers, hidden 768, 12 heads, intermediate 3072, vocab 4096.
    DnaBertS,
}

impl FromStr for RandomModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "esm2-650m" => Ok(Self::Esm2_650m),
            "esm2-3b" => Ok(Self::Esm2_3b),
            "dnabert-s" => Ok(Self::DnaBertS),
            _ => Err(format!("`{s}` is not one of esm2-650m, esm2-3b, dnabert-s")),
        }
    }
}

impl fmt::Display for RandomModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Esm2_650m => "esm2-650m",
            Self::Esm2_3b => "esm2-3b",
            Self::DnaBertS => "dnabert-s",
        })
    }
}

/// `config.json` of zhihan1996/DNABERT-S, for the random-weight model.
pub const DNABERT_S_CONFIG: &str = r#"{
  "model_type": "bert", "architectures": ["BertModel"], "alibi_starting_size": 512,
  "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
  "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
  "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "num_attention_heads": 12,
  "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
  "type_vocab_size": 2, "vocab_size": 4096
}"#;

/// A model of real shape with seeded random weights (benchmarks only: its embeddings mean
/// nothing). ESM kinds use the built-in ESM2 alphabet; `dnabert-s` needs `tokenizer_from`, a
/// DNABERT model directory or Hub ID whose `tokenizer.json` it uses.
pub fn random_embedding_model(
    kind: RandomModel,
    tokenizer_from: Option<&str>,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    const SEED: u64 = 0x5eed;
    let source = format!("random-weights:{kind}");
    let (family, encoder, tokenizer, dtype): (_, Box<dyn Encoder>, Box<dyn SeqTokenizer>, _) =
        match kind {
            RandomModel::Esm2_650m | RandomModel::Esm2_3b => {
                let cfg = if kind == RandomModel::Esm2_650m {
                    EsmConfig::esm2_650m()
                } else {
                    EsmConfig::esm2_3b()
                };
                let dtype = resolve_dtype(dtype, ModelFamily::Esm, device);
                let vb = RandomWeights { seed: SEED }.into_var_builder(dtype, device);
                let (drop, why) = options.esm_token_dropout.resolve(&cfg);
                tracing::info!(
                    "{source}: {}; token-dropout scaling {why}",
                    esm_summary(&cfg)
                );
                let enc = Esm::load(vb, &cfg, drop)?;
                (
                    ModelFamily::Esm,
                    Box::new(enc),
                    Box::new(EsmTokenizer::esm2()),
                    dtype,
                )
            }
            RandomModel::DnaBertS => {
                let Some(spec) = tokenizer_from else {
                    bail!(
                        "--random-weights dnabert-s needs a tokenizer: pass --model with a DNABERT \
                         directory or Hub ID (its tokenizer.json is used, its weights are not)"
                    );
                };
                let files = resolve_model(spec)?;
                if files.family() != ModelFamily::DnaBert {
                    bail!(
                        "--random-weights dnabert-s: `{spec}` is a {} model, not DNABERT",
                        files.family()
                    );
                }
                let cfg: DnaBertConfig =
                    serde_json::from_str(DNABERT_S_CONFIG).context("built-in DNABERT-S config")?;
                let dtype = resolve_dtype(dtype, ModelFamily::DnaBert, device);
                let vb = RandomWeights { seed: SEED }.into_var_builder(dtype, device);
                let enc = DnaBert::load(vb, &cfg)?;
                let limit = dnabert_token_limit(&files.tokenizer, &cfg);
                let tok = DnaBertTokenizer::from_file(&files.tokenizer, limit)?;
                (ModelFamily::DnaBert, Box::new(enc), Box::new(tok), dtype)
            }
        };
    Ok(EmbeddingModel {
        hidden_size: encoder.hidden_size(),
        encoder,
        tokenizer,
        family,
        source,
        pooling: family.pooling().to_string(),
        device: device.clone(),
        dtype,
    })
}

/// The longest DNABERT input in tokens: the tokenizer's `model_max_length` (512 for DNABERT-S)
/// from `tokenizer_config.json` beside `tokenizer.json`, else the config's
/// `max_position_embeddings`. (Transformers stores a huge sentinel when there is no limit.)
fn dnabert_token_limit(tokenizer_json: &Path, cfg: &DnaBertConfig) -> usize {
    #[derive(serde::Deserialize)]
    struct TokenizerConfig {
        model_max_length: Option<f64>,
    }
    let from_tokenizer = tokenizer_json
        .parent()
        .map(|dir| dir.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<TokenizerConfig>(&text).ok())
        .and_then(|c| c.model_max_length)
        .filter(|n| (1.0..1e7).contains(n))
        .map(|n| n as usize);
    from_tokenizer.unwrap_or(cfg.max_position_embeddings)
}

/// Counters of one [`embed_sequences`] run.
#[derive(Debug, Clone, Default)]
pub struct EmbedStats {
    pub sequences: usize,
    /// Real tokens, special tokens included.
    pub tokens: usize,
    /// Tokens computed, padding included (`sum of batch * max_len`).
    pub padded_tokens: usize,
    pub batches: usize,
    pub seconds: f64,
}

/// Embeddings in input order plus counters.
#[derive(Debug)]
pub struct Embeddings {
    /// `[N, hidden]` f32 on the CPU, row `i` = input `i`.
    pub embeddings: Tensor,
    pub stats: EmbedStats,
}

/// Groups rows into batches under a padded-token budget: `lengths` are visited longest first
/// (ties in input order) and a batch grows while `rows * longest <= budget`; a row longer than
/// the budget gets a batch of its own. Returns indices into `lengths`.
pub fn plan_batches(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let longest = current.first().map_or(lengths[i], |&f| lengths[f]);
        if !current.is_empty() && (current.len() + 1) * longest > budget {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Tokenizes `items` (`(id, sequence)`), runs them through the encoder in length-sorted batches
/// of at most `batch_tokens` padded tokens, and returns the pooled embeddings in input order.
///
/// Batching never changes a result: padding is masked out of attention and pooling. Errors name
/// the record that could not be tokenized (e.g. DNA longer than the tokenizer's limit).
pub fn embed_sequences<I, S>(
    model: &EmbeddingModel,
    items: &[(I, S)],
    batch_tokens: usize,
) -> anyhow::Result<Embeddings>
where
    I: AsRef<str> + Sync,
    S: AsRef<[u8]> + Sync,
{
    embed_sequences_with(model, items, batch_tokens, &mut |_| {})
}

/// [`embed_sequences`] with a callback after each batch, given the number of sequences done (on a
/// GPU: enqueued; up to `PENDING_BATCHES` batches may still be computing).
pub fn embed_sequences_with<I, S>(
    model: &EmbeddingModel,
    items: &[(I, S)],
    batch_tokens: usize,
    on_batch: &mut dyn FnMut(usize),
) -> anyhow::Result<Embeddings>
where
    I: AsRef<str> + Sync,
    S: AsRef<[u8]> + Sync,
{
    enqueue_sequences_with(model, items, batch_tokens, on_batch)?.finish()
}

/// The first half of [`embed_sequences`]: tokenizes `items` and enqueues every batch; on a GPU
/// the pooled rows of the last batches may still be on the device (or not computed yet) when it
/// returns. [`PendingEmbeddings::finish`] copies them out. In between, the host can prepare and
/// enqueue other work (`predict` tokenizes and enqueues the protein model while the device runs
/// the nucleotide model) instead of leaving the device idle while it waits.
pub fn enqueue_sequences<'a, I, S>(
    model: &'a EmbeddingModel,
    items: &'a [(I, S)],
    batch_tokens: usize,
) -> anyhow::Result<PendingEmbeddings<'a, I, S>>
where
    I: AsRef<str> + Sync,
    S: AsRef<[u8]> + Sync,
{
    enqueue_sequences_with(model, items, batch_tokens, &mut |_| {})
}

/// Embeddings whose last batches may still be on the device; see [`enqueue_sequences`].
pub struct PendingEmbeddings<'a, I, S> {
    model: &'a EmbeddingModel,
    items: &'a [(I, S)],
    pending: Vec<(Vec<usize>, Tensor)>,
    out: Vec<f32>,
    stats: EmbedStats,
    started: Instant,
}

impl<I: AsRef<str>, S> PendingEmbeddings<'_, I, S> {
    /// Waits for the device, copies the remaining pooled rows out (checking each value) and
    /// returns the embeddings in input order.
    pub fn finish(mut self) -> anyhow::Result<Embeddings> {
        collect_pooled(self.model, self.items, &mut self.pending, &mut self.out)?;
        let mut stats = self.stats;
        stats.seconds = self.started.elapsed().as_secs_f64();
        let hidden = self.model.hidden_size;
        let embeddings = Tensor::from_vec(self.out, (self.items.len(), hidden), &Device::Cpu)?;
        Ok(Embeddings { embeddings, stats })
    }
}

fn enqueue_sequences_with<'a, I, S>(
    model: &'a EmbeddingModel,
    items: &'a [(I, S)],
    batch_tokens: usize,
    on_batch: &mut dyn FnMut(usize),
) -> anyhow::Result<PendingEmbeddings<'a, I, S>>
where
    I: AsRef<str> + Sync,
    S: AsRef<[u8]> + Sync,
{
    let started = Instant::now();
    if batch_tokens == 0 {
        bail!("the token budget per batch must be positive");
    }
    let tokenized = items
        .par_iter()
        .enumerate()
        .map(|(i, (id, seq))| {
            let id = id.as_ref();
            model
                .tokenizer
                .encode(id, seq.as_ref())
                .with_context(|| format!("cannot tokenize record `{id}` (#{} of the input)", i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lengths: Vec<usize> = tokenized.iter().map(Vec::len).collect();
    let hidden = model.hidden_size;
    let mut out = vec![0f32; items.len() * hidden];
    let mut stats = EmbedStats {
        sequences: items.len(),
        tokens: lengths.iter().sum(),
        ..Default::default()
    };
    let pad = model.tokenizer.pad_id();
    let mut done = 0;
    let mut pending: Vec<(Vec<usize>, Tensor)> = Vec::new();
    for rows in plan_batches(&lengths, batch_tokens) {
        let max_len = rows.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * max_len);
        for &i in &rows {
            ids.extend_from_slice(&tokenized[i]);
            ids.resize(ids.len() + max_len - lengths[i], pad);
        }
        let batch = TokenBatch {
            ids,
            lengths: rows.iter().map(|&i| lengths[i]).collect(),
            max_len,
        };
        let pooled = model
            .encoder
            .forward_pooled(&batch)
            .and_then(|t| t.to_dtype(DType::F32))
            .with_context(|| {
                format!(
                    "{} forward pass failed on a batch of {} sequences of up to {max_len} tokens \
                     (first: `{}`); on a GPU out of memory, lower --batch-tokens",
                    model.family,
                    rows.len(),
                    items[rows[0]].0.as_ref()
                )
            })?;
        // On a GPU the pooled rows stay on the device for a few batches: the host prepares the
        // next batches while the device computes, instead of waiting at every batch.
        let on_cpu = pooled.device().is_cpu();
        pending.push((rows.clone(), pooled));
        if on_cpu || pending.len() >= PENDING_BATCHES {
            collect_pooled(model, items, &mut pending, &mut out)?;
        }
        stats.batches += 1;
        stats.padded_tokens += rows.len() * max_len;
        done += rows.len();
        tracing::debug!(
            "batch {}: {} sequences x {max_len} tokens ({done}/{} done)",
            stats.batches,
            rows.len(),
            items.len()
        );
        on_batch(done);
    }
    Ok(PendingEmbeddings {
        model,
        items,
        pending,
        out,
        stats,
        started,
    })
}

/// Batches whose pooled rows may wait on the device before they are copied out. Copying them
/// waits for everything enqueued so far, which leaves the device idle until the host has
/// enqueued the next batch (run 30's trace: 2% of a `predict` run in such gaps at 8 batches); the
/// rows are small (a batch of ~100 proteins is 0.5 MB of f32), so they are collected rarely.
const PENDING_BATCHES: usize = 64;

/// Copies pooled batches to the host rows they belong to, checking each value.
fn collect_pooled<I, S>(
    model: &EmbeddingModel,
    items: &[(I, S)],
    pending: &mut Vec<(Vec<usize>, Tensor)>,
    out: &mut [f32],
) -> anyhow::Result<()>
where
    I: AsRef<str>,
{
    let hidden = model.hidden_size;
    for (rows, pooled) in pending.drain(..) {
        let pooled = pooled
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_vec2::<f32>())
            .with_context(|| {
                format!(
                    "{} forward pass failed on a batch of {} sequences (first: `{}`); on a GPU \
                     out of memory, lower --batch-tokens",
                    model.family,
                    rows.len(),
                    items[rows[0]].0.as_ref()
                )
            })?;
        for (row, &i) in pooled.iter().zip(&rows) {
            if row.iter().any(|x| !x.is_finite()) {
                bail!(
                    "{} gave non-finite values for record `{}` in {:?}; half precision can \
                     overflow: rerun with --dtype bf16 or --dtype f32",
                    model.source,
                    items[i].0.as_ref(),
                    model.dtype
                );
            }
            if row.len() != hidden {
                bail!(
                    "encoder returned {} values per sequence, expected {hidden}",
                    row.len()
                );
            }
            out[i * hidden..(i + 1) * hidden].copy_from_slice(row);
        }
    }
    Ok(())
}

/// Everything the `embed` command needs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    /// Model directory or Hub ID; optional with `random_weights` of an ESM kind.
    pub model: Option<String>,
    /// FASTA files (`-` = standard input), read in order.
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Padded tokens per batch; `None`: per device.
    pub batch_tokens: Option<usize>,
    pub esm_token_dropout: TokenDropout,
    pub random_weights: Option<RandomModel>,
}

/// Runs `embed`: reads the FASTA inputs, embeds every record as given (no chunking), writes
/// `embeddings` `[N, hidden]` f32 with metadata `ids`, `model`, `pooling` (docs/FORMATS.md).
pub fn run(req: &EmbedRequest) -> anyhow::Result<EmbedStats> {
    check_output_path(&req.out)?;
    if req.inputs.is_empty() {
        bail!("no input files given");
    }
    // The whole input is held: `embed` is for protein/frame sets, not genomes.
    let records: Vec<(String, Vec<u8>)> = RecordReader::new(&req.inputs)?
        .map(|r| r.map(|r| (r.id, r.seq)))
        .collect::<Result<_, _>>()?;
    if records.is_empty() {
        bail!(
            "no sequences to embed: {} hold(s) no FASTA records",
            req.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let device = select_device(req.device)?;
    let options = LoadOptions {
        esm_token_dropout: req.esm_token_dropout,
    };
    let model = match (req.random_weights, &req.model) {
        (Some(kind), spec) => {
            tracing::warn!(
                "--random-weights {kind}: benchmark mode, the embeddings are meaningless"
            );
            random_embedding_model(kind, spec.as_deref(), &device, req.dtype, &options)?
        }
        (None, Some(spec)) => load_embedding_model(spec, &device, req.dtype, &options)?,
        (None, None) => bail!("--model is required (a model directory or a Hugging Face Hub ID)"),
    };
    warn_on_alphabet_mismatch(&model, &records);
    let budget = req
        .batch_tokens
        .unwrap_or_else(|| model.default_batch_tokens());

    let progress = progress_bar(records.len() as u64);
    let result = embed_sequences_with(&model, &records, budget, &mut |done| {
        if let Some(p) = &progress {
            p.set_position(done as u64);
        }
    });
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    let out = result?;

    let ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
    write_embeddings(
        &req.out,
        &out.embeddings,
        &ids,
        &model.source,
        &model.pooling,
    )?;
    let s = &out.stats;
    tracing::info!(
        "embedded {} sequences ({} tokens, {} batches) in {:.2}s: {:.1} sequences/s, {:.0} tokens/s -> {}",
        s.sequences,
        s.tokens,
        s.batches,
        s.seconds,
        s.sequences as f64 / s.seconds.max(1e-9),
        s.tokens as f64 / s.seconds.max(1e-9),
        req.out.display()
    );
    Ok(out.stats)
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || !tracing::enabled!(tracing::Level::INFO) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} sequences ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// A DNA file given to a protein model (or the reverse) still runs; say so.
fn warn_on_alphabet_mismatch(model: &EmbeddingModel, records: &[(String, Vec<u8>)]) {
    let (mut nucleotide, mut total) = (0usize, 0usize);
    for (_, seq) in records.iter().take(1000) {
        total += seq.len();
        nucleotide += seq
            .iter()
            .filter(|b| {
                matches!(
                    b.to_ascii_uppercase(),
                    b'A' | b'C' | b'G' | b'T' | b'U' | b'N'
                )
            })
            .count();
    }
    if total == 0 {
        return;
    }
    let looks_dna = nucleotide as f64 / total as f64 > 0.95;
    match (model.family, looks_dna) {
        (ModelFamily::Esm, true) => tracing::warn!(
            "the input looks like nucleotides but {} is a protein model; translate first \
             (`virnucpro frames`) or use a DNABERT model",
            model.source
        ),
        (ModelFamily::DnaBert, false) => tracing::warn!(
            "the input does not look like DNA but {} is a nucleotide model",
            model.source
        ),
        _ => {}
    }
}

/// Fails early, before any model is loaded, when the output cannot be written.
fn check_output_path(out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!(
            "--out {} is a directory; give a file name such as embeddings.safetensors",
            out.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Writes an embeddings file (docs/FORMATS.md) atomically.
pub fn write_embeddings(
    out: &Path,
    embeddings: &Tensor,
    ids: &[&str],
    model: &str,
    pooling: &str,
) -> anyhow::Result<()> {
    let embeddings = embeddings
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .contiguous()?;
    let metadata = HashMap::from([
        ("ids".to_string(), serde_json::to_string(ids)?),
        ("model".to_string(), model.to_string()),
        ("pooling".to_string(), pooling.to_string()),
    ]);
    let bytes = safetensors::serialize([("embeddings", &embeddings)], Some(metadata))
        .context("cannot serialize embeddings")?;
    let mut file =
        AtomicFile::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.commit())
        .with_context(|| format!("cannot write {}", out.display()))
}

/// An embeddings file read back (docs/FORMATS.md).
#[derive(Debug)]
pub struct EmbeddingFile {
    /// `[N, hidden]` f32 on the CPU.
    pub embeddings: Tensor,
    pub ids: Vec<String>,
    /// `model` metadata (absent in some reference files).
    pub model: Option<String>,
    pub pooling: Option<String>,
}

/// Reads an embeddings file written by `embed` (or a reference file of the same layout).
pub fn read_embeddings(path: &Path) -> anyhow::Result<EmbeddingFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read embeddings {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let view = st
        .tensor("embeddings")
        .with_context(|| format!("{} has no `embeddings` tensor", path.display()))?;
    let embeddings =
        candle_core::safetensors::Load::load(&view, &Device::Cpu)?.to_dtype(DType::F32)?;
    let ids: Vec<String> = match meta.get("ids") {
        Some(s) => serde_json::from_str(s)
            .with_context(|| format!("{}: metadata `ids` is not a JSON list", path.display()))?,
        None => bail!("{} has no `ids` metadata", path.display()),
    };
    if embeddings.dims().first() != Some(&ids.len()) {
        bail!(
            "{}: {} ids for embeddings of shape {:?}",
            path.display(),
            ids.len(),
            embeddings.dims()
        );
    }
    Ok(EmbeddingFile {
        embeddings,
        ids,
        model: meta.get("model").cloned(),
        pooling: meta.get("pooling").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_budget_and_cover_all() {
        let lengths = [5, 100, 7, 7, 50, 3, 200];
        let batches = plan_batches(&lengths, 120);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let max = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(b.len() == 1 || b.len() * max <= 120, "{b:?}");
        }
        // Longest first; the one over budget alone.
        assert_eq!(batches[0], vec![6]);
        assert_eq!(batches[1], vec![1]);
    }

    proptest::proptest! {
        #[test]
        fn batch_plan_properties(
            lengths in proptest::collection::vec(1usize..600, 0..60),
            budget in 1usize..3000,
        ) {
            let batches = plan_batches(&lengths, budget);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort();
            proptest::prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            let mut prev_max = usize::MAX;
            for b in &batches {
                let max = b.iter().map(|&i| lengths[i]).max().unwrap();
                proptest::prop_assert!(b.len() == 1 || b.len() * max <= budget);
                proptest::prop_assert!(max <= prev_max, "longest first");
                prev_max = max;
            }
        }
    }
}
