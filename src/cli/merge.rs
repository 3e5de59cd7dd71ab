//! `virnucpro merge`: the finished shards of one run into its output files.

use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  # Eight shards (e.g. cluster jobs), then one set of files:
  for i in $(seq 1 8); do
    virnucpro predict contigs.fa --chunk-len 500 --classifier c.safetensors --shard $i/8 --out-dir shards/$i
  done
  virnucpro merge shards/* --out-dir out/

The shards must come from the same command (same inputs, models and options) and all N of them
must be given, each once; merge checks this and says what is missing or foreign. The files it
writes are byte-identical to one `predict` over the whole input.";

/// Merge the output directories of `predict --shard I/N` runs (all N shards of one run) into the
/// files of one run over the whole input.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The shard output directories (each holds a virnucpro-shard.journal).
    #[arg(required = true, value_name = "SHARD_DIR")]
    pub shards: Vec<PathBuf>,

    /// Output directory (created if missing; existing files are replaced only on success).
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = virnucpro_core::output::merge::merge(&args.shards, &args.out_dir)?;
    tracing::info!("{report}; results in {}", args.out_dir.display());
    Ok(())
}
