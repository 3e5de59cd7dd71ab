//! A model by name: a local directory or a Hugging Face Hub ID resolved ([`crate::hub`]) and
//! loaded ([`virnucpro_models::embed`]).
//!
//! ```no_run
//! use virnucpro_assets::load::load_embedding_model;
//! use virnucpro_models::device::{DTypeSpec, select_device, DeviceSpec};
//! use virnucpro_models::embed::{embed_sequences, LoadOptions};
//!
//! let device = select_device(DeviceSpec::Auto, &Default::default())?;
//! let model = load_embedding_model("Synthyra/FastESM2_650", &device, DTypeSpec::Auto,
//!                                  &LoadOptions::default())?;
//! let proteins = vec![("p1", b"MKV".to_vec()), ("p2", b"MSTNPKPQRK".to_vec())];
//! let out = embed_sequences(&model, &proteins, model.default_batch_tokens())?;
//! assert_eq!(out.embeddings.dims(), &[2, model.hidden_size]); // f32, on the CPU, input order
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::Context;
use candle_core::Device;
use virnucpro_models::device::DTypeSpec;
use virnucpro_models::embed::{load_from_files, EmbeddingModel, LoadOptions, RandomModel};

use crate::hub::resolve_model;

/// Loads an embedding model from a local directory or a Hugging Face Hub ID (see
/// [`crate::hub`]): architecture from `config.json`, weights from safetensors or
/// `pytorch_model.bin`, tokenizer from `vocab.txt` (ESM) or `tokenizer.json` (DNABERT).
///
/// `dtype` `Auto` resolves per family and device ([`virnucpro_models::device::resolve_dtype`]).
pub fn load_embedding_model(
    spec: &str,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    let files = resolve_model(spec)?;
    load_from_files(files, device, dtype, options)
        .with_context(|| format!("cannot load model `{spec}`"))
}

/// A model of real shape with seeded random weights (benchmarks only: its embeddings mean
/// nothing); see [`virnucpro_models::embed::random_embedding_model`]. `dnabert-s` needs
/// `tokenizer_from`, a DNABERT model directory or Hub ID whose `tokenizer.json` it uses.
pub fn random_embedding_model(
    kind: RandomModel,
    tokenizer_from: Option<&str>,
    device: &Device,
    dtype: DTypeSpec,
    options: &LoadOptions,
) -> anyhow::Result<EmbeddingModel> {
    let tokenizer = match (kind, tokenizer_from) {
        (RandomModel::DnaBertS, Some(spec)) => Some(resolve_model(spec)?),
        _ => None,
    };
    virnucpro_models::embed::random_embedding_model(
        kind,
        tokenizer.as_ref(),
        device,
        dtype,
        options,
    )
}
