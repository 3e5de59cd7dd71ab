//! The local files of one model, as resolved from a directory or the Hugging Face cache
//! (`virnucpro-assets`), and what they say about the model before it is loaded.

use std::path::{Path, PathBuf};

use crate::config::{ModelConfig, ModelFamily};
use crate::weights::WeightFiles;

/// Everything needed to build a model, as local paths.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user asked for (directory or Hub ID), for logs and output metadata.
    pub source: String,
    pub config_path: PathBuf,
    pub config: ModelConfig,
    pub weights: WeightFiles,
    /// `vocab.txt` (ESM) or `tokenizer.json` (DNABERT).
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    pub fn family(&self) -> ModelFamily {
        self.config.family()
    }

    /// The hidden size, from `config.json`.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }

    /// Every file the model is built from: config, tokenizer, weights.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.config_path.as_path(), self.tokenizer.as_path()];
        v.extend(self.weights.files.iter().map(PathBuf::as_path));
        v
    }
}
