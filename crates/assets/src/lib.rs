//! Where VirNucPro's models come from, and loading one by name.
//!
//! - [`hub`]: a model directory or Hugging Face Hub ID -> local [`ModelFiles`] (HF cache,
//!   offline mode), and the check of cached files against their content hashes;
//! - [`download`]: URL -> verified cache (classifiers of presets);
//! - [`error`]: typed errors callers act on ([`ChecksumError`]: a file that is not what its hash
//!   names);
//! - [`presets`]: named model + classifier configurations;
//! - [`identity`]: what identifies a model's files in a run's journal;
//! - [`load`]: a model directory or Hub ID -> a loaded [`EmbeddingModel`].
//!
//! [`ModelFiles`]: virnucpro_models::files::ModelFiles
//! [`EmbeddingModel`]: virnucpro_models::embed::EmbeddingModel

pub mod download;
pub mod error;
pub mod hub;
pub mod identity;
pub mod load;
pub mod presets;

pub use error::ChecksumError;
