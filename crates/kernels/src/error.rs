//! The kernel errors callers act on, as types: a device out of memory (the batch is split and
//! retried) and a cuBLASLt without an algorithm for a layer (that layer uses candle's matmul).
//! Anything else is a plain error that stops the work.
//!
//! candle wraps device errors in `candle_core::Error::Cuda(Box<dyn Error>)`; the functions here
//! look through candle's wrappers (context, backtrace, path) and `anyhow`'s chain for the typed
//! cause, so no decision depends on an error's text.

use std::error::Error as StdError;

/// A kernel failure with a meaning for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The device could not allocate memory for `what`.
    #[error("out of device memory ({what})")]
    OutOfMemory { what: String },
    /// cuBLASLt proposes no algorithm for this problem on this GPU.
    #[error("cuBLASLt has no algorithm for {what}")]
    NoAlgorithm { what: String },
}

impl KernelError {
    pub fn out_of_memory(what: impl Into<String>) -> Self {
        Self::OutOfMemory { what: what.into() }
    }

    /// As a candle error (device errors travel in candle's `Cuda` variant, whatever the device).
    pub fn into_candle(self) -> candle_core::Error {
        candle_core::Error::Cuda(Box::new(self))
    }
}

impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        e.into_candle()
    }
}

/// The typed cause of `e`, looking through candle's wrappers; CUDA's and cuBLAS's allocation
/// failures count as [`KernelError::OutOfMemory`].
pub fn kernel_error(e: &candle_core::Error) -> Option<KernelError> {
    use candle_core::Error as E;
    match e {
        E::Cuda(inner) => typed_cause(inner.as_ref()),
        E::WrappedContext { wrapped, .. } => typed_cause(wrapped.as_ref()),
        E::Context { inner, .. } | E::WithBacktrace { inner, .. } | E::WithPath { inner, .. } => {
            kernel_error(inner)
        }
        _ => None,
    }
}

/// Whether `e` is a device out-of-memory failure.
pub fn is_out_of_memory(e: &candle_core::Error) -> bool {
    matches!(kernel_error(e), Some(KernelError::OutOfMemory { .. }))
}

/// [`is_out_of_memory`] for an `anyhow` error: any error of its chain.
pub fn anyhow_is_out_of_memory(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(typed_cause(c), Some(KernelError::OutOfMemory { .. })))
}

fn typed_cause(e: &(dyn StdError + 'static)) -> Option<KernelError> {
    if let Some(k) = e.downcast_ref::<KernelError>() {
        return Some(k.clone());
    }
    if let Some(c) = e.downcast_ref::<candle_core::Error>() {
        return kernel_error(c);
    }
    if let Some(k) = cuda_cause(e) {
        return Some(k);
    }
    e.source().and_then(typed_cause)
}

#[cfg(feature = "cuda")]
fn cuda_cause(e: &(dyn StdError + 'static)) -> Option<KernelError> {
    use candle_core::cuda_backend::cudarc::{cublas, cublaslt, driver};
    use candle_core::cuda_backend::CudaError;
    let driver_oom = |d: &driver::DriverError| {
        (d.0 == driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)
            .then(|| KernelError::out_of_memory(format!("{d:?}")))
    };
    if let Some(c) = e.downcast_ref::<CudaError>() {
        return match c {
            CudaError::Cuda(d) => driver_oom(d),
            CudaError::Cublas(b) => (b.0
                == cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED)
                .then(|| KernelError::out_of_memory(format!("{b:?}"))),
            _ => None,
        };
    }
    if let Some(d) = e.downcast_ref::<driver::DriverError>() {
        return driver_oom(d);
    }
    if let Some(b) = e.downcast_ref::<cublaslt::result::CublasError>() {
        return (b.0 == cublaslt::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED)
            .then(|| KernelError::out_of_memory(format!("{b:?}")));
    }
    None
}

#[cfg(not(feature = "cuda"))]
fn cuda_cause(_: &(dyn StdError + 'static)) -> Option<KernelError> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_found_through_wrappers_not_by_text() {
        let oom: candle_core::Error = KernelError::out_of_memory("test").into();
        assert!(is_out_of_memory(&oom));
        let wrapped = oom.context("layer 3").with_path("/x");
        assert!(is_out_of_memory(&wrapped));
        let any = anyhow::Error::from(wrapped).context("a batch of 4 sequences");
        assert!(anyhow_is_out_of_memory(&any));
        // A message that merely says so is not one.
        let text = candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY out of memory".into());
        assert!(!is_out_of_memory(&text));
        assert!(!anyhow_is_out_of_memory(&anyhow::anyhow!("out of memory")));
        // Nor is a missing algorithm.
        let none: candle_core::Error = KernelError::NoAlgorithm {
            what: "64x64".into(),
        }
        .into();
        assert!(!is_out_of_memory(&none));
        assert_eq!(
            kernel_error(&none),
            Some(KernelError::NoAlgorithm {
                what: "64x64".into()
            })
        );
    }
}
