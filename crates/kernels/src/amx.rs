//! The bf16 matrix product on Intel AMX (Sapphire Rapids and later): `y = x W^T + b`, with `x`
//! and `W` rounded to bf16 (round to nearest even) and the products summed in f32 by
//! `TDPBF16PS`.
//!
//! Why our own kernel: tract-linalg's AMX kernel keeps one accumulator tile, so each
//! `TDPBF16PS` waits for the one before it and needs two tile loads of its own; in the model it
//! ran at ~0.5 TFLOP/s on two cores (docs/ARCHITECTURE.md, "CPU matrix kernels"). This one
//! keeps four accumulators (a 32 x 32 block of `y`): four independent products per k step, on
//! two A tiles and two B tiles.
//!
//! Layouts (one tile = 16 rows of 64 bytes = 1 KiB):
//! - A (the activations, packed per call): 16-row panels; within a panel, one tile per 32-deep
//!   k step, each tile's row `r` the 32 bf16 of that row and step.
//! - B (the weight, packed once): 16-column panels; within a panel, one tile per k step, each
//!   tile's row `q` the pairs `(W[c][2q], W[c][2q + 1])` for the panel's 16 columns `c` (the
//!   pair-interleaved layout `TDPBF16PS` reads).
//!
//! Rows, columns and depth are padded with zeros to whole blocks. Every output is the sum of the
//! same products in the same order (k steps in order, from zero) whatever the batch and the
//! split between threads: the layer is batch invariant bit for bit.

use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

/// bf16 values in one tile (16 rows x 32).
const TILE: usize = 512;
/// The depth of one `TDPBF16PS`.
const KSTEP: usize = 32;
/// Rows and columns of one micro-kernel block.
const BLOCK: usize = 32;
/// Bytes of B a task keeps in the L2 cache while it walks its row blocks.
const B_CHUNK_BYTES: usize = 512 * 1024;

/// Whether this CPU has AMX-BF16 and the OS lets this process use the tiles (Linux grants
/// the tile state per process, on request).
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| cpu_has_amx_bf16() && request_tile_state())
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
    #[allow(unused_unsafe)]
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    const WANT: u32 = (1 << 22) | (1 << 24);
    edx & WANT == WANT
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's XSAVE permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
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

/// The tile configuration: palette 1, the eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// Holds the tile configuration on this thread for its lifetime.
struct Tiles;

impl Tiles {
    /// # Safety
    /// The CPU has AMX-TILE and the process has the tile state ([`usable`]).
    unsafe fn load(cfg: &TileConfig) -> Self {
        // SAFETY: the caller checked AMX; `cfg` is a valid 64-byte configuration.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        }
        Self
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a configuration was loaded by `Tiles::load` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One 32 x 32 block of the product into `c` (row stride 32 f32): `a` points at the first of
/// two consecutive 16-row panels, `b` at the first of two consecutive 16-column panels, each
/// panel `ksteps` tiles.
///
/// # Safety
/// Tiles configured as [`TileConfig::new`] on this thread; `a` and `b` valid for two panels of
/// `ksteps >= 1` tiles, `c` for 1024 f32.
#[inline]
unsafe fn block(a: *const u16, b: *const u16, ksteps: usize, c: *mut f32) {
    let panel = ksteps * TILE;
    // SAFETY: per the function's contract; every tile load and store stays inside the panels
    // and `c` (16 rows at the given stride from each start).
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "mov {s}, 128",
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 2112], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(panel) => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.add(panel) => _,
            s = inout(reg) 64usize => _,
            n = inout(reg) ksteps => _,
            c = in(reg) c,
            options(nostack),
        );
    }
}

/// A weight `[out, in]` rounded to bf16 and packed as B, once; the bias in f32.
pub struct Packed {
    b: Vec<u16>,
    bias: Vec<f32>,
    k: usize,
    n: usize,
    ksteps: usize,
    n_pad: usize,
}

impl Packed {
    /// `w`: `[n, k]` row-major (PyTorch's `[out, in]`); `bias`: `[n]`.
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        let ksteps = k.div_ceil(KSTEP).max(1);
        let n_pad = n.div_ceil(BLOCK) * BLOCK;
        let mut b = vec![0u16; n_pad * ksteps * KSTEP];
        // One 16-column panel per chunk: tile `s`, row `q`, column `c`, pair element `e`.
        b.par_chunks_mut(ksteps * TILE)
            .enumerate()
            .for_each(|(j, panel)| {
                for c in 0..16 {
                    let col = j * 16 + c;
                    if col >= n {
                        break;
                    }
                    let row = &w[col * k..(col + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        let (s, q, e) = (kk / KSTEP, (kk % KSTEP) / 2, kk % 2);
                        panel[s * TILE + q * 32 + c * 2 + e] = to_bf16(v);
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
        }
    }

    pub fn out_dim(&self) -> usize {
        self.n
    }

    /// `x`: `[m, k]` row-major -> `y` `[m, n]`, the bias added and, where `gelu`, the exact GELU
    /// applied, or `residual` (`[m, n]`) added (on each block of rows while it is in cache).
    ///
    /// # Safety
    /// [`usable`] returned true.
    pub unsafe fn forward(
        &self,
        x: &[f32],
        m: usize,
        gelu: bool,
        residual: Option<&[f32]>,
    ) -> Vec<f32> {
        self.run(x, m, gelu, residual, Micro::Amx)
    }

    fn run(
        &self,
        x: &[f32],
        m: usize,
        gelu: bool,
        residual: Option<&[f32]>,
        micro: Micro,
    ) -> Vec<f32> {
        let (k, n, ksteps) = (self.k, self.n, self.ksteps);
        let mut y = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return y;
        }
        let a = pack_a(x, m, k, ksteps);
        let row_blocks = m.div_ceil(BLOCK);
        let col_blocks = self.n_pad / BLOCK;
        let threads = rayon::current_num_threads().max(1);
        // Tasks: groups of row blocks x chunks of column blocks; a chunk's B stays in L2 while
        // the task walks its rows. At least as many tasks as threads where the shape allows.
        let per_block_bytes = BLOCK * ksteps * KSTEP * 2;
        let mut chunk = (B_CHUNK_BYTES / per_block_bytes).clamp(1, col_blocks);
        let group = row_blocks.div_ceil(threads).clamp(1, 8);
        let groups = row_blocks.div_ceil(group);
        while groups * col_blocks.div_ceil(chunk) < threads && chunk > 1 {
            chunk = chunk.div_ceil(2);
        }
        let chunks = col_blocks.div_ceil(chunk);
        let out = SharedOut(y.as_mut_ptr());
        let cfg = TileConfig::new();
        (0..groups * chunks).into_par_iter().for_each(|task| {
            let (g, ch) = (task / chunks, task % chunks);
            let rb = g * group..((g + 1) * group).min(row_blocks);
            let cb = ch * chunk..((ch + 1) * chunk).min(col_blocks);
            // SAFETY: `Micro::Amx` only from `forward`, whose caller checked `usable()`; the
            // tiles are released when `_tiles` drops.
            let _tiles = matches!(micro, Micro::Amx).then(|| unsafe { Tiles::load(&cfg) });
            let mut c = Scratch([0f32; BLOCK * BLOCK]);
            for r in rb {
                let rows = r * BLOCK..((r + 1) * BLOCK).min(m);
                for cbk in cb.clone() {
                    let a = &a[2 * r * ksteps * TILE..2 * (r + 1) * ksteps * TILE];
                    let b = &self.b[2 * cbk * ksteps * TILE..2 * (cbk + 1) * ksteps * TILE];
                    match micro {
                        // SAFETY: `a` and `b` are two panels of `ksteps` tiles each, `c` holds
                        // a whole block, and the tiles are configured (above).
                        Micro::Amx => unsafe {
                            block(a.as_ptr(), b.as_ptr(), ksteps, c.0.as_mut_ptr())
                        },
                        #[cfg(test)]
                        Micro::Scalar => block_scalar(a, b, ksteps, &mut c.0),
                    }
                    let cols = cbk * BLOCK..((cbk + 1) * BLOCK).min(n);
                    for (i, row) in rows.clone().enumerate() {
                        // SAFETY: this task alone writes rows `rb` x columns `cb` of `y`.
                        let dst = unsafe { out.row(row * n + cols.start, cols.len()) };
                        let src = &c.0[i * BLOCK..i * BLOCK + cols.len()];
                        let bias = &self.bias[cols.clone()];
                        match residual {
                            Some(res) => {
                                let res = &res[row * n + cols.start..row * n + cols.end];
                                for (((d, s), b), r) in dst.iter_mut().zip(src).zip(bias).zip(res) {
                                    *d = s + b + r;
                                }
                            }
                            None => {
                                for ((d, s), b) in dst.iter_mut().zip(src).zip(bias) {
                                    *d = s + b;
                                }
                            }
                        }
                    }
                }
                if gelu {
                    let start = cb.start * BLOCK;
                    let len = (cb.end * BLOCK).min(n) - start;
                    for row in rows {
                        // SAFETY: as above.
                        crate::cpu_ops::gelu_in_place(unsafe { out.row(row * n + start, len) });
                    }
                }
            }
        });
        y
    }
}

/// What computes one 32 x 32 block.
#[derive(Clone, Copy)]
enum Micro {
    Amx,
    /// `TDPBF16PS`'s arithmetic in plain code, for testing the packing and the driver on a CPU
    /// without AMX.
    #[cfg(test)]
    Scalar,
}

/// [`block`] without AMX (f32 sums of the bf16 products, in another order).
#[cfg(test)]
fn block_scalar(a: &[u16], b: &[u16], ksteps: usize, c: &mut [f32]) {
    let f = |v: u16| half::bf16::from_bits(v).to_f32();
    let panel = ksteps * TILE;
    for (i, cv) in c.iter_mut().enumerate() {
        let (row, col) = (i / BLOCK, i % BLOCK);
        let (ap, r) = (row / 16, row % 16);
        let (bp, cc) = (col / 16, col % 16);
        let mut sum = 0f32;
        for s in 0..ksteps {
            for q in 0..16 {
                for e in 0..2 {
                    let x = a[ap * panel + s * TILE + r * KSTEP + 2 * q + e];
                    let w = b[bp * panel + s * TILE + q * 32 + cc * 2 + e];
                    sum += f(x) * f(w);
                }
            }
        }
        *cv = sum;
    }
}

/// One micro-kernel's results, 64-byte aligned for the tile stores.
#[repr(C, align(64))]
struct Scratch([f32; BLOCK * BLOCK]);

/// `y`'s pointer, shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint (row, column) ranges and `y` outlives them (see `forward`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `start..start + len` is inside `y` and no other task touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, len: usize) -> &mut [f32] {
        // SAFETY: per the contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// `x` `[m, k]` as A: rows padded to whole 32-row blocks, depth to whole k steps.
fn pack_a(x: &[f32], m: usize, k: usize, ksteps: usize) -> Vec<u16> {
    let panels = m.div_ceil(BLOCK) * 2;
    let mut a = vec![0u16; panels * ksteps * TILE];
    a.par_chunks_mut(ksteps * TILE)
        .enumerate()
        .for_each(|(p, panel)| {
            for r in 0..16 {
                let row = p * 16 + r;
                if row >= m {
                    break;
                }
                let src = &x[row * k..(row + 1) * k];
                for (s, part) in src.chunks(KSTEP).enumerate() {
                    let dst = &mut panel[s * TILE + r * KSTEP..s * TILE + r * KSTEP + part.len()];
                    for (d, &v) in dst.iter_mut().zip(part) {
                        *d = to_bf16(v);
                    }
                }
            }
        });
    a
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The driver (packing, blocks, tasks, bias, GELU, edges) around the arithmetic of the
    /// tiles, against f64 sums of the rounded operands; the AMX instructions themselves are
    /// checked where the CPU has them (the layer's self-check and `bf16::tests`).
    #[test]
    fn the_driver_computes_the_rounded_product() {
        let val = |i: usize, s: f32| ((i * 7919 % 263) as f32 / 131.0 - 1.0) * s;
        let r = |v: f32| f64::from(half::bf16::from_f32(v).to_f32());
        for (m, k, n) in [(1, 1, 1), (37, 70, 33), (70, 64, 96), (150, 33, 250)] {
            let x: Vec<f32> = (0..m * k).map(|i| val(i, 1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|i| val(i + 11, 0.3)).collect();
            let b: Vec<f32> = (0..n).map(|i| val(i + 5, 0.1)).collect();
            let p = Packed::new(&w, n, k, Some(&b));
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let res: Vec<f32> = (0..m * n).map(|i| val(i + 3, 2.0)).collect();
                let (y, g, yr) = pool.install(|| {
                    (
                        p.run(&x, m, false, None, Micro::Scalar),
                        p.run(&x, m, true, None, Micro::Scalar),
                        p.run(&x, m, false, Some(&res), Micro::Scalar),
                    )
                });
                let mut gelu_of_y = y.clone();
                crate::cpu_ops::gelu_in_place(&mut gelu_of_y);
                assert_eq!(g, gelu_of_y, "{m}x{k}x{n}: GELU inside the blocks");
                let y_plus: Vec<f32> = y.iter().zip(&res).map(|(a, b)| a + b).collect();
                assert_eq!(yr, y_plus, "{m}x{k}x{n}: residual inside the blocks");
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|l| r(x[i * k + l]) * r(w[j * k + l]))
                            .sum::<f64>()
                            + f64::from(b[j]);
                        let got = f64::from(y[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{m}x{k}x{n} [{i}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packs_b_in_pair_interleaved_tiles() {
        // 3 output columns, depth 35 (two k steps): W[c][k] = 100 c + k.
        let (n, k) = (3, 35);
        let w: Vec<f32> = (0..n * k).map(|i| (100 * (i / k) + i % k) as f32).collect();
        let p = Packed::new(&w, n, k, None);
        assert_eq!((p.ksteps, p.n_pad), (2, 32));
        let at = |c: usize, kk: usize| {
            let (s, q, e) = (kk / KSTEP, (kk % KSTEP) / 2, kk % 2);
            half::bf16::from_bits(p.b[s * TILE + q * 32 + c * 2 + e]).to_f32()
        };
        assert_eq!(at(2, 33), 233.0);
        assert_eq!(at(1, 0), 100.0);
        assert_eq!(at(0, 34), 34.0);
        assert_eq!(at(0, 35), 0.0, "depth padding");
        assert_eq!(at(3, 1), 0.0, "column padding");
    }

    #[test]
    fn packs_a_in_row_tiles() {
        let (m, k) = (17, 40);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 251) as f32).collect();
        let a = pack_a(&x, m, k, 2);
        assert_eq!(
            a.len(),
            2 * 2 * TILE,
            "17 rows: one 32-row block, two panels of two steps"
        );
        let at = |row: usize, kk: usize| {
            let (p, r, s) = (row / 16, row % 16, kk / KSTEP);
            half::bf16::from_bits(a[(p * 2 + s) * TILE + r * KSTEP + kk % KSTEP]).to_f32()
        };
        assert_eq!(at(16, 39), x[16 * k + 39]);
        assert_eq!(at(3, 5), x[3 * k + 5]);
        assert_eq!(at(16, 40), 0.0);
        assert_eq!(at(20, 0), 0.0);
    }
}
