//! The block of the CPU bf16 product on Intel AMX (Sapphire Rapids and later): `TDPBF16PS`,
//! bf16 x bf16 products summed in f32; the packing, tasks and epilogue are `crate::bf16_gemm`'s.
//!
//! Why our own kernel: tract-linalg's AMX kernel keeps one accumulator tile, so each
//! `TDPBF16PS` waits for the one before it and needs two tile loads of its own; in the model it
//! ran at ~0.5 TFLOP/s on two cores (docs/ARCHITECTURE.md, "CPU matrix kernels"). This one
//! keeps four accumulators (a 32 x 32 block of `y`): four independent products per k step, on
//! two A tiles and two B tiles.
//!
//! Layouts (one tile = 16 rows of 64 bytes = 1 KiB): A in 16-row panels, one tile per 32-deep
//! k step, each tile's row `r` the 32 bf16 of that row and step; B in 16-column panels, one
//! tile per k step, each tile's row `q` the pairs `(W[c][2q], W[c][2q + 1])` for the panel's 16
//! columns `c` (the pair-interleaved layout `TDPBF16PS` reads).

use std::arch::asm;
use std::sync::OnceLock;

use crate::bf16_gemm::Layout;

/// The operands' layout of [`block`].
pub(crate) const LAYOUT: Layout = Layout {
    block: 32,
    panel: 16,
    kstep: 32,
    b_pairs: true,
};

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

/// The tile configuration: palette 1, the eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    pub(crate) fn new() -> Self {
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
pub(crate) struct Tiles;

impl Tiles {
    /// # Safety
    /// The CPU has AMX-TILE and the process has the tile state ([`usable`]).
    pub(crate) unsafe fn load(cfg: &TileConfig) -> Self {
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

/// `steps` k steps of one 32 x 32 block of the product, added to the partial sums in `c` (row
/// stride 32 f32) where `accumulate`, else from zero; the sums are stored back to `c`. `a`
/// points at the first of the steps in the first of two 16-row panels, `b` likewise in the
/// first of two 16-column panels; each second panel is `panel_len` bf16 further.
///
/// # Safety
/// Tiles configured as [`TileConfig::new`] on this thread; `a` and `b` valid for `steps >= 1`
/// tiles from each of the two panels, `c` for 1024 f32.
#[inline]
pub(crate) unsafe fn block(
    a: *const u16,
    b: *const u16,
    panel_len: usize,
    steps: usize,
    c: *mut f32,
    accumulate: bool,
) {
    // SAFETY: per the function's contract; every tile load and store stays inside the panels
    // and `c` (16 rows at the given stride from each start).
    unsafe {
        asm!(
            "mov {s}, 128",
            "test {acc}, {acc}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {s}*1]",
            "tileloadd tmm1, [{c} + {s}*1 + 64]",
            "tileloadd tmm2, [{c} + {s}*1 + 2048]",
            "tileloadd tmm3, [{c} + {s}*1 + 2112]",
            "jmp 4f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "4:",
            "mov {s}, 64",
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
            a1 = inout(reg) a.add(panel_len) => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.add(panel_len) => _,
            s = out(reg) _,
            n = inout(reg) steps => _,
            acc = in(reg) usize::from(accumulate),
            c = in(reg) c,
            options(nostack),
        );
    }
}
