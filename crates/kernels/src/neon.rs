//! The block of the CPU bf16 product on Arm (`FEAT_BF16`: Neoverse V1/V2 and N2, Grace,
//! GB10's cores, Graviton 3 and later, Apple M2 and later): `BFMMLA`, whose one instruction
//! multiplies a 2 x 4 block of bf16 rows by a 4 x 2 block of bf16 weight columns into a 2 x 2
//! block of f32 sums. The packing, tasks and epilogue are `crate::bf16_gemm`'s.
//!
//! One block is 8 x 8 outputs: sixteen accumulator registers (2 x 2 outputs each), four
//! registers of rows (8 rows x 4 deep) and four of weight columns (8 columns x 4 deep) per k
//! step, sixteen independent `BFMMLA`s. A and B are both packed "row-major by 4": a step of an A
//! panel holds row `r`'s four values at `4 r`, a step of a B panel column `c`'s at `4 c`, so one
//! 128-bit load gives one instruction operand.
//!
//! `BFMMLA` rounds its sums to odd and flushes subnormals (Arm ARM, `BFDotAdd`), where AMX
//! rounds to nearest even: the two kernels agree to the precision of f32 sums, not to the bit.
//! Each output is still the same sequence of instructions over the depth whatever the batch, so
//! the layer is batch invariant.

use std::arch::asm;
use std::sync::OnceLock;

use crate::bf16_gemm::Layout;

/// The operands' layout of [`block`].
pub(crate) const LAYOUT: Layout = Layout {
    block: 8,
    panel: 8,
    kstep: 4,
    b_pairs: false,
};

/// Whether this CPU has the bf16 instructions (`FEAT_BF16`), as the OS reports them.
pub fn usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| std::arch::is_aarch64_feature_detected!("bf16"))
}

/// `steps` k steps of one 8 x 8 block of the product, added to the partial sums in `c`
/// (row-major, row stride 8) where `accumulate`, else from zero; the sums are stored back to
/// `c`. `a` and `b` point at the first of the steps (32 bf16 each) in one panel each.
///
/// # Safety
/// The CPU has `FEAT_BF16` ([`usable`]); `a` and `b` valid for `steps >= 1` steps, `c` for 64
/// f32.
#[inline]
#[target_feature(enable = "bf16")]
pub(crate) unsafe fn block(
    a: *const u16,
    b: *const u16,
    steps: usize,
    c: *mut f32,
    accumulate: bool,
) {
    // SAFETY: per the function's contract; the loads read `ksteps` steps of 64 bytes from `a`
    // and `b`, the stores write 64 f32 to `c`.
    unsafe {
        asm!(
            // Accumulator 4i + j holds rows 2i, 2i + 1 x columns 2j, 2j + 1 (one row per
            // 64-bit half): from the stored rows, or zero.
            "cbz {acc}, 3f",
            "ldp q24, q25, [{c}, #0]",
            "ldp q26, q27, [{c}, #32]",
            "zip1 v0.2d, v24.2d, v26.2d",
            "zip2 v1.2d, v24.2d, v26.2d",
            "zip1 v2.2d, v25.2d, v27.2d",
            "zip2 v3.2d, v25.2d, v27.2d",
            "ldp q24, q25, [{c}, #64]",
            "ldp q26, q27, [{c}, #96]",
            "zip1 v4.2d, v24.2d, v26.2d",
            "zip2 v5.2d, v24.2d, v26.2d",
            "zip1 v6.2d, v25.2d, v27.2d",
            "zip2 v7.2d, v25.2d, v27.2d",
            "ldp q24, q25, [{c}, #128]",
            "ldp q26, q27, [{c}, #160]",
            "zip1 v8.2d, v24.2d, v26.2d",
            "zip2 v9.2d, v24.2d, v26.2d",
            "zip1 v10.2d, v25.2d, v27.2d",
            "zip2 v11.2d, v25.2d, v27.2d",
            "ldp q24, q25, [{c}, #192]",
            "ldp q26, q27, [{c}, #224]",
            "zip1 v12.2d, v24.2d, v26.2d",
            "zip2 v13.2d, v24.2d, v26.2d",
            "zip1 v14.2d, v25.2d, v27.2d",
            "zip2 v15.2d, v25.2d, v27.2d",
            "b 4f",
            "3:",
            "movi v0.16b, #0",
            "movi v1.16b, #0",
            "movi v2.16b, #0",
            "movi v3.16b, #0",
            "movi v4.16b, #0",
            "movi v5.16b, #0",
            "movi v6.16b, #0",
            "movi v7.16b, #0",
            "movi v8.16b, #0",
            "movi v9.16b, #0",
            "movi v10.16b, #0",
            "movi v11.16b, #0",
            "movi v12.16b, #0",
            "movi v13.16b, #0",
            "movi v14.16b, #0",
            "movi v15.16b, #0",
            "4:",
            "2:",
            "ldp q16, q17, [{a}], #32",
            "ldp q18, q19, [{a}], #32",
            "ldp q20, q21, [{b}], #32",
            "ldp q22, q23, [{b}], #32",
            "bfmmla v0.4s, v16.8h, v20.8h",
            "bfmmla v1.4s, v16.8h, v21.8h",
            "bfmmla v2.4s, v16.8h, v22.8h",
            "bfmmla v3.4s, v16.8h, v23.8h",
            "bfmmla v4.4s, v17.8h, v20.8h",
            "bfmmla v5.4s, v17.8h, v21.8h",
            "bfmmla v6.4s, v17.8h, v22.8h",
            "bfmmla v7.4s, v17.8h, v23.8h",
            "bfmmla v8.4s, v18.8h, v20.8h",
            "bfmmla v9.4s, v18.8h, v21.8h",
            "bfmmla v10.4s, v18.8h, v22.8h",
            "bfmmla v11.4s, v18.8h, v23.8h",
            "bfmmla v12.4s, v19.8h, v20.8h",
            "bfmmla v13.4s, v19.8h, v21.8h",
            "bfmmla v14.4s, v19.8h, v22.8h",
            "bfmmla v15.4s, v19.8h, v23.8h",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            // Back to whole rows.
            "zip1 v24.2d, v0.2d, v1.2d",
            "zip1 v25.2d, v2.2d, v3.2d",
            "zip2 v26.2d, v0.2d, v1.2d",
            "zip2 v27.2d, v2.2d, v3.2d",
            "stp q24, q25, [{c}], #32",
            "stp q26, q27, [{c}], #32",
            "zip1 v24.2d, v4.2d, v5.2d",
            "zip1 v25.2d, v6.2d, v7.2d",
            "zip2 v26.2d, v4.2d, v5.2d",
            "zip2 v27.2d, v6.2d, v7.2d",
            "stp q24, q25, [{c}], #32",
            "stp q26, q27, [{c}], #32",
            "zip1 v24.2d, v8.2d, v9.2d",
            "zip1 v25.2d, v10.2d, v11.2d",
            "zip2 v26.2d, v8.2d, v9.2d",
            "zip2 v27.2d, v10.2d, v11.2d",
            "stp q24, q25, [{c}], #32",
            "stp q26, q27, [{c}], #32",
            "zip1 v24.2d, v12.2d, v13.2d",
            "zip1 v25.2d, v14.2d, v15.2d",
            "zip2 v26.2d, v12.2d, v13.2d",
            "zip2 v27.2d, v14.2d, v15.2d",
            "stp q24, q25, [{c}], #32",
            "stp q26, q27, [{c}], #32",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) steps => _,
            acc = in(reg) usize::from(accumulate),
            c = inout(reg) c => _,
            out("v0") _,
            out("v1") _,
            out("v2") _,
            out("v3") _,
            out("v4") _,
            out("v5") _,
            out("v6") _,
            out("v7") _,
            out("v8") _,
            out("v9") _,
            out("v10") _,
            out("v11") _,
            out("v12") _,
            out("v13") _,
            out("v14") _,
            out("v15") _,
            out("v16") _,
            out("v17") _,
            out("v18") _,
            out("v19") _,
            out("v20") _,
            out("v21") _,
            out("v22") _,
            out("v23") _,
            out("v24") _,
            out("v25") _,
            out("v26") _,
            out("v27") _,
            options(nostack),
        );
    }
}
