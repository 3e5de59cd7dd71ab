//! Output writers: atomic files, FASTA of kept frames, the published prediction files,
//! the per-record summary and plots.

pub mod atomic;
pub mod fasta;
pub mod plots;
pub mod predictions;
