//! Linear layers on cuBLASLt: `y = x·Wᵀ + bias (+ residual)` as one library call.
//!
//! candle's matmul goes through cuBLAS without an epilogue, so every linear layer paid one more
//! pass over its output for the bias (and one for a residual). cuBLASLt adds the bias in the
//! GEMM's epilogue and takes the residual as its `C` operand (`D = A·B + C + bias`, `C` and `D`
//! distinct buffers), so the projection, its bias and the residual add cost one kernel.
//!
//! Each layer shape runs one algorithm, whatever the number of rows (batch invariance, see
//! `forward_t`): on a GPU kind of the tuned table (`tuned_gemm.json`, made by `virnucpro bench
//! --tune-gemm ROWS` on that GPU: the fastest of cuBLASLt's candidates without split-k, timed at
//! the default batch) that algorithm, rebuilt from its configuration; elsewhere cuBLASLt's
//! heuristic for a reference problem. Workspace 32 MiB (NVIDIA's figure for Hopper); compute is
//! f32 whatever the storage type (no TF32 for f32 inputs), as candle's own matmul does.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::cublaslt::{result as lt, sys};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

use super::cuda::{by_dtype, held_slice};
use super::ops::LtLinear;
use super::KernelError;
use candle_core::backend::BackendStorage;

/// Problem key of the algorithm cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    dtype: DType,
    bias: bool,
    residual: bool,
    gelu: bool,
    /// Alignment (bytes, at most 256) of A, B, C, D: algorithms are chosen for it.
    align: [u32; 4],
}

/// Workspace size: 32 MiB, NVIDIA's recommendation for Hopper and later (1 and 4 MiB measured
/// the same on an H100).
const WORKSPACE_BYTES: usize = 32 << 20;

/// An owned cuBLASLt handle.
struct Handle(sys::cublasLtHandle_t);
// SAFETY: a cuBLASLt handle may be used from any thread; calls are serialized on candle's stream.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}
impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.0);
        }
    }
}

/// One cuBLASLt handle and workspace per device, used on candle's stream.
struct Context {
    handle: Handle,
    workspace: CudaSlice<u8>,
    /// The algorithm of each layer shape (rows not in the key).
    algos: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
    /// Exact problems already checked against their shape's algorithm, and the algorithm they
    /// run: repeated shapes skip the check (host time per call).
    exact: Mutex<HashMap<Key, sys::cublasLtMatmulAlgo_t>>,
}

fn context(dev: &CudaDevice) -> Result<Arc<Context>> {
    type Contexts = Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<Context>>>;
    static CONTEXTS: OnceLock<Contexts> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("cuBLASLt context lock poisoned".into()))?;
    if let Some(c) = map.get(&dev.id()) {
        return Ok(c.clone());
    }
    let handle = Handle(ok(lt::create_handle())?);
    // SAFETY: scratch memory for cuBLASLt, never read by us.
    let workspace = unsafe { dev.alloc::<u8>(WORKSPACE_BYTES)? };
    let ctx = Arc::new(Context {
        handle,
        workspace,
        algos: Mutex::new(HashMap::new()),
        exact: Mutex::new(HashMap::new()),
    });
    map.insert(dev.id(), ctx.clone());
    Ok(ctx)
}

/// Owned cuBLASLt descriptors, destroyed on drop.
struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.0);
        }
    }
}
struct MatLayout(sys::cublasLtMatrixLayout_t);
impl Drop for MatLayout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.0);
        }
    }
}
struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}

/// cuBLASLt's status as an error: an allocation failure is the device's out-of-memory
/// ([`KernelError::OutOfMemory`]), whatever else a plain error.
fn lt_error(e: lt::CublasError) -> candle_core::Error {
    if e.0 == sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED {
        return KernelError::out_of_memory(format!("cuBLASLt: {e:?}")).into();
    }
    candle_core::Error::Msg(format!("cuBLASLt: {e:?}"))
}

fn ok<T>(r: std::result::Result<T, lt::CublasError>) -> Result<T> {
    r.map_err(lt_error)
}

fn cuda_type(dtype: DType) -> Result<sys::cudaDataType> {
    Ok(match dtype {
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        dt => candle_core::bail!("cuBLASLt linear: unsupported dtype {dt:?}"),
    })
}

fn set_desc<T>(desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    // SAFETY: `v` points to a value of the type cuBLASLt documents for `attr`.
    unsafe {
        lt::set_matmul_desc_attribute(
            desc.0,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(lt_error)
}

pub(super) fn forward(op: &LtLinear, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    by_dtype!(x.dtype(), "cuBLASLt linear", forward_t(op, x, lx))
}

fn forward_t<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    op: &LtLinear,
    x: &CudaStorage,
    lx: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device().clone();
    let dtype = x.dtype();
    let (rows, k) = lx.shape().dims2()?;
    let (n, kw) = op.weight.dims2()?;
    if k != kw {
        candle_core::bail!("cuBLASLt linear: x has {k} columns, the weight {kw}");
    }
    let (x0, x1) = lx
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("cuBLASLt linear: x not contiguous".into()))?;
    let xs = x.as_cuda_slice::<T>()?.slice(x0..x1);
    let (ws, wl) = op.weight.storage_and_layout();
    let w = held_slice::<T>(&ws, wl, "cuBLASLt linear: weight")?;
    let bias_guard = op.bias.as_ref().map(Tensor::storage_and_layout);
    let bias = match &bias_guard {
        Some((s, l)) => Some(held_slice::<T>(s, l, "cuBLASLt linear: bias")?),
        None => None,
    };
    let res_guard = op.residual.as_ref().map(Tensor::storage_and_layout);
    let res = match &res_guard {
        Some((s, l)) => {
            if l.shape().elem_count() != rows * n {
                candle_core::bail!("cuBLASLt linear: residual does not match the output");
            }
            Some(held_slice::<T>(s, l, "cuBLASLt linear: residual")?)
        }
        None => None,
    };
    // SAFETY: every element is written by the GEMM.
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * n)? };
    if rows == 0 || n == 0 {
        return Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((rows, n)),
        ));
    }

    // Column-major view: D (n x rows) = op(A) · B with A = W stored k x n (transposed), B = x
    // stored k x rows, C = residual (n x rows).
    let ctx = context(&dev)?;
    let ty = cuda_type(dtype)?;
    let stream = dev.cuda_stream();
    let bias_ptr = bias.as_ref().map(|b| b.device_ptr(&stream));
    let desc = matmul_desc(bias_ptr.as_ref().map(|(p, _)| *p), op.gelu_tanh)?;
    let (a_ptr, _ga) = w.device_ptr(&stream);
    let (b_ptr, _gb) = xs.device_ptr(&stream);
    let res_ptr = res.as_ref().map(|r| r.device_ptr(&stream));
    let (d_ptr, gd) = out.device_ptr_mut(&stream);
    let c_ptr = match &res_ptr {
        Some((p, _)) => *p,
        None => d_ptr,
    };
    let (ws_ptr, _gw) = ctx.workspace.device_ptr(&stream);
    let gemm = Gemm {
        ctx: ctx.as_ref(),
        desc,
        a_l: mat_layout(ty, k, n)?,
        b_l: mat_layout(ty, k, rows)?,
        d_l: mat_layout(ty, n, rows)?,
        ptrs: [a_ptr, b_ptr, c_ptr, d_ptr],
        workspace: ws_ptr,
        beta: if res.is_some() { 1.0 } else { 0.0 },
        stream: stream.cu_stream() as *mut _,
    };
    let align_of = |p: u64| -> u32 { 1u32 << p.trailing_zeros().min(8) };
    // One algorithm per layer shape, whatever the number of rows (batch size x padded length):
    // with the same kernel and no split of k, a row's result depends on that row alone, not on
    // the batch it came in, so splitting a batch (out-of-memory back-off) or batching a work
    // unit otherwise changes no bit. The choice never depends on a timing made at run time, so
    // every run and every GPU of one kind computes the same bits (a resumed run continues
    // exactly; several GPUs agree): the tuned table's entry for this GPU kind and shape (timed
    // once by maintainers, `bench --tune-gemm`), else cuBLASLt's heuristic for a reference
    // problem.
    let key = Key {
        align: gemm.ptrs.map(align_of),
        m: n as u64,
        n: 0,
        k: k as u64,
        dtype,
        bias: bias.is_some(),
        residual: res.is_some(),
        gelu: op.gelu_tanh,
    };
    let algo = algo_for_problem(&gemm, &dev, op, key, ty, rows)?;
    gemm.run(&algo)?;
    drop(bias_ptr);
    drop(res_ptr);
    drop(gd);
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, n)),
    ))
}

/// The matmul descriptor of a linear layer: A transposed, compute in f32, the bias (at
/// `bias_ptr`) and GELU in the epilogue.
fn matmul_desc(bias_ptr: Option<u64>, gelu_tanh: bool) -> Result<Desc> {
    let desc = Desc(ok(lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType::CUDA_R_32F,
    ))?);
    let trans_t =
        candle_core::cuda_backend::cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32;
    set_desc(
        &desc,
        sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        &trans_t,
    )?;
    let epi = match (bias_ptr.is_some(), gelu_tanh) {
        (true, true) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS),
        (true, false) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS),
        (false, true) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU),
        (false, false) => None,
    };
    if let Some(epi) = epi {
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epi,
        )?;
    }
    if let Some(ptr) = &bias_ptr {
        set_desc(
            &desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
            ptr,
        )?;
    }
    Ok(desc)
}

/// A column-major `rows x cols` layout of `ty` with leading dimension `rows`.
fn mat_layout(ty: sys::cudaDataType, rows: usize, cols: usize) -> Result<MatLayout> {
    Ok(MatLayout(ok(lt::create_matrix_layout(
        ty,
        rows as u64,
        cols as u64,
        rows as i64,
    ))?))
}

/// One GEMM ready to run: descriptors, device pointers (A, B, C, D), workspace and stream.
struct Gemm<'a> {
    ctx: &'a Context,
    desc: Desc,
    a_l: MatLayout,
    b_l: MatLayout,
    /// The layout of C and of D.
    d_l: MatLayout,
    ptrs: [u64; 4],
    workspace: u64,
    beta: f32,
    stream: sys::cudaStream_t,
}

impl Gemm<'_> {
    fn run(&self, algo: &sys::cublasLtMatmulAlgo_t) -> Result<()> {
        let alpha = 1f32;
        let [a, b, c, d] = self.ptrs;
        // SAFETY: pointers are live allocations of the sizes the layouts describe, on `stream`.
        unsafe {
            lt::matmul(
                self.ctx.handle.0,
                self.desc.0,
                &alpha as *const f32 as *const c_void,
                &self.beta as *const f32 as *const c_void,
                a as *const c_void,
                self.a_l.0,
                b as *const c_void,
                self.b_l.0,
                c as *const c_void,
                self.d_l.0,
                d as *mut c_void,
                self.d_l.0,
                algo,
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream,
            )
        }
        .map_err(lt_error)
    }

    /// Whether `algo` takes this problem within the workspace.
    fn fits(&self, algo: &sys::cublasLtMatmulAlgo_t) -> bool {
        let mut result = std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit();
        // SAFETY: descriptors are alive; `result` is written by the call.
        let st = unsafe {
            sys::cublasLtMatmulAlgoCheck(
                self.ctx.handle.0,
                self.desc.0,
                self.a_l.0,
                self.b_l.0,
                self.d_l.0,
                self.d_l.0,
                algo,
                result.as_mut_ptr(),
            )
        };
        st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            // SAFETY: initialised by the successful call.
            && unsafe { result.assume_init() }.workspaceSize <= WORKSPACE_BYTES
    }
}

/// The algorithm of this exact problem (`rows` rows of the layer shape `key`): remembered per
/// problem; else the layer shape's algorithm ([`algo_for_shape`]) where it takes these rows,
/// else this problem's own heuristic choice. With `op.tune`, every candidate is timed first.
fn algo_for_problem(
    gemm: &Gemm<'_>,
    dev: &CudaDevice,
    op: &LtLinear,
    key: Key,
    ty: sys::cudaDataType,
    rows: usize,
) -> Result<sys::cublasLtMatmulAlgo_t> {
    let ctx = gemm.ctx;
    let lock_err = |_| candle_core::Error::Msg("cuBLASLt cache lock poisoned".into());
    let exact_key = Key {
        n: rows as u64,
        ..key
    };
    // (The guard must be gone before the lock is taken again below.)
    let known = ctx.exact.lock().map_err(lock_err)?.get(&exact_key).copied();
    if let Some(algo) = known {
        return Ok(algo);
    }
    let (n, k) = (key.m as usize, key.k as usize);
    let layouts = [&gemm.a_l, &gemm.b_l, &gemm.d_l];
    if let Some(report) = &op.tune {
        // Tuning (`virnucpro bench --tune-gemm`): time every candidate on this problem.
        let candidates = heuristics(ctx, &gemm.desc, layouts, key.align, (rows, n, k))?;
        let fits = |a: &sys::cublasLtMatmulAlgo_t| gemm.fits(a);
        let run = |a: &sys::cublasLtMatmulAlgo_t| gemm.run(a);
        let timed = time_candidates(dev, &candidates, &fits, &run)?;
        report
            .lock()
            .map_err(|_| candle_core::Error::Msg("tuning report lock poisoned".into()))?
            .extend(timed);
    }
    let shape_algo = algo_for_shape(gemm, dev, key, ty)?;
    let algo = if gemm.fits(&shape_algo) {
        shape_algo
    } else {
        // Rare (an odd row count the algorithm cannot take): this problem's own choice.
        tracing::debug!(
            "cuBLASLt: the algorithm of {n}x{k} does not take {rows} rows; rows of this batch \
             may differ in the last bits from the same rows in other batches"
        );
        heuristics(ctx, &gemm.desc, layouts, key.align, (rows, n, k))?[0]
    };
    ctx.exact.lock().map_err(lock_err)?.insert(exact_key, algo);
    Ok(algo)
}

/// The algorithm of a layer shape (whatever the rows): remembered per shape; else the tuned
/// table's for this GPU kind, where it takes the problem; else cuBLASLt's first non-split-k
/// choice for [`REFERENCE_ROWS`] rows.
fn algo_for_shape(
    gemm: &Gemm<'_>,
    dev: &CudaDevice,
    key: Key,
    ty: sys::cudaDataType,
) -> Result<sys::cublasLtMatmulAlgo_t> {
    let ctx = gemm.ctx;
    let lock_err = |_| candle_core::Error::Msg("cuBLASLt cache lock poisoned".into());
    let cached = ctx.algos.lock().map_err(lock_err)?.get(&key).copied();
    if let Some(algo) = cached {
        return Ok(algo);
    }
    let (n, k) = (key.m as usize, key.k as usize);
    let algo = match tuned_algo(ctx, dev, &key, ty).filter(|a| gemm.fits(a)) {
        Some(algo) => algo,
        None => {
            let b_ref = mat_layout(ty, k, REFERENCE_ROWS)?;
            let d_ref = mat_layout(ty, n, REFERENCE_ROWS)?;
            let candidates = heuristics(
                ctx,
                &gemm.desc,
                [&gemm.a_l, &b_ref, &d_ref],
                key.align,
                (REFERENCE_ROWS, n, k),
            )?;
            candidates
                .iter()
                .copied()
                .find(|a| splits_k(a) == Some(false))
                .unwrap_or(candidates[0])
        }
    };
    ctx.algos.lock().map_err(lock_err)?.insert(key, algo);
    Ok(algo)
}

/// Rows of the problem whose heuristic choice every problem of that layer shape takes.
const REFERENCE_ROWS: usize = 8192;

/// Whether an algorithm splits the k dimension over blocks (then how a row's sum is cut can
/// depend on the problem's size); `None` if cuBLASLt does not say.
fn splits_k(algo: &sys::cublasLtMatmulAlgo_t) -> Option<bool> {
    let mut splits: u32 = 0;
    let mut written = 0usize;
    // SAFETY: the attribute is a u32; `algo` is a valid algorithm from the heuristic.
    let st = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
            &mut splits as *mut u32 as *mut c_void,
            std::mem::size_of::<u32>(),
            &mut written,
        )
    };
    (st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(splits > 1)
}

/// Up to 16 algorithms cuBLASLt proposes for this problem, best guess first.
fn heuristics(
    ctx: &Context,
    desc: &Desc,
    [a_l, b_l, d_l]: [&MatLayout; 3],
    align: [u32; 4],
    (rows, n, k): (usize, usize, usize),
) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
    let pref = Pref(ok(lt::create_matmul_pref())?);
    let ws = WORKSPACE_BYTES as u64;
    // SAFETY: the attribute is a u64 byte count.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            std::mem::size_of::<u64>(),
        )
    }
    .map_err(lt_error)?;
    // The heuristic assumes 256-byte aligned buffers unless told otherwise.
    for (attr, a) in [
        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
    ]
    .into_iter()
    .zip(align)
    {
        // SAFETY: the attribute is a u32 byte count.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                attr,
                &a as *const u32 as *const c_void,
                std::mem::size_of::<u32>(),
            )
        }
        .map_err(lt_error)?;
    }
    const WANT: usize = 16;
    let mut results =
        [std::mem::MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::uninit(); WANT];
    let mut found = 0i32;
    // SAFETY: `results` has room for WANT entries; descriptors are alive; C and D share a layout.
    let st = unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            ctx.handle.0,
            desc.0,
            a_l.0,
            b_l.0,
            d_l.0,
            d_l.0,
            pref.0,
            WANT as i32,
            results.as_mut_ptr() as *mut sys::cublasLtMatmulHeuristicResult_t,
            &mut found,
        )
    };
    ok(st.result())?;
    let algos: Vec<_> = results[..(found.max(0) as usize).min(WANT)]
        .iter()
        // SAFETY: the first `found` entries were written.
        .map(|r| unsafe { r.assume_init() })
        .filter(|r| {
            r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && r.workspaceSize <= WORKSPACE_BYTES
        })
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        return Err(KernelError::NoAlgorithm {
            what: format!("a linear layer of {rows} rows, {k} inputs and {n} outputs"),
        }
        .into());
    }
    Ok(algos)
}

/// An algorithm as cuBLASLt's documented configuration attributes: what the tuned table stores
/// and [`algo_from_config`] rebuilds (with `cublasLtMatmulAlgoInit`), so a choice made once by
/// timing is made again, identically, on every run and every GPU of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlgoConfig {
    pub id: i32,
    pub tile: u32,
    pub stages: u32,
    pub splitk: u32,
    pub reduction: u32,
    pub swizzle: u32,
    pub custom: u32,
    pub inner: u16,
    pub cluster: u16,
}

/// One timed candidate of [`tune_linear`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TunedCandidate {
    pub algo: AlgoConfig,
    /// Median of the timed runs, per call.
    pub ms: f32,
    /// Its place in cuBLASLt's heuristic list (0: the heuristic's first choice).
    pub rank: usize,
}

fn config_attr<T: Default + Copy>(
    algo: &sys::cublasLtMatmulAlgo_t,
    attr: sys::cublasLtMatmulAlgoConfigAttributes_t,
) -> Option<T> {
    let mut v = T::default();
    let mut written = 0usize;
    // SAFETY: `v` has the size of the attribute's documented type; `algo` is initialised.
    let st = unsafe {
        sys::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            &mut v as *mut T as *mut c_void,
            std::mem::size_of::<T>(),
            &mut written,
        )
    };
    (st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
}

fn config_of(algo: &sys::cublasLtMatmulAlgo_t) -> Option<AlgoConfig> {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    Some(AlgoConfig {
        id: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_ID)?,
        tile: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_TILE_ID)?,
        stages: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_STAGES_ID)?,
        splitk: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM)?,
        reduction: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME)?,
        swizzle: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING)?,
        custom: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION)?,
        inner: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID)?,
        cluster: config_attr(algo, A::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)?,
    })
}

fn algo_from_config(
    ctx: &Context,
    ty: sys::cudaDataType,
    cfg: &AlgoConfig,
) -> Option<sys::cublasLtMatmulAlgo_t> {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let mut algo = std::mem::MaybeUninit::<sys::cublasLtMatmulAlgo_t>::uninit();
    // SAFETY: `algo` is written by the call; the types are those of every problem of ours.
    let st = unsafe {
        sys::cublasLtMatmulAlgoInit(
            ctx.handle.0,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
            ty,
            ty,
            ty,
            ty,
            cfg.id,
            algo.as_mut_ptr(),
        )
    };
    if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return None;
    }
    // SAFETY: initialised by the successful call.
    let mut algo = unsafe { algo.assume_init() };
    fn set<T>(algo: &mut sys::cublasLtMatmulAlgo_t, attr: A, v: T) -> bool {
        // SAFETY: `v` has the size of the attribute's documented type.
        let st = unsafe {
            sys::cublasLtMatmulAlgoConfigSetAttribute(
                algo,
                attr,
                &v as *const T as *const c_void,
                std::mem::size_of::<T>(),
            )
        };
        st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
    }
    let all = set(&mut algo, A::CUBLASLT_ALGO_CONFIG_TILE_ID, cfg.tile)
        && set(&mut algo, A::CUBLASLT_ALGO_CONFIG_STAGES_ID, cfg.stages)
        && set(&mut algo, A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, cfg.splitk)
        && set(
            &mut algo,
            A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
            cfg.reduction,
        )
        && set(
            &mut algo,
            A::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
            cfg.swizzle,
        )
        && set(&mut algo, A::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, cfg.custom)
        && set(&mut algo, A::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID, cfg.inner)
        && set(
            &mut algo,
            A::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
            cfg.cluster,
        );
    (all && config_of(&algo).as_ref() == Some(cfg)).then_some(algo)
}

/// One entry of the tuned table (`tuned_gemm.json`): the fastest non-split-k algorithm of one
/// layer shape on one kind of GPU, timed at [`REFERENCE_ROWS`] rows by `bench --tune-gemm`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TunedEntry {
    /// `sm_<major><minor>/<multiprocessors>`, e.g. `sm_90/132` (H100 SXM, H200).
    pub gpu: String,
    pub dtype: String,
    pub n: u64,
    pub k: u64,
    pub bias: bool,
    pub residual: bool,
    pub gelu: bool,
    pub algo: AlgoConfig,
    /// The tuned and the heuristic choice's time at the reference rows, for the record.
    pub ms: f32,
    pub heuristic_ms: f32,
}

const TUNED_TABLE: &str = include_str!("tuned_gemm.json");

fn tuned_table() -> &'static [TunedEntry] {
    static TABLE: OnceLock<Vec<TunedEntry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_json::from_str(TUNED_TABLE).unwrap_or_else(|e| {
            tracing::warn!("the tuned cuBLASLt table is not valid JSON ({e}); using the heuristic");
            Vec::new()
        })
    })
}

/// The GPU kind of the tuned table: `sm_<major><minor>/<multiprocessors>`.
pub fn gpu_key(dev: &CudaDevice) -> Result<String> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as At;
    use candle_core::cuda_backend::WrapErr;
    let ctx = dev.cuda_stream().context().clone();
    let major = ctx
        .attribute(At::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?;
    let minor = ctx
        .attribute(At::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .w()?;
    let sms = ctx
        .attribute(At::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .w()?;
    Ok(format!("sm_{major}{minor}/{sms}"))
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    }
}

/// The tuned algorithm of this layer shape on this GPU, if the table has one that this
/// cuBLASLt can rebuild.
fn tuned_algo(
    ctx: &Context,
    dev: &CudaDevice,
    key: &Key,
    ty: sys::cudaDataType,
) -> Option<sys::cublasLtMatmulAlgo_t> {
    let gpu = gpu_key(dev).ok()?;
    let entry = tuned_table().iter().find(|e| {
        e.gpu == gpu
            && e.dtype == dtype_name(key.dtype)
            && e.n == key.m
            && e.k == key.k
            && e.bias == key.bias
            && e.residual == key.residual
            && e.gelu == key.gelu
    })?;
    let algo = algo_from_config(ctx, ty, &entry.algo);
    if algo.is_none() {
        tracing::debug!(
            "cuBLASLt cannot rebuild the tuned algorithm of {}x{} ({:?}); using the heuristic",
            key.m,
            key.k,
            entry.algo
        );
    }
    algo
}

/// Times each non-split-k candidate that fits (median of 15 runs after 3), in heuristic order.
fn time_candidates(
    dev: &CudaDevice,
    candidates: &[sys::cublasLtMatmulAlgo_t],
    fits: &dyn Fn(&sys::cublasLtMatmulAlgo_t) -> bool,
    run: &dyn Fn(&sys::cublasLtMatmulAlgo_t) -> Result<()>,
) -> Result<Vec<TunedCandidate>> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::WrapErr;
    let stream = dev.cuda_stream();
    let mut out = Vec::new();
    for (rank, cand) in candidates.iter().enumerate() {
        if splits_k(cand) != Some(false) || !fits(cand) {
            continue;
        }
        let Some(algo) = config_of(cand) else {
            continue;
        };
        for _ in 0..3 {
            run(cand)?;
        }
        let mut times = Vec::with_capacity(15);
        for _ in 0..15 {
            let start = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .w()?;
            run(cand)?;
            let end = stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .w()?;
            end.synchronize().w()?;
            times.push(start.elapsed_ms(&end).w()?);
        }
        times.sort_by(f32::total_cmp);
        out.push(TunedCandidate {
            algo,
            ms: times[times.len() / 2],
            rank,
        });
    }
    Ok(out)
}
