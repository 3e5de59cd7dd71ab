//! Sequence input: FASTA/FASTQ records, chunking (PIPELINE.md §2) and six-frame translation
//! with frame selection (PIPELINE.md §3).

pub mod chunk;
pub mod fasta;
pub mod translate;

/// One input record: its ID (first word of the header) and its sequence bytes as read
/// (case preserved, line breaks and spaces removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRecord {
    pub id: String,
    pub seq: Vec<u8>,
}

/// A kept translated frame: `<chunk id>F1..F3|R1..R3`, the DNA handed to the nucleotide model
/// (one base longer than the codons used, see PIPELINE.md §3) and the protein.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: String,
    pub dna: Vec<u8>,
    pub protein: Vec<u8>,
}
