//! Rotary position tables and the q/k/v split of a fused projection: the layouts the attention
//! and rotary kernels read. Used by the models (ESM, DNABERT) and by the self-test
//! ([`crate::selftest`]), which checks the kernels against them.

use candle_core::{DType, Device, Result, Tensor};

/// Rotary position embedding, rotate-half convention (first half / second half of each head,
/// not interleaved), positions counted from 0 at the first token.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// f32 copies for the fused q/k kernel (CUDA only).
    tables_f32: Option<(Tensor, Tensor)>,
    head_dim: usize,
    base: f64,
}

impl Rotary {
    /// Precomputes the tables for `max_len` positions; longer inputs get tables on the fly.
    pub fn new(
        head_dim: usize,
        base: f64,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = Self::tables(head_dim, base, max_len, dtype, device)?;
        let tables_f32 = if device.is_cuda() {
            Some(Self::tables(head_dim, base, max_len, DType::F32, device)?)
        } else {
            None
        };
        Ok(Self {
            cos,
            sin,
            tables_f32,
            head_dim,
            base,
        })
    }

    /// `cos`/`sin` of `[len, head_dim / 2]`, computed in f64 then cast once.
    fn tables(
        head_dim: usize,
        base: f64,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotated q and k straight from a fused projection `qkv` `[batch, len, 3 * heads *
    /// head_dim]`, as `[batch, heads, len, head_dim]` views of token-major storage (one kernel,
    /// no split copies; [`crate::rotary_qk`]). `None` where that kernel does not apply.
    pub fn forward_qkv(
        &self,
        qkv: &Tensor,
        heads: usize,
        options: &crate::KernelOptions,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let Some((cos, sin)) = &self.tables_f32 else {
            return Ok(None);
        };
        crate::rotary_qk(qkv, cos, sin, heads, self.head_dim, options)?
            .map(|(q, k)| -> Result<(Tensor, Tensor)> {
                Ok((q.transpose(1, 2)?, k.transpose(1, 2)?))
            })
            .transpose()
    }

    /// The f32 tables (`[positions, head_dim / 2]`) when they cover rows of `len` tokens (CUDA
    /// devices only), for kernels that rotate as they load.
    pub fn tables_for(&self, len: usize) -> Option<(&Tensor, &Tensor)> {
        self.tables_f32
            .as_ref()
            .filter(|(c, _)| c.dim(0).is_ok_and(|n| n >= len))
            .map(|(c, s)| (c, s))
    }

    /// The tables as f32 values `[len, head_dim / 2]` (cos, sin), for the CPU's attention
    /// ([`crate::cpu_packed_attention`]).
    pub fn cpu_tables(&self, len: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let (cos, sin) = if len <= self.cos.dim(0)? {
            (self.cos.narrow(0, 0, len)?, self.sin.narrow(0, 0, len)?)
        } else {
            Self::tables(self.head_dim, self.base, len, DType::F32, &Device::Cpu)?
        };
        Ok((crate::cpu_ops::to_vec(&cos)?, crate::cpu_ops::to_vec(&sin)?))
    }

    /// `x`: `[batch, heads, len, head_dim]` -> same shape, rotated.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let len = x.dim(2)?;
        let x = x.contiguous()?;
        if len <= self.cos.dim(0)? {
            let cos = self.cos.narrow(0, 0, len)?;
            let sin = self.sin.narrow(0, 0, len)?;
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        } else {
            let (cos, sin) = Self::tables(self.head_dim, self.base, len, x.dtype(), x.device())?;
            candle_nn::rotary_emb::rope(&x, &cos, &sin)
        }
    }
}

/// Like [`split_qkv`] but without copies: strided `[batch, heads, len, head_dim]` views of the
/// projection (for the fused attention kernel, which reads any row stride).
pub fn split_qkv_views(
    qkv: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, _) = qkv.dims3()?;
    let qkv = qkv.reshape((b, l, 3, heads, head_dim))?;
    let part = |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2) };
    Ok((part(0)?, part(1)?, part(2)?))
}

/// Splits a fused `[batch, len, 3 * hidden]` projection into q, k, v of
/// `[batch, heads, len, head_dim]` each (contiguous).
pub fn split_qkv(qkv: &Tensor, heads: usize, head_dim: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, _) = qkv.dims3()?;
    let qkv = qkv.reshape((b, l, 3, heads, head_dim))?;
    let part = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()
    };
    Ok((part(0)?, part(1)?, part(2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_matches_rotate_half_formula() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, l, d) = (1, 2, 5, 8);
        let x = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev)?;
        let rot = Rotary::new(d, 10000.0, 3, DType::F32, &dev)?; // shorter table: on-the-fly path
        let y = rot.forward(&x)?;
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let yv: Vec<f32> = y.flatten_all()?.to_vec1()?;
        for bh in 0..b * h {
            for p in 0..l {
                for i in 0..d {
                    let half = d / 2;
                    let f = 1.0 / 10000f64.powf((2 * (i % half)) as f64 / d as f64);
                    let (c, s) = ((p as f64 * f).cos(), (p as f64 * f).sin());
                    let base = (bh * l + p) * d;
                    let xi = xv[base + i] as f64;
                    let rot_half = if i < half {
                        -(xv[base + i + half] as f64)
                    } else {
                        xv[base + i - half] as f64
                    };
                    let want = xi * c + rot_half * s;
                    assert!((yv[base + i] as f64 - want).abs() < 1e-5);
                }
            }
        }
        Ok(())
    }

    /// The fused attention kernel reads q, k, v in place: the views must be strided windows of
    /// the projection (a copy would show as contiguous strides) and hold the right values.
    #[test]
    fn qkv_views_are_windows_of_the_projection() -> Result<()> {
        let dev = Device::Cpu;
        let (b, l, heads, d) = (2, 5, 3, 4);
        let qkv = Tensor::arange(0f32, (b * l * 3 * heads * d) as f32, &dev)?.reshape((
            b,
            l,
            3 * heads * d,
        ))?;
        let (q, k, v) = split_qkv_views(&qkv, heads, d)?;
        let (qc, kc, vc) = split_qkv(&qkv, heads, d)?;
        for (i, (view, copy)) in [(&q, &qc), (&k, &kc), (&v, &vc)].into_iter().enumerate() {
            assert_eq!(view.dims(), [b, heads, l, d]);
            assert_eq!(view.stride(), [l * 3 * heads * d, d, 3 * heads * d, 1]);
            assert_eq!(view.layout().start_offset(), i * heads * d);
            let diff = (view - copy)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0);
        }
        Ok(())
    }
}
