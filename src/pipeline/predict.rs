//! `virnucpro predict`: the whole pipeline, streaming.
//!
//! read (background thread) → chunk + six-frame translation (background thread, rayon inside)
//! → DNABERT and ESM embeddings in length-sorted batches → classifier → writers, with bounded
//! queues so memory stays flat in the input size and rows come out in input order.
//!
//! Before any sequence is read, the classifier's input size is checked against the two models'
//! hidden sizes (taken from their `config.json`, without loading weights), so a wrong
//! combination fails in a second rather than after hours.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{device_name, select_device, DTypeSpec, DeviceSpec};
use crate::input::fasta::RecordReader;
use crate::input::{Frame, RecordFrames};
use crate::models::classifier::Classifier;
use crate::models::config::{ModelConfig, ModelFamily};
use crate::models::esm::TokenDropout;
use crate::models::hub::{resolve_model, ModelFiles};
use crate::output::atomic::{commit_all, AtomicFile};
use crate::output::fasta::FrameFastaWriter;
use crate::output::predictions::{
    FrameScore, HighestScores, RecordSummary, ResultsWriter, SummaryWriter, HIGHEST_SCORE_FILE,
    RESULTS_FILE, SUMMARY_FILE,
};
use crate::pipeline::embed::{
    enqueue_sequences, load_from_files, random_embedding_model, EmbeddingModel, LoadOptions,
    RandomModel,
};
use crate::pipeline::frames::{translate_batch, RecordBatches};

/// Bases read per work unit on a CPU: small enough for a lively progress bar.
const BATCH_BASES_CPU: usize = 256 << 10;
/// Bases per work unit on a GPU: enough frames to fill several full batches.
const BATCH_BASES_GPU: usize = 2 << 20;
/// Translated work units waiting for the models.
const QUEUE_DEPTH: usize = 2;

/// Everything `predict` needs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub inputs: Vec<PathBuf>,
    pub chunk_len: usize,
    pub classifier: PathBuf,
    /// Nucleotide model: directory or Hub ID.
    pub dnabert: String,
    /// Protein model: directory or Hub ID.
    pub esm: String,
    pub out_dir: PathBuf,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Padded tokens per forward pass; `None` picks the device default.
    pub batch_tokens: Option<usize>,
    pub esm_token_dropout: TokenDropout,
    /// Also write `identified_nucleotide.fa` and `identified_protein.faa`.
    pub keep_frames: bool,
    pub min_viral_fraction: f64,
    /// Refuse (instead of warning) when the classifier's metadata names other models or
    /// another chunk length.
    pub strict: bool,
    /// Show a progress bar (the CLI turns it on for a terminal).
    pub progress: bool,
    /// Benchmarks only: random weights of the real DNABERT-S shape and of this protein-model
    /// shape, and a random classifier that fits them (`classifier` is not read; the DNABERT
    /// tokenizer still comes from `dnabert`). The scores are meaningless.
    pub random_weights: Option<RandomModel>,
}

/// Counters of a finished run.
#[derive(Debug, Clone, Default)]
pub struct PredictReport {
    pub records: u64,
    pub empty_skipped: u64,
    pub chunks: u64,
    pub frames: u64,
    pub records_without_frames: u64,
    pub virus_records: u64,
    /// Whole run, from the start of `run` (device set-up and model loading included).
    pub seconds: f64,
    /// Device set-up and model loading, part of `seconds`.
    pub load_seconds: f64,
}

impl PredictReport {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9)
    }

    /// Frames per second once the models are loaded (what a long run approaches).
    pub fn frames_per_second_after_loading(&self) -> f64 {
        self.frames as f64 / (self.seconds - self.load_seconds).max(1e-9)
    }
}

impl std::fmt::Display for PredictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records ({} called virus, {} without a scorable frame), {} chunks, {} frames scored in {:.1} s ({:.0} frames/s; models loaded in {:.1} s, {:.0} frames/s after that)",
            self.records,
            self.virus_records,
            self.records_without_frames,
            self.chunks,
            self.frames,
            self.seconds,
            self.frames_per_second(),
            self.load_seconds,
            self.frames_per_second_after_loading()
        )?;
        if self.empty_skipped > 0 {
            write!(f, "; {} empty records skipped", self.empty_skipped)?;
        }
        Ok(())
    }
}

fn hidden_size(files: &ModelFiles) -> usize {
    match &files.config {
        ModelConfig::Esm(c) => c.hidden_size,
        ModelConfig::DnaBert(c) => c.hidden_size,
    }
}

/// Resolves a model and checks it is of the family its flag is for.
fn resolve_family(spec: &str, want: ModelFamily, flag: &str) -> anyhow::Result<ModelFiles> {
    let files = resolve_model(spec)?;
    if files.family() != want {
        bail!(
            "{flag} {spec} is a {} model, but {flag} needs a {want} model ({})",
            files.family(),
            match want {
                ModelFamily::DnaBert => "e.g. zhihan1996/DNABERT-S",
                ModelFamily::Esm => "e.g. Synthyra/FastESM2_650 or facebook/esm2_t36_3B_UR50D",
            }
        );
    }
    Ok(files)
}

/// The loaded models of a run.
struct Models {
    dnabert: EmbeddingModel,
    esm: EmbeddingModel,
    classifier: Classifier,
    device: Device,
}

impl Models {
    /// Embeds and scores `frames`, in order.
    fn score(
        &self,
        frames: &[&Frame],
        batch_tokens: Option<usize>,
    ) -> anyhow::Result<Vec<FrameScore>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let dna: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.dna.as_slice()))
            .collect();
        let protein: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.protein.as_slice()))
            .collect();
        // Both models are enqueued before either is collected: the host tokenizes and enqueues
        // the proteins while the device runs the nucleotide model.
        let dna = enqueue_sequences(
            &self.dnabert,
            &dna,
            batch_tokens.unwrap_or_else(|| self.dnabert.default_batch_tokens()),
        )?;
        let protein = enqueue_sequences(
            &self.esm,
            &protein,
            batch_tokens.unwrap_or_else(|| self.esm.default_batch_tokens()),
        )?;
        let dna = dna.finish()?;
        let protein = protein.finish()?;
        // Merged feature = [nucleotide | protein] (PIPELINE.md §4).
        let features =
            Tensor::cat(&[&dna.embeddings, &protein.embeddings], 1)?.to_device(&self.device)?;
        let probs = self
            .classifier
            .forward(&features)
            .context("classifier forward pass failed")?
            .to_device(&Device::Cpu)?
            .to_vec2::<f32>()?;
        Ok(frames
            .iter()
            .zip(probs)
            .map(|(f, p)| FrameScore {
                id: f.id.clone(),
                score1: p[0],
                score2: p[1],
            })
            .collect())
    }
}

/// The output files of a run, all committed together at the end.
struct Outputs {
    results: ResultsWriter<AtomicFile>,
    summary: SummaryWriter<AtomicFile>,
    highest: HighestScores,
    highest_file: AtomicFile,
    frames: Option<FrameFastaWriter>,
}

impl Outputs {
    fn create(dir: &Path, keep_frames: bool, min_viral_fraction: f64) -> anyhow::Result<Self> {
        crate::output::atomic::create_output_dir(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        let open = |name: &str| {
            let path = dir.join(name);
            AtomicFile::create(&path).with_context(|| format!("cannot write {}", path.display()))
        };
        Ok(Outputs {
            results: ResultsWriter::new(open(RESULTS_FILE)?)?,
            summary: SummaryWriter::new(open(SUMMARY_FILE)?, min_viral_fraction)?,
            highest: HighestScores::default(),
            highest_file: open(HIGHEST_SCORE_FILE)?,
            frames: if keep_frames {
                Some(FrameFastaWriter::create(dir).with_context(|| {
                    format!("cannot write the frame FASTA files in {}", dir.display())
                })?)
            } else {
                None
            },
        })
    }

    fn commit(self) -> anyhow::Result<()> {
        let highest_file = self.highest.write(self.highest_file)?;
        let mut files = vec![
            self.results.into_inner(),
            self.summary.into_inner(),
            highest_file,
        ];
        if let Some(frames) = self.frames {
            files.extend(frames.into_files());
        }
        commit_all(files).context("cannot finish writing the output files")
    }
}

/// The real start-up: cheap checks first (classifier, model configs, the dimension guard), then
/// the inputs are opened (a missing file fails before the slow model loading), then the models.
fn load_checked(req: &PredictRequest, device: &Device) -> anyhow::Result<(Models, RecordReader)> {
    let classifier = Classifier::load(&req.classifier, device)
        .with_context(|| format!("cannot load the classifier {}", req.classifier.display()))?;
    let dnabert_files = resolve_family(&req.dnabert, ModelFamily::DnaBert, "--dnabert")?;
    let esm_files = resolve_family(&req.esm, ModelFamily::Esm, "--esm")?;
    let warnings = classifier.check_dimensions(
        (req.dnabert.as_str(), hidden_size(&dnabert_files)),
        (req.esm.as_str(), hidden_size(&esm_files)),
        req.chunk_len,
        req.strict,
    )?;
    for w in warnings {
        tracing::warn!("{w}");
    }

    let reader = RecordReader::new(&req.inputs)?;

    let options = LoadOptions {
        esm_token_dropout: req.esm_token_dropout,
    };
    let dnabert = load_from_files(dnabert_files, device, req.dtype, &options)
        .with_context(|| format!("cannot load the nucleotide model `{}`", req.dnabert))?;
    let esm = load_from_files(esm_files, device, req.dtype, &options)
        .with_context(|| format!("cannot load the protein model `{}`", req.esm))?;
    tracing::info!(
        "models: {} ({}, {:?}) + {} ({}, {:?}) -> classifier {} ({} inputs) on {}",
        req.dnabert,
        dnabert.hidden_size,
        dnabert.dtype,
        req.esm,
        esm.hidden_size,
        esm.dtype,
        req.classifier.display(),
        classifier.input_dim(),
        device_name(device)
    );
    let models = Models {
        dnabert,
        esm,
        classifier,
        device: device.clone(),
    };
    Ok((models, reader))
}

/// Benchmark start-up: random weights of the real shapes (see [`PredictRequest::random_weights`]).
fn load_random(
    req: &PredictRequest,
    protein: RandomModel,
    device: &Device,
) -> anyhow::Result<(Models, RecordReader)> {
    if protein == RandomModel::DnaBertS {
        bail!("--random-weights takes the protein model's shape: esm2-650m or esm2-3b");
    }
    tracing::warn!("--random-weights: benchmark mode, random models, meaningless scores");
    let reader = RecordReader::new(&req.inputs)?;
    let options = LoadOptions {
        esm_token_dropout: req.esm_token_dropout,
    };
    let dnabert = random_embedding_model(
        RandomModel::DnaBertS,
        Some(&req.dnabert),
        device,
        req.dtype,
        &options,
    )?;
    let esm = random_embedding_model(protein, None, device, req.dtype, &options)?;
    let classifier = random_classifier(dnabert.hidden_size + esm.hidden_size, device)?;
    let models = Models {
        dnabert,
        esm,
        classifier,
        device: device.clone(),
    };
    Ok((models, reader))
}

/// A classifier of the published shape (hidden 512) with seeded random weights.
fn random_classifier(input: usize, device: &Device) -> anyhow::Result<Classifier> {
    let hidden = 512;
    let mut rng = crate::pipeline::rng::Rng::new(7, 0);
    let mut t = |shape: &[usize], scale: f32, offset: f32| -> anyhow::Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| offset + scale * (rng.next_f32() * 2.0 - 1.0))
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    };
    let w = 1.0 / (input as f32).sqrt();
    let tensors = std::collections::HashMap::from([
        (
            "hidden_layer.weight".to_string(),
            t(&[hidden, input], w, 0.0)?,
        ),
        ("hidden_layer.bias".to_string(), t(&[hidden], w, 0.0)?),
        ("bn1.weight".to_string(), t(&[hidden], 0.1, 1.0)?),
        ("bn1.bias".to_string(), t(&[hidden], 0.1, 0.0)?),
        ("bn1.running_mean".to_string(), t(&[hidden], 0.1, 0.0)?),
        ("bn1.running_var".to_string(), t(&[hidden], 0.1, 1.0)?),
        (
            "output_layer.weight".to_string(),
            t(&[2, hidden], 0.05, 0.0)?,
        ),
        ("output_layer.bias".to_string(), t(&[2], 0.05, 0.0)?),
    ]);
    Classifier::from_tensors(tensors, Default::default())
}

/// Runs the whole pipeline; outputs appear in `out_dir` only when everything succeeded.
pub fn run(req: &PredictRequest) -> anyhow::Result<PredictReport> {
    let started = Instant::now();
    if req.chunk_len == 0 {
        bail!("--chunk-len must be at least 1");
    }
    if !(0.0..=1.0).contains(&req.min_viral_fraction) {
        bail!(
            "--min-viral-fraction must be between 0 and 1, not {}",
            req.min_viral_fraction
        );
    }

    let device = select_device(req.device)?;
    let (models, reader) = match req.random_weights {
        None => load_checked(req, &device)?,
        Some(kind) => load_random(req, kind, &device)?,
    };
    let load_seconds = started.elapsed().as_secs_f64();

    // 4. Stream.
    let mut outputs = Outputs::create(&req.out_dir, req.keep_frames, req.min_viral_fraction)?;
    let batch_bases = if device.is_cpu() {
        BATCH_BASES_CPU
    } else {
        BATCH_BASES_GPU
    };
    let chunk_len = req.chunk_len;
    let (sender, receiver) = sync_channel::<anyhow::Result<Vec<RecordFrames>>>(QUEUE_DEPTH);
    let mut batches = RecordBatches::spawn(reader, batch_bases);
    let translator = std::thread::Builder::new()
        .name("translate".into())
        .spawn(move || {
            for batch in batches.by_ref() {
                let item = batch.map(|records| translate_batch(&records, chunk_len));
                let failed = item.is_err();
                if sender.send(item).is_err() || failed {
                    return 0;
                }
            }
            batches.empty_skipped()
        })
        .context("cannot start the translation thread")?;

    let progress = progress_bar(req.progress);
    let mut report = PredictReport::default();
    for work in receiver.iter() {
        let records = work?;
        let frames: Vec<&Frame> = records
            .iter()
            .flat_map(|r| r.chunks.iter().flat_map(|c| c.frames.iter()))
            .collect();
        let scores = models.score(&frames, req.batch_tokens)?;
        let mut scores = scores.as_slice();
        for record in &records {
            let n = record.frame_count();
            let (mine, rest) = scores.split_at(n);
            scores = rest;
            for s in mine {
                outputs.results.write(s)?;
                outputs.highest.add(s);
            }
            if let Some(w) = outputs.frames.as_mut() {
                for frame in record.chunks.iter().flat_map(|c| c.frames.iter()) {
                    w.write_frame(frame)?;
                }
            }
            let summary =
                RecordSummary::from_scores(&record.id, record.len, record.chunks.len(), mine);
            outputs.summary.write(&summary)?;
            report.records += 1;
            report.chunks += record.chunks.len() as u64;
            report.frames += n as u64;
            if n == 0 {
                report.records_without_frames += 1;
            }
            if summary.call(req.min_viral_fraction) == "virus" {
                report.virus_records += 1;
            }
        }
        progress.set_message(format!(
            "{} records, {} frames ({:.0} frames/s)",
            report.records,
            report.frames,
            report.frames as f64 / started.elapsed().as_secs_f64().max(1e-9)
        ));
        progress.tick();
    }
    report.empty_skipped = translator
        .join()
        .map_err(|_| anyhow::anyhow!("the translation thread failed"))?;
    progress.finish_and_clear();
    if report.records == 0 {
        bail!(
            "no sequence records in {}: nothing to predict",
            req.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    outputs.commit()?;
    report.seconds = started.elapsed().as_secs_f64();
    report.load_seconds = load_seconds;
    Ok(report)
}

fn progress_bar(show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
