//! The block of the CPU bf16 product with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake
//! and Sapphire Rapids and later), for x86-64 CPUs without AMX: `VDPBF16PS`, which adds to each
//! of sixteen f32 lanes the two products of a pair of bf16. The packing, tasks and epilogue are
//! `crate::bf16_gemm`'s.
//!
//! One block is 16 x 16 outputs: sixteen accumulator registers (one row of 16 columns each).
//! Each 2-deep step loads one register of weight pairs (16 columns, pair-interleaved) and
//! multiplies it by each row's pair, broadcast from memory: sixteen independent `VDPBF16PS` per
//! step.
//!
//! `VDPBF16PS` rounds to nearest even and treats subnormal inputs and outputs as zero; its sums
//! run in another order than AMX's, so the two kernels agree to f32 precision, not to the bit
//! (a run's fingerprint names the kernel). Each output is the same sequence of instructions
//! over the depth whatever the batch, so the layer is batch invariant.

use std::arch::asm;
use std::sync::OnceLock;

use crate::bf16_gemm::Layout;

/// The operands' layout of [`block`]: a step of an A panel holds row `r`'s pair at `2 r`, a
/// step of a B panel column `c`'s pair at `2 c`.
pub(crate) const LAYOUT: Layout = Layout {
    block: 16,
    panel: 16,
    kstep: 2,
    b_pairs: true,
};

/// Whether this CPU has AVX512-BF16 and the OS saves the AVX-512 registers.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    })
}

/// `steps` k steps of one 16 x 16 block of the product, added to the partial sums in `c`
/// (row-major, row stride 16) where `accumulate`, else from zero; the sums are stored back to
/// `c`. `a` and `b` point at the first of the steps (32 bf16 each) in one panel each.
///
/// # Safety
/// The CPU has AVX512-BF16 ([`usable`]); `a` and `b` valid for `steps >= 1` steps, `c` for
/// 256 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn block(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    accumulate: bool,
) {
    // SAFETY: per the function's contract; the loads read `ksteps` steps of 64 bytes from `a`
    // and `b`, the stores write 256 f32 to `c`.
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 3f",
            "vmovups zmm0, zmmword ptr [{c} + 0]",
            "vmovups zmm1, zmmword ptr [{c} + 64]",
            "vmovups zmm2, zmmword ptr [{c} + 128]",
            "vmovups zmm3, zmmword ptr [{c} + 192]",
            "vmovups zmm4, zmmword ptr [{c} + 256]",
            "vmovups zmm5, zmmword ptr [{c} + 320]",
            "vmovups zmm6, zmmword ptr [{c} + 384]",
            "vmovups zmm7, zmmword ptr [{c} + 448]",
            "vmovups zmm8, zmmword ptr [{c} + 512]",
            "vmovups zmm9, zmmword ptr [{c} + 576]",
            "vmovups zmm10, zmmword ptr [{c} + 640]",
            "vmovups zmm11, zmmword ptr [{c} + 704]",
            "vmovups zmm12, zmmword ptr [{c} + 768]",
            "vmovups zmm13, zmmword ptr [{c} + 832]",
            "vmovups zmm14, zmmword ptr [{c} + 896]",
            "vmovups zmm15, zmmword ptr [{c} + 960]",
            "jmp 4f",
            "3:",
            "vpxord zmm0, zmm0, zmm0",
            "vpxord zmm1, zmm1, zmm1",
            "vpxord zmm2, zmm2, zmm2",
            "vpxord zmm3, zmm3, zmm3",
            "vpxord zmm4, zmm4, zmm4",
            "vpxord zmm5, zmm5, zmm5",
            "vpxord zmm6, zmm6, zmm6",
            "vpxord zmm7, zmm7, zmm7",
            "vpxord zmm8, zmm8, zmm8",
            "vpxord zmm9, zmm9, zmm9",
            "vpxord zmm10, zmm10, zmm10",
            "vpxord zmm11, zmm11, zmm11",
            "vpxord zmm12, zmm12, zmm12",
            "vpxord zmm13, zmm13, zmm13",
            "vpxord zmm14, zmm14, zmm14",
            "vpxord zmm15, zmm15, zmm15",
            "4:",
            "2:",
            "vmovups zmm16, zmmword ptr [{b}]",
            "vdpbf16ps zmm0, zmm16, dword ptr [{a} + 0]{{1to16}}",
            "vdpbf16ps zmm1, zmm16, dword ptr [{a} + 4]{{1to16}}",
            "vdpbf16ps zmm2, zmm16, dword ptr [{a} + 8]{{1to16}}",
            "vdpbf16ps zmm3, zmm16, dword ptr [{a} + 12]{{1to16}}",
            "vdpbf16ps zmm4, zmm16, dword ptr [{a} + 16]{{1to16}}",
            "vdpbf16ps zmm5, zmm16, dword ptr [{a} + 20]{{1to16}}",
            "vdpbf16ps zmm6, zmm16, dword ptr [{a} + 24]{{1to16}}",
            "vdpbf16ps zmm7, zmm16, dword ptr [{a} + 28]{{1to16}}",
            "vdpbf16ps zmm8, zmm16, dword ptr [{a} + 32]{{1to16}}",
            "vdpbf16ps zmm9, zmm16, dword ptr [{a} + 36]{{1to16}}",
            "vdpbf16ps zmm10, zmm16, dword ptr [{a} + 40]{{1to16}}",
            "vdpbf16ps zmm11, zmm16, dword ptr [{a} + 44]{{1to16}}",
            "vdpbf16ps zmm12, zmm16, dword ptr [{a} + 48]{{1to16}}",
            "vdpbf16ps zmm13, zmm16, dword ptr [{a} + 52]{{1to16}}",
            "vdpbf16ps zmm14, zmm16, dword ptr [{a} + 56]{{1to16}}",
            "vdpbf16ps zmm15, zmm16, dword ptr [{a} + 60]{{1to16}}",
            "add {a}, 64",
            "add {b}, 64",
            "dec {n}",
            "jnz 2b",
            "vmovups zmmword ptr [{c} + 0], zmm0",
            "vmovups zmmword ptr [{c} + 64], zmm1",
            "vmovups zmmword ptr [{c} + 128], zmm2",
            "vmovups zmmword ptr [{c} + 192], zmm3",
            "vmovups zmmword ptr [{c} + 256], zmm4",
            "vmovups zmmword ptr [{c} + 320], zmm5",
            "vmovups zmmword ptr [{c} + 384], zmm6",
            "vmovups zmmword ptr [{c} + 448], zmm7",
            "vmovups zmmword ptr [{c} + 512], zmm8",
            "vmovups zmmword ptr [{c} + 576], zmm9",
            "vmovups zmmword ptr [{c} + 640], zmm10",
            "vmovups zmmword ptr [{c} + 704], zmm11",
            "vmovups zmmword ptr [{c} + 768], zmm12",
            "vmovups zmmword ptr [{c} + 832], zmm13",
            "vmovups zmmword ptr [{c} + 896], zmm14",
            "vmovups zmmword ptr [{c} + 960], zmm15",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) steps => _,
            acc = in(reg) usize::from(accumulate),
            c = in(reg) c,
            out("zmm0") _,
            out("zmm1") _,
            out("zmm2") _,
            out("zmm3") _,
            out("zmm4") _,
            out("zmm5") _,
            out("zmm6") _,
            out("zmm7") _,
            out("zmm8") _,
            out("zmm9") _,
            out("zmm10") _,
            out("zmm11") _,
            out("zmm12") _,
            out("zmm13") _,
            out("zmm14") _,
            out("zmm15") _,
            out("zmm16") _,
            options(nostack),
        );
    }
}
