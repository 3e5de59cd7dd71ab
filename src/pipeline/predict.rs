//! `virnucpro predict`: the whole pipeline, streaming.
//!
//! read (background thread) → chunk + six-frame translation (background thread, rayon inside)
//! → DNABERT and ESM embeddings in length-sorted batches → classifier → writers, with bounded
//! queues so memory stays flat in the input size and rows come out in input order. The host
//! tokenizes one work unit and writes the results of another while the device computes (see
//! [`run`]), so the device does not wait for the host between units.
//!
//! Before any sequence is read, the classifier's input size is checked against the two models'
//! hidden sizes (taken from their `config.json`, without loading weights), so a wrong
//! combination fails in a second rather than after hours.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
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
    load_from_files, random_embedding_model, tokenize_sequences, DeviceRows, EmbeddingModel,
    LoadOptions, RandomModel, Tokenized,
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
    /// The host half of scoring `frames`: tokenizes their DNA and proteins and builds the padded
    /// batches of both models. Nothing touches the device, so `run` does this for the next work
    /// unit while the device still computes the previous one.
    fn prepare(&self, frames: &[&Frame], batch_tokens: Option<usize>) -> anyhow::Result<Prepared> {
        let dna: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.dna.as_slice()))
            .collect();
        let protein: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.protein.as_slice()))
            .collect();
        let dna = tokenize_sequences(
            &self.dnabert,
            &dna,
            batch_tokens.unwrap_or_else(|| self.dnabert.default_batch_tokens()),
        )?;
        let protein = tokenize_sequences(
            &self.esm,
            &protein,
            batch_tokens.unwrap_or_else(|| self.esm.default_batch_tokens()),
        )?;
        Ok(Prepared { dna, protein })
    }

    /// Enqueues all the device work of a prepared unit (both models, the merged features, the
    /// classifier and a per-row sum for the finiteness check) without waiting for the device;
    /// [`PendingScores::finish`] collects the result.
    fn launch(&self, prepared: Prepared) -> anyhow::Result<PendingScores<'_>> {
        if prepared.dna.is_empty() {
            return Ok(PendingScores { work: None });
        }
        let dna = prepared
            .dna
            .enqueue(&self.dnabert, &mut |_| {})?
            .into_device_rows()?;
        let protein = prepared
            .protein
            .enqueue(&self.esm, &mut |_| {})?
            .into_device_rows()?;
        // Merged feature = [nucleotide | protein] (PIPELINE.md §4).
        let features = Tensor::cat(&[&dna.rows, &protein.rows], 1)?.to_device(&self.device)?;
        let probs = self
            .classifier
            .forward(&features)
            .context("classifier forward pass failed")?;
        // A non-finite embedding value makes its row's sum non-finite: the rows are checked on
        // the device and only the sums come back, not every value.
        let sums = features.sum_keepdim(1)?;
        let out = Tensor::cat(&[&probs.to_dtype(DType::F32)?, &sums], 1)
            .context("classifier forward pass failed")?;
        Ok(PendingScores {
            work: Some(Launched { dna, protein, out }),
        })
    }
}

/// A work unit tokenized for both models; see [`Models::prepare`].
struct Prepared {
    dna: Tokenized,
    protein: Tokenized,
}

/// A work unit whose scores the device is computing; see [`Models::launch`].
struct PendingScores<'a> {
    /// `None` for a unit without frames (nothing was sent to the device).
    work: Option<Launched<'a>>,
}

struct Launched<'a> {
    dna: DeviceRows<'a>,
    protein: DeviceRows<'a>,
    /// `[n, 3]`: the two probabilities and the sum of the row's features.
    out: Tensor,
}

impl PendingScores<'_> {
    /// Waits for the device and returns the probabilities `[score1, score2]` of every frame, in
    /// order. Fails naming the record when an embedding is not finite.
    fn finish(self) -> anyhow::Result<Vec<[f32; 2]>> {
        let Some(Launched { dna, protein, out }) = self.work else {
            return Ok(Vec::new());
        };
        let n = dna.ids().len();
        let values = out
            .to_device(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| {
                format!(
                    "the models or the classifier failed on a work unit of {n} frames (first: \
                     `{}`); on a GPU out of memory, lower --batch-tokens",
                    dna.ids()[0]
                )
            })?;
        if values.len() != n * 3 {
            bail!(
                "classifier returned {} values for {n} frames, expected {}",
                values.len(),
                n * 3
            );
        }
        let rows = values.chunks_exact(3);
        if rows.clone().any(|r| !r[2].is_finite()) {
            // Copy the embeddings out to name the record (a sum can also overflow with finite
            // values, then both checks pass and the probabilities decide).
            dna.check_finite()?;
            protein.check_finite()?;
        }
        if let Some(i) = rows
            .clone()
            .position(|r| !(r[0].is_finite() && r[1].is_finite()))
        {
            bail!(
                "the classifier gave non-finite probabilities for frame `{}` although its input \
                 embeddings are finite; rerun with --device cpu to tell a device problem from a \
                 classifier one",
                dna.ids()[i]
            );
        }
        Ok(rows.map(|r| [r[0], r[1]]).collect())
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
    run_in_units(req, None)
}

/// [`run`] with work units of `unit_bases` bases instead of the device's default (for tests).
fn run_in_units(req: &PredictRequest, unit_bases: Option<usize>) -> anyhow::Result<PredictReport> {
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
    let batch_bases = unit_bases.unwrap_or(if device.is_cpu() {
        BATCH_BASES_CPU
    } else {
        BATCH_BASES_GPU
    });
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

    // The device must never wait for the host between work units. Per unit received: tokenize
    // it (host work while the device still runs the previous unit), collect the previous unit
    // (waiting for the device), launch this one, then write the previous unit's results while
    // the device runs. Launching before collecting would not help: the copy of the previous
    // results would queue behind the new unit's work on the device's single stream.
    let progress = progress_bar(req.progress);
    let mut report = PredictReport::default();
    let mut in_flight: Option<(Vec<RecordFrames>, PendingScores<'_>)> = None;
    for work in receiver.iter() {
        let next = work.and_then(|records| {
            let prepared = models.prepare(&frames_of(&records), req.batch_tokens)?;
            Ok((records, prepared))
        });
        // The previous unit's errors come first, as when units ran one after another.
        let done = match in_flight.take() {
            Some((records, pending)) => Some((records, pending.finish()?)),
            None => None,
        };
        let (records, prepared) = next?;
        in_flight = Some((records, models.launch(prepared)?));
        if let Some((records, scores)) = done {
            write_unit(&records, &scores, &mut outputs, &mut report, req)?;
            show_progress(&progress, &report, started);
        }
    }
    if let Some((records, pending)) = in_flight.take() {
        let scores = pending.finish()?;
        write_unit(&records, &scores, &mut outputs, &mut report, req)?;
        show_progress(&progress, &report, started);
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

/// The frames of a work unit, in order.
fn frames_of(records: &[RecordFrames]) -> Vec<&Frame> {
    records
        .iter()
        .flat_map(|r| r.chunks.iter().flat_map(|c| c.frames.iter()))
        .collect()
}

/// Writes a scored work unit: per frame to the results (and frame FASTA files), per record to
/// the summary; `scores` are those of [`frames_of`]`(records)`, in order.
fn write_unit(
    records: &[RecordFrames],
    scores: &[[f32; 2]],
    outputs: &mut Outputs,
    report: &mut PredictReport,
    req: &PredictRequest,
) -> anyhow::Result<()> {
    let frames = frames_of(records);
    if frames.len() != scores.len() {
        bail!(
            "{} scores for {} frames in a work unit",
            scores.len(),
            frames.len()
        );
    }
    let scores: Vec<FrameScore> = frames
        .iter()
        .zip(scores)
        .map(|(f, p)| FrameScore {
            id: f.id.clone(),
            score1: p[0],
            score2: p[1],
        })
        .collect();
    let mut scores = scores.as_slice();
    for record in records {
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
        let summary = RecordSummary::from_scores(&record.id, record.len, record.chunks.len(), mine);
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
    Ok(())
}

fn show_progress(progress: &ProgressBar, report: &PredictReport, started: Instant) {
    progress.set_message(format!(
        "{} records, {} frames ({:.0} frames/s)",
        report.records,
        report.frames,
        report.frames as f64 / started.elapsed().as_secs_f64().max(1e-9)
    ));
    progress.tick();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(path: &Path) -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Many small work units (each record alone, some without frames) go through the pipelined
    /// loop and give the rows of one unit holding everything, in the same order.
    #[test]
    fn results_do_not_depend_on_the_work_units() {
        let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/oracle");
        let tmp = tempfile::tempdir().unwrap();
        // A record with a stop codon in all six frames (a unit without frames), then another.
        let extra = tmp.path().join("extra.fa");
        std::fs::write(
            &extra,
            ">no_frames\nCATGCGGGTGTGCACGCCACTAAGACGAAACCTAGTGCCTCTTGCTAGTCATTATTAGTA\n\
             >after\nACGTTGCAAGGCTTACCGGATCGATCGGCTAGCTTAGGCATCGATCGGATCGACGGCATCGCGATCGCATT\n",
        )
        .unwrap();
        let request = |out: &str| PredictRequest {
            inputs: vec![oracle.join("inputs/genomes.fa"), extra.clone()],
            chunk_len: 60,
            classifier: oracle.join("classifier/model_full.pth"),
            dnabert: oracle.join("dnabert").display().to_string(),
            esm: oracle.join("fastesm").display().to_string(),
            out_dir: tmp.path().join(out),
            device: DeviceSpec::Cpu,
            dtype: DTypeSpec::F32,
            batch_tokens: None,
            esm_token_dropout: TokenDropout::default(),
            keep_frames: true,
            min_viral_fraction: 0.5,
            strict: false,
            progress: false,
            random_weights: None,
        };
        let whole = run_in_units(&request("whole"), Some(usize::MAX)).unwrap();
        let units = run_in_units(&request("units"), Some(1)).unwrap();
        assert!(
            whole.records > 2 && whole.records_without_frames > 0,
            "{whole}"
        );
        for (a, b) in [
            (whole.records, units.records),
            (whole.chunks, units.chunks),
            (whole.frames, units.frames),
            (whole.records_without_frames, units.records_without_frames),
            (whole.virus_records, units.virus_records),
        ] {
            assert_eq!(a, b, "{whole} vs {units}");
        }
        for file in [
            HIGHEST_SCORE_FILE,
            "identified_nucleotide.fa",
            "identified_protein.faa",
        ] {
            let read = |dir: &str| std::fs::read_to_string(tmp.path().join(dir).join(file));
            assert_eq!(read("whole").unwrap(), read("units").unwrap(), "{file}");
        }
        for file in [RESULTS_FILE, SUMMARY_FILE] {
            let a = rows(&tmp.path().join("whole").join(file));
            let b = rows(&tmp.path().join("units").join(file));
            assert_eq!(a.len(), b.len(), "{file}");
            for (x, y) in a.iter().zip(&b) {
                // Other batches, other padding: scores may differ in the last digits only.
                assert_eq!(x[0], y[0], "{file}: order");
                assert_eq!(x.len(), y.len(), "{file}");
                for (u, v) in x.iter().zip(y) {
                    match (u.parse::<f64>(), v.parse::<f64>()) {
                        (Ok(u), Ok(v)) => assert!((u - v).abs() <= 1e-5, "{file}: {x:?} {y:?}"),
                        _ => assert_eq!(u, v, "{file}"),
                    }
                }
            }
        }
    }
}
