//! Output writers: atomic files, FASTA of kept frames, the published prediction files,
//! the per-record summary and plots; the units' formatted results, the journal of a resumable
//! run and the merge of shards.

pub mod atomic;
pub mod fasta;
pub mod journal;
pub mod merge;
pub mod plots;
pub mod predictions;
pub mod units;
