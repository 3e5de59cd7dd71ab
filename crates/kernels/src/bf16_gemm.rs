//! The driver of the CPU bf16 matrix kernels: `y = x W^T + b`, with `x` and `W` rounded to bf16
//! (round to nearest even) and the products summed in f32 by the CPU's bf16 instructions:
//! Intel AMX's `TDPBF16PS` (`crate::amx`), AVX512-BF16's `VDPBF16PS` (`crate::avx512`) or
//! Arm's `BFMMLA` (`crate::neon`).
//!
//! Both kernels compute one square block of `y` from the whole depth; they differ in the block's
//! size, the depth of one instruction step and how a step's operands lie in memory, which a
//! [`Layout`] describes. The driver packs the weight once (when the layer is built) and the rows
//! on each call, splits the blocks into tasks over rayon's threads and applies the bias, and the
//! GELU or the residual add, to each block while it is in cache.
//!
//! Layouts: A (the rows) in panels of `panel` rows, B (the weight) in panels of `panel` columns;
//! a panel holds every k step of its rows or columns, one after another. Within a step, A is
//! row-major (`row * kstep + k`); B is either column-major by output column (`col * kstep + k`,
//! what `BFMMLA` reads) or pair-interleaved (`(k / 2) * 2 * panel + col * 2 + k % 2`, what
//! `TDPBF16PS` reads). Rows, columns and depth are padded with zeros to whole blocks and steps.
//!
//! A task walks the depth in passes of [`PASS_DEPTH`]: a block's f32 sums are stored after one
//! pass and loaded again for the next, which is exact, so the passes change no bit. Every output
//! is the sum of the same products in the same order (k steps in order, from zero) whatever the
//! batch and the split between threads: the layer is batch invariant bit for bit.

use rayon::prelude::*;

/// Depth (bf16 values) of one pass over a task's blocks. Passes bound a task's A and B slices for
/// very deep layers only: on the AMX Xeon, an ESM2-650M layer's four products (depths 1280 and
/// 5120) took a pooled median of 68 ms with the whole depth in one pass against 90 ms with
/// passes of 512, on a noisy host (docs/ARCHITECTURE.md, "CPU matrix kernels").
const PASS_DEPTH: usize = 8192;
/// Rows, and columns, of one task at most: its f32 partial sums (256 KiB) stay in L2.
const MAX_TASK: usize = 256;

thread_local! {
    /// A task's f32 partial sums, kept by each thread between tasks and calls (up to 256 KiB):
    /// no allocation per task. A task runs no rayon work, so a thread never holds it twice.
    static TASK_SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How one kernel's operands lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Rows and columns of one block of `y`.
    pub block: usize,
    /// Rows of an A panel, columns of a B panel (`block` is a whole number of panels).
    pub panel: usize,
    /// Depth of one step of the instruction.
    pub kstep: usize,
    /// Whether B is pair-interleaved within a step (else column-major).
    pub b_pairs: bool,
}

impl Layout {
    /// bf16 values of one step of one panel.
    fn step_len(self) -> usize {
        self.panel * self.kstep
    }

    /// Position of `W[col][k]` in panel `col / panel` (from the panel's start).
    fn b_index(self, col: usize, k: usize) -> usize {
        let (s, kk, c) = (k / self.kstep, k % self.kstep, col % self.panel);
        let within = if self.b_pairs {
            (kk / 2) * 2 * self.panel + c * 2 + kk % 2
        } else {
            c * self.kstep + kk
        };
        s * self.step_len() + within
    }

    /// Position of `x[row][k]` in panel `row / panel` (from the panel's start).
    fn a_index(self, row: usize, k: usize) -> usize {
        (k / self.kstep) * self.step_len() + (row % self.panel) * self.kstep + k % self.kstep
    }
}

/// What computes one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Micro {
    /// `TDPBF16PS` on 2 x 2 AMX tiles (`crate::amx`).
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// `VDPBF16PS` on 16 AVX-512 registers (`crate::avx512`).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `BFMMLA` on 4 x 4 NEON registers (`crate::neon`).
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// The instructions' arithmetic in plain code (f32 sums of the bf16 products, in another
    /// order), for testing the packing and the driver on any CPU.
    #[cfg(test)]
    Scalar(Layout),
}

/// The kernels of this architecture, the preferred first.
pub(crate) const KERNELS: &[Micro] = &[
    #[cfg(target_arch = "x86_64")]
    Micro::Amx,
    #[cfg(target_arch = "x86_64")]
    Micro::Avx512,
    #[cfg(target_arch = "aarch64")]
    Micro::Neon,
];

impl Micro {
    /// The kernel's name, for `doctor`, logs and a run's fingerprint.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Micro::Amx => "amx-bf16 32x32",
            #[cfg(target_arch = "x86_64")]
            Micro::Avx512 => "avx512-bf16 16x16",
            #[cfg(target_arch = "aarch64")]
            Micro::Neon => "neon-bfmmla 8x8",
            #[cfg(test)]
            Micro::Scalar(_) => "scalar model",
        }
    }

    /// Whether the kernel may be the CPU's default (`--dtype auto`): only one measured faster
    /// than f32 on its CPU kind. AMX is (3x on a Xeon) and AVX512-BF16 is (2.8x on an AMD Zen 5,
    /// docs/BENCHMARKS.md, "CPU encoders"); Arm's has not been timed on an Arm CPU yet, so there
    /// bf16 stays opt-in.
    pub fn is_default(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Micro::Amx => true,
            #[cfg(target_arch = "x86_64")]
            Micro::Avx512 => true,
            #[cfg(target_arch = "aarch64")]
            Micro::Neon => false,
            #[cfg(test)]
            Micro::Scalar(_) => false,
        }
    }

    /// Whether this CPU (and OS) runs the kernel.
    pub fn usable(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Micro::Amx => crate::amx::usable(),
            #[cfg(target_arch = "x86_64")]
            Micro::Avx512 => crate::avx512::usable(),
            #[cfg(target_arch = "aarch64")]
            Micro::Neon => crate::neon::usable(),
            #[cfg(test)]
            Micro::Scalar(_) => true,
        }
    }

    pub fn layout(self) -> Layout {
        match self {
            #[cfg(target_arch = "x86_64")]
            Micro::Amx => crate::amx::LAYOUT,
            #[cfg(target_arch = "x86_64")]
            Micro::Avx512 => crate::avx512::LAYOUT,
            #[cfg(target_arch = "aarch64")]
            Micro::Neon => crate::neon::LAYOUT,
            #[cfg(test)]
            Micro::Scalar(layout) => layout,
        }
    }
}

/// Deterministic operands `(x [m, k], w [n, k], bias [n])` of small magnitude, for checking a
/// kernel (at first use, and in tests).
pub(crate) fn check_operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let val = |i: usize, s: f32| ((i * 7919 % 263) as f32 / 131.0 - 1.0) * s;
    (
        (0..m * k).map(|i| val(i, 1.0)).collect(),
        (0..n * k).map(|i| val(i + 11, 0.3)).collect(),
        (0..n).map(|i| val(i + 5, 0.1)).collect(),
    )
}

/// `x W^T + b` in f64 from the bf16-rounded operands: what every kernel approximates in f32.
pub(crate) fn rounded_reference(x: &[f32], w: &[f32], b: &[f32], m: usize, k: usize) -> Vec<f64> {
    let r = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
    let n = b.len();
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|l| r(x[i * k + l]) * r(w[j * k + l]))
                .sum::<f64>()
                + f64::from(b[j]);
        }
    }
    y
}

/// `v` rounded to bf16, to nearest even (NaN stays a quiet NaN); written without branches so
/// that the packing loops vectorize.
#[inline(always)]
fn to_bf16(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) | 0x40) as u16;
    if v.is_nan() {
        nan
    } else {
        rounded
    }
}

/// A weight `[out, in]` rounded to bf16 and packed as B for one kernel, once; the bias in f32.
pub struct Packed {
    b: Vec<u16>,
    bias: Vec<f32>,
    k: usize,
    n: usize,
    ksteps: usize,
    n_pad: usize,
    micro: Micro,
    /// k steps of one pass.
    pass_steps: usize,
}

impl Packed {
    /// `w`: `[n, k]` row-major (PyTorch's `[out, in]`); `bias`: `[n]`.
    pub(crate) fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, micro: Micro) -> Self {
        let l = micro.layout();
        let ksteps = k.div_ceil(l.kstep).max(1);
        let n_pad = n.div_ceil(l.block) * l.block;
        let mut b = vec![0u16; n_pad * ksteps * l.kstep];
        b.par_chunks_mut(ksteps * l.step_len())
            .enumerate()
            .for_each(|(j, panel)| {
                for c in 0..l.panel {
                    let col = j * l.panel + c;
                    if col >= n {
                        break;
                    }
                    for (kk, &v) in w[col * k..(col + 1) * k].iter().enumerate() {
                        panel[l.b_index(c, kk)] = to_bf16(v);
                    }
                }
            });
        let mut bias_pad = vec![0f32; n_pad];
        if let Some(bias) = bias {
            bias_pad[..n].copy_from_slice(bias);
        }
        Self {
            b,
            bias: bias_pad,
            k,
            n,
            ksteps,
            n_pad,
            micro,
            pass_steps: (PASS_DEPTH / l.kstep).max(1),
        }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    pub fn kernel_name(&self) -> &'static str {
        self.micro.name()
    }

    /// `x`: `[m, k]` row-major -> `y` `[m, n]`, the bias added and, where `gelu`, the exact GELU
    /// applied, or `residual` (`[m, n]`) added (on each block of rows while it is in cache).
    ///
    /// # Safety
    /// This CPU runs the packing's kernel (`crate::amx::usable`, `crate::neon::usable`).
    pub unsafe fn forward(
        &self,
        x: &[f32],
        m: usize,
        gelu: bool,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        let l = self.micro.layout();
        let (k, n, ksteps, bk) = (self.k, self.n, self.ksteps, l.block);
        if m == 0 || n == 0 {
            return vec![0f32; m * n];
        }
        // Every element is written once by a task's epilogue below: no zeroing pass first (a
        // single-threaded memset of up to tens of MB per call).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let a = pack_a(x, m, k, ksteps, l);
        let panel_len = ksteps * l.step_len();
        let block_len = bk * ksteps * l.kstep;
        let block_values = bk * bk;
        let row_blocks = m.div_ceil(bk);
        let col_blocks = self.n_pad / bk;
        let threads = rayon::current_num_threads().max(1);
        // Tasks: groups of row blocks x chunks of column blocks, at least as many as threads
        // where the shape allows.
        let most = (MAX_TASK / bk).max(1);
        let group = row_blocks.div_ceil(threads).clamp(1, most);
        let groups = row_blocks.div_ceil(group);
        let mut chunk = col_blocks.clamp(1, most);
        while groups * col_blocks.div_ceil(chunk) < threads && chunk > 1 {
            chunk = chunk.div_ceil(2);
        }
        let chunks = col_blocks.div_ceil(chunk);
        let out = SharedOut(y.spare_capacity_mut().as_mut_ptr().cast());
        #[cfg(target_arch = "x86_64")]
        let cfg = crate::amx::TileConfig::new();
        (0..groups * chunks).into_par_iter().for_each(|task| {
            let (g, ch) = (task / chunks, task % chunks);
            let rb = g * group..((g + 1) * group).min(row_blocks);
            let cb = ch * chunk..((ch + 1) * chunk).min(col_blocks);
            let nc = cb.len();
            // SAFETY: per `forward`'s contract the CPU has AMX; the tiles are released when
            // `_tiles` drops.
            #[cfg(target_arch = "x86_64")]
            let _tiles =
                (self.micro == Micro::Amx).then(|| unsafe { crate::amx::Tiles::load(&cfg) });
            TASK_SUMS.with_borrow_mut(|sums| {
                // Every value is written by the first pass (from zero) before it is read: the
                // thread's buffer is reused as it is, not cleared.
                if sums.len() < rb.len() * nc * block_values {
                    sums.resize(rb.len() * nc * block_values, 0.0);
                }
                for k0 in (0..ksteps).step_by(self.pass_steps) {
                    let steps = self.pass_steps.min(ksteps - k0);
                    for (j, cbk) in cb.clone().enumerate() {
                        let b = &self.b[cbk * block_len + k0 * l.step_len()..];
                        for (i, r) in rb.clone().enumerate() {
                            let a = &a[r * block_len + k0 * l.step_len()..];
                            let c = &mut sums[(i * nc + j) * block_values..][..block_values];
                            // SAFETY: `a` and `b` start at step `k0` of one block's first panel,
                            // whose other panels follow at `panel_len`, each with `steps` more steps;
                            // `c` holds a whole block; the CPU runs the kernel (`forward`'s
                            // contract) and, for AMX, the tiles are configured (above).
                            unsafe { block(self.micro, a, b, panel_len, steps, c, k0 > 0) };
                        }
                    }
                }
                for (i, r) in rb.clone().enumerate() {
                    let rows = r * bk..((r + 1) * bk).min(m);
                    for (j, cbk) in cb.clone().enumerate() {
                        let c = &sums[(i * nc + j) * block_values..][..block_values];
                        let cols = cbk * bk..((cbk + 1) * bk).min(n);
                        let bias = &self.bias[cols.clone()];
                        for (row_in, row) in rows.clone().enumerate() {
                            // SAFETY: this task alone writes rows `rb` x columns `cb` of `y`.
                            let dst = unsafe { out.row_uninit(row * n + cols.start, cols.len()) };
                            let src = &c[row_in * bk..row_in * bk + cols.len()];
                            match residual {
                                Some(res) => {
                                    let res = &res[row * n + cols.start..row * n + cols.end];
                                    for (((d, s), b), r) in
                                        dst.iter_mut().zip(src).zip(bias).zip(res)
                                    {
                                        d.write(s + b + r);
                                    }
                                }
                                None => {
                                    for ((d, s), b) in dst.iter_mut().zip(src).zip(bias) {
                                        d.write(s + b);
                                    }
                                }
                            }
                        }
                    }
                    if gelu {
                        let start = cb.start * bk;
                        let len = (cb.end * bk).min(n) - start;
                        for row in rows {
                            // SAFETY: as above; the row's columns `cb` were written just above.
                            crate::cpu_ops::gelu_in_place(unsafe { out.row(row * n + start, len) });
                        }
                    }
                }
            });
        });
        // SAFETY: the tasks cover rows 0..m x columns 0..n and each wrote all of its part.
        unsafe { y.set_len(m * n) };
        y
    }
}

/// `steps` k steps of one block of the product, added to the block's partial sums in `c`
/// (row-major, row stride `block`) where `accumulate`, else from zero; the sums are stored back
/// to `c`. `a` and `b` start at the first of the steps in the block's first panel; its other
/// panels follow at `panel_len` bf16.
///
/// # Safety
/// The CPU runs `micro` (for AMX, with the tiles configured on this thread); `a` and `b` hold
/// `steps >= 1` steps of each of the block's panels; `c` holds `block * block` values.
#[inline]
unsafe fn block(
    micro: Micro,
    a: &[u16],
    b: &[u16],
    panel_len: usize,
    steps: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    let l = micro.layout();
    let reach = (l.block / l.panel - 1) * panel_len + steps * l.step_len();
    debug_assert!(steps >= 1 && a.len() >= reach && b.len() >= reach);
    debug_assert!(c.len() >= l.block * l.block);
    match micro {
        // SAFETY (each kernel): per this function's contract.
        #[cfg(target_arch = "x86_64")]
        Micro::Amx => unsafe {
            let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
            crate::amx::block(a, b, panel_len, steps, c, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        Micro::Avx512 => unsafe {
            crate::avx512::block(a.as_ptr(), b.as_ptr(), steps, c.as_mut_ptr(), accumulate)
        },
        #[cfg(target_arch = "aarch64")]
        Micro::Neon => unsafe {
            crate::neon::block(a.as_ptr(), b.as_ptr(), steps, c.as_mut_ptr(), accumulate)
        },
        #[cfg(test)]
        Micro::Scalar(l) => block_scalar(l, a, b, panel_len, steps, c, accumulate),
    }
}

/// [`block`]'s arithmetic in plain code.
#[cfg(test)]
fn block_scalar(
    l: Layout,
    a: &[u16],
    b: &[u16],
    panel_len: usize,
    steps: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    let f = |v: u16| half::bf16::from_bits(v).to_f32();
    for (i, cv) in c[..l.block * l.block].iter_mut().enumerate() {
        let (row, col) = (i / l.block, i % l.block);
        let a = &a[(row / l.panel) * panel_len..];
        let b = &b[(col / l.panel) * panel_len..];
        let mut sum = if accumulate { *cv } else { 0.0 };
        for kk in 0..steps * l.kstep {
            sum += f(a[l.a_index(row, kk)]) * f(b[l.b_index(col, kk)]);
        }
        *cv = sum;
    }
}

/// `y`'s pointer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint (row, column) ranges and `y` outlives them (see `forward`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `start..start + len` is inside `y`'s allocation and no other task touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_uninit(&self, start: usize, len: usize) -> &mut [std::mem::MaybeUninit<f32>] {
        // SAFETY: per the contract; `MaybeUninit` makes no claim about the contents.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start).cast(), len) }
    }

    /// # Safety
    /// `start..start + len` is inside `y` and no other task touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `x` `[m, k]` as A: rows padded to whole blocks, depth to whole k steps.
fn pack_a(x: &[f32], m: usize, k: usize, ksteps: usize, l: Layout) -> Vec<u16> {
    let panels = m.div_ceil(l.block) * (l.block / l.panel);
    let panel_len = ksteps * l.step_len();
    // Each panel is zeroed (the padding) and filled by its own task: no single-threaded zeroing
    // of the whole buffer first.
    let mut a: Vec<u16> = Vec::with_capacity(panels * panel_len);
    a.spare_capacity_mut()[..panels * panel_len]
        .par_chunks_mut(panel_len)
        .enumerate()
        .for_each(|(p, panel)| {
            panel.fill(std::mem::MaybeUninit::new(0));
            // SAFETY: every element was initialized just above.
            let panel: &mut [u16] =
                unsafe { &mut *(panel as *mut [std::mem::MaybeUninit<u16>] as *mut [u16]) };
            for r in 0..l.panel {
                let row = p * l.panel + r;
                if row >= m {
                    break;
                }
                let src = &x[row * k..(row + 1) * k];
                for (s, part) in src.chunks(l.kstep).enumerate() {
                    let at = l.a_index(r, s * l.kstep);
                    for (d, &v) in panel[at..at + part.len()].iter_mut().zip(part) {
                        *d = to_bf16(v);
                    }
                }
            }
        });
    // SAFETY: every panel was initialized by its task.
    unsafe { a.set_len(panels * panel_len) };
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' layouts (AMX, Arm, AVX-512), whatever this CPU is.
    const LAYOUTS: [Layout; 3] = [
        Layout {
            block: 32,
            panel: 16,
            kstep: 32,
            b_pairs: true,
        },
        Layout {
            block: 8,
            panel: 8,
            kstep: 4,
            b_pairs: false,
        },
        Layout {
            block: 16,
            panel: 16,
            kstep: 2,
            b_pairs: true,
        },
    ];

    #[test]
    fn the_kernels_layouts_are_the_tested_ones() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(crate::amx::LAYOUT, LAYOUTS[0]);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(crate::avx512::LAYOUT, LAYOUTS[2]);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(crate::neon::LAYOUT, LAYOUTS[1]);
    }

    #[test]
    fn rounds_to_nearest_even_like_half() {
        let cases = [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // halfway, the bf16 below even: down
            f32::from_bits(0x3f81_8000), // halfway, the bf16 below odd: up
            -3.3333333,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for v in cases {
            assert_eq!(to_bf16(v), half::bf16::from_f32(v).to_bits(), "{v:e}");
        }
        for i in 0..100_000u32 {
            let v = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if !v.is_nan() {
                assert_eq!(to_bf16(v), half::bf16::from_f32(v).to_bits(), "{v:e}");
            }
        }
        assert!(half::bf16::from_bits(to_bf16(f32::NAN)).is_nan());
    }

    /// The driver (packing, blocks, tasks, bias, GELU, edges) around each layout's arithmetic,
    /// against f64 sums of the rounded operands; the instructions themselves are checked where
    /// the CPU has them (the layer's self-check and `bf16::tests`).
    #[test]
    fn the_driver_computes_the_rounded_product() {
        let val = |i: usize, s: f32| ((i * 7919 % 263) as f32 / 131.0 - 1.0) * s;
        for layout in LAYOUTS {
            for (m, k, n) in [(1, 1, 1), (37, 70, 33), (70, 64, 96), (150, 33, 250)] {
                let (x, w, b) = check_operands(m, k, n);
                let want = rounded_reference(&x, &w, &b, m, k);
                let p = Packed::new(&w, n, k, Some(&b), Micro::Scalar(layout));
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let res: Vec<f32> = (0..m * n).map(|i| val(i + 3, 2.0)).collect();
                    // SAFETY: the scalar model runs on any CPU.
                    let (y, g, yr) = pool.install(|| unsafe {
                        (
                            p.forward(&x, m, false, None),
                            p.forward(&x, m, true, None),
                            p.forward(&x, m, false, Some(&res)),
                        )
                    });
                    let shape = format!("{layout:?} {m}x{k}x{n}");
                    let mut gelu_of_y = y.clone();
                    crate::cpu_ops::gelu_in_place(&mut gelu_of_y);
                    assert_eq!(g, gelu_of_y, "{shape}: GELU inside the blocks");
                    let y_plus: Vec<f32> = y.iter().zip(&res).map(|(a, b)| a + b).collect();
                    assert_eq!(yr, y_plus, "{shape}: residual inside the blocks");
                    for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                        let got = f64::from(got);
                        assert!((got - want).abs() < 1e-4, "{shape} [{i}]: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Every kernel this CPU runs, not only the preferred one (a Sapphire Rapids has AMX and
    /// AVX512-BF16): the rounded product, and a row the same alone and in any batch.
    #[test]
    fn every_kernel_this_cpu_runs_computes_the_rounded_product() {
        for &micro in KERNELS.iter().filter(|m| m.usable()) {
            for (m, k, n) in [(37, 70, 33), (150, 300, 70)] {
                let (x, w, b) = check_operands(m, k, n);
                let want = rounded_reference(&x, &w, &b, m, k);
                let p = Packed::new(&w, n, k, Some(&b), micro);
                // SAFETY: `usable()` held.
                let y = unsafe { p.forward(&x, m, false, None) };
                let name = micro.name();
                let bound = 1e-5 * (k as f64).sqrt();
                for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                    let got = f64::from(got);
                    assert!(
                        (got - want).abs() < bound * want.abs().max(1.0),
                        "{name} {m}x{k}x{n} [{i}]: {got} vs {want}"
                    );
                }
                for (start, len) in [(0, 1), (5, 9), (m - 3, 3)] {
                    let part = &x[start * k..(start + len) * k];
                    // SAFETY: as above.
                    let alone = unsafe { p.forward(part, len, false, None) };
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&alone),
                        bits(&y[start * n..(start + len) * n]),
                        "{name}: rows {start}..+{len} alone"
                    );
                }
            }
        }
    }

    /// Splitting the depth into passes (f32 partial sums stored and loaded again) changes no
    /// bit, for each layout's model and each kernel this CPU runs.
    #[test]
    fn depth_passes_change_no_bit() {
        let (m, k, n) = (70, 300, 96);
        let (x, w, b) = check_operands(m, k, n);
        let usable = KERNELS.iter().copied().filter(|m| m.usable());
        for micro in LAYOUTS.map(Micro::Scalar).into_iter().chain(usable) {
            let mut p = Packed::new(&w, n, k, Some(&b), micro);
            let bits = |p: &Packed| -> Vec<u32> {
                // SAFETY: the scalar model runs anywhere; the others are `usable()`.
                let y = unsafe { p.forward(&x, m, false, None) };
                y.into_iter().map(f32::to_bits).collect()
            };
            p.pass_steps = p.ksteps;
            let whole = bits(&p);
            for pass in [1, 3, 7] {
                p.pass_steps = pass;
                assert_eq!(bits(&p), whole, "{}: passes of {pass} steps", micro.name());
            }
        }
    }

    #[test]
    fn packs_b_in_the_instructions_layouts() {
        // 3 output columns, depth 35: W[c][k] = 100 c + k.
        let (n, k) = (3, 35);
        let w: Vec<f32> = (0..n * k).map(|i| (100 * (i / k) + i % k) as f32).collect();
        let val = |p: &Packed, at: usize| half::bf16::from_bits(p.b[at]).to_f32();
        // AMX: two 32-deep steps; step s, pair q, column c, pair element e at s*512 + q*32 + 2c + e.
        let p = Packed::new(&w, n, k, None, Micro::Scalar(LAYOUTS[0]));
        assert_eq!((p.ksteps, p.n_pad), (2, 32));
        assert_eq!(val(&p, 512 + 2 * 2 + 1), 233.0);
        assert_eq!(val(&p, 2), 100.0);
        assert_eq!(val(&p, 512 + 32 + 1), 0.0, "depth padding");
        assert_eq!(val(&p, 2 * 3 + 1), 0.0, "column padding");
        // BFMMLA: nine 4-deep steps; step s, column c, depth d at s*32 + 4c + d.
        let p = Packed::new(&w, n, k, None, Micro::Scalar(LAYOUTS[1]));
        assert_eq!((p.ksteps, p.n_pad), (9, 8));
        assert_eq!(val(&p, 8 * 32 + 4 * 2 + 1), 233.0);
        assert_eq!(val(&p, 4), 100.0);
        assert_eq!(val(&p, 8 * 32 + 3), 0.0, "depth padding");
        assert_eq!(val(&p, 4 * 3), 0.0, "column padding");
    }

    #[test]
    fn packs_a_in_row_major_steps() {
        let (m, k) = (17, 40);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 251) as f32).collect();
        for (l, ksteps, len) in [(LAYOUTS[0], 2, 2 * 2 * 512), (LAYOUTS[1], 10, 3 * 10 * 32)] {
            let a = pack_a(&x, m, k, ksteps, l);
            assert_eq!(a.len(), len, "{l:?}: 17 rows in whole blocks");
            let panel_len = ksteps * l.step_len();
            let at = |row: usize, kk: usize| {
                half::bf16::from_bits(a[(row / l.panel) * panel_len + l.a_index(row, kk)]).to_f32()
            };
            assert_eq!(at(16, 39), x[16 * k + 39], "{l:?}");
            assert_eq!(at(3, 5), x[3 * k + 5], "{l:?}");
            assert_eq!(at(17, 0), 0.0, "{l:?}: row padding");
        }
        let a = pack_a(&x, m, k, 2, LAYOUTS[0]);
        assert_eq!(
            half::bf16::from_bits(a[2 * 512 + 16 * 32 + 8]).to_f32(),
            0.0,
            "depth padding"
        );
    }
}
