//! Options given to a model when it is built, kept by the model and read by its layers: the
//! kernel choices ([`KernelOptions`]), a profiler, and a test hook that makes large linear calls
//! fail as out of memory. Nothing here is process-wide: two models in one process may differ.

use std::sync::Arc;

use candle_core::{Device, Result};
use virnucpro_kernels::{GemmFallback, KernelError, KernelOptions};

use crate::profile::Profiler;

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
