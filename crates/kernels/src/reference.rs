//! The materialized attention path: `softmax(scale * Q K^T + bias + mask) V` with the score matrix
//! in memory, through candle's ordinary ops (any device, any float dtype). It is the reference the
//! fused kernel is validated against, and the fallback for other head sizes, dtypes and devices.

use candle_core::{DType, Device, Result, Tensor};

/// ALiBi slopes of DNABERT-2/DNABERT-S (MosaicBERT) for `n` heads: for a power of two,
/// `start = 2^(-8/n)`, `slope_h = start^(h+1)`; otherwise the slopes of the nearest lower power of
/// two `p`, then every other slope of the `2p` list until there are `n`. Computed in f64 and
/// rounded to f32, as the reference's `torch.Tensor(list_of_floats)` does.
pub fn alibi_slopes(n: usize) -> Vec<f32> {
    fn pow2(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (0..n).map(|h| start.powi(h as i32 + 1)).collect()
    }
    if n == 0 {
        return Vec::new();
    }
    let p = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let mut s = pow2(p);
    if p < n {
        s.extend(pow2(2 * p).into_iter().step_by(2).take(n - p));
    }
    s.into_iter().map(|x| x as f32).collect()
}

/// Additive key-padding mask `[batch, 1, 1, len]`: 0 for keys `< lens[b]`, -inf past them.
pub fn key_padding_mask(lens: &[u32], len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = Vec::with_capacity(lens.len() * len);
    for &l in lens {
        m.extend((0..len).map(|j| {
            if j < l as usize {
                0f32
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    Tensor::from_vec(m, (lens.len(), 1, 1, len), device)?.to_dtype(dtype)
}

/// Multiplicative row mask `[batch, 1, len, 1]`: 1 for query rows `< lens[b]`, 0 past them.
pub fn row_mask(lens: &[u32], len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = Vec::with_capacity(lens.len() * len);
    for &l in lens {
        m.extend((0..len).map(|j| if j < l as usize { 1f32 } else { 0f32 }));
    }
    Tensor::from_vec(m, (lens.len(), 1, len, 1), device)?.to_dtype(dtype)
}

/// ALiBi bias `[1, heads, len, len]` = `-slope_h * |i - j|`, built on `device`.
pub fn alibi_bias(slopes: &[f32], len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let pos = Tensor::arange(0f32, len as f32, device)?;
    let dist = pos
        .unsqueeze(1)?
        .broadcast_sub(&pos.unsqueeze(0)?)?
        .abs()?
        .unsqueeze(0)?; // [1, len, len]
    let s = Tensor::from_slice(slopes, (slopes.len(), 1, 1), device)?;
    dist.broadcast_mul(&s)?.neg()?.unsqueeze(0)?.to_dtype(dtype)
}

/// Materialized attention. `q`, `k`, `v`: `[batch, heads, len, head_dim]`; `key_mask`: additive
/// `[batch, 1, 1, len]` (see [`key_padding_mask`]); `bias`: optional additive, broadcastable to
/// `[batch, heads, len, len]` (see [`alibi_bias`]); `rows`: optional `[batch, 1, len, 1]` that
/// zeroes padded query rows (see [`row_mask`]). Returns `[batch, heads, len, head_dim]`.
///
/// Computes in the inputs' dtype (candle's softmax accumulates in f32); upcast the inputs to f32
/// for a reference. Every row needs at least one unmasked key, else its softmax is NaN.
pub fn materialized_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    bias: Option<&Tensor>,
    rows: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let q = (q * scale)?.contiguous()?;
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(bias)?;
    }
    scores = scores.broadcast_add(key_mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v.contiguous()?)?;
    match rows {
        Some(r) => out.broadcast_mul(r),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_follow_mosaicbert() {
        let s8 = alibi_slopes(8);
        assert_eq!(s8.len(), 8);
        assert!((s8[0] - 0.5).abs() < 1e-7 && (s8[7] - 1.0 / 256.0).abs() < 1e-9);
        // 12 heads: the 8-head list, then slopes 0, 2, 4, 6 of the 16-head list.
        let s12 = alibi_slopes(12);
        let s16 = alibi_slopes(16);
        assert_eq!(&s12[..8], &s8[..]);
        assert_eq!(&s12[8..], &[s16[0], s16[2], s16[4], s16[6]]);
    }

    #[test]
    fn materialized_matches_a_loop() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 4);
        let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev)?;
        let lens = [5u32, 3];
        let slopes = alibi_slopes(h);
        let out = materialized_attention(
            &q,
            &k,
            &v,
            &key_padding_mask(&lens, t, DType::F32, &dev)?,
            Some(&alibi_bias(&slopes, t, DType::F32, &dev)?),
            Some(&row_mask(&lens, t, DType::F32, &dev)?),
            0.5,
        )?;
        let ov = out.flatten_all()?.to_vec1::<f32>()?;
        let qa = q.flatten_all()?.to_vec1::<f32>()?;
        let ka = k.flatten_all()?.to_vec1::<f32>()?;
        let va = v.flatten_all()?.to_vec1::<f32>()?;
        let at = |x: &[f32], bb: usize, hh: usize, i: usize, c: usize| {
            x[((bb * h + hh) * t + i) * d + c]
        };
        for (bb, &len) in lens.iter().enumerate() {
            let len = len as usize;
            for (hh, &slope) in slopes.iter().enumerate() {
                for i in 0..t {
                    let mut w: Vec<f64> = (0..len)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| {
                                    at(&qa, bb, hh, i, c) as f64 * at(&ka, bb, hh, j, c) as f64
                                })
                                .sum();
                            0.5 * dot - slope as f64 * (i as f64 - j as f64).abs()
                        })
                        .collect();
                    let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    w.iter_mut().for_each(|x| *x = (*x - m).exp());
                    let sum: f64 = w.iter().sum();
                    for c in 0..d {
                        let want = if i < len {
                            (0..len)
                                .map(|j| w[j] / sum * at(&va, bb, hh, j, c) as f64)
                                .sum()
                        } else {
                            0.0
                        };
                        let got = at(&ov, bb, hh, i, c) as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{bb} h{hh} i{i} c{c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
