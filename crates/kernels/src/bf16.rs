//! The CPU bf16 linear layer (`--dtype bf16` on the CPU, and `auto` on an AMX CPU):
//! `y = x W^T + b` with both operands rounded to bf16 (round to nearest even) and the products
//! summed in f32. Activations, layer norms, attention and the residual stream stay f32.
//!
//! Where the CPU has bf16 matrix instructions the product runs on our kernel for them, with the
//! weight rounded and packed once, when the layer is built (`crate::bf16_gemm`): Intel AMX-BF16
//! (`TDPBF16PS`, Sapphire Rapids and later, `crate::amx`) or Arm's `BFMMLA` (`FEAT_BF16`:
//! Neoverse V1/V2, Grace, Graviton 3, Apple M2 and later, `crate::neon`). Elsewhere the same
//! rounding runs through candle's f32 GEMM on the rounded operands: the same numbers up to the
//! order of the f32 sums, slower than plain f32, there so that `--dtype bf16` means one precision
//! on every CPU and CI (neither AMX nor Arm) tests it.
//!
//! Why this precision: on the oracle models the whole pipeline with bf16 products differs from
//! the original by at most 2.3e-3 in score (gate: 5e-3, no call changed), where int8 differs by
//! 2.3e-2 (docs/ARCHITECTURE.md, "CPU matrix kernels").
//!
//! A row's result depends only on that row: rows are split between threads in whole blocks of
//! the one kernel, which sums every output in the same order whatever the split. So the layer
//! is batch invariant bit for bit.

use candle_core::{DType, Result, Tensor};

/// What the CPU bf16 path runs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBf16Isa {
    /// `amx-bf16 32x32` (AMX), `avx512-bf16 16x16` (AVX512-BF16), `neon-bfmmla 8x8` (Arm
    /// `BFMMLA`) or `emulated` (candle's f32 GEMM on bf16-rounded operands).
    pub kernel: &'static str,
    /// Whether the bf16 products run on the CPU's bf16 instructions.
    pub matrix: bool,
    /// Whether this path is the CPU's default (`--dtype auto`): only a kernel measured faster
    /// than f32 on its CPU kind. AMX and AVX512-BF16 are (3x and 2.8x, docs/BENCHMARKS.md); the
    /// Arm kernel has not been timed on an Arm CPU, so there bf16 stays opt-in.
    pub default: bool,
}

/// The CPU bf16 matrix path of this machine (for `doctor` and the choice at load).
pub fn cpu_bf16_isa() -> CpuBf16Isa {
    if let Some(k) = fast::kernel() {
        CpuBf16Isa {
            kernel: k.name(),
            matrix: true,
            default: k.is_default(),
        }
    } else {
        CpuBf16Isa {
            kernel: "emulated",
            matrix: false,
            default: false,
        }
    }
}

/// The names of every bf16 kernel this CPU runs, the preferred (the one [`cpu_bf16_isa`] names)
/// first; empty where bf16 is emulated. `bench --ops` times each.
pub fn cpu_bf16_kernels() -> Vec<&'static str> {
    fast::kernels().iter().map(|k| k.name()).collect()
}

/// `t` with every value rounded to bf16 (round to nearest even) and widened back to f32.
fn round_to_bf16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::BF16)?.to_dtype(DType::F32)
}

/// A bf16 linear layer: the weight rounded to bf16 (and packed for the CPU's bf16 matrix
/// instructions) at construction.
pub struct Bf16Linear {
    imp: Imp,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

enum Imp {
    /// Packed for the CPU's bf16 matrix kernel.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    Matrix(fast::Packed),
    /// The weight rounded to bf16, kept as f32 `[out, in]`.
    Emulated(Tensor),
}

impl std::fmt::Debug for Bf16Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kernel = match &self.imp {
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Imp::Matrix(p) => p.kernel_name(),
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
    /// Rounds (and, for a matrix kernel, packs) `weight` `[out, in]` (PyTorch's layout);
    /// keeps `bias` `[out]` in f32.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::with_kernel(weight, bias, true)
    }

    /// [`Self::new`], with the CPU's matrix kernel only where `use_matrix` (tests compare the
    /// kernel with the emulation).
    pub fn with_kernel(weight: &Tensor, bias: Option<&Tensor>, use_matrix: bool) -> Result<Self> {
        Self::build(weight, bias, fast::kernel().filter(|_| use_matrix))
    }

    /// [`Self::new`] on the kernel named `kernel` (one of [`cpu_bf16_kernels`], or `emulated`),
    /// for timing the kernels of one CPU against each other.
    pub fn on_kernel(weight: &Tensor, bias: Option<&Tensor>, kernel: &str) -> Result<Self> {
        if kernel == "emulated" {
            return Self::build(weight, bias, None);
        }
        let Some(&k) = fast::kernels().iter().find(|k| k.name() == kernel) else {
            candle_core::bail!(
                "no bf16 kernel {kernel:?} on this CPU (it runs: {:?})",
                cpu_bf16_kernels()
            );
        };
        Self::build(weight, bias, Some(k))
    }

    fn build(weight: &Tensor, bias: Option<&Tensor>, kernel: Option<fast::Kernel>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if !weight.device().is_cpu() {
            candle_core::bail!("the bf16 linear layer runs on the CPU only");
        }
        let weight = weight.to_dtype(DType::F32)?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        let imp = match kernel {
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Some(k) => Imp::Matrix(fast::pack(k, &weight, bias.as_ref())?),
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
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

    /// Whether this layer runs on the CPU's bf16 matrix kernel (else it is emulated).
    pub fn is_matrix(&self) -> bool {
        !matches!(self.imp, Imp::Emulated(_))
    }

    /// `x` `[rows, in]` (f32 or anything that widens to it) -> `[rows, out]` f32, bias added.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }

    /// [`Self::forward`], with the exact GELU applied where `gelu` (on a matrix kernel inside
    /// each row block, while its results are in cache).
    pub fn forward_act(&self, x: &Tensor, gelu: bool) -> Result<Tensor> {
        self.forward_with(x, gelu, None)
    }

    /// `act(x W^T + b)`, or `x W^T + b + residual` (`[rows, out]`); on a matrix kernel the GELU
    /// or the residual add happens inside each row block.
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
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Imp::Matrix(p) => fast::forward(p, x, gelu, residual),
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

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod fast {
    use std::sync::OnceLock;

    use candle_core::{Result, Tensor};

    pub use crate::bf16_gemm::Packed;
    use crate::bf16_gemm::{check_operands, rounded_reference, Micro, KERNELS};
    use crate::cpu::with_f32_slice;

    /// Proof that this CPU runs the kernel and that it computed the right thing once.
    #[derive(Clone, Copy)]
    pub struct Kernel(Micro);

    impl Kernel {
        pub fn name(self) -> &'static str {
            self.0.name()
        }

        pub fn is_default(self) -> bool {
            self.0.is_default()
        }
    }

    /// The bf16 kernels this CPU runs (for AMX, where the OS lets this process use the tiles)
    /// that pass their check, the preferred first.
    pub fn kernels() -> &'static [Kernel] {
        static KERNELS_CELL: OnceLock<Vec<Kernel>> = OnceLock::new();
        KERNELS_CELL.get_or_init(|| {
            KERNELS
                .iter()
                .filter(|m| m.usable())
                .filter_map(|&m| match self_check(m) {
                    Ok(()) => Some(Kernel(m)),
                    Err(e) => {
                        tracing::warn!("{} failed its check on this CPU ({e}); not used", m.name());
                        None
                    }
                })
                .collect()
        })
    }

    /// The preferred one of [`kernels`].
    pub fn kernel() -> Option<Kernel> {
        kernels().first().copied()
    }

    /// One small product on the kernel, against the same rounding in f64: a kernel that runs but
    /// computes something else (a CPU or OS this path was not measured on) is not used.
    fn self_check(micro: Micro) -> Result<()> {
        let (m, k, n) = (37, 70, 33);
        let (x, w, b) = check_operands(m, k, n);
        let packed = Packed::new(&w, n, k, Some(&b), micro);
        // SAFETY: the caller checked `micro.usable()`.
        let y = unsafe { packed.forward(&x, m, false, None) };
        let want = rounded_reference(&x, &w, &b, m, k);
        let worst = y.iter().zip(&want).fold(0f64, |worst, (&got, &want)| {
            worst.max((f64::from(got) - want).abs())
        });
        if worst > 1e-4 {
            candle_core::bail!("largest difference {worst:e} from the bf16 product");
        }
        Ok(())
    }

    /// The weight rounded and packed once.
    pub fn pack(k: Kernel, weight: &Tensor, bias: Option<&Tensor>) -> Result<Packed> {
        let (n, in_dim) = weight.dims2()?;
        let bias = bias.map(crate::cpu_ops::to_vec).transpose()?;
        with_f32_slice(&weight.contiguous()?, |w| {
            Ok(Packed::new(w, n, in_dim, bias.as_deref(), k.0))
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
            // its kernel is usable.
            Some(r) => with_f32_slice(r, |r| Ok(unsafe { p.forward(x, m, gelu, Some(r)) })),
            None => Ok(unsafe { p.forward(x, m, gelu, None) }),
        })?;
        Tensor::from_vec(y, (m, p.out_dim()), x.device())
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod fast {
    #[derive(Clone, Copy)]
    pub enum Kernel {}
    pub fn kernels() -> &'static [Kernel] {
        &[]
    }
    impl Kernel {
        pub fn name(self) -> &'static str {
            match self {}
        }
        pub fn is_default(self) -> bool {
            match self {}
        }
    }
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
        for use_matrix in [false, true] {
            let l = Bf16Linear::with_kernel(&w, Some(&b), use_matrix).unwrap();
            let plain = l.forward(&x).unwrap();
            let fused = l.forward_act(&x, true).unwrap();
            let after = crate::gelu_erf(&plain).unwrap();
            assert_eq!(bits(&fused), bits(&after), "GELU, {l:?}");
            let fused = l.forward_with(&x, false, Some(&r)).unwrap();
            let after = (&plain + &r).unwrap();
            assert_eq!(bits(&fused), bits(&after), "residual, {l:?}");
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
        for matrix in [false, true] {
            let layer = Bf16Linear::with_kernel(&w, Some(&b), matrix).unwrap();
            if matrix && !layer.is_matrix() {
                // No AMX or BFMMLA here: the device run (scripts/gpu-bench.sh cpu) and
                // scripts/aarch64-qemu.sh cover them.
                continue;
            }
            let got: Vec<f32> = layer
                .forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let err = max_rel(&got, &want);
            assert!(err < 1e-5, "{layer:?}: max relative error {err:e}");
        }
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_any_batch() {
        let (x, w) = (randn((150, 96), 1.0, 4), randn((80, 96), 0.1, 5));
        for matrix in [false, true] {
            let layer = Bf16Linear::with_kernel(&w, None, matrix).unwrap();
            if matrix && !layer.is_matrix() {
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
                assert_eq!(diff, 0.0, "{layer:?}: rows {start}..+{len} differ");
            }
        }
    }

    #[test]
    fn reports_the_kernel() {
        let isa = cpu_bf16_isa();
        assert_eq!(isa.matrix, isa.kernel != "emulated", "{isa:?}");
        // Only the x86-64 kernels are measured faster than f32, so only they are a default.
        let x86 = isa.kernel.starts_with("amx") || isa.kernel.starts_with("avx512");
        assert_eq!(isa.default, x86, "{isa:?}");
        #[cfg(target_arch = "x86_64")]
        if !isa.matrix {
            assert!(
                !std::arch::is_x86_feature_detected!("avx512bf16"),
                "{isa:?}"
            );
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(
            isa.matrix,
            std::arch::is_aarch64_feature_detected!("bf16"),
            "{isa:?}"
        );
        let all = cpu_bf16_kernels();
        assert_eq!(
            all.first().copied(),
            isa.matrix.then_some(isa.kernel),
            "{all:?}"
        );
        let (w, b) = (
            randn((20, 40), 0.2, 8),
            randn((1, 20), 0.1, 9).flatten_all().unwrap(),
        );
        for name in &all {
            let layer = Bf16Linear::on_kernel(&w, Some(&b), name).unwrap();
            assert!(format!("{layer:?}").contains(name), "{layer:?}");
        }
        let emulated = Bf16Linear::on_kernel(&w, Some(&b), "emulated").unwrap();
        assert!(!emulated.is_matrix(), "{emulated:?}");
        let err = Bf16Linear::on_kernel(&w, Some(&b), "no such kernel").unwrap_err();
        assert!(err.to_string().contains("no bf16 kernel"), "{err}");
    }
}
