//! VirNucPro in Rust: identify viral sequences in nucleotide FASTA.
//!
//! This package is the `virnucpro` binary (`src/main.rs`, `src/cli/`: parses the command line
//! and calls the library crates) plus the diagnostics that use every layer below:
//! - [`doctor`]: the `doctor` command (device, kernels and models checked);
//! - [`bench`](mod@bench): the `bench` command (throughput of models and single operations);
//! - [`timing`]: measuring GPU work for both;
//! - [`progress`]: where both send their text as they run (the command line prints it);
//! - [`logging`]: which crates' log events the command line shows;
//! - [`env`]: the environment variables, read here only and passed to the crates as options;
//! - [`memory`]: the allocator's setting (the binary's allocator is mimalloc).
//!
//! The library crates, lowest layer first (docs/ARCHITECTURE.md): `virnucpro-kernels`,
//! `virnucpro-atomic`, `virnucpro-models`, `virnucpro-assets`, `virnucpro-core` (the prediction
//! job) and `virnucpro-train`.

pub mod bench;
pub mod doctor;
pub mod env;
pub mod logging;
pub mod memory;
pub mod progress;
pub mod timing;
