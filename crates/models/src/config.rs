//! Which architecture a checkpoint holds, read from its `config.json` (`model_type`).

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::dnabert::DnaBertConfig;
use super::esm::EsmConfig;

/// The two embedding-model families of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// ESM2 / FastESM2 protein language models.
    Esm,
    /// DNABERT-2 / DNABERT-S nucleotide models (MosaicBERT with ALiBi).
    DnaBert,
}

impl ModelFamily {
    /// Prefix that some checkpoints put before every encoder tensor; optional when loading.
    pub fn checkpoint_prefix(self) -> &'static str {
        match self {
            Self::Esm => "esm.",
            Self::DnaBert => "bert.",
        }
    }

    /// The pooling rule (docs/PIPELINE.md §4), as written to embedding files.
    pub fn pooling(self) -> &'static str {
        match self {
            Self::Esm => "mean over residue positions 1..=min(len,1024); BOS/EOS excluded",
            Self::DnaBert => "mean over all token positions, [CLS] and [SEP] included",
        }
    }

    /// What kind of sequence the family reads.
    pub fn alphabet(self) -> &'static str {
        match self {
            Self::Esm => "protein",
            Self::DnaBert => "DNA",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Esm => "ESM2",
            Self::DnaBert => "DNABERT",
        })
    }
}

/// `model_type` values this build can load, and what they map to.
pub const SUPPORTED_MODEL_TYPES: &str =
    "\"esm\" / \"fast_esm\" (ESM2, FastESM2) and \"bert\" (DNABERT-2/-S, MosaicBERT with ALiBi)";

/// A parsed `config.json`.
#[derive(Clone)]
pub enum ModelConfig {
    Esm(EsmConfig),
    DnaBert(DnaBertConfig),
}

#[derive(Deserialize)]
struct ModelTypeOnly {
    model_type: Option<String>,
}

impl ModelConfig {
    /// Reads and dispatches `config.json` on its `model_type`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// `origin` names the file in error messages.
    pub fn from_json(text: &str, origin: &str) -> anyhow::Result<Self> {
        let probe: ModelTypeOnly = serde_json::from_str(text)
            .with_context(|| format!("{origin} is not a valid model config.json"))?;
        let Some(model_type) = probe.model_type else {
            bail!("{origin} has no `model_type`; supported model types: {SUPPORTED_MODEL_TYPES}");
        };
        match model_type.as_str() {
            "esm" | "fast_esm" => {
                let cfg: EsmConfig = serde_json::from_str(text).with_context(|| {
                    format!("{origin}: invalid config for model_type \"{model_type}\"")
                })?;
                cfg.validate()
                    .map_err(|e| anyhow::anyhow!("{origin}: unsupported ESM configuration: {e}"))?;
                Ok(Self::Esm(cfg))
            }
            "bert" => {
                let cfg: DnaBertConfig = serde_json::from_str(text).with_context(|| {
                    format!("{origin}: invalid config for model_type \"bert\" (DNABERT)")
                })?;
                Ok(Self::DnaBert(cfg))
            }
            other => bail!(
                "{origin}: model_type \"{other}\" is not supported; supported model types: \
                 {SUPPORTED_MODEL_TYPES}"
            ),
        }
    }

    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Esm(_) => ModelFamily::Esm,
            Self::DnaBert(_) => ModelFamily::DnaBert,
        }
    }

    /// The width of the model's hidden states (and of its pooled embeddings).
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Esm(c) => c.hidden_size,
            Self::DnaBert(c) => c.hidden_size,
        }
    }
}

// By hand: the per-family config structs need not implement Debug.
impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Esm(c) => f.debug_tuple("Esm").field(c).finish(),
            Self::DnaBert(_) => f.write_str("DnaBert(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_model_type_is_named() {
        let err = ModelConfig::from_json(r#"{"model_type": "llama"}"#, "x/config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"llama\""), "{err}");
        assert!(err.contains("fast_esm") && err.contains("bert"), "{err}");
    }

    #[test]
    fn missing_field_names_file() {
        let err = ModelConfig::from_json(r#"{"model_type": "esm"}"#, "x/config.json").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("x/config.json") && msg.contains("vocab_size"),
            "{msg}"
        );
    }
}
