//! `virnucpro fetch`: everything a `predict` with the same model flags needs, resolved once.
//!
//! The two models (a Hub ID is downloaded into the Hugging Face cache when online, found there
//! when offline; a directory is checked), the classifier (a preset's URL is downloaded into
//! virnucpro's cache and verified; a file is checked) and whether they fit together (the
//! dimension guard of `predict`, from the models' `config.json`: no weights are loaded). Cluster
//! workflows run it once, where the network is, before many `predict --shard` jobs that then run
//! with `HF_HUB_OFFLINE=1` and `VIRNUCPRO_OFFLINE=1`: a hundred jobs never all hit the Hub, and a
//! missing or unfitting model fails once, in seconds, instead of in every job.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use virnucpro_assets::hub::{resolve_family, DEFAULT_NUCLEOTIDE_MODEL, DEFAULT_PROTEIN_MODEL};
use virnucpro_assets::presets::{self, ModelChoice};
use virnucpro_models::classifier::Classifier;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::files::ModelFiles;

/// What to resolve: the model flags of `predict`.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    pub choice: ModelChoice,
    /// `--presets FILE` (default: the user's presets file, if it exists).
    pub presets_file: Option<PathBuf>,
    /// Download progress bars (on a terminal).
    pub progress: bool,
}

/// One resolved model.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    /// What was asked for: a directory or a Hub ID.
    pub spec: String,
    /// The directory holding its `config.json` (a snapshot of the Hugging Face cache for a
    /// Hub ID).
    pub dir: PathBuf,
    /// Found through the Hugging Face cache (not a local directory).
    pub from_hub: bool,
    pub family: ModelFamily,
    pub hidden_size: usize,
}

impl FetchedModel {
    fn from_files(spec: &str, files: &ModelFiles) -> FetchedModel {
        FetchedModel {
            spec: spec.to_string(),
            dir: files
                .config_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            from_hub: !Path::new(spec).is_dir(),
            family: files.family(),
            hidden_size: files.hidden_size(),
        }
    }
}

impl fmt::Display for FetchedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, hidden {}",
            self.spec, self.family, self.hidden_size
        )?;
        if self.from_hub {
            write!(f, "; Hugging Face cache: {}", self.dir.display())?;
        }
        f.write_str(")")
    }
}

/// Everything resolved: what `predict` with the same flags will use.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub preset: Option<String>,
    pub dnabert: FetchedModel,
    pub esm: FetchedModel,
    /// The classifier as a local file (a preset's URL is downloaded); `None` when neither
    /// `--classifier` nor `--preset` was given.
    pub classifier: Option<PathBuf>,
    /// The classifier's input size (= the two hidden sizes, checked).
    pub classifier_inputs: Option<usize>,
    pub chunk_len: Option<usize>,
    /// Metadata mismatches `predict` warns about (the classifier names other models or another
    /// chunk length).
    pub warnings: Vec<String>,
}

impl fmt::Display for Fetched {
    /// One line per item, `name` then what it resolved to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.preset {
            writeln!(f, "preset      {p}")?;
        }
        writeln!(f, "dnabert     {}", self.dnabert)?;
        writeln!(f, "esm         {}", self.esm)?;
        match (&self.classifier, self.classifier_inputs) {
            (Some(c), Some(n)) => writeln!(
                f,
                "classifier  {} ({n} inputs = {} + {})",
                c.display(),
                self.dnabert.hidden_size,
                self.esm.hidden_size
            )?,
            _ => writeln!(f, "classifier  none given (nothing checked)")?,
        }
        if let Some(n) = self.chunk_len {
            writeln!(f, "chunk_len   {n}")?;
        }
        Ok(())
    }
}

/// Resolves the models and the classifier of `req` (downloading what is missing unless
/// offline) and checks that they fit together; the error says what is missing and how to get
/// it.
pub fn fetch(req: &FetchRequest) -> anyhow::Result<Fetched> {
    let resolved = presets::resolve(
        &req.choice,
        req.presets_file.as_deref(),
        false,
        req.progress,
    )?;
    let dnabert_spec = resolved
        .dnabert
        .clone()
        .unwrap_or_else(|| DEFAULT_NUCLEOTIDE_MODEL.to_string());
    let esm_spec = resolved
        .esm
        .clone()
        .unwrap_or_else(|| DEFAULT_PROTEIN_MODEL.to_string());
    let dnabert = resolve_family(&dnabert_spec, ModelFamily::DnaBert, "--dnabert")?;
    let esm = resolve_family(&esm_spec, ModelFamily::Esm, "--esm")?;
    let (dnabert, esm) = (
        FetchedModel::from_files(&dnabert_spec, &dnabert),
        FetchedModel::from_files(&esm_spec, &esm),
    );
    let mut warnings = Vec::new();
    let mut classifier_inputs = None;
    if let Some(path) = &resolved.classifier {
        let chunk_len = resolved.require_chunk_len()?;
        let classifier = Classifier::load(path, &Device::Cpu)
            .with_context(|| format!("cannot load the classifier {}", path.display()))?;
        warnings = classifier.check_dimensions(
            (&dnabert.spec, dnabert.hidden_size),
            (&esm.spec, esm.hidden_size),
            chunk_len,
            false,
        )?;
        classifier_inputs = Some(classifier.input_dim());
    }
    Ok(Fetched {
        preset: resolved.preset,
        dnabert,
        esm,
        classifier: resolved.classifier,
        classifier_inputs,
        chunk_len: resolved.chunk_len,
        warnings,
    })
}
