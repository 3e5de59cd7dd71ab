//! `virnucpro predict`: the whole pipeline.

use std::path::PathBuf;

use virnucpro_assets::hub::{DEFAULT_NUCLEOTIDE_MODEL, DEFAULT_PROTEIN_MODEL};
use virnucpro_assets::presets::{self, ModelChoice};
use virnucpro_core::input::units::ShardSpec;
use virnucpro_core::predict::{self, PredictRequest};
use virnucpro_models::device::DeviceList;
use virnucpro_models::embed::RandomModel;
use virnucpro_models::esm::TokenDropout;

const EXAMPLES: &str = "\
Examples:
  # The published 500-bp classifier with its models (DNABERT-S + ESM2-3B), all fetched once:
  virnucpro predict contigs.fa.gz --preset virnucpro-500 --out-dir out/ --device cuda

  # A FastESM2 classifier made with `virnucpro train`, default models from the Hugging Face cache:
  virnucpro predict contigs.fa.gz --chunk-len 500 --classifier fastesm_500.safetensors -o out/

  # The same, through the preset `virnucpro train` wrote beside it:
  virnucpro predict contigs.fa.gz --presets fastesm_500.preset.toml --preset fastesm_500 -o out/

  # The bundled demo (tiny random-weight models):
  virnucpro predict demo/genomes.fa --chunk-len 60 --dnabert demo/models/dnabert \\
      --esm demo/models/fastesm --classifier demo/classifier.safetensors --out-dir demo-out

  # Every GPU of the machine; rerun the same command after an interruption to resume:
  virnucpro predict metagenome.fa.gz --preset virnucpro-500 --device cuda:all --out-dir out/

  # Shard 3 of 8 (e.g. one cluster job each), then merge the eight directories:
  virnucpro predict contigs.fa --shard 3/8 ... --out-dir shards/3
  virnucpro merge shards/1 shards/2 ... shards/8 --out-dir out/

Outputs in --out-dir: prediction_results.txt (one row per kept frame),
prediction_results_highestscore.csv (one row per chunk; tab-separated like the original),
prediction_summary.tsv (one row per input record with a call), with --keep-frames
identified_nucleotide.fa / identified_protein.faa, with --write-viral-fasta viral_records.fa.
Files appear only when the run succeeds. While it runs, the directory holds a journal
(.virnucpro.journal) of the finished work: the same command again after Ctrl-C, a crash or a
killed job continues where it stopped. The input must be nucleotide sequence: a record with
letters no nucleotide alphabet uses (protein FASTA given by mistake) stops the run
(docs/FORMATS.md, \"Nucleotide alphabet\").";

/// The after-help: the built-in presets, then the examples.
fn after_help() -> String {
    format!(
        "Built-in presets (`virnucpro presets` lists them and those of your presets file):\n{}\n{EXAMPLES}",
        presets::builtin_help()
    )
}

/// Predict which records are viral: chunk, translate in six frames, embed with DNABERT-S and an
/// ESM2-family model, and score every open frame with the VirNucPro classifier.
#[derive(clap::Args, Debug)]
#[command(after_help = after_help())]
pub struct Args {
    /// Where to run: auto, cpu, cuda, cuda:N, a list (cuda:0,cuda:1), cuda:all (every GPU), or
    /// metal. Each device gets its own copy of the models; work goes to whichever is free.
    #[arg(
        long,
        default_value = "auto",
        value_name = "DEVICE[,DEVICE...]",
        help_heading = "Compute"
    )]
    pub device: DeviceList,

    #[command(flatten)]
    pub precision: super::PrecisionArgs,

    /// FASTA/FASTQ files, plain or gzip/bzip2/xz/zstd compressed; `-` reads stdin.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Chunk length in bases: the one the classifier was trained for (300 or 500 for the
    /// published models). Required unless --preset sets it.
    #[arg(short = 'l', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_len: Option<u64>,

    /// Classifier: this project's .safetensors, a published VirNucPro .pth (pickled module), or a
    /// PyTorch state dict. Required unless --preset.
    #[arg(short, long, value_name = "FILE")]
    pub classifier: Option<PathBuf>,

    #[command(flatten)]
    pub presets: super::PresetArgs,

    /// Output directory (created if missing; existing files are replaced only on success).
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Nucleotide model: directory or Hugging Face Hub ID [default: zhihan1996/DNABERT-S, or
    /// the preset's].
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub dnabert: Option<String>,

    /// Protein model: directory or Hub ID (facebook/esm2_t36_3B_UR50D for the published
    /// classifiers) [default: Synthyra/FastESM2_650, or the preset's].
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub esm: Option<String>,

    /// ESM2 token-dropout rescaling: auto (on for model_type esm, off for fast_esm), on, off
    /// [default: auto, or the preset's].
    #[arg(long, value_name = "auto|on|off", help_heading = "Models")]
    pub esm_token_dropout: Option<TokenDropout>,

    /// Refuse to run when the classifier's metadata names other models or another chunk length
    /// (by default a warning).
    #[arg(long, help_heading = "Models")]
    pub strict: bool,

    /// Also write the kept frames (identified_nucleotide.fa, identified_protein.faa).
    #[arg(long, help_heading = "Output")]
    pub keep_frames: bool,

    /// Also write viral_records.fa: the input records called `virus` (header and sequence as
    /// read, in input order).
    #[arg(long, help_heading = "Output")]
    pub write_viral_fasta: bool,

    /// Handle only share I of N of the input (balanced by bases), for `virnucpro merge`.
    #[arg(long, value_name = "I/N", help_heading = "Large inputs")]
    pub shard: Option<ShardSpec>,

    /// Discard the journal of an earlier, different run found in --out-dir (by default such a
    /// run is refused, and the same command resumes).
    #[arg(long, help_heading = "Large inputs")]
    pub restart: bool,

    /// Benchmarks only: keep no journal (the run cannot be resumed), to measure its cost.
    #[arg(long, hide = true, conflicts_with = "shard")]
    pub no_journal: bool,

    /// A record is called `virus` when at least this fraction of its scored chunks is viral.
    #[arg(long, value_name = "F", default_value_t = 0.5, help_heading = "Output")]
    pub min_viral_fraction: f64,

    /// Benchmarks only: random weights of the real DNABERT-S shape and of this protein-model
    /// shape (esm2-650m, esm2-3b) plus a random classifier; the scores are meaningless.
    #[arg(long, value_name = "SHAPE", hide = true)]
    pub random_weights: Option<RandomModel>,
}

pub fn run(args: Args, attention: virnucpro_kernels::AttentionImpl) -> anyhow::Result<()> {
    let progress = tracing::enabled!(tracing::Level::INFO);
    let choice = ModelChoice {
        preset: args.presets.preset,
        dnabert: args.dnabert,
        esm: args.esm,
        classifier: args.classifier,
        chunk_len: args.chunk_len.map(usize::try_from).transpose()?,
        esm_token_dropout: args.esm_token_dropout,
    };
    let models = presets::resolve(
        &choice,
        args.presets.presets.as_deref(),
        args.random_weights.is_none(),
        progress,
    )?;
    let req = PredictRequest {
        inputs: args.inputs,
        chunk_len: models.require_chunk_len()?,
        classifier: models.classifier.unwrap_or_default(),
        dnabert: models
            .dnabert
            .unwrap_or_else(|| DEFAULT_NUCLEOTIDE_MODEL.to_string()),
        esm: models
            .esm
            .unwrap_or_else(|| DEFAULT_PROTEIN_MODEL.to_string()),
        out_dir: args.out_dir,
        devices: args.device,
        dtype: args.precision.dtype,
        batch_tokens: args.precision.batch_tokens(),
        esm_token_dropout: models.esm_token_dropout.unwrap_or_default(),
        keep_frames: args.keep_frames,
        write_viral_fasta: args.write_viral_fasta,
        min_viral_fraction: args.min_viral_fraction,
        strict: args.strict,
        shard: args.shard,
        restart: args.restart,
        no_journal: args.no_journal,
        progress,
        random_weights: args.random_weights,
        kernels: virnucpro::env::kernel_options(attention),
        sub_batch_bytes: virnucpro::env::sub_batch_bytes(),
        pool: virnucpro::env::pool_policy(),
        test_hooks: virnucpro::env::predict_test_hooks(),
    };
    let report = predict::run(&req)?;
    tracing::info!("{report}; results in {}", req.out_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The defaults written in the help are the ones `run` applies, and the help lists every
    /// built-in preset.
    #[test]
    fn help_names_the_defaults_and_the_builtin_presets() {
        let mut cmd = crate::cli::Cli::command();
        let predict = cmd.find_subcommand_mut("predict").unwrap();
        let help = predict.render_long_help().to_string();
        for default in [
            super::DEFAULT_NUCLEOTIDE_MODEL,
            super::DEFAULT_PROTEIN_MODEL,
            "[default: auto",
        ] {
            assert!(help.contains(default), "{default} missing from the help");
        }
        for p in virnucpro_assets::presets::builtin_presets() {
            assert!(help.contains(&p.name), "{} missing from the help", p.name);
        }
    }
}
