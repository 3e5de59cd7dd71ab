//! Options given to a model when it is built, kept by the model and read by its layers: the
//! kernel choices ([`KernelOptions`]), a profiler, how much activation memory a sub-batch may
//! take, and a test hook that makes large linear calls fail as out of memory. Nothing here is
//! process-wide: two models in one process may differ.

use std::sync::Arc;

use candle_core::{Device, Result};
use virnucpro_kernels::{GemmFallback, KernelError, KernelOptions};

use crate::profile::Profiler;

/// The sub-batch budget to try ([`ModelOptions::sub_batch_bytes`], `VIRNUCPRO_SUB_BATCH_MIB=512`):
/// 512 MiB. Off by default until its speed has been measured on a GPU (the run's speed must not
/// drop; a whole batch of 14 336 tokens, which is what such sub-batches are for the encoder, ran
/// 557 frames/s against 584 at 28 672). ESM2-3B in f16 keeps ~30 KiB per
/// padded token alive (a layer's input, its layer norm and the `[tokens, 10240]` GELU
/// intermediate): sub-batches of at most 17 476 tokens, so a batch of the GPU's default budget
/// (28 672) runs as two of at most 14 336 tokens, ~420 MiB of activations instead of ~840.
/// ESM2-650M (15 KiB per token) runs such a batch whole, as before: its smaller GEMMs lose more
/// to fewer rows, and it needs no memory back. DNABERT-S (21 KiB per token, mostly its
/// `[tokens, 6144]` gated projection) runs it as two, ~290 MiB instead of ~590, which would
/// otherwise be the peak of a run with ESM2-3B. Sub-batches of a larger batch are as even as
/// whole sequences allow, so the GEMMs mostly keep 8 192 rows or more (the rows the cuBLASLt
/// algorithms were chosen at); a smaller budget would save more memory but risk the speed that
/// smaller batches lose.
pub const SUGGESTED_SUB_BATCH_BYTES: usize = 512 << 20;

/// What a model is built with besides its weights and config.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    pub kernels: KernelOptions,
    /// Times the encoders' sections into this profiler (the caller keeps a clone and takes the
    /// report); `None`: no timing, no extra synchronization.
    pub profiler: Option<Arc<Profiler>>,
    /// Test hook: a linear layer called on more than this many rows (tokens) fails with
    /// [`KernelError::OutOfMemory`], as a device out of memory would, so that the back-off can
    /// be tested on any machine (`VIRNUCPRO_TEST_OOM_TOKENS`).
    pub inject_oom_above_rows: Option<usize>,
    /// The activation memory a padded batch (the GPU's layout) may keep alive at once, as the
    /// encoder estimates it per padded token ([`ModelContext::sub_batch_tokens`]). A larger
    /// batch runs through the encoder as sub-batches of whole sequences within it (a longer
    /// sequence alone), one after the other, their pooled rows concatenated: the activations
    /// alive at once are one sub-batch's, whatever `--batch-tokens`, and the bits are the whole
    /// batch's ([`crate::TokenBatch::by_sub_batches`]). `None`: the whole batch at once. The
    /// CPU's packed rows are never split.
    pub sub_batch_bytes: Option<usize>,
}

/// What the layers of one model share: its options, and what it learned at run time about
/// cuBLASLt ([`GemmFallback`]). Made once per model by [`ModelContext::new`].
#[derive(Debug, Default)]
pub struct ModelContext {
    pub options: ModelOptions,
    pub gemm: GemmFallback,
}

/// The handle every layer of a model keeps.
pub type Ctx = Arc<ModelContext>;

impl ModelContext {
    pub fn new(options: &ModelOptions) -> Ctx {
        Arc::new(ModelContext {
            options: options.clone(),
            gemm: GemmFallback::default(),
        })
    }

    pub fn kernels(&self) -> &KernelOptions {
        &self.options.kernels
    }

    /// The most padded tokens a sub-batch may hold ([`ModelOptions::sub_batch_bytes`]) for an
    /// encoder whose layers keep `bytes_per_token` bytes of activations alive per padded token
    /// at their peak.
    pub fn sub_batch_tokens(&self, bytes_per_token: usize) -> Option<usize> {
        self.options
            .sub_batch_bytes
            .map(|bytes| bytes / bytes_per_token.max(1))
    }

    /// Runs `f`, timed under `name` when the model has a profiler.
    pub fn section<T>(
        &self,
        name: &'static str,
        dev: &Device,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match &self.options.profiler {
            Some(p) => p.section(name, dev, f),
            None => f(),
        }
    }

    /// The injected out-of-memory of [`ModelOptions::inject_oom_above_rows`] for a linear call
    /// on `rows` rows.
    pub(crate) fn injected_oom(&self, rows: usize) -> Result<()> {
        match self.options.inject_oom_above_rows {
            Some(limit) if rows > limit => Err(KernelError::out_of_memory(format!(
                "injected: a linear layer on {rows} rows, over the test limit of {limit}"
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_oom_is_typed_and_only_above_the_limit() {
        let ctx = ModelContext::new(&ModelOptions {
            inject_oom_above_rows: Some(10),
            ..ModelOptions::default()
        });
        assert!(ctx.injected_oom(10).is_ok());
        let e = ctx.injected_oom(11).unwrap_err();
        assert!(virnucpro_kernels::is_out_of_memory(&e), "{e}");
        assert!(ModelContext::new(&ModelOptions::default())
            .injected_oom(usize::MAX)
            .is_ok());
    }
}
