//! Sequence input: FASTA/FASTQ records, the nucleotide alphabet check ([`alphabet`]), chunking
//! (docs/PIPELINE.md §2) and six-frame translation with frame selection (docs/PIPELINE.md §3).

pub mod alphabet;
pub mod chunk;
pub mod fasta;
pub mod translate;
pub mod units;

/// One input record: its ID (first word of the header), the whole header line as read (without
/// the leading `>`/`@`) and its sequence bytes as read (case preserved, line breaks and spaces
/// removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRecord {
    pub id: String,
    pub header: Vec<u8>,
    pub seq: Vec<u8>,
}

impl SeqRecord {
    /// A record whose header is its ID alone.
    pub fn new(id: impl Into<String>, seq: impl Into<Vec<u8>>) -> SeqRecord {
        let id = id.into();
        SeqRecord {
            header: id.clone().into_bytes(),
            id,
            seq: seq.into(),
        }
    }
}

/// A kept translated frame: `<chunk id>F1..F3|R1..R3`, the DNA handed to the nucleotide model
/// (one base longer than the codons used, see docs/PIPELINE.md §3) and the protein.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: String,
    pub dna: Vec<u8>,
    pub protein: Vec<u8>,
}

/// One chunk of a record with the frames kept from it (docs/PIPELINE.md §2–3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `<record id>_chunk_<j+1>`.
    pub id: String,
    /// Position in the record, half-open, 0-based.
    pub start: usize,
    pub end: usize,
    /// Kept frames in the order F1, F2, F3, R1, R2, R3.
    pub frames: Vec<Frame>,
}

/// A record cut into chunks with their kept frames: the unit of work of `frames` and `predict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFrames {
    pub id: String,
    /// Record length in bases.
    pub len: usize,
    pub chunks: Vec<Chunk>,
}

impl RecordFrames {
    /// Number of kept frames over all chunks; 0 means the record yields nothing to classify.
    pub fn frame_count(&self) -> usize {
        self.chunks.iter().map(|c| c.frames.len()).sum()
    }
}

/// Cuts `record` into chunks of `chunk_len` and selects the frames of each, exactly as the
/// reference prediction does. An empty record gives no chunks.
///
/// # Panics
/// If `chunk_len` is 0.
pub fn record_frames(record: &SeqRecord, chunk_len: usize) -> RecordFrames {
    let mut scratch = translate::FrameScratch::new();
    let chunks = chunk::chunk_spans(record.seq.len(), chunk_len)
        .enumerate()
        .map(|(j, span)| chunk_frames(record, j, span, &mut scratch))
        .collect();
    RecordFrames {
        id: record.id.clone(),
        len: record.seq.len(),
        chunks,
    }
}

/// Chunk `index` of `record` (its `span` from [`chunk::chunk_spans`]) with its kept frames; the
/// one place where frame IDs and records are built, shared by the sequential and parallel paths.
pub fn chunk_frames(
    record: &SeqRecord,
    index: usize,
    (start, end): (usize, usize),
    scratch: &mut translate::FrameScratch,
) -> Chunk {
    let id = chunk::chunk_id(&record.id, index);
    let mut frames = Vec::new();
    translate::for_each_kept_frame(&record.seq[start..end], scratch, |tag, dna, protein| {
        frames.push(Frame {
            id: format!("{id}{tag}"),
            dna: dna.to_vec(),
            protein: protein.to_vec(),
        });
    });
    Chunk {
        id,
        start,
        end,
        frames,
    }
}
