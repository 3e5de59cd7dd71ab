//! `virnucpro extract`: embeddings of a prepared data set, as feature shards for `train`.

use std::path::PathBuf;

use virnucpro_assets::hub::{DEFAULT_NUCLEOTIDE_MODEL, DEFAULT_PROTEIN_MODEL};
use virnucpro_models::esm::TokenDropout;
use virnucpro_train::extract::{extract, ExtractOptions};
use virnucpro_train::features::DEFAULT_ROWS_PER_SHARD;

/// Embed the frames of a prepared data set (`virnucpro prepare`) with the nucleotide and the
/// protein model and write labelled feature shards (`[nucleotide | protein]` per frame).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Writes DIR/shard-NNNNN.safetensors (features, labels, frame IDs), a completion record
DIR/shard-NNNNN.done.json per finished shard, and DIR/manifest.json last. Rerun the same command
after an interruption: finished shards are verified (size, checksum, frames, models) and kept,
the others are computed.

Example:
  virnucpro prepare --chunk-len 300 --out-dir train300 --viral viral.gbff.gz --host host.gbff.gz
  virnucpro extract --dataset train300 --out train300/features --device cuda
  virnucpro train --features train300/features --out 300_model.safetensors")]
pub struct Args {
    #[command(flatten)]
    pub compute: super::ComputeArgs,

    /// Prepared data set: the --out-dir of `virnucpro prepare` (summary.json, frames.tsv).
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,

    /// Output feature directory (created if missing; a rerun resumes it).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Nucleotide model: a directory or Hugging Face Hub ID.
    #[arg(long, value_name = "DIR|ID", default_value = DEFAULT_NUCLEOTIDE_MODEL,
          help_heading = "Models")]
    pub dnabert: String,

    /// Protein model (ESM2 or FastESM2): a directory or Hugging Face Hub ID.
    #[arg(long, value_name = "DIR|ID", default_value = DEFAULT_PROTEIN_MODEL,
          help_heading = "Models")]
    pub esm: String,

    /// ESM2 token-dropout rescaling of the embeddings: auto (on for model_type esm, off for
    /// fast_esm), on, off.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|on|off",
        help_heading = "Models"
    )]
    pub esm_token_dropout: TokenDropout,

    /// Frames per shard: the unit of resuming (a shard is 4 x rows x features bytes).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ROWS_PER_SHARD as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rows_per_shard: u64,
}

pub fn run(args: Args, attention: virnucpro_kernels::AttentionImpl) -> anyhow::Result<()> {
    virnucpro_atomic::install_interrupt_handler()?;
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let opts = ExtractOptions {
        dataset: args.dataset,
        out: args.out,
        dnabert: args.dnabert,
        esm: args.esm,
        device: args.compute.device,
        dtype: args.compute.precision.dtype,
        batch_tokens: args.compute.precision.batch_tokens(),
        rows_per_shard: to_usize(args.rows_per_shard),
        esm_token_dropout: args.esm_token_dropout,
        model_options: virnucpro::env::model_options(attention),
    };
    let report = extract(&opts)?;
    let m = &report.manifest;
    outln!(
        "{} frames x {} features ({} + {}) in {} shards: {} computed ({} of them recomputed), {} \
         kept{}",
        m.rows,
        m.feature_dim,
        m.info.dnabert_hidden.unwrap_or(0),
        m.info.esm_hidden.unwrap_or(0),
        m.shards.len(),
        report.shards_computed,
        report.shards_recomputed,
        report.shards_kept,
        report
            .frames_per_s()
            .map(|r| format!("; {r:.1} frames/s"))
            .unwrap_or_default()
    )?;
    outln!("wrote {}", opts.out.join("manifest.json").display())?;
    Ok(())
}
