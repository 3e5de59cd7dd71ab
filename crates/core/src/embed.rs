//! The `embed` command: reads FASTA records, embeds each one as given (no chunking) and writes an
//! embeddings file (docs/FORMATS.md), which [`read_embeddings`] reads back.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use virnucpro_assets::load::{load_embedding_model, random_embedding_model};
use virnucpro_atomic::AtomicFile;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::{select_device, DTypeSpec, DeviceSpec};
use virnucpro_models::embed::{
    embed_sequences_with, EmbedStats, EmbeddingModel, LoadOptions, RandomModel,
};
use virnucpro_models::esm::TokenDropout;
use virnucpro_models::options::ModelOptions;

use crate::input::fasta::{check_nucleotide_record, Alphabet, RecordReader};

/// Everything the `embed` command needs (the CLI fills it from its flags).
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    /// Model directory or Hub ID; optional with `random_weights` of an ESM kind.
    pub model: Option<String>,
    /// FASTA files (`-` = standard input), read in order.
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Padded tokens per batch; `None`: per device.
    pub batch_tokens: Option<usize>,
    pub esm_token_dropout: TokenDropout,
    pub random_weights: Option<RandomModel>,
    /// Kernel choices and test hooks, kept by the model.
    pub model_options: ModelOptions,
}

/// Runs `embed`: reads the FASTA inputs, embeds every record as given (no chunking), writes
/// `embeddings` `[N, hidden]` f32 with metadata `ids`, `model`, `pooling` (docs/FORMATS.md).
pub fn run(req: &EmbedRequest) -> anyhow::Result<EmbedStats> {
    check_output_path(&req.out)?;
    if req.inputs.is_empty() {
        bail!("no input files given");
    }
    // The whole input is held: `embed` is for protein/frame sets, not genomes. Whether it must
    // be nucleotides is known once the model is (below), so where each record was is kept.
    let mut reader = RecordReader::with_alphabet(&req.inputs, Alphabet::Any)?;
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut locations = Vec::new();
    while let Some(record) = reader.next() {
        let record = record?;
        locations.push(reader.location().cloned());
        records.push((record.id, record.seq));
    }
    if records.is_empty() {
        bail!(
            "no sequences to embed: {} hold(s) no FASTA records",
            req.inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let device = select_device(req.device, &req.model_options.kernels)?;
    let options = LoadOptions {
        esm_token_dropout: req.esm_token_dropout,
        model: req.model_options.clone(),
    };
    let model = match (req.random_weights, &req.model) {
        (Some(kind), spec) => {
            tracing::warn!(
                "--random-weights {kind}: benchmark mode, the embeddings are meaningless"
            );
            random_embedding_model(kind, spec.as_deref(), &device, req.dtype, &options)?
        }
        (None, Some(spec)) => load_embedding_model(spec, &device, req.dtype, &options)?,
        (None, None) => bail!("--model is required (a model directory or a Hugging Face Hub ID)"),
    };
    if model.family == ModelFamily::DnaBert {
        // A nucleotide model: protein records are refused before it runs.
        for ((id, seq), location) in records.iter().zip(&locations) {
            if let Some(location) = location {
                check_nucleotide_record(id, seq, location)
                    .map_err(|e| anyhow::anyhow!("{e}; {} is a nucleotide model", model.source))?;
            }
        }
    }
    warn_on_alphabet_mismatch(&model, &records);
    let budget = req
        .batch_tokens
        .unwrap_or_else(|| model.default_batch_tokens());

    let progress = crate::progress::bar(records.len() as u64, "sequences");
    let result = embed_sequences_with(&model, &records, budget, &mut |done| {
        if let Some(p) = &progress {
            p.set_position(done as u64);
        }
    });
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    let out = result?;

    let ids: Vec<&str> = records.iter().map(|(id, _)| id.as_str()).collect();
    write_embeddings(
        &req.out,
        &out.embeddings,
        &ids,
        &model.source,
        &model.pooling,
    )?;
    let s = &out.stats;
    tracing::info!(
        "embedded {} sequences ({} tokens, {} batches) in {:.2}s: {:.1} sequences/s, {:.0} tokens/s -> {}",
        s.sequences,
        s.tokens,
        s.batches,
        s.seconds,
        s.sequences as f64 / s.seconds.max(1e-9),
        s.tokens as f64 / s.seconds.max(1e-9),
        req.out.display()
    );
    Ok(out.stats)
}

/// A DNA file given to a protein model (or the reverse) still runs; say so.
fn warn_on_alphabet_mismatch(model: &EmbeddingModel, records: &[(String, Vec<u8>)]) {
    let (mut nucleotide, mut total) = (0usize, 0usize);
    for (_, seq) in records.iter().take(1000) {
        total += seq.len();
        nucleotide += seq
            .iter()
            .filter(|b| {
                matches!(
                    b.to_ascii_uppercase(),
                    b'A' | b'C' | b'G' | b'T' | b'U' | b'N'
                )
            })
            .count();
    }
    if total == 0 {
        return;
    }
    let looks_dna = nucleotide as f64 / total as f64 > 0.95;
    match (model.family, looks_dna) {
        (ModelFamily::Esm, true) => tracing::warn!(
            "the input looks like nucleotides but {} is a protein model; translate first \
             (`virnucpro frames`) or use a DNABERT model",
            model.source
        ),
        (ModelFamily::DnaBert, false) => tracing::warn!(
            "the input does not look like DNA but {} is a nucleotide model",
            model.source
        ),
        _ => {}
    }
}

/// Fails early, before any model is loaded, when the output cannot be written.
fn check_output_path(out: &Path) -> anyhow::Result<()> {
    if out.is_dir() {
        bail!(
            "--out {} is a directory; give a file name such as embeddings.safetensors",
            out.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Writes an embeddings file (docs/FORMATS.md) atomically.
pub fn write_embeddings(
    out: &Path,
    embeddings: &Tensor,
    ids: &[&str],
    model: &str,
    pooling: &str,
) -> anyhow::Result<()> {
    let embeddings = embeddings
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .contiguous()?;
    let metadata = HashMap::from([
        ("ids".to_string(), serde_json::to_string(ids)?),
        ("model".to_string(), model.to_string()),
        ("pooling".to_string(), pooling.to_string()),
    ]);
    let bytes = safetensors::serialize([("embeddings", &embeddings)], Some(metadata))
        .context("cannot serialize embeddings")?;
    let mut file =
        AtomicFile::create(out).with_context(|| format!("cannot write {}", out.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.commit())
        .with_context(|| format!("cannot write {}", out.display()))
}

/// An embeddings file read back (docs/FORMATS.md).
#[derive(Debug)]
pub struct EmbeddingFile {
    /// `[N, hidden]` f32 on the CPU.
    pub embeddings: Tensor,
    pub ids: Vec<String>,
    /// `model` metadata (absent in some reference files).
    pub model: Option<String>,
    pub pooling: Option<String>,
}

/// Reads an embeddings file written by `embed` (or a reference file of the same layout).
pub fn read_embeddings(path: &Path) -> anyhow::Result<EmbeddingFile> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read embeddings {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let view = st
        .tensor("embeddings")
        .with_context(|| format!("{} has no `embeddings` tensor", path.display()))?;
    let embeddings =
        candle_core::safetensors::Load::load(&view, &Device::Cpu)?.to_dtype(DType::F32)?;
    let ids: Vec<String> = match meta.get("ids") {
        Some(s) => serde_json::from_str(s)
            .with_context(|| format!("{}: metadata `ids` is not a JSON list", path.display()))?,
        None => bail!("{} has no `ids` metadata", path.display()),
    };
    if embeddings.dims().first() != Some(&ids.len()) {
        bail!(
            "{}: {} ids for embeddings of shape {:?}",
            path.display(),
            ids.len(),
            embeddings.dims()
        );
    }
    Ok(EmbeddingFile {
        embeddings,
        ids,
        model: meta.get("model").cloned(),
        pooling: meta.get("pooling").cloned(),
    })
}
