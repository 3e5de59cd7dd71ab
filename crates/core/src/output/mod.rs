//! Output writers: FASTA of kept frames, the published prediction files and the per-record
//! summary; the units' formatted results, the fingerprint and journal of a resumable run and the
//! merge of shards. (Atomic files: `virnucpro-atomic`; plots: `virnucpro-train`.)

pub mod fasta;
pub mod fingerprint;
pub mod journal;
pub mod merge;
pub mod predictions;
pub mod units;
