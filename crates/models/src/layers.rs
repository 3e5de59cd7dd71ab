//! Building blocks shared by the encoders: embedding lookup, linear, layer norm, exact GELU,
//! rotary position embedding and masked attention. The rotary tables and the q/k/v split live
//! with the kernels that read them ([`virnucpro_kernels::rotary`]) and are re-exported here.
//!
//! Every block is a struct with `load(vb, .., ctx)` and `forward`, and the same code runs on CPU
//! and GPU; `ctx` is the model's [`Ctx`] (its options and what it learned at run time), kept by
//! the block. [`attention`] is the one place where scores are computed, so that a fused kernel
//! (flash attention, varlen) can be swapped in behind it without touching the models.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use virnucpro_kernels::{CpuMatmul, KernelOptions};

use crate::options::Ctx;

pub use virnucpro_kernels::rotary::{split_qkv, split_qkv_views, Rotary};
pub use virnucpro_kernels::Act;

/// Token embedding table (`weight`: `[vocab, hidden]`).
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
    hidden: usize,
    ctx: Ctx,
}

impl Embedding {
    pub fn load(vb: VarBuilder, vocab: usize, hidden: usize, ctx: &Ctx) -> Result<Self> {
        let weight = vb.get((vocab, hidden), "weight")?;
        Self::from_weight(weight, ctx)
    }

    /// A table from its `[vocab, hidden]` weight.
    pub fn from_weight(weight: Tensor, ctx: &Ctx) -> Result<Self> {
        let (_, hidden) = weight.dims2()?;
        Ok(Self {
            weight,
            hidden,
            ctx: ctx.clone(),
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `ids`: `[batch, len]` u32 -> `[batch, len, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        virnucpro_kernels::gather_rows(&self.weight, ids, self.ctx.kernels())?.reshape((
            b,
            l,
            self.hidden,
        ))
    }
}

/// `y = x W^T + b`, weights as stored by PyTorch (`[out, in]`).
///
/// A model built on the CPU with [`KernelOptions::cpu_matmul`] int8 or bf16 also keeps the
/// weight in that form, packed once here at load ([`virnucpro_kernels::Int8Linear`],
/// [`virnucpro_kernels::Bf16Linear`]), and its forward runs on that; the f32 weight stays
/// (1.25x or 1.5x the f32 weights in all) for [`Self::out_dim`].
/// A linear layer's weight in the form of its CPU matrix path.
#[derive(Debug)]
enum CpuLinear {
    Int8(virnucpro_kernels::Int8Linear),
    Bf16(virnucpro_kernels::Bf16Linear),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    cpu: Option<std::sync::Arc<CpuLinear>>,
    ctx: Ctx,
    span: tracing::Span,
}

impl Linear {
    /// Fails only where the int8 weights cannot be built (a CPU int8 model).
    pub fn new(weight: Tensor, bias: Option<Tensor>, ctx: &Ctx) -> Result<Self> {
        let cpu = match ctx.kernels().cpu_matmul {
            _ if !weight.device().is_cpu() => None,
            CpuMatmul::F32 => None,
            CpuMatmul::Int8 => Some(CpuLinear::Int8(virnucpro_kernels::Int8Linear::new(
                &weight,
                bias.as_ref(),
            )?)),
            CpuMatmul::Bf16 => Some(CpuLinear::Bf16(virnucpro_kernels::Bf16Linear::new(
                &weight,
                bias.as_ref(),
            )?)),
        };
        Ok(Self {
            weight,
            bias,
            cpu: cpu.map(std::sync::Arc::new),
            ctx: ctx.clone(),
            span: tracing::span!(tracing::Level::TRACE, "linear"),
        })
    }

    /// Loads `weight` `[out, in]` and `bias` `[out]`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, ctx: &Ctx) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        Self::new(weight, Some(bias), ctx)
    }

    /// Loads `weight` `[out, in]` without a bias.
    pub fn load_no_bias(vb: VarBuilder, in_dim: usize, out_dim: usize, ctx: &Ctx) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Self::new(weight, None, ctx)
    }

    /// Stacks several linears that read the same input (q, k, v) into one, so that one matmul
    /// replaces three; the outputs come out concatenated in the order given.
    pub fn load_fused(
        vbs: &[VarBuilder],
        in_dim: usize,
        out_dim: usize,
        ctx: &Ctx,
    ) -> Result<Self> {
        // The parts' tensors only: the stacked layer alone is built (and quantized, for int8).
        let parts = vbs
            .iter()
            .map(|vb| {
                Ok((
                    vb.get((out_dim, in_dim), "weight")?,
                    vb.get(out_dim, "bias")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let weight = Tensor::cat(&parts.iter().map(|p| &p.0).collect::<Vec<_>>(), 0)?;
        let bias = Tensor::cat(&parts.iter().map(|p| &p.1).collect::<Vec<_>>(), 0)?;
        Self::new(weight, Some(bias), ctx)
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Linear {
    /// `act(x W^T + b)`, or `x W^T + b + residual`: the bias, activation and residual add run as
    /// one fused pass on CUDA ([`virnucpro_kernels::bias_act`]; candle's broadcast add alone ran at
    /// ~200 GB/s on an H100, the fused pass near memory speed), candle ops elsewhere.
    pub fn forward_with(&self, x: &Tensor, act: Act, residual: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        self.ctx.injected_oom(rows)?;
        let (kernels, gemm) = (self.ctx.kernels(), &self.ctx.gemm);
        // One 2-D GEMM over all tokens instead of a batched one.
        let x2 = x.reshape((rows, in_dim))?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim();
        }
        let lt_res = match residual {
            Some(r) => Some(r.reshape((rows, self.out_dim()))?),
            None => None,
        };
        if let Some(cpu) = &self.cpu {
            // CPU int8 / bf16: bias inside; the exact GELU and the residual add inside too for
            // bf16, in f32 after for int8.
            let gelu = act == Act::GeluErf;
            return match &**cpu {
                CpuLinear::Int8(q) => {
                    let y = q.forward(&x2)?;
                    let y = if gelu {
                        virnucpro_kernels::gelu_erf(&y)?
                    } else {
                        y
                    };
                    let y = y.reshape(out_dims)?;
                    match residual {
                        Some(r) => y + r,
                        None => Ok(y),
                    }
                }
                CpuLinear::Bf16(l) => l
                    .forward_with(&x2, gelu, lt_res.as_ref())?
                    .reshape(out_dims),
            };
        }
        // Bias + GELU (tanh approximation) in the cuBLASLt epilogue: see
        // KernelOptions::gelu_epilogue.
        if act == Act::GeluErf && residual.is_none() && kernels.gelu_epilogue {
            let bias = self.bias.as_ref();
            if let Some(y) =
                virnucpro_kernels::linear(&x2, &self.weight, bias, None, true, kernels, gemm)?
            {
                return y.reshape(out_dims);
            }
        }
        // CUDA: bias (and residual) inside the cuBLASLt GEMM; the exact GELU needs its own pass.
        let lt_bias = match act {
            Act::Identity => self.bias.as_ref(),
            Act::GeluErf => None,
        };
        let lt_res = lt_res.as_ref();
        if let Some(y) =
            virnucpro_kernels::linear(&x2, &self.weight, lt_bias, lt_res, false, kernels, gemm)?
        {
            let y = y.reshape(out_dims)?;
            return match (act, &self.bias) {
                (Act::Identity, _) => Ok(y),
                (Act::GeluErf, Some(b)) => virnucpro_kernels::bias_act(&y, b, act, None),
                (Act::GeluErf, None) => y.gelu_erf(),
            };
        }
        let y = x2.matmul(&self.weight.t()?)?.reshape(out_dims)?;
        match &self.bias {
            Some(b) => virnucpro_kernels::bias_act(&y, b, act, residual),
            None => {
                let y = match act {
                    Act::Identity => y,
                    Act::GeluErf => virnucpro_kernels::gelu_erf(&y)?,
                };
                match residual {
                    Some(r) => y + r,
                    None => Ok(y),
                }
            }
        }
    }
}

impl Module for Linear {
    /// `x`: `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Act::Identity, None)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    /// Off CUDA, take the variance of `x - mean` (two passes) instead of candle's one pass.
    two_pass_off_cuda: bool,
    ctx: Ctx,
    span: tracing::Span,
}

impl LayerNorm {
    /// Loads `weight` and `bias` (`[hidden]`).
    pub fn load(vb: VarBuilder, hidden: usize, eps: f64, ctx: &Ctx) -> Result<Self> {
        let weight = vb.get(hidden, "weight")?;
        let bias = vb.get(hidden, "bias")?;
        Ok(Self {
            weight,
            bias,
            eps,
            two_pass_off_cuda: false,
            ctx: ctx.clone(),
            span: tracing::span!(tracing::Level::TRACE, "layer_norm"),
        })
    }

    /// As [`LayerNorm::load`], but off CUDA (CPU, Metal) the mean is subtracted before the
    /// variance is taken (two passes, in the input's dtype): the form the DNABERT-S oracle
    /// tolerances are set for, and one that loses less precision than a one-pass variance where
    /// the mean is large next to the spread. CUDA runs the fused kernel (f32 statistics) either way.
    pub fn load_two_pass(vb: VarBuilder, hidden: usize, eps: f64, ctx: &Ctx) -> Result<Self> {
        Ok(Self {
            two_pass_off_cuda: true,
            ..Self::load(vb, hidden, eps, ctx)?
        })
    }

    /// `LN(x + residual)` when a residual is given (the add happens once, here, so that a fused
    /// kernel can later take both inputs).
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let x = match residual {
            Some(r) => (x + r)?,
            None => x.contiguous()?,
        };
        if self.two_pass_off_cuda && !x.device().is_cuda() {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            let inv_std = (var + self.eps)?.sqrt()?.recip()?;
            return xc
                .broadcast_mul(&inv_std)?
                .broadcast_mul(&self.weight)?
                .broadcast_add(&self.bias);
        }
        // Accumulates in f32 whatever the storage dtype (one warp per row on CUDA).
        virnucpro_kernels::layer_norm(
            &x,
            &self.weight,
            &self.bias,
            self.eps as f32,
            self.ctx.kernels(),
        )
    }
}

/// Exact (erf) GELU, as PyTorch's default `nn.GELU()` / `F.gelu`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    virnucpro_kernels::gelu_erf(x)
}

/// Which keys each query may attend to, plus an optional additive score bias.
///
/// Carries the real row lengths so that a varlen kernel can run on the packed tokens; the padded
/// path uses the additive key-padding mask built from them.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    /// Real token count of each row; keys at positions `>= lengths[b]` are padding.
    pub lengths: Vec<usize>,
    pub max_len: usize,
    /// `[batch, 1, 1, max_len]`: 0 for real keys, -inf for padding. `None` when no row is padded.
    key_padding: Option<Tensor>,
    /// Added to the scores before the softmax, broadcastable to `[batch, heads, len, len]`
    /// (e.g. ALiBi `[1, heads, len, len]`).
    pub bias: Option<Tensor>,
    /// `lengths` as u32 `[batch]` on the device, for the fused kernel (CUDA devices only).
    key_lens: Option<Tensor>,
}

impl AttentionMask {
    pub fn new(lengths: &[usize], max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let padded = lengths.iter().any(|&l| l < max_len);
        let key_padding = if padded {
            let mut m = Vec::with_capacity(lengths.len() * max_len);
            for &len in lengths {
                // -inf gives exactly 0 after exp, so a padded row matches the unpadded one.
                m.extend((0..max_len).map(|j| if j < len { 0f32 } else { f32::NEG_INFINITY }));
            }
            Some(Tensor::from_vec(m, (lengths.len(), 1, 1, max_len), device)?.to_dtype(dtype)?)
        } else {
            None
        };
        let key_lens = if device.is_cuda() {
            let l: Vec<u32> = lengths.iter().map(|&l| l as u32).collect();
            Some(Tensor::from_vec(l, lengths.len(), device)?)
        } else {
            None
        };
        Ok(Self {
            lengths: lengths.to_vec(),
            max_len,
            key_padding,
            bias: None,
            key_lens,
        })
    }

    /// The row lengths as u32 `[batch]` on `device`, for the fused kernels (made once per batch
    /// on CUDA devices, by [`AttentionMask::new`]).
    fn key_lens_on(&self, device: &Device) -> Result<Tensor> {
        match &self.key_lens {
            Some(t) => Ok(t.clone()),
            None => {
                let l: Vec<u32> = self.lengths.iter().map(|&l| l as u32).collect();
                Tensor::from_vec(l, self.lengths.len(), device)
            }
        }
    }

    /// Adds an additive score bias (e.g. ALiBi) on top of the key-padding mask.
    pub fn with_bias(mut self, bias: Tensor) -> Self {
        self.bias = Some(bias);
        self
    }
}

/// Scaled dot-product attention.
///
/// `q`, `k`, `v`: `[batch, heads, len, head_dim]`; returns `[batch, len, heads * head_dim]`.
/// Scores are `scale * q·k + bias`, padding keys masked out; every row has at least one real key,
/// so the softmax is always defined.
///
/// Takes the fused kernel ([`virnucpro_kernels::fused_attention`]: no score matrix in memory, key
/// tiles past a row's length skipped) when `kernels.attention` allows it and it applies (CUDA, head
/// size 64, f16/bf16, no extra additive bias); padded query rows then come out as zeros instead
/// of meaningless finite values (pooling ignores them either way). Otherwise the materialized
/// path below.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    scale: f64,
    kernels: &KernelOptions,
) -> Result<Tensor> {
    let _enter = tracing::span!(tracing::Level::TRACE, "attention").entered();
    let (b, h, l, d) = q.dims4()?;
    if mask.bias.is_none() && kernels.use_fused_attention(q.dtype(), d, q.device())? {
        let lens = mask.key_lens_on(q.device())?;
        let out = virnucpro_kernels::fused_attention(q, k, v, &lens, None, scale as f32, kernels)?;
        // [b, h, l, d] view of [b, l, h, d] storage: this transpose is free.
        return out.transpose(1, 2)?.reshape((b, l, h * d));
    }
    // Scaling q (not the scores) keeps half-precision scores in range.
    let q = (q * scale)?;
    // k may be a strided view (rotary from the fused projection): matmul wants contiguous.
    let mut scores = q.contiguous()?.matmul(&k.contiguous()?.t()?)?;
    if let Some(bias) = &mask.bias {
        scores = scores.broadcast_add(bias)?;
    }
    if let Some(kp) = &mask.key_padding {
        scores = scores.broadcast_add(kp)?;
    }
    let probs = if scores.device().is_cpu() && scores.dtype() != DType::F32 {
        // candle's CPU softmax sums in the storage dtype; in f16/bf16 that loses most of the
        // mass over long rows. GPU kernels accumulate in f32 already.
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    let out = probs.matmul(&v.contiguous()?)?;
    out.transpose(1, 2)?.reshape((b, l, h * d))
}

/// [`attention`] with the rotary embedding of q and k applied inside the fused kernel (q and k
/// straight from the projection, e.g. [`split_qkv_views`]). `Ok(None)` where that kernel does
/// not run (no Hopper GPU, the materialized path asked for, an additive bias, or tables that do
/// not cover the rows): rotate q and k and call [`attention`].
pub fn attention_rotary(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttentionMask,
    rotary: &Rotary,
    scale: f64,
    kernels: &KernelOptions,
) -> Result<Option<Tensor>> {
    let (b, h, l, d) = q.dims4()?;
    let Some((cos, sin)) = rotary.tables_for(l) else {
        return Ok(None);
    };
    if mask.bias.is_some() || !kernels.use_fused_attention(q.dtype(), d, q.device())? {
        return Ok(None);
    }
    let lens = mask.key_lens_on(q.device())?;
    virnucpro_kernels::fused_attention_rotary(q, k, v, &lens, cos, sin, scale as f32, kernels)?
        .map(|out| out.transpose(1, 2)?.reshape((b, l, h * d)))
        .transpose()
}

/// A batch's sequences laid end to end without padding, the CPU's layout: activations are
/// `[1, total, hidden]`, every op but attention works token by token on them, and attention runs
/// on each sequence's own rows. Padding then costs no work, and a sequence's attention never
/// depends on the length of the batch's longest.
#[derive(Debug, Clone)]
pub struct Packing {
    /// `(first token, length)` of each sequence, in batch order.
    spans: Vec<(usize, usize)>,
    total: usize,
}

impl Packing {
    /// The packing of sequences of `lengths` tokens.
    pub fn new(lengths: &[usize]) -> Self {
        let mut total = 0;
        let spans = lengths
            .iter()
            .map(|&len| {
                let span = (total, len);
                total += len;
                span
            })
            .collect();
        Self { spans, total }
    }

    /// `(first token, length)` of each sequence, in batch order.
    pub fn spans(&self) -> &[(usize, usize)] {
        &self.spans
    }

    /// Tokens of all sequences.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Per-position values of a padded batch (`batch * max_len`, row-major), padding left out.
    pub fn pack<T: Copy>(&self, padded: &[T], max_len: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(self.total);
        for (row, &(_, len)) in self.spans.iter().enumerate() {
            out.extend_from_slice(&padded[row * max_len..row * max_len + len]);
        }
        out
    }

    /// Runs `f(len, rows)` on each sequence's rows of `x` (`[1, total, ...]`, narrowed on
    /// dimension 1) and concatenates the results on dimension 1.
    pub fn per_sequence(
        &self,
        x: &Tensor,
        mut f: impl FnMut(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let parts = self
            .spans
            .iter()
            .map(|&(start, len)| f(len, &x.narrow(1, start, len)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }

    /// Mean of each sequence's rows `rows(len)` of `x` (`[1, total, hidden]`), in f32:
    /// `[batch, hidden]`.
    pub fn mean_pool(
        &self,
        x: &Tensor,
        rows: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> Result<Tensor> {
        let x = x.squeeze(0)?.to_dtype(DType::F32)?;
        let means = self
            .spans
            .iter()
            .map(|&(start, len)| {
                let r = rows(len);
                x.narrow(0, start + r.start, r.len())?.mean_keepdim(0)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&means, 0)
    }
}

/// Mean over the positions where `weights` is non-zero: `weights` is `[batch, len]` on the host
/// (already divided by the count), `x` is `[batch, len, hidden]`; returns `[batch, hidden]` f32.
pub fn weighted_pool(x: &Tensor, weights: Vec<f32>, kernels: &KernelOptions) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    let w = Tensor::from_vec(weights, (b, l), x.device())?;
    // Pooled in f32 whatever the compute dtype.
    virnucpro_kernels::weighted_pool(x, &w, kernels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_ignores_padding_keys() -> Result<()> {
        let dev = Device::Cpu;
        let opts = KernelOptions::default();
        let (h, d) = (2, 4);
        let q = Tensor::randn(0f32, 1.0, (1, h, 5, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, h, 5, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, h, 5, d), &dev)?;
        let full = AttentionMask::new(&[3], 5, DType::F32, &dev)?;
        let padded = attention(&q, &k, &v, &full, 0.5, &opts)?.narrow(1, 0, 3)?;
        let cut = |t: &Tensor| t.narrow(2, 0, 3);
        let short = AttentionMask::new(&[3], 3, DType::F32, &dev)?;
        let alone = attention(&cut(&q)?, &cut(&k)?, &cut(&v)?, &short, 0.5, &opts)?;
        let diff = (padded - alone)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }
}
