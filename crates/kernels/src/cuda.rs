//! Launching the fused attention kernel (`flash_attn.cu`) on candle's CUDA device.

use candle_core::backend::BackendStorage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use candle_core::cuda_backend::cudarc::driver::{
    result as drv, sys, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DevicePtr,
    DevicePtrMut, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{DeviceId, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};

use super::{Act, BiasAct, FaVariant, FusedAttention, SeqLens, FUSED_HEAD_DIM};

/// `$f::<T>(args)` with `T` the element type of `$dtype`: f16, bf16 or f32.
macro_rules! by_dtype {
    ($dtype:expr, $what:literal, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            DType::F32 => $f::<f32>($($arg),*),
            dt => candle_core::bail!("{}: unsupported dtype {dt:?}", $what),
        }
    };
}
pub(super) use by_dtype;

// The kernels as build.rs compiled them: one fatbin per source, with machine code for the build's
// compute capability (compute_90a for the Hopper file) and the PTX, which the driver compiles
// only for other GPUs: with PTX alone every fresh machine or container would JIT-compile at first
// use (ptxas needs ~9 s for the Hopper file alone).
const FLASH_ATTN_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flash_attn.fatbin"));
const MODULE: &str = "virnucpro_flash_attn";
/// `cuda/flash_attn_sm90.cu` (loads on compute capability 9.0 only).
const FLASH_ATTN_SM90_IMAGE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flash_attn_sm90.fatbin"));
const SM90_MODULE: &str = "virnucpro_flash_attn_sm90";
/// `cuda/fused_ops.cu`.
const FUSED_OPS_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fused_ops.fatbin"));
const OPS_MODULE: &str = "virnucpro_fused_ops";

/// A kernel loaded on a candle device, launched on that device's stream. (candle's own loader,
/// `get_or_load_custom_func`, takes PTX text only, not a fatbin.)
struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Function `name` of the module built from `image`, loaded once per candle device and kept for
/// the life of the process (a program opens one device; tests a few).
fn load_kernel(
    dev: &CudaDevice,
    name: &str,
    module: &'static str,
    image: &'static [u8],
) -> Result<Kernel> {
    type Modules = HashMap<(DeviceId, &'static str), Arc<CudaModule>>;
    static MODULES: OnceLock<Mutex<Modules>> = OnceLock::new();
    let stream = dev.cuda_stream();
    let loaded = {
        let mut modules = MODULES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match modules.get(&(dev.id(), module)) {
            Some(m) => m.clone(),
            None => {
                let m = stream
                    .context()
                    .load_module(Ptx::from_binary(image.to_vec()))
                    .w()?;
                modules.insert((dev.id(), module), m.clone());
                m
            }
        }
    };
    let func = loaded.load_function(name).w()?;
    Ok(Kernel { func, stream })
}

/// Strides (in elements) of one operand: batch, token, head.
#[derive(Debug, Clone, Copy)]
struct Strides {
    b: i64,
    t: i64,
    h: i64,
}

/// Checks an operand's layout and returns its strides. `packed`: `[total, H, D]`, else
/// `[B, H, T, D]`.
fn strides(layout: &Layout, packed: bool, what: &str) -> Result<Strides> {
    let dims = layout.dims();
    let st = layout.stride();
    let d = *dims.last().unwrap_or(&0);
    if d != FUSED_HEAD_DIM {
        candle_core::bail!("fused attention: head size must be {FUSED_HEAD_DIM}, {what} has {d}");
    }
    if st[st.len() - 1] != 1 {
        candle_core::bail!(
            "fused attention: the head dimension of {what} must be contiguous (stride {:?}); call \
             .contiguous() first",
            st
        );
    }
    let s = if packed {
        Strides {
            b: 0,
            t: st[0] as i64,
            h: st[1] as i64,
        }
    } else {
        Strides {
            b: st[0] as i64,
            t: st[2] as i64,
            h: st[1] as i64,
        }
    };
    // cp.async moves 16-byte chunks: every row must start 16-byte aligned.
    let aligned = |x: i64| x % 8 == 0;
    let size1 = |i: usize| dims[i] == 1; // a stride of a size-1 dim never moves the pointer
    let ok_b = packed || size1(0) || aligned(s.b);
    let ok_t = size1(if packed { 0 } else { 2 }) || aligned(s.t);
    let ok_h = size1(1) || aligned(s.h);
    if !(ok_b && ok_t && ok_h && layout.start_offset().is_multiple_of(8)) {
        candle_core::bail!(
            "fused attention: {what} rows are not 16-byte aligned (strides {st:?}, offset {}); \
             call .contiguous() first",
            layout.start_offset()
        );
    }
    Ok(s)
}

fn u32_view<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    match storage {
        Storage::Cuda(s) => Ok(s.as_cuda_slice::<u32>()?.slice(layout.start_offset()..)),
        _ => candle_core::bail!("fused attention: {what} must be on the CUDA device"),
    }
}

fn f32_view<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match storage {
        Storage::Cuda(s) => Ok(s.as_cuda_slice::<f32>()?.slice(layout.start_offset()..)),
        _ => candle_core::bail!("fused attention: {what} must be on the CUDA device"),
    }
}

pub(super) fn forward(
    op: &FusedAttention,
    q: &CudaStorage,
    lq: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let rows = if matches!(op.lens, SeqLens::Packed(_)) {
        op.max_len
    } else {
        lq.dims()[2]
    };
    let dev = q.device();
    let hopper = match op.knobs.variant {
        // An explicitly requested portable variant needs nothing from the wgmma module.
        Some(v) if !v.hopper() => false,
        _ => sm90_ready(dev, op.knobs.variant.is_some())?,
    };
    let variant = op
        .knobs
        .variant
        .unwrap_or_else(|| FaVariant::for_len(rows, hopper));
    if op.rotary.is_some() && !variant.fuses_rotary() {
        candle_core::bail!(
            "fused attention: tile variant {} does not apply the rotary embedding; rotate q and \
             k first",
            variant.name()
        );
    }
    if variant.hopper() && !hopper {
        candle_core::bail!(
            "fused attention: tile variant {} needs a compute capability 9.0 GPU (H100/H200)",
            variant.name()
        );
    }
    match q.dtype() {
        DType::F16 => launch::<f16>(op, q, lq, k, lk, v, lv, variant, "f16"),
        DType::BF16 => launch::<bf16>(op, q, lq, k, lk, v, lv, variant, "bf16"),
        dt => candle_core::bail!(
            "fused attention supports f16 and bf16, got {dt:?} (use the materialized path)"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn launch<T>(
    op: &FusedAttention,
    q: &CudaStorage,
    lq: &Layout,
    k: &CudaStorage,
    lk: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    variant: FaVariant,
    dtype: &str,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr + ValidAsZeroBits,
{
    let dev: &CudaDevice = q.device();
    let packed = matches!(op.lens, SeqLens::Packed(_));
    let sq = strides(lq, packed, "q")?;
    let sk = strides(lk, packed, "k")?;
    let sv = strides(lv, packed, "v")?;
    let g = Geometry::of(op, lq.dims(), packed)?;
    let n_out = g.out_shape.elem_count();
    let qs = q.as_cuda_slice::<T>()?.slice(lq.start_offset()..);
    let ks = k.as_cuda_slice::<T>()?.slice(lk.start_offset()..);
    let vs = v.as_cuda_slice::<T>()?.slice(lv.start_offset()..);
    let mut out = alloc_output::<T>(dev, n_out, packed, op.knobs.poison)?;
    if n_out == 0 || g.grid_rows == 0 || g.batch == 0 {
        return Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), g.out_shape));
    }
    let (lens_storage, lens_layout) = match &op.lens {
        SeqLens::Padded(t) | SeqLens::Packed(t) => t.storage_and_layout(),
    };
    let lens = u32_view(&lens_storage, lens_layout, "key_lens / cu_seqlens")?;
    let slopes_guard = op.slopes.as_ref().map(Tensor::storage_and_layout);
    let slopes = match &slopes_guard {
        Some((s, l)) => Some(f32_view(s, l, "alibi_slopes")?),
        None => None,
    };
    let func = attention_kernel(dev, variant, dtype)?;
    let n_qblocks = g.grid_rows.div_ceil(variant.block_m());
    // Persistent kernels: work items (query block, head, sequence) walked by one block per
    // multiprocessor (one fits: 384-512 threads at up to 168 registers).
    let n_items = n_qblocks * g.heads * g.batch;
    let split = work_split(dev, op, variant, g.grid_rows, n_items)?;
    let cfg = LaunchConfig {
        grid_dim: split.map_or((n_qblocks as u32, g.heads as u32, g.batch as u32), |sp| {
            (sp.grid as u32, 1, 1)
        }),
        block_dim: (variant.threads(), 1, 1),
        shared_mem_bytes: variant.dynamic_smem(),
    };
    // Partial results of the items split between blocks, and their piece counters.
    let ws = match &split {
        Some(sp) if sp.n_dp < n_items => Some(split_workspace(dev, sp.grid)?),
        _ => None,
    };
    let mut ws_guard = ws
        .as_ref()
        .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner));
    let rot_guard = op
        .rotary
        .as_ref()
        .map(|(c, s)| (c.storage_and_layout(), s.storage_and_layout()));
    let persistent = if variant.persistent() {
        let rot = match &rot_guard {
            Some(((cs, cl), (ss, sl))) => Some(rotary_views(cs, cl, ss, sl, g.grid_rows)?),
            None => None,
        };
        // q in boxes of a query block, k and v in boxes of a key tile.
        let total_rows = if packed { lq.dims()[0] } else { g.grid_rows };
        let maps = tma_maps(
            dev,
            q.dtype(),
            (total_rows, g.heads, if packed { 1 } else { g.batch }),
            [
                (&qs, &sq, variant.block_m()),
                (&ks, &sk, variant.key_tile()),
                (&vs, &sv, variant.key_tile()),
            ],
        );
        Some(PersistentArgs {
            rot,
            items: [n_qblocks as i32, g.heads as i32, n_items as i32],
            split: split.map_or([0; 2], |sp| [sp.n_dp as i32, sp.tiles as i32]),
            ws: ws_guard.as_deref_mut(),
            tma_flag: maps.is_some().into(),
            maps: maps.unwrap_or([TmaMap::ZERO; 3]),
        })
    } else {
        None
    };
    let mut args = KernelArgs {
        q: qs,
        k: ks,
        v: vs,
        out: &mut out,
        lens,
        packed,
        slopes,
        t_rows: if packed { 0 } else { g.grid_rows as i32 },
        strides: [sq, sk, sv, g.out_strides],
        scale_log2: op.scale * std::f32::consts::LOG2_E,
        persistent,
    };
    enqueue(&func, cfg, &mut args)?;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), g.out_shape))
}

/// The arguments of an attention kernel (`flash_attn.cu`, `flash_attn_sm90.cu`).
struct KernelArgs<'a, T> {
    q: CudaView<'a, T>,
    k: CudaView<'a, T>,
    v: CudaView<'a, T>,
    out: &'a mut CudaSlice<T>,
    /// Key lengths (padded) or `cu_seqlens` (packed).
    lens: CudaView<'a, u32>,
    packed: bool,
    slopes: Option<CudaView<'a, f32>>,
    t_rows: i32,
    /// q, k, v, out.
    strides: [Strides; 4],
    scale_log2: f32,
    persistent: Option<PersistentArgs<'a>>,
}

/// The persistent kernels' arguments after the common ones.
struct PersistentArgs<'a> {
    rot: Option<(CudaView<'a, f32>, CudaView<'a, f32>)>,
    /// Query blocks, heads, items.
    items: [i32; 3],
    /// Whole items, key tiles per item ([`super::WorkSplit`]).
    split: [i32; 2],
    ws: Option<&'a mut SplitWorkspace>,
    tma_flag: i32,
    maps: [TmaMap; 3],
}

/// Launches `func` with `a`, the arguments in the order of the kernels' signatures.
fn enqueue<T: DeviceRepr>(
    func: &Kernel,
    cfg: LaunchConfig,
    a: &mut KernelArgs<'_, T>,
) -> Result<()> {
    let null: u64 = 0;
    let mut b = func.builder();
    b.arg(&a.q);
    b.arg(&a.k);
    b.arg(&a.v);
    b.arg(&mut *a.out);
    if a.packed {
        b.arg(&null);
        b.arg(&a.lens);
    } else {
        b.arg(&a.lens);
        b.arg(&null);
    }
    match &a.slopes {
        Some(s) => b.arg(s),
        None => b.arg(&null),
    };
    b.arg(&a.t_rows);
    for s in &a.strides {
        b.arg(&s.b);
        b.arg(&s.t);
        b.arg(&s.h);
    }
    b.arg(&a.scale_log2);
    if let Some(p) = &mut a.persistent {
        match &p.rot {
            Some((c, s)) => {
                b.arg(c);
                b.arg(s);
            }
            None => {
                b.arg(&null);
                b.arg(&null);
            }
        }
        for x in p.items.iter().chain(&p.split) {
            b.arg(x);
        }
        match &mut p.ws {
            Some(w) => {
                b.arg(&mut w.part);
                b.arg(&mut w.count);
            }
            None => {
                b.arg(&null);
                b.arg(&null);
            }
        }
        b.arg(&p.tma_flag);
        for m in &p.maps {
            b.arg(m);
        }
    }
    // SAFETY: argument list matches the kernel's signature in flash_attn.cu; all buffers live
    // until the launch is enqueued (cudarc records their use on the stream).
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// TMA maps of q, k and v (view, strides, box rows each) over `(rows, heads, batch)` (packed:
/// all tokens as the rows of one sequence), for the persistent kernels' loads, over the same
/// elements as the pointers; `None` where one cannot be made (the kernel then loads with
/// cp.async).
fn tma_maps<T: DeviceRepr>(
    dev: &CudaDevice,
    dtype: DType,
    (rows, heads, batch): (usize, usize, usize),
    operands: [(&CudaView<'_, T>, &Strides, usize); 3],
) -> Option<[TmaMap; 3]> {
    let stream = dev.cuda_stream();
    let map = |(view, s, box_rows): (&CudaView<'_, T>, &Strides, usize)| {
        let (ptr, _sync) = view.device_ptr(&stream);
        TmaMap::encode(ptr, dtype, s, rows, heads, batch, box_rows)
    };
    let [q, k, v] = operands;
    Some([map(q)?, map(k)?, map(v)?])
}

/// The grid and output of one fused attention call.
struct Geometry {
    batch: usize,
    heads: usize,
    /// Rows per sequence in the grid (the longest sequence's, packed).
    grid_rows: usize,
    out_shape: Shape,
    out_strides: Strides,
}

impl Geometry {
    /// From q's dims: `[total, heads, 64]` packed, `[batch, heads, len, 64]` padded. The output
    /// is `[total, heads, 64]` or `[batch, len, heads, 64]`.
    fn of(op: &FusedAttention, dims: &[usize], packed: bool) -> Result<Geometry> {
        let g = if packed {
            let (total, h) = (dims[0], dims[1]);
            let n = match &op.lens {
                SeqLens::Packed(cu) => cu.dims1()? - 1,
                SeqLens::Padded(_) => unreachable!(),
            };
            Geometry {
                batch: n,
                heads: h,
                grid_rows: op.max_len,
                out_shape: Shape::from((total, h, FUSED_HEAD_DIM)),
                out_strides: Strides {
                    b: 0,
                    t: (h * FUSED_HEAD_DIM) as i64,
                    h: FUSED_HEAD_DIM as i64,
                },
            }
        } else {
            let (b, h, t) = (dims[0], dims[1], dims[2]);
            Geometry {
                batch: b,
                heads: h,
                grid_rows: t,
                out_shape: Shape::from((b, t, h, FUSED_HEAD_DIM)),
                out_strides: Strides {
                    b: (t * h * FUSED_HEAD_DIM) as i64,
                    t: (h * FUSED_HEAD_DIM) as i64,
                    h: FUSED_HEAD_DIM as i64,
                },
            }
        };
        if g.batch > 65535 || g.heads > 65535 {
            candle_core::bail!(
                "fused attention: batch {} or heads {} over 65535",
                g.batch,
                g.heads
            );
        }
        Ok(g)
    }
}

/// The output buffer: zeros where rows may be left unwritten (packed sequences longer than
/// `max_len`), NaN everywhere with `poison` (a test then proves every element was written).
fn alloc_output<T: DeviceRepr + ValidAsZeroBits>(
    dev: &CudaDevice,
    n_out: usize,
    packed: bool,
    poison: bool,
) -> Result<CudaSlice<T>> {
    let mut out: CudaSlice<T> = if packed && !poison {
        dev.alloc_zeros::<T>(n_out)?
    } else {
        // SAFETY: every element is written by the kernel (padded rows as zeros).
        unsafe { dev.alloc::<T>(n_out)? }
    };
    if poison && n_out > 0 {
        let stream = dev.cuda_stream();
        let (ptr, _sync) = out.device_ptr_mut(&stream);
        // SAFETY: `ptr` is a live allocation of n_out elements on this stream.
        unsafe {
            drv::memset_d8_async(
                ptr,
                0xff,
                n_out * std::mem::size_of::<T>(),
                stream.cu_stream(),
            )
        }
        .w()?;
    }
    Ok(out)
}

/// The kernel of a tile variant in `dtype` ("f16", "bf16"), loaded (the wgmma ones with their
/// dynamic shared memory allowed).
fn attention_kernel(dev: &CudaDevice, variant: FaVariant, dtype: &str) -> Result<Kernel> {
    if variant.hopper() {
        let kernel = format!("virnucpro_flash_attn_sm90_{dtype}_{}", variant.name());
        let func = load_kernel(dev, &kernel, SM90_MODULE, FLASH_ATTN_SM90_IMAGE)?;
        allow_dynamic_smem(&func.func, variant.dynamic_smem())?;
        Ok(func)
    } else {
        let kernel = format!("virnucpro_flash_attn_{dtype}_{}", variant.name());
        load_kernel(dev, &kernel, MODULE, FLASH_ATTN_IMAGE)
    }
}

/// How a persistent kernel shares out its `n_items` work items over the multiprocessors
/// ([`super::WorkSplit`]); `None` for the other kernels (one block per query block).
fn work_split(
    dev: &CudaDevice,
    op: &FusedAttention,
    variant: FaVariant,
    grid_rows: usize,
    n_items: usize,
) -> Result<Option<super::WorkSplit>> {
    if !variant.persistent() {
        return Ok(None);
    }
    if n_items > i32::MAX as usize {
        candle_core::bail!("fused attention: {n_items} work items do not fit the kernel's i32");
    }
    let sms = dev
        .cuda_stream()
        .context()
        .attribute(
            candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .w()?
        .max(1) as usize;
    let tiles = grid_rows.div_ceil(variant.key_tile());
    Ok(Some(super::WorkSplit::plan(
        n_items,
        tiles,
        sms,
        op.knobs.batch_invariant,
    )))
}

/// The rotary cos and sin tables as f32 views, checked to cover `grid_rows` positions.
fn rotary_views<'a>(
    cs: &'a Storage,
    cl: &Layout,
    ss: &'a Storage,
    sl: &Layout,
    grid_rows: usize,
) -> Result<(CudaView<'a, f32>, CudaView<'a, f32>)> {
    if cl.dims()[0] < grid_rows || sl.dims()[0] < grid_rows {
        candle_core::bail!("fused attention: rotary tables shorter than the rows");
    }
    Ok((
        f32_view(cs, cl, "rotary cos")?,
        f32_view(ss, sl, "rotary sin")?,
    ))
}

/// A TMA tensor map (`CUtensorMap`, `TmaMap` in flash_attn_sm90.cu), passed to the persistent
/// kernels by value.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TmaMap([u64; 16]);

// SAFETY: 128 plain bytes, the size and layout of the kernel parameter it is passed as.
unsafe impl DeviceRepr for TmaMap {}

impl TmaMap {
    const ZERO: TmaMap = TmaMap([0; 16]);

    /// The 4-D map {64, rows, heads, batch} of an attention operand at `ptr` with element
    /// strides `s`, boxes of `box_rows` rows of one head, in the 128-byte-swizzled layout of the
    /// kernel's tiles. None where TMA cannot describe it (a stride or address not a multiple of
    /// 16 bytes, or the driver refuses): the kernel then loads with cp.async, as without maps.
    fn encode(
        ptr: sys::CUdeviceptr,
        dtype: DType,
        s: &Strides,
        rows: usize,
        heads: usize,
        batch: usize,
        box_rows: usize,
    ) -> Option<TmaMap> {
        let data_type = match dtype {
            DType::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            _ => return None,
        };
        let dims = [64u64, rows as u64, heads as u64, batch as u64];
        // A size-1 dimension's stride never moves the pointer: any valid value will do.
        let stride = |st: i64, n: usize| -> Option<u64> {
            let bytes = if n == 1 { 16 } else { st.checked_mul(2)? };
            (bytes > 0 && bytes % 16 == 0 && bytes < 1 << 40).then_some(bytes as u64)
        };
        let strides = [stride(s.t, rows)?, stride(s.h, heads)?, stride(s.b, batch)?];
        if !ptr.is_multiple_of(16) || rows == 0 || box_rows > 256 {
            return None;
        }
        let boxes = [64u32, box_rows as u32, 1, 1];
        let elem = [1u32; 4];
        let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
        // SAFETY: the pointers are to arrays of the rank (4) or rank - 1 entries the call reads;
        // `map` is written by the driver on success only, and read only then.
        let r = unsafe {
            sys::cuTensorMapEncodeTiled(
                map.as_mut_ptr(),
                data_type,
                4,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                elem.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            // Once per process: the loads still work (cp.async), only slower.
            static SAID: OnceLock<()> = OnceLock::new();
            SAID.get_or_init(|| {
                tracing::debug!(
                    "fused attention: the driver refused a TMA tensor map ({r:?}; dims {dims:?}, \
                     strides {strides:?} bytes); loading tiles with cp.async"
                )
            });
            return None;
        }
        // SAFETY: initialised by the successful call.
        let map = unsafe { map.assume_init() };
        Some(TmaMap(map.opaque))
    }
}

/// Floats per consumer thread in a partial result of the persistent kernels (PART_VALUES in
/// flash_attn_sm90.cu).
const PART_VALUES: usize = 36;

/// Workspace of the persistent kernels' split items (`part`, `part_count` in
/// flash_attn_sm90.cu), one per candle device (each has its own stream), sized for `sms` blocks
/// of three consumers and kept for the life of the process: kernels on one stream run one after
/// another, and each leaves the counters zero for the next, so no allocation or memset per call
/// (those cost more than the split saves at 1-2k tokens).
struct SplitWorkspace {
    part: CudaSlice<f32>,
    count: CudaSlice<u32>,
}

fn split_workspace(dev: &CudaDevice, grid: usize) -> Result<Arc<Mutex<SplitWorkspace>>> {
    type Workspaces = HashMap<DeviceId, Arc<Mutex<SplitWorkspace>>>;
    static WORKSPACES: OnceLock<Mutex<Workspaces>> = OnceLock::new();
    let mut all = WORKSPACES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(w) = all.get(&dev.id()) {
        let fits = w.lock().unwrap_or_else(PoisonError::into_inner).count.len() >= 2 * grid;
        if fits {
            return Ok(w.clone());
        }
    }
    // At most two rounds of items are split (WorkSplit::plan), at most three consumers.
    let w = Arc::new(Mutex::new(SplitWorkspace {
        // SAFETY: the kernel writes every slot before reading it back.
        part: unsafe { dev.alloc::<f32>(grid * 2 * PART_VALUES * 3 * 128)? },
        count: dev.alloc_zeros::<u32>(2 * grid)?,
    }));
    all.insert(dev.id(), w.clone());
    Ok(w)
}

/// Whether a device runs the wgmma kernels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sm90 {
    /// Compute capability 9.0; the module has not been loaded yet.
    Untried,
    /// The module loaded.
    Ready,
    /// Another compute capability, or the module failed to load.
    Off,
}

/// Runs `f` on the state of device `dev` (found out once per device ordinal).
fn with_sm90_state<R>(dev: &CudaDevice, f: impl FnOnce(&mut Sm90) -> R) -> R {
    type Map = std::sync::Mutex<std::collections::HashMap<usize, Sm90>>;
    static MAP: std::sync::OnceLock<Map> = std::sync::OnceLock::new();
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let mut map = MAP
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    f(map.entry(ctx.ordinal()).or_insert_with(|| {
        if ctx.compute_capability().is_ok_and(|cc| cc == (9, 0)) {
            Sm90::Untried
        } else {
            Sm90::Off
        }
    }))
}

/// Whether `dev` has compute capability 9.0 (the wgmma kernels' PTX targets sm_90a, which loads
/// there only) and their module has not failed to load on it.
pub(super) fn is_sm90(dev: &CudaDevice) -> bool {
    with_sm90_state(dev, |s| *s != Sm90::Off)
}

/// [`is_sm90`], loading the wgmma module the first time. If the driver cannot JIT it (a driver
/// older than the toolkit that built it), warns once and turns the wgmma kernels off for this
/// device, so the mma.sync kernel runs instead; an explicitly requested tile variant (tests,
/// doctor) gets the error.
fn sm90_ready(dev: &CudaDevice, explicit: bool) -> Result<bool> {
    with_sm90_state(dev, |state| match *state {
        Sm90::Ready => Ok(true),
        Sm90::Off => Ok(false),
        Sm90::Untried => {
            let probe = "virnucpro_flash_attn_sm90_f16_p3n64";
            match load_kernel(dev, probe, SM90_MODULE, FLASH_ATTN_SM90_IMAGE) {
                Ok(_) => {
                    *state = Sm90::Ready;
                    Ok(true)
                }
                Err(e) if !explicit => {
                    tracing::warn!(
                        "the Hopper attention kernels did not load ({e}); using the portable \
                         fused attention kernel instead (slower on long rows). A newer NVIDIA \
                         driver fixes this."
                    );
                    *state = Sm90::Off;
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }
    })
}

/// Raises a kernel's dynamic shared-memory limit to `bytes` (over the 48 KiB default). Set on
/// every launch (each candle device loads its own copy of the module); the call costs well under
/// a microsecond.
fn allow_dynamic_smem(func: &CudaFunction, bytes: u32) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    func.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .w()
}

pub(super) fn bias_act(
    op: &BiasAct,
    x: &CudaStorage,
    lx: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "bias_act", bias_act_t(op, x, lx, b, lb))
}

fn bias_act_t<T>(
    op: &BiasAct,
    x: &CudaStorage,
    lx: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = x.device();
    let (Some((x0, x1)), Some((b0, b1))) = (lx.contiguous_offsets(), lb.contiguous_offsets())
    else {
        candle_core::bail!("bias_act: inputs must be contiguous");
    };
    let vec = 16 / std::mem::size_of::<T>();
    let n = x1 - x0;
    let cols = b1 - b0;
    if cols == 0 || n % cols != 0 || cols % vec != 0 || x0 % vec != 0 || b0 % vec != 0 {
        candle_core::bail!("bias_act: shapes/offsets not aligned for 16-byte access");
    }
    let xs = x.as_cuda_slice::<T>()?.slice(x0..x1);
    let bs = b.as_cuda_slice::<T>()?.slice(b0..b1);
    // SAFETY: every element is written by the kernel.
    let mut out = unsafe { dev.alloc::<T>(n)? };
    let res_guard = op.residual.as_ref().map(Tensor::storage_and_layout);
    let res = match &res_guard {
        Some((s, l)) => {
            let (r0, r1) = l.contiguous_offsets().ok_or_else(|| {
                candle_core::Error::Msg("bias_act: residual not contiguous".into())
            })?;
            if r1 - r0 != n || r0 % vec != 0 {
                candle_core::bail!("bias_act: residual does not match x");
            }
            match &**s {
                Storage::Cuda(c) => Some(c.as_cuda_slice::<T>()?.slice(r0..r1)),
                _ => candle_core::bail!("bias_act: residual must be on the CUDA device"),
            }
        }
        None => None,
    };
    let kind = match (op.act, res.is_some()) {
        (Act::GeluErf, _) => "bias_gelu",
        (Act::Identity, true) => "bias_res",
        (Act::Identity, false) => "bias",
    };
    let func = load_kernel(
        dev,
        &format!("virnucpro_{kind}_{}", dtype_name(x.dtype())?),
        OPS_MODULE,
        FUSED_OPS_IMAGE,
    )?;
    let n_vec = (n / vec) as u32;
    let cols_vec = (cols / vec) as u32;
    let blocks = n_vec.div_ceil(256).clamp(1, 132 * 32);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let null: u64 = 0;
    let mut bld = func.builder();
    bld.arg(&xs);
    bld.arg(&bs);
    match &res {
        Some(r) => bld.arg(r),
        None => bld.arg(&null),
    };
    bld.arg(&mut out);
    bld.arg(&n_vec);
    bld.arg(&cols_vec);
    // SAFETY: arguments match the kernel's signature in fused_ops.cu.
    unsafe { bld.launch(cfg) }.w()?;
    drop(bld);
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lx.shape().clone(),
    ))
}

/// Contiguous `[start, end)` of an operand held by an op, on the CUDA device.
pub(super) fn held_slice<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a Storage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    match s {
        Storage::Cuda(c) => Ok(c.as_cuda_slice::<T>()?.slice(a..b)),
        _ => candle_core::bail!("{what} must be on the CUDA device"),
    }
}

/// The contiguous input of a one-input op.
fn input_slice<'a, T: candle_core::cuda_backend::CudaDType>(
    x: &'a CudaStorage,
    lx: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let (a, b) = lx
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(x.as_cuda_slice::<T>()?.slice(a..b))
}

fn dtype_name(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        dt => candle_core::bail!("fused ops: unsupported dtype {dt:?}"),
    })
}

/// Grid of `threads`-wide blocks covering `n` work items, capped for grid-stride loops.
fn grid_for(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 132 * 64) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn layer_norm(
    op: &super::ops::LayerNormOp,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "layer_norm", layer_norm_t(op, x, lx))
}

fn layer_norm_t<T>(
    op: &super::ops::LayerNormOp,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = x.device();
    let xs = input_slice::<T>(x, lx, "layer_norm")?;
    let cols = *lx.dims().last().unwrap_or(&0);
    let n = lx.shape().elem_count();
    let rows = n / cols.max(1);
    let vec = 16 / std::mem::size_of::<T>();
    let cols_vec = cols / vec;
    let (wst, wl) = op.weight.storage_and_layout();
    let w = held_slice::<T>(&wst, wl, "layer_norm weight")?;
    let (bst, bl) = op.bias.storage_and_layout();
    let b = held_slice::<T>(&bst, bl, "layer_norm bias")?;
    let maxv = match cols_vec.div_ceil(32) {
        0..=4 => 4,
        5..=8 => 8,
        _ => 16,
    };
    let func = load_kernel(
        dev,
        &format!("virnucpro_layer_norm_{}_{maxv}", dtype_name(x.dtype())?),
        OPS_MODULE,
        FUSED_OPS_IMAGE,
    )?;
    // SAFETY: every element is written (one warp per row).
    let mut out = unsafe { dev.alloc::<T>(n)? };
    if rows > 0 {
        let threads = 128u32;
        let cfg = LaunchConfig {
            grid_dim: ((rows * 32).div_ceil(threads as usize) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_u, cv) = (rows as u32, cols_vec as u32);
        let mut bld = func.builder();
        bld.arg(&xs);
        bld.arg(&w);
        bld.arg(&b);
        bld.arg(&mut out);
        bld.arg(&rows_u);
        bld.arg(&cv);
        bld.arg(&op.eps);
        // SAFETY: arguments match virnucpro_layer_norm_* in fused_ops.cu.
        unsafe { bld.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lx.shape().clone(),
    ))
}

pub(super) fn rotary_qk(
    op: &super::ops::RotaryQk,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "rotary_qk", rotary_qk_t(op, x, lx))
}

fn rotary_qk_t<T>(
    op: &super::ops::RotaryQk,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = x.device();
    let xs = input_slice::<T>(x, lx, "rotary_qk")?;
    let (b, l, _) = lx.shape().dims3()?;
    let tokens = b * l;
    let per = tokens * op.heads * op.head_dim;
    let (cst, cl) = op.cos.storage_and_layout();
    let cos = held_slice::<f32>(&cst, cl, "rotary cos")?;
    let (sst, sl) = op.sin.storage_and_layout();
    let sin = held_slice::<f32>(&sst, sl, "rotary sin")?;
    // SAFETY: every element of q and k is written.
    let mut out = unsafe { dev.alloc::<T>(2 * per)? };
    if per > 0 {
        let (q, k) = out.split_at_mut(per);
        let mut q = q;
        let mut k = k;
        let func = load_kernel(
            dev,
            &format!("virnucpro_rotary_qk_{}", dtype_name(x.dtype())?),
            OPS_MODULE,
            FUSED_OPS_IMAGE,
        )?;
        let half = op.head_dim / 2;
        let work = tokens * 2 * op.heads * (half / 8);
        let (tk, tl, hd, hf) = (tokens as u32, op.t_len as u32, op.heads as u32, half as u32);
        let mut bld = func.builder();
        bld.arg(&xs);
        bld.arg(&cos);
        bld.arg(&sin);
        bld.arg(&mut q);
        bld.arg(&mut k);
        bld.arg(&tk);
        bld.arg(&tl);
        bld.arg(&hd);
        bld.arg(&hf);
        // SAFETY: arguments match virnucpro_rotary_qk_* in fused_ops.cu.
        unsafe { bld.launch(grid_for(work, 256)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((2, b, l, op.heads * op.head_dim)),
    ))
}

pub(super) fn gated_gelu(
    op: &super::ops::GatedGelu,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "gated_gelu", gated_gelu_t(op, x, lx))
}

fn gated_gelu_t<T>(
    op: &super::ops::GatedGelu,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = x.device();
    let xs = input_slice::<T>(x, lx, "gated_gelu")?;
    let rows = lx.shape().elem_count() / (2 * op.inter).max(1);
    let vec = 16 / std::mem::size_of::<T>();
    let i_vec = op.inter / vec;
    // SAFETY: every element is written.
    let mut out = unsafe { dev.alloc::<T>(rows * op.inter)? };
    if rows > 0 {
        let func = load_kernel(
            dev,
            &format!("virnucpro_gated_gelu_{}", dtype_name(x.dtype())?),
            OPS_MODULE,
            FUSED_OPS_IMAGE,
        )?;
        let (r, iv) = (rows as u32, i_vec as u32);
        let mut bld = func.builder();
        bld.arg(&xs);
        bld.arg(&mut out);
        bld.arg(&r);
        bld.arg(&iv);
        // SAFETY: arguments match virnucpro_gated_gelu_* in fused_ops.cu.
        unsafe { bld.launch(grid_for(rows * i_vec, 256)) }.w()?;
    }
    let mut dims = lx.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = op.inter;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(dims),
    ))
}

pub(super) fn gather_rows(
    op: &super::ops::GatherRows,
    ids: &CudaStorage,
    lids: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(
        op.table.dtype(),
        "gather_rows",
        gather_rows_t(op, ids, lids)
    )
}

fn gather_rows_t<T>(
    op: &super::ops::GatherRows,
    ids: &CudaStorage,
    lids: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = ids.device();
    let idv = input_slice::<u32>(ids, lids, "gather_rows ids")?;
    let rows = lids.shape().elem_count();
    let (vocab, cols) = op.table.dims2()?;
    let (tst, tl) = op.table.storage_and_layout();
    let table = held_slice::<T>(&tst, tl, "embedding table")?;
    let cols_vec = cols * std::mem::size_of::<T>() / 16;
    // SAFETY: every element is written (a row per id).
    let mut out = unsafe { dev.alloc::<T>(rows * cols)? };
    if rows > 0 && cols_vec > 0 {
        let func = load_kernel(dev, "virnucpro_gather_rows", OPS_MODULE, FUSED_OPS_IMAGE)?;
        let cfg = LaunchConfig {
            grid_dim: (rows.min(132 * 32) as u32, 1, 1),
            block_dim: (cols_vec.clamp(32, 256).next_multiple_of(32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, cv, vb) = (rows as u32, cols_vec as u32, vocab as u32);
        let mut bld = func.builder();
        bld.arg(&table);
        bld.arg(&idv);
        bld.arg(&mut out);
        bld.arg(&r);
        bld.arg(&cv);
        bld.arg(&vb);
        // SAFETY: arguments match virnucpro_gather_rows in fused_ops.cu; rows of 16-byte vectors.
        unsafe { bld.launch(cfg) }.w()?;
    }
    let mut dims = lids.dims().to_vec();
    dims.push(cols);
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(dims),
    ))
}

pub(super) fn weighted_pool(
    op: &super::ops::WeightedPool,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "weighted_pool", weighted_pool_t(op, x, lx))
}

fn weighted_pool_t<T>(
    op: &super::ops::WeightedPool,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
{
    let dev: &CudaDevice = x.device();
    let xs = input_slice::<T>(x, lx, "weighted_pool")?;
    let (b, l, cols) = lx.shape().dims3()?;
    let (wst, wl) = op.weights.storage_and_layout();
    let w = held_slice::<f32>(&wst, wl, "pooling weights")?;
    // SAFETY: every element is written (a thread per column pair and row).
    let mut out = unsafe { dev.alloc::<f32>(b * cols)? };
    if b > 0 && cols > 0 {
        let func = load_kernel(
            dev,
            &format!("virnucpro_weighted_pool_{}", dtype_name(x.dtype())?),
            OPS_MODULE,
            FUSED_OPS_IMAGE,
        )?;
        let threads = 128u32;
        let cfg = LaunchConfig {
            grid_dim: ((cols / 2).div_ceil(threads as usize) as u32, b as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (lu, cu) = (l as u32, cols as u32);
        let mut bld = func.builder();
        bld.arg(&xs);
        bld.arg(&w);
        bld.arg(&mut out);
        bld.arg(&lu);
        bld.arg(&cu);
        // SAFETY: arguments match virnucpro_weighted_pool_* in fused_ops.cu.
        unsafe { bld.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((b, cols)),
    ))
}

/// Keeps freed device memory in the CUDA memory pool instead of returning it to the driver at
/// every synchronization (the pool's default release threshold is 0). candle allocates with
/// `cuMemAllocAsync`; without this, every batch (and every timed repeat) re-maps its working set,
/// which cost up to a third of the time of large GEMMs in `bench --ops` on an H100.
pub fn hold_pool_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result as dres, sys as dsys};
    let cu_dev = dev.cuda_stream().context().cu_device();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: `cu_dev` is the device of a live context; the attribute takes a u64.
    unsafe {
        let pool = dres::device::get_default_mem_pool(cu_dev).w()?;
        dres::mem_pool::set_attribute(
            pool,
            dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .w()?;
    }
    Ok(())
}

/// The high-water marks of the device's default memory pool since the process started, in
/// bytes: `(in use, reserved)`. Everything candle allocates on CUDA comes from this pool, so the
/// first is the largest amount of live device memory (weights included) and the second what the
/// pool held from the driver at its largest (the excess is fragmentation).
pub fn pool_high_water(dev: &CudaDevice) -> Result<(u64, u64)> {
    pool_pair(
        dev,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
    )
}

/// The device's default memory pool now, in bytes: `(in use, reserved)`.
pub fn pool_now(dev: &CudaDevice) -> Result<(u64, u64)> {
    pool_pair(
        dev,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
    )
}

/// The pool's `(in use, reserved)` pair of attributes.
fn pool_pair(
    dev: &CudaDevice,
    used: sys::CUmemPool_attribute,
    reserved: sys::CUmemPool_attribute,
) -> Result<(u64, u64)> {
    Ok((pool_attribute(dev, used)?, pool_attribute(dev, reserved)?))
}

fn pool_attribute(dev: &CudaDevice, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let cu_dev = dev.cuda_stream().context().cu_device();
    let mut value: u64 = 0;
    // SAFETY: `cu_dev` is the device of a live context; the attribute is a u64.
    unsafe {
        let pool = drv::device::get_default_mem_pool(cu_dev).w()?;
        drv::mem_pool::get_attribute(pool, attr, &mut value as *mut u64 as *mut std::ffi::c_void)
            .w()?;
    }
    Ok(value)
}

/// Returns the pool's unused memory to the driver (the f32 staging copies of a model's weights
/// leave holes that later batches may not fit) and restarts its high-water marks, so that
/// [`pool_high_water`] then measures the run that follows.
pub fn trim_pool(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result as dres, sys as dsys};
    let cu_dev = dev.cuda_stream().context().cu_device();
    dev.cuda_stream().synchronize().w()?;
    // SAFETY: `cu_dev` is the device of a live context; the attributes take a u64 (0 resets).
    unsafe {
        let pool = dres::device::get_default_mem_pool(cu_dev).w()?;
        dres::mem_pool::trim_to(pool, 0).w()?;
        for attr in [
            dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            let mut zero: u64 = 0;
            dres::mem_pool::set_attribute(
                pool,
                attr,
                &mut zero as *mut u64 as *mut std::ffi::c_void,
            )
            .w()?;
        }
    }
    Ok(())
}
