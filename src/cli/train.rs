//! `virnucpro train`: the VirNucPro MLP classifier on a feature directory.

use std::path::PathBuf;

use virnucpro_train::train::{log_path, train_to_file, TrainOptions};

/// Train a classifier (Linear -> BatchNorm -> ReLU -> Dropout -> Linear, 2 classes) on the
/// feature shards written by `virnucpro extract`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Defaults are the published training's: SGD with momentum, StepLR, batch 32, a seeded 90/10
train/validation split and early stopping on validation loss (the best epoch's weights are kept).
The same seed on the same data gives identical weights. Writes FILE (classifier safetensors
format v1), FILE.log.csv (one line per epoch) and STEM.preset.toml: a preset naming the models,
the chunk length and the classifier's SHA-256, for `predict --presets STEM.preset.toml --preset
STEM` (to share the classifier, publish it and put its URL in `classifier`).

Example:
  virnucpro train --features train300/features --out 300_model.safetensors --seed 7")]
pub struct Args {
    /// Feature directory (`manifest.json` + `shard-*.safetensors`).
    #[arg(long, value_name = "DIR")]
    pub features: PathBuf,
    /// Output classifier (`.safetensors`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Hidden layer size.
    #[arg(long, default_value_t = 512, help_heading = "Model")]
    pub hidden: usize,
    /// Dropout probability after the hidden layer.
    #[arg(long, default_value_t = 0.5, help_heading = "Model")]
    pub dropout: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-4, help_heading = "Optimiser")]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9, help_heading = "Optimiser")]
    pub momentum: f64,
    /// Rows per batch.
    #[arg(long, default_value_t = 32, help_heading = "Optimiser")]
    pub batch_size: usize,
    /// Multiply the learning rate by --gamma every this many epochs.
    #[arg(long, default_value_t = 10, help_heading = "Optimiser")]
    pub step_size: usize,
    /// Learning-rate decay factor (StepLR).
    #[arg(long, default_value_t = 0.85, help_heading = "Optimiser")]
    pub gamma: f64,
    /// Maximum number of epochs.
    #[arg(long, default_value_t = 200, help_heading = "Schedule")]
    pub epochs: usize,
    /// Stop after this many epochs without a lower validation loss.
    #[arg(long, default_value_t = 5, help_heading = "Schedule")]
    pub patience: usize,
    /// Share of rows held out for validation.
    #[arg(long, default_value_t = 0.1, help_heading = "Schedule")]
    pub val_fraction: f64,
    /// Seed of the split, initial weights, shuffles and dropout.
    #[arg(long, default_value_t = 42, help_heading = "Schedule")]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = TrainOptions {
        hidden: args.hidden,
        lr: args.lr,
        momentum: args.momentum,
        batch_size: args.batch_size,
        epochs: args.epochs,
        patience: args.patience,
        step_size: args.step_size,
        gamma: args.gamma,
        dropout: args.dropout,
        val_fraction: args.val_fraction,
        seed: args.seed,
    };
    let report = train_to_file(&args.features, &args.out, &opts)?;
    let best = report.best();
    outln!(
        "best epoch {} of {}{}: val loss {:.5}, accuracy {:.4}, F1 {:.4}, AUROC {}; {:.0} samples/s",
        report.best_epoch,
        report.epochs_run,
        if report.stopped_early { " (early stop)" } else { "" },
        best.val_loss,
        best.val.accuracy,
        best.val.f1,
        best.val.auroc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into()),
        report.samples_per_s
    )?;
    match &report.preset_file {
        Some(preset) => outln!(
            "wrote {}, {} and {}",
            args.out.display(),
            log_path(&args.out).display(),
            preset.display()
        )?,
        None => outln!(
            "wrote {} and {}",
            args.out.display(),
            log_path(&args.out).display()
        )?,
    }
    Ok(())
}
