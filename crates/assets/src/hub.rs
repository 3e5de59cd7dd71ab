//! Model resolution: a local directory, or a Hugging Face Hub ID resolved through the standard HF
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), downloading
//! what is missing unless `HF_HUB_OFFLINE` is set.
//!
//! The files fetched are `config.json`, the tokenizer (`vocab.txt` for ESM, `tokenizer.json` for
//! DNABERT, plus `tokenizer_config.json` / `special_tokens_map.json` when present) and the weights
//! (`model.safetensors`, else `model.safetensors.index.json` + shards, else `pytorch_model.bin`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use virnucpro_models::config::{ModelConfig, ModelFamily};
use virnucpro_models::files::ModelFiles;
use virnucpro_models::weights::{shard_names, WeightFiles, WEIGHT_CANDIDATES};

use crate::error::ChecksumError;

/// Default protein model of the pipeline.
pub const DEFAULT_PROTEIN_MODEL: &str = "Synthyra/FastESM2_650";
/// Default nucleotide model of the pipeline.
pub const DEFAULT_NUCLEOTIDE_MODEL: &str = "zhihan1996/DNABERT-S";
/// The protein model of the original VirNucPro release.
pub const ESM2_3B_MODEL: &str = "facebook/esm2_t36_3B_UR50D";

/// Optional tokenizer side files, fetched when the repository has them.
const TOKENIZER_EXTRAS: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// A resolved file checked against the name of its blob in the Hugging Face cache
/// (`models--org--name/snapshots/<rev>/<file>` links to `blobs/<hash>`): the cache names a file
/// stored with Git LFS (weights) by the sha256 of its content and a small file kept in git
/// (config, tokenizer) by its git blob SHA-1, `sha1("blob <size>\0" + content)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// The content hashes to the blob's name; `algo` is `sha256` or `git-sha1`.
    Match { algo: &'static str },
    /// It does not: the file changed after it was downloaded (bit rot, a bad copy).
    Mismatch {
        algo: &'static str,
        expected: String,
        actual: String,
    },
    /// Not a blob of a Hugging Face cache (a local model directory, a cache copied without its
    /// links), or a blob whose name is not a hash: nothing to check against.
    NotABlob,
}

/// Checks `path` (a file as resolved, usually a snapshot link) against its cache blob name.
pub fn check_blob(path: &Path) -> std::io::Result<BlobCheck> {
    use sha1::Digest as _;
    use std::io::Read as _;
    let real = std::fs::canonicalize(path)?;
    let in_blobs = real
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "blobs"))
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .is_some_and(|repo| repo.to_string_lossy().contains("--"));
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let hex = !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit());
    let algo = match name.len() {
        64 if in_blobs && hex => "sha256",
        40 if in_blobs && hex => "git-sha1",
        _ => return Ok(BlobCheck::NotABlob),
    };
    let mut file = std::fs::File::open(&real)?;
    let size = file.metadata()?.len();
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    if algo == "git-sha1" {
        sha1.update(format!("blob {size}\0").as_bytes());
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if algo == "sha256" {
            sha256.update(&buf[..n]);
        } else {
            sha1.update(&buf[..n]);
        }
    }
    let actual: String = if algo == "sha256" {
        to_hex(&sha256.finalize())
    } else {
        to_hex(&sha1.finalize())
    };
    Ok(if actual == name {
        BlobCheck::Match { algo }
    } else {
        BlobCheck::Mismatch {
            algo,
            expected: name,
            actual,
        }
    })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks every file of a resolved model against the content hashes the Hugging Face cache
/// names its blobs by ([`check_blob`]). Returns a one-line summary, or an error naming the file
/// whose content does not match, with the expected and actual hash and what to do.
pub fn verify_cache_hashes(files: &ModelFiles) -> anyhow::Result<String> {
    let (mut sha256, mut sha1, mut other) = (0, 0, 0);
    for path in files.paths() {
        let check = check_blob(path)
            .with_context(|| format!("cannot read {} to check its hash", path.display()))?;
        match check {
            BlobCheck::Match { algo: "sha256" } => sha256 += 1,
            BlobCheck::Match { .. } => sha1 += 1,
            BlobCheck::NotABlob => other += 1,
            BlobCheck::Mismatch {
                algo,
                expected,
                actual,
            } => {
                let blob = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                return Err(ChecksumError::HubBlob {
                    path: path.to_path_buf(),
                    blob,
                    source_id: files.source.clone(),
                    algorithm: algo,
                    expected,
                    actual,
                }
                .into());
            }
        }
    }
    Ok(match (sha256 + sha1, other) {
        (0, _) => "not hash-checked (a local directory: only the Hugging Face cache names files \
                   by their content hashes)"
            .to_string(),
        (n, 0) => format!(
            "{n} files match the content hashes the Hugging Face cache names them by ({sha256} \
             sha256, {sha1} git SHA-1)"
        ),
        (n, m) => format!(
            "{n} files match their Hugging Face cache hashes ({sha256} sha256, {sha1} git \
             SHA-1); {m} not hash-checked (not links into the cache's blobs/)"
        ),
    })
}

/// Where the Hub cache lives and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The `hub` cache directory (holding `models--org--name/`).
    pub cache_dir: Option<PathBuf>,
    pub offline: bool,
    /// `HF_ENDPOINT` override (mirrors, tests).
    pub endpoint: Option<String>,
    /// `HF_TOKEN`; without it the token file of the cache (`huggingface-cli login`) is used.
    pub token: Option<String>,
}

impl HubOptions {
    /// From `HF_HUB_CACHE`, `HF_HOME`, `HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and `HF_TOKEN`, as
    /// the Python `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| {
                var("HOME").map(|h| {
                    PathBuf::from(h)
                        .join(".cache")
                        .join("huggingface")
                        .join("hub")
                })
            });
        let offline = var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        }
    }
}

/// Resolves `spec` (a model directory or a Hub ID) with the environment's Hub settings.
pub fn resolve_model(spec: &str) -> anyhow::Result<ModelFiles> {
    resolve_model_with(spec, &HubOptions::from_env())
}

/// Resolves `spec` with explicit Hub settings.
pub fn resolve_model_with(spec: &str, hub: &HubOptions) -> anyhow::Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return resolve_from(spec, &LocalDir(path.to_path_buf()));
    }
    if path.exists() {
        bail!(
            "model `{spec}` is a file; a model is given as a directory (config.json, weights, \
             tokenizer) or a Hugging Face Hub ID such as {DEFAULT_PROTEIN_MODEL}"
        );
    }
    if !looks_like_hub_id(spec) {
        bail!(
            "model directory `{spec}` does not exist (and it is not a Hugging Face Hub ID of the \
             form org/name)"
        );
    }
    let repo = HubRepo::new(spec, hub)?;
    resolve_from(spec, &repo).with_context(|| {
        format!("`{spec}` is not a local directory, so it was looked up as a Hugging Face Hub ID")
    })
}

/// Resolves a model and checks it is of the family its flag is for.
pub fn resolve_family(spec: &str, want: ModelFamily, flag: &str) -> anyhow::Result<ModelFiles> {
    let files = resolve_model(spec)?;
    if files.family() != want {
        bail!(
            "{flag} {spec} is a {} model, but {flag} needs a {want} model ({})",
            files.family(),
            match want {
                ModelFamily::DnaBert => "e.g. zhihan1996/DNABERT-S",
                ModelFamily::Esm => "e.g. Synthyra/FastESM2_650 or facebook/esm2_t36_3B_UR50D",
            }
        );
    }
    Ok(files)
}

/// `org/name` or `name`: letters, digits, `-`, `_`, `.`; no path syntax.
fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Where model files come from.
trait FileSource {
    /// Local path of `name`, fetching it if needed; `None` when the source does not have it.
    fn fetch(&self, name: &str) -> anyhow::Result<Option<PathBuf>>;
    /// Local path of `name` if it is already here (no network).
    fn cached(&self, name: &str) -> Option<PathBuf>;
    /// Error for a required file that is not there.
    fn missing(&self, name: &str) -> anyhow::Error;
}

struct LocalDir(PathBuf);

impl FileSource for LocalDir {
    fn fetch(&self, name: &str) -> anyhow::Result<Option<PathBuf>> {
        Ok(self.cached(name))
    }

    fn cached(&self, name: &str) -> Option<PathBuf> {
        let p = self.0.join(name);
        p.is_file().then_some(p)
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{name} not found in model directory {}; a model directory holds config.json, the \
             weights (model.safetensors or pytorch_model.bin) and the tokenizer (vocab.txt for \
             ESM, tokenizer.json for DNABERT)",
            self.0.display()
        )
    }
}

/// A Hub repository seen through the local cache, and the network unless offline.
struct HubRepo {
    id: String,
    cache: hf_hub::Cache,
    cache_dir: PathBuf,
    api: Option<hf_hub::api::sync::ApiRepo>,
    /// The repository's file list, asked once when a file is not cached.
    listing: std::sync::OnceLock<Vec<String>>,
}

impl HubRepo {
    fn new(id: &str, hub: &HubOptions) -> anyhow::Result<Self> {
        let Some(cache_dir) = hub.cache_dir.clone() else {
            bail!(
                "cannot locate the Hugging Face cache for `{id}`: set HF_HOME (or HF_HUB_CACHE), \
                 or pass a local model directory"
            );
        };
        let cache = hf_hub::Cache::new(cache_dir.clone());
        let api = if hub.offline {
            None
        } else {
            let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                .with_progress(std::io::stderr().is_terminal());
            if let Some(endpoint) = &hub.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            if let Some(token) = &hub.token {
                builder = builder.with_token(Some(token.clone()));
            }
            let api = builder
                .build()
                .context("cannot set up the Hugging Face Hub client")?;
            Some(api.model(id.to_string()))
        };
        Ok(Self {
            id: id.to_string(),
            cache,
            cache_dir,
            api,
            listing: std::sync::OnceLock::new(),
        })
    }

    fn how_to_fetch(&self) -> String {
        format!(
            "fetch it on a machine with network access with `huggingface-cli download {id}` \
             (into the same HF cache: {cache}), or give a local directory holding its files \
             instead of the ID",
            id = self.id,
            cache = self.cache_dir.display()
        )
    }

    fn listing(&self, api: &hf_hub::api::sync::ApiRepo) -> anyhow::Result<&Vec<String>> {
        if let Some(l) = self.listing.get() {
            return Ok(l);
        }
        let info = api.info().map_err(|e| {
            anyhow::anyhow!(
                "cannot list Hugging Face Hub repository `{}`: {e}; check the ID and your \
                 network (set HF_TOKEN for gated models), or set HF_HUB_OFFLINE=1 to use only \
                 the local cache; otherwise {}",
                self.id,
                self.how_to_fetch()
            )
        })?;
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok(self.listing.get_or_init(|| files))
    }
}

impl FileSource for HubRepo {
    fn cached(&self, name: &str) -> Option<PathBuf> {
        self.cache.model(self.id.clone()).get(name)
    }

    fn fetch(&self, name: &str) -> anyhow::Result<Option<PathBuf>> {
        if let Some(p) = self.cached(name) {
            return Ok(Some(p));
        }
        let Some(api) = &self.api else {
            return Ok(None);
        };
        if !self.listing(api)?.iter().any(|f| f == name) {
            return Ok(None);
        }
        tracing::info!(
            "downloading {name} of {} from the Hugging Face Hub",
            self.id
        );
        let path = api.get(name).map_err(|e| {
            anyhow::anyhow!(
                "cannot download {name} of `{}` from the Hugging Face Hub: {e}; {}",
                self.id,
                self.how_to_fetch()
            )
        })?;
        Ok(Some(path))
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        if self.api.is_none() {
            let repo_dir = self
                .cache_dir
                .join(format!("models--{}", self.id.replace('/', "--")));
            let what = if repo_dir.is_dir() {
                format!("{name} of `{}` is not in the Hugging Face cache", self.id)
            } else {
                format!(
                    "model `{}` is not in the Hugging Face cache ({} does not exist)",
                    self.id,
                    repo_dir.display()
                )
            };
            anyhow::anyhow!("{what} and HF_HUB_OFFLINE is set; {}", self.how_to_fetch())
        } else {
            anyhow::anyhow!(
                "Hugging Face Hub repository `{}` has no {name}; is it a model of a supported \
                 architecture (ESM2/FastESM2, DNABERT-S)?",
                self.id
            )
        }
    }
}

fn require(src: &dyn FileSource, name: &str) -> anyhow::Result<PathBuf> {
    src.fetch(name)?.ok_or_else(|| src.missing(name))
}

fn resolve_from(spec: &str, src: &dyn FileSource) -> anyhow::Result<ModelFiles> {
    let config_path = require(src, "config.json")?;
    let config = ModelConfig::from_file(&config_path)?;
    let tokenizer_name = match config.family() {
        ModelFamily::Esm => "vocab.txt",
        ModelFamily::DnaBert => "tokenizer.json",
    };
    let tokenizer = require(src, tokenizer_name)?;
    for extra in TOKENIZER_EXTRAS {
        // Optional: a failure here must not stop a model whose required files are present.
        if let Err(e) = src.fetch(extra) {
            tracing::debug!("optional {extra} not fetched: {e:#}");
        }
    }
    let weights = resolve_weights(src)?;
    Ok(ModelFiles {
        source: spec.to_string(),
        config_path,
        config,
        weights,
        tokenizer,
    })
}

/// The first weight layout already present wins (no network); otherwise the first the source
/// has, fetched.
fn resolve_weights(src: &dyn FileSource) -> anyhow::Result<WeightFiles> {
    let mut chosen = WEIGHT_CANDIDATES
        .iter()
        .find_map(|&c| src.cached(c.0).map(|p| (c, p)));
    if chosen.is_none() {
        for c in WEIGHT_CANDIDATES {
            if let Some(p) = src.fetch(c.0)? {
                chosen = Some((c, p));
                break;
            }
        }
    }
    let Some(((_, format, is_index), path)) = chosen else {
        return Err(src.missing("model.safetensors (or pytorch_model.bin)"));
    };
    let files = if is_index {
        shard_names(&path)?
            .iter()
            .map(|s| require(src, s))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        vec![path]
    };
    Ok(WeightFiles { format, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_syntax() {
        assert!(looks_like_hub_id("Synthyra/FastESM2_650"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id(""));
    }
}
