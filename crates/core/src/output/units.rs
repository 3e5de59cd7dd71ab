//! The output of one work unit, already formatted, and the assembly of the final files from the
//! units in input order.
//!
//! Every output byte of `predict` is a pure function of the units' results in unit order: a unit
//! is scored into a [`UnitOutput`] (the exact rows it contributes to each file), which a journal
//! can store and read back unchanged; [`Assembler`] then writes the files from the units in order.
//! An uninterrupted run, a resumed one, several devices and `merge` of shards all go through
//! these two steps, so they give the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use virnucpro_atomic::{commit_all, create_output_dir, AtomicFile};

use super::fasta::{push_record, NUCLEOTIDE_FILE, PROTEIN_FILE};
use super::fingerprint::Fingerprint;
use super::predictions::{
    FrameScore, HighestScores, RecordSummary, ResultsWriter, SummaryWriter, HIGHEST_SCORE_FILE,
    RESULTS_FILE, SUMMARY_FILE,
};
use crate::input::units::UnitId;
use crate::input::{RecordFrames, SeqRecord};

/// `--write-viral-fasta`: the input records called `virus`.
pub const VIRAL_FASTA_FILE: &str = "viral_records.fa";

/// Every file a run may write.
pub const OUTPUT_FILES: [&str; 6] = [
    RESULTS_FILE,
    SUMMARY_FILE,
    HIGHEST_SCORE_FILE,
    NUCLEOTIDE_FILE,
    PROTEIN_FILE,
    VIRAL_FASTA_FILE,
];

/// Which optional files a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OutputOptions {
    pub keep_frames: bool,
    pub viral_fasta: bool,
    pub min_viral_fraction: f64,
}

impl OutputOptions {
    const KEEP_FRAMES: &str = "frame FASTA files (--keep-frames)";
    const VIRAL_FASTA: &str = "viral FASTA (--write-viral-fasta)";
    const MIN_VIRAL_FRACTION: &str = "--min-viral-fraction";

    /// Records the options in a run's fingerprint (they change which files exist and the calls).
    pub fn add_to(&self, fp: &mut Fingerprint) {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        fp.set(Self::KEEP_FRAMES, yes_no(self.keep_frames))
            .set(Self::VIRAL_FASTA, yes_no(self.viral_fasta))
            .set(Self::MIN_VIRAL_FRACTION, self.min_viral_fraction);
    }

    /// The options a fingerprint recorded (for `merge`).
    pub fn from_fingerprint(fp: &Fingerprint) -> anyhow::Result<OutputOptions> {
        let flag = |key: &str| match fp.get(key) {
            Some("yes") => Ok(true),
            Some("no") => Ok(false),
            other => bail!("the shard record has no valid `{key}` ({other:?})"),
        };
        let fraction = fp
            .get(Self::MIN_VIRAL_FRACTION)
            .and_then(|v| v.parse::<f64>().ok())
            .context("the shard record has no valid --min-viral-fraction")?;
        Ok(OutputOptions {
            keep_frames: flag(Self::KEEP_FRAMES)?,
            viral_fasta: flag(Self::VIRAL_FASTA)?,
            min_viral_fraction: fraction,
        })
    }
}

/// Counters of a unit (and, summed, of a run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnitCounts {
    pub records: u64,
    pub chunks: u64,
    pub frames: u64,
    pub records_without_frames: u64,
    pub virus_records: u64,
    pub empty_skipped: u64,
}

impl UnitCounts {
    pub fn add(&mut self, o: &UnitCounts) {
        self.records += o.records;
        self.chunks += o.chunks;
        self.frames += o.frames;
        self.records_without_frames += o.records_without_frames;
        self.virus_records += o.virus_records;
        self.empty_skipped += o.empty_skipped;
    }
}

/// What one unit contributes to each output file, formatted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitOutput {
    pub unit: UnitId,
    /// How many times the batch budget had been halved after out-of-memory failures when the
    /// unit was computed; a rerun that resumes starts from the journal's largest, as the
    /// interrupted run would have continued with it.
    pub halvings: u64,
    pub counts: UnitCounts,
    /// Rows of `prediction_results.txt`.
    pub results: Vec<u8>,
    /// Rows of `prediction_summary.tsv`.
    pub summary: Vec<u8>,
    /// Rows of `prediction_results_highestscore.csv`, in unit order (sorted when the file is
    /// written).
    pub highest: Vec<u8>,
    /// `identified_nucleotide.fa` / `identified_protein.faa` records (`--keep-frames`).
    pub nucleotide: Vec<u8>,
    pub protein: Vec<u8>,
    /// `viral_records.fa` records (`--write-viral-fasta`).
    pub viral: Vec<u8>,
}

impl UnitOutput {
    /// Formats a scored unit: `records` are the unit's input records, `frames` their chunks and
    /// kept frames, `scores` the `[score1, score2]` of every kept frame in order.
    pub fn format(
        unit: UnitId,
        records: &[SeqRecord],
        frames: &[RecordFrames],
        scores: &[[f32; 2]],
        options: &OutputOptions,
    ) -> anyhow::Result<UnitOutput> {
        let total: usize = frames.iter().map(RecordFrames::frame_count).sum();
        if total != scores.len() || records.len() != frames.len() {
            bail!(
                "{} scores for {total} frames of {} records in a work unit",
                scores.len(),
                frames.len()
            );
        }
        let mut out = UnitOutput {
            unit,
            counts: UnitCounts {
                records: records.len() as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut results = ResultsWriter::rows(std::mem::take(&mut out.results));
        let mut summary =
            SummaryWriter::rows(std::mem::take(&mut out.summary), options.min_viral_fraction);
        let mut rest = scores;
        for (record, rf) in records.iter().zip(frames) {
            let n = rf.frame_count();
            let (mine, tail) = rest.split_at(n);
            rest = tail;
            let scored: Vec<FrameScore> = rf
                .chunks
                .iter()
                .flat_map(|c| c.frames.iter())
                .zip(mine)
                .map(|(f, p)| FrameScore {
                    id: f.id.clone(),
                    score1: p[0],
                    score2: p[1],
                })
                .collect();
            let mut highest = HighestScores::default();
            for s in &scored {
                results.write(s)?;
                highest.add(s);
            }
            highest.write_rows(&mut out.highest)?;
            if options.keep_frames {
                for frame in rf.chunks.iter().flat_map(|c| c.frames.iter()) {
                    push_record(&mut out.nucleotide, &[frame.id.as_bytes()], &frame.dna);
                    push_record(&mut out.protein, &[frame.id.as_bytes()], &frame.protein);
                }
            }
            let s = RecordSummary::from_scores(&rf.id, rf.len, rf.chunks.len(), &scored);
            summary.write(&s)?;
            out.counts.chunks += rf.chunks.len() as u64;
            out.counts.frames += n as u64;
            if n == 0 {
                out.counts.records_without_frames += 1;
            }
            if s.call(options.min_viral_fraction) == "virus" {
                out.counts.virus_records += 1;
                if options.viral_fasta {
                    push_record(&mut out.viral, &[&record.header], &record.seq);
                }
            }
        }
        out.results = results.into_inner();
        out.summary = summary.into_inner();
        Ok(out)
    }

    /// Serialized for the journal (see [`UnitOutput::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        let u = &self.unit;
        for v in [u.index, u.first_record, u.records, u.bases, u.hash] {
            e.u64(v);
        }
        e.u64(self.halvings);
        let c = &self.counts;
        for v in [
            c.records,
            c.chunks,
            c.frames,
            c.records_without_frames,
            c.virus_records,
            c.empty_skipped,
        ] {
            e.u64(v);
        }
        for bytes in [
            &self.results,
            &self.summary,
            &self.highest,
            &self.nucleotide,
            &self.protein,
            &self.viral,
        ] {
            e.bytes(bytes);
        }
        e.0
    }

    pub fn decode(bytes: &[u8]) -> anyhow::Result<UnitOutput> {
        let mut d = Decoder(bytes);
        let mut u = || d.u64();
        let unit = UnitId {
            index: u()?,
            first_record: u()?,
            records: u()?,
            bases: u()?,
            hash: u()?,
        };
        let halvings = u()?;
        let counts = UnitCounts {
            records: u()?,
            chunks: u()?,
            frames: u()?,
            records_without_frames: u()?,
            virus_records: u()?,
            empty_skipped: u()?,
        };
        let out = UnitOutput {
            unit,
            halvings,
            counts,
            results: d.bytes()?,
            summary: d.bytes()?,
            highest: d.bytes()?,
            nucleotide: d.bytes()?,
            protein: d.bytes()?,
            viral: d.bytes()?,
        };
        if !d.0.is_empty() {
            bail!("{} bytes after the end of a unit entry", d.0.len());
        }
        Ok(out)
    }
}

#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct Decoder<'a>(&'a [u8]);

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        if self.0.len() < n {
            bail!("a unit entry ends early");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> anyhow::Result<Vec<u8>> {
        let n = usize::try_from(self.u64()?).context("a unit entry is corrupt")?;
        Ok(self.take(n)?.to_vec())
    }
}

/// Writes the output files of a run from its units, which must come in unit order; nothing
/// appears in the output directory until [`Assembler::commit`].
pub struct Assembler {
    dir: PathBuf,
    results: AtomicFile,
    summary: AtomicFile,
    highest: AtomicFile,
    /// Chunk rows of every unit, sorted at the end (the file is sorted by chunk ID).
    highest_rows: Vec<Vec<u8>>,
    frames: Option<(AtomicFile, AtomicFile)>,
    viral: Option<AtomicFile>,
    counts: UnitCounts,
    next_index: Option<u64>,
}

impl Assembler {
    /// Creates `dir` if needed and the temporary files of every output.
    pub fn create(dir: &Path, options: &OutputOptions) -> anyhow::Result<Assembler> {
        create_output_dir(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        let open = |name: &str| {
            let path = dir.join(name);
            AtomicFile::create(&path).with_context(|| format!("cannot write {}", path.display()))
        };
        let mut results = open(RESULTS_FILE)?;
        ResultsWriter::new(&mut results)?;
        let mut summary = open(SUMMARY_FILE)?;
        SummaryWriter::new(&mut summary, options.min_viral_fraction)?;
        Ok(Assembler {
            dir: dir.to_path_buf(),
            results,
            summary,
            highest: open(HIGHEST_SCORE_FILE)?,
            highest_rows: Vec::new(),
            frames: if options.keep_frames {
                Some((open(NUCLEOTIDE_FILE)?, open(PROTEIN_FILE)?))
            } else {
                None
            },
            viral: if options.viral_fasta {
                Some(open(VIRAL_FASTA_FILE)?)
            } else {
                None
            },
            counts: UnitCounts::default(),
            next_index: None,
        })
    }

    /// Appends a unit; units must come in increasing unit order (gaps allowed: a shard).
    pub fn push(&mut self, unit: &UnitOutput) -> anyhow::Result<()> {
        if let Some(next) = self.next_index {
            if unit.unit.index < next {
                bail!(
                    "work unit {} arrived after unit {}: output order would be wrong",
                    unit.unit.index,
                    next - 1
                );
            }
        }
        self.next_index = Some(unit.unit.index + 1);
        self.results.write_all(&unit.results)?;
        self.summary.write_all(&unit.summary)?;
        self.highest_rows.extend(
            unit.highest
                .split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec),
        );
        if let Some((nucleotide, protein)) = self.frames.as_mut() {
            nucleotide.write_all(&unit.nucleotide)?;
            protein.write_all(&unit.protein)?;
        }
        if let Some(viral) = self.viral.as_mut() {
            viral.write_all(&unit.viral)?;
        }
        self.counts.add(&unit.counts);
        Ok(())
    }

    /// Counters of the units pushed so far.
    pub fn counts(&self) -> &UnitCounts {
        &self.counts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the sorted per-chunk file and publishes every file at once.
    pub fn commit(mut self) -> anyhow::Result<()> {
        // Chunk IDs contain no whitespace, and `\t` sorts before every other byte they can hold,
        // so sorting whole rows sorts by ID as byte strings (the reference's order).
        self.highest_rows.sort_unstable();
        writeln!(self.highest, "Modified_ID\tIs_Virus")?;
        for row in &self.highest_rows {
            self.highest.write_all(row)?;
        }
        let mut files = vec![self.results, self.summary, self.highest];
        if let Some((n, p)) = self.frames {
            files.extend([n, p]);
        }
        files.extend(self.viral);
        commit_all(files).context("cannot finish writing the output files")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let out = UnitOutput {
            unit: UnitId {
                index: 3,
                first_record: 17,
                records: 2,
                bases: 999,
                hash: u64::MAX - 5,
            },
            halvings: 2,
            counts: UnitCounts {
                records: 2,
                chunks: 5,
                frames: 7,
                records_without_frames: 1,
                virus_records: 1,
                empty_skipped: 3,
            },
            results: b"a\tvirus\t0.1\t0.9\n".to_vec(),
            summary: b"s\n".to_vec(),
            highest: b"a_chunk_1\tTrue\n".to_vec(),
            nucleotide: Vec::new(),
            protein: b">x\nM\n".to_vec(),
            viral: b">a desc\nACGT\n".to_vec(),
        };
        let bytes = out.encode();
        assert_eq!(UnitOutput::decode(&bytes).unwrap(), out);
        assert!(UnitOutput::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(UnitOutput::decode(&longer).is_err());
    }
}
