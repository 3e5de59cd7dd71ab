//! ESM2 protein encoder (`model_type` "esm": facebook/esm2_*, "fast_esm": Synthyra/FastESM2_650),
//! as docs/MODELS.md describes it: pre-LayerNorm layers with rotary attention and exact GELU,
//! `emb_layer_norm_after` at the end, mean over the residue positions.
//!
//! VarBuilder paths mirror the checkpoint keys without their `esm.` prefix
//! (`embeddings.word_embeddings.weight`, `encoder.layer.{i}.attention.self.query.weight`, ...).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::layers::{
    attention, attention_rotary, split_qkv, split_qkv_views, weighted_pool, Act, AttentionMask,
    Embedding, LayerNorm, Linear, Packing, Rotary,
};
use super::options::{Ctx, ModelContext, ModelOptions};
use super::{Encoder, TokenBatch};
use virnucpro_kernels::PositionBias;

/// `config.json` of an ESM2-family checkpoint (the fields this encoder reads).
#[derive(Debug, Clone, Deserialize)]
pub struct EsmConfig {
    /// "esm" or "fast_esm".
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// ESM2's masked-token rescaling of the embeddings (see [`TokenDropout`]).
    #[serde(default)]
    pub token_dropout: Option<bool>,
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub emb_layer_norm_before: Option<bool>,
    /// Rotary base; ESM2 checkpoints leave it out (10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub hidden_act: Option<String>,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

/// Longest row the rotary tables are precomputed for (ESM2 was trained on 1024 residues +
/// `<cls>` + `<eos>`; longer rows also occur). Longer still computes the tables on the host at
/// every call, several times slower than a precomputed table on a GPU.
const PRECOMPUTED_POSITIONS: usize = 4098;
/// `<mask>` in the ESM alphabet, when config.json does not say.
const DEFAULT_MASK_TOKEN_ID: u32 = 32;

impl EsmConfig {
    /// Real-size configurations for `--random-weights`.
    pub fn esm2_650m() -> Self {
        Self::sized("esm", 33, 1280, 20, 5120)
    }

    pub fn esm2_3b() -> Self {
        Self::sized("esm", 36, 2560, 40, 10240)
    }

    fn sized(model_type: &str, layers: usize, hidden: usize, heads: usize, ffn: usize) -> Self {
        Self {
            model_type: model_type.to_string(),
            vocab_size: 33,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ffn,
            layer_norm_eps: 1e-5,
            token_dropout: Some(true),
            mask_token_id: Some(DEFAULT_MASK_TOKEN_ID),
            pad_token_id: Some(1),
            position_embedding_type: Some("rotary".into()),
            emb_layer_norm_before: Some(false),
            rope_theta: None,
            hidden_act: Some("gelu".into()),
        }
    }

    /// Checks what this implementation supports; the message names the field and its value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return Err(format!(
                "hidden_size ({}), num_attention_heads ({}) and num_hidden_layers ({}) must be positive",
                self.hidden_size, self.num_attention_heads, self.num_hidden_layers
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(2) {
            return Err(format!(
                "head size {} is odd; rotary embeddings need an even head size",
                self.hidden_size / self.num_attention_heads
            ));
        }
        match self.position_embedding_type.as_deref() {
            None | Some("rotary") => {}
            Some(other) => {
                return Err(format!(
                    "position_embedding_type \"{other}\" is not supported (ESM2 uses \"rotary\"; \
                     ESM-1b style absolute positions are not implemented)"
                ))
            }
        }
        if self.emb_layer_norm_before == Some(true) {
            return Err(
                "emb_layer_norm_before = true is not supported (ESM2 sets it false)".into(),
            );
        }
        match self.hidden_act.as_deref() {
            None | Some("gelu") => {}
            Some(other) => {
                return Err(format!(
                    "hidden_act \"{other}\" is not supported (ESM2 uses \"gelu\")"
                ))
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Whether the embeddings are rescaled by `(1 - 0.15*0.8) / (1 - mask_fraction)`.
///
/// `Auto` follows the model type: on for "esm" checkpoints whose config has `token_dropout`
/// true (all ESM2 releases), off for "fast_esm" (FastESM2's own model code applies none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenDropout {
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for TokenDropout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "yes" => Ok(Self::On),
            "off" | "false" | "no" => Ok(Self::Off),
            _ => Err(format!("`{s}` is not one of auto, on, off")),
        }
    }
}

impl fmt::Display for TokenDropout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

impl TokenDropout {
    /// Resolves `Auto` against the config; returns the decision and why, for the log.
    pub fn resolve(self, cfg: &EsmConfig) -> (bool, String) {
        match self {
            Self::On => (true, "on (--esm-token-dropout on)".into()),
            Self::Off => (false, "off (--esm-token-dropout off)".into()),
            Self::Auto => {
                if cfg.model_type == "fast_esm" {
                    (
                        false,
                        "off (auto: model_type fast_esm applies no token-dropout scaling)".into(),
                    )
                } else if cfg.token_dropout.unwrap_or(false) {
                    (
                        true,
                        format!(
                            "on (auto: model_type {} with token_dropout true)",
                            cfg.model_type
                        ),
                    )
                } else {
                    (
                        false,
                        format!(
                            "off (auto: model_type {} with token_dropout false)",
                            cfg.model_type
                        ),
                    )
                }
            }
        }
    }
}

/// How a batch's sequences lie in the activations.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// `[batch, max_len, hidden]`, padding masked (GPUs: the fused kernels take this layout).
    Padded(&'a AttentionMask),
    /// `[1, total, hidden]`, end to end ([`Packing`], the CPU's layout).
    Packed(&'a Packing),
}

/// Pre-LN self-attention block: `x + Wo·Attn(LN(x))`.
#[derive(Debug, Clone)]
struct EsmAttention {
    qkv: Linear,
    out: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    ctx: Ctx,
    span: tracing::Span,
}

impl EsmAttention {
    fn load(vb: VarBuilder, cfg: &EsmConfig, ctx: &Ctx) -> Result<Self> {
        let h = cfg.hidden_size;
        let sa = vb.pp("self");
        let qkv = Linear::load_fused(&[sa.pp("query"), sa.pp("key"), sa.pp("value")], h, h, ctx)?;
        let out = Linear::load(vb.pp("output").pp("dense"), h, h, ctx)?;
        let layer_norm = LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps, ctx)?;
        Ok(Self {
            qkv,
            out,
            layer_norm,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            ctx: ctx.clone(),
            span: tracing::span!(tracing::Level::TRACE, "esm_attention"),
        })
    }

    fn forward(&self, x: &Tensor, rows: Rows, rotary: &Rotary) -> Result<Tensor> {
        match rows {
            Rows::Padded(mask) => self.forward_padded(x, mask, rotary),
            Rows::Packed(packing) => self.forward_packed(x, packing, rotary),
        }
    }

    /// [`Self::forward_padded`] on packed rows: one projection over every token, then attention
    /// on each sequence's rows (rotary positions counted from its first token).
    fn forward_packed(&self, x: &Tensor, packing: &Packing, rotary: &Rotary) -> Result<Tensor> {
        let _enter = self.span.enter();
        let dev = x.device();
        let kernels = self.ctx.kernels();
        let normed = self
            .ctx
            .section("esm layer_norm", dev, || self.layer_norm.forward(x, None))?;
        let qkv = self
            .ctx
            .section("esm qkv linear", dev, || self.qkv.forward(&normed))?;
        drop(normed);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        if dev.is_cpu() && qkv.dtype() == DType::F32 {
            let ctx = self.ctx.section("esm attention", dev, || {
                let longest = packing.spans().iter().map(|s| s.1).max().unwrap_or(0);
                let (cos, sin) = rotary.cpu_tables(longest)?;
                virnucpro_kernels::cpu_packed_attention(
                    &qkv,
                    packing.spans(),
                    self.heads,
                    self.head_dim,
                    scale as f32,
                    PositionBias::Rotary {
                        cos: &cos,
                        sin: &sin,
                    },
                )
            })?;
            drop(qkv);
            return self.ctx.section("esm out linear+res", dev, || {
                self.out.forward_with(&ctx, Act::Identity, Some(x))
            });
        }
        let ctx = self.ctx.section("esm attention", dev, || {
            packing.per_sequence(&qkv, |len, rows| {
                let (q, k, v) = split_qkv(rows, self.heads, self.head_dim)?;
                let (q, k) = (rotary.forward(&q)?, rotary.forward(&k)?);
                let alone = AttentionMask::new(&[len], len, q.dtype(), q.device())?;
                attention(&q, &k, &v, &alone, scale, kernels)
            })
        })?;
        drop(qkv);
        self.ctx.section("esm out linear+res", dev, || {
            self.out.forward_with(&ctx, Act::Identity, Some(x))
        })
    }

    fn forward_padded(&self, x: &Tensor, mask: &AttentionMask, rotary: &Rotary) -> Result<Tensor> {
        let _enter = self.span.enter();
        let dev = x.device();
        let kernels = self.ctx.kernels();
        let normed = self
            .ctx
            .section("esm layer_norm", dev, || self.layer_norm.forward(x, None))?;
        let qkv = self
            .ctx
            .section("esm qkv linear", dev, || self.qkv.forward(&normed))?;
        // Each activation is dropped as soon as it is dead: the device's peak memory is the sum
        // of what lives at once (docs/BENCHMARKS.md, "predict (GPU)").
        drop(normed);
        let fused = kernels.use_fused_attention(qkv.dtype(), self.head_dim, qkv.device())?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // Strided [b, heads, l, d] views of the projection: the fused kernel reads them in place.
        let views = split_qkv_views(&qkv, self.heads, self.head_dim)?;
        if fused {
            // Hopper: the attention kernel rotates q and k as it loads them (no rotary pass).
            let (q, k, v) = &views;
            if let Some(ctx) = self.ctx.section("esm attention+rotary", dev, || {
                attention_rotary(q, k, v, mask, rotary, scale, kernels)
            })? {
                drop((views, qkv));
                return self.ctx.section("esm out linear+res", dev, || {
                    self.out.forward_with(&ctx, Act::Identity, Some(x))
                });
            }
        }
        if let Some((q, k)) = self.ctx.section("esm rotary q/k", dev, || {
            rotary.forward_qkv(&qkv, self.heads, kernels)
        })? {
            // Rotated q and k written once by one kernel; v read in place by the fused kernel.
            let ctx = self.ctx.section("esm attention", dev, || {
                attention(&q, &k, &views.2, mask, scale, kernels)
            })?;
            drop((q, k, views, qkv));
            return self.ctx.section("esm out linear+res", dev, || {
                self.out.forward_with(&ctx, Act::Identity, Some(x))
            });
        }
        let (q, k, v) = if fused {
            // rotary copies q and k once anyway, and the fused kernel reads v in place (one
            // copy of the projection saved per layer).
            views
        } else {
            split_qkv(&qkv, self.heads, self.head_dim)?
        };
        let q = rotary.forward(&q)?;
        let k = rotary.forward(&k)?;
        let ctx = attention(&q, &k, &v, mask, scale, kernels)?;
        self.out.forward_with(&ctx, Act::Identity, Some(x))
    }
}

/// One transformer layer: attention block, then `h + W2·gelu(W1·LN(h))`.
#[derive(Debug, Clone)]
struct EsmLayer {
    attention: EsmAttention,
    layer_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    ctx: Ctx,
    span: tracing::Span,
}

impl EsmLayer {
    fn load(vb: VarBuilder, cfg: &EsmConfig, ctx: &Ctx) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: EsmAttention::load(vb.pp("attention"), cfg, ctx)?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), h, cfg.layer_norm_eps, ctx)?,
            intermediate: Linear::load(vb.pp("intermediate").pp("dense"), h, i, ctx)?,
            output: Linear::load(vb.pp("output").pp("dense"), i, h, ctx)?,
            ctx: ctx.clone(),
            span: tracing::span!(tracing::Level::TRACE, "esm_layer"),
        })
    }

    /// Takes the layer's input by value: it is dropped once the attention block's residual add
    /// has read it.
    fn forward(&self, x: Tensor, rows: Rows, rotary: &Rotary) -> Result<Tensor> {
        let _enter = self.span.enter();
        let dev = &x.device().clone();
        let h = self.attention.forward(&x, rows, rotary)?;
        drop(x);
        let normed = self
            .ctx
            .section("esm layer_norm", dev, || self.layer_norm.forward(&h, None))?;
        let ff = self.ctx.section("esm ffn1 linear+gelu", dev, || {
            self.intermediate.forward_with(&normed, Act::GeluErf, None)
        })?;
        drop(normed);
        self.ctx.section("esm ffn2 linear+res", dev, || {
            self.output.forward_with(&ff, Act::Identity, Some(&h))
        })
    }
}

/// The ESM2 encoder, pooled over residue positions.
#[derive(Debug, Clone)]
pub struct Esm {
    word_embeddings: Embedding,
    /// The embedding table already multiplied by the factor every token of a batch without
    /// `<mask>` gets (the token-dropout scale, or 1), plus a zero row for padding at index
    /// `vocab`: one lookup instead of a lookup and a broadcast multiply over `[batch, len,
    /// hidden]`, which is a measurable share of a GPU `predict`. The values are those of the
    /// multiply (the same op, once per table entry).
    scaled_lookup: Embedding,
    layers: Vec<EsmLayer>,
    emb_layer_norm_after: LayerNorm,
    rotary: Rotary,
    hidden_size: usize,
    /// Token-dropout rescaling applied to the embeddings.
    token_dropout: bool,
    mask_token_id: u32,
    device: Device,
    dtype: DType,
    /// The most padded tokens run at once ([`ModelOptions::sub_batch_bytes`]).
    sub_batch_tokens: Option<usize>,
    ctx: Ctx,
    span: tracing::Span,
}

impl Esm {
    /// Bytes of activations a layer keeps alive per padded token at its peak, the feed-forward
    /// pass: its input, its layer norm and the GELU intermediate (then the input, the
    /// intermediate and the output). The attention block holds 5 rows of `hidden` with the
    /// fused kernel (input, layer norm, q/k/v), fewer than the `2 + 4` of ESM2's feed-forward;
    /// the unfused path's rotated q and k add 2 more.
    fn bytes_per_token(cfg: &EsmConfig, dtype: DType) -> usize {
        (2 * cfg.hidden_size + cfg.intermediate_size) * dtype.size_in_bytes()
    }

    /// Builds the encoder from `vb` (rooted where the `esm.` prefix has been stripped);
    /// `token_dropout` is the resolved choice (see [`TokenDropout::resolve`]); `options` are kept
    /// by the model and its layers.
    pub fn load(
        vb: VarBuilder,
        cfg: &EsmConfig,
        token_dropout: bool,
        options: &ModelOptions,
    ) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let ctx = ModelContext::new(options);
        let word_embeddings = Embedding::load(
            vb.pp("embeddings").pp("word_embeddings"),
            cfg.vocab_size,
            cfg.hidden_size,
            &ctx,
        )?;
        let enc = vb.pp("encoder");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EsmLayer::load(enc.pp("layer").pp(i), cfg, &ctx))
            .collect::<Result<Vec<_>>>()?;
        let emb_layer_norm_after = LayerNorm::load(
            enc.pp("emb_layer_norm_after"),
            cfg.hidden_size,
            cfg.layer_norm_eps,
            &ctx,
        )?;
        let scaled_lookup = Self::scaled_table(&word_embeddings, token_dropout, &ctx)?;
        let rotary = Rotary::new(
            cfg.head_dim(),
            cfg.rope_theta.unwrap_or(10000.0),
            PRECOMPUTED_POSITIONS,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            word_embeddings,
            scaled_lookup,
            layers,
            emb_layer_norm_after,
            rotary,
            hidden_size: cfg.hidden_size,
            token_dropout,
            mask_token_id: cfg.mask_token_id.unwrap_or(DEFAULT_MASK_TOKEN_ID),
            device: vb.device().clone(),
            dtype: vb.dtype(),
            sub_batch_tokens: ctx.sub_batch_tokens(Self::bytes_per_token(cfg, vb.dtype())),
            ctx,
            span: tracing::span!(tracing::Level::TRACE, "esm"),
        })
    }

    /// Token-dropout scale of a row with `fraction` of its tokens `<mask>`.
    fn dropout_scale(fraction: f64) -> f32 {
        ((1.0 - 0.15 * 0.8) / (1.0 - fraction)) as f32
    }

    /// See `scaled_lookup`: `[table * factor; 0]`, factor the mask-free one, multiplied as
    /// [`Self::forward`]'s general path does (factor cast to the table's dtype first).
    fn scaled_table(table: &Embedding, token_dropout: bool, ctx: &Ctx) -> Result<Embedding> {
        let w = table.weight();
        let factor = if token_dropout {
            Self::dropout_scale(0.0)
        } else {
            1.0
        };
        let factor = Tensor::new(&[[factor]], w.device())?.to_dtype(w.dtype())?;
        let scaled = w.broadcast_mul(&factor)?;
        let zero = Tensor::zeros((1, w.dim(1)?), w.dtype(), w.device())?;
        Embedding::from_weight(Tensor::cat(&[&scaled, &zero], 0)?, ctx)
    }

    /// Per-position embedding factor `[batch, len, 1]`: 0 on padding (and on `<mask>` when
    /// rescaling), else the row's token-dropout scale (or 1).
    fn embedding_factors(&self, batch: &TokenBatch) -> Vec<f32> {
        let l = batch.max_len;
        let mut f = vec![0f32; batch.batch_size() * l];
        for (b, &len) in batch.lengths.iter().enumerate() {
            let row = &batch.ids[b * l..b * l + len];
            let scale = if self.token_dropout {
                let masked = row.iter().filter(|&&t| t == self.mask_token_id).count();
                Self::dropout_scale(masked as f64 / len as f64)
            } else {
                1.0
            };
            for (j, &t) in row.iter().enumerate() {
                let masked = self.token_dropout && t == self.mask_token_id;
                f[b * l + j] = if masked { 0.0 } else { scale };
            }
        }
        f
    }

    /// `last_hidden_state` `[batch, len, hidden]` in the compute dtype, computed by sub-batches
    /// within [`ModelOptions::sub_batch_bytes`].
    pub fn forward(&self, batch: &TokenBatch) -> Result<Tensor> {
        let _enter = self.span.enter();
        check_batch(batch)?;
        let has_mask = self.has_mask(batch);
        batch.by_sub_batches(self.sub_batch_tokens, |rows| {
            self.forward_rows(rows, has_mask)
        })
    }

    /// Whether the embeddings take the general path (some `<mask>` to rescale) rather than the
    /// pre-multiplied table. Decided once for the whole batch, so that its sub-batches run the
    /// very ops of the whole batch.
    fn has_mask(&self, batch: &TokenBatch) -> bool {
        self.token_dropout && batch.ids.contains(&self.mask_token_id)
    }

    /// [`Self::forward`] of one (sub-)batch, all at once; `has_mask`: see [`Self::has_mask`].
    fn forward_rows(&self, batch: &TokenBatch, has_mask: bool) -> Result<Tensor> {
        let (b, l) = (batch.batch_size(), batch.max_len);
        let mut x = if has_mask {
            let ids = Tensor::from_slice(&batch.ids, (b, l), &self.device)?;
            let factors = Tensor::from_vec(self.embedding_factors(batch), (b, l, 1), &self.device)?
                .to_dtype(self.dtype)?;
            self.word_embeddings
                .forward(&ids)?
                .broadcast_mul(&factors)?
        } else {
            // Every real token has the same factor: the pre-multiplied table, padding -> its
            // zero row.
            let zero_row = self.scaled_lookup.weight().dim(0)? as u32 - 1;
            let mut ids = batch.ids.clone();
            for (row, &len) in ids.chunks_mut(l.max(1)).zip(&batch.lengths) {
                row[len..].fill(zero_row);
            }
            let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
            self.scaled_lookup.forward(&ids)?
        };
        let mask = AttentionMask::new(&batch.lengths, l, self.dtype, &self.device)?;
        for layer in &self.layers {
            x = layer.forward(x, Rows::Padded(&mask), &self.rotary)?;
        }
        self.emb_layer_norm_after.forward(&x, None)
    }

    /// [`Encoder::forward_pooled`] on padded rows (what GPUs run): each sub-batch is pooled as
    /// soon as it is computed, so only its `[rows, hidden]` pooled result outlives it.
    fn forward_pooled_padded(&self, batch: &TokenBatch) -> Result<Tensor> {
        let _enter = self.span.enter();
        check_batch(batch)?;
        let has_mask = self.has_mask(batch);
        batch.by_sub_batches(self.sub_batch_tokens, |rows| {
            let hidden = self.forward_rows(rows, has_mask)?;
            let l = rows.max_len;
            let mut w = vec![0f32; rows.batch_size() * l];
            for (b, &len) in rows.lengths.iter().enumerate() {
                let residues = len - 2;
                for j in 1..=residues {
                    w[b * l + j] = 1.0 / residues as f32;
                }
            }
            weighted_pool(&hidden, w, self.ctx.kernels())
        })
    }

    /// The pooled embeddings of [`Encoder::forward_pooled`] computed on packed rows
    /// ([`Packing`]): what the CPU runs.
    fn forward_pooled_packed(&self, batch: &TokenBatch) -> Result<Tensor> {
        let _enter = self.span.enter();
        check_batch(batch)?;
        let l = batch.max_len;
        let packing = Packing::new(&batch.lengths);
        let t = packing.total();
        let ids = Tensor::from_vec(packing.pack(&batch.ids, l), (1, t), &self.device)?;
        let mut x = if self.has_mask(batch) {
            let factors = packing.pack(&self.embedding_factors(batch), l);
            let factors =
                Tensor::from_vec(factors, (1, t, 1), &self.device)?.to_dtype(self.dtype)?;
            self.word_embeddings
                .forward(&ids)?
                .broadcast_mul(&factors)?
        } else {
            self.scaled_lookup.forward(&ids)?
        };
        for layer in &self.layers {
            x = layer.forward(x, Rows::Packed(&packing), &self.rotary)?;
        }
        let x = self.emb_layer_norm_after.forward(&x, None)?;
        // The residues: `<cls>` and `<eos>` left out.
        packing.mean_pool(&x, |len| 1..len - 1)
    }
}

/// Rejects malformed batches before they reach the kernels.
fn check_batch(batch: &TokenBatch) -> Result<()> {
    if batch.ids.len() != batch.batch_size() * batch.max_len {
        candle_core::bail!(
            "token batch holds {} ids, expected batch {} x max_len {}",
            batch.ids.len(),
            batch.batch_size(),
            batch.max_len
        );
    }
    if let Some(&len) = batch
        .lengths
        .iter()
        .find(|&&len| len < 3 || len > batch.max_len)
    {
        candle_core::bail!(
            "token row of length {len} (max_len {}): an ESM row needs <cls>, at least one residue and <eos>",
            batch.max_len
        );
    }
    Ok(())
}

impl Encoder for Esm {
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Mean over positions `1..=len-2` of each row (the residues; `<cls>`, `<eos>` and padding
    /// excluded).
    fn forward_pooled(&self, batch: &TokenBatch) -> Result<Tensor> {
        if self.device.is_cpu() {
            return self.forward_pooled_packed(batch);
        }
        self.forward_pooled_padded(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tokenize::EsmTokenizer;
    use crate::weights::{Checkpoint, WeightFiles, WeightsFormat};
    use crate::SeqTokenizer;

    fn oracle_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/oracle")
    }

    fn oracle_config() -> EsmConfig {
        let cfg = std::fs::read_to_string(oracle_dir().join("esm2/config.json")).unwrap();
        serde_json::from_str(&cfg).unwrap()
    }

    /// The oracle's tiny ESM2 (`tests/data/oracle/esm2`) on the CPU in f32, built with `options`.
    fn oracle_esm(options: &ModelOptions) -> Esm {
        let dir = oracle_dir().join("esm2");
        let cfg = oracle_config();
        let files = WeightFiles {
            format: WeightsFormat::Safetensors,
            files: vec![dir.join("model.safetensors")],
        };
        let vb = Checkpoint::open(&files, "esm.", "oracle esm2")
            .unwrap()
            .into_var_builder(DType::F32, &Device::Cpu);
        let (token_dropout, _) = TokenDropout::Auto.resolve(&cfg);
        Esm::load(vb, &cfg, token_dropout, options).unwrap()
    }

    /// The oracle's protein records as one padded batch, in file order (long and short rows
    /// side by side), one residue of the longest row made `<mask>` so that the
    /// token-dropout path runs too.
    fn oracle_batch() -> TokenBatch {
        let tok = EsmTokenizer::from_file(&oracle_dir().join("esm2/vocab.txt")).unwrap();
        let fasta = std::fs::read_to_string(oracle_dir().join("inputs/proteins.fa")).unwrap();
        let mut rows: Vec<Vec<u32>> = fasta
            .split('>')
            .skip(1)
            .map(|rec| {
                let (id, seq) = rec.split_once('\n').unwrap_or((rec, ""));
                let seq: String = seq.split_whitespace().collect();
                tok.encode(id, seq.as_bytes()).unwrap()
            })
            .collect();
        let longest = (0..rows.len()).max_by_key(|&i| rows[i].len()).unwrap();
        rows[longest][5] = DEFAULT_MASK_TOKEN_ID;
        let max_len = rows.iter().map(Vec::len).max().unwrap();
        let mut ids = Vec::new();
        for r in &rows {
            ids.extend_from_slice(r);
            ids.resize(ids.len() + max_len - r.len(), tok.pad_id());
        }
        TokenBatch {
            ids,
            lengths: rows.iter().map(Vec::len).collect(),
            max_len,
        }
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The default budget splits ESM2-3B's default GPU batches in two (the memory target of
    /// issue 29) and leaves ESM2-650M's whole.
    #[test]
    fn default_sub_batches_split_only_the_3b_default_batch() {
        let ctx = ModelContext::new(&ModelOptions {
            sub_batch_bytes: Some(crate::options::SUGGESTED_SUB_BATCH_BYTES),
            ..ModelOptions::default()
        });
        let tokens = |cfg: &EsmConfig| {
            ctx.sub_batch_tokens(Esm::bytes_per_token(cfg, DType::F16))
                .unwrap()
        };
        let budget = crate::embed::DEFAULT_BATCH_TOKENS_GPU;
        let (t3b, t650m) = (
            tokens(&EsmConfig::esm2_3b()),
            tokens(&EsmConfig::esm2_650m()),
        );
        assert!(t3b < budget && 2 * t3b >= budget, "{t3b}");
        assert!(t650m >= budget, "{t650m}");
    }

    /// The padded path (what GPUs run) by sub-batches gives the whole batch's hidden states
    /// and pooled rows to the bit: a sub-batch put back in the wrong place, a row cut off or
    /// padded otherwise would show.
    #[test]
    fn padded_sub_batches_give_the_whole_batch_bits() {
        let batch = oracle_batch();
        let (b, l) = (batch.batch_size(), batch.max_len);
        assert!(b >= 5 && batch.lengths.iter().min() < batch.lengths.iter().max());
        let whole = oracle_esm(&ModelOptions {
            sub_batch_bytes: None,
            ..ModelOptions::default()
        });
        let want_hidden = whole.forward(&batch).unwrap();
        assert_eq!(want_hidden.dims(), &[b, l, whole.hidden_size]);
        let want_hidden = bits(&want_hidden);
        let want_pooled = bits(&whole.forward_pooled_padded(&batch).unwrap());
        let per_token = Esm::bytes_per_token(&oracle_config(), DType::F32);
        // Every row alone, pairs, and two sub-batches of unequal lengths' rows.
        for tokens in [1, 2 * l, 4 * l] {
            let model = oracle_esm(&ModelOptions {
                sub_batch_bytes: Some(tokens * per_token),
                ..ModelOptions::default()
            });
            assert_eq!(model.sub_batch_tokens, Some(tokens));
            assert!(
                batch.sub_batches(Some(tokens)).len() > 1,
                "{tokens}: not split"
            );
            let hidden = model.forward(&batch).unwrap();
            assert_eq!(hidden.dims(), &[b, l, whole.hidden_size]);
            assert!(bits(&hidden) == want_hidden, "{tokens}: hidden states");
            let pooled = bits(&model.forward_pooled_padded(&batch).unwrap());
            assert!(pooled == want_pooled, "{tokens}: pooled rows");
        }
    }
}
