//! The prediction job of VirNucPro: nucleotide FASTA in, per-record virus scores out.
//!
//! - [`input`]: FASTA/FASTQ reading, chunking, six-frame translation and frame selection, work
//!   units;
//! - [`frames`]: the `frames` command (streaming translation), reused by `predict`;
//! - [`embed`]: the `embed` command (a FASTA's embeddings to a file);
//! - [`scheduler`]: work units spread over devices, results back in input order;
//! - [`predict`]: the `predict` command (frames -> embeddings -> classifier -> output files);
//! - [`fetch`]: the `fetch` command (models and classifier into the caches ahead of a run);
//! - [`output`]: the published files, the journal of a resumable run and the merge of shards;
//! - [`progress`]: the progress bar of `embed` and `extract`.
//!
//! Models, their loading and batching are `virnucpro-models`' job; where they come from is
//! `virnucpro-assets`'.

pub mod embed;
pub mod fetch;
pub mod frames;
pub mod input;
pub mod output;
pub mod predict;
pub mod progress;
pub mod scheduler;
