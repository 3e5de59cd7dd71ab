//! Command-line definitions (clap derive). Each subcommand lives in its own file with its
//! `Args` and a `run` that calls into the library.

use clap::{Parser, Subcommand};

/// `println!` that returns the write's error instead of panicking: a reader that goes away
/// (`virnucpro bench --json | head`) ends the command, and `main` exits quietly on that.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod bench;
mod convert;
mod doctor;
mod embed;
mod evaluate;
mod extract;
mod fetch;
mod frames;
mod merge;
mod plot;
mod predict;
mod prepare;
mod presets;
mod train;

#[derive(Parser, Debug)]
#[command(
    name = "virnucpro",
    version,
    about = "Identify viral sequences in nucleotide FASTA (VirNucPro: DNABERT-S + ESM2/FastESM2 + MLP)",
    propagate_version = true
)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Threads for everything that runs on the CPU (reading, translation, tokenization, CPU
    /// inference); default: all cores.
    #[arg(short = 'j', long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Attention implementation of the encoders: auto (the fused CUDA kernel where it applies:
    /// CUDA build and device, head size 64, f16/bf16; else materialized), fused, naive.
    #[arg(
        long,
        global = true,
        default_value = "auto",
        value_name = "auto|fused|naive"
    )]
    pub attention: virnucpro_kernels::AttentionImpl,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Frames(frames::Args),
    Embed(embed::Args),
    Predict(predict::Args),
    Merge(merge::Args),
    Fetch(fetch::Args),
    Convert(convert::Args),
    Doctor(doctor::Args),
    Bench(bench::Args),
    Prepare(prepare::Args),
    Extract(extract::Args),
    Train(train::Args),
    Evaluate(evaluate::Args),
    Plot(plot::Args),
    Presets(presets::Args),
}

/// Runs `command`; `attention` is the global `--attention`, given to the commands that build
/// models (with the environment's options, [`virnucpro::env`]).
pub fn run(command: Command, attention: virnucpro_kernels::AttentionImpl) -> anyhow::Result<()> {
    // Every command may leave temporary outputs; Ctrl-C must remove them.
    virnucpro_atomic::install_interrupt_handler()?;
    match command {
        Command::Frames(a) => frames::run(a),
        Command::Embed(a) => embed::run(a, attention),
        Command::Predict(a) => predict::run(a, attention),
        Command::Merge(a) => merge::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Doctor(a) => doctor::run(a, attention),
        Command::Bench(a) => bench::run(a, attention),
        Command::Prepare(a) => prepare::run(a),
        Command::Extract(a) => extract::run(a, attention),
        Command::Train(a) => train::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Presets(a) => presets::run(a),
    }
}

/// Where and how the models run: shared by every command that embeds on one device.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Where to run: auto, cpu, cuda, cuda:N, metal.
    #[arg(
        long,
        default_value = "auto",
        value_name = "DEVICE",
        help_heading = "Compute"
    )]
    pub device: virnucpro_models::device::DeviceSpec,

    #[command(flatten)]
    pub precision: PrecisionArgs,
}

/// Precision and batch size: shared by every command that embeds (`predict` takes a list of
/// devices, the others one, so the device is not part of it).
#[derive(clap::Args, Debug, Clone)]
pub struct PrecisionArgs {
    /// Compute precision: auto (f16 on a GPU; on the CPU bf16 where it has AMX or AVX512-BF16,
    /// else f32), f32, f16, bf16 (on the CPU: f32 with the linear layers' products in bf16, on
    /// the CPU's bf16 instructions (AMX, AVX512-BF16, Arm BF16) where it has them, emulated
    /// elsewhere), or int8 (CPU only, opt-in: the linear layers with int8
    /// weights and per-row int8 activations, close to f32 but not equal). Outputs are always
    /// written as f32.
    #[arg(
        long,
        default_value = "auto",
        value_name = "DTYPE",
        help_heading = "Compute"
    )]
    pub dtype: virnucpro_models::device::DTypeSpec,

    /// Padded tokens per forward pass (batch size x longest sequence, sequences sorted by length).
    /// Default: 4096 on CPU, 28672 on GPU; lower it if a GPU runs out of memory (`predict` splits
    /// such a batch and retries, and keeps the smaller budget).
    #[arg(long, value_name = "N", help_heading = "Compute",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,
}

impl PrecisionArgs {
    pub fn batch_tokens(&self) -> Option<usize> {
        self.batch_tokens
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// `--preset` and `--presets`: shared by `predict`, `doctor` and `fetch`.
#[derive(clap::Args, Debug, Clone)]
pub struct PresetArgs {
    /// A ready configuration: sets --dnabert, --esm, --classifier and --chunk-len (a flag that
    /// contradicts it is an error). Built in: virnucpro-300 and virnucpro-500 (DNABERT-S +
    /// ESM2-3B + the published VirNucPro classifiers, downloaded once and verified); more in the
    /// presets file. `virnucpro presets` lists them.
    #[arg(long, value_name = "NAME", help_heading = "Models")]
    pub preset: Option<String>,

    /// Presets file (TOML, one table per preset; docs/FORMATS.md). Default:
    /// $XDG_CONFIG_HOME/virnucpro/presets.toml (~/.config/virnucpro/presets.toml), if it exists.
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub presets: Option<std::path::PathBuf>,
}

/// `BATCHxLENGTH` (e.g. `512x168`) of `--shapes`-style options; `min_len` is the shortest length
/// that makes sense (3 for whole models: `<cls>`, one residue, `<eos>`).
pub fn parse_shape(s: &str, min_len: usize) -> anyhow::Result<(usize, usize)> {
    use anyhow::Context;
    let (b, t) = s
        .trim()
        .split_once(['x', 'X'])
        .with_context(|| format!("--shapes: `{s}` is not BATCHxLENGTH (e.g. 512x168)"))?;
    let b: usize = b
        .parse()
        .with_context(|| format!("--shapes: bad batch in `{s}`"))?;
    let t: usize = t
        .parse()
        .with_context(|| format!("--shapes: bad length in `{s}`"))?;
    if b == 0 || t < min_len.max(1) {
        anyhow::bail!("--shapes: `{s}`: batch must be positive and length at least {min_len}");
    }
    Ok((b, t))
}

/// Applies `--threads` to every pool of CPU threads: rayon's global pool (translation,
/// tokenization) and candle's CPU kernels, which size their own parallelism from
/// `RAYON_NUM_THREADS`. Must run before any thread pool starts.
pub fn set_threads(threads: Option<u64>) -> anyhow::Result<()> {
    let Some(n) = threads else { return Ok(()) };
    // Single-threaded here: called first thing in main, before any other thread exists.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(usize::try_from(n)?)
        .build_global()
        .map_err(|e| anyhow::anyhow!("--threads {n}: cannot start the thread pool: {e}"))
}

/// Prints what `doctor` and `bench` send as they run: results on stdout, progress notes on
/// stderr, each as soon as it comes (both streams flush at a newline).
pub struct Console;

impl virnucpro::progress::Progress for Console {
    fn out(&mut self, text: &str) {
        print!("{text}");
    }
    fn note(&mut self, text: &str) {
        eprint!("{text}");
    }
}

/// Logs go to stderr, every workspace crate's at the level -v/-q choose (`virnucpro::logging`);
/// `RUST_LOG` overrides them.
pub fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(virnucpro::logging::filter_directives(level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
