//! Checks of the fused attention kernel against the materialized path on fresh random inputs,
//! shared by `virnucpro doctor` and the (ignored, GPU-only) unit test.

use candle_core::{DType, Device, Tensor};

use super::{
    alibi_bias, alibi_slopes, fused_packed, fused_padded, key_padding_mask, materialized_attention,
    row_mask, FaVariant, GemmFallback, KernelOptions, Knobs,
};

/// How q, k, v are laid out in memory for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// Contiguous `[B, H, T, 64]`.
    Bhtd,
    /// `[B, T, H, 64]` storage seen through a transposed view (what a projection produces).
    Bthd,
    /// Packed `[total, H, 64]` with `cu_seqlens` (no padding).
    Packed,
}

/// One validation case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub dtype: DType,
    pub heads: usize,
    /// Real length of every row; the padded length is the largest one plus `extra_pad`.
    pub lens: Vec<u32>,
    pub extra_pad: usize,
    pub alibi: bool,
    pub layout: QkvLayout,
    /// Standard deviation of q (larger: sharper softmax).
    pub q_std: f32,
    /// Keys scaled by 1 + `k_ramp` · position: scores grow along the row, so a row's maximum
    /// moves by tens of log2 units from one key tile to the next and the kernels' lazy
    /// rescaling (`attn_common.cuh`) takes its rescaling branch on every tile.
    pub k_ramp: f32,
}

/// Outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub pass: bool,
    /// ‖fused − reference‖ / ‖reference‖ over all rows.
    pub rel_err: f64,
    pub limit: f64,
    pub detail: String,
}

/// Relative-error limit: f16 1e-2 (issue #5), bf16 2e-2 (3 fewer mantissa bits).
pub fn limit_for(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2e-2,
        _ => 1e-2,
    }
}

/// The validation cases: both dtypes, padding and none, ALiBi and none, several tiles, both
/// memory layouts, the packed path, and a row of length 0.
pub fn cases() -> Vec<Case> {
    let c = |name: &str, dtype, heads, lens: &[u32], extra_pad, alibi, layout, q_std| Case {
        name: name.to_string(),
        dtype,
        heads,
        lens: lens.to_vec(),
        extra_pad,
        alibi,
        layout,
        q_std,
        k_ramp: 0.0,
    };
    use QkvLayout::*;
    vec![
        c(
            "f16 esm-like, padded rows",
            DType::F16,
            20,
            &[200, 137, 1, 64],
            0,
            false,
            Bhtd,
            1.0,
        ),
        c(
            "f16 one row 502",
            DType::F16,
            20,
            &[502],
            0,
            false,
            Bhtd,
            1.0,
        ),
        c(
            "f16 alibi, padded",
            DType::F16,
            12,
            &[130, 65, 129],
            3,
            true,
            Bhtd,
            1.0,
        ),
        c(
            "bf16 alibi, padded",
            DType::BF16,
            12,
            &[300, 17],
            0,
            true,
            Bhtd,
            1.0,
        ),
        c(
            "bf16 no alibi",
            DType::BF16,
            20,
            &[168, 100],
            0,
            false,
            Bhtd,
            1.0,
        ),
        c(
            "f16 [B,T,H,D] view",
            DType::F16,
            20,
            &[168, 160, 33],
            0,
            false,
            Bthd,
            1.0,
        ),
        c(
            "f16 sharp softmax",
            DType::F16,
            4,
            &[1026, 777],
            0,
            false,
            Bhtd,
            4.0,
        ),
        c(
            "f16 length-0 row",
            DType::F16,
            2,
            &[70, 0],
            0,
            false,
            Bhtd,
            1.0,
        ),
        c(
            "f16 packed varlen",
            DType::F16,
            20,
            &[5, 64, 129, 300, 1],
            0,
            false,
            Packed,
            1.0,
        ),
        c(
            "bf16 packed varlen alibi",
            DType::BF16,
            12,
            &[65, 200, 7],
            0,
            true,
            Packed,
            1.0,
        ),
        Case {
            k_ramp: 1.0 / 32.0,
            ..c(
                "f16 rising scores (the maximum moves every tile)",
                DType::F16,
                4,
                &[1026, 300],
                0,
                false,
                Bhtd,
                2.0,
            )
        },
    ]
}

fn norm(t: &Tensor) -> candle_core::Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt())
}

/// Runs one case on `dev` with the kernel's tile `variant` (`None`: the default): fused kernel
/// (output poisoned with NaN first) vs the materialized path computed in f32 from the same
/// half-precision inputs.
pub fn run_case(
    case: &Case,
    dev: &Device,
    variant: Option<FaVariant>,
) -> anyhow::Result<CaseResult> {
    const D: usize = 64;
    let b = case.lens.len();
    let h = case.heads;
    let t = case.lens.iter().copied().max().unwrap_or(0) as usize + case.extra_pad;
    let t = t.max(1);
    let scale = 1.0 / (D as f64).sqrt();
    let gen = |std: f32, ramp: f32| -> candle_core::Result<Tensor> {
        // Generated as [B, T, H, D] storage; viewed as [B, H, T, D].
        let x = Tensor::randn(0f32, std, (b, t, h, D), dev)?;
        let x = if ramp > 0.0 {
            let r: Vec<f32> = (0..t).map(|j| 1.0 + ramp * j as f32).collect();
            x.broadcast_mul(&Tensor::from_vec(r, (1, t, 1, 1), dev)?)?
        } else {
            x
        };
        x.to_dtype(case.dtype)?.transpose(1, 2)
    };
    let (q, k, v) = (
        gen(case.q_std, 0.0)?,
        gen(1.0, case.k_ramp)?,
        gen(1.0, 0.0)?,
    );
    let (q, k, v) = if case.layout == QkvLayout::Bthd {
        (q, k, v)
    } else {
        (q.contiguous()?, k.contiguous()?, v.contiguous()?)
    };
    let slopes = alibi_slopes(h);
    let slopes_t = if case.alibi {
        Some(Tensor::from_slice(&slopes, h, dev)?)
    } else {
        None
    };

    // Reference in f32 (every row needs a key: rows of length 0 use length 1 there, then masked).
    let ref_lens: Vec<u32> = case.lens.iter().map(|&l| l.max(1)).collect();
    let f = |x: &Tensor| x.to_dtype(DType::F32);
    let bias = if case.alibi {
        Some(alibi_bias(&slopes, t, DType::F32, dev)?)
    } else {
        None
    };
    let reference = materialized_attention(
        &f(&q)?,
        &f(&k)?,
        &f(&v)?,
        &key_padding_mask(&ref_lens, t, DType::F32, dev)?,
        bias.as_ref(),
        Some(&row_mask(&case.lens, t, DType::F32, dev)?),
        scale,
    )?; // [B, H, T, D]

    let (got, want, pad_abs) = match case.layout {
        QkvLayout::Bhtd | QkvLayout::Bthd => {
            let lens_t = Tensor::from_slice(&case.lens, b, dev)?;
            let out = fused_padded(
                &q,
                &k,
                &v,
                &lens_t,
                slopes_t.as_ref(),
                scale as f32,
                Knobs {
                    poison: true,
                    variant,
                    batch_invariant: false,
                },
            )?
            .to_dtype(DType::F32)?;
            // Padded rows must be exactly zero.
            let pad = row_mask(&case.lens, t, DType::F32, dev)?.affine(-1.0, 1.0)?;
            let pad_abs = out
                .broadcast_mul(&pad)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?;
            (out, reference, pad_abs as f64)
        }
        QkvLayout::Packed => {
            // Pack rows [0, len) of every sequence: [total, H, D].
            let pack = |x: &Tensor| -> candle_core::Result<Tensor> {
                let parts = case
                    .lens
                    .iter()
                    .enumerate()
                    .filter(|(_, &l)| l > 0)
                    .map(|(i, &l)| x.get(i)?.narrow(1, 0, l as usize)?.transpose(0, 1))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)?.contiguous()
            };
            let mut cu = vec![0u32];
            for &l in &case.lens {
                cu.push(cu.last().unwrap() + l);
            }
            let cu_t = Tensor::from_slice(&cu, cu.len(), dev)?;
            let max_len = case.lens.iter().copied().max().unwrap_or(0) as usize;
            let out = fused_packed(
                &pack(&q)?,
                &pack(&k)?,
                &pack(&v)?,
                &cu_t,
                max_len,
                slopes_t.as_ref(),
                scale as f32,
                Knobs {
                    poison: true,
                    variant,
                    batch_invariant: false,
                },
            )?
            .to_dtype(DType::F32)?;
            (out, pack(&reference)?, 0.0)
        }
    };
    let got_norm = norm(&got)?;
    let ref_norm = norm(&want)?;
    let err = norm(&(&got - &want)?)?;
    let rel = if ref_norm > 0.0 { err / ref_norm } else { err };
    let limit = limit_for(case.dtype);
    let finite = got_norm.is_finite();
    let pass = finite && rel <= limit && pad_abs == 0.0;
    let detail = if !finite {
        "output has NaN/inf (an element left unwritten or a masked row divided by zero)".to_string()
    } else if pad_abs != 0.0 {
        format!("padded query rows are not zero (sum |x| = {pad_abs:e})")
    } else if rel > limit {
        format!("relative error {rel:.2e} over the limit {limit:.0e}")
    } else {
        "ok".to_string()
    };
    Ok(CaseResult {
        pass,
        rel_err: rel,
        limit,
        detail,
    })
}

/// Checks [`super::bias_act`]'s fused CUDA pass against candle's ops computed in f32: every
/// activation/residual combination in f16, bf16 and f32; then [`check_fused_ops`] with `options`
/// and [`check_rotary_attention`]. Returns (name, relative error, limit).
pub fn check_bias_act(
    dev: &Device,
    options: &KernelOptions,
) -> anyhow::Result<Vec<(String, f64, f64)>> {
    use super::{bias_act, Act};
    let mut out = Vec::new();
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        for (act, res) in [
            (Act::Identity, false),
            (Act::GeluErf, false),
            (Act::Identity, true),
        ] {
            let (rows, cols) = (333, 1280);
            let x = Tensor::randn(0f32, 2.0, (3, rows / 3, cols), dev)?.to_dtype(dtype)?;
            let b = Tensor::randn(0f32, 1.0, cols, dev)?.to_dtype(dtype)?;
            let r = Tensor::randn(0f32, 1.0, (3, rows / 3, cols), dev)?.to_dtype(dtype)?;
            let got = bias_act(&x, &b, act, res.then_some(&r))?.to_dtype(DType::F32)?;
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let mut want = f(&x)?.broadcast_add(&f(&b)?)?;
            if act == Act::GeluErf {
                want = want.gelu_erf()?;
            }
            if res {
                want = (want + f(&r)?)?;
            }
            let rel = norm(&(&got - &want)?)? / norm(&want)?;
            let limit = match dtype {
                DType::F32 => 1e-5,
                DType::BF16 => 1e-2,
                _ => 2e-3,
            };
            let name = format!(
                "bias{}{} {dtype:?}",
                if act == Act::GeluErf { "+gelu" } else { "" },
                if res { "+residual" } else { "" }
            );
            out.push((
                name,
                if rel.is_finite() { rel } else { f64::INFINITY },
                limit,
            ));
        }
    }
    out.extend(check_fused_ops(dev, options)?);
    out.extend(check_rotary_attention(dev)?);
    Ok(out)
}

/// Checks the attention kernels that apply ESM's rotary embedding themselves (Hopper) against
/// rotating q and k first (the rotary q/k op) and running the same tile variant on the result:
/// one padded batch of rows of 200, 37 and 129 tokens (positions past a row's length are never
/// read), 4 heads, f16 and bf16, straight from a q/k/v projection. Returns (name, relative error,
/// limit); nothing where no variant rotates (not a Hopper GPU).
pub fn check_rotary_attention(dev: &Device) -> anyhow::Result<Vec<(String, f64, f64)>> {
    use crate::rotary::{split_qkv_views, Rotary};
    let mut out = Vec::new();
    if !super::hopper_attention(dev) {
        return Ok(out);
    }
    let (lens, heads, hd) = ([200u32, 37, 129], 4, 64);
    let (b, t) = (lens.len(), 200);
    let key_lens = Tensor::from_slice(&lens, b, dev)?;
    for dtype in [DType::F16, DType::BF16] {
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * heads * hd), dev)?.to_dtype(dtype)?;
        let rot = Rotary::new(hd, 10000.0, 256, dtype, dev)?;
        let (cos, sin) = rot
            .tables_for(t)
            .ok_or_else(|| anyhow::anyhow!("no f32 rotary tables on a CUDA device"))?;
        let (q, k, v) = split_qkv_views(&qkv, heads, hd)?;
        let (qr, kr) = rot
            .forward_qkv(&qkv, heads, &KernelOptions::default())?
            .ok_or_else(|| anyhow::anyhow!("the rotary q/k op did not run"))?;
        // Same kernel and arithmetic either way: only roundings of the rotated values differ.
        let limit = if dtype == DType::BF16 { 1e-2 } else { 2e-3 };
        for variant in FaVariant::ALL.into_iter().filter(|v| v.fuses_rotary()) {
            let scale = 0.125f32;
            let knobs = Knobs::variant(variant);
            let got = super::fused_padded_rotary(&q, &k, &v, &key_lens, cos, sin, scale, knobs)?;
            let want = super::fused_padded(&qr, &kr, &v, &key_lens, None, scale, knobs)?;
            let want = want.to_dtype(DType::F32)?;
            let rel = norm(&(got.to_dtype(DType::F32)? - &want)?)? / norm(&want)?;
            out.push((
                format!("attention+rotary {} {dtype:?}", variant.name()),
                if rel.is_finite() { rel } else { f64::INFINITY },
                limit,
            ));
        }
    }
    Ok(out)
}

/// Checks the fused ops of [`super::ops`] (cuBLASLt linear with bias and residual, LayerNorm,
/// rotary q/k from the projection, gated GELU, embedding lookup, pooling) against candle's ops
/// computed in f32, in f16, bf16 and f32, with the given options. Returns (name, relative error,
/// limit); on a device where an op does not apply (or with [`KernelOptions::fused_ops`] off) the
/// candle fallback is what gets compared (and passes trivially).
pub fn check_fused_ops(
    dev: &Device,
    options: &KernelOptions,
) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let mut out = Vec::new();
    for dtype in [DType::F16, DType::BF16, DType::F32] {
        let c = OpCheck {
            dev,
            dtype,
            options,
            fallback: GemmFallback::default(),
            limit: match dtype {
                DType::F32 => 1e-5,
                DType::BF16 => 1e-2,
                _ => 2e-3,
            },
        };
        c.linear(&mut out)?;
        c.layer_norm(&mut out)?;
        c.rotary_qk(&mut out)?;
        c.gated_gelu(&mut out)?;
        c.gather_rows(&mut out)?;
        c.weighted_pool(&mut out)?;
    }
    Ok(out)
}

/// One dtype's checks of [`check_fused_ops`].
struct OpCheck<'a> {
    dev: &'a Device,
    dtype: DType,
    options: &'a KernelOptions,
    fallback: GemmFallback,
    limit: f64,
}

type Checks = Vec<(String, f64, f64)>;

/// Rows of the inputs of the linear, LayerNorm and gated GELU checks (not a multiple of a tile).
const CHECK_ROWS: usize = 333;

fn to_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// `|got - want| / |want|` in f32, infinite where not finite.
fn rel_error(got: &Tensor, want: &Tensor) -> anyhow::Result<f64> {
    let rel = norm(&(got.to_dtype(DType::F32)? - want)?)? / norm(want)?;
    Ok(if rel.is_finite() { rel } else { f64::INFINITY })
}

impl OpCheck<'_> {
    fn rnd(&self, shape: &[usize], sd: f32) -> anyhow::Result<Tensor> {
        Ok(Tensor::randn(0f32, sd, shape, self.dev)?.to_dtype(self.dtype)?)
    }

    /// Whether the fused path must run here: a silent fallback is then a failure.
    fn fused_expected(&self) -> bool {
        self.dev.is_cuda() && super::CUDA_BUILT && self.options.fused_ops
    }

    /// Linear `x [333, 256] · W [384, 256]ᵀ (+ b) (+ r)`, then bias + GELU in the epilogue.
    fn linear(&self, out: &mut Checks) -> anyhow::Result<()> {
        let (rows, k, n) = (CHECK_ROWS, 256, 384);
        let x = self.rnd(&[rows, k], 1.0)?;
        let w = self.rnd(&[n, k], 0.05)?;
        let b = self.rnd(&[n], 1.0)?;
        let r = self.rnd(&[rows, n], 1.0)?;
        let base = to_f32(&x)?.matmul(&to_f32(&w)?.t()?)?;
        let dtype = self.dtype;
        for (with_b, with_r) in [(false, false), (true, false), (true, true)] {
            let name = format!(
                "linear{}{} {dtype:?}",
                if with_b { "+bias" } else { "" },
                if with_r { "+residual" } else { "" }
            );
            let (bias, res) = (with_b.then_some(&b), with_r.then_some(&r));
            let got = super::linear(&x, &w, bias, res, false, self.options, &self.fallback)?;
            let got = match got {
                Some(g) => g,
                None if self.fused_expected() => {
                    out.push((
                        format!("{name} (cuBLASLt did not run)"),
                        f64::INFINITY,
                        self.limit,
                    ));
                    continue;
                }
                None => {
                    let mut y = x.matmul(&w.t()?)?;
                    if let Some(b) = bias {
                        y = y.broadcast_add(b)?;
                    }
                    if let Some(r) = res {
                        y = (y + r)?;
                    }
                    y
                }
            };
            let mut want = base.clone();
            if with_b {
                want = want.broadcast_add(&to_f32(&b)?)?;
            }
            if with_r {
                want = (want + to_f32(&r)?)?;
            }
            out.push((name, rel_error(&got, &want)?, self.limit));
        }
        // Bias + GELU in the cuBLASLt epilogue (tanh approximation, f16/bf16 only) against the
        // exact GELU: the approximation must stay within the dtype's tolerance.
        if dtype == DType::F32 {
            return Ok(());
        }
        let want = base.broadcast_add(&to_f32(&b)?)?.gelu_erf()?;
        match super::linear(&x, &w, Some(&b), None, true, self.options, &self.fallback)? {
            Some(got) => out.push((
                format!("linear+bias+gelu(tanh epilogue) {dtype:?}"),
                rel_error(&got, &want)?,
                self.limit,
            )),
            None if self.fused_expected() => out.push((
                format!("linear+bias+gelu {dtype:?} (cuBLASLt epilogue did not run)"),
                f64::INFINITY,
                self.limit,
            )),
            None => {}
        }
        Ok(())
    }

    /// LayerNorm over 1280 and 768 columns.
    fn layer_norm(&self, out: &mut Checks) -> anyhow::Result<()> {
        for cols in [1280usize, 768] {
            let x = (self.rnd(&[CHECK_ROWS, cols], 2.0)? + 3.0)?;
            let w = self.rnd(&[cols], 1.0)?;
            let bb = self.rnd(&[cols], 1.0)?;
            let got = super::layer_norm(&x, &w, &bb, 1e-5, self.options)?;
            let want = candle_nn::ops::layer_norm(&to_f32(&x)?, &to_f32(&w)?, &to_f32(&bb)?, 1e-5)?;
            out.push((
                format!("layer_norm[{cols}] {:?}", self.dtype),
                rel_error(&got, &want)?,
                self.limit,
            ));
        }
        Ok(())
    }

    /// Rotary q/k from a `[2, 37, 3*4*64]` projection.
    fn rotary_qk(&self, out: &mut Checks) -> anyhow::Result<()> {
        use crate::rotary::{split_qkv, Rotary};
        let (bt, len, heads, hd) = (2, 37, 4, 64);
        let qkv = self.rnd(&[bt, len, 3 * heads * hd], 1.0)?;
        let rot = Rotary::new(hd, 10000.0, 64, self.dtype, self.dev)?;
        let rot32 = Rotary::new(hd, 10000.0, 64, DType::F32, self.dev)?;
        let (q_ref, k_ref, _) = split_qkv(&to_f32(&qkv)?, heads, hd)?;
        let (q_want, k_want) = (rot32.forward(&q_ref)?, rot32.forward(&k_ref)?);
        let (q, k) = match rot.forward_qkv(&qkv, heads, self.options)? {
            Some(qk) => qk,
            None => {
                let (q, k, _) = split_qkv(&qkv, heads, hd)?;
                (rot.forward(&q)?, rot.forward(&k)?)
            }
        };
        let both = Tensor::cat(&[&to_f32(&q)?, &to_f32(&k)?], 0)?;
        let want = Tensor::cat(&[&q_want, &k_want], 0)?;
        out.push((
            format!("rotary q/k {:?}", self.dtype),
            rel_error(&both, &want)?,
            self.limit,
        ));
        Ok(())
    }

    /// Gated GELU of `[333, 2 * 3072]`.
    fn gated_gelu(&self, out: &mut Checks) -> anyhow::Result<()> {
        let g = self.rnd(&[CHECK_ROWS, 2 * 3072], 2.0)?;
        let got = super::gated_gelu(&g, 3072, self.options)?;
        let g32 = to_f32(&g)?;
        let want = (g32.narrow(1, 0, 3072)?.gelu_erf()? * g32.narrow(1, 3072, 3072)?)?;
        out.push((
            format!("gated_gelu {:?}", self.dtype),
            rel_error(&got, &want)?,
            self.limit,
        ));
        Ok(())
    }

    /// Embedding lookup: the rows are copied, so exactly index_select's (limit 0).
    fn gather_rows(&self, out: &mut Checks) -> anyhow::Result<()> {
        let (vocab, hidden) = (33, 1280);
        let table = self.rnd(&[vocab, hidden], 1.0)?;
        let ids: Vec<u32> = (0..3 * 57).map(|i| (i * 7 % vocab) as u32).collect();
        let ids_t = Tensor::from_vec(ids, (3, 57), self.dev)?;
        let got = super::gather_rows(&table, &ids_t, self.options)?;
        let want = to_f32(&table)?
            .index_select(&ids_t.flatten_all()?, 0)?
            .reshape((3, 57, hidden))?;
        out.push((
            format!("embedding lookup {:?}", self.dtype),
            rel_error(&got, &want)?,
            0.0,
        ));
        Ok(())
    }

    /// Masked mean pooling of `[3, 57, 1280]` (weights 0 on padding) against an f32 matmul.
    fn weighted_pool(&self, out: &mut Checks) -> anyhow::Result<()> {
        let x = self.rnd(&[3, 57, 1280], 1.0)?;
        let mut w = vec![0f32; 3 * 57];
        for (row, len) in [(0usize, 57usize), (1, 20), (2, 1)] {
            w[row * 57..row * 57 + len].fill(1.0 / len as f32);
        }
        let w = Tensor::from_vec(w, (3, 57), self.dev)?;
        let got = super::weighted_pool(&x, &w, self.options)?;
        let want = w.reshape((3, 1, 57))?.matmul(&to_f32(&x)?)?.squeeze(1)?;
        out.push((
            format!("weighted pool {:?}", self.dtype),
            rel_error(&got, &want)?,
            1e-5,
        ));
        Ok(())
    }
}
