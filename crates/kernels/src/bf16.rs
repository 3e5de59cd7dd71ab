//! The CPU bf16 linear layer (`--dtype bf16` on the CPU, and `auto` on an AMX CPU):
//! `y = x W^T + b` with both operands rounded to bf16 (round to nearest even) and the products
//! summed in f32. Activations, layer norms, attention and the residual stream stay f32.
//!
//! On a CPU with Intel AMX-BF16 (Sapphire Rapids and later) the product runs on our AMX kernel
//! (`crate::amx`: `TDPBF16PS` tiles, bf16 x bf16 -> f32), with the weight rounded and packed
//! once, when the layer is built. Elsewhere the same rounding runs through candle's f32 GEMM on the rounded operands: the same numbers up to the order of the f32 sums,
//! slower than plain f32, there so that `--dtype bf16` means one precision on every CPU and CI
//! (no AMX) tests it.
//!
//! Why this precision: on the oracle models the whole pipeline with bf16 products differs from
//! the original by at most 2.3e-3 in score (gate: 5e-3, no call changed), where int8 differs by
//! 2.3e-2 (docs/ARCHITECTURE.md, "CPU matrix kernels").
//!
//! A row's result depends only on that row: rows are split between threads in whole AMX tiles
//! of the one kernel, which sums every output in the same order whatever the split. So the
//! layer is batch invariant bit for bit.

use candle_core::{DType, Result, Tensor};

/// What the CPU bf16 path runs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBf16Isa {
    /// `amx-bf16 32x32` (AMX) or `emulated` (candle's f32 GEMM on
    /// bf16-rounded operands).
    pub kernel: &'static str,
    /// Whether the bf16 products run on matrix instructions (AMX); only such a path could be
    /// the CPU's default.
    pub amx: bool,
}

/// The CPU bf16 matrix path of this machine (for `doctor` and the choice at load).
pub fn cpu_bf16_isa() -> CpuBf16Isa {
    if amx::kernel().is_some() {
        CpuBf16Isa {
            kernel: amx::KERNEL,
            amx: true,
        }
    } else {
        CpuBf16Isa {
            kernel: "emulated",
            amx: false,
        }
    }
}

/// `t` with every value rounded to bf16 (round to nearest even) and widened back to f32.
fn round_to_bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// A bf16 linear layer: the weight rounded to bf16 (and packed for AMX) at construction.
pub struct Bf16Linear {
    imp: Imp,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

enum Imp {
    #[cfg(target_arch = "x86_64")]
    Amx(amx::Packed),
    /// The weight rounded to bf16, kept as f32 `[out, in]`.
    Emulated(Tensor),
}

impl std::fmt::Debug for Bf16Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kernel = match &self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Amx(_) => amx::KERNEL,
            Imp::Emulated(_) => "emulated",
        };
        f.debug_struct("Bf16Linear")
            .field("in_dim", &self.in_dim)
            .field("out_dim", &self.out_dim)
            .field("bias", &self.bias.is_some())
            .field("kernel", &kernel)
            .finish()
    }
}

impl Bf16Linear {
    /// Rounds (and, with AMX, packs) `weight` `[out, in]` (PyTorch's layout); keeps `bias`
    /// `[out]` in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::with_kernel(weight, bias, true)
    }

    /// [`Self::new`], with the AMX kernel only where `use_amx` (tests compare the two).
    pub fn with_kernel(weight: &Tensor, bias: Option<&Tensor>, use_amx: bool) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if !weight.device().is_cpu() {
            candle_core::bail!("the bf16 linear layer runs on the CPU only");
        }
        let weight = weight.to_dtype(DType::F32)?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let imp = match amx::kernel().filter(|_| use_amx) {
            #[cfg(target_arch = "x86_64")]
            Some(k) => Imp::Amx(amx::pack(k, &weight, bias.as_ref())?),
            #[cfg(not(target_arch = "x86_64"))]
            Some(never) => match never {},
            None => Imp::Emulated(round_to_bf16(&weight)?),
        };
        Ok(Self {
            imp,
            bias,
            in_dim,
            out_dim,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Whether this layer runs on AMX.
    pub fn is_amx(&self) -> bool {
        !matches!(self.imp, Imp::Emulated(_))
    }

    /// `x` `[rows, in]` (f32 or anything that widens to it) -> `[rows, out]` f32, bias added.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// [`Self::forward`], with the exact GELU applied where `gelu` (on AMX inside each row
    /// block, while its results are in cache).
    pub fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        self.forward_with(x, gelu, None)
    }

    /// `act(x W^T + b)`, or `x W^T + b + residual` (`[rows, out]`); on AMX the GELU or the
    /// residual add happens inside each row block.
    pub fn forward_with(
        &self,
        x: &Tensor,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if gelu && residual.is_some() {
            candle_core::bail!("bf16 linear: a GELU and a residual add in one layer");
        }
        let (rows, k) = x.dims2()?;
        if k != self.in_dim {
            candle_core::bail!(
                "bf16 linear: input has {k} columns, the layer takes {}",
                self.in_dim
            );
        }
        if let Some(r) = residual {
            if r.dims() != [rows, self.out_dim] {
                candle_core::bail!(
                    "bf16 linear: residual {:?}, the output is [{rows}, {}]",
                    r.dims(),
                    self.out_dim
                );
            }
        }
        match &self.imp {
            #[cfg(target_arch = "x86_64")]
            Imp::Amx(p) => amx::forward(p, x, gelu, residual),
            Imp::Emulated(w) => {
                let x = round_to_bf16(&x.to_dtype(DType::F32)?)?;
                let y = x.matmul(&w.t()?)?;
                let act = if gelu {
                    crate::Act::GeluErf
                } else {
                    crate::Act::Identity
                };
                match (&self.bias, residual) {
                    (Some(b), _) => crate::bias_act(&y, b, act, residual),
                    (None, _) if gelu => crate::gelu_erf(&y),
                    (None, Some(r)) => y + r,
                    (None, None) => Ok(y),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::sync::OnceLock;

    use candle_core::{Result, Tensor};

    pub use crate::amx::Packed;
    use crate::cpu::with_f32_slice;

    /// Our AMX kernel (`crate::amx`): 2 x 2 tiles of `TDPBF16PS`.
    pub const KERNEL: &str = "amx-bf16 32x32";

    /// Proof that this CPU runs the kernel and that it computed the right thing once.
    #[derive(Clone, Copy)]
    pub struct Kernel(());

    /// The AMX kernel, where this CPU has AMX-BF16, the OS lets this process use the tiles,
    /// and the kernel passes its check.
    pub fn kernel() -> Option<Kernel> {
        static KERNEL_CELL: OnceLock<Option<Kernel>> = OnceLock::new();
        *KERNEL_CELL.get_or_init(|| {
            if !crate::amx::usable() {
                return None;
            }
            match self_check() {
                Ok(()) => Some(Kernel(())),
                Err(e) => {
                    tracing::warn!("{KERNEL} failed its check on this CPU ({e}); bf16 is emulated");
                    None
                }
            }
        })
    }

    /// One small product on the kernel, against the same rounding in f64: a kernel that runs but
    /// computes something else (a CPU or OS this path was not measured on) is not used.
    fn self_check() -> Result<()> {
        let (m, k, n) = (37, 70, 33);
        let val = |i: usize, s: f32| ((i * 7919 % 263) as f32 / 131.0 - 1.0) * s;
        let x: Vec<f32> = (0..m * k).map(|i| val(i, 1.0)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| val(i + 11, 0.3)).collect();
        let b: Vec<f32> = (0..n).map(|i| val(i + 5, 0.1)).collect();
        let packed = Packed::new(&w, n, k, Some(&b));
        // SAFETY: `usable()` was checked by the caller.
        let y = unsafe { packed.forward(&x, m, false, None) };
        let r = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|l| r(x[i * k + l]) * r(w[j * k + l]))
                    .sum::<f64>()
                    + f64::from(b[j]);
                worst = worst.max((f64::from(y[i * n + j]) - want).abs());
            }
        }
        if worst > 1e-4 {
            candle_core::bail!("largest difference {worst:e} from the bf16 product");
        }
        Ok(())
    }

    /// The weight rounded and packed once.
    pub fn pack(_: Kernel, weight: &Tensor, bias: Option<&Tensor>) -> Result<Packed> {
        let (n, k) = weight.dims2()?;
        let bias = bias.map(crate::cpu_ops::to_vec).transpose()?;
        with_f32_slice(&weight.contiguous()?, |w| {
            Ok(Packed::new(w, n, k, bias.as_deref()))
        })
    }

    pub fn forward(
        p: &Packed,
        x: &Tensor,
        gelu: bool,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (m, _) = x.dims2()?;
        let residual = residual.map(|r| r.contiguous()).transpose()?;
        let y = with_f32_slice(&x.contiguous()?, |x| match &residual {
            // SAFETY (both): a `Packed` is only built with a `Kernel`, which exists only where
            // `usable()` held.
            Some(r) => with_f32_slice(r, |r| Ok(unsafe { p.forward(x, m, gelu, Some(r)) })),
            None => Ok(unsafe { p.forward(x, m, gelu, None) }),
        })?;
        Tensor::from_vec(y, (m, p.out_dim()), x.device())
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub const KERNEL: &str = "none";
    #[derive(Clone, Copy)]
    pub enum Kernel {}
    pub fn kernel() -> Option<Kernel> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(shape: (usize, usize), std: f64, seed: u64) -> Tensor {
        // Small LCG so the test needs no RNG crate and is the same everywhere.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0;
                (u * std * 1.7) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// f64 sums of the bf16-rounded operands: what both kernels approximate in f32.
    fn bf16_reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<f32> {
        let r = |t: &Tensor| -> Vec<f32> {
            round_to_bf16(t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (rows, k) = x.dims2().unwrap();
        let n = w.dims2().unwrap().0;
        let (x, w, b) = (r(x), r(w), b.to_vec1::<f32>().unwrap());
        let mut y = vec![0f32; rows * n];
        for i in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|l| f64::from(x[i * k + l]) * f64::from(w[j * k + l]))
                    .sum();
                y[i * n + j] = (s + f64::from(b[j])) as f32;
            }
        }
        y
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The GELU inside the layer is the GELU of its output, to the bit, on both kernels.
    #[test]
    fn the_fused_gelu_and_residual_are_those_of_the_output() {
        let (x, w, b, r) = (
            randn((70, 40), 1.0, 4),
            randn((50, 40), 0.2, 5),
            randn((1, 50), 0.1, 6).flatten_all().unwrap(),
            randn((70, 50), 1.0, 7),
        );
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        for use_amx in [false, true] {
            let l = Bf16Linear::with_kernel(&w, Some(&b), use_amx).unwrap();
            let plain = l.forward(&x).unwrap();
            let fused = l.forward_act(&x, true).unwrap();
            let after = crate::gelu_erf(&plain).unwrap();
            assert_eq!(bits(&fused), bits(&after), "GELU, AMX: {}", l.is_amx());
            let fused = l.forward_with(&x, false, Some(&r)).unwrap();
            let after = (&plain + &r).unwrap();
            assert_eq!(bits(&fused), bits(&after), "residual, AMX: {}", l.is_amx());
        }
    }

    #[test]
    fn both_kernels_give_the_bf16_rounded_product() {
        // 70 rows: one whole 64-row block and a ragged one; 40 and 50: not multiples of the
        // kernel's 16 x 16 tile or of its 32-deep k step.
        let (x, w, b) = (
            randn((70, 40), 1.0, 1),
            randn((50, 40), 0.2, 2),
            randn((1, 50), 0.1, 3).flatten_all().unwrap(),
        );
        let want = bf16_reference(&x, &w, &b);
        let f32_product: Vec<f32> = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // The rounding is there: f32 products are measurably off the bf16 ones.
        assert!(max_rel(&f32_product, &want) > 1e-4);
        for amx in [false, true] {
            let layer = Bf16Linear::with_kernel(&w, Some(&b), amx).unwrap();
            if amx && !layer.is_amx() {
                continue; // no AMX here: the device run covers it (scripts/gpu-bench.sh cpu)
            }
            let got: Vec<f32> = layer
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let err = max_rel(&got, &want);
            assert!(err < 1e-5, "amx {amx}: max relative error {err:e}");
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_any_batch() {
        let (x, w) = (randn((150, 96), 1.0, 4), randn((80, 96), 0.1, 5));
        for amx in [false, true] {
            let layer = Bf16Linear::with_kernel(&w, None, amx).unwrap();
            if amx && !layer.is_amx() {
                continue;
            }
            let all = layer.forward(&x).unwrap();
            // At least 4 rows: candle's GEMM (the emulated path, like the f32 one) sums
            // differently for 1 to 3 rows (measured); a model's batch has more.
            for (start, len) in [(0, 4), (5, 9), (3, 17), (63, 70), (140, 10)] {
                let part = layer.forward(&x.narrow(0, start, len).unwrap()).unwrap();
                let same = all.narrow(0, start, len).unwrap();
                let diff = (part - same)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(diff, 0.0, "amx {amx}: rows {start}..+{len} differ");
            }
        }
    }

    #[test]
    fn reports_the_kernel() {
        let isa = cpu_bf16_isa();
        assert_eq!(isa.amx, isa.kernel != "emulated");
        #[cfg(not(target_arch = "x86_64"))]
        assert!(!isa.amx);
    }
}
