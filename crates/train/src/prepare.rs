//! `prepare`: GenBank flat files -> labelled, balanced training frames (`frames.tsv` +
//! `summary.json`, docs/FORMATS.md).
//!
//! Per record: chunk the sequence (docs/PIPELINE.md §2), skip chunks with an ambiguous base,
//! translate six frames (§3) and keep a frame when its protein is non-empty, stop-free and a substring of
//! one of the record's CDS `/translation`s, i.e. the frame reads real annotated protein. Viral
//! frames are all kept; host frames are sampled across host groups in proportion to their sizes
//! until host and viral counts match (the original `features_extract.py` balancing).

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use virnucpro_atomic::{commit_all, AtomicFile};
use virnucpro_core::input::alphabet::check_nucleotides;
use virnucpro_core::input::chunk::{chunk_id, chunk_spans};
use virnucpro_core::input::translate::{for_each_kept_frame, FrameScratch};
use virnucpro_core::input::Frame;
use virnucpro_models::rng::Rng;

pub const PREPARED_FORMAT: &str = "virnucpro-prepared";
pub const PREPARED_FORMAT_VERSION: u32 = 1;
pub const FRAMES_FILE: &str = "frames.tsv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const FRAMES_HEADER: &str = "id\tlabel\tgroup\tdna\tprotein";

/// Individual warnings of one kind printed per input file before they are only counted.
const WARN_LIMIT: u64 = 5;

/// One GenBank input file with its label (1 viral, 0 host) and group name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareInput {
    pub path: PathBuf,
    pub label: u8,
    pub group: String,
}

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub chunk_len: usize,
    pub seed: u64,
    pub out_dir: PathBuf,
    /// Stop at the first record the GenBank parser rejects (default: skip it with a warning,
    /// counted in `records_rejected`).
    pub strict: bool,
}

/// Counts for one (label, group); every record, CDS, chunk and frame lands in one counter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupSummary {
    pub group: String,
    /// `viral` or `host`.
    pub label: String,
    pub files: Vec<String>,
    /// Records read (parsed); the counters below are parts of it, except `records_rejected`.
    pub records: u64,
    /// Records the GenBank parser rejected (skipped with a warning; `--strict` stops instead),
    /// e.g. NCBI's WGS/TSA/TLS master records, whose `WGS`/`TSA`/`TLS` line after the features
    /// gb-io does not accept. Not part of `records`.
    #[serde(default)]
    pub records_rejected: u64,
    /// Records with an empty sequence (skipped).
    pub records_empty: u64,
    /// Records without any CDS feature (skipped: no protein to check frames against).
    pub records_without_cds: u64,
    /// Records whose ID was already seen in this run (skipped: frame IDs must be unique).
    pub records_duplicate: u64,
    pub cds: u64,
    /// CDS features without a `/translation` qualifier (e.g. `/pseudo`); they add no protein.
    pub cds_without_translation: u64,
    pub chunks: u64,
    /// Chunks with a base other than A/C/G/T (N, IUPAC codes), skipped as the original does.
    pub chunks_ambiguous: u64,
    /// Frames with a non-empty, stop-free protein.
    pub frames_open: u64,
    /// Of those, frames whose protein occurs in one of the record's CDS translations.
    pub frames_in_cds: u64,
    /// Of those, frames written to `frames.tsv` (all viral ones; the host sample).
    pub frames_written: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub format: String,
    pub format_version: u32,
    pub virnucpro_version: String,
    pub chunk_len: usize,
    pub seed: u64,
    pub frames_file: String,
    pub viral_frames: u64,
    pub host_frames_available: u64,
    pub host_frames_written: u64,
    /// False when there were fewer host than viral frames (then all host frames are kept).
    pub balanced: bool,
    pub groups: Vec<GroupSummary>,
}

// ---------------------------------------------------------------------------------------------
// Frame selection (chunking and translation are `virnucpro_core::input`'s, as for prediction).

/// The prepare rule on top of prediction's frame selection: a chunk with any base other than
/// A/C/G/T is skipped whole (the original training data was made this way), although
/// prediction would translate it, dropping the ambiguous codons.
fn is_unambiguous(chunk: &[u8]) -> bool {
    chunk
        .iter()
        .all(|b| matches!(b, b'A' | b'C' | b'G' | b'T' | b'a' | b'c' | b'g' | b't'))
}

// ---------------------------------------------------------------------------------------------
// Protein substring index.

const KMER: usize = 8;

/// All CDS translations of one record, for "is this protein a substring of one of them".
/// Translations are joined with a separator no protein contains, and every 8-mer start is
/// indexed (sorted), so a lookup costs a binary search and a few comparisons instead of a scan
/// of the whole proteome per frame.
struct ProteinIndex {
    text: Vec<u8>,
    kmers: Vec<(u64, u32)>,
}

fn kmer_key(s: &[u8]) -> u64 {
    s[..KMER]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

impl ProteinIndex {
    fn new(translations: &[Vec<u8>]) -> Self {
        let mut text = Vec::new();
        for t in translations {
            text.extend_from_slice(t);
            text.push(b'\n');
        }
        let mut kmers: Vec<(u64, u32)> = (0..text.len().saturating_sub(KMER - 1))
            .filter(|&i| !text[i..i + KMER].contains(&b'\n'))
            .map(|i| (kmer_key(&text[i..]), i as u32))
            .collect();
        kmers.sort_unstable();
        ProteinIndex { text, kmers }
    }

    fn contains(&self, protein: &[u8]) -> bool {
        if protein.len() < KMER {
            return self.text.windows(protein.len()).any(|w| w == protein);
        }
        let key = kmer_key(protein);
        let from = self.kmers.partition_point(|&(k, _)| k < key);
        self.kmers[from..]
            .iter()
            .take_while(|&&(k, _)| k == key)
            .any(|&(_, pos)| {
                self.text
                    .get(pos as usize..pos as usize + protein.len())
                    .is_some_and(|w| w == protein)
            })
    }
}

// ---------------------------------------------------------------------------------------------
// GenBank reading.

/// Opens a file, decompressing gzip when the content starts with the gzip magic bytes.
fn open_maybe_gz(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(reader),
        )))
    } else {
        Ok(Box::new(reader))
    }
}

/// One GenBank record as text, with the line its `LOCUS` line is on.
struct RecordText {
    text: Vec<u8>,
    line: u64,
    index: u64,
}

/// Splits a GenBank stream at `//` lines so that each record is parsed on its own and errors
/// can name the record's line (gb-io's own errors carry no position).
struct RecordSplitter<R> {
    reader: R,
    line_no: u64,
    records: u64,
    path: PathBuf,
}

fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &line[..end]
}

impl<R: BufRead> RecordSplitter<R> {
    fn next_record(&mut self) -> Result<Option<RecordText>> {
        let mut text = Vec::new();
        let mut line = Vec::new();
        let mut locus_line: Option<u64> = None;
        let mut first_line = 0;
        loop {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line).with_context(|| {
                format!(
                    "{}: read error near line {}",
                    self.path.display(),
                    self.line_no + 1
                )
            })?;
            if n == 0 {
                if trim_line(&text).is_empty() {
                    return Ok(None);
                }
                match locus_line {
                    Some(l) => bail!(
                        "{}: the record at line {l} has no `//` terminator: the file is truncated \
                         (an interrupted download?); download it again",
                        self.path.display()
                    ),
                    None => bail!(
                        "{}: line {first_line}: text after the last record that is not a GenBank \
                         record (no LOCUS line); is this a GenBank flat file?",
                        self.path.display()
                    ),
                }
            }
            self.line_no += 1;
            let trimmed = trim_line(&line);
            if text.is_empty() && trimmed.is_empty() {
                continue; // blank lines between records
            }
            if text.is_empty() {
                first_line = self.line_no;
            }
            if line.starts_with(b"LOCUS") {
                if let Some(l) = locus_line {
                    bail!(
                        "{}: the record at line {l} has no `//` terminator before the next LOCUS \
                         line at line {}: the file is malformed",
                        self.path.display(),
                        self.line_no
                    );
                }
                locus_line = Some(self.line_no);
            }
            text.extend_from_slice(&line);
            if trimmed == b"//" {
                let Some(l) = locus_line else {
                    bail!(
                        "{}: lines {first_line}-{}: a record without a LOCUS line; is this a \
                         GenBank flat file?",
                        self.path.display(),
                        self.line_no
                    );
                };
                self.records += 1;
                return Ok(Some(RecordText {
                    text,
                    line: l,
                    index: self.records,
                }));
            }
        }
    }
}

/// Line (1-based, in the file) of the first occurrence of gb-io's error context in the record.
fn error_line(rec: &RecordText, message: &str) -> u64 {
    let context = message
        .split_once("while parsing [")
        .and_then(|(_, rest)| rest.rsplit_once(']'))
        .map(|(ctx, _)| ctx.as_bytes())
        .filter(|ctx| !ctx.is_empty());
    let Some(ctx) = context else {
        return rec.line;
    };
    match rec.text.windows(ctx.len()).position(|w| w == ctx) {
        Some(pos) => rec.line + rec.text[..pos].iter().filter(|&&b| b == b'\n').count() as u64,
        None => rec.line,
    }
}

/// gb-io's message in one line: its error names no position but quotes the record from where
/// parsing failed to the end (`Syntax error: Error MapRes while parsing [<text>]`); the first line
/// of that text says what it could not read. NCBI's WGS/TSA/TLS master records fail this way:
/// after the features they carry a `WGS`/`TSA`/`TLS` line (the range of the project's records,
/// in place of a sequence), which gb-io 0.9's grammar (features, optional BASE COUNT, CONTIG,
/// ORIGIN, then `//`) does not accept.
fn parse_message(message: &str) -> String {
    let Some(first) = message
        .split_once("while parsing [")
        .and_then(|(_, rest)| rest.lines().map(str::trim_end).find(|l| !l.is_empty()))
    else {
        return message.to_string();
    };
    let master = ["WGS ", "WGS_SCAFLD ", "TSA ", "TLS "]
        .iter()
        .any(|k| first.starts_with(k));
    format!(
        "gb-io cannot read the line `{first}`{}",
        if master {
            " (a WGS/TSA/TLS master record: it lists a project's records and holds no sequence)"
        } else {
            ""
        }
    )
}

fn parse_record(rec: &RecordText, path: &Path) -> Result<gb_io::seq::Seq> {
    match gb_io::reader::SeqReader::new(&rec.text[..]).next() {
        Some(Ok(seq)) => Ok(seq),
        Some(Err(e)) => {
            let msg = e.to_string();
            bail!(
                "{}:{}: GenBank record #{} (LOCUS at line {}) rejected by the parser: {}",
                path.display(),
                error_line(rec, &msg),
                rec.index,
                rec.line,
                parse_message(&msg)
            )
        }
        None => bail!(
            "{}:{}: GenBank record #{} could not be read",
            path.display(),
            rec.line,
            rec.index
        ),
    }
}

/// The ID a record's frames are named after: `ACCESSION.VERSION` as Biopython's `record.id`,
/// falling back to the accession, then the LOCUS name.
fn record_id(seq: &gb_io::seq::Seq) -> Option<String> {
    [&seq.version, &seq.accession, &seq.name]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .filter_map(|s| s.split_whitespace().next())
        .map(str::to_string)
        .next()
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Warnings of one kind for one file: the first few in full, then only counted.
#[derive(Default)]
struct WarnCounter(u64);

impl WarnCounter {
    fn warn(&mut self, msg: impl FnOnce() -> String) {
        self.0 += 1;
        if self.0 <= WARN_LIMIT {
            tracing::warn!("{}", msg());
        }
    }

    fn finish(&self, path: &Path, what: &str) {
        if self.0 > WARN_LIMIT {
            tracing::warn!(
                "{}: {} more {what} (all counted in {SUMMARY_FILE})",
                path.display(),
                self.0 - WARN_LIMIT
            );
        }
    }
}

/// The warnings of one file, each kind counted and reported a few times.
#[derive(Default)]
struct FileWarnings {
    rejected: WarnCounter,
    no_cds: WarnCounter,
    no_translation: WarnCounter,
    empty: WarnCounter,
    duplicate: WarnCounter,
}

impl FileWarnings {
    fn finish(&self, path: &Path) {
        self.rejected
            .finish(path, "records the GenBank parser rejected");
        self.no_cds.finish(path, "records without CDS");
        self.no_translation.finish(path, "CDS without /translation");
        self.empty.finish(path, "records without sequence");
        self.duplicate.finish(path, "duplicate records");
    }
}

/// Processes one GenBank file, writing every kept frame as a TSV line to `out`.
fn process_file(
    input: &PrepareInput,
    chunk_len: usize,
    strict: bool,
    stats: &mut GroupSummary,
    seen_ids: &mut HashSet<String>,
    out: &mut dyn Write,
) -> Result<()> {
    let path = &input.path;
    let mut splitter = RecordSplitter {
        reader: open_maybe_gz(path)?,
        line_no: 0,
        records: 0,
        path: path.clone(),
    };
    let mut warnings = FileWarnings::default();
    let file_records_before = stats.records + stats.records_rejected;
    while let Some(rec) = splitter.next_record()? {
        let seq = match parse_record(&rec, path) {
            Ok(seq) => seq,
            Err(e) if strict => return Err(e.context("--strict: stopped at a rejected record")),
            Err(e) => {
                // The splitter has found the record's end (`//`), so the next one starts clean.
                stats.records_rejected += 1;
                warnings
                    .rejected
                    .warn(|| format!("{e:#}; skipped (--strict stops here instead)"));
                continue;
            }
        };
        stats.records += 1;
        let Some(id) = record_id(&seq) else {
            bail!(
                "{}:{}: GenBank record #{} has no VERSION, ACCESSION or LOCUS name to name its \
                 frames after",
                path.display(),
                rec.line,
                rec.index
            );
        };
        if !usable_record(&seq, &id, &rec, path, stats, seen_ids, &mut warnings)? {
            continue;
        }
        let Some(translations) = cds_translations(&seq, &id, &rec, path, stats, &mut warnings)
        else {
            continue;
        };
        let index = ProteinIndex::new(&translations);
        write_record_frames(input, &id, &seq.seq, &index, chunk_len, stats, out)?;
    }
    if stats.records + stats.records_rejected == file_records_before {
        tracing::warn!("{}: no GenBank record in this file", path.display());
    }
    warnings.finish(path);
    Ok(())
}

/// Whether a parsed record goes on to its frames: not a duplicate ID, not empty (both counted
/// and skipped); a record that is not nucleotides is an error.
fn usable_record(
    seq: &gb_io::seq::Seq,
    id: &str,
    rec: &RecordText,
    path: &Path,
    stats: &mut GroupSummary,
    seen_ids: &mut HashSet<String>,
    warnings: &mut FileWarnings,
) -> Result<bool> {
    if !seen_ids.insert(id.to_owned()) {
        stats.records_duplicate += 1;
        warnings.duplicate.warn(|| {
            format!(
                "{}:{}: record {id} was already read (duplicate ID); skipped so that frame \
                 IDs stay unique",
                path.display(),
                rec.line
            )
        });
        return Ok(false);
    }
    if seq.seq.is_empty() {
        stats.records_empty += 1;
        warnings.empty.warn(|| {
            format!(
                "{}:{}: record {id} has no sequence (no ORIGIN data); skipped",
                path.display(),
                rec.line
            )
        });
        return Ok(false);
    }
    if let Err(detail) = check_nucleotides(&seq.seq) {
        bail!(
            "{}:{}: GenBank record #{} ({id}) holds {}. prepare needs nucleotide GenBank \
             records (e.g. NCBI RefSeq's viral.1.1.genomic.gbff), not protein records \
             (GenPept, .gpff); see docs/FORMATS.md, \"Nucleotide alphabet\"",
            path.display(),
            rec.line,
            rec.index,
            detail.describe()
        );
    }
    Ok(true)
}

/// The upper-cased `/translation`s of a record's CDS features; `None` (counted, warned) when
/// the record has no CDS, so nothing can confirm its frames.
fn cds_translations(
    seq: &gb_io::seq::Seq,
    id: &str,
    rec: &RecordText,
    path: &Path,
    stats: &mut GroupSummary,
    warnings: &mut FileWarnings,
) -> Option<Vec<Vec<u8>>> {
    let mut translations = Vec::new();
    let mut n_cds = 0u64;
    for feature in seq.features.iter().filter(|f| f.kind == "CDS") {
        n_cds += 1;
        let mut any = false;
        for t in feature.qualifier_values("translation") {
            let protein: Vec<u8> = t
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .map(|b| b.to_ascii_uppercase())
                .collect();
            if !protein.is_empty() {
                translations.push(protein);
                any = true;
            }
        }
        if !any {
            stats.cds_without_translation += 1;
            warnings.no_translation.warn(|| {
                format!(
                    "{}: record {id} (line {}): CDS {} has no /translation; it cannot \
                     confirm frames",
                    path.display(),
                    rec.line,
                    feature.location.to_gb_format()
                )
            });
        }
    }
    stats.cds += n_cds;
    if n_cds == 0 {
        stats.records_without_cds += 1;
        warnings.no_cds.warn(|| {
            format!(
                "{}:{}: record {id} has no CDS feature; skipped (no protein to confirm its \
                 frames)",
                path.display(),
                rec.line
            )
        });
        return None;
    }
    Some(translations)
}

/// Chunks a record, selects the frames its CDS confirm and writes them to `out` in order.
fn write_record_frames(
    input: &PrepareInput,
    id: &str,
    sequence: &[u8],
    index: &ProteinIndex,
    chunk_len: usize,
    stats: &mut GroupSummary,
    out: &mut dyn Write,
) -> Result<()> {
    let spans: Vec<(usize, usize)> = chunk_spans(sequence.len(), chunk_len).collect();
    stats.chunks += spans.len() as u64;
    // Chunks are independent: translate and look up in parallel, write in order.
    let per_chunk: Vec<Option<(usize, Vec<Frame>)>> = spans
        .par_iter()
        .enumerate()
        .map_init(FrameScratch::new, |scratch, (j, &(start, end))| {
            chunk_frames(id, j, &sequence[start..end], index, scratch)
        })
        .collect();
    for result in per_chunk {
        let Some((n_open, kept)) = result else {
            stats.chunks_ambiguous += 1;
            continue;
        };
        stats.frames_open += n_open as u64;
        stats.frames_in_cds += kept.len() as u64;
        for frame in kept {
            write_frame_line(out, input, &frame)
                .with_context(|| "cannot write prepared frames".to_string())?;
        }
    }
    Ok(())
}

/// The frames of chunk `j` (0-based) of record `record_id` that prepare keeps, and the number
/// of open frames (non-empty, stop-free) they were picked from; `None` for an ambiguous chunk.
fn chunk_frames(
    record_id: &str,
    j: usize,
    chunk: &[u8],
    index: &ProteinIndex,
    scratch: &mut FrameScratch,
) -> Option<(usize, Vec<Frame>)> {
    if !is_unambiguous(chunk) {
        return None;
    }
    let id = chunk_id(record_id, j);
    let mut kept = Vec::new();
    let n_open = for_each_kept_frame(chunk, scratch, |tag, dna, protein| {
        if index.contains(protein) {
            kept.push(Frame {
                id: format!("{id}{tag}"),
                dna: dna.to_vec(),
                protein: protein.to_vec(),
            });
        }
    });
    Some((n_open, kept))
}

fn write_frame_line(
    out: &mut dyn Write,
    input: &PrepareInput,
    frame: &Frame,
) -> std::io::Result<()> {
    write!(out, "{}\t{}\t{}\t", frame.id, input.label, input.group)?;
    out.write_all(&frame.dna)?;
    out.write_all(b"\t")?;
    out.write_all(&frame.protein)?;
    out.write_all(b"\n")
}

/// How many of each group's frames to keep so that the total is `target`, proportional to the
/// group sizes (largest remainder; ties go to the earlier group). Never more than a group has.
pub fn proportional_quotas(sizes: &[u64], target: u64) -> Vec<u64> {
    let total: u64 = sizes.iter().sum();
    if target >= total {
        return sizes.to_vec();
    }
    let mut quotas: Vec<u64> = sizes
        .iter()
        .map(|&s| (u128::from(target) * u128::from(s) / u128::from(total)) as u64)
        .collect();
    let mut left = target - quotas.iter().sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..sizes.len()).collect();
    let rem = |g: usize| u128::from(target) * u128::from(sizes[g]) % u128::from(total);
    by_remainder.sort_by(|&a, &b| rem(b).cmp(&rem(a)).then(a.cmp(&b)));
    for g in by_remainder {
        if left == 0 {
            break;
        }
        if quotas[g] < sizes[g] {
            quotas[g] += 1;
            left -= 1;
        }
    }
    quotas
}

/// A temporary file removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Inputs grouped: the files of one (label, group) in first-appearance order.
fn group_inputs(inputs: &[PrepareInput]) -> Vec<(u8, String, Vec<&PrepareInput>)> {
    let mut groups: Vec<(u8, String, Vec<&PrepareInput>)> = Vec::new();
    for input in inputs {
        match groups
            .iter_mut()
            .find(|(l, g, _)| *l == input.label && *g == input.group)
        {
            Some((_, _, files)) => files.push(input),
            None => groups.push((input.label, input.group.clone(), vec![input])),
        }
    }
    groups
}

fn check_group_name(name: &str) -> Result<()> {
    ensure!(!name.is_empty(), "a group name must not be empty");
    ensure!(
        !name.contains(['\t', '\n', '\r']),
        "group name {name:?} contains a tab or line break; choose another with NAME=FILE"
    );
    Ok(())
}

/// Runs `prepare`: writes `frames.tsv` and `summary.json` into `opts.out_dir`.
pub fn prepare(inputs: &[PrepareInput], opts: &PrepareOptions) -> Result<PrepareSummary> {
    check_inputs(inputs, opts)?;
    virnucpro_atomic::create_output_dir(&opts.out_dir)
        .with_context(|| format!("cannot create output directory {}", opts.out_dir.display()))?;

    let groups = group_inputs(inputs);
    let mut summaries: Vec<GroupSummary> = groups
        .iter()
        .map(|(label, name, files)| GroupSummary {
            group: name.clone(),
            label: if *label == 1 { "viral" } else { "host" }.to_string(),
            files: files.iter().map(|f| f.path.display().to_string()).collect(),
            ..Default::default()
        })
        .collect();

    // Viral frames go straight to the output; host frames to a spill file, sampled afterwards,
    // so memory stays flat however large the host genomes are.
    let frames_path = opts.out_dir.join(FRAMES_FILE);
    let mut out = AtomicFile::create(&frames_path)?;
    writeln!(out, "{FRAMES_HEADER}")?;
    let spill_path = TempPath(
        opts.out_dir
            .join(format!(".host-frames.spill-{}", std::process::id())),
    );
    let host_sizes = read_groups(&groups, &mut summaries, opts, &mut out, &spill_path.0)?;

    let viral: u64 = summaries
        .iter()
        .filter(|s| s.label == "viral")
        .map(|s| s.frames_in_cds)
        .sum();
    let host_available: u64 = host_sizes.iter().sum();
    if viral == 0 || host_available == 0 {
        bail!(
            "no {} frame was kept: check that those files have CDS features with /translation \
             qualifiers and that --chunk-len ({}) suits them. Counts per group:\n{}",
            if viral == 0 { "viral" } else { "host" },
            opts.chunk_len,
            group_table(&summaries)
        );
    }
    let balanced = host_available >= viral;
    if !balanced {
        tracing::warn!(
            "only {host_available} host frames for {viral} viral frames: all host frames are kept \
             and the data set is unbalanced; add host genomes to balance it"
        );
    }
    let quotas = proportional_quotas(&host_sizes, viral);
    let selected = sample_host_frames(opts.seed, &host_sizes, &quotas);
    let host_written = copy_selected_lines(&spill_path.0, &selected, &mut out)?;
    let mut hosts = summaries.iter_mut().filter(|s| s.label == "host");
    for &q in &quotas {
        if let Some(s) = hosts.next() {
            s.frames_written = q;
        }
    }
    let summary = PrepareSummary {
        format: PREPARED_FORMAT.to_string(),
        format_version: PREPARED_FORMAT_VERSION,
        virnucpro_version: env!("CARGO_PKG_VERSION").to_string(),
        chunk_len: opts.chunk_len,
        seed: opts.seed,
        frames_file: FRAMES_FILE.to_string(),
        viral_frames: viral,
        host_frames_available: host_available,
        host_frames_written: host_written,
        balanced,
        groups: summaries,
    };
    let mut summary_file = AtomicFile::create(opts.out_dir.join(SUMMARY_FILE))?;
    serde_json::to_writer_pretty(&mut summary_file, &summary)?;
    // Both or neither: a frames.tsv beside a stale summary.json would give `extract` the wrong
    // chunk length.
    commit_all(vec![out, summary_file])?;
    Ok(summary)
}

/// The options and inputs make sense: a viral and a host input at least, valid group names,
/// files that exist.
fn check_inputs(inputs: &[PrepareInput], opts: &PrepareOptions) -> Result<()> {
    ensure!(opts.chunk_len > 0, "--chunk-len must be positive");
    ensure!(
        inputs.iter().any(|i| i.label == 1),
        "no viral input: give at least one --viral GenBank file"
    );
    ensure!(
        inputs.iter().any(|i| i.label == 0),
        "no host input: give at least one --host GenBank file"
    );
    for input in inputs {
        check_group_name(&input.group)?;
        ensure!(
            input.path.is_file(),
            "input {} does not exist or is not a file",
            input.path.display()
        );
    }
    Ok(())
}

/// Reads every group's files: viral frames to `out`, host frames to the spill file `spill_path`.
/// Returns the number of frames of each host group, in order.
fn read_groups(
    groups: &[(u8, String, Vec<&PrepareInput>)],
    summaries: &mut [GroupSummary],
    opts: &PrepareOptions,
    out: &mut AtomicFile,
    spill_path: &Path,
) -> Result<Vec<u64>> {
    let mut spill = std::io::BufWriter::new(
        fs::File::create(spill_path)
            .with_context(|| format!("cannot create {}", spill_path.display()))?,
    );
    let mut seen_ids = HashSet::new();
    let mut host_sizes = Vec::new();
    for ((label, _, files), stats) in groups.iter().zip(summaries.iter_mut()) {
        for input in files {
            tracing::info!(
                "reading {} ({} group {})",
                input.path.display(),
                stats.label,
                stats.group
            );
            let sink: &mut dyn Write = if *label == 1 { &mut *out } else { &mut spill };
            process_file(
                input,
                opts.chunk_len,
                opts.strict,
                stats,
                &mut seen_ids,
                sink,
            )?;
        }
        if *label == 0 {
            host_sizes.push(stats.frames_in_cds);
        } else {
            stats.frames_written = stats.frames_in_cds;
        }
    }
    spill
        .flush()
        .with_context(|| format!("cannot write {}", spill_path.display()))?;
    Ok(host_sizes)
}

/// The sampled host frames: numbers of lines of the spill file (all host groups in order),
/// `quotas[g]` of group `g`'s `host_sizes[g]`, sorted.
fn sample_host_frames(seed: u64, host_sizes: &[u64], quotas: &[u64]) -> Vec<u64> {
    let mut rng = Rng::new(seed, 0x5052_4550); // "PREP"
    let mut selected = Vec::new();
    let mut offset = 0u64;
    for (&size, &quota) in host_sizes.iter().zip(quotas) {
        selected.extend(
            rng.sample_sorted(size as usize, quota as usize)
                .into_iter()
                .map(|i| offset + i as u64),
        );
        offset += size;
    }
    selected
}

/// Copies lines `selected` (sorted, 0-based) of `spill_path` to `out`; returns how many.
fn copy_selected_lines(spill_path: &Path, selected: &[u64], out: &mut AtomicFile) -> Result<u64> {
    let reader = BufReader::new(
        fs::File::open(spill_path)
            .with_context(|| format!("cannot read {}", spill_path.display()))?,
    );
    let mut written = 0u64;
    let mut next = selected.iter().peekable();
    for (i, line) in reader.split(b'\n').enumerate() {
        let Some(&&want) = next.peek() else { break };
        let line = line.with_context(|| format!("cannot read {}", spill_path.display()))?;
        if i as u64 == want {
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            written += 1;
            next.next();
        }
    }
    ensure!(
        next.peek().is_none(),
        "internal error: host spill file {} is shorter than counted",
        spill_path.display()
    );
    Ok(written)
}

/// Reads `DIR/summary.json` of a prepared data set, checking its format.
pub fn read_summary(dir: &Path) -> Result<PrepareSummary> {
    let path = dir.join(SUMMARY_FILE);
    if !dir.is_dir() {
        bail!(
            "prepared data set {} is not a directory; give the --out-dir of `virnucpro prepare`",
            dir.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: a prepared data set has the {SUMMARY_FILE} and {FRAMES_FILE} that \
             `virnucpro prepare` writes",
            path.display()
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    ensure!(
        value["format"] == PREPARED_FORMAT,
        "{}: format is {}, expected {PREPARED_FORMAT:?}; is this a `virnucpro prepare` output?",
        path.display(),
        value["format"]
    );
    ensure!(
        value["format_version"] == PREPARED_FORMAT_VERSION,
        "{}: format version {} is not supported (this virnucpro reads version \
         {PREPARED_FORMAT_VERSION}); re-run `virnucpro prepare`",
        path.display(),
        value["format_version"]
    );
    let summary: PrepareSummary = serde_json::from_value(value)
        .with_context(|| format!("{} is not a valid prepare summary", path.display()))?;
    ensure!(summary.chunk_len > 0, "{}: chunk_len is 0", path.display());
    ensure!(
        !summary.frames_file.is_empty()
            && Path::new(&summary.frames_file).file_name()
                == Some(std::ffi::OsStr::new(&summary.frames_file)),
        "{}: frames_file {:?} is not a file name in the same directory",
        path.display(),
        summary.frames_file
    );
    Ok(summary)
}

/// The per-group table printed by `virnucpro prepare`, with a totals line.
pub fn summary_table(summary: &PrepareSummary) -> String {
    let mut s = group_table(&summary.groups);
    s.push_str(&format!(
        "{} viral + {} host frames written (of {} host frames available){}\n",
        summary.viral_frames,
        summary.host_frames_written,
        summary.host_frames_available,
        if summary.balanced {
            ""
        } else {
            "; NOT balanced: too few host frames"
        }
    ));
    s
}

fn group_table(groups: &[GroupSummary]) -> String {
    let header = [
        "group",
        "label",
        "records",
        "rejected",
        "no_cds",
        "cds",
        "no_transl",
        "chunks",
        "ambiguous",
        "open_frames",
        "in_cds",
        "written",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for g in groups {
        rows.push(vec![
            g.group.clone(),
            g.label.clone(),
            g.records.to_string(),
            g.records_rejected.to_string(),
            g.records_without_cds.to_string(),
            g.cds.to_string(),
            g.cds_without_translation.to_string(),
            g.chunks.to_string(),
            g.chunks_ambiguous.to_string(),
            g.frames_open.to_string(),
            g.frames_in_cds.to_string(),
            g.frames_written.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if c < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    s
}

/// Default group name of an input: its file name without `.gz` and a GenBank extension.
pub fn default_group_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    for ext in [".gz", ".gbff", ".gbk", ".gb", ".genbank"] {
        if let Some(stripped) = name.strip_suffix(ext) {
            if !stripped.is_empty() {
                name = stripped.to_string();
            }
        }
    }
    name
}

/// Parses a `[GROUP=]PATH` input argument. A value that names an existing file is a path even
/// if it contains `=`; otherwise text before the first `=` is the group.
pub fn parse_input_arg(value: &str, label: u8, default_group: Option<&str>) -> PrepareInput {
    if !Path::new(value).exists() {
        if let Some((group, path)) = value.split_once('=') {
            if !group.is_empty() && !path.is_empty() {
                return PrepareInput {
                    path: PathBuf::from(path),
                    label,
                    group: group.to_string(),
                };
            }
        }
    }
    let path = PathBuf::from(value);
    let group = default_group
        .map(str::to_string)
        .unwrap_or_else(|| default_group_name(&path));
    PrepareInput { path, label, group }
}

/// Streams a prepared `frames.tsv` (for `extract`), one [`PreparedFrame`] per row.
pub struct FramesReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<fs::File>>,
    line_no: u64,
}

impl FramesReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut lines = BufReader::new(file).lines();
        let header = lines
            .next()
            .transpose()
            .with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(
            header.as_deref() == Some(FRAMES_HEADER),
            "{}:1: expected the header {FRAMES_HEADER:?}; is this a `virnucpro prepare` frames.tsv?",
            path.display()
        );
        Ok(FramesReader {
            path: path.to_path_buf(),
            lines,
            line_no: 1,
        })
    }

    fn parse(&self, line: &str) -> Result<PreparedFrame> {
        let (path, n) = (self.path.display(), self.line_no);
        let cols: Vec<&str> = line.split('\t').collect();
        let [id, label, group, dna, protein] = cols[..] else {
            bail!(
                "{path}:{n}: expected 5 tab-separated columns, found {}",
                cols.len()
            );
        };
        let label = match label {
            "0" => 0,
            "1" => 1,
            other => bail!("{path}:{n}: label {other:?}, expected 0 or 1"),
        };
        Ok(PreparedFrame {
            id: id.to_string(),
            label,
            group: group.to_string(),
            dna: dna.to_string(),
            protein: protein.to_string(),
        })
    }
}

impl Iterator for FramesReader {
    type Item = Result<PreparedFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        self.line_no += 1;
        Some(
            line.with_context(|| format!("{}:{}: cannot read", self.path.display(), self.line_no))
                .and_then(|l| self.parse(&l)),
        )
    }
}

/// One row of `frames.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedFrame {
    pub id: String,
    pub label: u8,
    pub group: String,
    pub dna: String,
    pub protein: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use virnucpro_core::input::translate::select_frames;

    /// Prepare cuts chunks with `input::chunk`; these are the reference's spans it relies on.
    #[test]
    fn chunk_spans_follow_the_reference() {
        let spans = |n, l| chunk_spans(n, l).map(|(a, b)| a..b).collect::<Vec<_>>();
        assert_eq!(spans(120, 60), vec![0..60, 60..120]);
        // One base over: k = 3, r = 59, lo = 19, need = 21 -> shifts [20; 21] + [0]: the
        // reference's last chunk is short (the oracle's g_plus1 chunk 2 starts at 40).
        assert_eq!(spans(121, 60), vec![0..60, 40..100, 80..121]);
        assert_eq!(spans(31, 60), vec![0..31]);
        assert!(spans(0, 60).is_empty());
        // need > k-1: the reference's list is longer and its last chunk falls short.
        assert_eq!(spans(595, 300), vec![0..300, 297..595]);
    }

    #[test]
    fn translate_drops_ambiguous_codons() {
        use virnucpro_core::input::translate::{reverse_complement, translate};
        assert_eq!(translate(b"ATGNNNTAA"), b"M*");
        assert_eq!(translate(b"ATGGC"), b"M");
        assert_eq!(reverse_complement(b"AcgN"), b"NcgT");
    }

    /// Ambiguous chunks are skipped whole; others keep the frames found in a CDS, counting the
    /// open ones.
    #[test]
    fn chunk_frames_apply_the_prepare_rules() {
        // F1 MAKEFGHWPD and R1 VWPMTEFFSH are open; only F1 is in the CDS.
        let chunk = b"atggctaaagaattcggtcattggccagac";
        let index = ProteinIndex::new(&[b"MMAKEFGHWPDK".to_vec()]);
        let mut scratch = FrameScratch::new();
        let (open, kept) = chunk_frames("r1", 2, chunk, &index, &mut scratch).unwrap();
        assert_eq!(open, 3);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, "r1_chunk_3F1");
        assert_eq!(kept[0].dna, b"ATGGCTAAAGAATTCGGTCATTGGCCAGAC");
        assert_eq!(kept[0].protein, b"MAKEFGHWPD");
        let ambiguous = b"ATGGCTAAAGAATTCGGTCATTGGCCAGAN";
        assert!(chunk_frames("r1", 0, ambiguous, &index, &mut scratch).is_none());
    }

    #[test]
    fn protein_index_finds_substrings_only_within_one_cds() {
        let idx = ProteinIndex::new(&[b"MKTAYIAKQRQISFVKSHFSRQ".to_vec(), b"MSTNPKPQRK".to_vec()]);
        assert!(idx.contains(b"TAYIAKQRQIS"));
        assert!(idx.contains(b"QRK"));
        assert!(idx.contains(b"MSTNPKPQRK"));
        assert!(!idx.contains(b"SRQMSTNPKP")); // spans two CDS
        assert!(!idx.contains(b"TAYIAKQRQIX"));
    }

    #[test]
    fn quotas_are_proportional_and_sum_to_target() {
        assert_eq!(proportional_quotas(&[300, 100], 200), vec![150, 50]);
        assert_eq!(proportional_quotas(&[2, 1], 2), vec![1, 1]); // remainders 1/3 vs 2/3
        assert_eq!(proportional_quotas(&[5, 5], 3), vec![2, 1]);
        assert_eq!(proportional_quotas(&[3, 4], 10), vec![3, 4]);
        let q = proportional_quotas(&[7, 13, 1, 0], 11);
        assert_eq!(q.iter().sum::<u64>(), 11);
    }

    /// The oracle's end-to-end run kept exactly these frames (prediction keeps ambiguous chunks).
    #[test]
    fn frames_match_the_oracle() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/oracle");
        let fasta = fs::read_to_string(dir.join("inputs/genomes.fa")).unwrap();
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        for line in fasta.lines() {
            if let Some(h) = line.strip_prefix('>') {
                records.push((h.split_whitespace().next().unwrap().to_string(), Vec::new()));
            } else {
                records.last_mut().unwrap().1.extend(line.trim().bytes());
            }
        }
        let mut got_dna = String::new();
        let mut got_protein = String::new();
        for (id, seq) in &records {
            let seq = seq.to_ascii_uppercase();
            for (j, (start, end)) in chunk_spans(seq.len(), 60).enumerate() {
                for f in select_frames(&chunk_id(id, j), &seq[start..end]) {
                    let name = f.id;
                    got_dna += &format!(">{name}\n{}\n", String::from_utf8_lossy(&f.dna));
                    got_protein += &format!(">{name}\n{}\n", String::from_utf8_lossy(&f.protein));
                }
            }
        }
        let want_dna =
            fs::read_to_string(dir.join("e2e_fastesm/identified_nucleotide.fa")).unwrap();
        let want_protein =
            fs::read_to_string(dir.join("e2e_fastesm/identified_protein.faa")).unwrap();
        assert_eq!(got_dna, want_dna);
        assert_eq!(got_protein, want_protein);
    }
}
