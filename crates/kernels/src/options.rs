//! What a caller chooses about the kernels, given when a model is built (or per call by the
//! kernels' own checks and benchmarks) instead of process-wide switches: two models in one
//! process can run with different choices, and a test sets them without touching its neighbours.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Result};

use crate::{fused_attention_available, AttentionImpl, CUDA_BUILT, FUSED_HEAD_DIM};

/// The kernel choices of one model (or one check). `Default` is what `virnucpro` runs with when
/// no option or variable says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelOptions {
    /// Which attention implementation the encoders use (`--attention`).
    pub attention: AttentionImpl,
    /// The fused ops of [`crate::linear`], [`crate::layer_norm`], ... where they apply; off:
    /// candle's ops (`VIRNUCPRO_FUSED_OPS=0`, to compare against them).
    pub fused_ops: bool,
    /// ESM's feed-forward GELU in the cuBLASLt GEMM's epilogue (f16/bf16 on CUDA;
    /// `VIRNUCPRO_GELU_EPILOGUE=0` turns it off). cuBLASLt's GELU is the tanh approximation, at
    /// most 4.7e-4 from the exact (erf) GELU, below the rounding of the f16 activations it writes
    /// over most of their range; it saves a pass over the `[tokens, 5120]` activations per layer
    /// (docs/GPU.md) and leaves the oracle score differences unchanged. Elsewhere (CPU, f32,
    /// Metal) the exact GELU runs.
    pub gelu_epilogue: bool,
    /// Makes every result independent of how rows are batched (`predict` turns it on: its
    /// resumed, split and multi-GPU runs must give the bits of one run). It turns off the one
    /// thing that depends on the whole batch, [`crate::WorkSplit`] (a few % on long rows; rows of
    /// up to 255 tokens, a 500-bp chunk's frames, are never split anyway).
    pub batch_invariant: bool,
    /// Keep cudarc's per-buffer event tracking when a CUDA device is opened
    /// (`VIRNUCPRO_EVENT_TRACKING=1`). With it, every launch records an event per buffer it
    /// touches and waits on the buffers' earlier events, on the same single stream: several
    /// driver calls per kernel on the host, and a wait before each kernel on the device.
    pub event_tracking: bool,
    /// How the linear layers of a model built on the CPU multiply; ignored on other devices.
    pub cpu_matmul: CpuMatmul,
}

/// The matrix products of a CPU model's linear layers. Embeddings, layer norms, attention and
/// the residual stream are f32 in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMatmul {
    /// candle's f32 GEMM: exact.
    #[default]
    F32,
    /// [`crate::Int8Linear`]: int8 weights per output channel, packed once at load, activations
    /// quantized per row (`--dtype int8`).
    Int8,
    /// [`crate::Bf16Linear`]: operands rounded to bf16, sums in f32; on AMX where the CPU has it
    /// (`--dtype bf16`).
    Bf16,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            attention: AttentionImpl::Auto,
            fused_ops: true,
            gelu_epilogue: true,
            batch_invariant: false,
            event_tracking: false,
            cpu_matmul: CpuMatmul::F32,
        }
    }
}

impl KernelOptions {
    /// Whether an encoder's attention should take the fused kernel, per [`Self::attention`];
    /// with `--attention fused` where the kernel cannot run, an error that says why.
    pub fn use_fused_attention(
        &self,
        dtype: DType,
        head_dim: usize,
        device: &Device,
    ) -> Result<bool> {
        match self.attention {
            AttentionImpl::Naive => Ok(false),
            AttentionImpl::Auto => Ok(fused_attention_available(dtype, head_dim, device)),
            AttentionImpl::Fused => {
                if fused_attention_available(dtype, head_dim, device) {
                    Ok(true)
                } else if !CUDA_BUILT {
                    candle_core::bail!(
                        "--attention fused: this binary was built without CUDA support; rebuild \
                         with `cargo build --release --features cuda` (see docs/GPU.md), or use \
                         --attention auto"
                    )
                } else {
                    candle_core::bail!(
                        "--attention fused needs a CUDA device, head size {FUSED_HEAD_DIM} and \
                         f16 or bf16 (here: {:?}, head size {head_dim}, {dtype:?}); use \
                         --attention auto or naive",
                        device.location()
                    )
                }
            }
        }
    }

    /// These options with `attention` replaced (bench and doctor compare implementations).
    pub fn with_attention(self, attention: AttentionImpl) -> Self {
        Self { attention, ..self }
    }

    /// These options with the fused ops on or off.
    pub fn with_fused_ops(self, fused_ops: bool) -> Self {
        Self { fused_ops, ..self }
    }
}

/// What one model learned at run time about cuBLASLt on its GPU: once a call finds no algorithm
/// for a problem, [`crate::linear`] stops asking for that kind of call and the layers use
/// candle's matmul (or a separate GELU pass) instead. Owned by the model (shared by its layers),
/// so a model built later, or on another GPU, asks again.
#[derive(Debug, Default)]
pub struct GemmFallback {
    /// Set once a GELU-epilogue call found no algorithm.
    no_gelu_epilogue: AtomicBool,
    /// Set once a plain call found no algorithm.
    no_lt: AtomicBool,
}

impl GemmFallback {
    /// Whether a call of this kind (with the GELU epilogue or not) should still go to cuBLASLt.
    pub(crate) fn allows(&self, gelu_tanh: bool) -> bool {
        let gave_up_gelu = gelu_tanh && self.no_gelu_epilogue.load(Ordering::Relaxed);
        !(self.no_lt.load(Ordering::Relaxed) || gave_up_gelu)
    }

    /// Records that a call of this kind found no algorithm; true the first time (to warn once).
    pub(crate) fn give_up(&self, gelu_tanh: bool) -> bool {
        let flag = if gelu_tanh {
            &self.no_gelu_epilogue
        } else {
            &self.no_lt
        };
        !flag.swap(true, Ordering::Relaxed)
    }

    /// Whether this model has given up on cuBLASLt for every linear layer.
    pub fn gave_up(&self) -> bool {
        self.no_lt.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let o = KernelOptions::default();
        assert_eq!(o.attention, AttentionImpl::Auto);
        assert!(o.fused_ops && o.gelu_epilogue);
        assert!(!o.batch_invariant && !o.event_tracking);
    }

    #[test]
    fn naive_never_fuses_and_fused_on_cpu_says_why() {
        let naive = KernelOptions::default().with_attention(AttentionImpl::Naive);
        assert!(!naive
            .use_fused_attention(DType::F16, 64, &Device::Cpu)
            .unwrap());
        let fused = KernelOptions::default().with_attention(AttentionImpl::Fused);
        let err = fused
            .use_fused_attention(DType::F16, 64, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--attention"), "{err}");
    }

    #[test]
    fn giving_up_is_per_object_and_per_kind() {
        let a = GemmFallback::default();
        let b = GemmFallback::default();
        assert!(a.give_up(true), "first time");
        assert!(!a.give_up(true), "second time: already given up");
        assert!(!a.allows(true) && a.allows(false) && !a.gave_up());
        assert!(b.allows(true), "another model keeps asking");
        assert!(a.give_up(false));
        assert!(!a.allows(false) && a.gave_up());
    }
}
