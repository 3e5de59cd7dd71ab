//! Fused building blocks of the encoders on CUDA, each with the candle-op form it replaces as the
//! fallback (CPU, Metal, shapes a kernel does not handle, or [`KernelOptions::fused_ops`] off):
//!
//! * [`linear`]: `x·Wᵀ + bias (+ residual)` as one cuBLASLt call (bias in the GEMM epilogue,
//!   residual as its `C` operand) instead of a GEMM and one or two passes over the output;
//! * [`layer_norm`]: one warp per row, the row read once;
//! * [`rotary_qk`]: rotary embedding of q and k read straight from the fused q/k/v projection
//!   (no split copies);
//! * [`gated_gelu`]: DNABERT-S's `gelu(g[:, :I]) * g[:, I:]` in one pass;
//! * [`gather_rows`]: the embedding lookup, rows copied as 16-byte vectors;
//! * [`weighted_pool`]: the masked mean of the last hidden state, summed in f32 straight from f16.
//!
//! What each one saves is in docs/GPU.md (the table of fused ops).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{GemmFallback, KernelError, KernelOptions, CUDA_BUILT};

fn fast_path(x: &Tensor, options: &KernelOptions) -> bool {
    CUDA_BUILT
        && options.fused_ops
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F16 | DType::BF16 | DType::F32)
}

/// Elements per 16-byte vector.
fn vec_width(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

/// `x·Wᵀ + bias + residual` on cuBLASLt for a 2-D `x` `[rows, in]`, `weight` `[out, in]`, `bias`
/// `[out]`, `residual` `[rows, out]`, all of `x`'s dtype; with `gelu_tanh`,
/// `gelu_tanh(x·Wᵀ + bias)` (no residual; f16/bf16 only). `None` when the fused path does not
/// apply, or `fallback` (the model's) says cuBLASLt has no algorithm for this kind of call: the
/// caller then uses candle's matmul, or its own GELU pass.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    gelu_tanh: bool,
    options: &KernelOptions,
    fallback: &GemmFallback,
) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let same = |t: &Tensor| t.dtype() == dtype && t.device().same_device(x.device());
    let (rows, k) = x.dims2()?;
    let (n, kw) = weight.dims2()?;
    if !fast_path(x, options)
        || k != kw
        || !same(weight)
        || !bias.is_none_or(|b| same(b) && b.dims() == [n])
        || !residual.is_none_or(|r| same(r) && r.dims() == [rows, n])
        // GELU is applied before the residual would be added: not a combination a layer uses.
        || (gelu_tanh && (residual.is_some() || dtype == DType::F32))
        // cuBLASLt wants 16-byte aligned leading dimensions for its fast kernels.
        || k % vec_width(dtype) != 0
        || n % vec_width(dtype) != 0
    {
        return Ok(None);
    }
    if !fallback.allows(gelu_tanh) {
        return Ok(None);
    }
    let op = LtLinear {
        weight: weight.contiguous()?,
        bias: bias.map(Tensor::contiguous).transpose()?,
        residual: residual.map(Tensor::contiguous).transpose()?,
        gelu_tanh,
        tune: None,
    };
    match x.contiguous()?.apply_op1_no_bwd(&op) {
        Ok(y) => Ok(Some(y)),
        // Only a missing algorithm changes the path; an out-of-memory (the caller splits the
        // batch and retries on this same path) and any other failure are the caller's.
        Err(e) => match super::kernel_error(&e) {
            Some(KernelError::NoAlgorithm { what }) if gelu_tanh => {
                // Only the GELU epilogue is given up: the caller applies the exact GELU itself.
                if fallback.give_up(true) {
                    tracing::warn!(
                        "cuBLASLt has no GELU-epilogue algorithm for {what}; using a separate \
                         GELU pass"
                    );
                }
                Ok(None)
            }
            Some(KernelError::NoAlgorithm { what }) => {
                if fallback.give_up(false) {
                    tracing::warn!(
                        "cuBLASLt has no algorithm for {what} on this GPU; using candle's matmul \
                         for the linear layers from now on (slower)"
                    );
                }
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

/// LayerNorm over the last dimension (statistics in f32): `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    options: &KernelOptions,
) -> Result<Tensor> {
    let cols = x.dims().last().copied().unwrap_or(0);
    let v = vec_width(x.dtype());
    let fits = fast_path(x, options)
        && cols > 0
        && cols % v == 0
        && cols / v <= 16 * 32
        && weight.dims() == [cols]
        && bias.dims() == [cols]
        && weight.dtype() == x.dtype()
        && bias.dtype() == x.dtype();
    if fits {
        let op = LayerNormOp {
            weight: weight.contiguous()?,
            bias: bias.contiguous()?,
            eps,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps)
}

/// Rotary embedding of q and k taken from a fused projection `qkv` `[batch, len, 3 * heads *
/// head_dim]` (q, k, v blocks in that order), positions `0..len` in every row; `cos`/`sin`: f32
/// `[positions >= len, head_dim / 2]`. Returns q and k as contiguous `[batch, len, heads,
/// head_dim]`, or `None` where the kernel does not apply (the caller splits and rotates with
/// candle ops).
pub fn rotary_qk(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    head_dim: usize,
    options: &KernelOptions,
) -> Result<Option<(Tensor, Tensor)>> {
    let (b, l, w) = qkv.dims3()?;
    let half = head_dim / 2;
    let fits = fast_path(qkv, options)
        && w == 3 * heads * head_dim
        && half.is_multiple_of(8)
        && cos.dtype() == DType::F32
        && sin.dtype() == DType::F32
        && cos.dims().len() == 2
        && cos.dim(0)? >= l
        && cos.dim(1)? == half
        && sin.dims() == cos.dims();
    if !fits {
        return Ok(None);
    }
    let op = RotaryQk {
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        heads,
        head_dim,
        t_len: l,
    };
    let qk = qkv.contiguous()?.apply_op1_no_bwd(&op)?;
    let qk = qk.reshape((2, b, l, heads, head_dim))?;
    Ok(Some((qk.get(0)?, qk.get(1)?)))
}

/// `gelu(g[..., :inter]) * g[..., inter:]` (exact GELU) for `g` `[..., 2 * inter]`.
pub fn gated_gelu(g: &Tensor, inter: usize, options: &KernelOptions) -> Result<Tensor> {
    let cols = g.dims().last().copied().unwrap_or(0);
    if fast_path(g, options)
        && cols == 2 * inter
        && inter.is_multiple_of(vec_width(g.dtype()))
        && inter > 0
    {
        return g.contiguous()?.apply_op1_no_bwd(&GatedGelu { inter });
    }
    if crate::cpu_ops::is_cpu_f32(g) {
        return crate::cpu_ops::cpu_gated_gelu(g, inter);
    }
    let d = candle_core::D::Minus1;
    let gate = g.narrow(d, 0, inter)?.gelu_erf()?;
    gate * g.narrow(d, inter, inter)?
}

/// Embedding lookup `table[ids]`: `table` `[vocab, hidden]`, `ids` u32 of any shape -> `ids`'
/// shape + `[hidden]`. One 16-byte vector per thread on CUDA; candle's `index_select` elsewhere.
pub fn gather_rows(table: &Tensor, ids: &Tensor, options: &KernelOptions) -> Result<Tensor> {
    let (_, hidden) = table.dims2()?;
    let fits = fast_path(table, options)
        && ids.dtype() == DType::U32
        && ids.device().same_device(table.device())
        && hidden % vec_width(table.dtype()) == 0
        && hidden > 0;
    if fits {
        let op = GatherRows {
            table: table.contiguous()?,
        };
        return ids.contiguous()?.apply_op1_no_bwd(&op);
    }
    let mut dims = ids.dims().to_vec();
    dims.push(hidden);
    table.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
}

/// `out[b, :] = sum_l weights[b, l] * x[b, l, :]` in f32 for `x` `[batch, len, hidden]` (any
/// float dtype) and f32 `weights` `[batch, len]`; positions of weight 0 are skipped on CUDA.
/// Elsewhere: `x` cast to f32 and a batched matmul.
pub fn weighted_pool(x: &Tensor, weights: &Tensor, options: &KernelOptions) -> Result<Tensor> {
    let (b, l, hidden) = x.dims3()?;
    let fits = fast_path(x, options)
        && weights.dtype() == DType::F32
        && weights.dims() == [b, l]
        && weights.device().same_device(x.device())
        && hidden % 2 == 0
        && b <= 65_535;
    if fits {
        let op = WeightedPool {
            weights: weights.contiguous()?,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    weights
        .reshape((b, 1, l))?
        .matmul(&x.to_dtype(DType::F32)?)?
        .squeeze(1)
}

// ---------------------------------------------------------------------------------------------
// The candle ops behind them (CUDA only; the public functions never call them elsewhere).
// ---------------------------------------------------------------------------------------------

/// `impl CustomOp1` for an op that runs only on CUDA (`$launch` in `super::cuda` / `gemm`); the
/// public functions above never hand these ops CPU tensors.
macro_rules! cuda_only_op1 {
    ($op:ty, $name:literal, $launch:path) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                candle_core::bail!("{} needs CUDA (the caller falls back to candle ops)", $name)
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                x: &candle_core::CudaStorage,
                l: &Layout,
            ) -> Result<(candle_core::CudaStorage, Shape)> {
                $launch(self, x, l)
            }
        }
    };
}

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct LtLinear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) residual: Option<Tensor>,
    /// GELU (cuBLASLt's tanh approximation) after the bias, in the GEMM's epilogue.
    pub(crate) gelu_tanh: bool,
    /// Tuning only: time every candidate algorithm on this problem and add them here.
    #[cfg(feature = "cuda")]
    pub(crate) tune: Option<TuneReport>,
    #[cfg(not(feature = "cuda"))]
    pub(crate) tune: Option<()>,
}

#[cfg(feature = "cuda")]
pub(crate) type TuneReport = std::sync::Arc<std::sync::Mutex<Vec<super::gemm::TunedCandidate>>>;

/// Times cuBLASLt's non-split-k candidates for one linear layer shape (`rows` x `k` input,
/// `n` outputs) on random data, for the tuned table (`bench --tune-gemm`).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
pub fn tune_linear(
    device: &candle_core::Device,
    rows: usize,
    n: usize,
    k: usize,
    dtype: DType,
    bias: bool,
    residual: bool,
    gelu: bool,
) -> Result<Vec<super::gemm::TunedCandidate>> {
    let rand = |shape: &[usize]| -> Result<Tensor> {
        Tensor::randn(0f32, 0.05, shape, device)?.to_dtype(dtype)
    };
    let report = TuneReport::default();
    let op = LtLinear {
        weight: rand(&[n, k])?,
        bias: bias.then(|| rand(&[n])).transpose()?,
        residual: residual.then(|| rand(&[rows, n])).transpose()?,
        gelu_tanh: gelu,
        tune: Some(report.clone()),
    };
    rand(&[rows, k])?.apply_op1_no_bwd(&op)?;
    let out = report
        .lock()
        .map_err(|_| candle_core::Error::Msg("tuning report lock poisoned".into()))?
        .clone();
    Ok(out)
}

cuda_only_op1!(LtLinear, "virnucpro-cublaslt-linear", super::gemm::forward);

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct LayerNormOp {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f32,
}

cuda_only_op1!(LayerNormOp, "virnucpro-layer-norm", super::cuda::layer_norm);

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct RotaryQk {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) t_len: usize,
}

cuda_only_op1!(RotaryQk, "virnucpro-rotary-qk", super::cuda::rotary_qk);

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct GatedGelu {
    pub(crate) inter: usize,
}

cuda_only_op1!(GatedGelu, "virnucpro-gated-gelu", super::cuda::gated_gelu);

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct GatherRows {
    pub(crate) table: Tensor,
}

cuda_only_op1!(
    GatherRows,
    "virnucpro-gather-rows",
    super::cuda::gather_rows
);

#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct WeightedPool {
    pub(crate) weights: Tensor,
}

cuda_only_op1!(
    WeightedPool,
    "virnucpro-weighted-pool",
    super::cuda::weighted_pool
);
