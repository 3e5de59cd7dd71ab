//! Embedding models: loading from resolved files ([`load_from_files`], or random weights of a real
//! shape: [`random_embedding_model`]) and length-sorted token-budget batching
//! ([`embed_sequences`], and its halves [`tokenize_sequences`] / [`Tokenized::enqueue`] for a
//! caller that overlaps host and device work).
//!
//! A model directory or Hub ID becomes [`ModelFiles`] in `virnucpro-assets`, which also loads a
//! model by name (`virnucpro_assets::load`); the `embed` command that writes embedding files is
//! `virnucpro_core::embed`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::config::{ModelConfig, ModelFamily};
use crate::device::{cpu_model_options, device_name, resolve_dtype, DTypeSpec};
use crate::dnabert::{DnaBert, DnaBertConfig, DnaBertTokenizer};
use crate::esm::{Esm, EsmConfig, TokenDropout};
use crate::files::ModelFiles;
use crate::options::ModelOptions;
use crate::tokenize::EsmTokenizer;
use crate::weights::{Checkpoint, RandomWeights};
use crate::{Encoder, SeqTokenizer, TokenBatch};

/// Default `--batch-tokens` on the CPU (padded tokens per forward pass).
pub const DEFAULT_BATCH_TOKENS_CPU: usize = 4096;
/// Default `--batch-tokens` on a GPU.
///
/// 28 672: larger batches keep the GEMMs busier, while GPU memory stays within the models'
/// weights + 2 GiB, the target of docs/BENCHMARKS.md ("predict (GPU)" has the measured speed and
/// peak memory at this and other budgets); a larger budget gains little and needs more memory.
pub const DEFAULT_BATCH_TOKENS_GPU: usize = 28672;

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
    /// The options it was built with (its encoder keeps its own copy).
    pub options: ModelOptions,
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

/// Options of model loading ([`load_from_files`], [`random_embedding_model`]) beyond device and
/// dtype.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// ESM token-dropout rescaling (ignored for DNABERT).
    pub esm_token_dropout: TokenDropout,
    /// Kept by the model: kernel choices, profiler, test hooks.
    pub model: ModelOptions,
}

/// Builds the model from already resolved files.
pub fn load_from_files(
    files: ModelFiles,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    let family = files.family();
    let model_options = cpu_model_options(dtype, device, &options.model)?;
    let options = &LoadOptions {
        model: model_options,
        ..options.clone()
    };
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
                let encoder = Esm::load(vb, cfg, drop, &options.model)?;
                (
                    Box::new(encoder),
                    Box::new(tokenizer),
                    format!("{}; token-dropout scaling {why}", esm_summary(cfg)),
                )
            }
            ModelConfig::DnaBert(cfg) => {
                let limit = dnabert_token_limit(&files.tokenizer, cfg);
                let tokenizer = DnaBertTokenizer::from_file(&files.tokenizer, limit)?;
                let encoder = DnaBert::load(vb, cfg, &options.model)?;
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
        options: options.model.clone(),
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
/// nothing). ESM kinds use the built-in ESM2 alphabet; `dnabert-s` needs `tokenizer_from`, the
/// files of a DNABERT model whose `tokenizer.json` it uses (`virnucpro_assets::load` takes a
/// directory or Hub ID instead).
pub fn random_embedding_model(
    kind: RandomModel,
    tokenizer_from: Option<&ModelFiles>,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    const SEED: u64 = 0x5eed;
    let source = format!("random-weights:{kind}");
    let model_options = cpu_model_options(dtype, device, &options.model)?;
    let options = &LoadOptions {
        model: model_options,
        ..options.clone()
    };
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
                let enc = Esm::load(vb, &cfg, drop, &options.model)?;
                (
                    ModelFamily::Esm,
                    Box::new(enc),
                    Box::new(EsmTokenizer::esm2()),
                    dtype,
                )
            }
            RandomModel::DnaBertS => {
                let Some(files) = tokenizer_from else {
                    bail!(
                        "--random-weights dnabert-s needs a tokenizer: pass --model with a DNABERT \
                         directory or Hub ID (its tokenizer.json is used, its weights are not)"
                    );
                };
                if files.family() != ModelFamily::DnaBert {
                    bail!(
                        "--random-weights dnabert-s: `{}` is a {} model, not DNABERT",
                        files.source,
                        files.family()
                    );
                }
                let cfg: DnaBertConfig =
                    serde_json::from_str(DNABERT_S_CONFIG).context("built-in DNABERT-S config")?;
                let dtype = resolve_dtype(dtype, ModelFamily::DnaBert, device);
                let vb = RandomWeights { seed: SEED }.into_var_builder(dtype, device);
                let enc = DnaBert::load(vb, &cfg, &options.model)?;
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
        options: options.model.clone(),
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
/// the budget gets a batch of its own. A batch never holds rows on both sides of
/// [`virnucpro_kernels::LONG_ROWS`] (the attention kernel is chosen by a batch's longest row: a
/// row's result must not depend on its neighbours). Returns indices into `lengths`.
pub fn plan_batches(lengths: &[usize], budget: usize) -> Vec<Vec<usize>> {
    let long = |len: usize| len >= virnucpro_kernels::LONG_ROWS;
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let longest = current.first().map_or(lengths[i], |&f| lengths[f]);
        let crosses = long(longest) != long(lengths[i]);
        if !current.is_empty() && ((current.len() + 1) * longest > budget || crosses) {
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
/// GPU: enqueued; the device may still be computing them).
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
    tokenize_sequences(model, items, batch_tokens)?
        .enqueue(model, on_batch)?
        .finish()
}

/// The first half of [`embed_sequences`]: tokenizes `items` and enqueues every batch; on a GPU
/// the pooled rows may still be on the device (or not computed yet) when it returns.
/// [`PendingEmbeddings::finish`] copies them out. In between, the host can prepare and enqueue
/// other work instead of leaving the device idle while it waits.
pub fn enqueue_sequences<'a, I, S>(
    model: &'a EmbeddingModel,
    items: &[(I, S)],
    batch_tokens: usize,
) -> anyhow::Result<PendingEmbeddings<'a>>
where
    I: AsRef<str> + Sync,
    S: AsRef<[u8]> + Sync,
{
    tokenize_sequences(model, items, batch_tokens)?.enqueue(model, &mut |_| {})
}

/// Sequences tokenized and grouped into padded batches, ready for the device: the host half of
/// [`enqueue_sequences`]. Made apart from the enqueueing so that a caller can tokenize the next
/// piece of work while the device still computes the previous one (`predict` does).
#[derive(Debug)]
pub struct Tokenized {
    /// Record IDs in input order, for error messages.
    ids: Vec<String>,
    /// Each batch: the input indices of its rows and their padded token ids.
    batches: Vec<(Vec<usize>, TokenBatch)>,
    stats: EmbedStats,
    started: Instant,
}

impl Tokenized {
    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Tokenizes `items` (`(id, sequence)`) on the host (rayon) and plans length-sorted batches of at
/// most `batch_tokens` padded tokens ([`plan_batches`]); nothing touches the device. Errors name
/// the record that could not be tokenized (e.g. DNA longer than the tokenizer's limit).
pub fn tokenize_sequences<I, S>(
    model: &EmbeddingModel,
    items: &[(I, S)],
    batch_tokens: usize,
) -> anyhow::Result<Tokenized>
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
    let pad = model.tokenizer.pad_id();
    let batches: Vec<(Vec<usize>, TokenBatch)> = plan_batches(&lengths, batch_tokens)
        .into_par_iter()
        .map(|rows| {
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
            (rows, batch)
        })
        .collect();
    Ok(Tokenized {
        ids: items
            .iter()
            .map(|(id, _)| id.as_ref().to_string())
            .collect(),
        batches,
        stats: EmbedStats {
            sequences: items.len(),
            tokens: lengths.iter().sum(),
            ..Default::default()
        },
        started,
    })
}

/// Whether an error is the device running out of memory (typed, see
/// [`virnucpro_kernels::KernelError`]).
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    virnucpro_kernels::anyhow_is_out_of_memory(e)
}

/// A batch the encoder could not run: the context of the error, so that a caller can tell an
/// out-of-memory failure (and which sequences it was on) from others.
#[derive(Debug, Clone)]
pub struct BatchFailure {
    pub model: ModelFamily,
    pub rows: usize,
    pub max_len: usize,
    /// ID of the batch's first (longest) sequence.
    pub first: String,
    pub out_of_memory: bool,
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} forward pass failed on a batch of {} sequences of up to {} tokens (first: `{}`)",
            self.model, self.rows, self.max_len, self.first
        )?;
        if self.out_of_memory {
            write!(f, "; out of memory: lower --batch-tokens")?;
        }
        Ok(())
    }
}

/// Pooled rows that may wait on the device before they are copied to the host. Copying waits
/// for everything enqueued so far, so it is done once, at the end, in one piece: copying batch
/// by batch left the device idle between the copies. The cap only bounds device memory for huge
/// `embed` inputs (65,536 rows of 1280 f32 are 335 MB); a `predict` work unit never reaches it.
const PENDING_ROWS: usize = 1 << 16;

impl Tokenized {
    /// Launches the encoder on every batch (pooled rows converted to f32, left on the device) and
    /// calls `on_batch` with the number of sequences enqueued after each. Does not wait for the
    /// device. `model` must be the one that tokenized.
    pub fn enqueue<'a>(
        self,
        model: &'a EmbeddingModel,
        on_batch: &mut dyn FnMut(usize),
    ) -> anyhow::Result<PendingEmbeddings<'a>> {
        self.enqueue_capped(model, on_batch, PENDING_ROWS)
    }

    /// [`Tokenized::enqueue`] collecting the pending rows to the host whenever `cap_rows` of them
    /// are waiting (a parameter so that tests can reach that path).
    fn enqueue_capped<'a>(
        self,
        model: &'a EmbeddingModel,
        on_batch: &mut dyn FnMut(usize),
        cap_rows: usize,
    ) -> anyhow::Result<PendingEmbeddings<'a>> {
        let hidden = model.hidden_size;
        let total = self.ids.len();
        let mut out = PendingEmbeddings {
            model,
            ids: self.ids,
            order: Vec::with_capacity(total),
            collected: Vec::new(),
            pending: Vec::new(),
            pending_rows: 0,
            stats: self.stats,
            started: self.started,
        };
        for (rows, batch) in self.batches {
            let max_len = batch.max_len;
            let pooled = model
                .encoder
                .forward_pooled(&batch)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| {
                    let failure = BatchFailure {
                        model: model.family,
                        rows: rows.len(),
                        max_len,
                        first: out.ids[rows[0]].clone(),
                        out_of_memory: false,
                    };
                    let e = anyhow::Error::from(e);
                    let failure = BatchFailure {
                        out_of_memory: is_out_of_memory(&e),
                        ..failure
                    };
                    e.context(failure)
                })?;
            if pooled.dims() != [rows.len(), hidden] {
                bail!(
                    "encoder returned shape {:?} for a batch of {} sequences, expected [{}, \
                     {hidden}]",
                    pooled.dims(),
                    rows.len(),
                    rows.len()
                );
            }
            out.stats.batches += 1;
            out.stats.padded_tokens += rows.len() * max_len;
            out.pending_rows += rows.len();
            out.order.extend_from_slice(&rows);
            out.pending.push(pooled);
            if out.pending_rows >= cap_rows {
                out.collect_pending()?;
            }
            tracing::debug!(
                "batch {}: {} sequences x {max_len} tokens ({}/{total} enqueued)",
                out.stats.batches,
                rows.len(),
                out.order.len(),
            );
            on_batch(out.order.len());
        }
        Ok(out)
    }
}

/// Embeddings being computed; see [`enqueue_sequences`]. Rows are kept in batch order (`order`):
/// first those already copied to the host (`collected`), then the pending batch tensors.
pub struct PendingEmbeddings<'a> {
    model: &'a EmbeddingModel,
    /// Record IDs in input order.
    ids: Vec<String>,
    /// Input index of each enqueued row, in batch order.
    order: Vec<usize>,
    /// The first `collected.len() / hidden` rows of `order`, on the host.
    collected: Vec<f32>,
    /// The pooled `[rows, hidden]` f32 tensors of the batches after those, on the device.
    pending: Vec<Tensor>,
    pending_rows: usize,
    stats: EmbedStats,
    started: Instant,
}

impl<'a> PendingEmbeddings<'a> {
    /// Waits for the device, copies the rows out (checking each value) and returns the embeddings
    /// in input order.
    pub fn finish(mut self) -> anyhow::Result<Embeddings> {
        if self.collected.is_empty() {
            return self.into_device_rows()?.to_host();
        }
        // Part of a huge input is already on the host: put the rows in order there; sending them
        // back would take the device memory that the cap is there to save.
        self.collect_pending()?;
        let hidden = self.model.hidden_size;
        let mut out = vec![0f32; self.ids.len() * hidden];
        for (row, &i) in self.collected.chunks_exact(hidden).zip(&self.order) {
            out[i * hidden..(i + 1) * hidden].copy_from_slice(row);
        }
        let mut stats = self.stats;
        stats.seconds = self.started.elapsed().as_secs_f64();
        let embeddings = Tensor::from_vec(out, (self.ids.len(), hidden), &Device::Cpu)?;
        Ok(Embeddings { embeddings, stats })
    }

    /// The embeddings `[N, hidden]` f32 in input order as one tensor on the model's device,
    /// without waiting for the device: the pending batches are concatenated and put in input
    /// order there (the rows already on the host, if any, are uploaded first). Only copies: the
    /// values are those of [`PendingEmbeddings::finish`], bit for bit.
    pub fn into_device_rows(self) -> anyhow::Result<DeviceRows<'a>> {
        let model = self.model;
        let hidden = model.hidden_size;
        let device = &model.device;
        let n = self.ids.len();
        let rows = if n == 0 {
            Tensor::zeros((0, hidden), DType::F32, device)?
        } else {
            let mut parts = Vec::with_capacity(self.pending.len() + 1);
            if !self.collected.is_empty() {
                let k = self.collected.len() / hidden;
                parts.push(Tensor::from_vec(self.collected, (k, hidden), device)?);
            }
            parts.extend(self.pending);
            let in_batch_order = if parts.len() == 1 {
                parts.pop().expect("one part")
            } else {
                Tensor::cat(&parts, 0)?
            };
            drop(parts); // the batch tensors, now copied
            if self.order.iter().enumerate().all(|(j, &i)| i == j) {
                in_batch_order
            } else {
                // Row `i` of the result is row `position[i]` in batch order.
                let mut position = vec![0u32; n];
                for (j, &i) in self.order.iter().enumerate() {
                    position[i] = u32::try_from(j).context("too many sequences for one call")?;
                }
                let index = Tensor::from_vec(position, n, device)?;
                virnucpro_kernels::gather_rows(&in_batch_order, &index, &model.options.kernels)?
            }
        };
        Ok(DeviceRows {
            rows,
            stats: self.stats,
            model,
            ids: self.ids,
            started: self.started,
        })
    }

    /// Copies the pending rows to the host with one device-side concatenation and one copy,
    /// checking each value.
    fn collect_pending(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let model = self.model;
        let hidden = model.hidden_size;
        let first = self.collected.len() / hidden;
        let batches = self.pending.len();
        let values = Tensor::cat(&self.pending, 0)
            .and_then(|t| t.to_device(&Device::Cpu))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| {
                format!(
                    "{} forward pass failed on one of {batches} batches of {} sequences (first: \
                     `{}`); on a GPU out of memory, lower --batch-tokens",
                    model.family, self.pending_rows, self.ids[self.order[first]]
                )
            })?;
        let order = &self.order[first..first + self.pending_rows];
        check_rows(model, &self.ids, &values, order.iter().copied())?;
        self.collected.extend_from_slice(&values);
        self.pending.clear();
        self.pending_rows = 0;
        Ok(())
    }
}

/// Embeddings in input order on the model's device; see [`PendingEmbeddings::into_device_rows`].
/// Nothing has been checked yet: [`DeviceRows::to_host`] or [`DeviceRows::check_finite`] does.
pub struct DeviceRows<'a> {
    /// `[N, hidden]` f32, row `i` = input `i`.
    pub rows: Tensor,
    pub stats: EmbedStats,
    model: &'a EmbeddingModel,
    ids: Vec<String>,
    started: Instant,
}

impl DeviceRows<'_> {
    /// Record IDs in input order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Waits for the device, copies the rows to the host in one piece and checks each value.
    pub fn to_host(self) -> anyhow::Result<Embeddings> {
        let values = self.host_values()?;
        let mut stats = self.stats;
        stats.seconds = self.started.elapsed().as_secs_f64();
        let embeddings = Tensor::from_vec(
            values,
            (self.ids.len(), self.model.hidden_size),
            &Device::Cpu,
        )?;
        Ok(Embeddings { embeddings, stats })
    }

    /// Copies the rows to the host and fails naming the first record with a non-finite value
    /// (for diagnosis, after a check on the device found one).
    pub fn check_finite(&self) -> anyhow::Result<()> {
        self.host_values().map(drop)
    }

    fn host_values(&self) -> anyhow::Result<Vec<f32>> {
        let model = self.model;
        let (n, hidden) = (self.ids.len(), model.hidden_size);
        if self.rows.dims() != [n, hidden] {
            bail!(
                "encoder returned {:?} values for {n} sequences, expected [{n}, {hidden}]",
                self.rows.dims()
            );
        }
        let values = self
            .rows
            .to_device(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| {
                format!(
                    "{} forward pass failed on one of {} batches of {n} sequences (first: `{}`); \
                     on a GPU out of memory, lower --batch-tokens",
                    model.family,
                    self.stats.batches,
                    self.ids.first().map_or("", String::as_str)
                )
            })?;
        check_rows(model, &self.ids, &values, 0..n)?;
        Ok(values)
    }
}

/// Checks every row of `values` (`[rows, hidden]`, row `j` = input `order[j]`) for non-finite
/// numbers, naming the record of the first one found.
fn check_rows(
    model: &EmbeddingModel,
    ids: &[String],
    values: &[f32],
    order: impl IntoIterator<Item = usize>,
) -> anyhow::Result<()> {
    let hidden = model.hidden_size;
    let mut rows = 0;
    for (row, i) in values.chunks(hidden).zip(order) {
        rows += 1;
        if row.len() != hidden {
            bail!(
                "encoder returned {} values per sequence, expected {hidden}",
                row.len()
            );
        }
        if row.iter().any(|x| !x.is_finite()) {
            bail!(
                "{} gave non-finite values for record `{}` in {:?}; half precision can overflow: \
                 rerun with --dtype bf16 or --dtype f32",
                model.source,
                ids[i],
                model.dtype
            );
        }
    }
    if rows * hidden != values.len() {
        bail!(
            "encoder returned {} values for {rows} sequences of {hidden}",
            values.len()
        );
    }
    Ok(())
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

    #[test]
    fn batches_never_straddle_the_long_row_boundary() {
        let long = virnucpro_kernels::LONG_ROWS;
        let lengths = [long + 10, long - 1, long, 20, long - 200];
        let batches = plan_batches(&lengths, 1 << 20);
        assert_eq!(batches, vec![vec![0, 2], vec![1, 4, 3]]);
    }

    /// The oracle's ESM2 model (its files as `virnucpro-assets` resolves a directory) and its
    /// protein records (one FASTA record per `>`, line breaks removed).
    fn oracle_esm2() -> (EmbeddingModel, Vec<(String, Vec<u8>)>) {
        oracle_esm2_as(DTypeSpec::F32)
    }

    /// The records of a FASTA file of the oracle's inputs (line breaks removed).
    fn oracle_records(name: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/oracle/inputs");
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        text.split('>')
            .skip(1)
            .map(|record| {
                let (header, seq) = record.split_once('\n').unwrap_or((record, ""));
                let id = header.split_whitespace().next().unwrap_or("").to_string();
                let seq: String = seq.split_whitespace().collect();
                (id, seq.into_bytes())
            })
            .collect()
    }

    /// A model of the oracle (`tests/data/oracle/NAME`: its weights file and tokenizer) in
    /// `dtype`, with the records of `records`.
    fn oracle_model(
        name: &str,
        weights: (crate::weights::WeightsFormat, &str),
        tokenizer: &str,
        records: &str,
        dtype: DTypeSpec,
    ) -> (EmbeddingModel, Vec<(String, Vec<u8>)>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/oracle");
        let model_dir = dir.join(name);
        let config_path = model_dir.join("config.json");
        let files = ModelFiles {
            source: model_dir.display().to_string(),
            config: ModelConfig::from_file(&config_path).unwrap(),
            config_path,
            weights: crate::weights::WeightFiles {
                format: weights.0,
                files: vec![model_dir.join(weights.1)],
            },
            tokenizer: model_dir.join(tokenizer),
        };
        let model = load_from_files(files, &Device::Cpu, dtype, &LoadOptions::default()).unwrap();
        (model, oracle_records(records))
    }

    /// The oracle's DNABERT-S model (PyTorch zip weights) and its DNA records.
    fn oracle_dnabert_as(dtype: DTypeSpec) -> (EmbeddingModel, Vec<(String, Vec<u8>)>) {
        use crate::weights::WeightsFormat::Pytorch;
        let weights = (Pytorch, "pytorch_model.bin");
        oracle_model("dnabert", weights, "tokenizer.json", "dna.fa", dtype)
    }

    fn oracle_esm2_as(dtype: DTypeSpec) -> (EmbeddingModel, Vec<(String, Vec<u8>)>) {
        use crate::weights::WeightsFormat::Safetensors;
        let weights = (Safetensors, "model.safetensors");
        oracle_model("esm2", weights, "vocab.txt", "proteins.fa", dtype)
    }

    /// `--dtype int8` and `bf16` (CPU): every embedding within cosine 0.999 of f32's (the gate),
    /// for both families, and the int8 / bf16 linears really ran (the embeddings differ from
    /// f32's). bf16 runs the path of this CPU: AMX where it has it, else the emulation.
    #[test]
    fn int8_and_bf16_embeddings_match_f32_on_the_oracle_models() {
        use virnucpro_kernels::CpuMatmul;
        type Loader = fn(DTypeSpec) -> (EmbeddingModel, Vec<(String, Vec<u8>)>);
        for (name, load) in [
            ("esm2", oracle_esm2_as as Loader),
            ("dnabert", oracle_dnabert_as as Loader),
        ] {
            let (f32_model, recs) = load(DTypeSpec::F32);
            assert_eq!(f32_model.options.kernels.cpu_matmul, CpuMatmul::F32);
            let want = embed_sequences(&f32_model, &recs, 4096).unwrap();
            let want = want.embeddings.to_vec2::<f32>().unwrap();
            for (spec, path) in [
                (DTypeSpec::Int8, CpuMatmul::Int8),
                (DTypeSpec::Bf16, CpuMatmul::Bf16),
            ] {
                if path == CpuMatmul::Int8 && !virnucpro_kernels::cpu_int8_isa().simd {
                    continue; // int8 keeps f32 on this CPU
                }
                let (model, _) = load(spec);
                assert_eq!(model.options.kernels.cpu_matmul, path);
                let got = embed_sequences(&model, &recs, 4096).unwrap();
                let got = got.embeddings.to_vec2::<f32>().unwrap();
                assert_ne!(want, got, "{name}: {spec} ran as f32");
                let mut min_cos = 1f64;
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum();
                    let na: f64 = a.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
                    let nb: f64 = b.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
                    let cos = dot / (na * nb);
                    assert!(cos >= 0.999, "{name} {spec} record {i}: cosine {cos}");
                    min_cos = min_cos.min(cos);
                }
                eprintln!("{name}: {spec} vs f32, lowest cosine {min_cos:.6}");
            }
        }
    }

    fn bits(t: &Tensor) -> Vec<Vec<u32>> {
        t.to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// `into_device_rows` and `finish` give the rows in input order, bit for bit the same with
    /// and without the pending-rows cap (rows collected to the host on the way).
    /// The CPU packs a batch's sequences end to end (`layers::Packing`): a sequence's embedding
    /// must not depend on the batch it came in, padding included, to the bit.
    #[test]
    fn packed_cpu_rows_do_not_depend_on_their_batch() {
        type Loader = fn(DTypeSpec) -> (EmbeddingModel, Vec<(String, Vec<u8>)>);
        for (name, load) in [
            ("esm2", oracle_esm2_as as Loader),
            ("dnabert", oracle_dnabert_as as Loader),
        ] {
            let (m, recs) = load(DTypeSpec::F32);
            let lengths: Vec<usize> = recs.iter().map(|(_, s)| s.len()).collect();
            assert!(
                lengths.iter().min() < lengths.iter().max(),
                "{name}: the records should differ in length"
            );
            let alone: Vec<Vec<u32>> = recs
                .iter()
                .map(|r| {
                    let e = embed_sequences(&m, std::slice::from_ref(r), 1).unwrap();
                    bits(&e.embeddings).remove(0)
                })
                .collect();
            let together = embed_sequences(&m, &recs, usize::MAX).unwrap();
            assert!(
                together.stats.batches < recs.len(),
                "{name}: no batch held two"
            );
            assert_eq!(bits(&together.embeddings), alone, "{name}");
        }
    }

    #[test]
    fn rows_come_back_in_input_order_whatever_the_cap() {
        let (m, recs) = oracle_esm2();
        assert!(recs.len() >= 5);
        let hidden = m.hidden_size;
        // Each record alone: with a budget of 1 token every record also gets a batch of its own
        // below, so those rows must be identical.
        let alone: Vec<Vec<u32>> = recs
            .iter()
            .map(|r| {
                let e = embed_sequences(&m, std::slice::from_ref(r), 1).unwrap();
                bits(&e.embeddings).remove(0)
            })
            .collect();
        for budget in [1, 300, usize::MAX] {
            let enqueue = |cap: usize| {
                tokenize_sequences(&m, &recs, budget)
                    .unwrap()
                    .enqueue_capped(&m, &mut |_| {}, cap)
                    .unwrap()
            };
            let reference = enqueue(usize::MAX).into_device_rows().unwrap();
            assert_eq!(reference.rows.dims(), &[recs.len(), hidden]);
            reference.check_finite().unwrap();
            let reference = reference.to_host().unwrap();
            assert_eq!(reference.stats.sequences, recs.len());
            let want = bits(&reference.embeddings);
            if budget == 1 {
                assert_eq!(reference.stats.batches, recs.len());
            }
            // Packed on the CPU: a row's bits do not depend on its batch.
            assert_eq!(want, alone, "budget {budget}");
            for cap in [1, 2, 3] {
                let pending = enqueue(cap);
                if pending.stats.batches > cap {
                    assert!(!pending.collected.is_empty(), "cap {cap} not reached");
                }
                let on_device = pending.into_device_rows().unwrap().to_host().unwrap();
                assert_eq!(
                    bits(&on_device.embeddings),
                    want,
                    "budget {budget} cap {cap}"
                );
                let finished = enqueue(cap).finish().unwrap();
                assert_eq!(
                    bits(&finished.embeddings),
                    want,
                    "budget {budget} cap {cap}"
                );
                assert_eq!(finished.stats.batches, reference.stats.batches);
            }
        }

        let empty: Vec<(String, Vec<u8>)> = Vec::new();
        let rows = tokenize_sequences(&m, &empty, 100)
            .unwrap()
            .enqueue(&m, &mut |_| {})
            .unwrap()
            .into_device_rows()
            .unwrap();
        assert_eq!(rows.rows.dims(), &[0, hidden]);
        rows.check_finite().unwrap();
        assert_eq!(rows.to_host().unwrap().embeddings.dims(), &[0, hidden]);
    }

    #[test]
    fn non_finite_rows_name_the_record() {
        let (m, recs) = oracle_esm2();
        let ids: Vec<String> = recs.iter().map(|(id, _)| id.clone()).collect();
        let hidden = m.hidden_size;
        let mut values = vec![0.5f32; 3 * hidden];
        values[hidden + 7] = f32::NAN;
        let err = check_rows(&m, &ids, &values, [4, 2, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{}`", ids[2])), "{err}");
        assert!(err.contains("--dtype f32"), "{err}");
        check_rows(&m, &ids, &values[..hidden], [1]).unwrap();
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
