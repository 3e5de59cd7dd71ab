//! Hand-written CUDA kernels, compiled by `build.rs` with nvcc (machine code for the target GPU
//! plus PTX, in one fatbin per source) only when the `cuda` feature is on, and loaded at run time
//! on candle's CUDA device and stream (`cuda::load_kernel`).
//!
//! # Fused attention
//!
//! [`fused_attention`] is a flash-attention style forward pass (online softmax, no score matrix in
//! device memory, tensor cores) for head size 64 in f16 and bf16, with the two kinds of masking the
//! embedding models need: a key-padding mask given as per-row lengths, and optional ALiBi slopes
//! (bias `-slope_h * |i - j|`, DNABERT-S). Query rows past a row's length come out as zeros.
//! [`fused_attention_varlen`] runs the same kernel on packed sequences (`cu_seqlens`), so that a
//! batch of mixed lengths spends nothing on padding. Two kernels implement it: `flash_attn.cu`
//! (`mma.sync`, every GPU the build targets) and `flash_attn_sm90.cu` (`wgmma`, compute capability
//! 9.0 only, picked there automatically); [`FaVariant`] names their tile shapes, two per kernel
//! (one for rows shorter than 768 tokens, one for longer rows).
//!
//! Layout: inputs are `[batch, heads, len, 64]` in shape, with any strides as long as the head
//! dimension is contiguous, so both a contiguous `[B, H, T, 64]` tensor and the free view
//! `x.reshape((b, t, h, 64))?.transpose(1, 2)?` of a projection's `[B, T, H*64]` output work
//! without a copy. The output is stored as `[B, T, H, 64]` (what the output projection reads) and
//! returned as its `[B, H, T, 64]` view: `out.transpose(1, 2)?.reshape((b, t, h * 64))` is free.
//!
//! [`materialized_attention`] is the reference: `softmax(scale * Q K^T + bias + mask) V` with the
//! scores in device memory, run through candle's ordinary ops on any device and dtype.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod bf16;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod bf16_gemm;
mod cpu;
mod cpu_ops;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
#[cfg(feature = "cuda")]
mod gemm;
#[cfg(target_arch = "aarch64")]
mod neon;
mod ops;
mod options;
mod reference;
pub mod rotary;
pub mod selftest;

pub use bf16::{cpu_bf16_isa, cpu_bf16_kernels, Bf16Linear, CpuBf16Isa};
pub use cpu::{cpu_int8_isa, CpuInt8Isa, Int8Linear};
pub use cpu_ops::{cpu_elementwise_isa, cpu_packed_attention, PositionBias};
#[cfg(feature = "cuda")]
pub use cuda::hold_pool_memory;
pub use error::{anyhow_is_out_of_memory, is_out_of_memory, kernel_error, KernelError};
#[cfg(feature = "cuda")]
pub use gemm::{gpu_key, AlgoConfig, TunedCandidate, TunedEntry};
#[cfg(feature = "cuda")]
pub use ops::tune_linear;
pub use ops::{gated_gelu, gather_rows, layer_norm, linear, rotary_qk, weighted_pool};
pub use options::{CpuMatmul, GemmFallback, KernelOptions};

pub use reference::{alibi_bias, alibi_slopes, key_padding_mask, materialized_attention, row_mask};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

/// The high-water marks of a CUDA device's memory pool, `(in use, held)` in bytes (weights
/// included; see [`trim_pool`]); `None` on other devices.
pub fn pool_high_water(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::pool_high_water(dev).ok();
    }
    let _ = device;
    None
}

/// The CUDA memory pool's `(in use, reserved)` bytes now; `None` on other devices.
pub fn pool_now(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::pool_now(dev).ok();
    }
    let _ = device;
    None
}

/// On a CUDA device, returns the memory pool's unused memory to the driver (the f32 staging
/// copies of loaded weights leave holes that later batches may not fit) and restarts the
/// [`pool_high_water`] marks; nothing elsewhere.
pub fn trim_pool(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return cuda::trim_pool(dev);
    }
    let _ = device;
    Ok(())
}

/// The only head size the fused kernel handles (every ESM2 from 150M up, DNABERT-S).
pub const FUSED_HEAD_DIM: usize = 64;

/// True when this binary was built with the `cuda` feature (the kernels are compiled in).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens CUDA device `n`, with freed memory kept in its pool between batches
/// (`hold_pool_memory`, CUDA builds) and without cudarc's per-buffer event tracking unless
/// `options` keep it ([`KernelOptions::event_tracking`]).
pub fn open_cuda(n: usize, options: &KernelOptions) -> Result<Device> {
    let dev = Device::new_cuda(n)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(c) = &dev {
        if !options.event_tracking {
            // SAFETY: everything this program does on the device runs on the one stream of this
            // candle device (candle ops, our kernels, cuBLASLt), so stream order alone orders
            // every use of a buffer, its frees included; no tensor is shared with another device.
            unsafe { c.disable_event_tracking() };
        }
        hold_pool_memory(c)?;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = options;
    Ok(dev)
}

/// Compute capability the kernels were compiled for (`CUDA_COMPUTE_CAP` at build time), if
/// the binary has them.
pub fn kernels_compute_cap() -> Option<&'static str> {
    #[cfg(feature = "cuda")]
    {
        Some(env!("VIRNUCPRO_CUDA_COMPUTE_CAP"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// Which attention implementation the encoders use (`--attention auto|fused|naive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum AttentionImpl {
    /// The fused kernel where it applies (CUDA build and device, head size 64, f16/bf16), else
    /// the materialized path.
    #[default]
    Auto,
    /// The fused kernel; an error where it cannot run.
    Fused,
    /// The materialized path everywhere.
    Naive,
}

impl std::str::FromStr for AttentionImpl {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "fused" | "flash" => Ok(Self::Fused),
            "naive" | "materialized" => Ok(Self::Naive),
            _ => Err(format!(
                "`{s}` is not an attention implementation; use auto, fused or naive"
            )),
        }
    }
}

impl std::fmt::Display for AttentionImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Fused => "fused",
            Self::Naive => "naive",
        })
    }
}

/// Whether [`fused_attention`] can run for this dtype, head size and device: a CUDA build, a CUDA
/// device, head size 64, f16 or bf16. Callers fall back to [`materialized_attention`] otherwise.
pub fn fused_attention_available(dtype: DType, head_dim: usize, device: &Device) -> bool {
    CUDA_BUILT
        && device.is_cuda()
        && head_dim == FUSED_HEAD_DIM
        && matches!(dtype, DType::F16 | DType::BF16)
}

/// Fused attention over right-padded rows.
///
/// * `q`, `k`, `v`: `[batch, heads, len, 64]`, f16 or bf16, same dtype, on one CUDA device; any
///   strides with the last dimension contiguous and 16-byte aligned rows (see the module docs).
/// * `key_lens`: u32 `[batch]` on the same device: keys at positions `>= key_lens[b]` are
///   excluded, and query rows at those positions are written as zeros (a length of 0 gives an
///   all-zero row, never NaN).
/// * `alibi_slopes`: optional f32 `[heads]` on the same device: adds `-slope_h * |i - j|`.
/// * `scale`: multiplies `q·k` (usually `1/sqrt(64)`).
///
/// * `options`: [`KernelOptions::batch_invariant`] is the one that applies.
///
/// Returns `[batch, heads, len, 64]` (a transposed view of `[batch, len, heads, 64]` storage).
#[allow(clippy::too_many_arguments)]
pub fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_lens: &Tensor,
    alibi_slopes: Option<&Tensor>,
    scale: f32,
    options: &KernelOptions,
) -> Result<Tensor> {
    let knobs = Knobs {
        batch_invariant: options.batch_invariant,
        ..Knobs::default()
    };
    fused_padded(q, k, v, key_lens, alibi_slopes, scale, knobs)
}

/// Validation and benchmark knobs of the fused attention entry points ([`fused_padded`],
/// [`fused_packed`], [`fused_padded_rotary`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    /// Fill the output with NaN before the kernel runs (a test can then prove every element
    /// was written).
    pub poison: bool,
    /// The tile shape; `None`: the one [`FaVariant::for_len`] picks.
    pub variant: Option<FaVariant>,
    /// [`KernelOptions::batch_invariant`].
    pub batch_invariant: bool,
}

impl Knobs {
    /// Knobs that only pick the tile variant.
    pub fn variant(variant: FaVariant) -> Self {
        Self {
            variant: Some(variant),
            ..Self::default()
        }
    }
}

/// Fused attention over packed sequences: `q`, `k`, `v` are `[total_tokens, heads, 64]` (same
/// stride rules as [`fused_attention`]), sequence `i` occupying rows
/// `cu_seqlens[i] .. cu_seqlens[i + 1]` (u32 `[batch + 1]` on the device, non-decreasing);
/// `max_len` must be at least the longest sequence (rows past it stay zero). Returns
/// `[total_tokens, heads, 64]`.
#[allow(clippy::too_many_arguments)]
pub fn fused_attention_varlen(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: usize,
    alibi_slopes: Option<&Tensor>,
    scale: f32,
    options: &KernelOptions,
) -> Result<Tensor> {
    let knobs = Knobs {
        batch_invariant: options.batch_invariant,
        ..Knobs::default()
    };
    fused_packed(q, k, v, cu_seqlens, max_len, alibi_slopes, scale, knobs)
}

/// [`fused_attention`] with the [`Knobs`] of validation and benchmarks.
#[doc(hidden)]
pub fn fused_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_lens: &Tensor,
    alibi_slopes: Option<&Tensor>,
    scale: f32,
    knobs: Knobs,
) -> Result<Tensor> {
    let (b, h, _t, _d) = q.dims4()?;
    check_same_shape(q, k, v)?;
    check_scale(scale)?;
    check_aux(key_lens, DType::U32, b, "key_lens", q.device())?;
    let slopes = match alibi_slopes {
        Some(s) => {
            check_aux(s, DType::F32, h, "alibi_slopes", q.device())?;
            Some(s.contiguous()?)
        }
        None => None,
    };
    let op = FusedAttention {
        lens: SeqLens::Padded(key_lens.contiguous()?),
        slopes,
        scale,
        max_len: 0,
        knobs,
        rotary: None,
    };
    q.apply_op3_no_bwd(k, v, &op)?.transpose(1, 2)
}

/// [`fused_attention`] for ESM: q and k are taken as they come out of the projection and the
/// rotary embedding (rotate-half) is applied inside the kernel as they are loaded, instead of by
/// a separate pass over q and k. `cos`, `sin`: f32 `[positions, 32]` with positions at least the
/// row length (the angle of position p and frequency i; see [`rotary::Rotary`]).
///
/// `Ok(None)` where the kernel chosen for this length does not rotate (no Hopper GPU, or a tile
/// variant without it): rotate q and k first and call [`fused_attention`].
#[allow(clippy::too_many_arguments)]
pub fn fused_attention_rotary(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_lens: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    scale: f32,
    options: &KernelOptions,
) -> Result<Option<Tensor>> {
    let t = q.dim(2)?;
    // The rotated q and k are bit-identical to the rotary q/k kernel's (predict results
    // identical with and without), and a separate rotary pass (6% of a `predict` run) is saved.
    if !hopper_attention(q.device()) || !FaVariant::for_len(t, true).fuses_rotary() {
        return Ok(None);
    }
    let knobs = Knobs {
        batch_invariant: options.batch_invariant,
        ..Knobs::default()
    };
    fused_padded_rotary(q, k, v, key_lens, cos, sin, scale, knobs).map(Some)
}

/// [`fused_attention_rotary`] with [`Knobs`] (a tile variant must be one with
/// [`FaVariant::fuses_rotary`]), for validation and benchmarks.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn fused_padded_rotary(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_lens: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    scale: f32,
    knobs: Knobs,
) -> Result<Tensor> {
    let (b, _h, t, d) = q.dims4()?;
    check_same_shape(q, k, v)?;
    check_scale(scale)?;
    check_aux(key_lens, DType::U32, b, "key_lens", q.device())?;
    for (name, tab) in [("cos", cos), ("sin", sin)] {
        if tab.dtype() != DType::F32
            || tab.dims().len() != 2
            || tab.dim(0)? < t
            || tab.dim(1)? != d / 2
            || !tab.device().same_device(q.device())
        {
            candle_core::bail!(
                "fused attention: rotary {name} must be f32 [>= {t}, {}] on q's device, got \
                 {:?} {:?}",
                d / 2,
                tab.dtype(),
                tab.dims()
            );
        }
    }
    let op = FusedAttention {
        lens: SeqLens::Padded(key_lens.contiguous()?),
        slopes: None,
        scale,
        max_len: 0,
        knobs: Knobs {
            poison: false,
            ..knobs
        },
        rotary: Some((cos.contiguous()?, sin.contiguous()?)),
    };
    q.apply_op3_no_bwd(k, v, &op)?.transpose(1, 2)
}

/// [`fused_attention_varlen`] with the knobs of [`fused_padded`].
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn fused_packed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: usize,
    alibi_slopes: Option<&Tensor>,
    scale: f32,
    knobs: Knobs,
) -> Result<Tensor> {
    let (_total, h, _d) = q.dims3()?;
    check_same_shape(q, k, v)?;
    check_scale(scale)?;
    let n = cu_seqlens.dims1()?;
    if n < 2 {
        candle_core::bail!("fused_attention_varlen: cu_seqlens needs at least 2 entries, got {n}");
    }
    check_aux(cu_seqlens, DType::U32, n, "cu_seqlens", q.device())?;
    let slopes = match alibi_slopes {
        Some(s) => {
            check_aux(s, DType::F32, h, "alibi_slopes", q.device())?;
            Some(s.contiguous()?)
        }
        None => None,
    };
    let op = FusedAttention {
        lens: SeqLens::Packed(cu_seqlens.contiguous()?),
        slopes,
        scale,
        max_len,
        knobs,
        rotary: None,
    };
    q.apply_op3_no_bwd(k, v, &op)
}

/// The kernel keeps its running maximum in raw score units, which needs a positive scale.
fn check_scale(scale: f32) -> Result<()> {
    if !(scale > 0.0 && scale.is_finite()) {
        candle_core::bail!("fused attention: scale must be positive and finite, got {scale}");
    }
    Ok(())
}

fn check_same_shape(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    if q.dims() != k.dims() || q.dims() != v.dims() {
        candle_core::bail!(
            "fused attention: q {:?}, k {:?} and v {:?} must have the same shape",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        candle_core::bail!(
            "fused attention: q, k, v must share one dtype (got {:?}, {:?}, {:?})",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    Ok(())
}

fn check_aux(t: &Tensor, dtype: DType, len: usize, what: &str, device: &Device) -> Result<()> {
    if t.dtype() != dtype || t.dims() != [len] {
        candle_core::bail!(
            "fused attention: {what} must be {dtype:?} [{len}], got {:?} {:?}",
            t.dtype(),
            t.dims()
        );
    }
    if !t.device().same_device(device) {
        candle_core::bail!("fused attention: {what} must be on the same device as q, k, v");
    }
    Ok(())
}

/// Tile shapes the kernels are compiled in: the ones [`FaVariant::for_len`] picks.
/// `w<warps>m<m-tiles of 16 query rows per warp>`: flash_attn.cu (mma.sync, every CUDA GPU the
/// build targets). `p<consumer warpgroups>n<key tile>`: flash_attn_sm90.cu (wgmma, compute
/// capability 9.0 only), 64 query rows per consumer warpgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FaVariant {
    /// 4 warps x 16 rows: 64 query rows per block (134 registers); rows shorter than 768.
    W4M1,
    /// 4 warps x 32 rows: 128 query rows per block, each K/V fragment feeds two products; rows
    /// of 768 and longer.
    W4M2,
    /// Hopper, warp-specialized and persistent: one block per multiprocessor walks the query
    /// blocks; a producer warpgroup loads Q, K and V (the next block's while the current one
    /// ends), 3 consumer warpgroups (192 query rows) take turns on the tensor cores; 128-key
    /// tiles; rows of 768 and longer.
    P3N128,
    /// Persistent: 3 consumers (192 query rows), 64-key tiles, rotary embedding in the producer;
    /// rows shorter than 768.
    P3N64,
}

/// How a persistent (Hopper) kernel shares out its work items (`Sched` in flash_attn_sm90.cu):
/// the first `n_dp` items whole, one per block in turn; the key tiles of the others in equal
/// contiguous ranges, one per block, items cut between blocks combined through a workspace.
/// Without the split the last round of items leaves multiprocessors idle: 4x2048 at 192 query
/// rows is 880 items for 132 SMs, 6.67 rounds that take 7. (Measured in a kernel harness: -3.5%
/// at 8x1026 and 8x2048 on an H100.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkSplit {
    pub grid: usize,
    pub n_dp: usize,
    /// Key tiles of the longest row (the unit of the shared-out part).
    pub tiles: usize,
}

/// Rows of at least this many tokens take the attention variant for long rows
/// ([`FaVariant::for_len`]); batches never mix rows on both sides (`plan_batches`), so that a
/// row's variant, and its result, does not depend on the batch it is in.
pub const LONG_ROWS: usize = 768;

impl WorkSplit {
    /// `tiles`: key tiles per item of the longest row; `sms`: multiprocessors; with
    /// `batch_invariant` ([`KernelOptions::batch_invariant`]) items are never cut, since how an
    /// item is cut depends on how many items the batch has.
    pub fn plan(n_items: usize, tiles: usize, sms: usize, batch_invariant: bool) -> WorkSplit {
        let whole = WorkSplit {
            grid: n_items.min(sms).max(1),
            n_dp: n_items,
            tiles: tiles.max(1),
        };
        if batch_invariant {
            return whole;
        }
        // Short rows: too few tiles to cut finely, and many items even out anyway. Fewer items
        // than multiprocessors: cutting every item costs more in merges than it gives (measured
        // slower at 1x502 on an H100).
        if tiles < 4 || n_items <= sms || n_items.is_multiple_of(sms) {
            return whole;
        }
        // Whole items for all rounds but the last full one; that one and the remainder
        // (between one and two rounds) shared out by tiles.
        let n_dp = (n_items / sms - 1) * sms;
        let units = (n_items - n_dp) * tiles;
        let grid = sms.min(units);
        // The kernel counts units in 32 bits (units * grid < 2^31).
        if units.checked_mul(grid).is_none_or(|x| x >= 1 << 31) {
            return whole;
        }
        WorkSplit { grid, n_dp, tiles }
    }
}

impl FaVariant {
    pub const ALL: [FaVariant; 4] = [
        FaVariant::W4M1,
        FaVariant::W4M2,
        FaVariant::P3N128,
        FaVariant::P3N64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::W4M1 => "w4m1",
            Self::W4M2 => "w4m2",
            Self::P3N128 => "p3n128",
            Self::P3N64 => "p3n64",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s.trim())
    }

    /// Whether the kernel can apply the rotary embedding to q and k as it loads them (p3n64;
    /// not p3n128, whose consumers need every register they have).
    pub fn fuses_rotary(self) -> bool {
        self == Self::P3N64
    }

    /// Whether the kernel is persistent and warp-specialized (the `p…` variants): a grid of one
    /// block per multiprocessor that walks the query blocks, which takes the item count as
    /// arguments; a producer warpgroup loads Q/K/V for the consumers and computes no query rows.
    pub fn persistent(self) -> bool {
        matches!(self, Self::P3N128 | Self::P3N64)
    }

    /// Whether this is a wgmma (compute capability 9.0 only) variant.
    pub fn hopper(self) -> bool {
        self.persistent()
    }

    /// The variants that run on a GPU with (`hopper`) or without the wgmma kernels.
    pub fn available(hopper: bool) -> Vec<FaVariant> {
        Self::ALL
            .into_iter()
            .filter(|v| hopper || !v.hopper())
            .collect()
    }

    /// Query rows per block.
    pub fn block_m(self) -> usize {
        match self {
            Self::W4M1 => 64,
            Self::W4M2 => 128,
            Self::P3N128 | Self::P3N64 => 192,
        }
    }

    pub fn threads(self) -> u32 {
        match self {
            Self::W4M1 | Self::W4M2 => 128,
            // Three consumer warpgroups and the producer warpgroup.
            Self::P3N128 | Self::P3N64 => 512,
        }
    }

    /// Key rows per tile of the wgmma kernels.
    pub fn key_tile(self) -> usize {
        match self {
            Self::P3N128 => 128,
            _ => 64,
        }
    }

    /// Dynamic shared memory of a block in bytes (the mma.sync kernels use static memory): two
    /// Q tiles, four stages of K and V tiles (128 bytes a row), 1 KiB of alignment slack.
    pub fn dynamic_smem(self) -> u32 {
        if !self.hopper() {
            return 0;
        }
        ((2 * self.block_m() + 4 * 2 * self.key_tile()) * 128 + 1024) as u32
    }

    /// The variant for rows of `len` tokens. On a compute capability 9.0 GPU (`hopper`) the
    /// persistent wgmma kernels: p3n64 below 768 tokens (a 168-token row is one query block of
    /// 192 rows and three 64-key tiles; the fastest at 64x168), p3n128 from 768 on (the fastest
    /// at 8x1026 and 4x2048 and in whole FastESM2 passes at 2x1024 and 1x2048). Elsewhere w4m1
    /// for short rows (more blocks, 3 per SM) and w4m2 from 768 on (each K/V fragment feeds two
    /// products; 10-12% faster at 2048 on an H100). Only these four are compiled: the other
    /// tile shapes tried (docs/GPU.md) were slower everywhere.
    pub fn for_len(len: usize, hopper: bool) -> Self {
        match (hopper, len >= LONG_ROWS) {
            (true, false) => Self::P3N64,
            (true, true) => Self::P3N128,
            (false, false) => Self::W4M1,
            (false, true) => Self::W4M2,
        }
    }

    /// The variant doctor's per-case lines show (the one for short rows).
    pub fn default_for_run(hopper: bool) -> Self {
        Self::for_len(256, hopper)
    }
}

/// Whether `device` runs the wgmma attention kernels (a CUDA build and a compute capability 9.0
/// GPU: H100, H200, GH200).
pub fn hopper_attention(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return cuda::is_sm90(d);
    }
    let _ = device;
    false
}

/// Activation of [`bias_act`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    /// Exact (erf) GELU.
    GeluErf,
}

/// `act(x + bias)`, or `x + bias + residual` (with `act` = identity): the epilogue of a linear
/// layer in one pass over memory on CUDA (f16/bf16/f32, contiguous `x` whose last dimension is a
/// multiple of 8), with candle's ordinary ops elsewhere. `bias`: `[cols]`; `residual`: shape of
/// `x`. Computed in f32 on CUDA.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Act, residual: Option<&Tensor>) -> Result<Tensor> {
    if residual.is_some() && act != Act::Identity {
        candle_core::bail!("bias_act: a residual goes with the identity activation only");
    }
    let cols = x.dims().last().copied().unwrap_or(0);
    let fast = CUDA_BUILT
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F16 | DType::BF16 | DType::F32)
        && bias.dtype() == x.dtype()
        && bias.dims() == [cols]
        && cols % 8 == 0
        && x.elem_count() / 4 < u32::MAX as usize
        && residual.is_none_or(|r| r.dims() == x.dims() && r.dtype() == x.dtype());
    if fast {
        let x = x.contiguous()?;
        let op = BiasAct {
            act,
            residual: residual.map(|r| r.contiguous()).transpose()?,
        };
        return x.apply_op2_no_bwd(&bias.contiguous()?, &op);
    }
    if cpu_ops::is_cpu_f32(x)
        && cpu_ops::is_cpu_f32(bias)
        && residual.is_none_or(|r| cpu_ops::is_cpu_f32(r) && r.dims() == x.dims())
    {
        return cpu_ops::cpu_bias_act(x, bias, act == Act::GeluErf, residual);
    }
    let y = x.broadcast_add(bias)?;
    let y = match act {
        Act::Identity => y,
        Act::GeluErf => gelu_erf(&y)?,
    };
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// Exact (erf) GELU: the CPU's multi-threaded, vectorized pass for f32 on the CPU
/// (`cpu_ops`), candle's op elsewhere.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if cpu_ops::is_cpu_f32(x) {
        cpu_ops::cpu_gelu_erf(x)
    } else {
        x.gelu_erf()
    }
}

/// The candle op behind [`bias_act`].
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct BiasAct {
    pub(crate) act: Act,
    pub(crate) residual: Option<Tensor>,
}

impl candle_core::CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "virnucpro-bias-act"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("bias_act's fused op needs CUDA (the caller falls back to candle ops)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_act(self, x, lx, b, lb)
    }
}

/// How the rows of a batch are delimited.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum SeqLens {
    /// u32 `[batch]`, right-padded `[B, H, T, D]` inputs.
    Padded(Tensor),
    /// u32 `[batch + 1]` offsets into packed `[total, H, D]` inputs.
    Packed(Tensor),
}

/// The candle op behind [`fused_attention`] / [`fused_attention_varlen`].
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct FusedAttention {
    pub(crate) lens: SeqLens,
    pub(crate) slopes: Option<Tensor>,
    pub(crate) scale: f32,
    /// Longest sequence (packed layout only).
    pub(crate) max_len: usize,
    /// Poisoned output, tile variant (`None`: [`FaVariant::for_len`]), batch invariance.
    pub(crate) knobs: Knobs,
    /// Rotary tables (f32 cos, sin `[positions, head_dim / 2]`): q and k are rotated in the
    /// kernel (variants with [`FaVariant::fuses_rotary`] only).
    pub(crate) rotary: Option<(Tensor, Tensor)>,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "virnucpro-fused-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "fused attention needs CUDA: the tensors are on the CPU (use the materialized path, \
             `--attention naive`, or run on a CUDA device)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, q, lq, k, lk, v, lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces each block of a persistent kernel works on, as `Sched::walk` in
    /// flash_attn_sm90.cu cuts them: (item, first tile, end tile, split).
    fn walk(sp: &WorkSplit, n_items: usize, block: usize) -> Vec<(usize, usize, usize, bool)> {
        let mut out = Vec::new();
        let mut it = block;
        while it < sp.n_dp {
            out.push((it, 0, sp.tiles, false));
            it += sp.grid;
        }
        let units = (n_items - sp.n_dp) * sp.tiles;
        let (mut u, end) = (units * block / sp.grid, units * (block + 1) / sp.grid);
        while u < end {
            let i = u / sp.tiles;
            let t0 = u - i * sp.tiles;
            let t1 = sp.tiles.min(t0 + end - u);
            out.push((sp.n_dp + i, t0, t1, t0 != 0 || t1 != sp.tiles));
            u += t1 - t0;
        }
        out
    }

    /// `Sched::block_of`: the block whose range holds tail unit x.
    fn block_of(sp: &WorkSplit, n_items: usize, x: usize) -> usize {
        let units = (n_items - sp.n_dp) * sp.tiles;
        ((x + 1) * sp.grid).div_ceil(units) - 1
    }

    /// The work split covers every key tile of every item exactly once, the last round is
    /// shared out evenly, and the workspace slots of split pieces never collide.
    #[test]
    fn work_split_covers_every_tile_once_and_balances() {
        let sms = 132;
        // (items, tiles): doctor's 4x2048 and 8x1026 (p3n128), and odd sizes.
        for (n_items, tiles) in [(880, 16), (960, 9), (133, 4), (1000, 5), (300, 40)] {
            let sp = WorkSplit::plan(n_items, tiles, sms, false);
            let whole = WorkSplit::plan(n_items, tiles, sms, true);
            assert_eq!(
                (whole.n_dp, whole.grid),
                (n_items, sms),
                "batch invariance never cuts an item"
            );
            assert!(
                sp.n_dp < n_items,
                "{n_items}x{tiles}: expected a split, got {sp:?}"
            );
            assert!(sp.n_dp.is_multiple_of(sp.grid));
            let mut seen = vec![0u32; n_items * tiles];
            let mut load = Vec::new();
            let mut slots = std::collections::HashSet::new();
            for b in 0..sp.grid {
                let pieces = walk(&sp, n_items, b);
                assert!(!pieces.is_empty(), "block {b} has no work");
                load.push(pieces.iter().map(|p| p.2 - p.1).sum::<usize>());
                for &(item, t0, t1, split) in &pieces {
                    for t in t0..t1 {
                        seen[item * tiles + t] += 1;
                    }
                    if split {
                        let u0 = (item - sp.n_dp) * tiles;
                        let (bf, bl) = (
                            block_of(&sp, n_items, u0),
                            block_of(&sp, n_items, u0 + tiles - 1),
                        );
                        assert!(
                            bf <= b && b <= bl && bl > bf,
                            "item {item}: block {b} outside {bf}..={bl}"
                        );
                        assert!(slots.insert((b, usize::from(b == bf))), "slot reused");
                    }
                }
            }
            assert!(
                seen.iter().all(|&n| n == 1),
                "{n_items}x{tiles}: a tile missed or repeated"
            );
            let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n_items}x{tiles}: loads {lo}..{hi} tiles");
            let ideal = (n_items * tiles).div_ceil(sp.grid);
            assert_eq!(*hi, ideal, "{n_items}x{tiles}: not the ideal makespan");
        }
        // No split: short rows, whole rounds, fewer items than multiprocessors.
        for (n_items, tiles) in [(880, 3), (264, 16), (60, 8)] {
            let sp = WorkSplit::plan(n_items, tiles, sms, false);
            assert_eq!(sp.n_dp, n_items);
            assert_eq!(sp.grid, n_items.min(sms));
        }
    }

    #[test]
    fn fused_is_unavailable_on_cpu() {
        assert!(!fused_attention_available(DType::F16, 64, &Device::Cpu));
    }

    #[test]
    fn fused_on_cpu_says_it_needs_cuda() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 1, 4, 64), DType::F16, &dev)?;
        let lens = Tensor::new(&[4u32], &dev)?;
        let err =
            fused_attention(&q, &q, &q, &lens, None, 0.125, &KernelOptions::default()).unwrap_err();
        assert!(err.to_string().contains("needs CUDA"), "{err}");
        Ok(())
    }

    /// The candle fallbacks of the fused ops (what the CPU runs) agree with the f32 reference.
    #[test]
    fn fused_op_fallbacks_match_reference_on_cpu() -> anyhow::Result<()> {
        for (name, rel, limit) in
            selftest::check_fused_ops(&Device::Cpu, &KernelOptions::default())?
        {
            if name.ends_with("F32") {
                assert!(rel <= limit, "{name}: {rel:.2e} > {limit:.0e}");
            }
        }
        Ok(())
    }

    /// GPU check of the fused ops (cuBLASLt linear, LayerNorm, rotary q/k, gated GELU) and the
    /// epilogues against candle's ops in f32.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_ops_match_candle_on_gpu() -> anyhow::Result<()> {
        let dev = crate::open_cuda(0, &KernelOptions::default())?;
        for (name, rel, limit) in selftest::check_bias_act(&dev, &KernelOptions::default())? {
            assert!(rel <= limit, "{name}: {rel:.2e} > {limit:.0e}");
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a compute capability 9.0 GPU"]
    fn rotary_in_attention_matches_on_gpu() -> anyhow::Result<()> {
        let dev = crate::open_cuda(0, &KernelOptions::default())?;
        assert!(hopper_attention(&dev), "this test needs an H100/H200");
        let checks = selftest::check_rotary_attention(&dev)?;
        assert_eq!(checks.len(), 2, "p3n64 x 2 dtypes");
        for (name, rel, limit) in checks {
            assert!(rel <= limit, "{name}: {rel:.2e} > {limit:.0e}");
        }
        Ok(())
    }

    #[test]
    fn tile_variants_fit_the_hardware_and_hopper_ones_stay_on_hopper() {
        for v in FaVariant::ALL {
            assert_eq!(
                FaVariant::parse(v.name()),
                Some(v),
                "{} round-trips",
                v.name()
            );
            assert_eq!(
                v.threads() as usize % 128,
                0,
                "{}: whole warpgroups",
                v.name()
            );
            if v.hopper() {
                // 64 query rows per computing warpgroup; shared memory within the 227 KiB a
                // block may use.
                let consumers = v.threads() as usize / 128 - 1; // one producer warpgroup
                assert_eq!(v.block_m(), 64 * consumers, "{}", v.name());
                assert!(
                    v.dynamic_smem() <= 227 * 1024,
                    "{}: {}",
                    v.name(),
                    v.dynamic_smem()
                );
                assert!(
                    v.dynamic_smem() > 48 * 1024,
                    "{} needs the opt-in limit",
                    v.name()
                );
            } else {
                assert_eq!(v.dynamic_smem(), 0, "{}: static shared memory", v.name());
            }
        }
        assert!(FaVariant::available(false).iter().all(|v| !v.hopper()));
        assert_eq!(FaVariant::available(true).len(), FaVariant::ALL.len());
        for len in [1, 168, 502, 1026, 2048] {
            assert!(FaVariant::for_len(len, true).hopper(), "len {len}");
            assert!(!FaVariant::for_len(len, false).hopper(), "len {len}");
        }
        assert_eq!(FaVariant::for_len(2048, false), FaVariant::W4M2);
        assert_eq!(FaVariant::for_len(168, false), FaVariant::W4M1);
        assert_eq!(FaVariant::for_len(168, true), FaVariant::P3N64);
        assert_eq!(FaVariant::for_len(1026, true), FaVariant::P3N128);
        // Every compiled variant is one the dispatcher picks.
        for v in FaVariant::ALL {
            let picked = [1, 2048]
                .into_iter()
                .any(|len| FaVariant::for_len(len, v.hopper()) == v);
            assert!(picked, "{} is compiled but never chosen", v.name());
        }
    }

    #[test]
    fn no_hopper_kernels_off_cuda() {
        assert!(!hopper_attention(&Device::Cpu));
    }

    /// GPU check of the kernel against the materialized path (`cargo test --features cuda --
    /// --ignored` on a machine with a CUDA GPU; `virnucpro doctor` runs the same cases).
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_matches_materialized_on_gpu() -> anyhow::Result<()> {
        let dev = crate::open_cuda(0, &KernelOptions::default())?;
        for variant in FaVariant::available(hopper_attention(&dev)) {
            for case in selftest::cases() {
                let r = selftest::run_case(&case, &dev, Some(variant))?;
                assert!(r.pass, "{} ({}): {}", case.name, variant.name(), r.detail);
            }
        }
        Ok(())
    }
}
