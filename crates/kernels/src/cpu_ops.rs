//! The CPU's element-wise and attention kernels for f32 activations: exact-form GELU (also with a
//! bias, a residual, or DNABERT-S's gate) and attention over packed sequences.
//!
//! Why not candle's ops: on the CPU candle runs unary ops on one thread through libm's scalar
//! `erff`/`expf`, and its attention goes through several copies per head. With the matrix
//! products on AMX or int8 kernels, those passes were most of a layer (ESM2-650M at 8x168 on a
//! 2-core Xeon: GELU ~100 ms and attention ~70 ms per layer, against ~20 ms for the four linear
//! layers in bf16). Here every pass is split over rayon's threads, and the math is written so that
//! the compiler vectorizes it: `exp` from a Cody-Waite reduction and a degree-7 Taylor polynomial
//! (relative error < 1e-7), `erfc` from Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7),
//! both branch-free, compiled twice on x86-64 (AVX2+FMA where the CPU has it, SSE2 otherwise).
//!
//! Every result depends only on its own row (a token, or one sequence for attention) and the
//! code path the CPU takes, never on the batch or the thread split, so the CPU stays batch
//! invariant bit for bit.

use candle_core::{bail, DType, Result, Tensor};
use rayon::prelude::*;

use crate::cpu::with_f32_slice;

/// Elements per rayon task of the element-wise passes: big enough to amortize the task, small
/// enough to spread a layer's activations over every thread.
const CHUNK: usize = 16 * 1024;

/// `a * b + c`, fused where the code was compiled for FMA (the unfused form elsewhere: without
/// the instruction, `mul_add` is a slow library call).
trait MulAdd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

struct Fused;
// aarch64 always has FMA: there only the tests take the unfused form.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `e^x` for `x <= 0` (larger `x` are taken as 0); 0 below -87, where `e^x` leaves the normal
/// floats.
#[inline(always)]
fn exp_nonpositive<M: MulAdd>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 = LN2_HI + LN2_LO, LN2_HI with few mantissa bits so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = M::madd(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = M::madd(n, -LN2_LO, M::madd(n, -LN2_HI, x));
    // e^r on |r| <= ln2 / 2: Taylor to degree 7 (remainder < 5e-9).
    let mut p = 1.0 / 5040.0;
    p = M::madd(p, r, 1.0 / 720.0);
    p = M::madd(p, r, 1.0 / 120.0);
    p = M::madd(p, r, 1.0 / 24.0);
    p = M::madd(p, r, 1.0 / 6.0);
    p = M::madd(p, r, 0.5);
    p = M::madd(p, r, 1.0);
    p = M::madd(p, r, 1.0);
    // 2^n with n in [-126, 0]: a normal float built from its exponent bits.
    let y = p * f32::from_bits(((n_int + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        y
    }
}

/// `0.5 * x * (1 + erf(x / sqrt 2))`, with `1 + erf` taken as `2 - erfc(|z|)` for `x >= 0` and as
/// `erfc(|z|)` for `x < 0` (no cancellation in the negative tail).
#[inline(always)]
fn gelu_erf_one<M: MulAdd>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / M::madd(P, z, 1.0);
    let mut poly = A[4];
    poly = M::madd(poly, t, A[3]);
    poly = M::madd(poly, t, A[2]);
    poly = M::madd(poly, t, A[1]);
    poly = M::madd(poly, t, A[0]);
    let erfc = poly * t * exp_nonpositive::<M>(-(z * z));
    let half_x = 0.5 * x;
    if x >= 0.0 {
        half_x * (2.0 - erfc)
    } else {
        half_x * erfc
    }
}

/// The element-wise passes, each instantiated per instruction set by `multiversion!`.
mod passes {
    use super::*;

    #[inline(always)]
    pub fn gelu<M: MulAdd>(xs: &mut [f32]) {
        for v in xs {
            *v = gelu_erf_one::<M>(*v);
        }
    }

    /// `y = act(y + bias)` (or `y + bias + residual`) on whole rows of `cols`.
    #[inline(always)]
    pub fn bias_act<M: MulAdd>(y: &mut [f32], bias: &[f32], gelu: bool, res: Option<&[f32]>) {
        let cols = bias.len();
        match res {
            Some(res) => {
                for (row, r) in y.chunks_exact_mut(cols).zip(res.chunks_exact(cols)) {
                    for ((v, b), r) in row.iter_mut().zip(bias).zip(r) {
                        *v = *v + *b + *r;
                    }
                }
            }
            None => {
                for row in y.chunks_exact_mut(cols) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v += *b;
                    }
                    if gelu {
                        super::passes::gelu::<M>(row);
                    }
                }
            }
        }
    }

    /// `out = gelu(g[:, :inter]) * g[:, inter:]` on whole rows.
    #[inline(always)]
    pub fn gated_gelu<M: MulAdd>(g: &[f32], out: &mut [f32], inter: usize) {
        for (o, g) in out.chunks_exact_mut(inter).zip(g.chunks_exact(2 * inter)) {
            let (gate, up) = g.split_at(inter);
            for ((o, a), b) in o.iter_mut().zip(gate).zip(up) {
                *o = gelu_erf_one::<M>(*a) * *b;
            }
        }
    }

    /// Softmax of one row in place: `e^(x - max) / sum`.
    #[inline(always)]
    pub fn softmax<M: MulAdd>(row: &mut [f32]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        // Eight partial sums in a fixed order: vectorizable, and the same on every machine.
        let mut lanes = [0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for (v, l) in c.iter_mut().zip(lanes.iter_mut()) {
                *v = exp_nonpositive::<M>(*v - max);
                *l += *v;
            }
        }
        for (v, l) in chunks.into_remainder().iter_mut().zip(lanes.iter_mut()) {
            *v = exp_nonpositive::<M>(*v - max);
            *l += *v;
        }
        let sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for v in row {
            *v /= sum;
        }
    }
}

/// Defines `simd::$name`, which runs `passes::$name` compiled for the best instruction set this
/// CPU has.
macro_rules! multiversion {
    ($name:ident ( $($arg:ident : $ty:ty),* )) => {
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) {
                    passes::$name::<Fused>($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    unsafe { fast($($arg),*) }
                } else {
                    passes::$name::<Unfused>($($arg),*)
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                // NEON and FMA are part of every aarch64 CPU.
                passes::$name::<Fused>($($arg),*)
            }
            #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
            {
                passes::$name::<Unfused>($($arg),*)
            }
        }
    };
}

/// The passes as called: one instruction set chosen per call.
mod simd {
    use super::*;

    multiversion!(gelu(xs: &mut [f32]));
    multiversion!(bias_act(y: &mut [f32], bias: &[f32], gelu: bool, res: Option<&[f32]>));
    multiversion!(gated_gelu(g: &[f32], out: &mut [f32], inter: usize));
    multiversion!(softmax(row: &mut [f32]));
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Which instruction set the CPU element-wise kernels run on here (for `doctor`).
pub fn cpu_elementwise_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            "avx2+fma"
        } else {
            "sse2"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Exact (erf) GELU in place, on this thread (the bf16 kernels' epilogue).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn gelu_in_place(xs: &mut [f32]) {
    simd::gelu(xs)
}

/// Whether `x` is an f32 tensor on the CPU (what these kernels take).
pub(crate) fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// A copy of `x` (on the CPU, widened to f32) as a contiguous vector.
pub(crate) fn to_vec(x: &Tensor) -> Result<Vec<f32>> {
    with_f32_slice(x, |v| Ok(v.to_vec()))
}

/// Exact (erf) GELU of an f32 CPU tensor, over every thread.
pub(crate) fn cpu_gelu_erf(x: &Tensor) -> Result<Tensor> {
    let mut v = to_vec(x)?;
    v.par_chunks_mut(CHUNK).for_each(simd::gelu);
    Tensor::from_vec(v, x.shape(), x.device())
}

/// `act(x + bias)` or `x + bias + residual` of f32 CPU tensors, one pass over every thread.
pub(crate) fn cpu_bias_act(
    x: &Tensor,
    bias: &Tensor,
    gelu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let cols = bias.elem_count();
    if cols == 0 || x.dims().last() != Some(&cols) {
        bail!(
            "bias_act: bias of {cols} for a tensor of shape {:?}",
            x.dims()
        );
    }
    let mut y = to_vec(x)?;
    let bias = to_vec(bias)?;
    let res = residual.map(to_vec).transpose()?;
    if res.as_ref().is_some_and(|r| r.len() != y.len()) {
        bail!("bias_act: residual and input differ in shape");
    }
    let rows_per_task = (CHUNK / cols).max(1);
    let run = |(i, y): (usize, &mut [f32])| {
        let r = res
            .as_deref()
            .map(|r| &r[i * rows_per_task * cols..][..y.len()]);
        simd::bias_act(y, &bias, gelu, r)
    };
    y.par_chunks_mut(rows_per_task * cols)
        .enumerate()
        .for_each(run);
    Tensor::from_vec(y, x.shape(), x.device())
}

/// `gelu(g[..., :inter]) * g[..., inter:]` of an f32 CPU tensor.
pub(crate) fn cpu_gated_gelu(g: &Tensor, inter: usize) -> Result<Tensor> {
    let mut dims = g.dims().to_vec();
    if inter == 0 || dims.last() != Some(&(2 * inter)) {
        bail!("gated_gelu: {inter} gate columns for a tensor of shape {dims:?}");
    }
    let rows = g.elem_count() / (2 * inter);
    let mut out = vec![0f32; rows * inter];
    with_f32_slice(g, |g| {
        let rows_per_task = (CHUNK / inter).max(1);
        out.par_chunks_mut(rows_per_task * inter)
            .zip(g.par_chunks(rows_per_task * 2 * inter))
            .for_each(|(o, g)| simd::gated_gelu(g, o, inter));
        Ok(())
    })?;
    if let Some(last) = dims.last_mut() {
        *last = inter;
    }
    Tensor::from_vec(out, dims, &candle_core::Device::Cpu)
}

/// Where attention gets its positions from.
#[derive(Debug, Clone, Copy)]
pub enum PositionBias<'a> {
    /// Rotary embedding of q and k (rotate-half convention): `cos` and `sin` `[positions,
    /// head_dim / 2]`, row `p` for the sequence's `p`-th token; they must cover the longest
    /// sequence.
    Rotary { cos: &'a [f32], sin: &'a [f32] },
    /// ALiBi: `-slope_h * |i - j|` added to the scores, one slope per head.
    Alibi { slopes: &'a [f32] },
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes its own (sequence, head) block of the output, and the buffer outlives
// the parallel loop that holds the pointer.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Attention over sequences packed end to end: `qkv` `[.., total, 3 * heads * head_dim]` (f32,
/// CPU; q, k, v side by side as a fused projection gives them), `spans` each sequence's `(first
/// token, length)`; returns `[1, total, heads * head_dim]`. Each (sequence, head) is one task:
/// `softmax(scale * q k^T + bias) v` over that sequence's own tokens only.
pub fn cpu_packed_attention(
    qkv: &Tensor,
    spans: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
    scale: f32,
    position: PositionBias,
) -> Result<Tensor> {
    let hidden = heads * head_dim;
    let total = qkv.elem_count() / (3 * hidden).max(1);
    if qkv.dims().last() != Some(&(3 * hidden)) || spans.iter().any(|&(s, l)| s + l > total) {
        bail!(
            "packed attention: projection of shape {:?} for {heads} heads of {head_dim} and \
             sequences {spans:?}",
            qkv.dims()
        );
    }
    let longest = spans.iter().map(|s| s.1).max().unwrap_or(0);
    match position {
        PositionBias::Rotary { cos, sin } => {
            if !head_dim.is_multiple_of(2)
                || cos.len() < longest * head_dim / 2
                || sin.len() != cos.len()
            {
                bail!("packed attention: rotary tables do not cover {longest} positions");
            }
        }
        PositionBias::Alibi { slopes } => {
            if slopes.len() != heads {
                bail!(
                    "packed attention: {} ALiBi slopes for {heads} heads",
                    slopes.len()
                );
            }
        }
    }
    let mut out = vec![0f32; total * hidden];
    let shared = SharedOut(out.as_mut_ptr());
    with_f32_slice(qkv, |qkv| {
        let tasks: Vec<(usize, usize, usize)> = spans
            .iter()
            .flat_map(|&(start, len)| (0..heads).map(move |h| (start, len, h)))
            .filter(|&(_, len, _)| len > 0)
            .collect();
        tasks.par_iter().for_each(|&(start, len, h)| {
            let task = HeadTask {
                qkv,
                start,
                len,
                head: h,
                hidden,
                head_dim,
                scale,
            };
            // SAFETY: the task writes rows start..start+len, columns of head h, only.
            unsafe { task.run(position, shared) }
        });
        Ok(())
    })?;
    Tensor::from_vec(out, (1, total, hidden), &candle_core::Device::Cpu)
}

/// One (sequence, head) of [`cpu_packed_attention`].
struct HeadTask<'a> {
    qkv: &'a [f32],
    start: usize,
    len: usize,
    head: usize,
    hidden: usize,
    head_dim: usize,
    scale: f32,
}

impl HeadTask<'_> {
    /// Row `i` of the sequence's q (`part` 0), k (1) or v (2) of this head.
    fn row(&self, part: usize, i: usize) -> &[f32] {
        let at =
            (self.start + i) * 3 * self.hidden + part * self.hidden + self.head * self.head_dim;
        &self.qkv[at..at + self.head_dim]
    }

    /// q (scaled) and k of this head, `[len, head_dim]` each, rotated where `position` says.
    fn q_k(&self, position: PositionBias) -> (Vec<f32>, Vec<f32>) {
        let (l, d) = (self.len, self.head_dim);
        let mut q = vec![0f32; l * d];
        let mut k = vec![0f32; l * d];
        for i in 0..l {
            let (qi, ki) = (&mut q[i * d..(i + 1) * d], &mut k[i * d..(i + 1) * d]);
            match position {
                PositionBias::Rotary { cos, sin } => {
                    let half = d / 2;
                    let (c, s) = (
                        &cos[i * half..(i + 1) * half],
                        &sin[i * half..(i + 1) * half],
                    );
                    rotate(self.row(0, i), c, s, qi);
                    rotate(self.row(1, i), c, s, ki);
                }
                PositionBias::Alibi { .. } => {
                    qi.copy_from_slice(self.row(0, i));
                    ki.copy_from_slice(self.row(1, i));
                }
            }
            for v in qi.iter_mut() {
                *v *= self.scale;
            }
        }
        (q, k)
    }

    /// # Safety
    /// `out` points to a `[total, hidden]` buffer that no other task writes this block of.
    unsafe fn run(&self, position: PositionBias, out: SharedOut) {
        let (l, d) = (self.len, self.head_dim);
        let (q, k) = self.q_k(position);
        let mut scores = vec![0f32; l * l];
        // SAFETY: `q` is `[l, d]`, `k` read as `k^T` `[d, l]` (element (c, j) at `j * d + c`),
        // `scores` `[l, l]`, all in bounds.
        unsafe {
            product(
                l,
                l,
                d,
                scores.as_mut_ptr(),
                l,
                q.as_ptr(),
                d,
                k.as_ptr(),
                (d, 1),
            )
        };
        if let PositionBias::Alibi { slopes } = position {
            let slope = slopes[self.head];
            for (i, row) in scores.chunks_exact_mut(l).enumerate() {
                for (j, s) in row.iter_mut().enumerate() {
                    *s += -slope * i.abs_diff(j) as f32;
                }
            }
        }
        for row in scores.chunks_exact_mut(l) {
            simd::softmax(row);
        }
        let v0 = (self.start * 3 * self.hidden + 2 * self.hidden + self.head * d) as isize;
        let o0 = (self.start * self.hidden + self.head * d) as isize;
        // SAFETY: v is `[l, d]` with row stride 3 * hidden inside `qkv`; the output block is
        // `[l, d]` with row stride `hidden`, owned by this task (the caller's contract).
        unsafe {
            product(
                l,
                d,
                l,
                out.0.offset(o0),
                self.hidden,
                scores.as_ptr(),
                l,
                self.qkv.as_ptr().offset(v0),
                (1, 3 * self.hidden),
            )
        };
    }
}

/// `dst = lhs · rhs` on this thread (the `gemm` crate): `dst` `[m, n]` and `lhs` `[m, k]` with
/// unit column stride and the given row strides, `rhs` `[k, n]` with strides `(column, row)`.
///
/// # Safety
/// Every element the strides address must be in bounds, and `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    (rhs_cs, rhs_rs): (usize, usize),
) {
    // SAFETY: the caller's contract; read_dst false with beta 1: dst = lhs · rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Rotate-half rotary of one head's row: `x1 c - x2 s` and `x2 c + x1 s`.
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
        o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn erf64(x: f64) -> f64 {
        // erf by its Maclaurin series (|x| <= 3) or its asymptotic continued fraction, in f64:
        // far more accurate than the f32 results checked against it.
        if x.abs() <= 3.0 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let z = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            let erfc = (-z * z).exp() / (z + f) / std::f64::consts::PI.sqrt();
            (1.0 - erfc).copysign(x)
        }
    }

    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
    }

    /// Both instruction-set variants of the GELU, against the f64 formula on a fine grid.
    #[test]
    fn gelu_is_within_a_few_ulp_of_the_exact_formula() {
        let xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-4).collect();
        for (name, run) in [
            ("unfused", passes::gelu::<Unfused> as fn(&mut [f32])),
            ("fused", passes::gelu::<Fused>),
            ("dispatched", simd::gelu),
        ] {
            let mut y = xs.clone();
            run(&mut y);
            let mut worst = 0f64;
            for (&x, &y) in xs.iter().zip(&y) {
                let want = gelu64(f64::from(x));
                // Absolute error relative to the input's scale: the negative tail's tiny values
                // are only ever added to numbers of order |x|.
                let err = (f64::from(y) - want).abs() / f64::from(x.abs()).max(1.0);
                worst = worst.max(err);
            }
            // The approximation alone is within 7e-8 (in f64); f32 rounding adds ~2 ulp.
            assert!(worst < 2.5e-7, "{name}: worst scaled error {worst:e}");
        }
        // The edges as candle's op gives them (-inf: 0 * -inf, NaN, there too).
        let edge = [
            0.0f32,
            -0.0,
            40.0,
            -40.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut got = edge;
        simd::gelu(&mut got);
        let want = Tensor::new(&edge, &Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap();
        let want = want.to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(g == w || (g.is_nan() && w.is_nan()), "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp_over_the_softmax_range() {
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            for got in [exp_nonpositive::<Fused>(x), exp_nonpositive::<Unfused>(x)] {
                let want = f64::from(x).exp();
                let rel = (f64::from(got) - want).abs() / want;
                assert!(rel < 2.5e-7, "exp({x}) = {got}, want {want}: {rel:e}");
            }
        }
        assert_eq!(exp_nonpositive::<Fused>(0.0), 1.0);
        assert_eq!(exp_nonpositive::<Fused>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive::<Unfused>(-90.0), 0.0);
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
        assert!(
            diff <= tol * scale,
            "max difference {diff:e} (scale {scale})"
        );
        Ok(())
    }

    #[test]
    fn bias_act_and_gated_gelu_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (37, 96), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 96, &dev)?;
        let r = Tensor::randn(0f32, 1.0, (37, 96), &dev)?;
        let want = x.broadcast_add(&b)?.gelu_erf()?;
        close(&cpu_bias_act(&x, &b, true, None)?, &want, 2e-7)?;
        let want = (x.broadcast_add(&b)? + &r)?;
        let got = cpu_bias_act(&x, &b, false, Some(&r))?;
        assert_eq!(got.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        let want = (x.narrow(1, 0, 48)?.gelu_erf()? * x.narrow(1, 48, 48)?)?;
        close(&cpu_gated_gelu(&x, 48)?, &want, 2e-7)?;
        assert!(cpu_gated_gelu(&x, 40).is_err());
        assert!(cpu_bias_act(&x, &b.narrow(0, 0, 95)?, true, None).is_err());
        Ok(())
    }

    /// `[1, total, 3 * heads * d]` projection of random values for sequences of `lens`.
    fn projection(lens: &[usize], heads: usize, d: usize) -> Result<Tensor> {
        let total: usize = lens.iter().sum();
        Tensor::randn(0f32, 1.0, (1, total, 3 * heads * d), &Device::Cpu)
    }

    fn spans(lens: &[usize]) -> Vec<(usize, usize)> {
        let mut at = 0;
        lens.iter()
            .map(|&l| {
                at += l;
                (at - l, l)
            })
            .collect()
    }

    /// One sequence's q, k, v `[1, heads, len, d]` out of the projection.
    fn split(
        qkv: &Tensor,
        start: usize,
        len: usize,
        heads: usize,
        d: usize,
    ) -> Result<[Tensor; 3]> {
        let rows = qkv.narrow(1, start, len)?.reshape((1, len, 3, heads, d))?;
        let part = |i| {
            rows.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        Ok([part(0)?, part(1)?, part(2)?])
    }

    fn rope_ref(x: &Tensor, cos: &[f32], sin: &[f32], len: usize, d: usize) -> Result<Tensor> {
        let c = Tensor::from_slice(&cos[..len * d / 2], (len, d / 2), &Device::Cpu)?;
        let s = Tensor::from_slice(&sin[..len * d / 2], (len, d / 2), &Device::Cpu)?;
        candle_nn::rotary_emb::rope(x, &c, &s)
    }

    /// Packed attention with rotary and with ALiBi against the materialized reference, sequence by
    /// sequence; and a sequence's rows are the same bits alone as in any pack.
    #[test]
    fn packed_attention_matches_the_reference_per_sequence() -> Result<()> {
        let (heads, d) = (3, 16);
        let lens = [5, 17, 1, 9];
        let qkv = projection(&lens, heads, d)?;
        let sp = spans(&lens);
        let scale = 0.25f32;
        let max = 17;
        let cos: Vec<f32> = (0..max * d / 2).map(|i| (i as f32 * 0.37).cos()).collect();
        let sin: Vec<f32> = (0..max * d / 2).map(|i| (i as f32 * 0.37).sin()).collect();
        let slopes = [0.5f32, 0.25, 0.125];
        for pos in [
            PositionBias::Rotary {
                cos: &cos,
                sin: &sin,
            },
            PositionBias::Alibi { slopes: &slopes },
        ] {
            let got = cpu_packed_attention(&qkv, &sp, heads, d, scale, pos)?;
            assert_eq!(got.dims(), &[1, 32, heads * d]);
            for &(start, len) in &sp {
                let [q, k, v] = split(&qkv, start, len, heads, d)?;
                let (q, k, bias) = match pos {
                    PositionBias::Rotary { cos, sin } => (
                        rope_ref(&q, cos, sin, len, d)?,
                        rope_ref(&k, cos, sin, len, d)?,
                        None,
                    ),
                    PositionBias::Alibi { slopes } => (
                        q,
                        k,
                        Some(crate::alibi_bias(slopes, len, DType::F32, &Device::Cpu)?),
                    ),
                };
                let mask = crate::key_padding_mask(&[len as u32], len, DType::F32, &Device::Cpu)?;
                let want = crate::materialized_attention(
                    &q,
                    &k,
                    &v,
                    &mask,
                    bias.as_ref(),
                    None,
                    f64::from(scale),
                )?
                .transpose(1, 2)?
                .reshape((1, len, heads * d))?;
                close(&got.narrow(1, start, len)?, &want, 2e-6)?;
                // The same sequence alone: the same bits.
                let alone = cpu_packed_attention(
                    &qkv.narrow(1, start, len)?,
                    &[(0, len)],
                    heads,
                    d,
                    scale,
                    pos,
                )?;
                let a = alone.flatten_all()?.to_vec1::<f32>()?;
                let b = got.narrow(1, start, len)?.flatten_all()?.to_vec1::<f32>()?;
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        // Tables too short, slopes missing, a span past the end: errors, not panics.
        let short = PositionBias::Rotary {
            cos: &cos[..8],
            sin: &sin[..8],
        };
        assert!(cpu_packed_attention(&qkv, &sp, heads, d, scale, short).is_err());
        let few = PositionBias::Alibi {
            slopes: &slopes[..2],
        };
        assert!(cpu_packed_attention(&qkv, &sp, heads, d, scale, few).is_err());
        let past = PositionBias::Alibi { slopes: &slopes };
        assert!(cpu_packed_attention(&qkv, &[(30, 5)], heads, d, scale, past).is_err());
        Ok(())
    }
}
