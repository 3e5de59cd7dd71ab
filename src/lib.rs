//! VirNucPro in Rust: identify viral sequences in nucleotide FASTA.
//!
//! The modules follow the pipeline:
//! - [`input`]: FASTA/FASTQ reading, chunking, six-frame translation and frame selection;
//! - [`models`]: config + weights + tokenizer loading, one file per architecture, shared layers;
//! - [`kernels`]: hand-written CUDA kernels (only with the `cuda` feature);
//! - [`pipeline`]: batching and scheduling for `frames`, `embed`, `predict`, `prepare`/`train`;
//! - [`output`]: atomic writers, the published output files, summaries and plots.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into this library.

pub mod device;
pub mod input;
pub mod kernels;
pub mod models;
pub mod output;
pub mod pipeline;
