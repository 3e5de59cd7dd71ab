//! `virnucpro predict`: the whole pipeline.

use std::path::PathBuf;

use virnucpro::models::esm::TokenDropout;
use virnucpro::models::hub::{DEFAULT_NUCLEOTIDE_MODEL, DEFAULT_PROTEIN_MODEL};
use virnucpro::pipeline::embed::RandomModel;
use virnucpro::pipeline::predict::{self, PredictRequest};

const EXAMPLES: &str = "\
Examples:
  # A FastESM2 classifier made with `virnucpro train`, default models from the Hugging Face cache:
  virnucpro predict contigs.fa.gz --chunk-len 500 --classifier fastesm_500.safetensors --out-dir out/

  # The published 500-bp classifier (trained on ESM2-3B features):
  virnucpro predict reads.fq.gz --chunk-len 500 --classifier 500_model.pth \\
      --esm facebook/esm2_t36_3B_UR50D --out-dir out/ --device cuda

  # The bundled demo (tiny random-weight models):
  virnucpro predict demo/genomes.fa --chunk-len 60 --dnabert demo/models/dnabert \\
      --esm demo/models/fastesm --classifier demo/classifier.safetensors --out-dir demo-out

Outputs in --out-dir: prediction_results.txt (one row per kept frame),
prediction_results_highestscore.csv (one row per chunk; tab-separated like the original),
prediction_summary.tsv (one row per input record with a call), and with --keep-frames
identified_nucleotide.fa / identified_protein.faa. Files appear only when the run succeeds.";

/// Predict which records are viral: chunk, translate in six frames, embed with DNABERT-S and an
/// ESM2-family model, and score every open frame with the VirNucPro classifier.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub compute: super::ComputeArgs,

    /// FASTA/FASTQ files, plain or gzip/bzip2/xz/zstd compressed; `-` reads stdin.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Chunk length in bases: the one the classifier was trained for (300 or 500 for the
    /// published models).
    #[arg(short = 'l', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_len: u64,

    /// Classifier: this project's .safetensors, a published VirNucPro .pth (pickled module), or a
    /// PyTorch state dict.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "random_weights"
    )]
    pub classifier: Option<PathBuf>,

    /// Output directory (created if missing; existing files are replaced only on success).
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Nucleotide model: directory or Hugging Face Hub ID.
    #[arg(long, value_name = "DIR|HUB_ID", default_value = DEFAULT_NUCLEOTIDE_MODEL, help_heading = "Models")]
    pub dnabert: String,

    /// Protein model: directory or Hub ID (facebook/esm2_t36_3B_UR50D for the published
    /// classifiers).
    #[arg(long, value_name = "DIR|HUB_ID", default_value = DEFAULT_PROTEIN_MODEL, help_heading = "Models")]
    pub esm: String,

    /// ESM2 token-dropout rescaling: auto (on for model_type esm, off for fast_esm), on, off.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|on|off",
        help_heading = "Models"
    )]
    pub esm_token_dropout: TokenDropout,

    /// Refuse to run when the classifier's metadata names other models or another chunk length
    /// (by default a warning).
    #[arg(long, help_heading = "Models")]
    pub strict: bool,

    /// Also write the kept frames (identified_nucleotide.fa, identified_protein.faa).
    #[arg(long, help_heading = "Output")]
    pub keep_frames: bool,

    /// A record is called `virus` when at least this fraction of its scored chunks is viral.
    #[arg(long, value_name = "F", default_value_t = 0.5, help_heading = "Output")]
    pub min_viral_fraction: f64,

    /// Benchmarks only: random weights of the real DNABERT-S shape and of this protein-model
    /// shape (esm2-650m, esm2-3b) plus a random classifier; the scores are meaningless.
    #[arg(long, value_name = "SHAPE", hide = true)]
    pub random_weights: Option<RandomModel>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let req = PredictRequest {
        inputs: args.inputs,
        chunk_len: usize::try_from(args.chunk_len)?,
        classifier: args.classifier.unwrap_or_default(),
        dnabert: args.dnabert,
        esm: args.esm,
        out_dir: args.out_dir,
        device: args.compute.device,
        dtype: args.compute.dtype,
        batch_tokens: args.compute.batch_tokens(),
        esm_token_dropout: args.esm_token_dropout,
        keep_frames: args.keep_frames,
        min_viral_fraction: args.min_viral_fraction,
        strict: args.strict,
        progress: tracing::enabled!(tracing::Level::INFO),
        random_weights: args.random_weights,
    };
    let report = predict::run(&req)?;
    tracing::info!("{report}; results in {}", req.out_dir.display());
    Ok(())
}
