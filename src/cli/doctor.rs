//! `virnucpro doctor`: GPU readiness checks and the fused-attention validation and timings.

use std::path::PathBuf;

use anyhow::{bail, Context};
use virnucpro::doctor::{self, DoctorOptions};
use virnucpro_assets::presets::{self, ModelChoice};

/// Check the environment: build features, the GPU, your models and classifier (resolvable, files
/// from the Hugging Face cache intact by their content hashes, loadable, dimensions consistent),
/// fused attention == materialized attention on random inputs, and the fused kernel's speed-up
/// (ENV-01..05). Stops at the first failure and says what to do.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Device to check: cuda, cuda:N, or cpu (models and classifier only).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Protein model to check: directory or Hugging Face Hub ID.
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub esm: Option<String>,
    /// Nucleotide model to check: directory or Hub ID.
    #[arg(long, value_name = "DIR|HUB_ID", help_heading = "Models")]
    pub dnabert: Option<String>,
    /// Classifier to check against the two models (input size = DNABERT hidden + protein hidden).
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub classifier: Option<PathBuf>,
    /// Chunk length you will predict with (checked against the classifier's metadata).
    #[arg(long, value_name = "N", help_heading = "Models")]
    pub chunk_len: Option<usize>,
    #[command(flatten)]
    pub presets: super::PresetArgs,
    /// Batch x length shapes for the attention timing, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1x502,64x168,8x1026,4x2048"
    )]
    pub shapes: Vec<String>,
    /// Attention heads for the timing (head size is 64; 20 heads = FastESM2_650).
    #[arg(long, default_value_t = 20)]
    pub heads: usize,
    /// Timed repeats per measurement (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub repeats: usize,
    /// Skip the timings (ENV-05).
    #[arg(long)]
    pub skip_bench: bool,
    /// Skip the model checks (ENV-03) and the whole-model timings.
    #[arg(long)]
    pub skip_models: bool,
    /// Whole-model timing shapes of the FastESM2_650-shape model (random weights, f16).
    #[arg(long, value_delimiter = ',', default_value = "512x168,2x1024,1x2048")]
    pub esm_shapes: Vec<String>,
    /// Whole-model timing shapes of the DNABERT-S-shape model (random weights, f16).
    #[arg(long, value_delimiter = ',', default_value = "256x128")]
    pub dnabert_shapes: Vec<String>,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const AFTER_HELP: &str = "\
Examples:
  virnucpro doctor
  virnucpro doctor --device cuda:1 --json doctor.json
  virnucpro doctor --shapes 64x168,4x2048 --repeats 50
  virnucpro doctor --device cpu --dnabert zhihan1996/DNABERT-S --esm Synthyra/FastESM2_650 --classifier my.safetensors
  virnucpro doctor --device cpu --preset virnucpro-500

A CUDA build on a machine without the NVIDIA driver (a cluster's CPU-only or login node) does not
start at all, not even `virnucpro --version` or this command: the system's loader stops first with
  virnucpro: error while loading shared libraries: libcuda.so.1: cannot open shared object file:
  No such file or directory
(candle links the CUDA libraries at load time). Nothing is wrong with the binary: on such nodes run
a CPU build (`cargo install --locked --path .`, installed beside the CUDA one, e.g. as
virnucpro_cpu), or run the command on a GPU node. The cluster workflow runs fetch and merge with its
`virnucpro_cpu` command for this reason (README, \"Many samples on a cluster\").";

/// `None` for the CPU.
fn parse_ordinal(device: &str) -> anyhow::Result<Option<usize>> {
    let d = device.trim().to_ascii_lowercase();
    if d == "cpu" {
        return Ok(None);
    }
    match d.split_once(':') {
        None if d == "cuda" || d == "gpu" => Ok(Some(0)),
        Some(("cuda" | "gpu", n)) => n
            .parse()
            .map(Some)
            .with_context(|| format!("--device {device}: expected cuda or cuda:N")),
        _ => bail!("--device {device}: use cuda, cuda:N or cpu"),
    }
}

pub fn run(args: Args, attention: virnucpro_kernels::AttentionImpl) -> anyhow::Result<()> {
    let ordinal = parse_ordinal(&args.device)?;
    let models = presets::resolve(
        &ModelChoice {
            preset: args.presets.preset,
            dnabert: args.dnabert,
            esm: args.esm,
            classifier: args.classifier,
            chunk_len: args.chunk_len,
            esm_token_dropout: None,
        },
        args.presets.presets.as_deref(),
        false,
        tracing::enabled!(tracing::Level::INFO),
    )?;
    let opts = DoctorOptions {
        kernels: virnucpro::env::kernel_options(attention),
        ordinal: ordinal.unwrap_or(0),
        cpu: ordinal.is_none(),
        esm: models.esm,
        dnabert: models.dnabert,
        classifier: models.classifier,
        chunk_len: models.chunk_len,
        shapes: args
            .shapes
            .iter()
            .map(|s| super::parse_shape(s, 1))
            .collect::<anyhow::Result<_>>()?,
        heads: args.heads,
        repeats: args.repeats.max(1),
        skip_bench: args.skip_bench,
        skip_models: args.skip_models,
        esm_shapes: args
            .esm_shapes
            .iter()
            .map(|s| super::parse_shape(s, 3))
            .collect::<anyhow::Result<_>>()?,
        dnabert_shapes: args
            .dnabert_shapes
            .iter()
            .map(|s| super::parse_shape(s, 3))
            .collect::<anyhow::Result<_>>()?,
    };
    let report = doctor::run(&opts, &mut super::Console)?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("doctor: all checks passed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a CUDA build prints on a node without the driver is not ours to print: the help
    /// names the loader's error and what to do.
    #[test]
    fn help_explains_a_cuda_build_on_a_node_without_the_driver() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        let help = cmd
            .find_subcommand_mut("doctor")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "libcuda.so.1: cannot open shared object file",
            "virnucpro_cpu",
            "GPU node",
        ] {
            assert!(help.contains(needle), "{needle} missing from doctor --help");
        }
    }

    #[test]
    fn parses_shapes_and_devices() {
        assert_eq!(super::super::parse_shape("64x168", 1).unwrap(), (64, 168));
        assert!(super::super::parse_shape("64*168", 1).is_err());
        assert!(super::super::parse_shape("4x2", 3).is_err());
        assert_eq!(parse_ordinal("cuda").unwrap(), Some(0));
        assert_eq!(parse_ordinal("cuda:2").unwrap(), Some(2));
        assert_eq!(parse_ordinal("cpu").unwrap(), None);
        assert!(parse_ordinal("tpu").is_err());
    }
}
