//! `extract`: a prepared data set (`frames.tsv`) -> feature shards for `train` and `evaluate`
//! (docs/FORMATS.md).
//!
//! Each frame's DNA goes through the nucleotide model and its protein through the protein model;
//! the row is `[nucleotide embedding | protein embedding]` (docs/PIPELINE.md §4), with the
//! frame's label and ID. Shard `k` always holds frames `k*R .. (k+1)*R` (`R` = rows per shard), so a shard can be
//! recomputed on its own.
//!
//! Resuming: when a shard is complete, a completion record `shard-NNNNN.done.json` is written
//! beside it (its size and checksum, the frames it was made from and the models). A rerun keeps a
//! shard only if the record, the file and the frames all agree, and recomputes it otherwise,
//! saying why. The manifest is written last, so a directory without one is never mistaken for a
//! finished feature set.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use virnucpro_assets::hub::{resolve_model, DEFAULT_NUCLEOTIDE_MODEL, DEFAULT_PROTEIN_MODEL};
use virnucpro_atomic::write_atomic;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::{device_name, select_device, DTypeSpec, DeviceSpec};
use virnucpro_models::embed::{embed_sequences_with, load_from_files, EmbeddingModel, LoadOptions};
use virnucpro_models::esm::TokenDropout;
use virnucpro_models::options::ModelOptions;

use crate::features::{
    parse_shard, shard_file_name, write_manifest, write_shard, FeatureInfo, FeatureManifest,
    Fnv1a64, ShardEntry, DEFAULT_ROWS_PER_SHARD, FEATURES_FORMAT, FEATURES_FORMAT_VERSION,
    MANIFEST_FILE,
};
use crate::prepare::{read_summary, FramesReader, PreparedFrame};

/// `format` of a shard's completion record.
pub const SHARD_RECORD_FORMAT: &str = "virnucpro-features-shard";
pub const SHARD_RECORD_FORMAT_VERSION: u32 = 1;

/// `shard-NNNNN.done.json`, the completion record of shard `index`.
pub fn shard_record_name(index: usize) -> String {
    format!("shard-{index:05}.done.json")
}

/// What `extract` needs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// The `--out-dir` of `virnucpro prepare` (`summary.json` + `frames.tsv`).
    pub dataset: PathBuf,
    /// Output feature directory (created if missing).
    pub out: PathBuf,
    /// Nucleotide model: directory or Hub ID.
    pub dnabert: String,
    /// Protein model: directory or Hub ID.
    pub esm: String,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Padded tokens per forward pass; `None`: the device's default.
    pub batch_tokens: Option<usize>,
    pub rows_per_shard: usize,
    pub esm_token_dropout: TokenDropout,
    /// Kernel choices and test hooks, kept by the models.
    pub model_options: ModelOptions,
}

impl ExtractOptions {
    /// The defaults of the command line: DNABERT-S, FastESM2_650, automatic device and dtype.
    pub fn new(dataset: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        ExtractOptions {
            dataset: dataset.into(),
            out: out.into(),
            dnabert: DEFAULT_NUCLEOTIDE_MODEL.to_string(),
            esm: DEFAULT_PROTEIN_MODEL.to_string(),
            device: DeviceSpec::Auto,
            dtype: DTypeSpec::Auto,
            batch_tokens: None,
            rows_per_shard: DEFAULT_ROWS_PER_SHARD,
            esm_token_dropout: TokenDropout::Auto,
            model_options: ModelOptions::default(),
        }
    }
}

/// What an `extract` run did.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    pub manifest: FeatureManifest,
    /// Shards found finished and verified, kept as they were.
    pub shards_kept: usize,
    /// Shards computed by this run (new, or recomputed after failing verification).
    pub shards_computed: usize,
    /// Of those, shards that existed but failed verification.
    pub shards_recomputed: usize,
    /// Frames embedded by this run.
    pub frames_computed: usize,
    /// Time spent embedding and writing those frames (model loading excluded).
    pub seconds: f64,
}

impl ExtractReport {
    /// Frames embedded per second by this run, if it embedded any.
    pub fn frames_per_s(&self) -> Option<f64> {
        (self.frames_computed > 0).then(|| self.frames_computed as f64 / self.seconds.max(1e-9))
    }
}

/// `shard-NNNNN.done.json`: written when shard `index` is complete; what a rerun checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShardRecord {
    format: String,
    format_version: u32,
    #[serde(flatten)]
    entry: ShardEntry,
    /// Row of `frames.tsv` (0-based, header excluded) of the shard's first row.
    first_row: usize,
    /// FNV-1a 64 of the shard's frames as `id\tlabel\tgroup\tdna\tprotein\n` lines.
    frames_fnv1a64: String,
    feature_dim: usize,
    dnabert_model: String,
    dnabert_hidden: usize,
    esm_model: String,
    esm_hidden: usize,
    esm_token_dropout: String,
    /// Where and in which precision it was computed (for the record; not compared).
    device: String,
    dtype: String,
}

/// One shard of this run: which frames go into it and whether a finished one can be kept.
struct ShardPlan {
    index: usize,
    first_row: usize,
    rows: usize,
    frames_hash: String,
    /// The verified completion record of an existing shard, if it can be kept.
    keep: Option<ShardRecord>,
    /// Whether a shard file or record existed (so computing it is a recomputation).
    existed: bool,
}

/// Reads up to `n` frames, checking each row can be embedded.
fn next_frames(
    reader: &mut FramesReader,
    n: usize,
    first_row: usize,
    path: &Path,
) -> Result<Vec<PreparedFrame>> {
    let mut frames = Vec::with_capacity(n.min(1 << 16));
    for frame in reader.by_ref().take(n) {
        let frame = frame?;
        // Line numbers are 1-based and line 1 is the header.
        let line = first_row + frames.len() + 2;
        ensure!(
            !frame.dna.is_empty() && !frame.protein.is_empty(),
            "{}:{line}: frame {} has an empty DNA or protein column; re-create the data set \
             with `virnucpro prepare`",
            path.display(),
            frame.id
        );
        frames.push(frame);
    }
    Ok(frames)
}

fn frames_hash(frames: &[PreparedFrame]) -> String {
    let mut h = Fnv1a64::default();
    for f in frames {
        for (i, col) in [
            f.id.as_str(),
            if f.label == 1 { "1" } else { "0" },
            f.group.as_str(),
            f.dna.as_str(),
            f.protein.as_str(),
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                h.update(b"\t");
            }
            h.update(col.as_bytes());
        }
        h.update(b"\n");
    }
    format!("{:016x}", h.finish())
}

/// Checks a finished shard against its completion record, the frames it must hold and this
/// run's models. `Ok(None)`: nothing there (a fresh shard). `Err(reason)`: there, but not usable.
fn verify_shard(
    dir: &Path,
    plan: &ShardPlan,
    frames: &[PreparedFrame],
    opts: &ExtractOptions,
) -> std::result::Result<Option<ShardRecord>, String> {
    let file = shard_file_name(plan.index);
    let shard_path = dir.join(&file);
    let record_path = dir.join(shard_record_name(plan.index));
    match (shard_path.exists(), record_path.exists()) {
        (false, false) => return Ok(None),
        (true, false) => {
            return Err("it has no completion record (an interrupted run?)".into());
        }
        (false, true) => return Err("the file is missing (its completion record exists)".into()),
        (true, true) => {}
    }
    let record: ShardRecord = fs::read_to_string(&record_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "its completion record {} cannot be read ({e})",
                record_path.display()
            )
        })?;
    if record.format != SHARD_RECORD_FORMAT || record.format_version != SHARD_RECORD_FORMAT_VERSION
    {
        return Err(format!(
            "its completion record is of format {} {}, not {SHARD_RECORD_FORMAT} \
             {SHARD_RECORD_FORMAT_VERSION}",
            record.format, record.format_version
        ));
    }
    if record.entry.file != file
        || record.first_row != plan.first_row
        || record.entry.rows != plan.rows
    {
        return Err(format!(
            "it holds frames {}..{} but this run puts frames {}..{} in it (another \
             --rows-per-shard or data set?)",
            record.first_row,
            record.first_row + record.entry.rows,
            plan.first_row,
            plan.first_row + plan.rows
        ));
    }
    if record.frames_fnv1a64 != plan.frames_hash {
        return Err("it was made from other frames (the data set changed)".into());
    }
    for (kind, made, now) in [
        ("nucleotide", &record.dnabert_model, &opts.dnabert),
        ("protein", &record.esm_model, &opts.esm),
    ] {
        if made != now {
            return Err(format!(
                "it was made with {kind} model {made}, this run uses {now}"
            ));
        }
    }
    if record.esm_token_dropout != opts.esm_token_dropout.to_string() {
        return Err(format!(
            "it was made with --esm-token-dropout {}, this run uses {}",
            record.esm_token_dropout, opts.esm_token_dropout
        ));
    }
    if record.dnabert_hidden.checked_add(record.esm_hidden) != Some(record.feature_dim) {
        return Err("its completion record has inconsistent sizes".into());
    }
    let bytes = fs::read(&shard_path).map_err(|e| format!("it cannot be read ({e})"))?;
    if bytes.len() as u64 != record.entry.bytes {
        return Err(format!(
            "it has {} bytes, its completion record says {} (damaged or truncated)",
            bytes.len(),
            record.entry.bytes
        ));
    }
    let hash = Fnv1a64::hex(&bytes);
    if hash != record.entry.fnv1a64 {
        return Err(format!(
            "its checksum is {hash}, its completion record says {} (damaged)",
            record.entry.fnv1a64
        ));
    }
    let (mut features, mut labels, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    parse_shard(
        &shard_path,
        &bytes,
        plan.rows,
        record.feature_dim,
        &mut features,
        &mut labels,
        &mut ids,
    )
    .map_err(|e| format!("{e:#}"))?;
    let mismatch = frames
        .iter()
        .zip(ids.iter().zip(&labels))
        .position(|(f, (id, &label))| f.id != *id || f.label != label);
    if let Some(i) = mismatch {
        return Err(format!(
            "row {i} is {} (label {}), the data set has {} (label {})",
            ids[i], labels[i], frames[i].id, frames[i].label
        ));
    }
    Ok(Some(record))
}

/// The two models of a run.
struct Models {
    dnabert: EmbeddingModel,
    esm: EmbeddingModel,
    dnabert_tokens: usize,
    esm_tokens: usize,
}

/// Resolves `spec` and loads it if it is of `family` (checked before any weight is read).
fn load_model(
    flag: &str,
    spec: &str,
    family: ModelFamily,
    device: &Device,
    opts: &ExtractOptions,
) -> Result<EmbeddingModel> {
    let files = resolve_model(spec)?;
    if files.family() != family {
        let (what, example) = match family {
            ModelFamily::DnaBert => ("nucleotide model (DNABERT)", DEFAULT_NUCLEOTIDE_MODEL),
            ModelFamily::Esm => ("protein model (ESM2, FastESM2)", DEFAULT_PROTEIN_MODEL),
        };
        bail!(
            "{flag} {spec}: {} describes a {} model, but {flag} takes a {what}, e.g. {example}",
            files.config_path.display(),
            files.family()
        );
    }
    let options = LoadOptions {
        esm_token_dropout: opts.esm_token_dropout,
        model: opts.model_options.clone(),
    };
    load_from_files(files, device, opts.dtype, &options)
        .with_context(|| format!("cannot load model `{spec}`"))
}

fn load_models(opts: &ExtractOptions) -> Result<Models> {
    let device = select_device(opts.device, &opts.model_options.kernels)?;
    let dnabert = load_model(
        "--dnabert",
        &opts.dnabert,
        ModelFamily::DnaBert,
        &device,
        opts,
    )?;
    let esm = load_model("--esm", &opts.esm, ModelFamily::Esm, &device, opts)?;
    Ok(Models {
        dnabert_tokens: opts
            .batch_tokens
            .unwrap_or_else(|| dnabert.default_batch_tokens()),
        esm_tokens: opts
            .batch_tokens
            .unwrap_or_else(|| esm.default_batch_tokens()),
        dnabert,
        esm,
    })
}

/// Embeds `frames` with both models and returns the rows `[nucleotide | protein]`, row-major.
/// `progress` gets the number of sequences embedded so far (two per frame).
fn embed_frames(
    models: &Models,
    frames: &[PreparedFrame],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>> {
    let dna: Vec<(&str, &[u8])> = frames
        .iter()
        .map(|f| (f.id.as_str(), f.dna.as_bytes()))
        .collect();
    let protein: Vec<(&str, &[u8])> = frames
        .iter()
        .map(|f| (f.id.as_str(), f.protein.as_bytes()))
        .collect();
    let mut to_host = |m: &EmbeddingModel,
                       items: &[(&str, &[u8])],
                       budget: usize,
                       before: usize|
     -> Result<Vec<f32>> {
        let out = embed_sequences_with(m, items, budget, &mut |done| progress(before + done))?;
        Ok(out
            .embeddings
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let d = to_host(&models.dnabert, &dna, models.dnabert_tokens, 0)
        .context("nucleotide embeddings")?;
    let p = to_host(&models.esm, &protein, models.esm_tokens, frames.len())
        .context("protein embeddings")?;
    let (dh, ph) = (models.dnabert.hidden_size, models.esm.hidden_size);
    let mut rows = Vec::with_capacity(frames.len() * (dh + ph));
    for (i, frame) in frames.iter().enumerate() {
        let (dr, pr) = (&d[i * dh..(i + 1) * dh], &p[i * ph..(i + 1) * ph]);
        // Half precision can overflow; a NaN row would only fail later, in `train`.
        for (kind, row) in [("nucleotide", dr), ("protein", pr)] {
            ensure!(
                row.iter().all(|v| v.is_finite()),
                "frame {}: the {kind} embedding has a non-finite value (half-precision \
                 overflow?); run with --dtype f32",
                frame.id
            );
        }
        rows.extend_from_slice(dr);
        rows.extend_from_slice(pr);
    }
    Ok(rows)
}

/// Removes shard files and completion records numbered `count` or higher: left from a run on
/// more frames or with smaller shards, they are not part of this feature set.
fn remove_stale_shards(dir: &Path, count: usize) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("shard-") else {
            continue;
        };
        let Some((number, ext)) = rest.split_once('.') else {
            continue;
        };
        let ours = (ext == "safetensors" || ext == "done.json")
            && number.len() == 5
            && number.bytes().all(|b| b.is_ascii_digit());
        if ours && number.parse::<usize>().is_ok_and(|n| n >= count) {
            let path = entry.path();
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove stale {}", path.display()))?;
            tracing::info!("removed {} (not part of this feature set)", path.display());
        }
    }
    Ok(())
}

/// Runs `extract`: every shard that is not finished and verified is computed; then the manifest.
pub fn extract(opts: &ExtractOptions) -> Result<ExtractReport> {
    ensure!(opts.rows_per_shard > 0, "--rows-per-shard must be positive");
    ensure!(
        opts.batch_tokens != Some(0),
        "--batch-tokens must be positive"
    );
    let summary = read_summary(&opts.dataset)?;
    let frames_path = opts.dataset.join(&summary.frames_file);
    virnucpro_atomic::create_output_dir(&opts.out)
        .with_context(|| format!("cannot create the feature directory {}", opts.out.display()))?;
    let dir = opts.out.as_path();

    let (mut plans, rows) = plan_shards(dir, &frames_path, opts)?;
    let mut hidden = keep_consistent_sizes(dir, &mut plans);
    let todo = plans.iter().filter(|p| p.keep.is_none()).count();
    if todo < plans.len() {
        tracing::info!(
            "{} of {} shards already finished and verified; {todo} to compute",
            plans.len() - todo,
            plans.len()
        );
    }
    let mut done = Computed::default();
    if todo > 0 {
        // The set is unfinished until every shard is in place again.
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            fs::remove_file(&manifest_path)
                .with_context(|| format!("cannot remove {}", manifest_path.display()))?;
            tracing::info!(
                "removed {} until the shards are complete again",
                manifest_path.display()
            );
        }
        let models = load_models(opts)?;
        let model_sizes = (models.dnabert.hidden_size, models.esm.hidden_size);
        if let Some(h) = hidden.filter(|&h| h != model_sizes) {
            tracing::warn!(
                "the finished shards were made with hidden sizes {h:?}, the models now give \
                 {model_sizes:?}: recomputing all shards"
            );
            for plan in &mut plans {
                plan.keep = None;
            }
        }
        hidden = Some(model_sizes);
        done = compute_missing(dir, &frames_path, opts, &models, &mut plans)?;
    }
    remove_stale_shards(dir, plans.len())?;

    let (dnabert_hidden, esm_hidden) = hidden.context("internal error: no hidden sizes")?;
    let shards: Vec<ShardEntry> = plans
        .into_iter()
        .map(|p| p.keep.map(|r| r.entry))
        .collect::<Option<_>>()
        .context("internal error: a shard was neither kept nor computed")?;
    let manifest = FeatureManifest {
        format: FEATURES_FORMAT.into(),
        format_version: FEATURES_FORMAT_VERSION,
        feature_dim: dnabert_hidden + esm_hidden,
        rows,
        info: FeatureInfo {
            dnabert_model: Some(opts.dnabert.clone()),
            dnabert_hidden: Some(dnabert_hidden),
            esm_model: Some(opts.esm.clone()),
            esm_hidden: Some(esm_hidden),
            chunk_len: Some(summary.chunk_len),
            source: Some(frames_path.display().to_string()),
        },
        shards,
        virnucpro_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    write_manifest(dir, &manifest)?;
    Ok(ExtractReport {
        shards_kept: manifest.shards.len() - done.computed,
        manifest,
        shards_computed: done.computed,
        shards_recomputed: done.recomputed,
        frames_computed: done.frames,
        seconds: done.seconds,
    })
}

/// Pass 1: plans the shards of `frames_path` and verifies the ones already in `dir` (no model
/// needed). Returns the plans and the number of frames.
fn plan_shards(
    dir: &Path,
    frames_path: &Path,
    opts: &ExtractOptions,
) -> Result<(Vec<ShardPlan>, usize)> {
    let mut plans: Vec<ShardPlan> = Vec::new();
    let mut reader = FramesReader::open(frames_path)?;
    let mut rows = 0;
    loop {
        let frames = next_frames(&mut reader, opts.rows_per_shard, rows, frames_path)?;
        if frames.is_empty() {
            break;
        }
        let mut plan = ShardPlan {
            index: plans.len(),
            first_row: rows,
            rows: frames.len(),
            frames_hash: frames_hash(&frames),
            keep: None,
            existed: false,
        };
        match verify_shard(dir, &plan, &frames, opts) {
            Ok(keep) => {
                plan.existed = keep.is_some();
                plan.keep = keep;
            }
            Err(reason) => {
                plan.existed = true;
                tracing::warn!(
                    "{}: {reason}; recomputing it",
                    dir.join(shard_file_name(plan.index)).display()
                );
            }
        }
        rows += plan.rows;
        plans.push(plan);
    }
    ensure!(
        rows > 0,
        "{} holds no frames: nothing to extract",
        frames_path.display()
    );
    Ok((plans, rows))
}

/// Kept shards must agree on the hidden sizes (models are compared by name when verifying):
/// drops those that differ from the first kept one, and returns its sizes.
fn keep_consistent_sizes(dir: &Path, plans: &mut [ShardPlan]) -> Option<(usize, usize)> {
    let sizes = |r: &ShardRecord| (r.dnabert_hidden, r.esm_hidden);
    let hidden = plans.iter().find_map(|p| p.keep.as_ref().map(sizes));
    for plan in plans.iter_mut() {
        if let (Some(record), Some(h)) = (&plan.keep, hidden) {
            if sizes(record) != h {
                tracing::warn!(
                    "{}: made with hidden sizes {:?}, other shards with {h:?}; recomputing it",
                    dir.join(&record.entry.file).display(),
                    sizes(record)
                );
                plan.keep = None;
            }
        }
    }
    hidden
}

/// What pass 2 did.
#[derive(Default)]
struct Computed {
    computed: usize,
    recomputed: usize,
    frames: usize,
    seconds: f64,
}

/// Pass 2: computes the shards not kept, one by one, each committed on its own.
fn compute_missing(
    dir: &Path,
    frames_path: &Path,
    opts: &ExtractOptions,
    models: &Models,
    plans: &mut [ShardPlan],
) -> Result<Computed> {
    let total = plans.iter().filter(|p| p.keep.is_none()).count();
    let started = Instant::now();
    let to_compute: usize = plans
        .iter()
        .filter(|p| p.keep.is_none())
        .map(|p| p.rows)
        .sum();
    let bar = virnucpro_core::progress::bar(to_compute as u64, "frames");
    let log = |msg: String| match &bar {
        Some(b) => b.suspend(|| tracing::info!("{msg}")),
        None => tracing::info!("{msg}"),
    };
    let mut done = Computed::default();
    let mut reader = FramesReader::open(frames_path)?;
    for plan in plans.iter_mut() {
        let frames = next_frames(&mut reader, plan.rows, plan.first_row, frames_path)?;
        if plan.keep.is_some() {
            continue;
        }
        ensure!(
            frames.len() == plan.rows && frames_hash(&frames) == plan.frames_hash,
            "{} changed while extract was running; run it again",
            frames_path.display()
        );
        let shard_started = Instant::now();
        let features = embed_frames(models, &frames, &mut |sequences| {
            if let Some(b) = &bar {
                // Two sequences per frame: its DNA, then its protein.
                b.set_position((done.frames + sequences / 2) as u64);
            }
        })
        .with_context(|| {
            format!(
                "cannot embed frames {}..{} of {}",
                plan.first_row,
                plan.first_row + plan.rows,
                frames_path.display()
            )
        })?;
        let record = write_shard_and_record(dir, opts, models, plan, &frames, &features)?;
        done.computed += 1;
        done.recomputed += usize::from(plan.existed);
        done.frames += plan.rows;
        let secs = shard_started.elapsed().as_secs_f64();
        log(format!(
            "{} ({}/{total}): frames {}..{} in {secs:.1}s ({:.0} frames/s)",
            record.entry.file,
            done.computed,
            plan.first_row,
            plan.first_row + plan.rows,
            plan.rows as f64 / secs.max(1e-9)
        ));
        plan.keep = Some(record);
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

/// Writes shard `plan` of `frames` with their `features`, then its completion record.
fn write_shard_and_record(
    dir: &Path,
    opts: &ExtractOptions,
    models: &Models,
    plan: &ShardPlan,
    frames: &[PreparedFrame],
    features: &[f32],
) -> Result<ShardRecord> {
    let model_sizes = (models.dnabert.hidden_size, models.esm.hidden_size);
    let labels: Vec<u8> = frames.iter().map(|f| f.label).collect();
    let ids: Vec<String> = frames.iter().map(|f| f.id.clone()).collect();
    let record_path = dir.join(shard_record_name(plan.index));
    // An old record must not vouch for the new file if this run stops half-way.
    if record_path.exists() {
        fs::remove_file(&record_path)
            .with_context(|| format!("cannot remove {}", record_path.display()))?;
    }
    let entry = write_shard(
        &dir.join(shard_file_name(plan.index)),
        features,
        model_sizes.0 + model_sizes.1,
        &labels,
        &ids,
    )?;
    let record = ShardRecord {
        format: SHARD_RECORD_FORMAT.into(),
        format_version: SHARD_RECORD_FORMAT_VERSION,
        entry,
        first_row: plan.first_row,
        frames_fnv1a64: plan.frames_hash.clone(),
        feature_dim: model_sizes.0 + model_sizes.1,
        dnabert_model: opts.dnabert.clone(),
        dnabert_hidden: model_sizes.0,
        esm_model: opts.esm.clone(),
        esm_hidden: model_sizes.1,
        esm_token_dropout: opts.esm_token_dropout.to_string(),
        device: device_name(&models.dnabert.device),
        dtype: format!("{:?}/{:?}", models.dnabert.dtype, models.esm.dtype),
    };
    write_atomic(
        &record_path,
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )
    .with_context(|| format!("cannot write {}", record_path.display()))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hash_covers_every_column() {
        let f = PreparedFrame {
            id: "a_chunk_1F1".into(),
            label: 1,
            group: "viral".into(),
            dna: "ATGA".into(),
            protein: "M".into(),
        };
        let base = frames_hash(std::slice::from_ref(&f));
        assert_eq!(base, Fnv1a64::hex(b"a_chunk_1F1\t1\tviral\tATGA\tM\n"));
        let changed = [
            PreparedFrame {
                label: 0,
                ..f.clone()
            },
            PreparedFrame {
                dna: "ATGC".into(),
                ..f.clone()
            },
            PreparedFrame {
                protein: "K".into(),
                ..f.clone()
            },
        ];
        for c in changed {
            assert_ne!(frames_hash(&[c]), base);
        }
    }

    #[test]
    fn stale_shards_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "shard-00000.safetensors",
            "shard-00000.done.json",
            "shard-00002.safetensors",
            "shard-00002.done.json",
            "shard-2.safetensors",
            "shard-00003.txt",
            "notes.txt",
        ];
        for n in names {
            fs::write(dir.path().join(n), "x").unwrap();
        }
        remove_stale_shards(dir.path(), 2).unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "shard-00000.done.json",
                "shard-00000.safetensors",
                "shard-00003.txt",
                "shard-2.safetensors"
            ]
        );
    }
}
