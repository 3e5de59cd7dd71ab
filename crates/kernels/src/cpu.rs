//! The CPU int8 linear layer (`--dtype int8`): `y = x W^T + b` with the weight quantized to int8
//! per output channel and packed once, when the layer is built, and the activations quantized to
//! u8 per row (dynamic, asymmetric) on each call; the products accumulate exactly in i32, the
//! row's zero point is taken out with the weight's column sums (kept from the packing: rten-gemm
//! 0.27's own per-row zero points gave wrong sums past the first rows on AVX2), and the result is
//! scaled back to f32 with the bias added. The GEMM is `rten-gemm`'s u8 x i8 -> i32 kernel, which
//! picks the CPU's best matrix instructions at run time from one binary (AVX-512 VNNI, else AVX2
//! on x86-64; i8mm, else dot product, else plain NEON on aarch64); docs/ARCHITECTURE.md has the
//! measurements that chose it.
//!
//! A row's result depends only on that row: its quantization reads only its own values, integer
//! accumulation is exact whatever the blocking or thread split, and the scale-back is one
//! product per element. So the layer is batch invariant bit for bit, with no option needed.
//!
//! AVX2 without VNNI multiplies u8 x i8 pairs with `vpmaddubsw`, whose i16 sum of two products
//! saturates for full-range inputs; there the weights take 7 bits (+-63), which keeps every pair
//! sum within i16 (2 x 255 x 63 < 32767). Kernels that cannot saturate take +-127.

use std::sync::OnceLock;

use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;
use rten_gemm::PackedBMatrix;
use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmResult, GemmUninitOptions};
use rten_tensor::{Matrix, NdTensorView};

type Int8Gemm = GemmExecutor<u8, i8, i32>;

/// The int8 GEMM of this CPU, chosen once (the CPU's instruction set is a fact of the machine:
/// this cache switches nothing). Leaked so that a `'static` reference can be shared: the
/// executor is `Sync` but not `Send`.
fn int8_gemm() -> &'static Int8Gemm {
    static GEMM: OnceLock<&'static Int8Gemm> = OnceLock::new();
    GEMM.get_or_init(|| Box::leak(Box::new(Int8Gemm::default())))
}

/// What the CPU int8 path runs on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInt8Isa {
    /// The kernel `rten-gemm` picked, e.g. `x86_64-u8i8i32-avx2`, `x86_64-u8i8i32-avx512`
    /// (with VNNI where the CPU has it), `arm64-i8mm`, or `generic-u8i8i32` (no SIMD kernel).
    pub kernel: &'static str,
    /// Whether it has SIMD int8 instructions; without them `--dtype int8` keeps f32.
    pub simd: bool,
    /// Whether the weights take 7 bits (+-63) to stay clear of `vpmaddubsw` saturation.
    pub seven_bit_weights: bool,
}

/// The CPU int8 matrix path of this machine (for `doctor` and the choice at load).
pub fn cpu_int8_isa() -> CpuInt8Isa {
    let gemm = int8_gemm();
    let kernel = gemm.kernel_name();
    CpuInt8Isa {
        kernel,
        simd: !kernel.starts_with("generic"),
        seven_bit_weights: gemm.may_saturate(),
    }
}

/// The largest weight magnitude after quantization.
fn weight_qmax() -> f32 {
    if int8_gemm().may_saturate() {
        63.0
    } else {
        127.0
    }
}

/// An int8 linear layer: weight quantized per output channel and packed for this CPU's kernel
/// at construction, never again.
pub struct Int8Linear {
    packed: PackedBMatrix<i8>,
    /// Per output channel: the f32 value of one weight step.
    scales: Vec<f32>,
    /// Per output channel: the sum of its int8 weights (to take out an input row's zero point).
    sums: Vec<i32>,
    bias: Option<Vec<f32>>,
    in_dim: usize,
    out_dim: usize,
}

impl std::fmt::Debug for Int8Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Linear")
            .field("in_dim", &self.in_dim)
            .field("out_dim", &self.out_dim)
            .field("bias", &self.bias.is_some())
            .field("kernel", &int8_gemm().kernel_name())
            .finish()
    }
}

/// A tensor's values as f32, row-major; borrowed when it already is contiguous f32 on the CPU.
pub(crate) fn with_f32_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    if !t.device().is_cpu() {
        bail!(
            "this CPU kernel takes tensors on the CPU (got one on {:?})",
            t.device().location()
        );
    }
    let t = t.to_dtype(DType::F32)?;
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("this CPU kernel takes tensors on the CPU");
    };
    let data = cpu.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => f(&data[start..end]),
        None => bail!("CPU kernel: a contiguous tensor has no contiguous offsets"),
    }
}

impl Int8Linear {
    /// Quantizes and packs `weight` `[out, in]` (PyTorch's layout) and keeps `bias` `[out]`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let qmax = weight_qmax();
        let (q, scales) = with_f32_slice(weight, |w| {
            let mut q = vec![0i8; out_dim * in_dim];
            let mut scales = vec![0f32; out_dim];
            q.par_chunks_mut(in_dim.max(1))
                .zip(w.par_chunks(in_dim.max(1)))
                .zip(scales.par_iter_mut())
                .for_each(|((q, w), scale)| *scale = quantize_weight_row(w, q, qmax));
            Ok((q, scales))
        })?;
        let sums = q
            .chunks(in_dim.max(1))
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect();
        let q_mat: Matrix<i8> = NdTensorView::from_data([out_dim, in_dim], &q[..]);
        // B of the GEMM is W^T, `[in, out]`: the transposed view, packed into the kernel's panels.
        let packed = int8_gemm().prepack_b(q_mat.transposed());
        let bias = match bias {
            Some(b) => {
                if b.dims1()? != out_dim {
                    bail!("int8 linear: bias of {} for {out_dim} outputs", b.dims1()?);
                }
                Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            }
            None => None,
        };
        Ok(Self {
            packed,
            scales,
            sums,
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

    /// `x` `[rows, in]` (any float dtype, on the CPU) -> `[rows, out]` f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        if k != self.in_dim {
            bail!(
                "int8 linear: input of width {k} for a layer of {}",
                self.in_dim
            );
        }
        let n = self.out_dim;
        let out = with_f32_slice(x, |x| {
            let quant = QuantizedRows::new(x, rows, k);
            let acc = self
                .gemm_i32(&quant, rows)
                .map_err(|e| candle_core::Error::Msg(format!("int8 GEMM: {e}")))?;
            let mut out = vec![0f32; rows * n];
            let no_bias = vec![0f32; n];
            let bias = self.bias.as_deref().unwrap_or(&no_bias);
            out.par_chunks_mut(n.max(1))
                .zip(acc.par_chunks(n.max(1)))
                .zip(quant.scales.par_iter().zip(quant.zero_points.par_iter()))
                .for_each(|((out, acc), (&xs, &zp))| {
                    let zp = i32::from(zp);
                    let per_col = self.scales.iter().zip(&self.sums).zip(bias);
                    for ((o, &a), ((&ws, &sum), &b)) in out.iter_mut().zip(acc).zip(per_col) {
                        // sum_k (q - zp) w = sum_k q w - zp sum_k w, exact in i32
                        *o = (a - zp * sum) as f32 * (xs * ws) + b;
                    }
                });
            Ok(out)
        })?;
        Tensor::from_vec(out, (rows, n), &Device::Cpu)
    }

    /// The exact i32 products of the quantized rows (zero points left in) and weights.
    fn gemm_i32(&self, quant: &QuantizedRows, rows: usize) -> GemmResult<Vec<i32>> {
        let n = self.out_dim;
        let mut acc: Vec<i32> = Vec::with_capacity(rows * n);
        let a: Matrix<u8> = NdTensorView::from_data([rows, self.in_dim], &quant.values[..]);
        let written = int8_gemm()
            .gemm_uninit(
                &mut acc.spare_capacity_mut()[..rows * n],
                GemmInputA::Unpacked(a),
                GemmInputB::Packed(&self.packed),
                GemmUninitOptions::default(),
            )?
            .len();
        debug_assert_eq!(written, rows * n);
        // Safety: `gemm_uninit` returned Ok, having initialized all `rows * n` outputs.
        unsafe { acc.set_len(rows * n) };
        Ok(acc)
    }
}

/// Symmetric int8 of one output channel; returns its scale.
fn quantize_weight_row(w: &[f32], q: &mut [i8], qmax: f32) -> f32 {
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 && amax.is_finite() {
        amax / qmax
    } else {
        1.0
    };
    for (q, &v) in q.iter_mut().zip(w) {
        *q = (v / scale).round().clamp(-qmax, qmax) as i8;
    }
    scale
}

/// Activations as u8 per row: `x ~ scale * (q - zero_point)`, the range of each row (with 0)
/// mapped onto 0..=255.
struct QuantizedRows {
    values: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<u8>,
}

impl QuantizedRows {
    fn new(x: &[f32], rows: usize, k: usize) -> Self {
        let mut values = vec![0u8; rows * k];
        let mut scales = vec![0f32; rows];
        let mut zero_points = vec![0u8; rows];
        values
            .par_chunks_mut(k.max(1))
            .zip(x.par_chunks(k.max(1)))
            .zip(scales.par_iter_mut().zip(zero_points.par_iter_mut()))
            .for_each(|((q, x), (scale, zp))| (*scale, *zp) = quantize_row(x, q));
        Self {
            values,
            scales,
            zero_points,
        }
    }
}

fn quantize_row(x: &[f32], q: &mut [u8]) -> (f32, u8) {
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zp = (-lo / scale).round().clamp(0.0, 255.0);
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v / scale + zp).round().clamp(0.0, 255.0) as u8;
    }
    (scale, zp as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: (usize, usize), std: f64, seed: u64) -> Tensor {
        // A small LCG + Box-Muller: deterministic without a device RNG.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                let (u1, u2) = (next(), next());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn reference(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
        x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
    }

    #[test]
    fn close_to_f32_on_random_matrices() {
        for (rows, k, n) in [(37, 320, 96), (5, 1280, 200), (1, 64, 3)] {
            let x = randn((rows, k), 1.0, 1);
            let w = randn((n, k), 1.0 / (k as f64).sqrt(), 2);
            let b = randn((1, n), 0.1, 3).flatten_all().unwrap();
            let lin = Int8Linear::new(&w, Some(&b)).unwrap();
            let y = lin.forward(&x).unwrap();
            assert_eq!(y.dims(), &[rows, n]);
            let e = rel_err(&y, &reference(&x, &w, &b));
            // 7-bit weights (AVX2): ~1e-2; 8-bit: ~5e-3.
            assert!(e < 2e-2, "rows {rows} k {k} n {n}: relative error {e}");
        }
    }

    #[test]
    fn exact_where_values_are_on_the_grid() {
        // Integer activations in 0..=255 and weights in -63..=63 with one +-63 per channel
        // quantize with scale 1 (activations) and 1 (weights): the result is exact.
        let (rows, k, n) = (9, 70, 17);
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 37) % 256) as f32).collect();
        let mut x = x;
        for r in 0..rows {
            x[r * k] = 255.0; // the row's max
            x[r * k + 1] = 0.0; // and min
        }
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                if i % k == 0 {
                    63.0
                } else {
                    ((i * 11) % 127) as f32 - 63.0
                }
            })
            .collect();
        let x = Tensor::from_vec(x, (rows, k), &Device::Cpu).unwrap();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let lin = Int8Linear::new(&w, None).unwrap();
        let y = lin.forward(&x).unwrap();
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let qmax = weight_qmax();
        // The weight scale is 63/qmax per channel; the product is exact when that is 1.
        if qmax == 63.0 {
            assert_eq!(y.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
        } else {
            assert!(rel_err(&y, &want) < 1e-2);
        }
    }

    #[test]
    fn packed_once_and_deterministic() {
        let x = randn((23, 256), 1.0, 4);
        let w = randn((48, 256), 0.05, 5);
        let lin = Int8Linear::new(&w, None).unwrap();
        let a = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let b = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_row_is_the_same_alone_and_in_any_batch() {
        let (k, n) = (384, 160);
        let w = randn((n, k), 0.05, 6);
        let b = randn((1, n), 0.1, 7).flatten_all().unwrap();
        let lin = Int8Linear::new(&w, Some(&b)).unwrap();
        let batch = randn((67, k), 1.0, 8);
        let all = lin.forward(&batch).unwrap().to_vec2::<f32>().unwrap();
        for r in [0, 1, 5, 33, 66] {
            let alone = lin
                .forward(&batch.narrow(0, r, 1).unwrap())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(alone[0], all[r], "row {r}");
        }
        // Inside another batch (other neighbours, other position).
        let other = Tensor::cat(
            &[&randn((12, k), 3.0, 9), &batch.narrow(0, 5, 1).unwrap()],
            0,
        )
        .unwrap();
        let y = lin.forward(&other).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[12], all[5]);
    }

    #[test]
    fn strided_and_f16_inputs_and_errors() {
        let w = randn((8, 16), 0.2, 10);
        let lin = Int8Linear::new(&w, None).unwrap();
        let x = randn((16, 4), 1.0, 11).t().unwrap(); // [4, 16], not contiguous
        let want = lin.forward(&x.contiguous().unwrap()).unwrap();
        let got = lin.forward(&x).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            lin.forward(&randn((0, 16), 1.0, 12)).unwrap().dims(),
            &[0, 8]
        );
        assert!(lin.forward(&randn((2, 15), 1.0, 13)).is_err());
        assert!(Int8Linear::new(
            &w,
            Some(&Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap())
        )
        .is_err());
    }

    #[test]
    fn reports_the_isa() {
        let isa = cpu_int8_isa();
        assert!(!isa.kernel.is_empty());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(isa.simd, "{isa:?}");
        }
        // Every aarch64 CPU has NEON (scripts/aarch64-qemu.sh runs this under qemu).
        #[cfg(target_arch = "aarch64")]
        assert!(isa.simd, "{isa:?}");
    }
}
