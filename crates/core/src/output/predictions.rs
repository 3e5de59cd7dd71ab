//! The published prediction files (docs/PIPELINE.md §6) and the per-record summary.
//!
//! - `prediction_results.txt`: one row per scored frame, in input order;
//! - `prediction_results_highestscore.csv`: one row per chunk (tab-separated despite the name),
//!   sorted by chunk ID as byte strings;
//! - `prediction_summary.tsv`: one row per input record, records without a scorable frame included.

use std::collections::BTreeMap;
use std::io::{self, Write};

pub const RESULTS_FILE: &str = "prediction_results.txt";
pub const HIGHEST_SCORE_FILE: &str = "prediction_results_highestscore.csv";
pub const SUMMARY_FILE: &str = "prediction_summary.tsv";

/// The classifier's softmax for one kept frame: `score1` = "others", `score2` = "virus".
#[derive(Debug, Clone, PartialEq)]
pub struct FrameScore {
    pub id: String,
    pub score1: f32,
    pub score2: f32,
}

impl FrameScore {
    /// A tie is `others`, as in the reference (`virus` only when score2 > score1).
    pub fn is_virus(&self) -> bool {
        self.score2 > self.score1
    }

    pub fn label(&self) -> &'static str {
        if self.is_virus() {
            "virus"
        } else {
            "others"
        }
    }

    /// The chunk a frame belongs to: the frame ID minus its `F1`..`R3` suffix.
    pub fn chunk_id(&self) -> &str {
        chunk_id_of(&self.id)
    }
}

/// `<chunk id>F1` -> `<chunk id>`: the reference cuts the last two characters.
pub fn chunk_id_of(frame_id: &str) -> &str {
    let cut = frame_id
        .char_indices()
        .rev()
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    &frame_id[..cut]
}

/// Writes `prediction_results.txt` rows as frames are scored.
pub struct ResultsWriter<W: Write> {
    out: W,
}

impl<W: Write> ResultsWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        writeln!(out, "Sequence_ID\tPrediction\tscore1\tscore2")?;
        Ok(Self { out })
    }

    /// A writer of rows only (no header): a work unit's part of the file.
    pub fn rows(out: W) -> Self {
        Self { out }
    }

    pub fn write(&mut self, s: &FrameScore) -> io::Result<()> {
        writeln!(
            self.out,
            "{}\t{}\t{}\t{}",
            s.id,
            s.label(),
            s.score1,
            s.score2
        )
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Highest score1 and score2 over a chunk's frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkMax {
    pub max_score1: f32,
    pub max_score2: f32,
}

impl ChunkMax {
    /// The reference's rule: `True` when the highest score2 >= the highest score1.
    pub fn is_virus(&self) -> bool {
        self.max_score2 >= self.max_score1
    }
}

/// Collects the per-chunk maxima for `prediction_results_highestscore.csv`, which is sorted
/// by ID and so can only be written at the end (one small entry per chunk).
#[derive(Debug, Default)]
pub struct HighestScores {
    chunks: BTreeMap<String, ChunkMax>,
}

impl HighestScores {
    pub fn add(&mut self, s: &FrameScore) {
        let e = self
            .chunks
            .entry(s.chunk_id().to_string())
            .or_insert(ChunkMax {
                max_score1: f32::NEG_INFINITY,
                max_score2: f32::NEG_INFINITY,
            });
        e.max_score1 = e.max_score1.max(s.score1);
        e.max_score2 = e.max_score2.max(s.score2);
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Rows sorted by chunk ID as byte strings (`String`'s order), as the reference's sort.
    pub fn write<W: Write>(&self, mut out: W) -> io::Result<W> {
        writeln!(out, "Modified_ID\tIs_Virus")?;
        self.write_rows(&mut out)?;
        Ok(out)
    }

    /// The rows without the header.
    pub fn write_rows<W: Write>(&self, mut out: W) -> io::Result<()> {
        for (id, m) in &self.chunks {
            let call = if m.is_virus() { "True" } else { "False" };
            writeln!(out, "{id}\t{call}")?;
        }
        Ok(())
    }
}

/// The per-record call, aggregated from its chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSummary {
    pub id: String,
    pub length: usize,
    pub chunks: usize,
    /// Chunks with at least one kept (scored) frame.
    pub scored_chunks: usize,
    pub frames_scored: usize,
    /// Scored chunks called viral by the highest-score rule.
    pub viral_chunks: usize,
    /// Highest score2 over all of the record's frames (`None` without frames).
    pub max_score2: Option<f32>,
}

impl RecordSummary {
    /// `viral_chunks / scored_chunks`: chunks without any open frame carry no evidence either way.
    pub fn viral_fraction(&self) -> Option<f64> {
        (self.scored_chunks > 0).then(|| self.viral_chunks as f64 / self.scored_chunks as f64)
    }

    pub fn call(&self, min_viral_fraction: f64) -> &'static str {
        match self.viral_fraction() {
            None => "no_frames",
            Some(f) if f >= min_viral_fraction => "virus",
            Some(_) => "others",
        }
    }

    /// Builds a record's summary from its frames' scores, given in input order.
    pub fn from_scores(id: &str, length: usize, chunks: usize, scores: &[FrameScore]) -> Self {
        let mut per_chunk: Vec<(&str, ChunkMax)> = Vec::new();
        for s in scores {
            match per_chunk.last_mut() {
                Some((c, m)) if *c == s.chunk_id() => {
                    m.max_score1 = m.max_score1.max(s.score1);
                    m.max_score2 = m.max_score2.max(s.score2);
                }
                _ => per_chunk.push((
                    s.chunk_id(),
                    ChunkMax {
                        max_score1: s.score1,
                        max_score2: s.score2,
                    },
                )),
            }
        }
        RecordSummary {
            id: id.to_string(),
            length,
            chunks,
            scored_chunks: per_chunk.len(),
            frames_scored: scores.len(),
            viral_chunks: per_chunk.iter().filter(|(_, m)| m.is_virus()).count(),
            max_score2: scores.iter().map(|s| s.score2).reduce(f32::max),
        }
    }
}

/// Writes `prediction_summary.tsv`.
pub struct SummaryWriter<W: Write> {
    out: W,
    min_viral_fraction: f64,
}

impl<W: Write> SummaryWriter<W> {
    pub fn new(mut out: W, min_viral_fraction: f64) -> io::Result<Self> {
        writeln!(
            out,
            "record_id\tlength\tchunks\tscored_chunks\tframes_scored\tviral_chunks\tviral_fraction\tmax_score2\tcall"
        )?;
        Ok(Self {
            out,
            min_viral_fraction,
        })
    }

    /// A writer of rows only (no header): a work unit's part of the file.
    pub fn rows(out: W, min_viral_fraction: f64) -> Self {
        Self {
            out,
            min_viral_fraction,
        }
    }

    pub fn write(&mut self, r: &RecordSummary) -> io::Result<()> {
        let fraction = r
            .viral_fraction()
            .map(|f| format!("{f:.4}"))
            .unwrap_or_else(|| "NA".into());
        let max2 = r
            .max_score2
            .map(|s| s.to_string())
            .unwrap_or_else(|| "NA".into());
        writeln!(
            self.out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.id,
            r.length,
            r.chunks,
            r.scored_chunks,
            r.frames_scored,
            r.viral_chunks,
            fraction,
            max2,
            r.call(self.min_viral_fraction)
        )
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(id: &str, s1: f32, s2: f32) -> FrameScore {
        FrameScore {
            id: id.into(),
            score1: s1,
            score2: s2,
        }
    }

    #[test]
    fn chunk_id_cuts_frame_suffix() {
        assert_eq!(chunk_id_of("contig7_chunk_3R2"), "contig7_chunk_3");
        assert_eq!(chunk_id_of("x"), "");
    }

    #[test]
    fn tie_is_others_per_frame_but_true_per_chunk() {
        let s = fs("a_chunk_1F1", 0.5, 0.5);
        assert_eq!(s.label(), "others");
        let mut h = HighestScores::default();
        h.add(&s);
        let out = String::from_utf8(h.write(Vec::new()).unwrap()).unwrap();
        assert_eq!(out, "Modified_ID\tIs_Virus\na_chunk_1\tTrue\n");
    }

    #[test]
    fn highest_scores_sort_as_bytes_and_use_maxima_independently() {
        let mut h = HighestScores::default();
        // chunk_10 sorts before chunk_2 as strings.
        h.add(&fs("r_chunk_2F1", 0.9, 0.1));
        h.add(&fs("r_chunk_10F1", 0.7, 0.3));
        h.add(&fs("r_chunk_10R3", 0.2, 0.8));
        h.add(&fs("Q_chunk_1F2", 0.6, 0.4));
        let out = String::from_utf8(h.write(Vec::new()).unwrap()).unwrap();
        assert_eq!(
            out,
            "Modified_ID\tIs_Virus\nQ_chunk_1\tFalse\nr_chunk_10\tTrue\nr_chunk_2\tFalse\n"
        );
    }

    #[test]
    fn record_summary_counts_chunks_and_calls() {
        let scores = [
            fs("r_chunk_1F1", 0.05, 0.95),
            fs("r_chunk_1R1", 0.9, 0.1),
            fs("r_chunk_3F2", 0.7, 0.3),
        ];
        let r = RecordSummary::from_scores("r", 150, 3, &scores);
        assert_eq!(r.scored_chunks, 2);
        assert_eq!(r.viral_chunks, 1);
        assert_eq!(r.frames_scored, 3);
        assert_eq!(r.viral_fraction(), Some(0.5));
        assert_eq!(r.call(0.5), "virus");
        assert_eq!(r.call(0.6), "others");
        assert_eq!(r.max_score2, Some(0.95));
        let none = RecordSummary::from_scores("e", 10, 1, &[]);
        assert_eq!(none.call(0.5), "no_frames");
        let mut w = SummaryWriter::new(Vec::new(), 0.5).unwrap();
        w.write(&none).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        assert!(
            text.ends_with("e\t10\t1\t0\t0\t0\tNA\tNA\tno_frames\n"),
            "{text}"
        );
    }
}
