//! Models: configuration, weights and tokenizers, one file per architecture, and how a model is
//! loaded onto a device and run over batches of sequences.
//!
//! Every embedding model is an [`Encoder`] (token batch in, mean-pooled last hidden state out)
//! paired with a [`SeqTokenizer`]; [`embed`] loads one from its [`files::ModelFiles`] and does the
//! length-sorted batching on top.
//!
//! - [`files`]: the local files of one model (config, weights, tokenizer);
//! - [`config`]: `config.json` -> architecture ([`config::ModelFamily`]);
//! - [`weights`]: safetensors / `pytorch_model.bin` -> `VarBuilder`, shape-checked;
//! - [`layers`]: shared blocks (linear, layer norm, GELU, rotary, [`layers::attention`]);
//! - [`esm`], [`dnabert`]: the encoders; [`tokenize`]: the ESM alphabet;
//! - [`classifier`]: the MLP on the concatenated embeddings ([`pickle`]: PyTorch checkpoints);
//! - [`embed`]: loading, tokenizing and batching; [`device`]: device and dtype choice;
//! - [`options`]: what a model is built with (kernel choices, profiler, test hooks);
//! - [`rng`]: the seeded PRNG (random weights, training); [`checksum`]: FNV-1a 64;
//! - [`error`]: typed errors callers can match ([`WeightsError`]: a damaged weights file).
//!
//! Where a model's files come from (a directory, the Hugging Face cache, a download) is the
//! `virnucpro-assets` crate's job, not this one's.

pub mod checksum;
pub mod classifier;
pub mod config;
pub mod device;
pub mod dnabert;
pub mod embed;
pub mod error;
pub mod esm;
pub mod files;
pub mod layers;
pub mod options;
pub mod pickle;
pub mod profile;
pub mod rng;
pub mod tokenize;
pub mod weights;

use candle_core::Tensor;

pub use config::ModelFamily;
pub use error::WeightsError;

/// Right-padded token ids of one batch.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `batch * max_len` ids, row-major; positions past a row's length hold the pad id.
    pub ids: Vec<u32>,
    /// Real token count of each row, special tokens included.
    pub lengths: Vec<usize>,
    pub max_len: usize,
}

impl TokenBatch {
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }
}

/// A transformer encoder that returns one pooled vector per sequence.
pub trait Encoder: Send + Sync {
    fn hidden_size(&self) -> usize;
    /// Mean-pooled last hidden state of every row of `batch`, `[batch, hidden]` f32, pooled by the
    /// family's rule (docs/PIPELINE.md §4); padding never changes a row's result.
    fn forward_pooled(&self, batch: &TokenBatch) -> candle_core::Result<Tensor>;
}

/// Turns one sequence into token ids, special tokens included.
pub trait SeqTokenizer: Send + Sync {
    /// `id` is only used in error messages.
    fn encode(&self, id: &str, seq: &[u8]) -> anyhow::Result<Vec<u32>>;
    fn pad_id(&self) -> u32;
    /// Number of token ids, special tokens included, where the tokenizer knows it.
    fn vocab_size(&self) -> Option<usize> {
        None
    }
}
