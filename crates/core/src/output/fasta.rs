//! The FASTA files of kept frames: `identified_nucleotide.fa` (the DNA handed to the nucleotide
//! model) and `identified_protein.faa` (the proteins), one record per kept frame, `>ID` and the
//! sequence on one line, in input order — as the reference writes them.

use std::io::{self, Write};
use std::path::Path;

use virnucpro_atomic::AtomicFile;

use crate::input::Frame;

pub const NUCLEOTIDE_FILE: &str = "identified_nucleotide.fa";
pub const PROTEIN_FILE: &str = "identified_protein.faa";

/// Appends `>id\nseq\n` to `out`; `id` may be given in pieces (e.g. chunk ID and frame tag),
/// which are concatenated.
pub fn push_record(out: &mut Vec<u8>, id: &[&[u8]], seq: &[u8]) {
    out.push(b'>');
    for piece in id {
        out.extend_from_slice(piece);
    }
    out.push(b'\n');
    out.extend_from_slice(seq);
    out.push(b'\n');
}

/// Writes the two frame files atomically into an output directory.
#[derive(Debug)]
pub struct FrameFastaWriter {
    nucleotide: AtomicFile,
    protein: AtomicFile,
}

impl FrameFastaWriter {
    /// Starts both files in `out_dir` (which must exist) under temporary names.
    pub fn create(out_dir: &Path) -> io::Result<FrameFastaWriter> {
        Ok(FrameFastaWriter {
            nucleotide: AtomicFile::create(out_dir.join(NUCLEOTIDE_FILE))?,
            protein: AtomicFile::create(out_dir.join(PROTEIN_FILE))?,
        })
    }

    pub fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let mut buf = Vec::with_capacity(2 * frame.id.len() + frame.dna.len() + 4);
        push_record(&mut buf, &[frame.id.as_bytes()], &frame.dna);
        self.nucleotide.write_all(&buf)?;
        buf.clear();
        push_record(&mut buf, &[frame.id.as_bytes()], &frame.protein);
        self.protein.write_all(&buf)
    }

    /// Writes records already formatted with [`push_record`] (e.g. by worker threads).
    pub fn write_formatted(&mut self, nucleotide: &[u8], protein: &[u8]) -> io::Result<()> {
        self.nucleotide.write_all(nucleotide)?;
        self.protein.write_all(protein)
    }

    /// Publishes both files (see [`virnucpro_atomic::commit_all`]).
    pub fn commit(self) -> io::Result<()> {
        virnucpro_atomic::commit_all(self.into_files())
    }

    /// The two files, to commit together with the other outputs of a command.
    pub fn into_files(self) -> Vec<AtomicFile> {
        vec![self.nucleotide, self.protein]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FrameFastaWriter::create(dir.path()).unwrap();
        w.write_frame(&Frame {
            id: "c_chunk_1F1".into(),
            dna: b"ATGA".to_vec(),
            protein: b"M".to_vec(),
        })
        .unwrap();
        w.commit().unwrap();
        let nuc = std::fs::read_to_string(dir.path().join(NUCLEOTIDE_FILE)).unwrap();
        let prot = std::fs::read_to_string(dir.path().join(PROTEIN_FILE)).unwrap();
        assert_eq!(nuc, ">c_chunk_1F1\nATGA\n");
        assert_eq!(prot, ">c_chunk_1F1\nM\n");
    }
}
