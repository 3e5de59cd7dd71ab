//! `train`: the VirNucPro MLP on a feature directory, written as a format-v1 classifier.
//!
//! `Linear(D, H) -> BatchNorm1d -> ReLU -> Dropout -> Linear(H, 2)`, cross-entropy, SGD with
//! momentum, StepLR, a seeded train/validation split and early stopping on validation loss,
//! matching the published `train.py` with PyTorch's semantics for each piece. Everything random
//! comes from [`Rng`] streams of one seed, and training runs on the CPU, so a seed gives
//! bit-identical weights.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use virnucpro_atomic::write_atomic;
use virnucpro_models::classifier::{Classifier, ClassifierMeta, DEFAULT_BN_EPS};
use virnucpro_models::rng::Rng;

use crate::features::{read_features, FeatureManifest, FeatureSet};
use crate::metrics::{binary_metrics, Metrics};

/// BatchNorm epsilon of the trained model (PyTorch's default, as the published training).
pub const BN_EPS: f64 = DEFAULT_BN_EPS;
/// PyTorch's BatchNorm1d default: running = (1 - m) * running + m * batch statistic.
pub const BN_MOMENTUM: f64 = 0.1;

// Independent random streams of one seed (see `Rng::new`).
const STREAM_SPLIT: u64 = 1;
const STREAM_INIT: u64 = 2;
const STREAM_SHUFFLE: u64 = 3;
const STREAM_DROPOUT: u64 = 4;

/// Hyper-parameters; the defaults are the published training's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub hidden: usize,
    pub lr: f64,
    pub momentum: f64,
    pub batch_size: usize,
    /// Maximum number of epochs (early stopping usually ends sooner).
    pub epochs: usize,
    /// Epochs without a lower validation loss before stopping.
    pub patience: usize,
    /// StepLR: multiply the learning rate by `gamma` every `step_size` epochs.
    pub step_size: usize,
    pub gamma: f64,
    pub dropout: f64,
    pub val_fraction: f64,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            hidden: 512,
            lr: 2e-4,
            momentum: 0.9,
            batch_size: 32,
            epochs: 200,
            patience: 5,
            step_size: 10,
            gamma: 0.85,
            dropout: 0.5,
            val_fraction: 0.1,
            seed: 42,
        }
    }
}

impl TrainOptions {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.hidden > 0, "--hidden must be positive");
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "--lr must be positive"
        );
        ensure!(
            (0.0..1.0).contains(&self.momentum),
            "--momentum must be in [0, 1)"
        );
        ensure!(
            self.batch_size >= 2,
            "--batch-size must be at least 2 (BatchNorm needs two rows for batch statistics)"
        );
        ensure!(self.epochs >= 1, "--epochs must be at least 1");
        ensure!(self.step_size >= 1, "--step-size must be at least 1");
        ensure!(
            self.gamma > 0.0 && self.gamma <= 1.0,
            "--gamma must be in (0, 1]"
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "--dropout must be in [0, 1)"
        );
        ensure!(
            self.val_fraction > 0.0 && self.val_fraction < 1.0,
            "--val-fraction must be in (0, 1): early stopping needs a validation set"
        );
        Ok(())
    }

    /// StepLR's learning rate during 0-based `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.gamma.powi((epoch / self.step_size) as i32)
    }
}

/// The classifier's parameters, row-major, PyTorch layouts (`weight` is [out, in]).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub bn_eps: f64,
    pub hidden_weight: Vec<f32>,
    pub hidden_bias: Vec<f32>,
    pub bn_weight: Vec<f32>,
    pub bn_bias: Vec<f32>,
    pub bn_running_mean: Vec<f32>,
    pub bn_running_var: Vec<f32>,
    pub output_weight: Vec<f32>,
    pub output_bias: Vec<f32>,
}

impl MlpWeights {
    /// `(name, shape, values)` per tensor, names as in the published PyTorch module.
    pub fn tensors(&self) -> [(&'static str, Vec<usize>, &[f32]); 8] {
        let (d, h) = (self.input_dim, self.hidden_dim);
        [
            ("hidden_layer.weight", vec![h, d], &self.hidden_weight),
            ("hidden_layer.bias", vec![h], &self.hidden_bias),
            ("bn1.weight", vec![h], &self.bn_weight),
            ("bn1.bias", vec![h], &self.bn_bias),
            ("bn1.running_mean", vec![h], &self.bn_running_mean),
            ("bn1.running_var", vec![h], &self.bn_running_var),
            ("output_layer.weight", vec![2, h], &self.output_weight),
            ("output_layer.bias", vec![2], &self.output_bias),
        ]
    }

    /// Checks every tensor's length against `input_dim` and `hidden_dim`.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.input_dim > 0 && self.hidden_dim > 0,
            "classifier sizes must be positive (input {}, hidden {})",
            self.input_dim,
            self.hidden_dim
        );
        for (name, shape, values) in self.tensors() {
            let n: usize = shape.iter().product();
            ensure!(
                n == values.len(),
                "classifier tensor {name}: {} values for shape {shape:?}",
                values.len()
            );
        }
        Ok(())
    }

    /// Softmax probabilities (score1 = others, score2 = virus) for row-major `features`,
    /// inference mode (running statistics, no dropout).
    pub fn predict_proba(&self, features: &[f32]) -> Result<Vec<[f32; 2]>> {
        EvalMlp::new(self)?.predict_proba(features)
    }
}

/// The eval-mode network as tensors, built once per weight set.
struct EvalMlp {
    input_dim: usize,
    w1t: Tensor,
    b1: Tensor,
    scale: Tensor,
    shift: Tensor,
    w2t: Tensor,
    b2: Tensor,
}

impl EvalMlp {
    fn new(w: &MlpWeights) -> Result<Self> {
        w.validate()?;
        let dev = Device::Cpu;
        let (d, h) = (w.input_dim, w.hidden_dim);
        // BatchNorm at inference is an affine map: fold it into one scale and one shift.
        let scale: Vec<f32> = (0..h)
            .map(|j| {
                (w.bn_weight[j] as f64 / (w.bn_running_var[j] as f64 + w.bn_eps).sqrt()) as f32
            })
            .collect();
        let shift: Vec<f32> = (0..h)
            .map(|j| w.bn_bias[j] - w.bn_running_mean[j] * scale[j])
            .collect();
        Ok(EvalMlp {
            input_dim: d,
            w1t: Tensor::from_slice(&w.hidden_weight, (h, d), &dev)?
                .t()?
                .contiguous()?,
            b1: Tensor::from_slice(&w.hidden_bias, h, &dev)?,
            scale: Tensor::from_vec(scale, h, &dev)?,
            shift: Tensor::from_vec(shift, h, &dev)?,
            w2t: Tensor::from_slice(&w.output_weight, (2, h), &dev)?
                .t()?
                .contiguous()?,
            b2: Tensor::from_slice(&w.output_bias, 2, &dev)?,
        })
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.matmul(&self.w1t)?.broadcast_add(&self.b1)?;
        let h = h
            .broadcast_mul(&self.scale)?
            .broadcast_add(&self.shift)?
            .relu()?;
        Ok(h.matmul(&self.w2t)?.broadcast_add(&self.b2)?)
    }

    fn predict_proba(&self, features: &[f32]) -> Result<Vec<[f32; 2]>> {
        let d = self.input_dim;
        ensure!(
            features.len().is_multiple_of(d),
            "{} feature values are not whole rows of {d}",
            features.len()
        );
        let mut out = Vec::with_capacity(features.len() / d);
        for block in features.chunks(4096 * d) {
            let x = Tensor::from_slice(block, (block.len() / d, d), &Device::Cpu)?;
            let p = candle_nn::ops::softmax_last_dim(&self.logits(&x)?)?;
            out.extend(p.to_vec2::<f32>()?.into_iter().map(|r| [r[0], r[1]]));
        }
        Ok(out)
    }

    /// Mean cross-entropy and the probabilities of `rows` of `data`.
    fn evaluate(&self, data: &FeatureSet, rows: &[usize]) -> Result<(f64, Vec<[f32; 2]>)> {
        let d = self.input_dim;
        let mut loss = 0.0f64;
        let mut probs = Vec::with_capacity(rows.len());
        for block in rows.chunks(4096) {
            let x = gather_rows(data, block);
            let x = Tensor::from_vec(x, (block.len(), d), &Device::Cpu)?;
            let logp = candle_nn::ops::log_softmax(&self.logits(&x)?, 1)?;
            for (r, &i) in logp.to_vec2::<f32>()?.iter().zip(block) {
                loss -= r[data.labels[i] as usize] as f64;
                probs.push([r[0].exp(), r[1].exp()]);
            }
        }
        Ok((loss / rows.len() as f64, probs))
    }
}

fn gather_rows(data: &FeatureSet, rows: &[usize]) -> Vec<f32> {
    let mut x = Vec::with_capacity(rows.len() * data.dim);
    for &i in rows {
        x.extend_from_slice(data.row(i));
    }
    x
}

/// One epoch's numbers, as logged and written to `<out>.log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val: Metrics,
    pub seconds: f64,
    /// Training samples per second (forward + backward + update), this epoch.
    pub samples_per_s: f64,
}

/// What a training run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub train_rows: usize,
    pub val_rows: usize,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub epochs: Vec<EpochLog>,
    /// Mean training throughput over all epochs.
    pub samples_per_s: f64,
    /// The preset written next to the classifier ([`preset_path`]), when the features record
    /// the models and the chunk length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset_file: Option<PathBuf>,
}

impl TrainReport {
    pub fn best(&self) -> &EpochLog {
        &self.epochs[self.best_epoch - 1]
    }
}

/// Trainable parameters, SGD momentum buffers and BatchNorm running statistics.
///
/// Forward and backward are written out by hand: the two large products (`x · W1ᵀ` and
/// `xᵀ · dz`) go to candle's matmul, everything else is O(batch × hidden) and runs as plain
/// loops. Against candle's autograd this avoids a dozen tensor allocations and thread-pool
/// round trips per step, which dominate at batch 32 (autograd takes about 3x as long); this
/// path's throughput is in docs/BENCHMARKS.md, "train".
/// `steps_match_reference_math` checks the result against the textbook formulas.
struct Trainer {
    d: usize,
    h: usize,
    /// `W1T` is the hidden weight transposed, [D, H]; `W2T` likewise [H, 2].
    params: [Vec<f32>; 6],
    velocity: [Vec<f32>; 6],
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

const W1T: usize = 0;
const B1: usize = 1;
const GAMMA: usize = 2;
const BETA: usize = 3;
const W2T: usize = 4;
const B2: usize = 5;

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// What the forward pass through the hidden layer keeps for the backward pass; every
/// per-row vector is [n, H].
struct Hidden {
    /// The batch's mean and biased variance per hidden unit, and `1 / sqrt(var + eps)`.
    mean: Vec<f32>,
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// Normalised (`zhat`), before ReLU (`pre`), after ReLU and dropout (`a`).
    zhat: Vec<f32>,
    pre: Vec<f32>,
    a: Vec<f32>,
}

impl Trainer {
    /// PyTorch's default init: Linear weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    /// BatchNorm weight 1, bias 0, running mean 0, running var 1. Weights are drawn in PyTorch's
    /// [out, in] order.
    fn new(d: usize, h: usize, rng: &mut Rng) -> Self {
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect()
        };
        let w1 = uniform(h * d, d);
        let b1 = uniform(h, d);
        let w2 = uniform(2 * h, h);
        let b2 = uniform(2, h);
        let params = [
            transpose(&w1, h, d),
            b1,
            vec![1.0; h],
            vec![0.0; h],
            transpose(&w2, 2, h),
            b2,
        ];
        let velocity = params.clone().map(|p| vec![0.0; p.len()]);
        Trainer {
            d,
            h,
            params,
            velocity,
            running_mean: vec![0.0; h],
            running_var: vec![1.0; h],
        }
    }

    /// One SGD step on a batch (`x` row-major [n, D], labels 0/1, dropout mask [n, H] already
    /// scaled by 1/(1-p)); returns the batch's mean cross-entropy.
    fn step(
        &mut self,
        x: &[f32],
        y: &[u8],
        mask: Option<&[f32]>,
        lr: f32,
        momentum: f32,
    ) -> Result<f64> {
        let n = y.len();
        let xt = Tensor::from_slice(x, (n, self.d), &Device::Cpu)?;
        let hidden = self.hidden_forward(&xt, n, mask)?;
        let (loss, dlogit) = self.output_loss(&hidden.a, y);
        let (g_w1t, grad) = self.backward(&xt, &hidden, &dlogit, mask)?;
        self.apply_sgd(&g_w1t, &grad, lr, momentum)?;
        self.update_running_stats(&hidden, n);
        Ok(loss / n as f64)
    }

    /// Hidden layer, BatchNorm in training mode (the batch's mean and biased variance), ReLU
    /// and dropout.
    fn hidden_forward(&self, xt: &Tensor, n: usize, mask: Option<&[f32]>) -> Result<Hidden> {
        let (d, h) = (self.d, self.h);
        let nf = n as f32;
        let [w1t, b1, gamma, beta, _, _] = &self.params;
        let mut z = xt
            .matmul(&Tensor::from_slice(w1t, (d, h), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for row in z.chunks_exact_mut(h) {
            for (v, b) in row.iter_mut().zip(b1) {
                *v += b;
            }
        }
        let mut mean = vec![0.0f32; h];
        for row in z.chunks_exact(h) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        mean.iter_mut().for_each(|m| *m /= nf);
        let mut var = vec![0.0f32; h];
        for row in z.chunks_exact(h) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m);
            }
        }
        var.iter_mut().for_each(|s| *s /= nf);
        let inv_std: Vec<f32> = var
            .iter()
            .map(|v| 1.0 / (v + BN_EPS as f32).sqrt())
            .collect();
        let mut zhat = z;
        let mut pre = vec![0.0f32; n * h];
        let mut a = vec![0.0f32; n * h];
        for i in 0..n {
            for j in 0..h {
                let k = i * h + j;
                zhat[k] = (zhat[k] - mean[j]) * inv_std[j];
                pre[k] = gamma[j] * zhat[k] + beta[j];
                a[k] = pre[k].max(0.0) * mask.map_or(1.0, |m| m[k]);
            }
        }
        Ok(Hidden {
            mean,
            var,
            inv_std,
            zhat,
            pre,
            a,
        })
    }

    /// Output layer, softmax cross-entropy: the summed loss and its gradient
    /// `(softmax - onehot) / n` per logit, [n, 2].
    fn output_loss(&self, a: &[f32], y: &[u8]) -> (f64, Vec<f32>) {
        let (h, n) = (self.h, y.len());
        let nf = n as f32;
        let (w2t, b2) = (&self.params[W2T], &self.params[B2]);
        let mut loss = 0.0f64;
        let mut dlogit = vec![0.0f32; n * 2];
        for i in 0..n {
            let row = &a[i * h..(i + 1) * h];
            let mut l = [b2[0], b2[1]];
            for (j, &v) in row.iter().enumerate() {
                l[0] += v * w2t[2 * j];
                l[1] += v * w2t[2 * j + 1];
            }
            let m = l[0].max(l[1]);
            let e = [(l[0] - m).exp(), (l[1] - m).exp()];
            let sum = e[0] + e[1];
            let label = y[i] as usize;
            loss += f64::from(m + sum.ln() - l[label]);
            for c in 0..2 {
                dlogit[2 * i + c] = (e[c] / sum - f32::from(c == label)) / nf;
            }
        }
        (loss, dlogit)
    }

    /// The gradients: W1T's as a [D, H] tensor (from a matmul), the small parameters' in
    /// `grad` (W1T's entry empty).
    fn backward(
        &self,
        xt: &Tensor,
        hidden: &Hidden,
        dlogit: &[f32],
        mask: Option<&[f32]>,
    ) -> Result<(Tensor, [Vec<f32>; 6])> {
        let h = self.h;
        let n = dlogit.len() / 2;
        let nf = n as f32;
        let (gamma, w2t) = (&self.params[GAMMA], &self.params[W2T]);
        let Hidden {
            inv_std,
            zhat,
            pre,
            a,
            ..
        } = hidden;
        let mut grad: [Vec<f32>; 6] = std::array::from_fn(|t| {
            if t == W1T {
                Vec::new()
            } else {
                vec![0.0; self.params[t].len()]
            }
        });
        let mut dpre = vec![0.0f32; n * h];
        for i in 0..n {
            let dl = [dlogit[2 * i], dlogit[2 * i + 1]];
            grad[B2][0] += dl[0];
            grad[B2][1] += dl[1];
            for j in 0..h {
                let k = i * h + j;
                grad[W2T][2 * j] += a[k] * dl[0];
                grad[W2T][2 * j + 1] += a[k] * dl[1];
                // Back through dropout and ReLU (gradient only where the ReLU passed).
                if pre[k] > 0.0 {
                    let da = dl[0] * w2t[2 * j] + dl[1] * w2t[2 * j + 1];
                    dpre[k] = da * mask.map_or(1.0, |m| m[k]);
                }
            }
        }
        // Back through BatchNorm: dz = inv_std / n * (n*dzhat - sum(dzhat) - zhat*sum(dzhat*zhat)).
        let mut sum_dzhat = vec![0.0f32; h];
        let mut sum_dzhat_zhat = vec![0.0f32; h];
        for i in 0..n {
            for j in 0..h {
                let k = i * h + j;
                grad[GAMMA][j] += dpre[k] * zhat[k];
                grad[BETA][j] += dpre[k];
                let dzhat = dpre[k] * gamma[j];
                sum_dzhat[j] += dzhat;
                sum_dzhat_zhat[j] += dzhat * zhat[k];
            }
        }
        let mut dz = dpre;
        for i in 0..n {
            for j in 0..h {
                let k = i * h + j;
                let dzhat = dz[k] * gamma[j];
                dz[k] = inv_std[j] / nf * (nf * dzhat - sum_dzhat[j] - zhat[k] * sum_dzhat_zhat[j]);
                grad[B1][j] += dz[k];
            }
        }
        let g_w1t = xt
            .t()?
            .matmul(&Tensor::from_vec(dz, (n, h), &Device::Cpu)?)?
            .contiguous()?;
        Ok((g_w1t, grad))
    }

    /// SGD with momentum, PyTorch semantics: v = mu * v + g (v starts at 0, so the first step's
    /// v is g, as PyTorch's buffer clone), p -= lr * v.
    fn apply_sgd(
        &mut self,
        g_w1t: &Tensor,
        grad: &[Vec<f32>; 6],
        lr: f32,
        momentum: f32,
    ) -> Result<()> {
        let sgd = |p: &mut [f32], v: &mut [f32], g: &[f32]| {
            for ((p, v), g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = momentum * *v + g;
                *p -= lr * *v;
            }
        };
        {
            // Read the [D, H] gradient in place: no 4 MB copy per step.
            let (storage, layout) = g_w1t.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                bail!("internal error: training runs on the CPU");
            };
            let start = layout.start_offset();
            let g = &cpu.as_slice::<f32>()?[start..start + self.d * self.h];
            sgd(&mut self.params[W1T], &mut self.velocity[W1T], g);
        }
        for t in [B1, GAMMA, BETA, W2T, B2] {
            sgd(&mut self.params[t], &mut self.velocity[t], &grad[t]);
        }
        Ok(())
    }

    /// Running statistics use the unbiased batch variance, as PyTorch does.
    fn update_running_stats(&mut self, hidden: &Hidden, n: usize) {
        let m = BN_MOMENTUM as f32;
        let nf = n as f32;
        let unbias = nf / (nf - 1.0);
        for j in 0..self.h {
            self.running_mean[j] = (1.0 - m) * self.running_mean[j] + m * hidden.mean[j];
            self.running_var[j] = (1.0 - m) * self.running_var[j] + m * hidden.var[j] * unbias;
        }
    }

    /// The current weights in PyTorch layouts.
    fn snapshot(&self) -> MlpWeights {
        let (d, h) = (self.d, self.h);
        let p = &self.params;
        MlpWeights {
            input_dim: d,
            hidden_dim: h,
            bn_eps: BN_EPS,
            hidden_weight: transpose(&p[W1T], d, h),
            hidden_bias: p[B1].clone(),
            bn_weight: p[GAMMA].clone(),
            bn_bias: p[BETA].clone(),
            bn_running_mean: self.running_mean.clone(),
            bn_running_var: self.running_var.clone(),
            output_weight: transpose(&p[W2T], h, 2),
            output_bias: p[B2].clone(),
        }
    }
}

/// The seeded train/validation split: `(train rows, validation rows)`, each sorted.
pub fn split_rows(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed, STREAM_SPLIT).shuffle(&mut order);
    let n_val = ((n as f64 * val_fraction).round() as usize).clamp(1, n.saturating_sub(1));
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// Trains on `data`; `on_epoch` sees each epoch's log as it finishes. Returns the weights of the
/// epoch with the lowest validation loss.
pub fn train(
    data: &FeatureSet,
    opts: &TrainOptions,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<(MlpWeights, TrainReport)> {
    opts.validate()?;
    let [host, viral] = data.label_counts();
    ensure!(
        host > 0 && viral > 0,
        "the feature set has {viral} viral and {host} host rows: training needs both classes"
    );
    ensure!(
        data.len() >= 3,
        "the feature set has {} rows: too few to train and validate",
        data.len()
    );
    let (d, h) = (data.dim, opts.hidden);
    let (train_rows, val_rows) = split_rows(data.len(), opts.val_fraction, opts.seed);
    ensure!(
        train_rows.len() >= 2,
        "only {} training rows after the validation split: lower --val-fraction or add data",
        train_rows.len()
    );
    let mut trainer = Trainer::new(d, h, &mut Rng::new(opts.seed, STREAM_INIT));
    let mut shuffle_rng = Rng::new(opts.seed, STREAM_SHUFFLE);
    let mut dropout_rng = Rng::new(opts.seed, STREAM_DROPOUT);
    let keep_scale = 1.0 / (1.0 - opts.dropout as f32);

    let mut epochs: Vec<EpochLog> = Vec::new();
    let mut best: Option<(f64, usize, MlpWeights)> = None;
    let mut since_best = 0;
    let mut stopped_early = false;
    let mut order = train_rows.clone();
    let (mut total_samples, mut total_secs) = (0usize, 0.0f64);
    for epoch in 0..opts.epochs {
        let lr = opts.lr_at(epoch);
        shuffle_rng.shuffle(&mut order);
        let started = Instant::now();
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        for batch in order.chunks(opts.batch_size) {
            // PyTorch refuses BatchNorm training on one row; a last batch of one is skipped.
            if batch.len() < 2 {
                continue;
            }
            let x = gather_rows(data, batch);
            let y: Vec<u8> = batch.iter().map(|&i| data.labels[i]).collect();
            let mask: Option<Vec<f32>> = (opts.dropout > 0.0).then(|| {
                (0..batch.len() * h)
                    .map(|_| {
                        if dropout_rng.next_f32() < opts.dropout as f32 {
                            0.0
                        } else {
                            keep_scale
                        }
                    })
                    .collect()
            });
            let loss = trainer.step(&x, &y, mask.as_deref(), lr as f32, opts.momentum as f32)?;
            ensure!(
                loss.is_finite(),
                "training diverged at epoch {} (loss {loss}): lower --lr",
                epoch + 1
            );
            loss_sum += loss * batch.len() as f64;
            seen += batch.len();
        }
        let secs = started.elapsed().as_secs_f64();
        total_samples += seen;
        total_secs += secs;

        let weights = trainer.snapshot();
        let (val_loss, probs) = EvalMlp::new(&weights)?.evaluate(data, &val_rows)?;
        let val_labels: Vec<u8> = val_rows.iter().map(|&i| data.labels[i]).collect();
        let log = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            val_loss,
            val: binary_metrics(&val_labels, &probs),
            seconds: secs,
            samples_per_s: seen as f64 / secs.max(1e-9),
        };
        on_epoch(&log);
        epochs.push(log);
        if best.as_ref().is_none_or(|(l, _, _)| val_loss < *l) {
            best = Some((val_loss, epoch + 1, weights));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= opts.patience {
                stopped_early = true;
                break;
            }
        }
    }
    let (_, best_epoch, weights) = best.context("no epoch was run")?;
    let report = TrainReport {
        train_rows: train_rows.len(),
        val_rows: val_rows.len(),
        best_epoch,
        epochs_run: epochs.len(),
        stopped_early,
        epochs,
        samples_per_s: total_samples as f64 / total_secs.max(1e-9),
        preset_file: None,
    };
    Ok((weights, report))
}

/// The trained weights as a format-v1 classifier (docs/FORMATS.md), with the feature set's
/// provenance: the models, hidden sizes and chunk length from its manifest.
pub fn to_classifier(
    w: &MlpWeights,
    manifest: &FeatureManifest,
    training: Option<serde_json::Value>,
) -> Result<Classifier> {
    w.validate()?;
    let tensors = w
        .tensors()
        .into_iter()
        .map(|(name, shape, values)| {
            Ok((
                name.to_string(),
                Tensor::from_slice(values, shape, &Device::Cpu)?,
            ))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    let info = &manifest.info;
    let meta = ClassifierMeta {
        input_dim: w.input_dim,
        hidden_dim: w.hidden_dim,
        bn_eps: w.bn_eps,
        dnabert_model: info.dnabert_model.clone(),
        dnabert_hidden: info.dnabert_hidden,
        esm_model: info.esm_model.clone(),
        esm_hidden: info.esm_hidden,
        chunk_len: info.chunk_len,
        training,
        source_format: "trained by virnucpro train".into(),
    };
    Classifier::from_tensors(tensors, meta)
}

/// The CSV log written next to the model: one row per epoch.
pub fn log_csv(epochs: &[EpochLog]) -> String {
    let mut s = String::from(
        "epoch,lr,train_loss,val_loss,val_accuracy,val_precision,val_recall,val_f1,val_auroc,seconds,samples_per_s\n",
    );
    for e in epochs {
        let auroc = e.val.auroc.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{:.3},{:.1}",
            e.epoch,
            e.lr,
            e.train_loss,
            e.val_loss,
            e.val.accuracy,
            e.val.precision,
            e.val.recall,
            e.val.f1,
            auroc,
            e.seconds,
            e.samples_per_s
        );
    }
    s
}

/// `<out>.log.csv` for a model path.
pub fn log_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".log.csv");
    PathBuf::from(s)
}

/// `<stem>.preset.toml` beside a model path (`fast_500.safetensors` -> `fast_500.preset.toml`).
pub fn preset_path(out: &Path) -> PathBuf {
    out.with_extension("preset.toml")
}

/// Writes [`preset_path`]`(classifier)`: a presets-file table naming the models and the chunk
/// length the classifier was trained with (from the features' manifest), the classifier's file
/// name and its SHA-256 (docs/FORMATS.md, "Presets file"). `None` (and a warning) when the
/// features do not record the models or the chunk length.
pub fn write_preset(classifier: &Path, manifest: &FeatureManifest) -> Result<Option<PathBuf>> {
    let info = &manifest.info;
    let (Some(dnabert), Some(esm), Some(chunk_len)) =
        (&info.dnabert_model, &info.esm_model, info.chunk_len)
    else {
        tracing::warn!(
            "no preset written next to {}: the features do not record the models and the chunk              length (they were not made by `virnucpro extract`)",
            classifier.display()
        );
        return Ok(None);
    };
    let file_name = classifier
        .file_name()
        .context("the classifier path has no file name")?
        .to_string_lossy()
        .into_owned();
    let name: String = classifier
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let sha = virnucpro_assets::download::Digest::sha256_of_file(classifier)
        .with_context(|| format!("cannot read back {}", classifier.display()))?;
    let text = virnucpro_assets::presets::preset_toml_for(
        &name,
        dnabert,
        esm,
        &file_name,
        &sha.hex(),
        chunk_len,
    );
    let path = preset_path(classifier);
    write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write the preset {}", path.display()))?;
    Ok(Some(path))
}

/// `virnucpro train`: reads `features_dir`, trains, writes the model, its CSV log and its
/// preset ([`write_preset`]).
pub fn train_to_file(features_dir: &Path, out: &Path, opts: &TrainOptions) -> Result<TrainReport> {
    opts.validate()?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure!(
            parent.is_dir(),
            "output directory {} does not exist",
            parent.display()
        );
    }
    let data = read_features(features_dir)?;
    let [host, viral] = data.label_counts();
    tracing::info!(
        "{}: {} rows ({viral} viral, {host} host), {} features",
        features_dir.display(),
        data.len(),
        data.dim
    );
    let csv = log_path(out);
    let mut so_far: Vec<EpochLog> = Vec::new();
    let (weights, mut report) = train(&data, opts, |e| {
        tracing::info!(
            "epoch {:>3}  lr {:.3e}  train loss {:.5}  val loss {:.5}  val acc {:.4}  F1 {:.4}  \
             ({:.0} samples/s)",
            e.epoch,
            e.lr,
            e.train_loss,
            e.val_loss,
            e.val.accuracy,
            e.val.f1,
            e.samples_per_s
        );
        so_far.push(e.clone());
        // Rewritten each epoch so a long run can be followed; atomic, never half a line.
        if let Err(err) = write_atomic(&csv, log_csv(&so_far).as_bytes()) {
            tracing::warn!("cannot update {}: {err:#}", csv.display());
        }
    })?;
    let best = report.best();
    let training = serde_json::json!({
        "virnucpro_version": env!("CARGO_PKG_VERSION"),
        "seed": opts.seed,
        "options": opts,
        "data": {
            "features_dir": features_dir.display().to_string(),
            "source": data.manifest.info.source,
            "rows": data.len(),
            "viral": viral,
            "host": host,
            "feature_dim": data.dim,
            "train_rows": report.train_rows,
            "val_rows": report.val_rows,
        },
        "best_epoch": report.best_epoch,
        "epochs_run": report.epochs_run,
        "stopped_early": report.stopped_early,
        "metrics": {
            "train_loss": best.train_loss,
            "val_loss": best.val_loss,
            "val": best.val,
        },
        "samples_per_s": report.samples_per_s,
    });
    to_classifier(&weights, &data.manifest, Some(training))
        .and_then(|c| c.save(out))
        .with_context(|| format!("cannot write the trained classifier {}", out.display()))?;
    write_atomic(&csv, log_csv(&report.epochs).as_bytes())?;
    report.preset_file = write_preset(out, &data.manifest)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flat f64 parameters in PyTorch layout and `MlpWeights` order.
    type Params = Vec<Vec<f64>>;
    const W1: usize = 0;
    const W2: usize = 4;

    fn params_of(t: &Trainer) -> Params {
        let w = t.snapshot();
        [
            w.hidden_weight,
            w.hidden_bias,
            w.bn_weight,
            w.bn_bias,
            w.output_weight,
            w.output_bias,
        ]
        .iter()
        .map(|v| v.iter().map(|&x| x as f64).collect())
        .collect()
    }

    /// The training-mode loss in f64, written out directly from the definitions.
    fn reference_loss(p: &Params, x: &[f64], y: &[usize], mask: &[f64], d: usize, h: usize) -> f64 {
        let n = y.len();
        let mut pre = vec![0.0; n * h];
        for i in 0..n {
            for j in 0..h {
                pre[i * h + j] =
                    p[B1][j] + (0..d).map(|k| x[i * d + k] * p[W1][j * d + k]).sum::<f64>();
            }
        }
        let mut act = vec![0.0; n * h];
        for j in 0..h {
            let mean = (0..n).map(|i| pre[i * h + j]).sum::<f64>() / n as f64;
            let var = (0..n).map(|i| (pre[i * h + j] - mean).powi(2)).sum::<f64>() / n as f64;
            for i in 0..n {
                let z = (pre[i * h + j] - mean) / (var + BN_EPS).sqrt() * p[GAMMA][j] + p[BETA][j];
                act[i * h + j] = z.max(0.0) * mask[i * h + j];
            }
        }
        let mut loss = 0.0;
        for i in 0..n {
            let l: Vec<f64> = (0..2)
                .map(|c| {
                    p[B2][c]
                        + (0..h)
                            .map(|j| act[i * h + j] * p[W2][c * h + j])
                            .sum::<f64>()
                })
                .collect();
            let m = l[0].max(l[1]);
            let lse = m + ((l[0] - m).exp() + (l[1] - m).exp()).ln();
            loss += lse - l[y[i]];
        }
        loss / n as f64
    }

    fn numeric_grad(
        p: &Params,
        x: &[f64],
        y: &[usize],
        mask: &[f64],
        d: usize,
        h: usize,
    ) -> Params {
        let mut g = p.clone();
        for t in 0..p.len() {
            for e in 0..p[t].len() {
                let mut q = p.clone();
                let step = 1e-6;
                q[t][e] += step;
                let up = reference_loss(&q, x, y, mask, d, h);
                q[t][e] -= 2.0 * step;
                let down = reference_loss(&q, x, y, mask, d, h);
                g[t][e] = (up - down) / (2.0 * step);
            }
        }
        g
    }

    /// Two SGD-momentum steps of the candle trainer against the f64 reference: gradients by
    /// finite differences, PyTorch's update rule, and BatchNorm running statistics with momentum
    /// 0.1 and the unbiased batch variance.
    #[test]
    fn steps_match_reference_math() {
        let (n, d, h) = (6, 4, 3);
        let mut rng = Rng::new(5, 0);
        let mut trainer = Trainer::new(d, h, &mut rng);
        // Non-trivial BatchNorm affine parameters.
        trainer.params[GAMMA] = vec![0.8, 1.3, 1.1];
        trainer.params[BETA] = vec![0.2, -0.1, 0.05];
        let mut p = params_of(&trainer);
        let (lr, mu) = (0.5, 0.9);
        let mut velocity: Option<Params> = None;
        let mut running = (vec![0.0f64; h], vec![1.0f64; h]);
        for step in 0..2 {
            let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
            let y: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
            let mask: Vec<f32> = (0..n * h)
                .map(|i| if (i + step) % 4 == 0 { 0.0 } else { 2.0 })
                .collect();
            let y8: Vec<u8> = y.iter().map(|&v| v as u8).collect();
            let loss = trainer
                .step(&x, &y8, Some(&mask), lr as f32, mu as f32)
                .unwrap();

            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let y64: Vec<usize> = y.iter().map(|&v| v as usize).collect();
            let m64: Vec<f64> = mask.iter().map(|&v| v as f64).collect();
            let want_loss = reference_loss(&p, &x64, &y64, &m64, d, h);
            assert!(
                (loss - want_loss).abs() < 1e-5,
                "loss {loss} vs {want_loss}"
            );
            // Running statistics from the pre-update parameters.
            for j in 0..h {
                let pre: Vec<f64> = (0..n)
                    .map(|i| {
                        p[B1][j]
                            + (0..d)
                                .map(|k| x64[i * d + k] * p[W1][j * d + k])
                                .sum::<f64>()
                    })
                    .collect();
                let mean = pre.iter().sum::<f64>() / n as f64;
                let var_u = pre.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
                running.0[j] = 0.9 * running.0[j] + 0.1 * mean;
                running.1[j] = 0.9 * running.1[j] + 0.1 * var_u;
            }
            let g = numeric_grad(&p, &x64, &y64, &m64, d, h);
            let v = match velocity {
                None => g,
                Some(v) => v
                    .iter()
                    .zip(&g)
                    .map(|(v, g)| v.iter().zip(g).map(|(v, g)| mu * v + g).collect())
                    .collect(),
            };
            for (pt, vt) in p.iter_mut().zip(&v) {
                for (pe, ve) in pt.iter_mut().zip(vt) {
                    *pe -= lr * ve;
                }
            }
            velocity = Some(v);
            for (t, (got, want)) in params_of(&trainer).iter().zip(&p).enumerate() {
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() < 2e-4, "step {step} param {t}: {g} vs {w}");
                }
            }
            for (got, want) in trainer.running_mean.iter().zip(&running.0) {
                let got = *got as f64;
                assert!((got - want).abs() < 1e-5, "running mean {got} vs {want}");
            }
            for (got, want) in trainer.running_var.iter().zip(&running.1) {
                let got = *got as f64;
                assert!((got - want).abs() < 1e-5, "running var {got} vs {want}");
            }
        }
    }

    #[test]
    fn step_lr_schedule() {
        let o = TrainOptions::default();
        assert_eq!(o.lr_at(0), 2e-4);
        assert_eq!(o.lr_at(9), 2e-4);
        assert!((o.lr_at(10) - 2e-4 * 0.85).abs() < 1e-12);
        assert!((o.lr_at(25) - 2e-4 * 0.85 * 0.85).abs() < 1e-12);
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let (t, v) = split_rows(100, 0.1, 3);
        assert_eq!((t.len(), v.len()), (90, 10));
        assert!(v.iter().all(|i| !t.contains(i)));
        assert_eq!(split_rows(100, 0.1, 3), (t, v.clone()));
        assert_ne!(split_rows(100, 0.1, 4).1, v);
    }

    /// Inference folds BatchNorm into a scale and shift; check it against the formula.
    #[test]
    fn predict_proba_matches_formula() {
        let w = MlpWeights {
            input_dim: 2,
            hidden_dim: 2,
            bn_eps: 1e-5,
            hidden_weight: vec![1.0, -1.0, 0.5, 2.0],
            hidden_bias: vec![0.1, -0.2],
            bn_weight: vec![1.5, 0.5],
            bn_bias: vec![0.0, 0.3],
            bn_running_mean: vec![0.2, -0.1],
            bn_running_var: vec![4.0, 0.25],
            output_weight: vec![1.0, -1.0, -0.5, 2.0],
            output_bias: vec![0.05, -0.05],
        };
        let x = [0.3f32, -0.7];
        let h0 = 0.3 * 1.0 + -0.7 * -1.0 + 0.1;
        let h1 = 0.3 * 0.5 + -0.7 * 2.0 - 0.2;
        let a0 = f64::max(0.0, (h0 - 0.2) / (4.0f64 + 1e-5).sqrt() * 1.5);
        let a1 = f64::max(0.0, (h1 + 0.1) / (0.25f64 + 1e-5).sqrt() * 0.5 + 0.3);
        let l0 = a0 - a1 + 0.05;
        let l1 = -0.5 * a0 + 2.0 * a1 - 0.05;
        let p1 = 1.0 / (1.0 + (l0 - l1).exp());
        let got = w.predict_proba(&x).unwrap();
        assert!((got[0][1] as f64 - p1).abs() < 1e-6, "{got:?} vs {p1}");
        assert!((got[0][0] as f64 - (1.0 - p1)).abs() < 1e-6);
    }
}
