//! `virnucpro convert`: rewrite a classifier in this project's safetensors format (v1) with its
//! embedding models and chunk length recorded, so `predict` can check them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use virnucpro_models::classifier::{known_hidden_size, Classifier};

/// Convert a classifier (.pth module or state dict, or safetensors) to virnucpro's safetensors format.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  # The published 300-base classifier (whole pickled PyTorch module, ESM2-3B features):
  virnucpro convert --classifier 300_model.pth --out virnucpro_300.safetensors \\
      --dnabert-model zhihan1996/DNABERT-S --esm-model facebook/esm2_t36_3B_UR50D --chunk-len 300

Hidden sizes of well-known models (DNABERT-S 768, FastESM2_650 / ESM2-650M 1280, ESM2-3B 2560)
are filled in when --dnabert-hidden / --esm-hidden are not given. Metadata already in a virnucpro
file is kept unless overridden.")]
pub struct Args {
    /// Classifier to read: virnucpro safetensors, a safetensors state dict, or a PyTorch .pth
    /// (whole pickled module such as 300_model.pth, or a state dict). Detected from the content.
    #[arg(long, value_name = "FILE")]
    pub classifier: PathBuf,

    /// Where to write the classifier (safetensors, format v1); replaced atomically.
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,

    /// Nucleotide model the classifier was trained with (Hub ID or path).
    #[arg(long, value_name = "ID", help_heading = "Metadata")]
    pub dnabert_model: Option<String>,

    /// Hidden size of the nucleotide model.
    #[arg(long, value_name = "N", help_heading = "Metadata")]
    pub dnabert_hidden: Option<usize>,

    /// Protein model the classifier was trained with (Hub ID or path).
    #[arg(long, value_name = "ID", help_heading = "Metadata")]
    pub esm_model: Option<String>,

    /// Hidden size of the protein model.
    #[arg(long, value_name = "N", help_heading = "Metadata")]
    pub esm_hidden: Option<usize>,

    /// Chunk length (bases) the classifier was trained for, e.g. 300 or 500.
    #[arg(long, value_name = "N", help_heading = "Metadata")]
    pub chunk_len: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    let classifier = Classifier::load(&args.classifier, &Device::Cpu)?;
    let mut meta = classifier.meta().clone();
    let input = meta.input_dim;

    if args.dnabert_model.is_some() {
        meta.dnabert_model = args.dnabert_model.clone();
        meta.dnabert_hidden = None;
    }
    if args.esm_model.is_some() {
        meta.esm_model = args.esm_model.clone();
        meta.esm_hidden = None;
    }
    if let Some(h) = args.dnabert_hidden {
        meta.dnabert_hidden = Some(h);
    }
    if let Some(h) = args.esm_hidden {
        meta.esm_hidden = Some(h);
    }
    if args.chunk_len.is_some() {
        meta.chunk_len = args.chunk_len;
    }
    for (flag, value) in [
        ("--dnabert-hidden", args.dnabert_hidden),
        ("--esm-hidden", args.esm_hidden),
        ("--chunk-len", args.chunk_len),
    ] {
        if value == Some(0) {
            bail!("{flag} must be above 0");
        }
    }
    // Fill hidden sizes: a well-known model's size first, else what the input size leaves over.
    if meta.dnabert_hidden.is_none() {
        meta.dnabert_hidden = meta.dnabert_model.as_deref().and_then(known_hidden_size);
    }
    if meta.esm_hidden.is_none() {
        meta.esm_hidden = meta.esm_model.as_deref().and_then(known_hidden_size);
    }
    match (meta.dnabert_hidden, meta.esm_hidden) {
        (Some(d), None) if d < input => meta.esm_hidden = Some(input - d),
        (None, Some(e)) if e < input => meta.dnabert_hidden = Some(input - e),
        _ => {}
    }
    if let (Some(d), Some(e)) = (meta.dnabert_hidden, meta.esm_hidden) {
        if d.saturating_add(e) != input {
            bail!(
                "`{}` takes {input} input features, but nucleotide hidden {d}{} + protein hidden {e}{} = {}; \
                 give the models this classifier was trained with (--dnabert-model/--dnabert-hidden, \
                 --esm-model/--esm-hidden)",
                args.classifier.display(),
                meta.dnabert_model.as_deref().map(|m| format!(" (`{m}`)")).unwrap_or_default(),
                meta.esm_model.as_deref().map(|m| format!(" (`{m}`)")).unwrap_or_default(),
                d.saturating_add(e)
            );
        }
    }
    let source = meta.source_format.clone();
    let classifier = classifier
        .with_meta(meta)
        .with_context(|| format!("cannot convert `{}`", args.classifier.display()))?;
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        tracing::warn!(
            "{} does not end in .safetensors; writing safetensors anyway",
            args.out.display()
        );
    }
    classifier.save(&args.out)?;

    let m = classifier.meta();
    let model = |name: &Option<String>, hidden: Option<usize>| match (name, hidden) {
        (Some(n), Some(h)) => format!("{n} (hidden {h})"),
        (Some(n), None) => format!("{n} (hidden unknown)"),
        (None, Some(h)) => format!("unnamed (hidden {h})"),
        (None, None) => "not recorded".to_owned(),
    };
    outln!(
        "wrote {}: classifier {} -> {} -> 2, BatchNorm eps {:e}, from {} ({source})",
        args.out.display(),
        m.input_dim,
        m.hidden_dim,
        m.bn_eps,
        args.classifier.display()
    )?;
    outln!(
        "  nucleotide model: {}",
        model(&m.dnabert_model, m.dnabert_hidden)
    )?;
    outln!("  protein model:    {}", model(&m.esm_model, m.esm_hidden))?;
    outln!(
        "  chunk length:     {}",
        m.chunk_len
            .map_or_else(|| "not recorded".to_owned(), |c| c.to_string())
    )?;
    if m.dnabert_model.is_none() || m.esm_model.is_none() || m.chunk_len.is_none() {
        outln!("  (predict checks only what is recorded; add the rest with --dnabert-model, --esm-model, --chunk-len)")?;
    }
    Ok(())
}
