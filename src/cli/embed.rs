//! `virnucpro embed`: pooled embeddings of FASTA records with one model.

use std::path::PathBuf;

use virnucpro_core::embed::{self, EmbedRequest};
use virnucpro_models::embed::RandomModel;
use virnucpro_models::esm::TokenDropout;

/// Embed sequences with an ESM2/FastESM2 or DNABERT model and write one vector per record.
///
/// Protein FASTA for ESM2-family models, DNA FASTA for DNABERT; every record is embedded as
/// given (no chunking, no translation). The output is a safetensors file with tensor
/// `embeddings` (f32, [records, hidden], input order) and metadata `ids`, `model`, `pooling`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  virnucpro embed --model Synthyra/FastESM2_650 proteins.faa --out prot.safetensors
  virnucpro embed --model ./DNABERT-S frames.fna --out dna.safetensors --device cuda
  HF_HUB_OFFLINE=1 virnucpro embed --model facebook/esm2_t36_3B_UR50D p.faa --out e.safetensors")]
pub struct Args {
    #[command(flatten)]
    pub compute: super::ComputeArgs,

    /// FASTA file(s) to embed, read in order (`-` for standard input; gzip is detected).
    #[arg(value_name = "INPUT", required = true)]
    pub inputs: Vec<PathBuf>,

    /// Model directory (config.json, weights, tokenizer) or Hugging Face Hub ID, e.g.
    /// Synthyra/FastESM2_650, facebook/esm2_t36_3B_UR50D, zhihan1996/DNABERT-S. Hub models come
    /// from the HF cache (HF_HOME), downloaded unless HF_HUB_OFFLINE=1.
    #[arg(
        short,
        long,
        value_name = "DIR|HUB_ID",
        required_unless_present = "random_weights"
    )]
    pub model: Option<String>,

    /// Output file (safetensors), written atomically.
    #[arg(short, long, value_name = "FILE.safetensors")]
    pub out: PathBuf,

    /// ESM2 token-dropout rescaling of the embeddings (x0.88): auto (on for model_type esm, off
    /// for fast_esm, as their reference code), on, off.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|on|off",
        help_heading = "Model"
    )]
    pub esm_token_dropout: TokenDropout,

    /// Benchmarks only: random weights of a real model's shape (esm2-650m, esm2-3b, dnabert-s)
    /// instead of a checkpoint. dnabert-s takes its tokenizer from --model.
    #[arg(long, value_name = "KIND", hide = true)]
    pub random_weights: Option<RandomModel>,
}

pub fn run(args: Args, attention: virnucpro_kernels::AttentionImpl) -> anyhow::Result<()> {
    let req = EmbedRequest {
        model: args.model,
        inputs: args.inputs,
        out: args.out,
        device: args.compute.device,
        dtype: args.compute.precision.dtype,
        batch_tokens: args.compute.precision.batch_tokens(),
        esm_token_dropout: args.esm_token_dropout,
        random_weights: args.random_weights,
        model_options: virnucpro::env::model_options(attention),
    };
    embed::run(&req).map(|_| ())
}
