//! `virnucpro bench`: embedding throughput (tokens/s, sequences/s) of one model.

use virnucpro::bench::{self, BenchOptions};
use virnucpro_kernels::AttentionImpl;
use virnucpro_models::device::{select_device, DTypeSpec, DeviceSpec};

/// Measure embedding throughput on synthetic batches: a model directory / Hub ID, or a real
/// architecture with random weights (esm2-650m, esm2-3b, dnabert-s).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  virnucpro bench --model esm2-650m --device cuda --shapes 512x168,2x1024,1x2048
  virnucpro bench --model dnabert-s --device cuda --shapes 256x128 --compare-attention
  virnucpro bench --model ./FastESM2_650 --device cuda --ragged --json")]
pub struct Args {
    /// esm2-650m, esm2-3b, dnabert-s (random weights of that shape), or a model directory /
    /// Hugging Face Hub ID.
    #[arg(short, long, default_value = "esm2-650m")]
    pub model: String,
    /// Where to run: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute precision: auto (f16 on a GPU; on the CPU bf16 products where it has AMX or
    /// AVX512-BF16, else f32), f32, f16, bf16, int8 (CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeSpec,
    /// Batch x padded length shapes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "512x168,2x1024,1x2048")]
    pub shapes: Vec<String>,
    /// Rows of random length between T/2 and T (padded to T) instead of all T.
    #[arg(long)]
    pub ragged: bool,
    /// Time both the fused and the materialized attention (else only --attention's choice;
    /// on a CPU only the materialized one exists).
    #[arg(long)]
    pub compare_attention: bool,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of whole forward passes, time the building blocks of one layer of the named
    /// shape (matmuls, bias add, layer norm, GELU, rotary, attention) at the first --shapes.
    #[arg(long)]
    pub ops: bool,
    /// Instead of a model, time the input pass of resumable runs and shards on these FASTA/FASTQ
    /// files: read, parse, cut into work units and hash them (the input's fingerprint).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "ops")]
    pub input: Vec<std::path::PathBuf>,
    /// Maintainers: time cuBLASLt's algorithms for the models' linear layers at this many rows
    /// and print the tuned table (JSON) for crates/kernels (CUDA builds).
    #[arg(long, hide = true, value_name = "ROWS")]
    pub tune_gemm: Option<usize>,
}

pub fn run(args: Args, attention: AttentionImpl) -> anyhow::Result<()> {
    if !args.input.is_empty() {
        let r = virnucpro_core::input::units::measure_input(&args.input, args.repeats.max(1))?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&r)?)?;
        } else {
            outln!("{r}")?;
        }
        return Ok(());
    }
    // Timings only: no injected failures.
    let model_options = virnucpro_models::options::ModelOptions {
        kernels: virnucpro::env::kernel_options(attention),
        profiler: virnucpro::env::profiler(),
        inject_oom_above_rows: None,
        sub_batch_bytes: virnucpro::env::sub_batch_bytes(),
    };
    let device = select_device(args.device, &model_options.kernels)?;
    if let Some(rows) = args.tune_gemm {
        #[cfg(feature = "cuda")]
        {
            let family = virnucpro_models::config::ModelFamily::Esm;
            let dtype = virnucpro_models::device::resolve_dtype(args.dtype, family, &device);
            let table = bench::tune_gemm(&device, dtype, rows)?;
            outln!("{}", serde_json::to_string_pretty(&table)?)?;
            return Ok(());
        }
        #[cfg(not(feature = "cuda"))]
        anyhow::bail!("--tune-gemm {rows}: this build has no CUDA support");
    }
    let attention = if args.compare_attention && device.is_cuda() {
        vec![AttentionImpl::Fused, AttentionImpl::Naive]
    } else {
        vec![attention]
    };
    let opts = BenchOptions {
        model: args.model,
        dtype: args.dtype,
        shapes: args
            .shapes
            .iter()
            .map(|s| super::parse_shape(s, 3))
            .collect::<anyhow::Result<_>>()?,
        ragged: args.ragged,
        warmup: args.warmup,
        repeats: args.repeats.max(1),
        attention,
        model_options,
    };
    if args.ops {
        let dims = bench::layer_dims(&opts.model)?;
        let family = if opts.model.eq_ignore_ascii_case("dnabert-s") {
            virnucpro_models::config::ModelFamily::DnaBert
        } else {
            virnucpro_models::config::ModelFamily::Esm
        };
        let dtype = virnucpro_models::device::resolve_dtype(opts.dtype, family, &device);
        let options =
            virnucpro_models::device::cpu_model_options(opts.dtype, &device, &opts.model_options)?;
        let kernels = &options.kernels;
        let rows = bench::op_profile(
            &device,
            dtype,
            opts.shapes[0],
            dims,
            opts.repeats,
            kernels,
            &mut super::Console,
        )?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            outln!(
                "ops of one {} layer at {}x{} in {dtype:?}",
                opts.model,
                opts.shapes[0].0,
                opts.shapes[0].1
            )?;
            print!("{}", bench::op_table(&rows));
        }
        return Ok(());
    }
    let report = bench::run(&opts, &device, &mut super::Console)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print!("{}", bench::table(&report));
    }
    Ok(())
}
