//! `virnucpro bench`: embedding throughput of one model on synthetic token batches.
//!
//! The model is a checkpoint (directory or Hub ID) or a real architecture with seeded random
//! weights (`esm2-650m`, `esm2-3b`, `dnabert-s`): weights do not change the time. Each batch shape
//! `B x T` is a batch of `B` rows padded to `T` tokens; rows are all `T` long, or (with
//! `ragged`) of random length in `T/2..=T`. Throughput counts real tokens only.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use virnucpro_assets::load::load_embedding_model;
use virnucpro_kernels::{self as kernels, AttentionImpl, CpuMatmul, GemmFallback, KernelOptions};
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::{cpu_model_options, precision_label, resolve_dtype, DTypeSpec};
use virnucpro_models::dnabert::{DnaBert, DnaBertConfig};
use virnucpro_models::embed::{LoadOptions, RandomModel, DNABERT_S_CONFIG};
use virnucpro_models::esm::{Esm, EsmConfig};
use virnucpro_models::layers::{split_qkv, AttentionMask, Rotary};
use virnucpro_models::options::ModelOptions;
use virnucpro_models::profile::Profiler;
use virnucpro_models::weights::RandomWeights;
use virnucpro_models::{Encoder, TokenBatch};

use crate::progress::Progress;
use crate::timing::{self, Timing};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `esm2-650m`, `esm2-3b`, `dnabert-s` (random weights) or a model directory / Hub ID.
    pub model: String,
    pub dtype: DTypeSpec,
    /// (batch, padded length) shapes.
    pub shapes: Vec<(usize, usize)>,
    /// Random row lengths in `T/2..=T` instead of all `T`.
    pub ragged: bool,
    pub warmup: usize,
    pub repeats: usize,
    /// Attention implementations to time (a model is built with each).
    pub attention: Vec<AttentionImpl>,
    /// The rest of the models' options (the profiler's report is sent after the timings).
    pub model_options: ModelOptions,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub batch: usize,
    pub len: usize,
    pub ragged: bool,
    pub attention: AttentionImpl,
    /// Real tokens per batch (special tokens included).
    pub real_tokens: usize,
    pub time: Timing,
    pub tokens_per_s: f64,
    pub seqs_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub family: String,
    pub hidden: usize,
    pub device: String,
    pub dtype: String,
    pub rows: Vec<BenchRow>,
}

/// A model to time: the encoder plus what the synthetic batches need.
pub struct BenchModel {
    pub encoder: Box<dyn Encoder>,
    pub family: ModelFamily,
    pub dtype: DType,
    /// The CPU matrix path it was built with (f32, int8, bf16).
    pub cpu_matmul: CpuMatmul,
    pub source: String,
    /// The attention implementation it was built with.
    pub attention: AttentionImpl,
    /// Token ids for synthetic rows: (first, last, pad, lowest ordinary id, vocabulary size).
    specials: (u32, u32, u32, u32, u32),
}

/// Builds the model of `spec` (a named random shape, or a checkpoint) on `device`, once per
/// attention implementation (the same weights each time).
pub fn build_models(
    spec: &str,
    device: &Device,
    dtype: DTypeSpec,
    options: &ModelOptions,
    attention: &[AttentionImpl],
) -> Result<Vec<BenchModel>> {
    attention
        .iter()
        .map(|&imp| {
            let options = ModelOptions {
                kernels: options.kernels.with_attention(imp),
                ..options.clone()
            };
            build_model(spec, device, dtype, &options)
        })
        .collect()
}

/// Builds the model of `spec` (a named random shape, or a checkpoint) on `device`.
pub fn build_model(
    spec: &str,
    device: &Device,
    dtype: DTypeSpec,
    options: &ModelOptions,
) -> Result<BenchModel> {
    let attention = options.kernels.attention;
    let options = &cpu_model_options(dtype, device, options)?;
    let cpu_matmul = options.kernels.cpu_matmul;
    const SEED: u64 = 0x5eed;
    // ESM alphabet: <cls>=0 <pad>=1 <eos>=2, residues from 4; DNABERT-S: [CLS]=1 [SEP]=2
    // [PAD]=3, k-mers from 5.
    let esm_ids = (0, 2, 1, 4, 24);
    match spec.parse::<RandomModel>() {
        Ok(RandomModel::Esm2_650m) | Ok(RandomModel::Esm2_3b) => {
            let cfg = if spec.eq_ignore_ascii_case("esm2-650m") {
                EsmConfig::esm2_650m()
            } else {
                EsmConfig::esm2_3b()
            };
            let dt = resolve_dtype(dtype, ModelFamily::Esm, device);
            let vb = RandomWeights { seed: SEED }.into_var_builder(dt, device);
            // FastESM2 applies no token-dropout scaling; the time is the same either way.
            let enc = Esm::load(vb, &cfg, false, options)?;
            Ok(BenchModel {
                encoder: Box::new(enc),
                family: ModelFamily::Esm,
                dtype: dt,
                cpu_matmul,
                source: format!("random-weights:{spec}"),
                attention,
                specials: esm_ids,
            })
        }
        Ok(RandomModel::DnaBertS) => {
            let cfg: DnaBertConfig =
                serde_json::from_str(DNABERT_S_CONFIG).context("built-in DNABERT-S config")?;
            let dt = resolve_dtype(dtype, ModelFamily::DnaBert, device);
            let vb = RandomWeights { seed: SEED }.into_var_builder(dt, device);
            let enc = DnaBert::load(vb, &cfg, options)?;
            Ok(BenchModel {
                encoder: Box::new(enc),
                family: ModelFamily::DnaBert,
                dtype: dt,
                cpu_matmul,
                source: "random-weights:dnabert-s".into(),
                attention,
                specials: (1, 2, 3, 5, cfg.vocab_size as u32),
            })
        }
        Err(_) => {
            let load = LoadOptions {
                model: options.clone(),
                ..LoadOptions::default()
            };
            let m = load_embedding_model(spec, device, dtype, &load)?;
            let specials = match m.family {
                ModelFamily::Esm => esm_ids,
                ModelFamily::DnaBert => {
                    // Ordinary ids must exist in the model's vocabulary (a test model has few).
                    let vocab = m.tokenizer.vocab_size().unwrap_or(4096).max(6) as u32;
                    (1, 2, m.tokenizer.pad_id(), 5, vocab)
                }
            };
            Ok(BenchModel {
                encoder: m.encoder,
                family: m.family,
                dtype: m.dtype,
                cpu_matmul: m.options.kernels.cpu_matmul,
                source: m.source,
                attention,
                specials,
            })
        }
    }
}

/// A synthetic batch: `b` rows padded to `t`, first/last special tokens, random ids between.
pub fn synthetic_batch(
    model: &BenchModel,
    b: usize,
    t: usize,
    ragged: bool,
    seed: u64,
) -> TokenBatch {
    let (first, last, pad, lo, vocab) = model.specials;
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut ids = vec![pad; b * t];
    let mut lengths = Vec::with_capacity(b);
    for row in 0..b {
        let len = if ragged && t >= 6 {
            let lo_len = t / 2;
            lo_len + (next() % (t - lo_len + 1) as u64) as usize
        } else {
            t
        }
        .max(3);
        let r = &mut ids[row * t..row * t + len];
        r[0] = first;
        r[len - 1] = last;
        for x in &mut r[1..len - 1] {
            *x = lo + (next() % (vocab - lo) as u64) as u32;
        }
        lengths.push(len);
    }
    TokenBatch {
        ids,
        lengths,
        max_len: t,
    }
}

/// Builds the model of `opts` (once per attention implementation) and times it
/// ([`run_model`]); the `VIRNUCPRO_PROFILE` sections, when profiling is on, go to `progress` as a
/// note at the end.
pub fn run(
    opts: &BenchOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<BenchReport> {
    let models = build_models(
        &opts.model,
        device,
        opts.dtype,
        &opts.model_options,
        &opts.attention,
    )
    .with_context(|| format!("cannot build model `{}`", opts.model))?;
    let profiler = opts.model_options.profiler.as_deref();
    let sweep = Sweep {
        shapes: &opts.shapes,
        ragged: opts.ragged,
        warmup: opts.warmup,
        repeats: opts.repeats,
    };
    let report = run_model(&models, device, sweep, profiler, progress);
    let profile = profiler.map(Profiler::take_report).unwrap_or_default();
    if !profile.is_empty() {
        progress.note(&format!(
            "VIRNUCPRO_PROFILE sections (timed passes, after warm-up):\n{profile}\n"
        ));
    }
    report
}

/// What [`run_model`] times: every shape, with each model.
#[derive(Debug, Clone, Copy)]
pub struct Sweep<'a> {
    /// (batch, padded length) shapes.
    pub shapes: &'a [(usize, usize)],
    /// Random row lengths in `T/2..=T` instead of all `T`.
    pub ragged: bool,
    pub warmup: usize,
    /// Timed repeats (the median is reported).
    pub repeats: usize,
}

/// Times `forward_pooled` on every shape of `sweep` with each of `models` (one model built per
/// attention implementation; median of `repeats` after `warmup` runs). Sends one note per row to
/// `progress` as it is measured. `profiler`: the one the models were built with, if any.
pub fn run_model(
    models: &[BenchModel],
    device: &Device,
    sweep: Sweep,
    profiler: Option<&Profiler>,
    progress: &mut dyn Progress,
) -> Result<BenchReport> {
    let Some(first) = models.first() else {
        bail!("nothing to measure: no attention implementation given");
    };
    let mut rows = Vec::new();
    for &(b, t) in sweep.shapes {
        let seed = 0x9e37 + (b * 131 + t) as u64;
        let batch = synthetic_batch(first, b, t, sweep.ragged, seed);
        for model in models {
            if let Some(p) = profiler {
                profile_one_pass(model, &batch, device, sweep.warmup, p, progress)?;
            }
            rows.push(time_shape(model, &batch, device, sweep, progress)?);
        }
    }
    if rows.is_empty() {
        bail!("nothing to measure: give at least one shape");
    }
    Ok(BenchReport {
        model: first.source.clone(),
        family: first.family.to_string(),
        hidden: first.encoder.hidden_size(),
        device: virnucpro_models::device::device_name(device),
        dtype: precision_label(first.dtype, first.cpu_matmul).to_lowercase(),
        rows,
    })
}

/// Profiled passes after warm-up: the profile covers steady-state passes only (not kernel
/// compilation, GEMM tuning or first allocations). Also says whether a pass is host- or
/// device-bound: the enqueue time of one pass against its completion.
fn profile_one_pass(
    model: &BenchModel,
    batch: &TokenBatch,
    device: &Device,
    warmup: usize,
    profiler: &Profiler,
    progress: &mut dyn Progress,
) -> Result<()> {
    for _ in 0..warmup.max(1) {
        model.encoder.forward_pooled(batch)?;
    }
    device.synchronize()?;
    profiler.take_report();
    profiler.pause(true);
    let t0 = std::time::Instant::now();
    let out = model.encoder.forward_pooled(batch);
    let host = t0.elapsed().as_secs_f64() * 1e3;
    device.synchronize()?;
    let done = t0.elapsed().as_secs_f64() * 1e3;
    profiler.pause(false);
    drop(out?);
    progress.note(&format!(
        "profile {}x{}: one pass, host returns after {host:.2} ms, device done after {done:.2} ms\n",
        batch.batch_size(),
        batch.max_len
    ));
    profiler.take_report();
    Ok(())
}

/// One row: `model` timed on `batch`.
fn time_shape(
    model: &BenchModel,
    batch: &TokenBatch,
    device: &Device,
    sweep: Sweep,
    progress: &mut dyn Progress,
) -> Result<BenchRow> {
    let (b, t, imp, ragged) = (
        batch.batch_size(),
        batch.max_len,
        model.attention,
        sweep.ragged,
    );
    let real: usize = batch.lengths.iter().sum();
    let time = timing::measure(device, sweep.warmup, sweep.repeats, 1.0, || {
        model.encoder.forward_pooled(batch).map(drop)
    })
    .with_context(|| format!("{} at {b}x{t}, attention {imp}", model.source))?;
    let sec = time.median_ms * 1e-3;
    let row = BenchRow {
        batch: b,
        len: t,
        ragged,
        attention: imp,
        real_tokens: real,
        time,
        tokens_per_s: real as f64 / sec,
        seqs_per_s: b as f64 / sec,
    };
    progress.note(&format!(
        "bench {} {b}x{t}{} attention={imp}: {:.2} ms/batch, {:.0} tokens/s, {:.1} seqs/s\n",
        model.source,
        if ragged { " ragged" } else { "" },
        time.median_ms,
        row.tokens_per_s,
        row.seqs_per_s
    ));
    Ok(row)
}

/// One operation of an encoder layer, timed alone at a model's shape.
#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    pub op: String,
    pub time: Timing,
    /// Achieved rate: FLOP/s for matmuls and attention (TFLOP/s on a GPU, GFLOP/s on a CPU), GB/s
    /// (read + written) otherwise.
    pub rate: f64,
    pub unit: &'static str,
}

/// The unit of arithmetic rates on `device`: a CPU does tens of GFLOP/s, a GPU hundreds of
/// TFLOP/s.
pub fn flop_unit(device: &Device) -> &'static str {
    if device.is_cpu() {
        "GFLOP/s"
    } else {
        "TFLOP/s"
    }
}

/// Layer sizes of a named architecture: (hidden, heads, FFN rows of the first MLP matmul, FFN
/// width of the second).
pub fn layer_dims(model: &str) -> Result<(usize, usize, usize, usize)> {
    match model.parse::<RandomModel>() {
        Ok(RandomModel::Esm2_650m) => Ok((1280, 20, 5120, 5120)),
        Ok(RandomModel::Esm2_3b) => Ok((2560, 40, 10240, 10240)),
        // Gated MLP: 2 x 3072 rows in, 3072 out.
        Ok(RandomModel::DnaBertS) => Ok((768, 12, 6144, 3072)),
        Err(e) => bail!("--ops needs a named shape: {e}"),
    }
}

/// Times the building blocks of one encoder layer separately at `b x t` tokens: where the time of
/// a forward pass goes. Only what runs on `device` is timed: the fused kernels and cuBLASLt rows
/// need a CUDA device (elsewhere they would time candle's fallback under a fused kernel's name, or
/// nothing at all). Each row is also sent to `progress` as a note when it is measured.
pub fn op_profile(
    device: &Device,
    dtype: DType,
    (b, t): (usize, usize),
    (hidden, heads, ffn_in, ffn_out): (usize, usize, usize, usize),
    repeats: usize,
    options: &KernelOptions,
    progress: &mut dyn Progress,
) -> Result<Vec<OpRow>> {
    let x = OpInputs::new(
        device,
        dtype,
        (b, t),
        (hidden, heads, ffn_in, ffn_out),
        options,
    )?;
    let mut tm = OpTimer {
        device,
        repeats,
        flops: flop_unit(device),
        rows: Vec::new(),
        progress,
    };
    time_qkv_ops(&mut tm, &x)?;
    time_attention_ops(&mut tm, &x)?;
    time_out_and_norm_ops(&mut tm, &x)?;
    time_ffn_ops(&mut tm, &x)?;
    Ok(tm.rows)
}

/// Random inputs of one layer's operations at `b x t` tokens, built once for every row.
struct OpInputs {
    dtype: DType,
    device: Device,
    b: usize,
    t: usize,
    n: usize,
    hidden: usize,
    heads: usize,
    d: usize,
    ffn_in: usize,
    ffn_out: usize,
    x: Tensor,
    w_qkv: Tensor,
    bias_qkv: Tensor,
    w_out: Tensor,
    w1: Tensor,
    w2: Tensor,
    h1: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    qkv: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rotary: Rotary,
    /// cos/sin tables of the fused rotary kernel (CUDA only).
    rotary_f32: Option<(Tensor, Tensor)>,
    mask: AttentionMask,
    /// The fused kernels and cuBLASLt run on a CUDA device of a CUDA build only.
    fused: bool,
    kernels: KernelOptions,
    /// The cuBLASLt fallback state of these rows (a model holds its own).
    gemm: GemmFallback,
}

impl OpInputs {
    /// Whether these rows run on the CPU in f32, where the CPU kernels apply.
    fn cpu_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    fn new(
        device: &Device,
        dtype: DType,
        (b, t): (usize, usize),
        (hidden, heads, ffn_in, ffn_out): (usize, usize, usize, usize),
        options: &KernelOptions,
    ) -> Result<Self> {
        let n = b * t;
        let d = hidden / heads;
        let rnd = |shape: &[usize]| Self::random(device, dtype, shape);
        let x = rnd(&[n, hidden])?;
        let w_qkv = rnd(&[3 * hidden, hidden])?;
        let bias_qkv = rnd(&[3 * hidden])?;
        let w_out = rnd(&[hidden, hidden])?;
        let w1 = rnd(&[ffn_in, hidden])?;
        let w2 = rnd(&[hidden, ffn_out])?;
        let h1 = rnd(&[n, ffn_out])?;
        let ln_w = rnd(&[hidden])?;
        let ln_b = rnd(&[hidden])?;
        let qkv = x.matmul(&w_qkv.t()?)?.reshape((b, t, 3 * hidden))?;
        let (q, k, v) = split_qkv(&qkv, heads, d)?;
        let rotary = Rotary::new(d, 10000.0, t, dtype, device)?;
        let rotary_f32 = if device.is_cuda() {
            Some((
                Tensor::ones((t, d / 2), DType::F32, device)?,
                Tensor::zeros((t, d / 2), DType::F32, device)?,
            ))
        } else {
            None
        };
        let lens: Vec<usize> = vec![t; b];
        let mask = AttentionMask::new(&lens, t, dtype, device)?;
        let fused = kernels::CUDA_BUILT && device.is_cuda() && options.fused_ops;
        Ok(Self {
            dtype,
            device: device.clone(),
            b,
            t,
            n,
            hidden,
            heads,
            d,
            ffn_in,
            ffn_out,
            x,
            w_qkv,
            bias_qkv,
            w_out,
            w1,
            w2,
            h1,
            ln_w,
            ln_b,
            qkv,
            q,
            k,
            v,
            rotary,
            rotary_f32,
            mask,
            fused,
            kernels: *options,
            gemm: GemmFallback::default(),
        })
    }

    fn random(device: &Device, dtype: DType, shape: &[usize]) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype)
    }

    /// A tensor drawn when a row needs it, as the rows are timed in order.
    fn rnd(&self, shape: &[usize]) -> candle_core::Result<Tensor> {
        Self::random(&self.device, self.dtype, shape)
    }

    fn bytes(&self, elems: usize) -> f64 {
        elems as f64 * self.dtype.size_in_bytes() as f64
    }

    /// Whether a cuBLASLt row is timed: only where the call takes the cuBLASLt path (it declines
    /// shapes and dtypes it cannot handle, returning None, which would time as nothing).
    fn lt_runs(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: Option<&Tensor>,
        gelu: bool,
    ) -> Result<bool> {
        Ok(self.fused
            && kernels::linear(x, w, bias, res, gelu, &self.kernels, &self.gemm)?.is_some())
    }
}

/// FLOPs of an `[m, k] x [k, n]` matmul.
fn mm(m: usize, k: usize, n: usize) -> f64 {
    2.0 * (m * k * n) as f64
}

/// The CPU bf16 kernels to time: every one this CPU runs (a Sapphire Rapids has AMX and
/// AVX512-BF16), or the emulation where it runs none.
fn bf16_kernels() -> Vec<&'static str> {
    let all = kernels::cpu_bf16_kernels();
    if all.is_empty() {
        vec![kernels::cpu_bf16_isa().kernel]
    } else {
        all
    }
}

/// Times one operation after another and keeps their rows.
struct OpTimer<'a> {
    device: &'a Device,
    repeats: usize,
    /// The unit of arithmetic rates on this device ([`flop_unit`]).
    flops: &'static str,
    rows: Vec<OpRow>,
    progress: &'a mut dyn Progress,
}

impl OpTimer<'_> {
    fn time(
        &mut self,
        name: &str,
        work: f64,
        unit: &'static str,
        f: &mut dyn FnMut() -> candle_core::Result<()>,
    ) -> Result<()> {
        let tm = timing::measure(self.device, 2, self.repeats, 2.0, f)
            .with_context(|| format!("timing op `{name}`"))?;
        let per_s = work / (tm.median_ms * 1e-3);
        let rate = match unit {
            "TFLOP/s" => per_s / 1e12,
            _ => per_s / 1e9, // GFLOP/s, GB/s
        };
        self.progress.note(&format!(
            "op {name}: {:.3} ms, {} {unit}\n",
            tm.median_ms,
            fmt_rate(rate)
        ));
        self.rows.push(OpRow {
            op: name.to_string(),
            time: tm,
            rate,
            unit,
        });
        Ok(())
    }
}

/// The q/k/v projection, its bias, the split into heads and the rotary embedding.
fn time_qkv_ops(tm: &mut OpTimer, x: &OpInputs) -> Result<()> {
    let (n, hidden, heads, d, flops) = (x.n, x.hidden, x.heads, x.d, tm.flops);
    let (xs, w_qkv, bias_qkv, qkv) = (&x.x, &x.w_qkv, &x.bias_qkv, &x.qkv);
    tm.time(
        "matmul qkv [N,H]x[H,3H]",
        mm(n, hidden, 3 * hidden),
        flops,
        &mut || xs.matmul(&w_qkv.t()?).map(drop),
    )?;
    if x.lt_runs(xs, w_qkv, Some(bias_qkv), None, false)? {
        tm.time(
            "linear qkv cuBLASLt (+bias) [N,H]x[H,3H]",
            mm(n, hidden, 3 * hidden),
            flops,
            &mut || {
                kernels::linear(xs, w_qkv, Some(bias_qkv), None, false, &x.kernels, &x.gemm)
                    .map(drop)
            },
        )?;
        // GEMM speed on an H100 depends on the data (power draw): PyTorch's baseline uses
        // weights of std 0.02, as trained models have; this row uses the same.
        let w_qkv_small = (w_qkv * 0.02)?;
        tm.time(
            "linear qkv cuBLASLt (+bias), W std 0.02",
            mm(n, hidden, 3 * hidden),
            flops,
            &mut || {
                kernels::linear(
                    xs,
                    &w_qkv_small,
                    Some(bias_qkv),
                    None,
                    false,
                    &x.kernels,
                    &x.gemm,
                )
                .map(drop)
            },
        )?;
    }
    tm.time(
        "bias add [N,3H]",
        x.bytes(2 * n * 3 * hidden),
        "GB/s",
        &mut || qkv.broadcast_add(bias_qkv).map(drop),
    )?;
    if x.fused {
        tm.time(
            "bias add fused [N,3H]",
            x.bytes(2 * n * 3 * hidden),
            "GB/s",
            &mut || kernels::bias_act(qkv, bias_qkv, kernels::Act::Identity, None).map(drop),
        )?;
    }
    tm.time(
        "split_qkv (3 copies)",
        x.bytes(2 * n * 3 * hidden),
        "GB/s",
        &mut || split_qkv(qkv, heads, d).map(drop),
    )?;
    if let Some((cos, sin)) = x.rotary_f32.as_ref().filter(|_| x.fused) {
        tm.time(
            "rotary q+k fused from qkv",
            x.bytes(4 * n * hidden),
            "GB/s",
            &mut || kernels::rotary_qk(qkv, cos, sin, heads, d, &x.kernels).map(drop),
        )?;
    }
    tm.time("rotary (q)", x.bytes(2 * n * hidden), "GB/s", &mut || {
        x.rotary.forward(&x.q).map(drop)
    })
}

/// Attention alone, the fused kernel (where it runs) and the materialized path.
fn time_attention_ops(tm: &mut OpTimer, x: &OpInputs) -> Result<()> {
    let (b, t, heads, d, dtype, device, flops) =
        (x.b, x.t, x.heads, x.d, x.dtype, &x.device, tm.flops);
    let (q, k, v, mask) = (&x.q, &x.k, &x.v, &x.mask);
    let attn_flops = 4.0 * (b * heads * t * t * d) as f64;
    let scale = 1.0 / (d as f64).sqrt();
    if kernels::fused_attention_available(dtype, d, device) {
        let fused = x.kernels.with_attention(AttentionImpl::Fused);
        tm.time(
            "attention fused (+out layout)",
            attn_flops,
            flops,
            &mut || virnucpro_models::layers::attention(q, k, v, mask, scale, &fused).map(drop),
        )?;
    }
    let naive = x.kernels.with_attention(AttentionImpl::Naive);
    tm.time(
        "attention naive (+out layout)",
        attn_flops,
        flops,
        &mut || virnucpro_models::layers::attention(q, k, v, mask, scale, &naive).map(drop),
    )?;
    if x.cpu_f32() {
        // What the CPU's packed batches run: rotary, scores, softmax and output per (row, head).
        let spans: Vec<(usize, usize)> = (0..b).map(|i| (i * t, t)).collect();
        let (cos, sin) = x.rotary.cpu_tables(t)?;
        let qkv = x.qkv.reshape((1, b * t, 3 * heads * d))?;
        tm.time(
            "attention packed, CPU kernel (+rotary)",
            attn_flops,
            flops,
            &mut || {
                let pos = kernels::PositionBias::Rotary {
                    cos: &cos,
                    sin: &sin,
                };
                kernels::cpu_packed_attention(&qkv, &spans, heads, d, scale as f32, pos).map(drop)
            },
        )?;
    }
    Ok(())
}

/// The output projection, the residual add and LayerNorm in its three forms.
fn time_out_and_norm_ops(tm: &mut OpTimer, x: &OpInputs) -> Result<()> {
    let (n, hidden, flops) = (x.n, x.hidden, tm.flops);
    let (xs, w_out, ln_w, ln_b) = (&x.x, &x.w_out, &x.ln_w, &x.ln_b);
    tm.time(
        "matmul out [N,H]x[H,H]",
        mm(n, hidden, hidden),
        flops,
        &mut || xs.matmul(&w_out.t()?).map(drop),
    )?;
    let b_out = x.rnd(&[hidden])?;
    if x.lt_runs(xs, w_out, Some(&b_out), Some(xs), false)? {
        tm.time(
            "linear out cuBLASLt (+bias+res) [N,H]x[H,H]",
            mm(n, hidden, hidden),
            flops,
            &mut || {
                kernels::linear(
                    xs,
                    w_out,
                    Some(&b_out),
                    Some(xs),
                    false,
                    &x.kernels,
                    &x.gemm,
                )
                .map(drop)
            },
        )?;
    }
    tm.time(
        "residual add [N,H]",
        x.bytes(3 * n * hidden),
        "GB/s",
        &mut || (xs + xs).map(drop),
    )?;
    tm.time(
        "layer_norm [N,H] (candle op)",
        x.bytes(2 * n * hidden),
        "GB/s",
        &mut || candle_nn::ops::layer_norm(xs, ln_w, ln_b, 1e-5).map(drop),
    )?;
    if x.fused {
        tm.time(
            "layer_norm [N,H] (fused kernel)",
            x.bytes(2 * n * hidden),
            "GB/s",
            &mut || kernels::layer_norm(xs, ln_w, ln_b, 1e-5, &x.kernels).map(drop),
        )?;
    }
    tm.time(
        "layer_norm [N,H] (10 ops)",
        x.bytes(2 * n * hidden),
        "GB/s",
        &mut || {
            let mean = xs.mean_keepdim(candle_core::D::Minus1)?;
            let xc = xs.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
            let inv = (var + 1e-12)?.sqrt()?.recip()?;
            xc.broadcast_mul(&inv)?
                .broadcast_mul(ln_w)?
                .broadcast_add(ln_b)
                .map(drop)
        },
    )
}

/// The MLP: both matmuls, their cuBLASLt epilogues and the activations.
fn time_ffn_ops(tm: &mut OpTimer, x: &OpInputs) -> Result<()> {
    let (n, hidden, ffn_in, ffn_out, flops) = (x.n, x.hidden, x.ffn_in, x.ffn_out, tm.flops);
    let (xs, w1, w2, h1) = (&x.x, &x.w1, &x.w2, &x.h1);
    tm.time(
        "matmul ffn1 [N,H]x[H,F]",
        mm(n, hidden, ffn_in),
        flops,
        &mut || xs.matmul(&w1.t()?).map(drop),
    )?;
    if x.lt_runs(xs, w1, None, None, false)? {
        tm.time(
            "linear ffn1 cuBLASLt [N,H]x[H,F]",
            mm(n, hidden, ffn_in),
            flops,
            &mut || kernels::linear(xs, w1, None, None, false, &x.kernels, &x.gemm).map(drop),
        )?;
    }
    if ffn_in == 2 * ffn_out {
        let g = x.rnd(&[n, ffn_in])?;
        let name = if x.fused {
            "gated_gelu fused [N,2F]->[N,F]"
        } else if x.cpu_f32() {
            "gated_gelu CPU kernel [N,2F]->[N,F]"
        } else {
            "gated_gelu (candle ops) [N,2F]->[N,F]"
        };
        tm.time(name, x.bytes(3 * n * ffn_out), "GB/s", &mut || {
            kernels::gated_gelu(&g, ffn_out, &x.kernels).map(drop)
        })?;
    }
    tm.time(
        "gelu_erf [N,F] (candle op)",
        x.bytes(2 * n * ffn_out),
        "GB/s",
        &mut || h1.gelu_erf().map(drop),
    )?;
    let b1 = x.rnd(&[ffn_out])?;
    if x.cpu_f32() {
        tm.time(
            "bias+gelu CPU kernel [N,F]",
            x.bytes(2 * n * ffn_out),
            "GB/s",
            &mut || kernels::bias_act(h1, &b1, kernels::Act::GeluErf, None).map(drop),
        )?;
        if x.kernels.cpu_matmul == CpuMatmul::Bf16 {
            for kernel in bf16_kernels() {
                let l1 = kernels::Bf16Linear::on_kernel(w1, Some(&b1), kernel)?;
                let name = format!("linear ffn1 bf16 ({kernel}) [N,H]x[H,F]");
                tm.time(&name, mm(n, hidden, ffn_in), flops, &mut || {
                    l1.forward(xs).map(drop)
                })?;
            }
        }
    }
    if x.lt_runs(xs, w1, Some(&b1), None, true)? {
        tm.time(
            "linear ffn1 +bias+gelu(tanh) epilogue",
            mm(n, hidden, ffn_in),
            flops,
            &mut || kernels::linear(xs, w1, Some(&b1), None, true, &x.kernels, &x.gemm).map(drop),
        )?;
    }
    if x.fused {
        tm.time(
            "bias+gelu fused [N,F]",
            x.bytes(2 * n * ffn_out),
            "GB/s",
            &mut || kernels::bias_act(h1, &b1, kernels::Act::GeluErf, None).map(drop),
        )?;
    }
    tm.time(
        "matmul ffn2 [N,F]x[F,H]",
        mm(n, ffn_out, hidden),
        flops,
        &mut || h1.matmul(&w2.t()?).map(drop),
    )?;
    let b2 = x.rnd(&[hidden])?;
    if x.cpu_f32() && x.kernels.cpu_matmul == CpuMatmul::Bf16 {
        for kernel in bf16_kernels() {
            let l2 = kernels::Bf16Linear::on_kernel(w2, Some(&b2), kernel)?;
            let name = format!("linear ffn2 bf16 ({kernel}) (+bias+res) [N,F]x[F,H]");
            tm.time(&name, mm(n, ffn_out, hidden), flops, &mut || {
                l2.forward_with(h1, false, Some(xs)).map(drop)
            })?;
        }
    }
    if x.lt_runs(h1, w2, Some(&b2), Some(xs), false)? {
        tm.time(
            "linear ffn2 cuBLASLt (+bias+res) [N,F]x[F,H]",
            mm(n, ffn_out, hidden),
            flops,
            &mut || {
                kernels::linear(h1, w2, Some(&b2), Some(xs), false, &x.kernels, &x.gemm).map(drop)
            },
        )?;
    }
    Ok(())
}

/// A rate with about three significant digits (a CPU's 0.85 GFLOP/s, a GPU's 712 TFLOP/s).
fn fmt_rate(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else if rate >= 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.2}")
    }
}

/// The op profile as a table.
pub fn op_table(rows: &[OpRow]) -> String {
    let mut s = format!("{:<44} {:>10} {:>10}\n", "op", "ms", "rate");
    let mut total = 0.0;
    for r in rows {
        total += r.time.median_ms;
        s.push_str(&format!(
            "{:<44} {:>10.3} {:>10} {}\n",
            r.op,
            r.time.median_ms,
            fmt_rate(r.rate),
            r.unit
        ));
    }
    s.push_str(&format!("{:<44} {:>10.3}\n", "sum", total));
    s
}

/// The report as an aligned table.
pub fn table(rep: &BenchReport) -> String {
    let mut s = format!(
        "model {} ({}, hidden {}) on {} in {}\n{:>10} {:>7} {:>9} {:>12} {:>14} {:>12}\n",
        rep.model,
        rep.family,
        rep.hidden,
        rep.device,
        rep.dtype,
        "B x T",
        "ragged",
        "attention",
        "ms/batch",
        "tokens/s",
        "seqs/s"
    );
    for r in &rep.rows {
        s.push_str(&format!(
            "{:>10} {:>7} {:>9} {:>12.2} {:>14.0} {:>12.1}\n",
            format!("{}x{}", r.batch, r.len),
            if r.ragged { "yes" } else { "no" },
            r.attention.to_string(),
            r.time.median_ms,
            r.tokens_per_s,
            r.seqs_per_s
        ));
    }
    s
}

/// The linear layer shapes of DNABERT-S, ESM2-650M (FastESM2) and ESM2-3B as the models call
/// cuBLASLt: `(n, k, bias, residual, gelu)`.
pub const LINEAR_SHAPES: [(usize, usize, bool, bool, bool); 12] = [
    // DNABERT-S: Wqkv, attention output (+residual), gated MLP (no bias), wo (+residual).
    (2304, 768, true, false, false),
    (768, 768, true, true, false),
    (6144, 768, false, false, false),
    (768, 3072, true, true, false),
    // ESM2-650M: qkv, output (+residual), ffn1 (+GELU epilogue), ffn2 (+residual).
    (3840, 1280, true, false, false),
    (1280, 1280, true, true, false),
    (5120, 1280, true, false, true),
    (1280, 5120, true, true, false),
    // ESM2-3B.
    (7680, 2560, true, false, false),
    (2560, 2560, true, true, false),
    (10240, 2560, true, false, true),
    (2560, 10240, true, true, false),
];

/// Times cuBLASLt's candidates for every shape of [`LINEAR_SHAPES`] at `rows` rows and returns
/// the fastest non-split-k one of each as entries of the tuned table
/// (`crates/kernels/src/tuned_gemm.json`).
#[cfg(feature = "cuda")]
pub fn tune_gemm(
    device: &Device,
    dtype: DType,
    rows: usize,
) -> Result<Vec<virnucpro_kernels::TunedEntry>> {
    let Device::Cuda(dev) = device else {
        anyhow::bail!("--tune-gemm needs a CUDA device");
    };
    let gpu = virnucpro_kernels::gpu_key(dev)?;
    let mut entries = Vec::new();
    for (n, k, bias, residual, gelu) in LINEAR_SHAPES {
        let timed =
            virnucpro_kernels::tune_linear(device, rows, n, k, dtype, bias, residual, gelu)?;
        let Some(best) = timed.iter().min_by(|a, b| a.ms.total_cmp(&b.ms)) else {
            tracing::warn!("no candidate for {n}x{k}");
            continue;
        };
        let heuristic = timed.iter().find(|c| c.rank == 0).unwrap_or(&timed[0]);
        tracing::info!(
            "{n}x{k} bias={bias} residual={residual} gelu={gelu}: {} candidates, best {:.4} ms \
             (rank {}), heuristic's first {:.4} ms",
            timed.len(),
            best.ms,
            best.rank,
            heuristic.ms
        );
        entries.push(virnucpro_kernels::TunedEntry {
            gpu: gpu.clone(),
            dtype: format!("{dtype:?}").to_ascii_lowercase(),
            n: n as u64,
            k: k as u64,
            bias,
            residual,
            gelu,
            algo: best.algo,
            ms: best.ms,
            heuristic_ms: heuristic.ms,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runs_a_tiny_model_on_cpu() -> Result<()> {
        // Whole path on the CPU with a small shape: build, batch, time, table.
        let model = BenchModel {
            encoder: Box::new(Esm::load(
                RandomWeights { seed: 1 }.into_var_builder(DType::F32, &Device::Cpu),
                &{
                    let mut c = EsmConfig::esm2_650m();
                    c.num_hidden_layers = 1;
                    c.hidden_size = 64;
                    c.num_attention_heads = 2;
                    c.intermediate_size = 128;
                    c
                },
                false,
                &ModelOptions::default(),
            )?),
            family: ModelFamily::Esm,
            dtype: DType::F32,
            cpu_matmul: CpuMatmul::F32,
            source: "tiny".into(),
            attention: AttentionImpl::Auto,
            specials: (0, 2, 1, 4, 24),
        };
        let batch = synthetic_batch(&model, 3, 12, true, 5);
        assert_eq!(batch.ids.len(), 36);
        assert!(batch.lengths.iter().all(|&l| (6..=12).contains(&l)));
        let out = model.encoder.forward_pooled(&batch)?;
        assert_eq!(out.dims(), &[3, 64]);
        Ok(())
    }

    /// `bench --ops --device cpu`: only rows that ran on the CPU (no cuBLASLt or fused-kernel
    /// rows, which need CUDA), and arithmetic rates in GFLOP/s, not TFLOP/s rounded to 0.
    #[test]
    fn cpu_op_profile_shows_only_what_ran_in_gflops() -> Result<()> {
        let dev = Device::Cpu;
        // A gated MLP (DNABERT-S's layout: 2F rows in, F out), so every row kind is tried.
        let mut progress = crate::progress::Collect::default();
        let rows = op_profile(
            &dev,
            DType::F32,
            (2, 16),
            (64, 2, 256, 128),
            1,
            &KernelOptions::default(),
            &mut progress,
        )?;
        let names: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
        // Each row is announced as it is measured, in order, and nothing goes to the results.
        let noted: Vec<&str> = progress.notes.lines().collect();
        assert_eq!(noted.len(), rows.len(), "{}", progress.notes);
        for (line, r) in noted.iter().zip(&rows) {
            assert!(line.starts_with(&format!("op {}: ", r.op)), "{line}");
        }
        assert!(progress.out.is_empty(), "{}", progress.out);
        for r in &rows {
            assert!(
                !r.op.contains("cuBLASLt") && !r.op.contains("fused"),
                "a GPU-only row on the CPU: {names:?}"
            );
            assert!(
                r.unit == "GFLOP/s" || r.unit == "GB/s",
                "{}: unit {}",
                r.op,
                r.unit
            );
            assert!(r.time.median_ms > 0.0, "{}: did not run", r.op);
            assert!(
                r.rate.is_finite() && r.rate > 0.0,
                "{}: rate {}",
                r.op,
                r.rate
            );
        }
        for must in [
            "matmul qkv",
            "attention naive",
            "matmul ffn2",
            "gated_gelu CPU kernel",
            "attention packed, CPU kernel",
            "bias+gelu CPU kernel",
        ] {
            assert!(
                names.iter().any(|n| n.starts_with(must)),
                "{must} missing: {names:?}"
            );
        }
        assert!(rows.iter().filter(|r| r.unit == "GFLOP/s").count() >= 5);
        let table = op_table(&rows);
        assert!(
            table.contains("GFLOP/s") && !table.contains("TFLOP/s"),
            "{table}"
        );
        assert_eq!(flop_unit(&dev), "GFLOP/s");
        Ok(())
    }
}
