//! `virnucpro plot`: the score distribution of a prediction run.

use std::path::PathBuf;

use virnucpro_train::plots::plot_predictions;

/// Histogram of the per-frame virus score (score2) of a `prediction_results.txt`, as PNG and SVG
/// (the original `drew_fig.py` score distribution).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  virnucpro plot run1/prediction_results.txt --out run1/plots
writes run1/plots/score_distribution.png and .svg.")]
pub struct Args {
    /// `prediction_results.txt` written by `virnucpro predict`.
    #[arg(value_name = "PREDICTION_RESULTS")]
    pub results: PathBuf,
    /// Output directory (default: the directory of the results file).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        args.results
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
    });
    for p in plot_predictions(&args.results, &out)? {
        outln!("wrote {}", p.display())?;
    }
    Ok(())
}
