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

    /// Rows `rows` as a batch of their own, padded to this batch's `max_len`: each row is then
    /// computed exactly as in the whole batch (padded to a length of their own, the rows' last
    /// bits change on the CPU: the attention's sums run over the padded keys).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> TokenBatch {
        let l = self.max_len;
        TokenBatch {
            ids: self.ids[rows.start * l..rows.end * l].to_vec(),
            lengths: self.lengths[rows].to_vec(),
            max_len: l,
        }
    }

    /// Consecutive ranges of whole rows covering the batch, each of at most `max_tokens` padded
    /// tokens (at least one row), as few as that allows and of sizes differing by at most one
    /// row (no small last sub-batch: its GEMMs would use the GPU poorly). One range, the whole
    /// batch, when it fits or `max_tokens` is `None`.
    pub fn sub_batches(&self, max_tokens: Option<usize>) -> Vec<std::ops::Range<usize>> {
        let b = self.batch_size();
        let per = match max_tokens {
            Some(t) => (t / self.max_len.max(1)).max(1),
            None => b,
        };
        let n = b.div_ceil(per.max(1)).max(1);
        let (base, extra) = (b / n, b % n);
        let mut start = 0;
        (0..n)
            .map(|i| {
                let len = base + usize::from(i < extra);
                start += len;
                start - len..start
            })
            .collect()
    }

    /// `f` on each of [`Self::sub_batches`]`(max_tokens)`, its results concatenated along the
    /// rows (`f` on the batch itself when it fits). A sub-batch's activations are freed before
    /// the next one runs, so a device holds one sub-batch's working set plus the results, not
    /// the whole batch's working set. A row does not depend on its batch (one GEMM algorithm per
    /// layer shape, the padded length kept by [`Self::rows`]), so the results are the whole
    /// batch's to the bit; on a GPU with `KernelOptions::batch_invariant` (`predict`), that is:
    /// without it the attention's work split follows the batch, as with another
    /// `--batch-tokens`.
    pub fn by_sub_batches(
        &self,
        max_tokens: Option<usize>,
        mut f: impl FnMut(&TokenBatch) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let parts = self.sub_batches(max_tokens);
        if parts.len() <= 1 {
            return f(self);
        }
        let outs = parts
            .into_iter()
            .map(|rows| f(&self.rows(rows)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&outs, 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(b: usize, l: usize) -> TokenBatch {
        TokenBatch {
            ids: (0..(b * l) as u32).collect(),
            lengths: vec![l; b],
            max_len: l,
        }
    }

    #[test]
    fn sub_batches_cover_the_rows_evenly_within_the_budget() {
        let ten = batch(10, 100);
        assert_eq!(ten.sub_batches(None), vec![0..10]);
        assert_eq!(ten.sub_batches(Some(1000)), vec![0..10]);
        // 3 rows fit: 4 sub-batches, sizes 3 3 2 2 (not 3 3 3 1).
        assert_eq!(ten.sub_batches(Some(399)), vec![0..3, 3..6, 6..8, 8..10]);
        // A row over the budget goes alone.
        assert_eq!(ten.sub_batches(Some(50)).len(), 10);
        assert_eq!(batch(0, 0).sub_batches(Some(8)), vec![0..0]);
        for (b, l, t) in [(170, 168, 16_384), (27, 1026, 16_384), (7, 3, 5), (1, 9, 4)] {
            let parts = batch(b, l).sub_batches(Some(t));
            assert_eq!(parts.first().unwrap().start, 0);
            assert_eq!(parts.last().unwrap().end, b);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert!(parts.iter().all(|r| r.len() * l <= t || r.len() == 1));
            let per = (t / l).max(1);
            assert_eq!(parts.len(), b.div_ceil(per), "as few as fit");
        }
        // The rows' ids and lengths, padded length kept.
        let sub = batch(4, 3).rows(1..3);
        assert_eq!(sub.ids, (3..9).collect::<Vec<u32>>());
        assert_eq!((sub.lengths, sub.max_len), (vec![3, 3], 3));
    }
}
