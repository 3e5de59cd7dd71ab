//! Device selection (`--device auto|cpu|cuda[:N]|metal[:N]`) and dtype choice
//! (`--dtype auto|f32|f16|bf16`).

use std::fmt;
use std::str::FromStr;

use anyhow::bail;
use candle_core::{DType, Device};
use virnucpro_kernels::{open_cuda, CpuMatmul, KernelOptions};

use crate::config::ModelFamily;

/// What `--device` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// The first GPU this build supports and the machine has, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match lower.split_once(':') {
            Some((k, n)) => {
                let n = n.parse::<usize>().map_err(|_| {
                    format!("`{s}`: the device number after `:` must be a non-negative integer")
                })?;
                (k, Some(n))
            }
            None => (lower.as_str(), None),
        };
        match (kind, ordinal) {
            ("auto", None) => Ok(Self::Auto),
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda" | "gpu", n) => Ok(Self::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(Self::Metal(n.unwrap_or(0))),
            _ => Err(format!(
                "`{s}` is not a device; use auto, cpu, cuda, cuda:N or metal"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// Opens the device (a CUDA one as `kernels` say, [`KernelOptions::event_tracking`]); a GPU this
/// build cannot drive is an error that says how to get one.
pub fn select_device(spec: DeviceSpec, kernels: &KernelOptions) -> anyhow::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!(
                    "--device cuda: this virnucpro was built without CUDA support; rebuild with \
                     `cargo build --release --features cuda`, or use --device cpu"
                );
            }
            open_cuda(n, kernels).map_err(|e| {
                anyhow::anyhow!(
                    "--device cuda:{n}: cannot open CUDA device {n}: {e}; check the driver and \
                     `nvidia-smi`, or use --device cpu"
                )
            })
        }
        DeviceSpec::Metal(n) => {
            if !cfg!(feature = "metal") {
                bail!(
                    "--device metal: this virnucpro was built without Metal support; rebuild with \
                     `cargo build --release --features metal`, or use --device cpu"
                );
            }
            Device::new_metal(n).map_err(|e| {
                anyhow::anyhow!(
                    "--device metal: cannot open Metal device {n}: {e}; use --device cpu"
                )
            })
        }
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match open_cuda(0, kernels) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::info!("no usable CUDA device ({e}); using the CPU"),
                }
            }
            if cfg!(feature = "metal") {
                match Device::new_metal(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::info!("no usable Metal device ({e}); using the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// What `predict --device` asked for: one device, a list (`cuda:0,cuda:1`), or every GPU
/// (`cuda:all`). Each entry gets its own copy of the models; a list may name `cpu` more than once
/// (several CPU workers, for tests of the scheduler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceList {
    Some(Vec<DeviceSpec>),
    AllCuda,
}

impl Default for DeviceList {
    fn default() -> Self {
        DeviceList::Some(vec![DeviceSpec::Auto])
    }
}

impl FromStr for DeviceList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("cuda:all") || s.trim().eq_ignore_ascii_case("gpu:all") {
            return Ok(DeviceList::AllCuda);
        }
        let specs = s
            .split(',')
            .map(|one| one.parse::<DeviceSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if specs.len() > 1 && specs.contains(&DeviceSpec::Auto) {
            return Err(format!("`{s}`: `auto` cannot be part of a list"));
        }
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            if !matches!(spec, DeviceSpec::Cpu) && !seen.insert(*spec) {
                return Err(format!("`{s}`: {spec} is listed twice"));
            }
        }
        Ok(DeviceList::Some(specs))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceList::AllCuda => f.write_str("cuda:all"),
            DeviceList::Some(specs) => {
                let names: Vec<String> = specs.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// Opens every device of `list` (`cuda:all`: every CUDA device of the machine).
pub fn select_devices(list: &DeviceList, kernels: &KernelOptions) -> anyhow::Result<Vec<Device>> {
    match list {
        DeviceList::Some(specs) => specs.iter().map(|s| select_device(*s, kernels)).collect(),
        DeviceList::AllCuda => {
            let n = cuda_device_count()?;
            if n == 0 {
                bail!("--device cuda:all: no CUDA device found; check `nvidia-smi`, or use --device cpu");
            }
            (0..n)
                .map(|i| select_device(DeviceSpec::Cuda(i), kernels))
                .collect()
        }
    }
}

/// Number of CUDA devices the driver sees.
pub fn cuda_device_count() -> anyhow::Result<usize> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        let n = CudaContext::device_count().map_err(|e| {
            anyhow::anyhow!(
                "cannot count the CUDA devices: {e:?}; check the driver and `nvidia-smi`"
            )
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
    #[cfg(not(feature = "cuda"))]
    bail!(
        "--device cuda:all: this virnucpro was built without CUDA support; rebuild with \
         `cargo build --release --features cuda`, or use --device cpu"
    )
}

/// What kind of device this is, precisely enough that two devices of one kind compute the same
/// numbers: `cpu`, the GPU's name and compute capability, `metal`.
pub fn device_kind(device: &Device) -> anyhow::Result<String> {
    match device {
        Device::Cpu => Ok("cpu".into()),
        #[cfg(feature = "cuda")]
        Device::Cuda(c) => {
            let stream = c.cuda_stream();
            let ctx = stream.context();
            let name = ctx.name().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(format!("{name} (compute capability {major}.{minor})"))
        }
        #[allow(unreachable_patterns)]
        _ => Ok(device_name(device)),
    }
}

/// Short name of a device for logs and messages.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// What `--dtype` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSpec {
    /// Per model family and device, see [`resolve_dtype`].
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
    /// CPU only: the encoders' linear layers with int8 weights (per output channel, packed once
    /// at load) and activations quantized per row; everything else f32 (see
    /// [`virnucpro_kernels::Int8Linear`]). Opt-in: close to f32, not equal.
    Int8,
}

impl FromStr for DTypeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(format!(
                "`{s}` is not a dtype; use auto, f32, f16, bf16 or int8 (CPU)"
            )),
        }
    }
}

impl fmt::Display for DTypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

/// The compute dtype of the activations. `Auto`: f32 on the CPU (its matrix products may run in
/// bf16, [`cpu_matmul`]); f16 on a GPU for both families (FastESM2 ships in f16; DNABERT-S is
/// post-LayerNorm, so its activations stay small). An overflow would show as non-finite
/// embeddings, which [`crate::embed`] refuses with a message that suggests `--dtype bf16`.
/// `Int8` and `Bf16` on the CPU: f32 activations around int8 or bf16 matrix products.
pub fn resolve_dtype(spec: DTypeSpec, family: ModelFamily, device: &Device) -> DType {
    match spec {
        DTypeSpec::F32 | DTypeSpec::Int8 => DType::F32,
        DTypeSpec::F16 => DType::F16,
        DTypeSpec::Bf16 if device.is_cpu() => DType::F32,
        DTypeSpec::Bf16 => DType::BF16,
        DTypeSpec::Auto => match (device, family) {
            (Device::Cpu, _) => DType::F32,
            // f16 for both families on a GPU: for DNABERT-S it matches the reference about ten
            // times more closely than bf16 (pooled rel err 6.6e-4 vs 5.2e-3 on an H100) at the
            // same speed; bf16 stays available with --dtype.
            _ => DType::F16,
        },
    }
}

/// How the linear layers multiply on `device` for `spec`: on the CPU, `int8` and `bf16` as
/// asked; `auto` takes bf16 where the CPU's bf16 kernel is measured faster than f32 (AMX,
/// [`virnucpro_kernels::cpu_bf16_isa`]), else f32. Other devices: f32 (their dtype is the model's).
///
/// bf16 passes the parity gate of the GPU's f16 and runs ~3x f32's speed on AMX and with
/// AVX512-BF16 (docs/ARCHITECTURE.md, "CPU matrix kernels"); emulated, it is slower than f32,
/// and Arm's `BFMMLA` kernel has not been timed on an Arm CPU, so `auto` takes it only on
/// x86-64's two kernels.
pub fn cpu_matmul(spec: DTypeSpec, device: &Device) -> CpuMatmul {
    if !device.is_cpu() {
        return CpuMatmul::F32;
    }
    match spec {
        DTypeSpec::Int8 if virnucpro_kernels::cpu_int8_isa().simd => CpuMatmul::Int8,
        DTypeSpec::Bf16 => CpuMatmul::Bf16,
        DTypeSpec::Auto if virnucpro_kernels::cpu_bf16_isa().default => CpuMatmul::Bf16,
        _ => CpuMatmul::F32,
    }
}

/// The precision of a model of `family` on `device` for `spec`, for logs and the run's
/// fingerprint, e.g. `F16`, `F32`, `F32 with bf16 linear layers (amx-bf16 32x32)`:
/// the kernel is named because two CPU kernels of one precision differ in the last bits.
pub fn dtype_label(spec: DTypeSpec, family: ModelFamily, device: &Device) -> String {
    precision_label(
        resolve_dtype(spec, family, device),
        cpu_matmul(spec, device),
    )
}

/// [`dtype_label`] of a model built with activations `dtype` and CPU matrix path `path`.
pub fn precision_label(dtype: DType, path: CpuMatmul) -> String {
    match path {
        CpuMatmul::F32 => format!("{dtype:?}"),
        CpuMatmul::Int8 => format!(
            "{dtype:?} with int8 linear layers ({})",
            virnucpro_kernels::cpu_int8_isa().kernel
        ),
        CpuMatmul::Bf16 => format!(
            "{dtype:?} with bf16 linear layers ({})",
            virnucpro_kernels::cpu_bf16_isa().kernel
        ),
    }
}

/// The model options for `spec` on `device`: [`cpu_matmul`]'s choice in the kernel options;
/// `--dtype int8` off the CPU is an error that says so, and a CPU without SIMD int8
/// instructions keeps f32, with a warning.
pub fn cpu_model_options(
    spec: DTypeSpec,
    device: &Device,
    options: &crate::options::ModelOptions,
) -> candle_core::Result<crate::options::ModelOptions> {
    let mut options = options.clone();
    if spec == DTypeSpec::Int8 && !device.is_cpu() {
        candle_core::bail!(
            "--dtype int8 runs on the CPU only (here: {}); on a GPU use --dtype f16, bf16 or \
             f32 (or auto)",
            device_name(device)
        );
    }
    options.kernels.cpu_matmul = cpu_matmul(spec, device);
    if spec == DTypeSpec::Int8 && options.kernels.cpu_matmul != CpuMatmul::Int8 {
        tracing::warn!(
            "--dtype int8: this CPU has no SIMD int8 matrix instructions (kernel {}); the \
             linear layers stay f32",
            virnucpro_kernels::cpu_int8_isa().kernel
        );
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("metal".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn parses_device_lists() {
        assert_eq!(
            "cuda:0,cuda:1".parse::<DeviceList>(),
            Ok(DeviceList::Some(vec![
                DeviceSpec::Cuda(0),
                DeviceSpec::Cuda(1)
            ]))
        );
        assert_eq!("cuda:all".parse::<DeviceList>(), Ok(DeviceList::AllCuda));
        assert_eq!(
            "cpu,cpu".parse::<DeviceList>(),
            Ok(DeviceList::Some(vec![DeviceSpec::Cpu, DeviceSpec::Cpu]))
        );
        assert!("cuda:0,cuda:0".parse::<DeviceList>().is_err());
        assert!("auto,cpu".parse::<DeviceList>().is_err());
        assert!("cuda:0,tpu".parse::<DeviceList>().is_err());
        assert_eq!(DeviceList::AllCuda.to_string(), "cuda:all");
    }

    #[test]
    fn gpu_without_feature_is_a_clear_error() {
        if !cfg!(feature = "cuda") {
            let err = select_device(DeviceSpec::Cuda(0), &KernelOptions::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        if !cfg!(feature = "metal") {
            let err = select_device(DeviceSpec::Metal(0), &KernelOptions::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("--features metal"), "{err}");
        }
    }

    #[test]
    fn auto_dtype() {
        assert_eq!(
            resolve_dtype(DTypeSpec::Auto, ModelFamily::Esm, &Device::Cpu),
            DType::F32
        );
        // bf16 on the CPU: f32 activations, bf16 products.
        assert_eq!(
            resolve_dtype(DTypeSpec::Bf16, ModelFamily::Esm, &Device::Cpu),
            DType::F32
        );
    }

    #[test]
    fn cpu_matrix_paths_follow_the_dtype_and_the_cpu() {
        assert_eq!("INT8".parse::<DTypeSpec>(), Ok(DTypeSpec::Int8));
        assert_eq!(DTypeSpec::Int8.to_string(), "int8");
        assert!("int4".parse::<DTypeSpec>().unwrap_err().contains("int8"));
        assert_eq!(
            resolve_dtype(DTypeSpec::Int8, ModelFamily::DnaBert, &Device::Cpu),
            DType::F32
        );
        let base = crate::options::ModelOptions::default();
        let path = |spec| {
            cpu_model_options(spec, &Device::Cpu, &base)
                .unwrap()
                .kernels
                .cpu_matmul
        };
        let int8 = if virnucpro_kernels::cpu_int8_isa().simd {
            CpuMatmul::Int8
        } else {
            CpuMatmul::F32
        };
        assert_eq!(path(DTypeSpec::Int8), int8);
        assert_eq!(path(DTypeSpec::Bf16), CpuMatmul::Bf16);
        assert_eq!(path(DTypeSpec::F32), CpuMatmul::F32);
        assert_eq!(path(DTypeSpec::F16), CpuMatmul::F32);
        // The dispatcher's choice: bf16 products where the CPU has AMX or AVX512-BF16, else f32.
        let isa = virnucpro_kernels::cpu_bf16_isa();
        let amx = isa.kernel.starts_with("amx");
        let fast = amx || isa.kernel.starts_with("avx512");
        assert_eq!(isa.default, fast, "{isa:?}");
        let auto = if fast {
            CpuMatmul::Bf16
        } else {
            CpuMatmul::F32
        };
        assert_eq!(path(DTypeSpec::Auto), auto);
        let label = dtype_label(DTypeSpec::Auto, ModelFamily::Esm, &Device::Cpu);
        assert_eq!(label == "F32", !fast, "{label}");
        let label = dtype_label(DTypeSpec::Bf16, ModelFamily::Esm, &Device::Cpu);
        assert!(
            label.starts_with("F32 with bf16 linear layers ("),
            "{label}"
        );
        assert_eq!(label.contains("amx-bf16"), amx, "{label}");
    }
}
