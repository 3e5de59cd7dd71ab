//! Reading sequence records (docs/PIPELINE.md §1) from one or more FASTA/FASTQ inputs.
//!
//! [`RecordReader`] streams records from files or stdin (`-`), one record in memory at a time.
//! needletail does the parsing and detects gzip/bzip2/xz/zstd compression and FASTA vs FASTQ
//! from the content, so file names do not matter. On top of it this module:
//! - takes the ID as the first whitespace-separated word of the header;
//! - removes whitespace from sequences (line ends, CR of CRLF files, spaces) and rejects control
//!   or non-ASCII bytes, which mean the input is not a text sequence file;
//! - skips empty records with a warning naming them (the reference crashes on them);
//! - refuses, by default, a record with letters no nucleotide alphabet uses (protein FASTA given
//!   by mistake; [`super::alphabet`]), naming them; [`RecordReader::with_alphabet`] with
//!   [`Alphabet::Any`] reads proteins;
//! - rejects duplicate IDs unless told otherwise (the reference silently merges them);
//! - puts the input name, record number and line in every error.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use needletail::errors::{ParseError, ParseErrorKind};
use needletail::parser::SequenceRecord;
use needletail::FastxReader;

use super::alphabet::{check_nucleotides, Finding, NotNucleotide};
use super::SeqRecord;

/// What the records must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alphabet {
    /// Nucleotides (DNA or RNA, IUPAC codes, masked and gap characters): a record with other
    /// letters is an [`InputError::NotNucleotide`].
    #[default]
    Nucleotide,
    /// Any letters (protein FASTA).
    Any,
}

/// The input name that means standard input.
pub const STDIN: &str = "-";

/// Where a record came from: input, 1-based record number in it, 1-based line of its header
/// (after decompression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLocation {
    /// The input as given on the command line, `<stdin>` for `-`.
    pub input: Arc<str>,
    pub record: u64,
    pub line: u64,
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, line {} (record {})",
            self.input, self.line, self.record
        )
    }
}

/// Everything that can be wrong with the input. Each message names the input and, where known,
/// the record and line, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot open input {input}: {error}")]
    Open { input: String, error: io::Error },

    #[error("input {input} is a directory; give FASTA/FASTQ files (or - for stdin)")]
    IsDirectory { input: String },

    #[error("stdin (-) is given more than once as input; it can only be read once")]
    StdinTwice,

    #[error("input {input} is given more than once; its records would all be duplicates")]
    GivenTwice { input: String },

    #[error("{input} is not FASTA or FASTQ: {}", describe_start(*found))]
    UnknownFormat {
        input: String,
        /// The first byte of an uncompressed input; `None` for a compressed one (the byte after
        /// decompression is needletail's to see).
        found: Option<u8>,
    },

    #[error("{input}, line {line}: {}", describe_format_error(*format, record.as_deref(), problem))]
    Format {
        input: String,
        line: u64,
        /// FASTA or FASTQ, as far as known.
        format: Option<needletail::parser::Format>,
        /// The ID of the record with the problem, as far as known.
        record: Option<String>,
        problem: FormatProblem,
    },

    #[error("cannot read {input} {context}: {message}; is the file truncated or corrupt?")]
    Read {
        input: String,
        /// "after record 'x' (line n)" or "before the first record".
        context: String,
        message: String,
    },

    #[error(
        "{location}: the header has no ID (nothing after '>' or '@'); give every record a name"
    )]
    EmptyId { location: RecordLocation },

    #[error("{location}: the record ID is not valid UTF-8")]
    NotUtf8Id { location: RecordLocation },

    #[error(
        "{location}: record '{id}' contains the byte {byte:#04x} at base {base}, which is not a \
         sequence letter; is this a text FASTA/FASTQ file?"
    )]
    BadByte {
        location: RecordLocation,
        id: String,
        byte: u8,
        base: usize,
    },

    #[error(
        "{location}: record '{id}' holds {}. This needs nucleotide sequences (A, C, G, T or U, the \
         IUPAC codes, N, X and gaps; docs/FORMATS.md, \"Nucleotide alphabet\"): give the genomes, \
         contigs or reads as DNA FASTA/FASTQ, not their proteins",
        detail.describe()
    )]
    NotNucleotide {
        location: RecordLocation,
        id: String,
        detail: NotNucleotide,
    },

    #[error(
        "duplicate record ID '{id}': {first} and {second}; record IDs must be unique (rename one, \
         or pass --allow-duplicate-ids to keep both)"
    )]
    DuplicateId {
        id: String,
        first: RecordLocation,
        second: RecordLocation,
    },
}

/// What is wrong in the text of a FASTA/FASTQ input ([`InputError::Format`]), decided on
/// needletail's error kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatProblem {
    /// The input ends inside a record; `after`: the ID and line of the last whole record.
    Truncated { after: Option<(String, u64)> },
    /// A record does not start with `expected` (`>` in FASTA, `@` in FASTQ).
    BadStart { expected: char },
    /// The line after a FASTQ record's sequence does not start with `+`.
    BadSeparator,
    /// A FASTQ record's sequence and quality differ in length (`detail`: needletail's words,
    /// which hold the two lengths).
    UnequalLengths { detail: String },
}

/// Streams [`SeqRecord`]s from several inputs in order, as an iterator of
/// `Result<SeqRecord, InputError>`. It stops after the first error.
///
/// ```no_run
/// use virnucpro_core::input::fasta::RecordReader;
/// let mut reader = RecordReader::new(&["genomes.fa.gz".into(), "-".into()])?;
/// while let Some(record) = reader.next() {
///     let record = record?;
///     let where_ = reader.location().unwrap(); // input, record number, line
///     println!("{} ({} bp) from {where_}", record.id, record.seq.len());
/// }
/// # Ok::<(), virnucpro_core::input::fasta::InputError>(())
/// ```
pub struct RecordReader {
    inputs: Vec<PathBuf>,
    next_input: usize,
    current: Option<OpenInput>,
    /// IDs seen so far with where; `None` when duplicates are allowed (saves the memory).
    seen: Option<HashMap<String, RecordLocation>>,
    location: Option<RecordLocation>,
    empty_skipped: u64,
    failed: bool,
    alphabet: Alphabet,
    /// The first record, read by the constructor.
    peeked: Option<SeqRecord>,
    /// Whether RNA (`U`) and gaps were already reported (once per reader).
    warned_rna: bool,
    warned_gaps: bool,
    /// Bytes read from the inputs as stored (compressed where they are), for progress.
    bytes_read: Arc<AtomicU64>,
}

/// Counts the bytes read through it into a shared counter.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

struct OpenInput {
    name: Arc<str>,
    parser: Box<dyn FastxReader>,
    records: u64,
    /// ID and line of the last record read, for errors that happen between records.
    last: Option<(String, u64)>,
}

impl RecordReader {
    /// A reader of nucleotide records ([`Alphabet::Nucleotide`]) over `inputs` in order (`-` is
    /// stdin); see [`with_alphabet`](Self::with_alphabet).
    pub fn new(inputs: &[PathBuf]) -> Result<RecordReader, InputError> {
        Self::with_alphabet(inputs, Alphabet::Nucleotide)
    }

    /// A reader over `inputs` in order (`-` is stdin). Checks now that every file can be opened,
    /// so that a typo in the last name fails before hours of work on the first, and reads the
    /// first record (unless the first input is stdin), so that an input of the wrong kind (not
    /// FASTA/FASTQ, protein where nucleotides are needed) fails before the caller's slow set-up
    /// such as model loading.
    pub fn with_alphabet(
        inputs: &[PathBuf],
        alphabet: Alphabet,
    ) -> Result<RecordReader, InputError> {
        let mut stdin_seen = false;
        let mut files = std::collections::HashSet::new();
        for path in inputs {
            if path.as_os_str() == STDIN {
                if stdin_seen {
                    return Err(InputError::StdinTwice);
                }
                stdin_seen = true;
                continue;
            }
            open_file(path)?;
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if !files.insert(canonical) {
                return Err(InputError::GivenTwice {
                    input: path.display().to_string(),
                });
            }
        }
        let mut reader = RecordReader {
            inputs: inputs.to_vec(),
            next_input: 0,
            current: None,
            seen: Some(HashMap::new()),
            location: None,
            empty_skipped: 0,
            failed: false,
            bytes_read: Arc::new(AtomicU64::new(0)),
            alphabet,
            peeked: None,
            warned_rna: false,
            warned_gaps: false,
        };
        // Not from stdin: a pipe may hold back its first record for as long as it likes.
        if inputs.first().is_some_and(|p| p.as_os_str() != STDIN) {
            reader.peeked = reader.next_record()?;
        }
        Ok(reader)
    }

    /// A counter of the bytes read so far from the inputs as stored (before decompression),
    /// shared with whoever shows progress.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        self.bytes_read.clone()
    }

    /// Lets records share an ID instead of failing with [`InputError::DuplicateId`]. The
    /// duplicate check keeps every ID in memory (a few dozen bytes per record); allowing
    /// duplicates also drops that.
    pub fn allow_duplicate_ids(mut self, allow: bool) -> RecordReader {
        if allow {
            self.seen = None;
        } else if self.seen.is_none() {
            // The first record is already read: it must be in the map.
            let mut seen = HashMap::new();
            if let (Some(first), Some(location)) = (&self.peeked, &self.location) {
                seen.insert(first.id.clone(), location.clone());
            }
            self.seen = Some(seen);
        }
        self
    }

    /// Where the record last returned by `next` came from.
    pub fn location(&self) -> Option<&RecordLocation> {
        self.location.as_ref()
    }

    /// How many empty records were skipped so far.
    pub fn empty_skipped(&self) -> u64 {
        self.empty_skipped
    }

    fn open_next(&mut self) -> Result<Option<OpenInput>, InputError> {
        while self.next_input < self.inputs.len() {
            let path = &self.inputs[self.next_input];
            self.next_input += 1;
            let count = self.bytes_read.clone();
            let (name, stream): (Arc<str>, Box<dyn io::Read + Send>) = if path.as_os_str() == STDIN
            {
                let stdin = Counting {
                    inner: io::stdin(),
                    count,
                };
                ("<stdin>".into(), Box::new(stdin))
            } else {
                let name = path.display().to_string();
                let file = Counting {
                    inner: open_file(path)?,
                    count,
                };
                (name.into(), Box::new(file))
            };
            let (head, stream) = peek_head(stream).map_err(|e| InputError::Read {
                input: name.to_string(),
                context: "before the first record".to_owned(),
                message: e.to_string(),
            })?;
            match needletail::parse_fastx_reader(stream) {
                Ok(parser) => {
                    return Ok(Some(OpenInput {
                        name,
                        parser,
                        records: 0,
                        last: None,
                    }))
                }
                Err(e) if e.kind == ParseErrorKind::EmptyFile => {
                    tracing::warn!("{name} is empty: no records");
                }
                Err(e) if e.kind == ParseErrorKind::UnknownFormat => {
                    return Err(InputError::UnknownFormat {
                        input: name.to_string(),
                        found: uncompressed_first_byte(&head),
                    });
                }
                Err(e) => return Err(parse_error(&name, None, e)),
            }
        }
        Ok(None)
    }

    fn next_record(&mut self) -> Result<Option<SeqRecord>, InputError> {
        loop {
            if self.current.is_none() {
                self.current = self.open_next()?;
                if self.current.is_none() {
                    return Ok(None);
                }
            }
            let input = self.current.as_mut().expect("an input is open");
            let record = match input.parser.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e))
                    if e.kind == ParseErrorKind::UnexpectedEnd
                        && e.format == Some(needletail::parser::Format::Fasta) =>
                {
                    // needletail's only FASTA "unexpected end" is a header with no sequence
                    // line at the very end: an empty last record. Its ID is not available.
                    tracing::warn!(
                        "skipping the last record of {} (header at line {}): empty sequence",
                        input.name,
                        e.position.line
                    );
                    self.empty_skipped += 1;
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => return Err(parse_error(&input.name, input.last.as_ref(), e)),
                Some(Ok(record)) => record,
            };
            input.records += 1;
            let location = RecordLocation {
                input: input.name.clone(),
                record: input.records,
                line: record.start_line_number(),
            };
            let record = convert(&record, &location)?;
            input.last = Some((record.id.clone(), location.line));
            if let Some(seen) = &mut self.seen {
                if let Some(first) = seen.get(&record.id) {
                    return Err(InputError::DuplicateId {
                        id: record.id,
                        first: first.clone(),
                        second: location,
                    });
                }
                seen.insert(record.id.clone(), location.clone());
            }
            if self.alphabet == Alphabet::Nucleotide {
                self.check_alphabet(&record, &location)?;
            }
            if record.seq.is_empty() {
                tracing::warn!(
                    "skipping record '{}' at {location}: empty sequence",
                    record.id
                );
                self.empty_skipped += 1;
                continue;
            }
            self.location = Some(location);
            return Ok(Some(record));
        }
    }
}

impl RecordReader {
    /// Refuses a record that is not nucleotides; reports RNA and gaps once.
    fn check_alphabet(
        &mut self,
        record: &SeqRecord,
        location: &RecordLocation,
    ) -> Result<(), InputError> {
        match check_nucleotide_record(&record.id, &record.seq, location) {
            Ok(found) => {
                if found.rna && !self.warned_rna {
                    self.warned_rna = true;
                    tracing::warn!(
                        "record '{}' at {location} holds U (RNA): codons with U are dropped like \
                         those with N, as in the original pipeline; convert RNA to DNA first \
                         (e.g. `seqkit seq --rna2dna`) (reported once)",
                        record.id
                    );
                }
                if found.gaps && !self.warned_gaps {
                    self.warned_gaps = true;
                    tracing::warn!(
                        "record '{}' at {location} holds alignment gaps (- or .): they stay in \
                         place like N; remove them first (e.g. `seqkit seq -g`) to read the \
                         sequence itself (reported once)",
                        record.id
                    );
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Checks a record already read (`location`: where it came from) against the nucleotide
/// alphabet, as [`RecordReader`] does with [`Alphabet::Nucleotide`]; for callers that learn only
/// later whether their records must be nucleotides (`embed`: from the model).
pub fn check_nucleotide_record(
    id: &str,
    seq: &[u8],
    location: &RecordLocation,
) -> Result<Finding, InputError> {
    check_nucleotides(seq).map_err(|detail| InputError::NotNucleotide {
        location: location.clone(),
        id: id.to_owned(),
        detail,
    })
}

impl Iterator for RecordReader {
    type Item = Result<SeqRecord, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.peeked.take() {
            return Some(Ok(first));
        }
        if self.failed {
            return None;
        }
        let result = self.next_record().transpose();
        if matches!(result, Some(Err(_))) {
            self.failed = true;
            self.current = None;
        }
        result
    }
}

fn open_file(path: &Path) -> Result<File, InputError> {
    let input = || path.display().to_string();
    let file = File::open(path).map_err(|error| InputError::Open {
        input: input(),
        error,
    })?;
    // Opening a directory succeeds on Unix; reading it would fail with a vaguer message.
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(InputError::IsDirectory { input: input() });
    }
    Ok(file)
}

/// Builds a [`SeqRecord`]: ID = first word of the header, sequence without whitespace.
fn convert(
    record: &SequenceRecord<'_>,
    location: &RecordLocation,
) -> Result<SeqRecord, InputError> {
    let header = record.id();
    let id = header
        .split(|b| b.is_ascii_whitespace())
        .find(|word| !word.is_empty())
        .ok_or_else(|| InputError::EmptyId {
            location: location.clone(),
        })?;
    let id = std::str::from_utf8(id)
        .map_err(|_| InputError::NotUtf8Id {
            location: location.clone(),
        })?
        .to_owned();
    let seq =
        clean_sequence(record.seq().into_owned()).map_err(|(base, byte)| InputError::BadByte {
            location: location.clone(),
            id: id.clone(),
            byte,
            base,
        })?;
    Ok(SeqRecord {
        id,
        header: header.to_vec(),
        seq,
    })
}

/// Removes ASCII whitespace left in a sequence (needletail has removed CR/LF; spaces and tabs
/// remain) and rejects control and non-ASCII bytes: `Err((base index, byte))`.
fn clean_sequence(mut seq: Vec<u8>) -> Result<Vec<u8>, (usize, u8)> {
    // Fast path, no branch per byte: most sequences are nothing but letters.
    if seq.iter().fold(true, |ok, &b| ok & b.is_ascii_graphic()) {
        return Ok(seq);
    }
    let mut kept = 0;
    for i in 0..seq.len() {
        let b = seq[i];
        if b.is_ascii_graphic() {
            seq[kept] = b;
            kept += 1;
        } else if !b.is_ascii_whitespace() {
            return Err((kept + 1, b));
        }
    }
    seq.truncate(kept);
    Ok(seq)
}

/// Reads the first (up to) two bytes of `stream`, and gives them back with a stream that
/// still starts with them.
fn peek_head(
    mut stream: Box<dyn io::Read + Send>,
) -> io::Result<(Vec<u8>, Box<dyn io::Read + Send>)> {
    let mut head = [0u8; 2];
    let mut n = 0;
    while n < head.len() {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = head[..n].to_vec();
    Ok((head.clone(), Box::new(io::Cursor::new(head).chain(stream))))
}

/// The first byte of an input that starts with `head`, unless `head` is the magic number of a
/// compression needletail reads (gzip, bzip2, xz, zstd): then the byte that needletail found
/// after decompression is not known here.
fn uncompressed_first_byte(head: &[u8]) -> Option<u8> {
    const MAGIC: [[u8; 2]; 4] = [[0x1f, 0x8b], *b"BZ", [0xfd, b'7'], [0x28, 0xb5]];
    if MAGIC.iter().any(|m| head.starts_with(m)) {
        return None;
    }
    head.first().copied()
}

/// The end of [`InputError::UnknownFormat`]'s message.
fn describe_start(found: Option<u8>) -> String {
    let expected = "'>' (FASTA) or '@' (FASTQ) is expected";
    match found {
        Some(b) if b.is_ascii_graphic() => {
            format!("it starts with '{}' where {expected}", b as char)
        }
        Some(b) => format!("it starts with the byte {b:#04x} where {expected}"),
        None => format!(
            "after decompression it starts with something else where {expected} (gzip, bzip2, xz \
             and zstd are decompressed)"
        ),
    }
}

/// The end of [`InputError::Format`]'s message.
fn describe_format_error(
    format: Option<needletail::parser::Format>,
    record: Option<&str>,
    problem: &FormatProblem,
) -> String {
    let format = match format {
        Some(needletail::parser::Format::Fastq) => "FASTQ ",
        Some(needletail::parser::Format::Fasta) => "FASTA ",
        None => "",
    };
    let record = record.map_or_else(String::new, |id| format!(" '{id}'"));
    match problem {
        FormatProblem::Truncated { after } => {
            let after = match after {
                Some((id, line)) => format!("after record '{id}' (line {line})"),
                None => "before the first record".to_owned(),
            };
            format!("the input ends in the middle of a record {after}; is the file truncated?")
        }
        FormatProblem::BadStart { expected } => format!(
            "malformed {format}record{record}: expected '{expected}' at the start of a record"
        ),
        FormatProblem::BadSeparator => {
            format!("malformed {format}record{record}: expected the '+' line after the sequence")
        }
        FormatProblem::UnequalLengths { detail } => {
            format!("malformed {format}record{record}: {detail}")
        }
    }
}

fn parse_error(input: &str, last: Option<&(String, u64)>, e: ParseError) -> InputError {
    let format_error = |problem| InputError::Format {
        input: input.to_owned(),
        line: e.position.line,
        format: e.format,
        record: e.position.id.clone(),
        problem,
    };
    match e.kind {
        ParseErrorKind::Io => InputError::Read {
            input: input.to_owned(),
            context: match last {
                Some((id, line)) => format!("after record '{id}' (line {line})"),
                None => "before the first record".to_owned(),
            },
            message: e.msg,
        },
        ParseErrorKind::UnexpectedEnd => format_error(FormatProblem::Truncated {
            after: last.cloned(),
        }),
        // Both are decided when an input is opened, before any record.
        ParseErrorKind::UnknownFormat | ParseErrorKind::EmptyFile => InputError::UnknownFormat {
            input: input.to_owned(),
            found: None,
        },
        ParseErrorKind::InvalidStart => format_error(FormatProblem::BadStart {
            expected: match e.format {
                Some(needletail::parser::Format::Fastq) => '@',
                _ => '>',
            },
        }),
        ParseErrorKind::InvalidSeparator => format_error(FormatProblem::BadSeparator),
        ParseErrorKind::UnequalLengths => {
            let mut detail = e.msg.trim_end_matches('.').to_owned();
            if let Some(first) = detail.get_mut(..1) {
                first.make_ascii_lowercase();
            }
            format_error(FormatProblem::UnequalLengths { detail })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read(text: &[u8]) -> Result<Vec<SeqRecord>, InputError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.fa");
        File::create(&path).unwrap().write_all(text).unwrap();
        RecordReader::new(&[path])?.collect()
    }

    fn rec(id: &str, seq: &str) -> SeqRecord {
        SeqRecord::new(id, seq)
    }

    #[test]
    fn ids_multi_line_crlf_spaces() {
        let records = read(b">a desc here\r\nAC GT\r\nac\r\n>b\tx\nNN\n\n>c\nT").unwrap();
        let mut want = vec![rec("a", "ACGTac"), rec("b", "NN"), rec("c", "T")];
        // The header is kept as read (without the CR of a CRLF line end).
        want[0].header = b"a desc here".to_vec();
        want[1].header = b"b\tx".to_vec();
        assert_eq!(records, want);
    }

    #[test]
    fn empty_records_are_skipped() {
        let records = read(b">a\n>b\nAC\n>c\n").unwrap();
        assert_eq!(records, vec![rec("b", "AC")]);
        let records = read(b">a\nAC\n>c").unwrap();
        assert_eq!(records, vec![rec("a", "AC")]);
    }

    #[test]
    fn fastq() {
        let records = read(b"@r1 x\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n").unwrap();
        let mut want = vec![rec("r1", "ACGT"), rec("r2", "GG")];
        want[0].header = b"r1 x".to_vec();
        assert_eq!(records, want);
    }

    #[test]
    fn duplicate_ids_name_both_records() {
        let err = read(b">a\nAC\n>b\nGG\n>a\nTT\n").unwrap_err().to_string();
        assert!(err.contains("duplicate record ID 'a'"), "{err}");
        assert!(
            err.contains("line 1 (record 1)") && err.contains("line 5 (record 3)"),
            "{err}"
        );
    }

    #[test]
    fn bad_inputs() {
        let err = read(b"hello\n").unwrap_err().to_string();
        assert!(
            err.contains("is not FASTA or FASTQ") && err.contains("'h'"),
            "{err}"
        );
        let err = read(b">a\nAC\x00GT\n").unwrap_err().to_string();
        assert!(err.contains("record 'a'") && err.contains("0x00"), "{err}");
        let err = read(b">\nAC\n").unwrap_err().to_string();
        assert!(err.contains("no ID"), "{err}");
        let err = read(b"@r1\nACGT\n+\nII\n").unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn format_errors_are_typed() {
        let err = read(b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nII\n").unwrap_err();
        assert!(
            matches!(
                &err,
                InputError::Format {
                    line: 5,
                    problem: FormatProblem::UnequalLengths { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("quality length is 2"), "{err}");
        let err = read(b"@r1\nACGT\n-\nIIII\n").unwrap_err();
        assert!(
            matches!(
                &err,
                InputError::Format {
                    problem: FormatProblem::BadSeparator,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = read(b"@r1\nACGT\n+\nIIII\n@r2\nAC").unwrap_err();
        match &err {
            InputError::Format {
                problem: FormatProblem::Truncated { after },
                ..
            } => assert_eq!(after, &Some(("r1".to_owned(), 1))),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("is the file truncated?"), "{err}");
        // The first byte of a plain input; none for a compressed one.
        let err = read(b"\x89PNG\r\n").unwrap_err();
        assert!(
            matches!(
                err,
                InputError::UnknownFormat {
                    found: Some(0x89),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("the byte 0x89"), "{err}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"hello\n").unwrap();
        let err = read(&gz.finish().unwrap()).unwrap_err();
        assert!(
            matches!(err, InputError::UnknownFormat { found: None, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("after decompression"), "{err}");
    }

    #[test]
    fn missing_file_fails_at_construction() {
        let err = RecordReader::new(&["/nonexistent/x.fa".into()])
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .contains("cannot open input /nonexistent/x.fa"));
        assert!(matches!(
            RecordReader::new(&["-".into(), "-".into()]),
            Err(InputError::StdinTwice)
        ));
    }

    #[test]
    fn protein_is_refused_unless_any_alphabet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.faa");
        std::fs::write(&path, b">ubq\nMQIFVKTLTG\n>x\nACGT\n").unwrap();
        // The first record is read by the constructor.
        let err = RecordReader::new(std::slice::from_ref(&path))
            .err()
            .unwrap();
        assert!(matches!(err, InputError::NotNucleotide { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("p.faa, line 1 (record 1): record 'ubq' holds the letters F, I, L, Q"),
            "{text}"
        );
        let records: Vec<SeqRecord> = RecordReader::with_alphabet(&[path], Alphabet::Any)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records, vec![rec("ubq", "MQIFVKTLTG"), rec("x", "ACGT")]);

        // A later record fails when it is read, naming its line.
        let err = read(b">a\nACGTN\n>b\nacgu\n>c\nMKVL*\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 5 (record 3): record 'c' holds the letters *, L"),
            "{err}"
        );
    }

    #[test]
    fn the_first_record_read_early_still_counts_for_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.fa");
        std::fs::write(&path, b">a\nAC\n>a\nGG\n").unwrap();
        let reader = RecordReader::new(std::slice::from_ref(&path))
            .unwrap()
            .allow_duplicate_ids(true)
            .allow_duplicate_ids(false);
        let err = reader.collect::<Result<Vec<_>, _>>().unwrap_err();
        assert!(matches!(err, InputError::DuplicateId { .. }), "{err}");
        let reader = RecordReader::new(&[path])
            .unwrap()
            .allow_duplicate_ids(true);
        assert_eq!(reader.count(), 2);
    }

    #[test]
    fn clean_sequence_reports_position() {
        assert_eq!(clean_sequence(b"AC GT\t".to_vec()), Ok(b"ACGT".to_vec()));
        assert_eq!(clean_sequence(b"A C\x01".to_vec()), Err((3, 1)));
    }
}
