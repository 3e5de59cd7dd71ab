//! The `frames` command: FASTA/FASTQ in, the kept frames out (`identified_nucleotide.fa`,
//! `identified_protein.faa`), streaming.
//!
//! ```text
//! reader thread ──batches of records──▶ rayon: chunk + translate + format ──▶ writer (in order)
//! ```
//! A reader thread parses and decompresses into batches of about [`BATCH_BASES`] bases, a bounded
//! channel keeps at most a few batches in memory. Each batch is cut into work units of a few
//! chunks (so a single huge record is spread over the cores too), translated and formatted in
//! parallel, and written in input order. The outputs are [`AtomicFile`]s committed at the end,
//! so a failed or interrupted run leaves nothing that looks complete.
//!
//! [`RecordBatches`] and [`translate_batch`] are the reusable parts: `predict` reads the same
//! batches and gets [`RecordFrames`] to embed.
//!
//! [`AtomicFile`]: virnucpro_atomic::AtomicFile

use std::fmt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context};
use crossbeam_channel::{bounded, Receiver};
use rayon::prelude::*;

use crate::input::fasta::{InputError, RecordReader};
use crate::input::translate::{for_each_kept_frame, FrameScratch};
use crate::input::{chunk, Chunk, RecordFrames, SeqRecord};
use crate::output::fasta::{push_record, FrameFastaWriter};

/// Bases per batch of records handed from the reader thread to the workers.
pub const BATCH_BASES: usize = 4 << 20;
/// Bases per unit of parallel work (a run of chunks of one record).
const UNIT_BASES: usize = 256 << 10;
/// Batches read ahead of the workers.
const READ_AHEAD: usize = 2;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct FramesOptions {
    /// Chunk length `L` (> 0).
    pub chunk_len: usize,
    /// Accept records with the same ID instead of failing.
    pub allow_duplicate_ids: bool,
    /// Worker threads; 0 = one per core.
    pub threads: usize,
}

/// What a `frames` run did: printed as the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FramesSummary {
    /// Records read (empty ones not included).
    pub records: u64,
    pub bases: u64,
    pub empty_records_skipped: u64,
    pub chunks: u64,
    pub frames_kept: u64,
    /// Records none of whose chunks has a kept frame: they would get no prediction.
    pub records_without_frames: u64,
    /// The first few of them, to name in a warning.
    pub without_frames_examples: Vec<String>,
}

impl fmt::Display for FramesSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), {}, {} kept, {} with no kept frame",
            plural(self.records, "record"),
            plural(self.bases, "base"),
            plural(self.chunks, "chunk"),
            plural(self.frames_kept, "frame"),
            plural(self.records_without_frames, "record"),
        )?;
        if self.empty_records_skipped > 0 {
            write!(
                f,
                ", {} skipped",
                plural(self.empty_records_skipped, "empty record")
            )?;
        }
        Ok(())
    }
}

/// Reads `inputs`, writes the kept frames to `out_dir/identified_nucleotide.fa` and
/// `out_dir/identified_protein.faa` (creating `out_dir` if needed) and returns the summary.
/// On error no output file is left behind.
pub fn run(
    inputs: &[PathBuf],
    out_dir: &Path,
    options: &FramesOptions,
) -> anyhow::Result<FramesSummary> {
    anyhow::ensure!(
        options.chunk_len > 0,
        "the chunk length must be greater than 0"
    );
    let reader = RecordReader::new(inputs)?.allow_duplicate_ids(options.allow_duplicate_ids);
    virnucpro_atomic::create_output_dir(out_dir)
        .with_context(|| format!("cannot create output directory {}", out_dir.display()))?;
    let writer = FrameFastaWriter::create(out_dir)?;
    let pool = thread_pool(options.threads)?;
    let batches = RecordBatches::spawn(reader, BATCH_BASES);

    // A writer thread, so that formatting batch i+1 overlaps with writing batch i.
    let (to_writer, formatted) = bounded::<Vec<FormattedUnit>>(1);
    let writer_thread = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || -> std::io::Result<FrameFastaWriter> {
            let mut writer = writer;
            for units in formatted {
                for unit in units {
                    writer.write_formatted(&unit.nucleotide, &unit.protein)?;
                }
            }
            Ok(writer)
        })
        .context("cannot start the writer thread")?;

    let translated = translate_into(batches, &pool, options.chunk_len, &to_writer);
    drop(to_writer);
    // The writer ends once its channel is closed; on any error it is dropped, which removes
    // the temporary files.
    let written = writer_thread
        .join()
        .map_err(|_| anyhow!("the writer thread panicked"))?;
    let summary = translated?;
    let writer = written?;
    writer.commit().context("cannot save the frame files")?;
    Ok(summary)
}

/// Translates and formats every batch and hands it to the writer; returns the summary.
fn translate_into(
    mut batches: RecordBatches,
    pool: &rayon::ThreadPool,
    chunk_len: usize,
    to_writer: &crossbeam_channel::Sender<Vec<FormattedUnit>>,
) -> anyhow::Result<FramesSummary> {
    let mut summary = FramesSummary::default();
    for batch in &mut batches {
        let batch = batch?;
        let formatted = pool.install(|| format_batch(&batch, chunk_len));
        let mut frames_per_record = vec![0u64; batch.len()];
        for unit in &formatted {
            frames_per_record[unit.record] += unit.frames;
            summary.chunks += unit.chunks;
            summary.frames_kept += unit.frames;
        }
        for (record, frames) in batch.iter().zip(frames_per_record) {
            summary.records += 1;
            summary.bases += record.seq.len() as u64;
            if frames == 0 {
                summary.records_without_frames += 1;
                if summary.without_frames_examples.len() < 5 {
                    summary.without_frames_examples.push(record.id.clone());
                }
            }
        }
        if to_writer.send(formatted).is_err() {
            // The writer stopped on an error; it is reported from its result.
            return Ok(summary);
        }
    }
    summary.empty_records_skipped = batches.empty_skipped();
    Ok(summary)
}

/// `1 record`, `2 records`.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn thread_pool(threads: usize) -> anyhow::Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("frames-{i}"))
        .build()
        .map_err(|e| anyhow!("cannot start {threads} worker threads: {e}"))
}

/// A run of chunks `first..first+count` of record `record` of a batch.
#[derive(Debug, Clone, Copy)]
struct Unit {
    record: usize,
    first: usize,
    count: usize,
}

fn work_units(batch: &[SeqRecord], chunk_len: usize) -> Vec<Unit> {
    let per_unit = (UNIT_BASES / chunk_len).max(1);
    let mut units = Vec::new();
    for (record, r) in batch.iter().enumerate() {
        let total = chunk::chunk_count(r.seq.len(), chunk_len);
        let mut first = 0;
        while first < total {
            let count = per_unit.min(total - first);
            units.push(Unit {
                record,
                first,
                count,
            });
            first += count;
        }
    }
    units
}

/// The FASTA text of one unit's kept frames.
struct FormattedUnit {
    record: usize,
    chunks: u64,
    frames: u64,
    nucleotide: Vec<u8>,
    protein: Vec<u8>,
}

/// Per-thread state of [`format_batch`]: translation buffers and the output bytes per chunk of
/// the last unit.
#[derive(Default)]
struct FormatState {
    scratch: FrameScratch,
    hint: (usize, usize),
}

fn format_batch(batch: &[SeqRecord], chunk_len: usize) -> Vec<FormattedUnit> {
    work_units(batch, chunk_len)
        .into_par_iter()
        .map_init(FormatState::default, |state, unit| {
            let FormatState { scratch, hint } = state;
            let record = &batch[unit.record];
            // Sized from the previous unit of this thread: output grows without reallocating.
            let mut out = FormattedUnit {
                record: unit.record,
                chunks: unit.count as u64,
                frames: 0,
                nucleotide: Vec::with_capacity(hint.0 * unit.count * 9 / 8),
                protein: Vec::with_capacity(hint.1 * unit.count * 9 / 8),
            };
            let mut chunk_id = Vec::new();
            let spans = chunk::chunk_spans(record.seq.len(), chunk_len)
                .enumerate()
                .skip(unit.first)
                .take(unit.count);
            for (j, (start, end)) in spans {
                chunk_id.clear();
                chunk::push_chunk_id(&mut chunk_id, &record.id, j);
                let kept =
                    for_each_kept_frame(&record.seq[start..end], scratch, |tag, dna, protein| {
                        let suffix = tag.suffix();
                        push_record(&mut out.nucleotide, &[&chunk_id, &suffix], dna);
                        push_record(&mut out.protein, &[&chunk_id, &suffix], protein);
                    });
                out.frames += kept as u64;
            }
            *hint = (
                out.nucleotide.len() / unit.count,
                out.protein.len() / unit.count,
            );
            out
        })
        .collect()
}

/// Chunks and frames of every record of a batch, in order, computed on the current rayon pool
/// (chunks of long records are spread over the threads). Same result as calling
/// [`crate::input::record_frames`] on each record.
pub fn translate_batch(batch: &[SeqRecord], chunk_len: usize) -> Vec<RecordFrames> {
    assert!(chunk_len > 0, "chunk length must be > 0");
    let units = work_units(batch, chunk_len);
    let chunked: Vec<(usize, Vec<Chunk>)> = units
        .into_par_iter()
        .map_init(FrameScratch::new, |scratch, unit| {
            let record = &batch[unit.record];
            let chunks = chunk::chunk_spans(record.seq.len(), chunk_len)
                .enumerate()
                .skip(unit.first)
                .take(unit.count)
                .map(|(j, span)| crate::input::chunk_frames(record, j, span, scratch))
                .collect();
            (unit.record, chunks)
        })
        .collect();
    let mut records: Vec<RecordFrames> = batch
        .iter()
        .map(|r| RecordFrames {
            id: r.id.clone(),
            len: r.seq.len(),
            chunks: Vec::new(),
        })
        .collect();
    for (record, chunks) in chunked {
        records[record].chunks.extend(chunks);
    }
    records
}

enum Message {
    Batch(Vec<SeqRecord>),
    Failed(InputError),
    Done { empty_skipped: u64 },
}

/// Batches of records read ahead by a background thread: an iterator of
/// `anyhow::Result<Vec<SeqRecord>>` in input order, each batch about `batch_bases` bases (a
/// longer record makes a batch of its own). Memory stays bounded: the thread reads at most a
/// couple of batches ahead. Stops after the first error. Dropping it stops the thread at its
/// next batch.
pub struct RecordBatches {
    receiver: Receiver<Message>,
    thread: Option<JoinHandle<()>>,
    empty_skipped: u64,
    finished: bool,
}

impl RecordBatches {
    pub fn spawn(reader: RecordReader, batch_bases: usize) -> RecordBatches {
        let (sender, receiver) = bounded(READ_AHEAD);
        let thread = std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                let mut reader = reader;
                let mut batch = Vec::new();
                let mut bases = 0usize;
                for record in reader.by_ref() {
                    match record {
                        Ok(record) => {
                            // A small fixed cost per record keeps batches of tiny reads bounded.
                            bases += record.seq.len() + 64;
                            batch.push(record);
                            if bases >= batch_bases {
                                bases = 0;
                                if sender
                                    .send(Message::Batch(std::mem::take(&mut batch)))
                                    .is_err()
                                {
                                    return; // the consumer is gone
                                }
                            }
                        }
                        Err(e) => {
                            let _ = sender.send(Message::Batch(std::mem::take(&mut batch)));
                            let _ = sender.send(Message::Failed(e));
                            return;
                        }
                    }
                }
                if !batch.is_empty() && sender.send(Message::Batch(batch)).is_err() {
                    return;
                }
                let _ = sender.send(Message::Done {
                    empty_skipped: reader.empty_skipped(),
                });
            })
            .expect("cannot spawn the reader thread");
        RecordBatches {
            receiver,
            thread: Some(thread),
            empty_skipped: 0,
            finished: false,
        }
    }

    /// Empty records skipped; final once the iterator has returned `None`.
    pub fn empty_skipped(&self) -> u64 {
        self.empty_skipped
    }
}

impl Iterator for RecordBatches {
    type Item = anyhow::Result<Vec<SeqRecord>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            match self.receiver.recv() {
                Ok(Message::Batch(batch)) if batch.is_empty() => continue,
                Ok(Message::Batch(batch)) => return Some(Ok(batch)),
                Ok(Message::Failed(e)) => {
                    self.finished = true;
                    return Some(Err(e.into()));
                }
                Ok(Message::Done { empty_skipped }) => {
                    self.finished = true;
                    self.empty_skipped = empty_skipped;
                    return None;
                }
                Err(_) => {
                    // The thread ended without Done: it panicked. Never pass this off as the end
                    // of the input.
                    self.finished = true;
                    let panic = self.thread.take().map(JoinHandle::join);
                    let why = match panic {
                        Some(Err(payload)) => payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into()),
                        _ => "it stopped unexpectedly".into(),
                    };
                    return Some(Err(anyhow!("the input reader thread failed: {why}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::record_frames;

    fn random_records(n: usize, seed: u64) -> Vec<SeqRecord> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n)
            .map(|i| {
                let len = (next() % 700) as usize;
                let seq: Vec<u8> = (0..len)
                    .map(|_| b"ACGTacgtNR"[(next() % 10) as usize])
                    .collect();
                SeqRecord::new(format!("r{i}"), seq)
            })
            .collect()
    }

    #[test]
    fn batch_translation_matches_per_record() {
        let records = random_records(50, 7);
        for chunk_len in [1, 7, 60, 300, 100_000] {
            let expected: Vec<RecordFrames> = records
                .iter()
                .map(|r| record_frames(r, chunk_len))
                .collect();
            assert_eq!(
                translate_batch(&records, chunk_len),
                expected,
                "L={chunk_len}"
            );

            let mut formatted = Vec::new();
            for unit in format_batch(&records, chunk_len) {
                formatted.extend(unit.nucleotide);
            }
            let mut direct = Vec::new();
            for frame in expected
                .iter()
                .flat_map(|r| &r.chunks)
                .flat_map(|c| &c.frames)
            {
                push_record(&mut direct, &[frame.id.as_bytes()], &frame.dna);
            }
            assert_eq!(formatted, direct, "L={chunk_len}");
        }
    }

    #[test]
    fn units_split_long_records() {
        let records = vec![SeqRecord::new("big", vec![b'A'; 3 * UNIT_BASES + 5])];
        let units = work_units(&records, 100);
        assert!(units.len() > 3);
        let total: usize = units.iter().map(|u| u.count).sum();
        assert_eq!(total, chunk::chunk_count(3 * UNIT_BASES + 5, 100));
    }
}
