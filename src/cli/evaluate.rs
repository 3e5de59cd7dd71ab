//! `virnucpro evaluate`: classifiers side by side on a labelled feature directory.

use std::path::PathBuf;

use virnucpro_train::evaluate::{evaluate, report_table};

/// Accuracy, precision, recall, F1, AUROC and the confusion matrix of one or more classifiers
/// on labelled features (viral = positive; a frame is called viral when score2 > score1).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  virnucpro evaluate --features test300/features \\
      --classifier 300_model.safetensors --classifier retrained.safetensors --plots eval_plots

--plots writes roc.png/.svg (all classifiers) and scores-<name>.png/.svg (score2 of viral and
host frames) per classifier.")]
pub struct Args {
    /// Feature directory (`manifest.json` + `shard-*.safetensors`) with labels.
    #[arg(long, value_name = "DIR")]
    pub features: PathBuf,
    /// Classifier file(s): safetensors format v1 (`train`, `convert`) or a published .pth.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub classifier: Vec<PathBuf>,
    /// Write ROC curves and score histograms (PNG and SVG) into this directory.
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let report = evaluate(&args.features, &args.classifier, args.plots.as_deref())?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print!("{}", report_table(&report));
        for p in &report.plots {
            outln!("wrote {p}")?;
        }
    }
    Ok(())
}
