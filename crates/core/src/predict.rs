//! `virnucpro predict`: the whole pipeline, streaming, resumable, on one or several devices.
//!
//! ```text
//! reader + translation thread ──units in input order──▶ scheduler ──▶ one worker per device
//!        │ (finished units come from the journal)            │          tokenize unit N+1 while
//!        ▼                                                   ▼          the device runs unit N
//!   journal: every finished unit, as soon as it is done    writers: the files, in input order
//! ```
//! The input is cut into work units ([`crate::input::units`]) by a rule that depends only on the
//! input, so a unit's results do not depend on which device computed it or when. Each finished
//! unit is appended to the journal in the output directory; a rerun of the same command reuses
//! the units it holds (a different command is refused, see [`Fingerprint`]). With `--shard I/N`
//! the run computes only its share of the units and keeps the sealed journal for `merge`.
//! Every output byte comes from [`UnitOutput`]s assembled in unit order, so resumed, multi-device
//! and merged runs write the bytes of one uninterrupted run.
//!
//! Before any sequence is read, the classifier's input size is checked against the two models'
//! hidden sizes (taken from their `config.json`, without loading weights), so a wrong
//! combination fails in a second rather than after hours.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use crossbeam_channel::bounded;
use indicatif::{ProgressBar, ProgressStyle};
use virnucpro_assets::hub::resolve_family;
use virnucpro_assets::identity::{file_identity, model_identity};
use virnucpro_assets::load::random_embedding_model;
use virnucpro_kernels::KernelOptions;
use virnucpro_models::classifier::Classifier;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::{
    device_kind, device_name, dtype_label, precision_label, select_devices, DTypeSpec, DeviceList,
};
use virnucpro_models::embed::{
    is_out_of_memory, load_from_files, tokenize_sequences, BatchFailure, DeviceRows,
    EmbeddingModel, LoadOptions, RandomModel, Tokenized,
};
use virnucpro_models::esm::TokenDropout;
use virnucpro_models::files::ModelFiles;
use virnucpro_models::options::ModelOptions;

use crate::frames::translate_batch;
use crate::input::fasta::RecordReader;
use crate::input::units::{
    total_input_bytes, ShardSpec, Unit, UnitId, UnitPlan, UnitReader, UnitRule,
};
use crate::input::{Frame, RecordFrames, SeqRecord};
use crate::output::fingerprint::Fingerprint;
use crate::output::journal::{Journal, ShardSeal};
use crate::output::merge::SHARD_KEY;
use crate::output::units::{Assembler, OutputOptions, UnitCounts, UnitOutput};
use crate::scheduler::{self, Handler, Item, Lane, Worker};

/// Units read and translated ahead of the devices, per device: at least this many...
const AHEAD_PER_DEVICE: usize = 3;
/// ...and on a GPU as many as hold this many bases (small units are grouped, see
/// [`GROUP_BATCHES`]), at most [`MAX_AHEAD_PER_DEVICE`].
const AHEAD_BASES_PER_GPU: u64 = 16 << 20;
const MAX_AHEAD_PER_DEVICE: usize = 256;
/// A GPU worker takes the units waiting in the queue together, up to about this many full
/// protein batches (and half of its read-ahead), so that small units still fill the GPU's
/// batches.
const GROUP_BATCHES: usize = 4;

/// Failures and behaviours a test asks for, so that the paths they exercise run on any machine.
/// The binary fills them from its environment (the `VIRNUCPRO_TEST_*` variables of docs/GPU.md);
/// a library caller sets them directly. The default asks for nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// `(K, N)`: device K (0-based position in `--device`) fails as it takes its N-th work unit,
    /// so that redistribution can be tested (`VIRNUCPRO_TEST_FAIL_DEVICE=K:N`).
    pub fail_device: Option<(usize, usize)>,
    /// Group units on the CPU too (as on a GPU), to test the grouping (on the CPU scores may
    /// then differ from an ungrouped run in the last digits; `VIRNUCPRO_TEST_GROUP_UNITS=1`).
    pub group_units: bool,
    /// Stop working once N computed units are journaled (say so and wait to be killed), so that
    /// a test can kill or cancel a run at a known point (`VIRNUCPRO_TEST_STALL_AFTER=N`).
    pub stall_after: Option<u64>,
    /// A linear layer on more than this many tokens fails as out of device memory
    /// ([`ModelOptions::inject_oom_above_rows`], `VIRNUCPRO_TEST_OOM_TOKENS=T`): the back-off.
    pub oom_above_tokens: Option<usize>,
}
/// How often progress is logged when stderr is not a terminal (cluster logs).
const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(60);

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
    /// One device, several (each gets its own copy of the models), or every GPU.
    pub devices: DeviceList,
    pub dtype: DTypeSpec,
    /// Padded tokens per forward pass; `None` picks the device default.
    pub batch_tokens: Option<usize>,
    pub esm_token_dropout: TokenDropout,
    /// Also write `identified_nucleotide.fa` and `identified_protein.faa`.
    pub keep_frames: bool,
    /// Also write `viral_records.fa`: the input records called `virus`.
    pub write_viral_fasta: bool,
    pub min_viral_fraction: f64,
    /// Refuse (instead of warning) when the classifier's metadata names other models or
    /// another chunk length.
    pub strict: bool,
    /// Only this share of the work units (`--shard I/N`), for `merge`.
    pub shard: Option<ShardSpec>,
    /// Discard the journal of an earlier, different run in `out_dir` instead of refusing.
    pub restart: bool,
    /// Benchmarks of the journal's cost only: keep no journal (the run cannot be resumed).
    pub no_journal: bool,
    /// Show a progress bar (the CLI turns it on for a terminal).
    pub progress: bool,
    /// Benchmarks only: random weights of the real DNABERT-S shape and of this protein-model
    /// shape, and a random classifier that fits them (`classifier` is not read; the DNABERT
    /// tokenizer still comes from `dnabert`). The scores are meaningless.
    pub random_weights: Option<RandomModel>,
    /// Kernel choices (`--attention`, ...). `run` always adds batch invariance: units are
    /// batched by budget and split on out-of-memory failures, and no bit may depend on it.
    pub kernels: KernelOptions,
    /// The activation memory one sub-batch of a padded (GPU) batch may take; `None`: whole
    /// batches ([`ModelOptions::sub_batch_bytes`]). Results do not depend on it.
    pub sub_batch_bytes: Option<usize>,
    /// How the GPU's memory pool is used; results never depend on it.
    pub pool: PoolPolicy,
    pub test_hooks: TestHooks,
}

/// Device-memory choices of a GPU run that change its peak memory and speed, never its results:
/// the peak a run reaches is the pool's largest reservation, which exceeds the live activations
/// when freed blocks do not fit the next request (docs/GPU.md, "Memory").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolPolicy {
    /// DNABERT-S's own sub-batch budget, in place of [`PredictRequest::sub_batch_bytes`].
    pub dna_sub_batch_bytes: Option<usize>,
    /// Run the protein model before DNABERT-S in each group.
    pub protein_first: bool,
}

impl PredictRequest {
    /// A request with the defaults of the command line for everything but the essentials.
    pub fn new(
        inputs: Vec<PathBuf>,
        chunk_len: usize,
        classifier: PathBuf,
        dnabert: String,
        esm: String,
        out_dir: PathBuf,
    ) -> PredictRequest {
        PredictRequest {
            inputs,
            chunk_len,
            classifier,
            dnabert,
            esm,
            out_dir,
            devices: DeviceList::default(),
            dtype: DTypeSpec::Auto,
            batch_tokens: None,
            esm_token_dropout: TokenDropout::Auto,
            keep_frames: false,
            write_viral_fasta: false,
            min_viral_fraction: 0.5,
            strict: false,
            shard: None,
            restart: false,
            no_journal: false,
            progress: false,
            random_weights: None,
            kernels: KernelOptions::default(),
            sub_batch_bytes: ModelOptions::default().sub_batch_bytes,
            pool: PoolPolicy::default(),
            test_hooks: TestHooks::default(),
        }
    }

    /// The options every model of the run is built with.
    fn model_options(&self) -> ModelOptions {
        ModelOptions {
            kernels: self.run_kernels(),
            inject_oom_above_rows: self.test_hooks.oom_above_tokens,
            sub_batch_bytes: self.sub_batch_bytes,
            ..ModelOptions::default()
        }
    }

    /// The options DNABERT-S is built with: [`Self::model_options`] with the pool policy's own
    /// sub-batch budget, if it has one (0: whole batches).
    fn dna_model_options(&self) -> ModelOptions {
        let mut options = self.model_options();
        if let Some(bytes) = self.pool.dna_sub_batch_bytes {
            options.sub_batch_bytes = (bytes > 0).then_some(bytes);
        }
        options
    }

    /// The kernel options of the run: the request's, batch-invariant.
    fn run_kernels(&self) -> KernelOptions {
        KernelOptions {
            batch_invariant: true,
            ..self.kernels
        }
    }

    fn output_options(&self) -> OutputOptions {
        OutputOptions {
            keep_frames: self.keep_frames,
            viral_fasta: self.write_viral_fasta,
            min_viral_fraction: self.min_viral_fraction,
        }
    }
}

/// Counters of a finished run.
#[derive(Debug, Clone, Default)]
pub struct PredictReport {
    /// Records, chunks, frames and calls of every unit of the run (reused ones included).
    pub counts: UnitCounts,
    /// Work units of this run (of its shard with `--shard`).
    pub units: u64,
    /// Of those, finished by an earlier run and taken from the journal.
    pub reused_units: u64,
    /// Frames of the reused units (not computed by this run).
    pub reused_frames: u64,
    /// Devices that failed during the run (their units went to the others).
    pub failed_devices: Vec<String>,
    /// Whole run, from the start of `run` (device set-up and model loading included).
    pub seconds: f64,
    /// Device set-up and model loading, part of `seconds`.
    pub load_seconds: f64,
}

impl PredictReport {
    /// Frames computed by this run per second, everything included.
    pub fn frames_per_second(&self) -> f64 {
        (self.counts.frames - self.reused_frames) as f64 / self.seconds.max(1e-9)
    }

    /// Frames per second once the models are loaded (what a long run approaches).
    pub fn frames_per_second_after_loading(&self) -> f64 {
        (self.counts.frames - self.reused_frames) as f64
            / (self.seconds - self.load_seconds).max(1e-9)
    }
}

/// A rate with two significant digits below 10 (a CPU running the real models scores well under
/// one frame per second), whole numbers above.
fn rate(per_second: f64) -> String {
    if per_second >= 10.0 {
        format!("{per_second:.0}")
    } else if per_second >= 1.0 {
        format!("{per_second:.1}")
    } else {
        format!("{per_second:.2}")
    }
}

impl std::fmt::Display for PredictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records ({} called virus, {} without a scorable frame), {} chunks, {} frames scored in {:.1} s ({} frames/s; models loaded in {:.1} s, {} frames/s after that)",
            self.counts.records,
            self.counts.virus_records,
            self.counts.records_without_frames,
            self.counts.chunks,
            self.counts.frames,
            self.seconds,
            rate(self.frames_per_second()),
            self.load_seconds,
            rate(self.frames_per_second_after_loading())
        )?;
        if self.reused_units > 0 {
            write!(
                f,
                "; {} of {} work units ({} frames) reused from the journal",
                self.reused_units, self.units, self.reused_frames
            )?;
        }
        if self.counts.empty_skipped > 0 {
            write!(f, "; {} empty records skipped", self.counts.empty_skipped)?;
        }
        if !self.failed_devices.is_empty() {
            write!(
                f,
                "; {} failed and its units were redone elsewhere",
                self.failed_devices.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The loaded models of one device.
struct Models {
    dnabert: EmbeddingModel,
    esm: EmbeddingModel,
    classifier: Classifier,
    device: Device,
}

impl Models {
    /// The host half of scoring `frames`: tokenizes their DNA and proteins and builds the padded
    /// batches of both models, each under `budget(model)` padded tokens. Nothing touches the
    /// device, so a worker does this for the next work unit while the device still computes
    /// the previous one.
    fn prepare(&self, frames: &[&Frame], budget: &Budget) -> anyhow::Result<Prepared> {
        let dna: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.dna.as_slice()))
            .collect();
        let protein: Vec<(&str, &[u8])> = frames
            .iter()
            .map(|f| (f.id.as_str(), f.protein.as_slice()))
            .collect();
        let dna = tokenize_sequences(&self.dnabert, &dna, budget.tokens(&self.dnabert))?;
        let protein = tokenize_sequences(&self.esm, &protein, budget.tokens(&self.esm))?;
        Ok(Prepared { dna, protein })
    }

    /// Enqueues all the device work of a prepared unit (both models, the merged features, the
    /// classifier and a per-row sum for the finiteness check) without waiting for the device;
    /// [`PendingScores::finish`] collects the result.
    fn launch(
        &self,
        prepared: Prepared,
        units: &[usize],
        protein_first: bool,
    ) -> anyhow::Result<PendingScores<'_>> {
        if prepared.dna.is_empty() {
            return Ok(PendingScores { work: None });
        }
        let Prepared { dna, protein } = prepared;
        fn run(tokens: Tokenized, model: &EmbeddingModel) -> anyhow::Result<DeviceRows<'_>> {
            tokens.enqueue(model, &mut |_| {})?.into_device_rows()
        }
        let (dna, protein) = if protein_first {
            let protein = run(protein, &self.esm)?;
            (run(dna, &self.dnabert)?, protein)
        } else {
            let dna = run(dna, &self.dnabert)?;
            (dna, run(protein, &self.esm)?)
        };
        // Merged feature = [nucleotide | protein] (docs/PIPELINE.md §4).
        let features = Tensor::cat(&[&dna.rows, &protein.rows], 1)?.to_device(&self.device)?;
        // The classifier runs on each work unit's rows alone, as when units come one by one:
        // its GEMM's algorithm may depend on the number of rows.
        let mut probs = Vec::with_capacity(units.len());
        let mut start = 0;
        for &n in units.iter().filter(|&&n| n > 0) {
            let p = self
                .classifier
                .forward(&features.narrow(0, start, n)?)
                .context("classifier forward pass failed")?;
            probs.push(p.to_dtype(DType::F32)?);
            start += n;
        }
        let probs = Tensor::cat(&probs, 0)?;
        // A non-finite embedding value makes its row's sum non-finite: the rows are checked on
        // the device and only the sums come back, not every value.
        let sums = features.sum_keepdim(1)?;
        let out = Tensor::cat(&[&probs, &sums], 1).context("classifier forward pass failed")?;
        Ok(PendingScores {
            work: Some(Launched { dna, protein, out }),
        })
    }

    /// Scores `frames` start to finish (no overlap) after `failure` ran out of memory: halves the
    /// batch budget until the unit fits, then says once what the budget is now.
    fn score_after_oom(
        &self,
        frames: &[&Frame],
        units: &[usize],
        budget: &Budget,
        failure: anyhow::Error,
    ) -> anyhow::Result<Vec<[f32; 2]>> {
        let first = failure.downcast_ref::<BatchFailure>().cloned();
        let mut error = failure;
        loop {
            budget.back_off(&error, &self.device)?;
            let attempt = self
                .prepare(frames, budget)
                .map_err(input_fault)
                .and_then(|p| self.launch(p, units, false))
                .and_then(PendingScores::finish);
            match attempt {
                Err(e) if is_out_of_memory(&e) => error = e,
                Err(e) => return Err(e),
                Ok(scores) => {
                    budget.announce(first.as_ref(), self);
                    return Ok(scores);
                }
            }
        }
    }
}

/// The padded-token budget per batch, shared by the workers of a run: halved for good after a
/// batch runs out of device memory.
struct Budget {
    /// `--batch-tokens`, or `None` for each model's device default.
    requested: Option<usize>,
    /// How many times it was halved.
    halvings: AtomicU32,
    /// The halvings already logged.
    announced: AtomicU32,
}

impl Budget {
    fn tokens(&self, model: &EmbeddingModel) -> usize {
        let base = self
            .requested
            .unwrap_or_else(|| model.default_batch_tokens());
        (base >> self.halvings.load(Ordering::Relaxed).min(63)).max(1)
    }

    /// After an out-of-memory failure: halves the budget or, when the failed batch held a single
    /// sequence, gives up with an error naming it.
    fn back_off(&self, error: &anyhow::Error, device: &Device) -> anyhow::Result<()> {
        let failure = error.downcast_ref::<BatchFailure>();
        if let Some(f) = failure.filter(|f| f.rows <= 1) {
            return Err(input_fault(anyhow::anyhow!(
                "record `{}` ({} tokens for the {} model) does not fit in the memory of {} even \
                 alone: shorten it, use a GPU with more memory, or --device cpu",
                f.first,
                f.max_len,
                f.model,
                device_name(device)
            )));
        }
        if self.halvings.fetch_add(1, Ordering::Relaxed) >= 40 {
            return Err(error_with(error, "out of memory even with tiny batches"));
        }
        Ok(())
    }

    /// Logs the budget in force after a back-off, once per budget (several workers may back off
    /// at the same time).
    fn announce(&self, failure: Option<&BatchFailure>, models: &Models) {
        let halvings = self.halvings.load(Ordering::Relaxed);
        if self.announced.fetch_max(halvings, Ordering::Relaxed) >= halvings {
            return;
        }
        let what = failure.map_or_else(
            || "a work unit".to_string(),
            |f| {
                format!(
                    "a batch of {} sequences of up to {} tokens",
                    f.rows, f.max_len
                )
            },
        );
        tracing::warn!(
            "{} ran out of memory on {what}; split and retried: batches now hold at most {} \
             (DNABERT) and {} (ESM) padded tokens for the rest of the run (nothing was lost; a \
             smaller --batch-tokens avoids the retries)",
            device_name(&models.device),
            self.tokens(&models.dnabert),
            self.tokens(&models.esm)
        );
    }
}

fn error_with(error: &anyhow::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {error:#}")
}

/// A problem of the input or the options, not of the device: the scheduler stops the run
/// instead of trying another device.
fn input_fault(e: anyhow::Error) -> anyhow::Error {
    scheduler::not_the_device(e)
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
            dna.check_finite().map_err(input_fault)?;
            protein.check_finite().map_err(input_fault)?;
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

/// A unit read and translated, ready for a device.
struct UnitJob {
    unit: UnitId,
    records: Vec<SeqRecord>,
    frames: Vec<RecordFrames>,
}

impl UnitJob {
    fn frame_refs(&self) -> Vec<&Frame> {
        frames_of(&self.frames)
    }
}

/// A unit's result as the scheduler passes it on.
enum UnitResult {
    Computed(Box<UnitOutput>),
    /// Finished by an earlier run: read back from the journal when its turn comes.
    InJournal(u64),
}

/// The worker of one device: its models and the run's shared settings.
struct DeviceWorker {
    models: Models,
    budget: Arc<Budget>,
    output: OutputOptions,
    /// [`TestHooks::fail_device`]: fail when taking this (1-based) unit.
    fail_at: Option<usize>,
    /// How many waiting units to batch together: several on a GPU, where a row's result does
    /// not depend on its batch; one on the CPU, where it can in the last bits (except for tests
    /// of the grouping itself, [`TestHooks::group_units`]).
    max_group: usize,
    pool: PoolPolicy,
}

impl DeviceWorker {
    fn format(&self, job: &UnitJob, scores: &[[f32; 2]]) -> anyhow::Result<UnitOutput> {
        let mut out =
            UnitOutput::format(job.unit, &job.records, &job.frames, scores, &self.output)?;
        out.halvings = u64::from(self.budget.halvings.load(Ordering::Relaxed));
        Ok(out)
    }
}

impl Worker<UnitJob, UnitResult> for DeviceWorker {
    fn name(&self) -> String {
        device_name(&self.models.device)
    }

    /// Per group of units taken: tokenize it (host work while the device still runs the previous
    /// group), collect the previous group (waiting for the device), launch this one, then format
    /// the previous group's rows while the device runs. Launching before collecting would not
    /// help: the copy of the previous results would queue behind the new group on the device's
    /// single stream.
    ///
    /// A worker never waits for a unit while it holds one: the scheduler hands out a bounded
    /// number of units and may be waiting for this worker's, so when nothing is queued the
    /// pending group is collected first (a group can take every queued unit).
    fn run(&mut self, lane: &mut Lane<UnitJob, UnitResult>) -> anyhow::Result<()> {
        let models = &self.models;
        let budget = &*self.budget;
        let mut taken = 0usize;
        let mut clock = WorkerClock::default();
        let mut in_flight: Option<(Group, PendingScores<'_>)> = None;
        loop {
            let Some(group) = self.take_group(lane, &mut taken, in_flight.is_none())? else {
                match in_flight.take() {
                    Some((group, pending)) => {
                        let scores = self.wait_for(&group, pending, &mut clock)?;
                        clock.time(|c| &mut c.report, || self.report(lane, &group, &scores))?;
                        continue;
                    }
                    None => break,
                }
            };
            let prepared = clock
                .time(
                    |c| &mut c.prepare,
                    || models.prepare(&group.frames(), budget),
                )
                .map_err(input_fault)?;
            let finished = match in_flight.take() {
                Some((done, pending)) => {
                    let scores = self.wait_for(&done, pending, &mut clock)?;
                    self.log_pool(clock.groups);
                    Some((done, scores))
                }
                None => None,
            };
            clock.groups += 1;
            let launched = clock.time(
                |c| &mut c.launch,
                || models.launch(prepared, &group.sizes(), self.pool.protein_first),
            );
            // The previous group's rows are formatted while the device runs this one.
            if let Some((done, scores)) = finished {
                clock.time(|c| &mut c.report, || self.report(lane, &done, &scores))?;
            }
            match launched {
                Ok(pending) => in_flight = Some((group, pending)),
                Err(e) if is_out_of_memory(&e) => {
                    let scores =
                        models.score_after_oom(&group.frames(), &group.sizes(), budget, e)?;
                    self.report(lane, &group, &scores)?;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::debug!("{}: {clock}", device_name(&models.device));
        if let Some((used, held)) = virnucpro_kernels::pool_high_water(&models.device) {
            tracing::debug!(
                "{}: device memory at its highest: {} MiB in use, {} MiB held by the pool",
                device_name(&models.device),
                used >> 20,
                held >> 20
            );
        }
        Ok(())
    }
}

/// Where a device worker's host thread spends its time: a device kept busy shows most of it in
/// `wait` (the host waiting for results); the device idles between a group's results and the
/// next group's first kernel, i.e. during `report` and the start of `launch`.
#[derive(Debug, Default)]
struct WorkerClock {
    groups: u64,
    prepare: Duration,
    launch: Duration,
    wait: Duration,
    report: Duration,
}

impl WorkerClock {
    fn time<T>(&mut self, slot: fn(&mut Self) -> &mut Duration, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *slot(self) += t.elapsed();
        out
    }
}

impl std::fmt::Display for WorkerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} groups; host time: tokenizing {:.2} s, launching {:.2} s, formatting {:.2} s; \
             waiting for the device {:.2} s",
            self.groups,
            self.prepare.as_secs_f64(),
            self.launch.as_secs_f64(),
            self.report.as_secs_f64(),
            self.wait.as_secs_f64()
        )
    }
}

/// Units a worker computes together: their frames are batched as one (on a GPU, where batching
/// changes no bit), then each unit's rows are reported on their own.
struct Group(Vec<(u64, Arc<UnitJob>)>);

impl Group {
    fn frames(&self) -> Vec<&Frame> {
        self.0
            .iter()
            .flat_map(|(_, job)| job.frame_refs())
            .collect()
    }

    /// Frames per unit.
    fn sizes(&self) -> Vec<usize> {
        self.0
            .iter()
            .map(|(_, job)| job.frames.iter().map(RecordFrames::frame_count).sum())
            .collect()
    }
}

impl DeviceWorker {
    /// The next unit, and on a GPU the units queued right behind it, up to about
    /// [`GROUP_BATCHES`] full protein batches. With `wait`, waits for a unit and returns `None`
    /// when the run is ending; without, `None` when no unit is queued now.
    fn take_group(
        &self,
        lane: &mut Lane<UnitJob, UnitResult>,
        taken: &mut usize,
        wait: bool,
    ) -> anyhow::Result<Option<Group>> {
        let count = |taken: &mut usize| -> anyhow::Result<()> {
            *taken += 1;
            if Some(*taken) == self.fail_at {
                bail!("injected failure (VIRNUCPRO_TEST_FAIL_DEVICE)");
            }
            Ok(())
        };
        let first = if wait { lane.take() } else { lane.try_take() };
        let Some(first) = first else {
            return Ok(None);
        };
        count(taken)?;
        let tokens =
            |job: &UnitJob| -> usize { job.frame_refs().iter().map(|f| f.protein.len() + 2).sum() };
        let mut group = Group(vec![first]);
        let target = GROUP_BATCHES * self.budget.tokens(&self.models.esm);
        let mut total = tokens(&group.0[0].1);
        while total < target && group.0.len() < self.max_group {
            let Some(next) = lane.try_take() else { break };
            count(taken)?;
            total += tokens(&next.1);
            group.0.push(next);
        }
        if group.0.len() > 1 {
            tracing::debug!(
                "{}: a group of {} work units, {total} protein tokens",
                device_name(&self.models.device),
                group.0.len()
            );
        }
        Ok(Some(group))
    }

    /// Logs the device's memory pool between the first groups, with nothing on the device: how
    /// the pool grows while the live memory stays the weights'.
    fn log_pool(&self, groups: u64) {
        let device = &self.models.device;
        if groups > 8 {
            return;
        }
        if let Some((used, held)) = virnucpro_kernels::pool_now(device) {
            tracing::debug!(
                "{}: after group {groups}: {} MiB in use, {} MiB held by the pool",
                device_name(device),
                used >> 20,
                held >> 20
            );
        }
    }

    /// Waits for a launched group's scores (backing off if the device ran out of memory).
    fn wait_for(
        &self,
        group: &Group,
        pending: PendingScores<'_>,
        clock: &mut WorkerClock,
    ) -> anyhow::Result<Vec<[f32; 2]>> {
        match clock.time(|c| &mut c.wait, || pending.finish()) {
            Err(e) if is_out_of_memory(&e) => {
                self.models
                    .score_after_oom(&group.frames(), &group.sizes(), &self.budget, e)
            }
            other => other,
        }
    }

    /// Hands each unit of a scored group to the scheduler.
    fn report(
        &self,
        lane: &mut Lane<UnitJob, UnitResult>,
        group: &Group,
        scores: &[[f32; 2]],
    ) -> anyhow::Result<()> {
        let mut rest = scores;
        for ((pos, job), n) in group.0.iter().zip(group.sizes()) {
            if rest.len() < n {
                bail!(
                    "{} scores for a group of units with more frames",
                    scores.len()
                );
            }
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            lane.done(
                *pos,
                UnitResult::Computed(Box::new(self.format(job, mine)?)),
            );
        }
        Ok(())
    }
}

/// The test hook [`TestHooks::stall_after`], after `journaled` units.
fn stall_if_asked(hooks: &TestHooks, journaled: u64) {
    if hooks.stall_after == Some(journaled) {
        tracing::warn!(
            "VIRNUCPRO_TEST_STALL_AFTER: {journaled} work units journaled; waiting to be killed"
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// The test hook [`TestHooks::fail_device`] for device `index`: the unit it fails on.
fn injected_failure(hooks: &TestHooks, index: usize) -> Option<usize> {
    hooks
        .fail_device
        .and_then(|(device, unit)| (device == index).then_some(unit))
}

/// What the run is about, resolved before anything slow happens.
struct Setup {
    devices: Vec<Device>,
    /// Model files (`None` with random weights).
    dnabert: Option<ModelFiles>,
    esm: Option<ModelFiles>,
    fingerprint: Fingerprint,
    rule: UnitRule,
}

/// The cheap checks and the run's fingerprint: devices, the classifier against the model
/// configs (the dimension guard), the inputs' sizes and bases.
fn set_up(req: &PredictRequest) -> anyhow::Result<Setup> {
    if req.chunk_len == 0 {
        bail!("--chunk-len must be at least 1");
    }
    if !(0.0..=1.0).contains(&req.min_viral_fraction) {
        bail!(
            "--min-viral-fraction must be between 0 and 1, not {}",
            req.min_viral_fraction
        );
    }
    if req.shard.is_some() && req.inputs.iter().any(|p| p.as_os_str() == "-") {
        bail!("--shard needs input files (every shard reads the whole input): stdin (-) cannot be split");
    }
    let devices = select_devices(&req.devices, &req.run_kernels())?;
    let kinds = devices
        .iter()
        .map(device_kind)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(other) = kinds.iter().position(|k| *k != kinds[0]) {
        bail!(
            "--device {}: {} is a {} but {} is a {}; results would depend on which device \
             scored a unit: use devices of one kind",
            req.devices,
            device_name(&devices[0]),
            kinds[0],
            device_name(&devices[other]),
            kinds[other]
        );
    }
    let mut fp = Fingerprint::default();
    fp.set("virnucpro version", env!("CARGO_PKG_VERSION"));
    let (dnabert, esm) = match req.random_weights {
        None => {
            let classifier =
                Classifier::load(&req.classifier, &Device::Cpu).with_context(|| {
                    format!("cannot load the classifier {}", req.classifier.display())
                })?;
            let dnabert = resolve_family(&req.dnabert, ModelFamily::DnaBert, "--dnabert")?;
            let esm = resolve_family(&req.esm, ModelFamily::Esm, "--esm")?;
            let warnings = classifier.check_dimensions(
                (req.dnabert.as_str(), dnabert.hidden_size()),
                (req.esm.as_str(), esm.hidden_size()),
                req.chunk_len,
                req.strict,
            )?;
            for w in warnings {
                tracing::warn!("{w}");
            }
            fp.set("classifier", file_identity(&req.classifier)?)
                .set("nucleotide model", model_identity(&dnabert)?)
                .set("protein model", model_identity(&esm)?);
            (Some(dnabert), Some(esm))
        }
        Some(RandomModel::DnaBertS) => {
            bail!("--random-weights takes the protein model's shape: esm2-650m or esm2-3b")
        }
        Some(kind) => {
            fp.set("random weights (benchmark)", kind)
                .set("nucleotide tokenizer", &req.dnabert);
            (None, None)
        }
    };
    // CPU int8 / bf16 compute in f32 around int8 / bf16 linear layers, named with their kernel,
    // so that a resumed run cannot mix its results with another precision's.
    let dtype = |family| dtype_label(req.dtype, family, &devices[0]);
    fp.set("device", &kinds[0])
        .set(
            "dtype",
            format!(
                "{} (DNABERT), {} (ESM)",
                dtype(ModelFamily::DnaBert),
                dtype(ModelFamily::Esm)
            ),
        )
        .set("attention", req.kernels.attention)
        .set(
            "--batch-tokens",
            req.batch_tokens
                .map_or_else(|| "device default".into(), |b| b.to_string()),
        )
        .set("--esm-token-dropout", req.esm_token_dropout)
        .set("chunk length", req.chunk_len);
    if devices[0].is_cpu() {
        // The CPU's batch layout decides the last bits of its embeddings: a journal written with
        // padded CPU batches (builds before packing, same version number) is not resumed.
        fp.set("CPU batches", "packed");
    }
    req.output_options().add_to(&mut fp);

    // The inputs (named with their sizes: a rewritten file is another input for a resumed run,
    // even when its records are the same), and the cut into units that follows from their bases.
    RecordReader::new(&req.inputs)?; // every file opens: fail before the slow part
    let sizes = req
        .inputs
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into());
            match total_input_bytes(std::slice::from_ref(p)) {
                Ok(Some(n)) => Ok(format!("{name} ({n} bytes)")),
                Ok(None) => Ok("<stdin>".to_string()),
                Err(e) => Err(e),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rule = UnitRule::for_inputs(&req.inputs)?;
    fp.set("inputs", sizes.join(", "))
        .set("bases per work unit", rule.max_bases)
        .set(
            SHARD_KEY,
            req.shard.map_or_else(|| "none".into(), |s| s.to_string()),
        );
    Ok(Setup {
        devices,
        dnabert,
        esm,
        fingerprint: fp,
        rule,
    })
}

/// Loads the models on every device (in parallel: each copy is read from disk on its own).
fn load_models(req: &PredictRequest, setup: &Setup) -> anyhow::Result<Vec<Models>> {
    let options = LoadOptions {
        esm_token_dropout: req.esm_token_dropout,
        model: req.model_options(),
    };
    let dna_options = LoadOptions {
        model: req.dna_model_options(),
        ..options.clone()
    };
    let load_one = |device: &Device| -> anyhow::Result<Models> {
        let (dnabert, esm, classifier) = match (&setup.dnabert, &setup.esm) {
            (Some(d), Some(e)) => {
                // The two models load side by side: each mostly waits on its file.
                let (dnabert, esm) = std::thread::scope(|s| {
                    let dnabert = s.spawn(|| {
                        load_from_files(d.clone(), device, req.dtype, &dna_options).with_context(
                            || format!("cannot load the nucleotide model `{}`", req.dnabert),
                        )
                    });
                    let esm = load_from_files(e.clone(), device, req.dtype, &options)
                        .with_context(|| format!("cannot load the protein model `{}`", req.esm));
                    let dnabert = dnabert
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("loading DNABERT-S panicked")));
                    (dnabert, esm)
                });
                let (dnabert, esm) = (dnabert?, esm?);
                let classifier = Classifier::load(&req.classifier, device).with_context(|| {
                    format!("cannot load the classifier {}", req.classifier.display())
                })?;
                (dnabert, esm, classifier)
            }
            _ => {
                let protein = req.random_weights.expect("random weights");
                let dnabert = random_embedding_model(
                    RandomModel::DnaBertS,
                    Some(&req.dnabert),
                    device,
                    req.dtype,
                    &dna_options,
                )?;
                let esm = random_embedding_model(protein, None, device, req.dtype, &options)?;
                let classifier = random_classifier(dnabert.hidden_size + esm.hidden_size, device)?;
                (dnabert, esm, classifier)
            }
        };
        tracing::info!(
            "models: {} ({}, {}) + {} ({}, {}) -> classifier {} ({} inputs) on {}",
            req.dnabert,
            dnabert.hidden_size,
            precision_label(dnabert.dtype, dnabert.options.kernels.cpu_matmul),
            req.esm,
            esm.hidden_size,
            precision_label(esm.dtype, esm.options.kernels.cpu_matmul),
            if req.random_weights.is_some() {
                "random".to_string()
            } else {
                req.classifier.display().to_string()
            },
            classifier.input_dim(),
            device_name(device)
        );
        // The weights' f32 staging copies leave holes in the device's memory pool.
        virnucpro_kernels::trim_pool(device)?;
        Ok(Models {
            dnabert,
            esm,
            classifier,
            device: device.clone(),
        })
    };
    if setup.devices.len() == 1 {
        return Ok(vec![load_one(&setup.devices[0])?]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = setup
            .devices
            .iter()
            .map(|d| s.spawn(|| load_one(d)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("model loading panicked")))
            })
            .collect()
    })
}

/// A classifier of the published shape (hidden 512) with seeded random weights.
fn random_classifier(input: usize, device: &Device) -> anyhow::Result<Classifier> {
    let hidden = 512;
    let mut rng = virnucpro_models::rng::Rng::new(7, 0);
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

/// Runs the whole pipeline; outputs appear in `out_dir` only when everything succeeded. An
/// interrupted run leaves its journal there: the same request again resumes it.
pub fn run(req: &PredictRequest) -> anyhow::Result<PredictReport> {
    let started = Instant::now();
    let mut setup = set_up(req)?;

    // A shard reads the whole input first: the shares are cut from every unit's size.
    let shard = match req.shard {
        Some(spec) => {
            let t = Instant::now();
            let plan = UnitPlan::read(RecordReader::new(&req.inputs)?, setup.rule)?;
            if plan.records == 0 {
                bail!(
                    "no sequence records in {}: nothing to predict",
                    inputs_list(&req.inputs)
                );
            }
            let shard = ShardPlan {
                assignment: plan.shards(spec.count),
                spec,
                plan,
            };
            tracing::info!(
                "shard {spec}: {} of {} work units ({} records, {} bases in all; input read in \
                 {:.1} s)",
                shard.units().len(),
                shard.plan.units.len(),
                shard.plan.records,
                shard.plan.bases,
                t.elapsed().as_secs_f64()
            );
            setup.fingerprint.set(
                "input content",
                format!(
                    "{} work units, xxh3:{:016x}",
                    shard.plan.units.len(),
                    shard.plan.hash()
                ),
            );
            Some(shard)
        }
        None => None,
    };

    virnucpro_atomic::create_output_dir(&req.out_dir).with_context(|| {
        format!(
            "cannot create the output directory {}",
            req.out_dir.display()
        )
    })?;
    if req.no_journal && req.shard.is_some() {
        bail!("a shard needs its journal: --no-journal and --shard cannot go together");
    }
    let (mut journal, opened) = if req.no_journal {
        (Journal::disabled(&req.out_dir), Default::default())
    } else {
        Journal::open(&req.out_dir, &setup.fingerprint, req.restart)?
    };
    // The directory is ours now (the journal is locked): what a killed run left half-written
    // goes.
    virnucpro_atomic::remove_stale_temps(&req.out_dir, &crate::output::units::OUTPUT_FILES);
    if opened.discarded {
        tracing::warn!(
            "--restart: discarded the journal of an earlier run in {}",
            req.out_dir.display()
        );
    }
    if let Some(at) = opened.torn_at {
        tracing::warn!(
            "the journal {} ended in an incomplete entry (byte {at}), as after a crash or power \
             cut: that unit is computed again",
            journal.path().display()
        );
    }
    if opened.units > 0 {
        // A finished shard's record became the journal: name the file that was there.
        let from = if opened.from_shard_file {
            req.out_dir.join(crate::output::journal::SHARD_FILE)
        } else {
            journal.path().to_owned()
        };
        tracing::info!(
            "resuming: {} work units finished by an earlier run are reused from {}",
            opened.units,
            from.display()
        );
    }

    let (mut report, out) = match execute(req, &setup, shard.as_ref(), &mut journal, started) {
        Ok(done) => done,
        Err(e) => {
            // Finished units stay for a rerun; a journal without any is not left behind.
            if journal.is_empty() {
                let _ = journal.remove();
            }
            return Err(e);
        }
    };
    out.commit()?;
    let cost = journal.cost();
    tracing::debug!(
        "journal: {} entries, {:.1} MB written in {:.3} s ({:.2}% of the run)",
        cost.entries,
        cost.bytes as f64 / 1e6,
        cost.seconds,
        100.0 * cost.seconds / started.elapsed().as_secs_f64().max(1e-9)
    );
    match shard {
        Some(shard) => {
            let seal = ShardSeal {
                shard: shard.spec,
                units: shard.units(),
                plan: shard.plan.units,
            };
            journal.seal(&seal, &setup.fingerprint)?;
        }
        None => journal.remove()?,
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A shard's share of the work units (`--shard I/N`).
struct ShardPlan {
    spec: ShardSpec,
    /// Every unit of the whole input.
    plan: UnitPlan,
    /// The 0-based shard of every unit.
    assignment: Vec<u32>,
}

impl ShardPlan {
    fn is_mine(&self, unit: usize) -> bool {
        self.assignment[unit] + 1 == self.spec.index
    }

    /// The indices of this shard's units.
    fn units(&self) -> Vec<u64> {
        (0..self.plan.units.len())
            .filter(|&i| self.is_mine(i))
            .map(|i| i as u64)
            .collect()
    }

    /// Per unit of the input: its identity if it is this shard's.
    fn mine(&self) -> Vec<Option<UnitId>> {
        (0..self.plan.units.len())
            .map(|i| self.is_mine(i).then_some(self.plan.units[i]))
            .collect()
    }
}

/// Loads the models and runs every unit through the devices into the output files (not yet
/// committed).
fn execute(
    req: &PredictRequest,
    setup: &Setup,
    shard: Option<&ShardPlan>,
    journal: &mut Journal,
    started: Instant,
) -> anyhow::Result<(PredictReport, Assembler)> {
    let models = load_models(req, setup)?;
    let load_seconds = started.elapsed().as_secs_f64();

    // The back-off an interrupted run had reached, so that units come out as they would have.
    let budget = Arc::new(Budget {
        requested: req.batch_tokens,
        halvings: AtomicU32::new(u32::try_from(journal.most_halvings()).unwrap_or(u32::MAX)),
        announced: AtomicU32::new(0),
    });
    let output = req.output_options();
    let on_gpu = !setup.devices[0].is_cpu();
    let ahead_per_device = if on_gpu {
        usize::try_from(AHEAD_BASES_PER_GPU / setup.rule.max_bases)
            .unwrap_or(MAX_AHEAD_PER_DEVICE)
            .clamp(AHEAD_PER_DEVICE, MAX_AHEAD_PER_DEVICE)
    } else {
        AHEAD_PER_DEVICE
    };
    // At most half of a device's share in one group, so that the next group's units are
    // queued (and tokenized) while this one runs.
    let max_group = if on_gpu || req.test_hooks.group_units {
        (ahead_per_device / 2).max(2)
    } else {
        1
    };
    let workers: Vec<DeviceWorker> = models
        .into_iter()
        .enumerate()
        .map(|(i, models)| DeviceWorker {
            max_group,
            models,
            budget: budget.clone(),
            output,
            fail_at: injected_failure(&req.test_hooks, i),
            pool: req.pool,
        })
        .collect();
    let n_devices = workers.len();

    // Reader + translation: units in input order, finished ones marked as such.
    let reader = RecordReader::new(&req.inputs)?;
    let bytes_read = reader.bytes_read();
    let total_bytes = total_input_bytes(&req.inputs)?;
    let journal_units: std::collections::HashMap<u64, UnitId> = journal_ids(journal);
    let mine = shard.map(ShardPlan::mine);
    let chunk_len = req.chunk_len;
    let rule = setup.rule;
    let ahead = ahead_per_device * n_devices;
    let (items_tx, items) = bounded(AHEAD_PER_DEVICE * n_devices);
    let empty_skipped = Arc::new(AtomicU64::new(0));
    let empty_seen = empty_skipped.clone();
    let inputs_for_errors = inputs_list(&req.inputs);
    let producer = std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let mut units = UnitReader::new(reader, rule);
            for unit in units.by_ref() {
                let item = unit.map_err(anyhow::Error::from).and_then(|unit| {
                    classify_unit(
                        unit,
                        mine.as_deref(),
                        &journal_units,
                        chunk_len,
                        &inputs_for_errors,
                    )
                });
                let stop = item.is_err();
                match item {
                    Ok(None) => continue,
                    Ok(Some(item)) => {
                        if items_tx.send(Ok(item)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = items_tx.send(Err(e));
                    }
                }
                if stop {
                    return;
                }
            }
            empty_seen.store(units.empty_skipped(), Ordering::Relaxed);
        })
        .context("cannot start the reader thread")?;

    let progress = Progress::new(req.progress, total_bytes, bytes_read, started);
    let mut writer = RunWriter {
        journal,
        out: Assembler::create(&req.out_dir, &output)?,
        report: PredictReport::default(),
        progress,
        hooks: &req.test_hooks,
    };
    let schedule = scheduler::run(items, workers, ahead, &mut writer);
    let producer_ok = producer.join().is_ok();
    let scheduled = schedule?;
    if !producer_ok {
        bail!("the input reader thread failed");
    }
    let RunWriter {
        out,
        mut report,
        progress,
        ..
    } = writer;
    progress.finish();
    report.failed_devices = scheduled.failed_workers;
    report.counts.empty_skipped = empty_skipped.load(Ordering::Relaxed);
    if shard.is_none() && report.counts.records == 0 {
        bail!(
            "no sequence records in {}: nothing to predict",
            inputs_list(&req.inputs)
        );
    }
    report.load_seconds = load_seconds;
    Ok((report, out))
}

fn journal_ids(journal: &Journal) -> std::collections::HashMap<u64, UnitId> {
    journal.units().map(|e| (e.unit.index, e.unit)).collect()
}

/// What the reader does with a unit: skip it (another shard's), take it from the journal, or
/// translate it for a device. A unit the journal holds with other records means the input
/// changed since the journal was written: never mixed, an error.
fn classify_unit(
    unit: Unit,
    mine: Option<&[Option<UnitId>]>,
    journal: &std::collections::HashMap<u64, UnitId>,
    chunk_len: usize,
    inputs: &str,
) -> anyhow::Result<Option<Item<UnitJob, UnitResult>>> {
    let id = unit.id();
    if let Some(mine) = mine {
        match mine.get(id.index as usize) {
            Some(Some(planned)) if *planned == id => {}
            Some(None) => return Ok(None),
            _ => bail!(
                "{inputs} changed while this shard ran (work unit {} no longer holds the records \
                 it held when the input was first read); rerun when the input stays put",
                id.index
            ),
        }
    }
    if let Some(done) = journal.get(&id.index) {
        if *done != id {
            return Err(input_changed(inputs, done, &unit));
        }
        return Ok(Some(Item::Ready(UnitResult::InJournal(id.index))));
    }
    let frames = translate_batch(&unit.records, chunk_len);
    Ok(Some(Item::Compute(UnitJob {
        unit: id,
        records: unit.records,
        frames,
    })))
}

fn input_changed(inputs: &str, done: &UnitId, unit: &Unit) -> anyhow::Error {
    anyhow::anyhow!(
        "{inputs} changed since the interrupted run: its records {}..{} (from `{}`) differ from \
         those the journal holds, so its results cannot be reused; rerun with the original \
         input, or add --restart to start over",
        done.first_record + 1,
        done.first_record + done.records,
        unit.records.first().map_or("", |r| r.id.as_str())
    )
}

fn inputs_list(inputs: &[PathBuf]) -> String {
    inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The frames of a unit's records, in order.
fn frames_of(records: &[RecordFrames]) -> Vec<&Frame> {
    records
        .iter()
        .flat_map(|r| r.chunks.iter().flat_map(|c| c.frames.iter()))
        .collect()
}

/// The scheduler's handler: journal every finished unit at once, write units in order.
struct RunWriter<'a> {
    journal: &'a mut Journal,
    out: Assembler,
    report: PredictReport,
    progress: Progress,
    hooks: &'a TestHooks,
}

impl Handler<UnitResult> for RunWriter<'_> {
    fn computed(&mut self, _pos: u64, out: &UnitResult) -> anyhow::Result<()> {
        if let UnitResult::Computed(unit) = out {
            self.journal.append(unit)?;
            stall_if_asked(self.hooks, self.journal.cost().entries);
        }
        Ok(())
    }

    fn in_order(&mut self, _pos: u64, out: UnitResult) -> anyhow::Result<()> {
        let unit = match out {
            UnitResult::Computed(unit) => *unit,
            UnitResult::InJournal(index) => {
                let unit = self.journal.read(index)?;
                self.report.reused_units += 1;
                self.report.reused_frames += unit.counts.frames;
                unit
            }
        };
        self.out.push(&unit)?;
        self.report.units += 1;
        self.report.counts.add(&unit.counts);
        self.progress.update(&self.report);
        Ok(())
    }
}

/// Progress: a bar on a terminal (share of the input read, frames/s, ETA, reused units), a log
/// line every minute otherwise.
struct Progress {
    bar: ProgressBar,
    log: bool,
    last_log: Instant,
    started: Instant,
    total_bytes: Option<u64>,
    bytes_read: Arc<AtomicU64>,
}

impl Progress {
    fn new(
        show: bool,
        total_bytes: Option<u64>,
        bytes_read: Arc<AtomicU64>,
        started: Instant,
    ) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if show && terminal {
            let bar = match total_bytes {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% ETA {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            log: show && !terminal,
            last_log: Instant::now(),
            started,
            total_bytes,
            bytes_read,
        }
    }

    fn update(&mut self, r: &PredictReport) {
        let read = self.bytes_read.load(Ordering::Relaxed);
        let rate = (r.counts.frames - r.reused_frames) as f64
            / self.started.elapsed().as_secs_f64().max(1e-9);
        let reused = if r.reused_units > 0 {
            format!(", {} units reused", r.reused_units)
        } else {
            String::new()
        };
        let msg = format!(
            "{} records, {} frames ({rate:.0} frames/s{reused})",
            r.counts.records, r.counts.frames
        );
        if self.total_bytes.is_some() {
            self.bar.set_position(read);
        }
        self.bar.set_message(msg.clone());
        if self.log && self.last_log.elapsed() >= LOG_PROGRESS_EVERY {
            self.last_log = Instant::now();
            match self.total_bytes.filter(|&t| t > 0) {
                Some(total) => {
                    let done = read as f64 / total as f64;
                    let eta = self.started.elapsed().as_secs_f64() * (1.0 - done) / done.max(1e-9);
                    tracing::info!(
                        "progress: {:.1}% of the input, {msg}, about {:.0} min left",
                        100.0 * done,
                        eta / 60.0
                    );
                }
                None => tracing::info!("progress: {msg}"),
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request's sub-batch budget and test hooks reach the models (the sub-batch budget
    /// once stopped at the command line, so `VIRNUCPRO_SUB_BATCH_MIB` changed nothing).
    #[test]
    fn models_are_built_with_the_requests_options() {
        let mut req = PredictRequest::new(
            vec![],
            60,
            "clf.pth".into(),
            "dnabert".into(),
            "esm".into(),
            "out".into(),
        );
        assert_eq!(req.model_options().sub_batch_bytes, None);
        req.sub_batch_bytes = Some(512 << 20);
        req.test_hooks.oom_above_tokens = Some(100);
        let options = req.model_options();
        assert_eq!(options.sub_batch_bytes, Some(512 << 20));
        assert_eq!(options.inject_oom_above_rows, Some(100));
        assert!(options.kernels.batch_invariant);
        assert_eq!(req.dna_model_options().sub_batch_bytes, Some(512 << 20));
        // DNABERT-S's own budget replaces the shared one for it alone; 0 means whole batches.
        req.pool.dna_sub_batch_bytes = Some(256 << 20);
        assert_eq!(req.dna_model_options().sub_batch_bytes, Some(256 << 20));
        assert_eq!(req.model_options().sub_batch_bytes, Some(512 << 20));
        req.pool.dna_sub_batch_bytes = Some(0);
        assert_eq!(req.dna_model_options().sub_batch_bytes, None);
        assert_eq!(req.dna_model_options().inject_oom_above_rows, Some(100));
    }
}
