//! DNABERT-S: the MosaicBERT / DNABERT-2 encoder (ALiBi attention, gated-GELU MLP, post-LayerNorm)
//! and its BPE tokenizer.
//!
//! Checkpoint layout (docs/MODELS.md, "DNABERT-S"), relative to the [`VarBuilder`] handed to
//! [`DnaBert::load`] (an optional `bert.` prefix is stripped by the caller):
//!
//! ```text
//! embeddings.word_embeddings.weight           [vocab, hidden]
//! embeddings.token_type_embeddings.weight     [type_vocab, hidden]   (row 0 added to every token)
//! embeddings.LayerNorm.{weight,bias}          [hidden]
//! encoder.layer.{i}.attention.self.Wqkv.{weight,bias}        [3*hidden, hidden], [3*hidden]
//! encoder.layer.{i}.attention.output.dense.{weight,bias}     [hidden, hidden], [hidden]
//! encoder.layer.{i}.attention.output.LayerNorm.{weight,bias} [hidden]
//! encoder.layer.{i}.mlp.gated_layers.weight                  [2*intermediate, hidden] (no bias)
//! encoder.layer.{i}.mlp.wo.{weight,bias}                     [hidden, intermediate], [hidden]
//! encoder.layer.{i}.mlp.layernorm.{weight,bias}              [hidden]
//! ```
//!
//! There are no position embeddings: every head adds `-slope_h * |i - j|` to its scores.
//! `pooler.*` is present in checkpoints and unused.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use virnucpro_kernels::{KernelOptions, PositionBias};

use super::layers::{split_qkv, split_qkv_views, Act, Embedding, LayerNorm, Linear, Packing};
use super::options::{Ctx, ModelContext, ModelOptions};
use super::{Encoder, SeqTokenizer, TokenBatch};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_hidden_act() -> String {
    "gelu".to_string()
}

/// The fields of a DNABERT-S `config.json` that the encoder uses.
///
/// Fields the MosaicBERT code ignores at inference (`position_embedding_type`, dropouts, ...) are
/// not read. `hidden_act` is informational: the gated MLP of the reference code hard-codes the
/// exact (erf) GELU whatever the config says.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DnaBertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Not used for positions (ALiBi); kept for information.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Size of the precomputed ALiBi table in the reference code; longer inputs rebuild it, so this
    /// is no limit. Falls back to `max_position_embeddings`.
    #[serde(default)]
    pub alibi_starting_size: Option<usize>,
    /// The model's pad id; the encoder masks by length and never reads it.
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl DnaBertConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading DNABERT-S config {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("parsing DNABERT-S config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid DNABERT-S config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks the sizes for consistency (weights are checked against them at load time).
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be positive, got 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            );
        }
        if let Some(mt) = &self.model_type {
            if mt != "bert" {
                tracing::warn!("DNABERT-S config has model_type {mt:?}, expected \"bert\"");
            }
        }
        if self.hidden_act != "gelu" {
            tracing::warn!(
                "DNABERT-S config has hidden_act {:?}; the MosaicBERT MLP always uses exact GELU",
                self.hidden_act
            );
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

// ---------------------------------------------------------------------------------------------
// ALiBi
// ---------------------------------------------------------------------------------------------

/// ALiBi slopes of the MosaicBERT code (one implementation, beside the kernels that use them).
pub use virnucpro_kernels::alibi_slopes;

/// Everything attention needs besides q, k, v: what a fused varlen ALiBi kernel would take
/// (`key_lengths`, `slopes`), plus the materialised additive bias for the matmul path.
pub(crate) struct AttentionBias {
    /// Real (unpadded) length of each row; keys at or past it are masked.
    pub key_lengths: Vec<usize>,
    /// One ALiBi slope per head.
    pub slopes: Vec<f32>,
    /// `[batch, heads, L, L]`: `-slope_h * |i - j|`, and `-inf` on padded keys (f32). Empty
    /// (`[0]`) when the fused kernel is used.
    pub dense: Tensor,
    /// For the fused kernel: lengths (u32 `[batch]`) and slopes (f32 `[heads]`) on the device.
    pub fused: Option<(Tensor, Tensor)>,
}

impl AttentionBias {
    /// What the fused kernel takes: no dense bias is built.
    fn for_fused(slopes: &[f32], key_lengths: &[usize], device: &Device) -> Result<Self> {
        let lens: Vec<u32> = key_lengths.iter().map(|&l| l as u32).collect();
        let lens_t = Tensor::from_vec(lens, key_lengths.len(), device)?;
        let slopes_t = Tensor::from_slice(slopes, slopes.len(), device)?;
        Ok(Self {
            key_lengths: key_lengths.to_vec(),
            slopes: slopes.to_vec(),
            dense: Tensor::zeros(0, DType::F32, device)?,
            fused: Some((lens_t, slopes_t)),
        })
    }

    fn new(slopes: &[f32], key_lengths: &[usize], max_len: usize, device: &Device) -> Result<Self> {
        let n_heads = slopes.len();
        let l = max_len;
        let mut alibi = Vec::with_capacity(n_heads * l * l);
        for &s in slopes {
            for i in 0..l {
                for j in 0..l {
                    alibi.push(-s * i.abs_diff(j) as f32);
                }
            }
        }
        let alibi = Tensor::from_vec(alibi, (1, n_heads, l, l), device)?;
        let b = key_lengths.len();
        let mut mask = Vec::with_capacity(b * l);
        for &len in key_lengths {
            mask.extend((0..l).map(|j| if j < len { 0f32 } else { f32::NEG_INFINITY }));
        }
        let mask = Tensor::from_vec(mask, (b, 1, 1, l), device)?;
        let dense = alibi.broadcast_add(&mask)?;
        Ok(Self {
            key_lengths: key_lengths.to_vec(),
            slopes: slopes.to_vec(),
            dense,
            fused: None,
        })
    }
}

/// How a batch's sequences lie in the activations, with their attention biases.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// `[batch, max_len, hidden]`, one bias for the batch (padding masked).
    Padded(&'a AttentionBias),
    /// `[1, total, hidden]` end to end (the CPU's layout), with the ALiBi slopes, and the bias of
    /// one unpadded sequence of each length present (none for f32, whose attention kernel adds
    /// ALiBi itself).
    Packed(&'a Packing, &'a HashMap<usize, AttentionBias>, &'a [f32]),
}

/// Scaled dot-product attention with an additive bias.
///
/// `q`, `k`, `v`: `[batch, heads, L, head_dim]`; returns `[batch, heads, L, head_dim]`.
/// Every row has at least one real key (lengths are validated ≥ 1), so the `-inf` key mask never
/// yields an all-masked softmax row: padded query rows get finite values, ignored by pooling.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &AttentionBias,
    scale: f64,
    kernels: &KernelOptions,
) -> Result<Tensor> {
    let _span = tracing::trace_span!("dnabert-attention-core").entered();
    let (b, heads, _, _) = q.dims4()?;
    if bias.key_lengths.len() != b || bias.slopes.len() != heads {
        candle_core::bail!(
            "attention bias built for {} rows x {} heads, got {b} x {heads}",
            bias.key_lengths.len(),
            bias.slopes.len()
        );
    }
    if let Some((lens, slopes)) = &bias.fused {
        // Fused kernel: ALiBi and the key mask applied on chip; [b, heads, L, d] view.
        let slopes = Some(slopes);
        return virnucpro_kernels::fused_attention(q, k, v, lens, slopes, scale as f32, kernels);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let dense = if bias.dense.dtype() == scores.dtype() {
        bias.dense.clone()
    } else {
        bias.dense.to_dtype(scores.dtype())?
    };
    let scores = scores.broadcast_add(&dense)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)
}

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

struct DnaBertEmbeddings {
    /// `word_embeddings + token_type_embeddings[0]`, `[vocab, hidden]`: every token has type 0,
    /// so the sum is taken once at load time (the same additions in the same dtype as the
    /// reference's per-token sum; a broadcast add per pass cost 0.45 ms at 256 x 128 tokens).
    word_and_type0: Embedding,
    layer_norm: LayerNorm,
}

impl DnaBertEmbeddings {
    fn load(vb: VarBuilder, cfg: &DnaBertConfig, ctx: &Ctx) -> Result<Self> {
        let h = cfg.hidden_size;
        let word = vb
            .pp("word_embeddings")
            .get((cfg.vocab_size, h), "weight")?;
        let token_type = vb
            .pp("token_type_embeddings")
            .get((cfg.type_vocab_size, h), "weight")?;
        let table = word.broadcast_add(&token_type.get(0)?)?;
        Ok(Self {
            word_and_type0: Embedding::from_weight(table, ctx)?,
            layer_norm: LayerNorm::load_two_pass(vb.pp("LayerNorm"), h, cfg.layer_norm_eps, ctx)?,
        })
    }

    /// `ids`: `[batch, L]` u32 -> `[batch, L, hidden]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.word_and_type0.forward(ids)?;
        self.layer_norm.forward(&x, None)
    }
}

struct DnaBertAttention {
    /// Fused q/k/v projection (rows stacked q, k, v in the checkpoint).
    wqkv: Linear,
    output: Linear,
    layer_norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
    ctx: Ctx,
}

impl DnaBertAttention {
    fn load(vb: VarBuilder, cfg: &DnaBertConfig, ctx: &Ctx) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            wqkv: Linear::load(vb.pp("self").pp("Wqkv"), h, 3 * h, ctx)?,
            output: Linear::load(vb.pp("output").pp("dense"), h, h, ctx)?,
            layer_norm: LayerNorm::load_two_pass(vb.pp("output").pp("LayerNorm"), h, eps, ctx)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            ctx: ctx.clone(),
        })
    }

    /// `LN_a(x + Wo·Attn(x))`.
    fn forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor> {
        match rows {
            Rows::Padded(bias) => self.forward_padded(x, bias),
            Rows::Packed(packing, biases, slopes) => {
                self.forward_packed(x, packing, biases, slopes)
            }
        }
    }

    /// [`Self::forward_padded`] on packed rows: the projections over every token, attention on
    /// each sequence's rows with its own length's bias.
    fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Packing,
        biases: &HashMap<usize, AttentionBias>,
        slopes: &[f32],
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("dnabert-attention").entered();
        let h = x.dim(2)?;
        let dev = x.device();
        let qkv = self
            .ctx
            .section("dnabert qkv linear", dev, || self.wqkv.forward(x))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if dev.is_cpu() && qkv.dtype() == DType::F32 {
            let ctx = self.ctx.section("dnabert attention", dev, || {
                virnucpro_kernels::cpu_packed_attention(
                    &qkv,
                    packing.spans(),
                    self.num_heads,
                    self.head_dim,
                    scale as f32,
                    PositionBias::Alibi { slopes },
                )
            })?;
            drop(qkv);
            let out = self.ctx.section("dnabert out linear+res", dev, || {
                self.output.forward_with(&ctx, Act::Identity, Some(x))
            })?;
            return self.ctx.section("dnabert layer_norm", dev, || {
                self.layer_norm.forward(&out, None)
            });
        }
        let ctx = self.ctx.section("dnabert attention", dev, || {
            packing.per_sequence(&qkv, |len, rows| {
                let (q, k, v) = split_qkv(rows, self.num_heads, self.head_dim)?;
                let Some(bias) = biases.get(&len) else {
                    candle_core::bail!("DNABERT-S: no attention bias for a sequence of {len}");
                };
                attention(&q, &k, &v, bias, scale, self.ctx.kernels())?
                    .transpose(1, 2)?
                    .reshape((1, len, h))
            })
        })?;
        drop(qkv);
        let out = self.ctx.section("dnabert out linear+res", dev, || {
            self.output.forward_with(&ctx, Act::Identity, Some(x))
        })?;
        self.ctx.section("dnabert layer_norm", dev, || {
            self.layer_norm.forward(&out, None)
        })
    }

    fn forward_padded(&self, x: &Tensor, bias: &AttentionBias) -> Result<Tensor> {
        let _span = tracing::trace_span!("dnabert-attention").entered();
        let (b, l, h) = x.dims3()?;
        let dev = x.device();
        let qkv = self
            .ctx
            .section("dnabert qkv linear", dev, || self.wqkv.forward(x))?;
        // q, k, v as [b, heads, l, d]. The fused kernel reads strided views of the projection;
        // they must stay views: `Tensor::get` on a permuted tensor reshapes, i.e. copies, and
        // three copies per layer would be a large share of a DNABERT-S pass (docs/GPU.md).
        let (q, k, v) = if bias.fused.is_some() {
            split_qkv_views(&qkv, self.num_heads, self.head_dim)?
        } else {
            split_qkv(&qkv, self.num_heads, self.head_dim)?
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let ctx = self.ctx.section("dnabert attention", dev, || {
            attention(&q, &k, &v, bias, scale, self.ctx.kernels())
        })?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, l, h))?;
        // Bias and residual in one pass; then LN.
        let out = self.ctx.section("dnabert out linear+res", dev, || {
            self.output.forward_with(&ctx, Act::Identity, Some(x))
        })?;
        self.ctx.section("dnabert layer_norm", dev, || {
            self.layer_norm.forward(&out, None)
        })
    }
}

struct DnaBertMlp {
    /// `[2*intermediate, hidden]`, no bias; the first `intermediate` outputs are the gate.
    gated_layers: Linear,
    wo: Linear,
    layer_norm: LayerNorm,
    intermediate: usize,
    ctx: Ctx,
}

impl DnaBertMlp {
    fn load(vb: VarBuilder, cfg: &DnaBertConfig, ctx: &Ctx) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gated_layers: Linear::load_no_bias(vb.pp("gated_layers"), h, 2 * i, ctx)?,
            wo: Linear::load(vb.pp("wo"), i, h, ctx)?,
            layer_norm: LayerNorm::load_two_pass(vb.pp("layernorm"), h, cfg.layer_norm_eps, ctx)?,
            intermediate: i,
            ctx: ctx.clone(),
        })
    }

    /// `LN_m(h + Wo2·(gelu(g[:I]) * g[I:]))`, `g = W_gated·h`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("dnabert-mlp").entered();
        let dev = x.device();
        let g = self
            .ctx
            .section("dnabert gated linear", dev, || self.gated_layers.forward(x))?;
        // One pass on CUDA; narrow + gelu + mul elsewhere.
        let gated = self.ctx.section("dnabert gated gelu", dev, || {
            virnucpro_kernels::gated_gelu(&g, self.intermediate, self.ctx.kernels())
        })?;
        // Dead activations go at once (the device's peak is what lives together): the
        // `[tokens, 2 * intermediate]` projection is the layer's largest.
        drop(g);
        let y = self.ctx.section("dnabert wo linear+res", dev, || {
            self.wo.forward_with(&gated, Act::Identity, Some(x))
        })?;
        drop(gated);
        self.ctx.section("dnabert layer_norm", dev, || {
            self.layer_norm.forward(&y, None)
        })
    }
}

struct DnaBertLayer {
    attention: DnaBertAttention,
    mlp: DnaBertMlp,
}

impl DnaBertLayer {
    fn load(vb: VarBuilder, cfg: &DnaBertConfig, ctx: &Ctx) -> Result<Self> {
        Ok(Self {
            attention: DnaBertAttention::load(vb.pp("attention"), cfg, ctx)?,
            mlp: DnaBertMlp::load(vb.pp("mlp"), cfg, ctx)?,
        })
    }

    fn forward(&self, x: &Tensor, rows: Rows) -> Result<Tensor> {
        let h = self.attention.forward(x, rows)?;
        self.mlp.forward(&h)
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The DNABERT-S encoder; [`Encoder::forward_pooled`] returns the mean of the last hidden state
/// over every real token of a row (`[CLS]` and `[SEP]` included, padding excluded).
pub struct DnaBert {
    embeddings: DnaBertEmbeddings,
    layers: Vec<DnaBertLayer>,
    slopes: Vec<f32>,
    cfg: DnaBertConfig,
    device: Device,
    /// Compute dtype of the weights.
    dtype: DType,
    /// The most padded tokens run at once ([`ModelOptions::sub_batch_bytes`]).
    sub_batch_tokens: Option<usize>,
    ctx: Ctx,
}

impl DnaBert {
    /// Bytes of activations a layer keeps alive per padded token at its peak, the gated GELU
    /// pass: the layer's input, the attention block's output, the gated projection
    /// (`2 * intermediate`) and its GELU product (`intermediate`).
    fn bytes_per_token(cfg: &DnaBertConfig, dtype: DType) -> usize {
        (2 * cfg.hidden_size + 3 * cfg.intermediate_size) * dtype.size_in_bytes()
    }

    /// Loads the weights; `vb` is rooted so that `embeddings.word_embeddings.weight` resolves.
    /// Every tensor is requested with its expected shape, so a config/weights mismatch errors
    /// with the tensor's name. `options` are kept by the model and its layers.
    pub fn load(vb: VarBuilder, cfg: &DnaBertConfig, options: &ModelOptions) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid DNABERT-S config: {e:#}")))?;
        let ctx = ModelContext::new(options);
        let embeddings = DnaBertEmbeddings::load(vb.pp("embeddings"), cfg, &ctx)?;
        let vb_layers = vb.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DnaBertLayer::load(vb_layers.pp(i.to_string()), cfg, &ctx))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings,
            layers,
            slopes: alibi_slopes(cfg.num_attention_heads),
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            sub_batch_tokens: ctx.sub_batch_tokens(Self::bytes_per_token(cfg, vb.dtype())),
            ctx,
        })
    }

    pub fn config(&self) -> &DnaBertConfig {
        &self.cfg
    }

    /// Last hidden state `[batch, max_len, hidden]` (rows past a sequence's length are padding
    /// and hold meaningless finite values).
    pub fn forward_hidden(&self, batch: &TokenBatch) -> Result<Tensor> {
        let _span = tracing::trace_span!("dnabert-forward").entered();
        self.check_batch(batch)?;
        let (b, l) = (batch.batch_size(), batch.max_len);
        let ids = Tensor::from_slice(&batch.ids, (b, l), &self.device)?;
        let fused = self.ctx.kernels().use_fused_attention(
            self.dtype,
            self.cfg.head_dim(),
            &self.device,
        )?;
        let bias = if fused {
            AttentionBias::for_fused(&self.slopes, &batch.lengths, &self.device)?
        } else {
            AttentionBias::new(&self.slopes, &batch.lengths, l, &self.device)?
        };
        let mut x = self.ctx.section("dnabert embeddings", &self.device, || {
            self.embeddings.forward(&ids)
        })?;
        for layer in &self.layers {
            x = layer.forward(&x, Rows::Padded(&bias))?;
        }
        Ok(x)
    }

    /// [`Encoder::forward_pooled`] on padded rows (what GPUs run), by sub-batches within
    /// [`ModelOptions::sub_batch_bytes`], each pooled before the next runs: DNABERT-S in f16
    /// keeps 21 KiB per token alive, ~590 MiB for a whole batch of the default budget, more than
    /// ESM2-3B's sub-batches.
    fn forward_pooled_padded(&self, batch: &TokenBatch) -> Result<Tensor> {
        self.check_batch(batch)?;
        batch.by_sub_batches(self.sub_batch_tokens, |rows| {
            let hidden = self.forward_hidden(rows)?;
            let _span = tracing::trace_span!("dnabert-pool").entered();
            let dev = hidden.device().clone();
            // One batched product with per-row weights 1/len on real tokens (a loop of per-row
            // means cost three launches per row on a GPU).
            let l = rows.max_len;
            let mut w = vec![0f32; rows.batch_size() * l];
            for (row, &len) in rows.lengths.iter().enumerate() {
                w[row * l..row * l + len].fill(1.0 / len as f32);
            }
            self.ctx.section("dnabert pool", &dev, || {
                super::layers::weighted_pool(&hidden, w, self.ctx.kernels())
            })
        })
    }

    /// The pooled embeddings of [`Encoder::forward_pooled`] computed on packed rows
    /// ([`Packing`]): what the CPU runs.
    fn forward_pooled_packed(&self, batch: &TokenBatch) -> Result<Tensor> {
        let _span = tracing::trace_span!("dnabert-forward").entered();
        self.check_batch(batch)?;
        let packing = Packing::new(&batch.lengths);
        let ids = packing.pack(&batch.ids, batch.max_len);
        let ids = Tensor::from_vec(ids, (1, packing.total()), &self.device)?;
        let mut biases = HashMap::new();
        let kernel_adds_alibi = self.device.is_cpu() && self.dtype == DType::F32;
        for &len in batch.lengths.iter().filter(|_| !kernel_adds_alibi) {
            if let std::collections::hash_map::Entry::Vacant(e) = biases.entry(len) {
                e.insert(AttentionBias::new(&self.slopes, &[len], len, &self.device)?);
            }
        }
        let mut x = self.ctx.section("dnabert embeddings", &self.device, || {
            self.embeddings.forward(&ids)
        })?;
        for layer in &self.layers {
            x = layer.forward(&x, Rows::Packed(&packing, &biases, &self.slopes))?;
        }
        let _span = tracing::trace_span!("dnabert-pool").entered();
        // Every real token, `[CLS]` and `[SEP]` included.
        packing.mean_pool(&x, |len| 0..len)
    }

    fn check_batch(&self, batch: &TokenBatch) -> Result<()> {
        let (b, l) = (batch.batch_size(), batch.max_len);
        if b == 0 {
            candle_core::bail!("DNABERT-S: empty batch");
        }
        if batch.ids.len() != b * l {
            candle_core::bail!(
                "DNABERT-S: batch holds {} ids, expected {b} rows x {l}",
                batch.ids.len()
            );
        }
        if let Some((row, len)) = batch
            .lengths
            .iter()
            .enumerate()
            .find(|(_, &len)| len == 0 || len > l)
        {
            candle_core::bail!("DNABERT-S: row {row} has length {len}, must be in 1..={l}");
        }
        if let Some(pos) = batch
            .ids
            .iter()
            .position(|&id| id as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!(
                "DNABERT-S: token id {} (row {}) is outside the vocabulary of {}",
                batch.ids[pos],
                pos / l,
                self.cfg.vocab_size
            );
        }
        Ok(())
    }
}

impl Encoder for DnaBert {
    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    fn forward_pooled(&self, batch: &TokenBatch) -> Result<Tensor> {
        if self.device.is_cpu() {
            return self.forward_pooled_packed(batch);
        }
        self.forward_pooled_padded(batch)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

/// The DNABERT-S BPE tokenizer (`tokenizer.json`), `[CLS] ... [SEP]` added by its post-processor.
///
/// Input is upper-cased (ASCII) first: the vocabulary holds upper-case k-mers only and the
/// tokenizer has no normalizer, so lower-case bases would all become `[UNK]`; the reference
/// pipeline upper-cases sequences when it chunks them, before they reach the model.
pub struct DnaBertTokenizer {
    inner: tokenizers::Tokenizer,
    max_len: usize,
    pad_id: u32,
}

impl DnaBertTokenizer {
    /// `max_len`: the most tokens (special tokens included) a sequence may have, normally the
    /// model limit (`model_max_length` of `tokenizer_config.json`, 512 for DNABERT-S).
    pub fn from_file(path: &Path, max_len: usize) -> anyhow::Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("loading DNABERT-S tokenizer {}: {e}", path.display()))?;
        // Over-long input must be reported, never silently cut; padding is done by the batcher.
        inner
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("disabling truncation: {e}"))?;
        inner.with_padding(None);
        let pad_id = inner
            .token_to_id("[PAD]")
            .with_context(|| format!("tokenizer {} has no [PAD] token", path.display()))?;
        if max_len < 2 {
            bail!("DNABERT-S max_len must leave room for [CLS] and [SEP], got {max_len}");
        }
        let tok = Self {
            inner,
            max_len,
            pad_id,
        };
        // The post-processor must add [CLS] ... [SEP]; check it once here.
        let probe = tok
            .inner
            .encode("ACGT", true)
            .map_err(|e| anyhow::anyhow!("tokenizer {}: {e}", path.display()))?;
        let ids = probe.get_ids();
        let cls = tok.inner.token_to_id("[CLS]");
        let sep = tok.inner.token_to_id("[SEP]");
        if cls.is_none()
            || sep.is_none()
            || ids.first() != cls.as_ref()
            || ids.last() != sep.as_ref()
        {
            bail!(
                "tokenizer {} does not add [CLS] ... [SEP] (post-processor missing?)",
                path.display()
            );
        }
        Ok(tok)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl SeqTokenizer for DnaBertTokenizer {
    fn vocab_size(&self) -> Option<usize> {
        Some(self.inner.get_vocab_size(true))
    }

    fn encode(&self, id: &str, seq: &[u8]) -> anyhow::Result<Vec<u32>> {
        let upper = seq.to_ascii_uppercase();
        let text = std::str::from_utf8(&upper)
            .with_context(|| format!("record {id}: sequence is not ASCII/UTF-8"))?;
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("record {id}: DNABERT-S tokenization failed: {e}"))?;
        let ids = enc.get_ids();
        if ids.len() > self.max_len {
            bail!(
                "record {id}: {} bases give {} DNABERT-S tokens, more than the model limit of {} \
                 (use shorter chunks)",
                seq.len(),
                ids.len(),
                self.max_len
            );
        }
        Ok(ids.to_vec())
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn oracle() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/oracle")
    }

    fn vb_for(path: &Path) -> VarBuilder<'static> {
        let vb = VarBuilder::from_pth(path, DType::F32, &Device::Cpu).unwrap();
        if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        }
    }

    fn load_model() -> DnaBert {
        load_model_with(&ModelOptions::default())
    }

    fn load_model_with(options: &ModelOptions) -> DnaBert {
        let dir = oracle().join("dnabert");
        let cfg = DnaBertConfig::from_file(dir.join("config.json")).unwrap();
        DnaBert::load(vb_for(&dir.join("pytorch_model.bin")), &cfg, options).unwrap()
    }

    fn model_max_length() -> usize {
        let text = std::fs::read_to_string(oracle().join("dnabert/tokenizer_config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["model_max_length"].as_u64().unwrap() as usize
    }

    fn load_tokenizer(max_len: usize) -> DnaBertTokenizer {
        DnaBertTokenizer::from_file(&oracle().join("dnabert/tokenizer.json"), max_len).unwrap()
    }

    /// `>id desc` headers, sequence lines concatenated.
    fn read_fasta(path: &Path) -> Vec<(String, Vec<u8>)> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(header) = line.strip_prefix('>') {
                let id = header.split_whitespace().next().unwrap_or("").to_string();
                out.push((id, Vec::new()));
            } else if !line.is_empty() {
                out.last_mut().unwrap().1.extend_from_slice(line.as_bytes());
            }
        }
        out
    }

    fn make_batch(rows: &[Vec<u32>], pad: u32) -> TokenBatch {
        let max_len = rows.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::with_capacity(rows.len() * max_len);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad, max_len - r.len()));
        }
        TokenBatch {
            ids,
            lengths: rows.iter().map(Vec::len).collect(),
            max_len,
        }
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    fn expected() -> (Vec<String>, Vec<Vec<f32>>) {
        let path = oracle().join("expected/dnabert.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let ids_json = meta.metadata().as_ref().unwrap()["ids"].clone();
        let ids: Vec<String> = serde_json::from_str(&ids_json).unwrap();
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let emb = tensors["embeddings"].to_vec2::<f32>().unwrap();
        (ids, emb)
    }

    #[test]
    fn dnabert_alibi_slopes() {
        let eq = |got: Vec<f32>, want: Vec<f64>| {
            assert_eq!(got.len(), want.len());
            for (h, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*g, *w as f32, "head {h}: {g} vs {w}");
            }
        };
        // 2 heads (the oracle): start 2^-4.
        eq(alibi_slopes(2), vec![0.0625, 0.00390625]);
        // 8 heads: start 2^-1, slopes 2^-1 .. 2^-8.
        eq(
            alibi_slopes(8),
            (1..=8).map(|h| 2f64.powi(-h)).collect::<Vec<_>>(),
        );
        // 16 heads: start 2^-0.5, slopes 2^-0.5, 2^-1, ..., 2^-8.
        eq(
            alibi_slopes(16),
            (1..=16).map(|h| 2f64.powf(-0.5 * h as f64)).collect(),
        );
        // 12 heads (real DNABERT-S): 8-head list, then 16-head list entries 0, 2, 4, 6.
        let mut want: Vec<f64> = (1..=8).map(|h| 2f64.powi(-h)).collect();
        want.extend([
            2f64.powf(-0.5),
            2f64.powf(-1.5),
            2f64.powf(-2.5),
            2f64.powf(-3.5),
        ]);
        eq(alibi_slopes(12), want);
        // Literal values of the 12-head case.
        let s12 = alibi_slopes(12);
        for (g, w) in s12[8..]
            .iter()
            .zip([0.70710677f32, 0.35355338, 0.17677669, 0.088388346])
        {
            assert!((g - w).abs() < 1e-7, "{g} vs {w}");
        }
        assert!(alibi_slopes(0).is_empty());
        assert_eq!(alibi_slopes(1), vec![2f32.powi(-8)]);
    }

    #[test]
    fn dnabert_alibi_bias_and_mask() {
        let bias = AttentionBias::new(&[0.5, 0.25], &[3, 2], 3, &Device::Cpu).unwrap();
        assert_eq!(bias.dense.dims(), &[2, 2, 3, 3]);
        let v: Vec<Vec<Vec<Vec<f32>>>> = (0..2)
            .map(|b| bias.dense.get(b).unwrap().to_vec3::<f32>().unwrap())
            .collect();
        assert_eq!(v[0][0][0], vec![0.0, -0.5, -1.0]);
        assert_eq!(v[0][1][2], vec![-0.5, -0.25, 0.0]);
        assert_eq!(v[1][0][1][..2], [-0.5, 0.0]);
        assert_eq!(v[1][0][1][2], f32::NEG_INFINITY);
        assert_eq!(v[1][1][2][2], f32::NEG_INFINITY);
    }

    #[test]
    fn dnabert_oracle_embeddings() {
        let model = load_model();
        let tok = load_tokenizer(model_max_length());
        let records = read_fasta(&oracle().join("inputs/dna.fa"));
        let (want_ids, want) = expected();
        let got_ids: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got_ids, want_ids);
        assert_eq!(model.hidden_size(), want[0].len());

        let tokens: Vec<Vec<u32>> = records
            .iter()
            .map(|(id, seq)| tok.encode(id, seq).unwrap())
            .collect();
        let mut worst: f64 = 0.0;
        // One at a time, as the reference ran them.
        for (i, t) in tokens.iter().enumerate() {
            let out = model
                .forward_pooled(&make_batch(std::slice::from_ref(t), tok.pad_id()))
                .unwrap();
            let row = out.get(0).unwrap().to_vec1::<f32>().unwrap();
            let e = rel_err(&row, &want[i]);
            assert!(e <= 1e-5, "{}: relative error {e:e}", records[i].0);
            worst = worst.max(e);
        }
        // All in one padded batch.
        let out = model
            .forward_pooled(&make_batch(&tokens, tok.pad_id()))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, row) in out.iter().enumerate() {
            let e = rel_err(row, &want[i]);
            assert!(
                e <= 1e-5,
                "{} (batched): relative error {e:e}",
                records[i].0
            );
            worst = worst.max(e);
        }
        eprintln!("DNABERT-S oracle: max relative error {worst:e}");
    }

    #[test]
    fn dnabert_padding_does_not_change_embeddings() {
        let model = load_model();
        let tok = load_tokenizer(512);
        let records = read_fasta(&oracle().join("inputs/dna.fa"));
        let tokens: Vec<Vec<u32>> = records
            .iter()
            .map(|(id, seq)| tok.encode(id, seq).unwrap())
            .collect();
        // Mixed lengths, the shortest first and last, with the longest in between.
        let order = [0usize, 3, 1, 4, 2, 0];
        let rows: Vec<Vec<u32>> = order.iter().map(|&i| tokens[i].clone()).collect();
        let batched = model
            .forward_pooled(&make_batch(&rows, tok.pad_id()))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (pos, &i) in order.iter().enumerate() {
            let alone = model
                .forward_pooled(&make_batch(std::slice::from_ref(&tokens[i]), tok.pad_id()))
                .unwrap()
                .get(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let e = rel_err(&batched[pos], &alone);
            assert!(e <= 1e-6, "{}: batch vs alone {e:e}", records[i].0);
            assert!(batched[pos].iter().all(|v| v.is_finite()));
        }
        // The pad id itself must not matter either.
        let other_pad = model
            .forward_pooled(&make_batch(&rows, 5))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in other_pad.iter().zip(&batched) {
            assert!(rel_err(a, b) <= 1e-6);
        }
    }

    /// The default budget runs DNABERT-S's default GPU batches as two sub-batches (otherwise
    /// its activations would be the peak of a run with ESM2-3B).
    #[test]
    fn dnabert_s_default_batches_run_as_two_sub_batches() {
        let cfg: DnaBertConfig = serde_json::from_str(crate::embed::DNABERT_S_CONFIG).unwrap();
        let t = ModelContext::new(&ModelOptions {
            sub_batch_bytes: Some(crate::options::SUGGESTED_SUB_BATCH_BYTES),
            ..ModelOptions::default()
        })
        .sub_batch_tokens(DnaBert::bytes_per_token(&cfg, DType::F16))
        .unwrap();
        let budget = crate::embed::DEFAULT_BATCH_TOKENS_GPU;
        assert!(t < budget && 2 * t >= budget, "{t}");
    }

    /// The padded path (what GPUs run) by sub-batches gives the whole batch's pooled rows to the
    /// bit.
    #[test]
    fn dnabert_padded_sub_batches_give_the_whole_batch_bits() {
        let tok = load_tokenizer(model_max_length());
        let records = read_fasta(&oracle().join("inputs/dna.fa"));
        let tokens: Vec<Vec<u32>> = records
            .iter()
            .map(|(id, seq)| tok.encode(id, seq).unwrap())
            .collect();
        // Mixed lengths side by side.
        let order = [0usize, 3, 1, 4, 2, 0];
        let rows: Vec<Vec<u32>> = order.iter().map(|&i| tokens[i].clone()).collect();
        let batch = make_batch(&rows, tok.pad_id());
        let bits = |m: &DnaBert| -> Vec<u32> {
            let t = m.forward_pooled_padded(&batch).unwrap();
            assert_eq!(t.dims(), &[rows.len(), m.hidden_size()]);
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let want = bits(&load_model_with(&ModelOptions {
            sub_batch_bytes: None,
            ..ModelOptions::default()
        }));
        let cfg = DnaBertConfig::from_file(oracle().join("dnabert/config.json")).unwrap();
        let per_token = DnaBert::bytes_per_token(&cfg, DType::F32);
        let l = batch.max_len;
        for tokens in [1, 2 * l, 4 * l] {
            assert!(batch.sub_batches(Some(tokens)).len() > 1, "{tokens}");
            let model = load_model_with(&ModelOptions {
                sub_batch_bytes: Some(tokens * per_token),
                ..ModelOptions::default()
            });
            assert_eq!(model.sub_batch_tokens, Some(tokens));
            assert!(bits(&model) == want, "{tokens}: pooled rows");
        }
    }

    #[test]
    fn dnabert_tokenizer_basics() {
        let tok = load_tokenizer(512);
        assert_eq!(tok.pad_id(), 3);
        let ids = tok.encode("x", b"ACGT").unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        // N is outside the vocabulary: [UNK] (id 0).
        let ids = tok.encode("n", b"NNN").unwrap();
        assert!(ids[1..ids.len() - 1].iter().all(|&t| t == 0));
    }

    #[test]
    fn dnabert_tokenizer_uppercases() {
        let tok = load_tokenizer(512);
        let seq = b"TCAATGCTGCGAAGCTCCGTCGCCACGGGGCTTTGTCCGAGC";
        let upper = tok.encode("u", seq).unwrap();
        let lower = tok.encode("l", &seq.to_ascii_lowercase()).unwrap();
        let mixed = tok
            .encode("m", b"TCAATGctgcgaagcTCCGTCGCCACGGGGCTTTGTCCGAGC")
            .unwrap();
        assert_eq!(upper, lower);
        assert_eq!(upper, mixed);
        // Without upper-casing, the raw tokenizer maps lower-case bases to [UNK] only.
        let raw = tok
            .inner
            .encode(
                std::str::from_utf8(&seq.to_ascii_lowercase()).unwrap(),
                true,
            )
            .unwrap();
        let raw = raw.get_ids();
        assert!(raw[1..raw.len() - 1].iter().all(|&t| t == 0));
        assert_ne!(raw, &upper[..]);
    }

    #[test]
    fn dnabert_too_long_input_names_record() {
        let tok = load_tokenizer(8);
        let seq = b"ATCTCCGGTATAGCATCTCTCGATCCCGTTCAATGAATCC";
        let err = tok.encode("rec_too_long", seq).unwrap_err().to_string();
        assert!(err.contains("rec_too_long"), "{err}");
        assert!(err.contains('8'), "{err}");
        // Exactly at the limit passes.
        let n = load_tokenizer(512).encode("x", seq).unwrap().len();
        assert!(n > 8);
        let tok = load_tokenizer(n);
        assert_eq!(tok.encode("x", seq).unwrap().len(), n);
    }

    #[test]
    fn dnabert_shape_mismatch_names_tensor() {
        let dir = oracle().join("dnabert");
        let base = DnaBertConfig::from_file(dir.join("config.json")).unwrap();
        let vb = vb_for(&dir.join("pytorch_model.bin"));

        let mut cfg = base.clone();
        cfg.hidden_size = 64;
        let err = DnaBert::load(vb.clone(), &cfg, &ModelOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("embeddings.word_embeddings.weight"), "{err}");

        let mut cfg = base.clone();
        cfg.intermediate_size = 512;
        let err = DnaBert::load(vb.clone(), &cfg, &ModelOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("encoder.layer.0.mlp.gated_layers.weight"),
            "{err}"
        );

        let mut cfg = base.clone();
        cfg.num_hidden_layers = 3;
        let err = DnaBert::load(vb, &cfg, &ModelOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("encoder.layer.2."), "{err}");
    }

    #[test]
    fn dnabert_config_validation() {
        let dir = oracle().join("dnabert");
        let cfg = DnaBertConfig::from_file(dir.join("config.json")).unwrap();
        assert_eq!(cfg.hidden_size, 128);
        assert_eq!(cfg.num_attention_heads, 2);
        assert_eq!(cfg.intermediate_size, 256);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.alibi_starting_size, Some(512));

        let minimal = r#"{"hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "vocab_size": 4096}"#;
        let cfg: DnaBertConfig = serde_json::from_str(minimal).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.type_vocab_size, 2);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert_eq!(cfg.head_dim(), 64);

        let mut bad = cfg.clone();
        bad.num_attention_heads = 7;
        let err = format!("{:#}", bad.validate().unwrap_err());
        assert!(err.contains("divisible"), "{err}");
        let mut bad = cfg.clone();
        bad.num_hidden_layers = 0;
        assert!(bad.validate().is_err());
        let mut bad = cfg;
        bad.layer_norm_eps = 0.0;
        assert!(bad.validate().is_err());

        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"hidden_size": 100, "num_hidden_layers": 1,
            "num_attention_heads": 3, "intermediate_size": 4, "vocab_size": 4}"#,
        )
        .unwrap();
        let err = format!("{:#}", DnaBertConfig::from_file(&p).unwrap_err());
        assert!(
            err.contains("divisible") && err.contains("config.json"),
            "{err}"
        );
    }

    /// Random weights for every checkpoint key of `cfg`.
    fn random_weights(cfg: &DnaBertConfig) -> std::collections::HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut m = std::collections::HashMap::new();
        let mut put = |name: String, shape: &[usize], std: f64| {
            let t = Tensor::randn(0f32, std as f32, shape, &dev).unwrap();
            m.insert(name, t);
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            &[cfg.vocab_size, h],
            1.0,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            &[cfg.type_vocab_size, h],
            1.0,
        );
        put("embeddings.LayerNorm.weight".into(), &[h], 1.0);
        put("embeddings.LayerNorm.bias".into(), &[h], 0.1);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            put(format!("{p}attention.self.Wqkv.weight"), &[3 * h, h], 0.2);
            put(format!("{p}attention.self.Wqkv.bias"), &[3 * h], 0.1);
            put(format!("{p}attention.output.dense.weight"), &[h, h], 0.1);
            put(format!("{p}attention.output.dense.bias"), &[h], 0.1);
            put(format!("{p}attention.output.LayerNorm.weight"), &[h], 1.0);
            put(format!("{p}attention.output.LayerNorm.bias"), &[h], 0.1);
            put(format!("{p}mlp.gated_layers.weight"), &[2 * i, h], 0.1);
            put(format!("{p}mlp.wo.weight"), &[h, i], 0.1);
            put(format!("{p}mlp.wo.bias"), &[h], 0.1);
            put(format!("{p}mlp.layernorm.weight"), &[h], 1.0);
            put(format!("{p}mlp.layernorm.bias"), &[h], 0.1);
        }
        m
    }

    /// The real model's 12 heads (non-power-of-two slopes) on a narrow random model.
    #[test]
    fn dnabert_twelve_heads_padding_invariance() {
        let cfg: DnaBertConfig = serde_json::from_str(
            r#"{"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 12,
                "intermediate_size": 64, "vocab_size": 40}"#,
        )
        .unwrap();
        let vb = VarBuilder::from_tensors(random_weights(&cfg), DType::F32, &Device::Cpu);
        let model = DnaBert::load(vb, &cfg, &ModelOptions::default()).unwrap();
        let rows: Vec<Vec<u32>> = [3usize, 40, 17, 2, 25]
            .iter()
            .enumerate()
            .map(|(r, &n)| {
                let mut v = vec![1u32];
                v.extend((0..n).map(|k| 5 + ((k * 7 + r * 3) % 35) as u32));
                v.push(2);
                v
            })
            .collect();
        let batched = model
            .forward_pooled(&make_batch(&rows, 3))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (r, row) in rows.iter().enumerate() {
            let alone = model
                .forward_pooled(&make_batch(std::slice::from_ref(row), 3))
                .unwrap()
                .get(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(alone.iter().all(|v| v.is_finite()));
            let e = rel_err(&batched[r], &alone);
            assert!(e <= 1e-6, "row {r}: batch vs alone {e:e}");
        }
    }

    #[test]
    fn dnabert_rejects_bad_batches() {
        let model = load_model();
        let bad_len = TokenBatch {
            ids: vec![1, 5, 2, 3],
            lengths: vec![0],
            max_len: 4,
        };
        assert!(model.forward_pooled(&bad_len).is_err());
        let bad_id = TokenBatch {
            ids: vec![1, 500, 2],
            lengths: vec![3],
            max_len: 3,
        };
        let err = model.forward_pooled(&bad_id).unwrap_err().to_string();
        assert!(err.contains("500"), "{err}");
    }
}
