//! `virnucpro fetch`: resolve the models and the classifier of a run once, before going offline.

use std::path::PathBuf;

use virnucpro_assets::presets::ModelChoice;
use virnucpro_core::fetch::{self, FetchRequest};

const EXAMPLES: &str = "\
Give it the model flags of the `predict` you will run. Hub IDs are downloaded into the Hugging
Face cache ($HF_HOME, else ~/.cache/huggingface) and a preset's classifier into virnucpro's cache
($VIRNUCPRO_CACHE, else ~/.cache/virnucpro), unless they are there already; local directories and
files are checked. Then the classifier is checked against the two models (their config.json: no
weights are loaded). It prints what `predict` will use and exits non-zero, saying what is missing
and how to get it, when something cannot be had: with HF_HUB_OFFLINE=1 or VIRNUCPRO_OFFLINE=1 it
only checks the caches. Afterwards `predict` with the same flags needs no network: run it with
HF_HUB_OFFLINE=1 VIRNUCPRO_OFFLINE=1 (the cluster workflow in workflow/ does this: README, \"Many
samples on a cluster\").

Examples:
  # On a login node with network access, before submitting the jobs:
  virnucpro fetch --preset virnucpro-500
  # Then, on compute nodes without network:
  HF_HUB_OFFLINE=1 VIRNUCPRO_OFFLINE=1 virnucpro predict contigs.fa --preset virnucpro-500 -o out/

  virnucpro fetch --chunk-len 500 --classifier fastesm_500.safetensors   # the default models
  HF_HOME=/shared/hf virnucpro fetch --dnabert zhihan1996/DNABERT-S --esm Synthyra/FastESM2_650";

/// Download (or check) the models and the classifier a `predict` with the same flags will use,
/// and check that they fit together, so that later runs need no network.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Nucleotide model: directory or Hugging Face Hub ID [default: zhihan1996/DNABERT-S, or
    /// the preset's].
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub dnabert: Option<String>,

    /// Protein model: directory or Hub ID [default: Synthyra/FastESM2_650, or the preset's].
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub esm: Option<String>,

    /// Classifier file, checked against the models (needs --chunk-len); without it and without
    /// --preset only the models are fetched.
    #[arg(short, long, value_name = "FILE", help_heading = "Models")]
    pub classifier: Option<PathBuf>,

    /// Chunk length you will predict with (checked against the classifier's metadata).
    #[arg(short = 'l', long, value_name = "N", help_heading = "Models",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_len: Option<u64>,

    #[command(flatten)]
    pub presets: super::PresetArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = FetchRequest {
        choice: ModelChoice {
            preset: args.presets.preset,
            dnabert: args.dnabert,
            esm: args.esm,
            classifier: args.classifier,
            chunk_len: args.chunk_len.map(usize::try_from).transpose()?,
            esm_token_dropout: None,
        },
        presets_file: args.presets.presets,
        progress: tracing::enabled!(tracing::Level::INFO),
    };
    let fetched = fetch::fetch(&req)?;
    for w in &fetched.warnings {
        tracing::warn!("{w}");
    }
    print!("{fetched}");
    tracing::info!(
        "everything is in place: `predict` with the same model flags runs without network \
         (HF_HUB_OFFLINE=1 VIRNUCPRO_OFFLINE=1)"
    );
    Ok(())
}
