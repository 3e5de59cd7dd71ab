//! Presets: one name for a nucleotide model, a protein model, a classifier and its chunk length.
//!
//! Two are built in (`virnucpro-300`, `virnucpro-500`: DNABERT-S + ESM2-3B + the published
//! VirNucPro classifiers, downloaded from GitHub and pinned by their git blob hash). More come
//! from a TOML presets file (`--presets FILE`, default `$XDG_CONFIG_HOME/virnucpro/presets.toml`),
//! one table per name:
//!
//! ```toml
//! [fastesm-500]
//! dnabert = "zhihan1996/DNABERT-S"
//! esm = "Synthyra/FastESM2_650"
//! classifier = "https://example.org/fastesm_500.safetensors"   # or a path
//! sha256 = "…"          # required for a URL
//! chunk_len = 500
//! esm_token_dropout = "auto"   # optional: auto, on, off
//! description = "…"     # optional, shown by `virnucpro presets`
//! ```
//!
//! [`resolve`] applies a preset to what the command line gave: a flag that contradicts the
//! preset is an error, and a URL classifier is fetched into the cache
//! ([`crate::download::Cache`]). `virnucpro train` writes such a table next to the classifier it
//! makes ([`preset_toml_for`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use virnucpro_models::classifier::same_model;
use virnucpro_models::esm::TokenDropout;

use crate::download::{is_url, Cache, Digest};
use crate::hub::{DEFAULT_NUCLEOTIDE_MODEL, ESM2_3B_MODEL};

/// Where the published VirNucPro classifiers are downloaded from (a fixed commit).
pub const PUBLISHED_BASE_URL: &str =
    "https://github.com/Li-Jing-1997/VirNucPro/raw/0f93f2755a7ea1acd3ff1bcf182892f960ef3326";

/// The built-in presets: name, chunk length, classifier file, its git blob SHA-1.
const BUILTIN: [(&str, usize, &str, &str); 2] = [
    (
        "virnucpro-300",
        300,
        "300_model.pth",
        "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
    ),
    (
        "virnucpro-500",
        500,
        "500_model.pth",
        "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
    ),
];

/// Where a preset's classifier comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassifierSource {
    /// Downloaded into the cache and verified.
    Url { url: String, digest: Digest },
    /// A local file, verified when a digest is given.
    File {
        path: PathBuf,
        digest: Option<Digest>,
    },
}

impl std::fmt::Display for ClassifierSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassifierSource::Url { url, .. } => f.write_str(url),
            ClassifierSource::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Where a preset is defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    File(PathBuf),
}

/// A named model configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    pub name: String,
    pub description: Option<String>,
    /// Nucleotide model: directory or Hub ID.
    pub dnabert: String,
    /// Protein model: directory or Hub ID.
    pub esm: String,
    pub classifier: ClassifierSource,
    /// The chunk length the classifier was trained for.
    pub chunk_len: usize,
    /// `None`: the command line's (default auto).
    pub esm_token_dropout: Option<TokenDropout>,
    pub origin: Origin,
}

/// The built-in presets (the published VirNucPro classifiers with DNABERT-S + ESM2-3B).
pub fn builtin_presets() -> Vec<Preset> {
    BUILTIN
        .iter()
        .map(|&(name, chunk_len, file, blob)| Preset {
            name: name.to_string(),
            description: Some(format!(
                "the published VirNucPro {chunk_len}-bp classifier (DNABERT-S + ESM2-3B)"
            )),
            dnabert: DEFAULT_NUCLEOTIDE_MODEL.to_string(),
            esm: ESM2_3B_MODEL.to_string(),
            classifier: ClassifierSource::Url {
                url: format!("{PUBLISHED_BASE_URL}/{file}"),
                digest: Digest::git_blob_sha1(blob).expect("built-in hashes are valid"),
            },
            chunk_len,
            esm_token_dropout: None,
            origin: Origin::BuiltIn,
        })
        .collect()
}

/// One line per built-in preset, for `--help` (short lines: clap wraps at 100 columns).
pub fn builtin_help() -> String {
    let mut s = String::new();
    for p in builtin_presets() {
        let file = match &p.classifier {
            ClassifierSource::Url { url, .. } => crate::download::file_name_of(url),
            ClassifierSource::File { path, .. } => path.display().to_string(),
        };
        let _ = writeln!(
            s,
            "  {:<14} {}-bp chunks: {} + {} + {file}",
            p.name, p.chunk_len, p.dnabert, p.esm
        );
    }
    s.push_str(
        "  The classifiers are downloaded once from github.com/Li-Jing-1997/VirNucPro, verified.\n",
    );
    s
}

/// `$XDG_CONFIG_HOME/virnucpro/presets.toml`, else `$HOME/.config/virnucpro/presets.toml`.
pub fn default_presets_file() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CONFIG_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("virnucpro").join("presets.toml"))
}

/// A table of a presets file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    dnabert: String,
    esm: String,
    classifier: String,
    #[serde(default)]
    sha256: Option<String>,
    chunk_len: i64,
    #[serde(default)]
    esm_token_dropout: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Parses the presets in `text` (the file `path`; relative paths in it are relative to its
/// directory). Errors name the file and the preset.
pub fn parse_presets_file(text: &str, path: &Path) -> anyhow::Result<Vec<Preset>> {
    let shown = path.display();
    let entries: BTreeMap<String, FileEntry> = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "presets file {shown} is not valid: {}; each preset is a table [NAME] with dnabert, \
             esm, classifier, sha256 (for a URL), chunk_len and optionally esm_token_dropout and \
             description (docs/FORMATS.md, \"Presets file\")",
            e.to_string().trim_end()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let builtin = builtin_presets();
    let mut out = Vec::with_capacity(entries.len());
    for (name, e) in entries {
        let at = format!("presets file {shown}, preset [{name}]");
        if builtin.iter().any(|b| b.name == name) {
            bail!("{at}: `{name}` is the name of a built-in preset; give yours another name");
        }
        if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("{at}: a preset name must be one word without spaces");
        }
        let chunk_len = usize::try_from(e.chunk_len)
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| {
                format!(
                    "{at}: chunk_len = {} is not a positive number of bases (the chunk length \
                     the classifier was trained for, e.g. 300 or 500)",
                    e.chunk_len
                )
            })?;
        for (key, value) in [("dnabert", &e.dnabert), ("esm", &e.esm)] {
            if value.trim().is_empty() {
                bail!("{at}: `{key}` is empty; give a model directory or a Hugging Face Hub ID");
            }
        }
        let digest = e
            .sha256
            .as_deref()
            .map(Digest::sha256)
            .transpose()
            .map_err(|m| anyhow::anyhow!("{at}: sha256: {m}; compute it with `sha256sum FILE`"))?;
        let classifier = if is_url(&e.classifier) {
            let Some(digest) = digest else {
                bail!(
                    "{at}: the classifier is a URL, so `sha256` is required (the SHA-256 of the \
                     published file, from `sha256sum FILE`): a download is only used when its \
                     hash is the expected one"
                );
            };
            ClassifierSource::Url {
                url: e.classifier.trim().to_string(),
                digest,
            }
        } else if e.classifier.contains("://") {
            bail!(
                "{at}: classifier `{}`: only http:// and https:// URLs can be downloaded; give \
                 such a URL or a local path",
                e.classifier
            );
        } else if e.classifier.trim().is_empty() {
            bail!("{at}: `classifier` is empty; give a path or an http(s) URL");
        } else {
            ClassifierSource::File {
                path: base.join(&e.classifier),
                digest,
            }
        };
        let esm_token_dropout = e
            .esm_token_dropout
            .as_deref()
            .map(str::parse::<TokenDropout>)
            .transpose()
            .map_err(|m| anyhow::anyhow!("{at}: esm_token_dropout: {m}"))?;
        out.push(Preset {
            description: e.description,
            dnabert: model_relative_to(base, &e.dnabert),
            esm: model_relative_to(base, &e.esm),
            classifier,
            chunk_len,
            esm_token_dropout,
            origin: Origin::File(path.to_path_buf()),
            name,
        });
    }
    Ok(out)
}

/// A model value of a presets file: a directory relative to the file when one exists there,
/// otherwise as written (a Hub ID, or a path relative to the working directory).
fn model_relative_to(base: &Path, spec: &str) -> String {
    let spec = spec.trim();
    let candidate = base.join(spec);
    if Path::new(spec).is_relative() && !base.as_os_str().is_empty() && candidate.is_dir() {
        candidate.display().to_string()
    } else {
        spec.to_string()
    }
}

/// The built-in presets and those of a presets file.
#[derive(Debug, Clone)]
pub struct PresetTable {
    presets: Vec<Preset>,
    /// The presets file consulted, and whether it exists.
    file: Option<(PathBuf, bool)>,
}

impl PresetTable {
    /// The built-ins plus `file` (`--presets`: must exist), else the default presets file when
    /// it exists.
    pub fn load(file: Option<&Path>) -> anyhow::Result<PresetTable> {
        let mut presets = builtin_presets();
        let (path, explicit) = match file {
            Some(f) => (Some(f.to_path_buf()), true),
            None => (default_presets_file(), false),
        };
        let mut consulted = None;
        if let Some(path) = path {
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    presets.extend(parse_presets_file(&text, &path)?);
                    consulted = Some((path, true));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                    consulted = Some((path, false));
                }
                Err(e) => bail!("cannot read the presets file {}: {e}", path.display()),
            }
        }
        Ok(PresetTable {
            presets,
            file: consulted,
        })
    }

    /// Built-ins only (tests, and machines without a presets file).
    pub fn builtin() -> PresetTable {
        PresetTable {
            presets: builtin_presets(),
            file: None,
        }
    }

    pub fn all(&self) -> &[Preset] {
        &self.presets
    }

    /// The presets file consulted and whether it exists.
    pub fn file(&self) -> Option<(&Path, bool)> {
        self.file.as_ref().map(|(p, e)| (p.as_path(), *e))
    }

    /// The preset called `name`, or an error listing those there are.
    pub fn get(&self, name: &str) -> anyhow::Result<&Preset> {
        if let Some(p) = self.presets.iter().find(|p| p.name == name) {
            return Ok(p);
        }
        let file = match &self.file {
            Some((p, true)) => format!(" (built in, and from {})", p.display()),
            Some((p, false)) => format!(
                " (built in; there is no presets file at {}: add yours there or pass --presets \
                 FILE)",
                p.display()
            ),
            None => String::new(),
        };
        bail!(
            "there is no preset `{name}`; the presets are {}{file}; `virnucpro presets` lists \
             them",
            self.names()
        )
    }

    fn names(&self) -> String {
        self.presets
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What to say when a command that needs a classifier got neither `--classifier` nor
    /// `--preset`.
    pub fn no_classifier_help(&self) -> String {
        let mut s = String::from(
            "no classifier given: pass --preset NAME for a ready configuration (models, classifier \
             and chunk length; the classifier is downloaded once), or --classifier FILE with \
             --chunk-len N for a classifier of your own. Presets:",
        );
        for p in &self.presets {
            let _ = write!(
                s,
                "\n  {} ({}-bp chunks, {} + {}){}",
                p.name,
                p.chunk_len,
                p.dnabert,
                p.esm,
                p.description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        s.push_str(
            "\nTo make a classifier (e.g. for FastESM2): `virnucpro prepare`, `extract`, `train` \
             (README, \"Training a classifier\").",
        );
        s
    }
}

/// What the command line said about models; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct ModelChoice {
    pub preset: Option<String>,
    pub dnabert: Option<String>,
    pub esm: Option<String>,
    pub classifier: Option<PathBuf>,
    pub chunk_len: Option<usize>,
    pub esm_token_dropout: Option<TokenDropout>,
}

/// The models of a run after the preset (if any) is applied; `None` where neither the command
/// line nor the preset says (the command's defaults apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub preset: Option<String>,
    pub dnabert: Option<String>,
    pub esm: Option<String>,
    /// A local file (a preset's URL is already fetched).
    pub classifier: Option<PathBuf>,
    pub chunk_len: Option<usize>,
    pub esm_token_dropout: Option<TokenDropout>,
}

/// [`ModelChoice`] with the preset applied but its classifier not yet fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub preset: Option<Preset>,
    pub dnabert: Option<String>,
    pub esm: Option<String>,
    pub classifier: Option<ClassifierSource>,
    pub chunk_len: Option<usize>,
    pub esm_token_dropout: Option<TokenDropout>,
}

/// Applies `preset` to `choice`: values the command line leaves out come from the preset, and a
/// flag that contradicts it is an error naming both. A model flag naming the same model (by
/// name, e.g. a local copy `/models/esm2_t36_3B_UR50D`) is allowed and wins: it says where the
/// model is.
pub fn apply(choice: &ModelChoice, preset: Option<&Preset>) -> anyhow::Result<Applied> {
    let Some(p) = preset else {
        return Ok(Applied {
            preset: None,
            dnabert: choice.dnabert.clone(),
            esm: choice.esm.clone(),
            classifier: choice
                .classifier
                .clone()
                .map(|path| ClassifierSource::File { path, digest: None }),
            chunk_len: choice.chunk_len,
            esm_token_dropout: choice.esm_token_dropout,
        });
    };
    let name = &p.name;
    if let Some(c) = &choice.classifier {
        bail!(
            "--classifier {} and --preset {name} both name a classifier (the preset's is {}); \
             drop --preset to use your classifier (with --dnabert, --esm and --chunk-len), or \
             drop --classifier",
            c.display(),
            p.classifier
        );
    }
    if let Some(n) = choice.chunk_len.filter(|&n| n != p.chunk_len) {
        bail!(
            "--chunk-len {n} contradicts --preset {name}, whose classifier was trained on \
             {}-bp chunks; drop --chunk-len{}",
            p.chunk_len,
            match sibling_hint(p, n) {
                Some(other) => format!(", or use --preset {other} (made for {n}-bp chunks)"),
                None => String::new(),
            }
        );
    }
    let model = |flag: &str, given: &Option<String>, preset_value: &str| match given {
        Some(g) if !same_model(g, preset_value) => bail!(
            "{flag} {g} contradicts --preset {name}, whose classifier was trained on \
                 features of {preset_value}; drop {flag} (or give the same model, e.g. a local \
                 copy of it), or drop --preset and pass --classifier"
        ),
        Some(g) => Ok(g.clone()),
        None => Ok(preset_value.to_string()),
    };
    let dnabert = model("--dnabert", &choice.dnabert, &p.dnabert)?;
    let esm = model("--esm", &choice.esm, &p.esm)?;
    let esm_token_dropout = match (choice.esm_token_dropout, p.esm_token_dropout) {
        (Some(g), Some(want)) if g != want => bail!(
            "--esm-token-dropout {g} contradicts --preset {name}, which sets it to {want}; drop \
             --esm-token-dropout"
        ),
        (g, want) => g.or(want),
    };
    Ok(Applied {
        preset: Some(p.clone()),
        dnabert: Some(dnabert),
        esm: Some(esm),
        classifier: Some(p.classifier.clone()),
        chunk_len: Some(p.chunk_len),
        esm_token_dropout,
    })
}

/// A built-in preset with the same models as `p` made for `chunk_len`, if any.
fn sibling_hint(p: &Preset, chunk_len: usize) -> Option<String> {
    builtin_presets()
        .into_iter()
        .find(|o| o.chunk_len == chunk_len && o.dnabert == p.dnabert && o.esm == p.esm)
        .map(|o| o.name)
}

/// The local path of a classifier source: a URL is fetched through `cache` (verified); a file
/// with a digest is verified.
pub fn classifier_path(
    source: &ClassifierSource,
    preset: Option<&str>,
    cache: &Cache,
) -> anyhow::Result<PathBuf> {
    let whose = preset
        .map(|n| format!("the classifier of preset `{n}`"))
        .unwrap_or_else(|| "the classifier".into());
    match source {
        ClassifierSource::Url { url, digest } => cache.fetch(url, digest).map_err(|e| {
            let mut msg = format!("cannot get {whose}: {e:#}");
            if let Some(name) = preset.filter(|_| cache.offline) {
                let _ = write!(
                    msg,
                    "; or run `virnucpro presets --fetch {name}` on a machine with network \
                     access and copy its download cache to {}; or, instead of --preset, pass \
                     the classifier file with --classifier FILE (and --dnabert, --esm, \
                     --chunk-len)",
                    cache.dir.display()
                );
            }
            anyhow::anyhow!(msg)
        }),
        ClassifierSource::File { path, digest } => {
            if let Some(digest) = digest {
                let actual = digest
                    .of_file(path)
                    .with_context(|| format!("cannot read {whose}, {}", path.display()))?;
                if &actual != digest {
                    bail!(
                        "{whose}, {}, does not have the expected {}: expected {}, actual {}; \
                         is it another version of the file?",
                        path.display(),
                        digest.algorithm(),
                        digest.hex(),
                        actual.hex()
                    );
                }
            }
            Ok(path.clone())
        }
    }
}

/// Resolves `choice` against the presets (built in and `presets_file`, see
/// [`PresetTable::load`]), fetching a preset's classifier into the cache of the environment
/// ([`Cache::from_env`], looked up only when a download is needed). `classifier_required`: a
/// command that scores (`predict`) fails here, with the list of presets, when neither
/// `--classifier` nor `--preset` is given. `progress`: a download progress bar on a terminal.
pub fn resolve(
    choice: &ModelChoice,
    presets_file: Option<&Path>,
    classifier_required: bool,
    progress: bool,
) -> anyhow::Result<Resolved> {
    resolve_with(choice, presets_file, classifier_required, &|| {
        Cache::from_env(progress)
    })
}

/// [`resolve`] with the cache given by `cache` (called only when a URL classifier is needed).
pub fn resolve_with(
    choice: &ModelChoice,
    presets_file: Option<&Path>,
    classifier_required: bool,
    cache: &dyn Fn() -> anyhow::Result<Cache>,
) -> anyhow::Result<Resolved> {
    // The presets file is read only when it matters: a run with --classifier never fails on it.
    let table = if choice.preset.is_some() || presets_file.is_some() {
        PresetTable::load(presets_file)?
    } else if classifier_required && choice.classifier.is_none() {
        // Only to list the presets in the error below.
        PresetTable::load(None).unwrap_or_else(|e| {
            tracing::warn!("{e:#}");
            PresetTable::builtin()
        })
    } else {
        PresetTable::builtin()
    };
    let preset = choice.preset.as_deref().map(|n| table.get(n)).transpose()?;
    let applied = apply(choice, preset)?;
    if classifier_required && applied.classifier.is_none() {
        bail!(table.no_classifier_help());
    }
    let name = applied.preset.as_ref().map(|p| p.name.as_str());
    let classifier = applied
        .classifier
        .as_ref()
        .map(|c| match c {
            ClassifierSource::Url { .. } => classifier_path(c, name, &cache()?),
            ClassifierSource::File { .. } => classifier_path(c, name, &Cache::unused()),
        })
        .transpose()?;
    if let Some(p) = &applied.preset {
        tracing::info!(
            "preset {}: --dnabert {} --esm {} --chunk-len {} --classifier {}",
            p.name,
            applied.dnabert.as_deref().unwrap_or_default(),
            applied.esm.as_deref().unwrap_or_default(),
            p.chunk_len,
            classifier
                .as_deref()
                .map(|c| c.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(Resolved {
        preset: applied.preset.map(|p| p.name),
        dnabert: applied.dnabert,
        esm: applied.esm,
        classifier,
        chunk_len: applied.chunk_len,
        esm_token_dropout: applied.esm_token_dropout,
    })
}

impl Resolved {
    /// The chunk length, or an error saying it is needed.
    pub fn require_chunk_len(&self) -> anyhow::Result<usize> {
        self.chunk_len.context(
            "--chunk-len N is required with --classifier: the chunk length the classifier was \
             trained for (300 or 500 for the published ones; `virnucpro train` also writes it \
             into STEM.preset.toml beside the classifier); or use --preset NAME, which sets it",
        )
    }
}

/// Whether a preset's classifier is available without the network, for `virnucpro presets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// In the cache (or a local file) at this path.
    Present(PathBuf),
    /// A URL not downloaded yet; it would go to this path.
    NotCached(PathBuf),
    /// A local file that does not exist.
    Missing(PathBuf),
}

/// Where `preset`'s classifier is, without the network (a cached file is not re-hashed here).
pub fn availability(preset: &Preset, cache: &Cache) -> Availability {
    match &preset.classifier {
        ClassifierSource::Url { url, digest } => match cache.cached(url, digest) {
            Some(p) => Availability::Present(p),
            None => Availability::NotCached(cache.path_for(url, digest)),
        },
        ClassifierSource::File { path, .. } if path.is_file() => {
            Availability::Present(path.clone())
        }
        ClassifierSource::File { path, .. } => Availability::Missing(path.clone()),
    }
}

/// `virnucpro presets`: an aligned table (name, chunk length, models, classifier source, whether
/// it is cached and where) and lines saying where the cache and the presets file are.
pub fn render_table(table: &PresetTable, cache: Option<&Cache>) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "CHUNK_LEN".into(),
        "DNABERT".into(),
        "ESM".into(),
        "CACHED".into(),
        "CLASSIFIER".into(),
        "PATH".into(),
    ]];
    for p in table.all() {
        let (cached, path) = match cache.map(|c| availability(p, c)) {
            Some(Availability::Present(path)) => (
                match p.classifier {
                    ClassifierSource::Url { .. } => "yes",
                    ClassifierSource::File { .. } => "local",
                },
                path.display().to_string(),
            ),
            Some(Availability::NotCached(path)) => ("no", path.display().to_string()),
            Some(Availability::Missing(path)) => ("MISSING", path.display().to_string()),
            None => ("?", String::new()),
        };
        rows.push([
            p.name.clone(),
            p.chunk_len.to_string(),
            p.dnabert.clone(),
            p.esm.clone(),
            cached.into(),
            p.classifier.to_string(),
            path,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    match cache {
        Some(c) => {
            let _ = writeln!(
                out,
                "\ndownload cache: {}{}",
                c.dir.display(),
                if c.offline {
                    " (offline: VIRNUCPRO_OFFLINE or HF_HUB_OFFLINE is set)"
                } else {
                    ""
                }
            );
        }
        None => out
            .push_str("\ndownload cache: unknown (set VIRNUCPRO_CACHE, XDG_CACHE_HOME or HOME)\n"),
    }
    match table.file() {
        Some((path, true)) => {
            let _ = writeln!(out, "presets file: {}", path.display());
        }
        Some((path, false)) => {
            let _ = writeln!(
                out,
                "presets file: none at {} (docs/FORMATS.md, \"Presets file\", says how to write one)",
                path.display()
            );
        }
        None => {}
    }
    out.push_str(
        "Use one with `virnucpro predict --preset NAME INPUT... --out-dir DIR`; the models come \
         from the Hugging Face cache (downloaded on first use unless offline).\n",
    );
    out
}

/// The presets-file table `virnucpro train` writes next to a classifier it made: models and
/// chunk length from the classifier's metadata, `classifier` = its file name, its `sha256`.
/// `name` is the table name (usually the classifier's file stem).
pub fn preset_toml_for(
    name: &str,
    dnabert: &str,
    esm: &str,
    classifier_file_name: &str,
    sha256_hex: &str,
    chunk_len: usize,
) -> String {
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let key = if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        q(name)
    };
    format!(
        "# A virnucpro preset for the classifier {file}, written by `virnucpro train`.\n\
         # Use it with `virnucpro predict --presets THIS_FILE --preset {name_shown} INPUT...`,\n\
         # or copy the table into ~/.config/virnucpro/presets.toml.\n\
         # To share the classifier, publish {file} and replace `classifier` by its http(s)\n\
         # URL; keep `sha256`: a download is only used when its hash matches.\n\
         [{key}]\n\
         dnabert = {dnabert}\n\
         esm = {esm}\n\
         classifier = {classifier}\n\
         sha256 = {sha}\n\
         chunk_len = {chunk_len}\n",
        file = classifier_file_name,
        name_shown = name,
        dnabert = q(dnabert),
        esm = q(esm),
        classifier = q(classifier_file_name),
        sha = q(sha256_hex),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Vec<Preset>> {
        parse_presets_file(text, Path::new("/conf/presets.toml"))
    }

    const GOOD: &str = r#"
[fast-500]
dnabert = "zhihan1996/DNABERT-S"
esm = "Synthyra/FastESM2_650"
classifier = "https://example.org/fast_500.safetensors"
sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
chunk_len = 500
esm_token_dropout = "off"

[local]
dnabert = "zhihan1996/DNABERT-S"
esm = "Synthyra/FastESM2_650"
classifier = "models/mine.safetensors"
chunk_len = 300
description = "ours"
"#;

    #[test]
    fn builtin_presets_are_the_published_classifiers() {
        let b = builtin_presets();
        assert_eq!(b.len(), 2);
        for (p, len, file, blob) in [
            (
                &b[0],
                300,
                "300_model.pth",
                "a0b5b85e7c1e44f00cde146d091beb82b2c8e855",
            ),
            (
                &b[1],
                500,
                "500_model.pth",
                "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d",
            ),
        ] {
            assert_eq!(p.name, format!("virnucpro-{len}"));
            assert_eq!(p.chunk_len, len);
            assert_eq!(p.dnabert, "zhihan1996/DNABERT-S");
            assert_eq!(p.esm, "facebook/esm2_t36_3B_UR50D");
            assert_eq!(p.origin, Origin::BuiltIn);
            assert_eq!(
                p.classifier,
                ClassifierSource::Url {
                    url: format!(
                        "https://github.com/Li-Jing-1997/VirNucPro/raw/\
                         0f93f2755a7ea1acd3ff1bcf182892f960ef3326/{file}"
                    ),
                    digest: Digest::git_blob_sha1(blob).unwrap(),
                }
            );
        }
        let help = builtin_help();
        assert!(help.contains("virnucpro-300") && help.contains("virnucpro-500"));
    }

    #[test]
    fn presets_file_parses_with_relative_paths() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.len(), 2);
        let fast = p.iter().find(|p| p.name == "fast-500").unwrap();
        assert_eq!(fast.chunk_len, 500);
        assert_eq!(fast.esm_token_dropout, Some(TokenDropout::Off));
        assert!(matches!(
            &fast.classifier,
            ClassifierSource::Url { url, digest: Digest::Sha256(_) }
                if url == "https://example.org/fast_500.safetensors"
        ));
        let local = p.iter().find(|p| p.name == "local").unwrap();
        assert_eq!(
            local.classifier,
            ClassifierSource::File {
                path: PathBuf::from("/conf/models/mine.safetensors"),
                digest: None
            }
        );
        assert_eq!(local.description.as_deref(), Some("ours"));
        assert_eq!(local.origin, Origin::File("/conf/presets.toml".into()));
    }

    #[test]
    fn presets_file_errors_name_the_file_and_the_preset() {
        let url_without_hash = GOOD.replace(
            "sha256 = \"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\"\n",
            "",
        );
        let err = format!("{:#}", parse(&url_without_hash).unwrap_err());
        assert!(
            err.contains("/conf/presets.toml")
                && err.contains("[fast-500]")
                && err.contains("`sha256` is required"),
            "{err}"
        );

        let unknown = GOOD.replace("chunk_len = 300", "chunk_len = 300\nsha265 = \"x\"");
        let err = format!("{:#}", parse(&unknown).unwrap_err());
        assert!(
            err.contains("/conf/presets.toml") && err.contains("sha265"),
            "{err}"
        );

        for bad in ["chunk_len = 0", "chunk_len = -5"] {
            let text = GOOD.replace("chunk_len = 300", bad);
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                err.contains("[local]") && err.contains("not a positive number"),
                "{err}"
            );
        }
        let text = GOOD.replace("chunk_len = 300", "chunk_len = \"300\"");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("chunk_len") && err.contains("line"), "{err}");

        let text = GOOD.replace("chunk_len = 300", "");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("chunk_len"), "{err}");

        let text = GOOD.replace("5891b5b5", "zz");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(
            err.contains("sha256") && err.contains("64 hex digits"),
            "{err}"
        );

        let text = GOOD.replace("\"off\"", "\"sometimes\"");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("esm_token_dropout"), "{err}");

        let text = GOOD.replace("[local]", "[virnucpro-500]");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("built-in preset"), "{err}");

        let text = GOOD.replace("https://example.org", "ftp://example.org");
        let err = format!("{:#}", parse(&text).unwrap_err());
        assert!(err.contains("only http:// and https://"), "{err}");

        let err = format!("{:#}", parse("[a\nx = 1").unwrap_err());
        assert!(err.contains("/conf/presets.toml is not valid"), "{err}");
    }

    fn builtin(name: &str) -> Preset {
        builtin_presets()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
    }

    #[test]
    fn flags_that_contradict_the_preset_are_errors() {
        let p = builtin("virnucpro-500");
        let choice = |f: &dyn Fn(&mut ModelChoice)| {
            let mut c = ModelChoice {
                preset: Some(p.name.clone()),
                ..Default::default()
            };
            f(&mut c);
            c
        };
        let err = apply(&choice(&|c| c.chunk_len = Some(300)), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--chunk-len 300")
                && err.contains("virnucpro-500")
                && err.contains("500-bp")
                && err.contains("--preset virnucpro-300"),
            "{err}"
        );
        // The same value is fine.
        let a = apply(&choice(&|c| c.chunk_len = Some(500)), Some(&p)).unwrap();
        assert_eq!(a.chunk_len, Some(500));

        let err = apply(
            &choice(&|c| c.esm = Some("Synthyra/FastESM2_650".into())),
            Some(&p),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--esm Synthyra/FastESM2_650")
                && err.contains("facebook/esm2_t36_3B_UR50D"),
            "{err}"
        );
        let err = apply(&choice(&|c| c.dnabert = Some("/m/other".into())), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dnabert /m/other"), "{err}");
        let err = apply(&choice(&|c| c.classifier = Some("x.pth".into())), Some(&p))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--classifier x.pth") && err.contains("--preset virnucpro-500"),
            "{err}"
        );

        // A local copy of the same model says where it is, and wins.
        let a = apply(
            &choice(&|c| c.esm = Some("/models/esm2_t36_3B_UR50D/".into())),
            Some(&p),
        )
        .unwrap();
        assert_eq!(a.esm.as_deref(), Some("/models/esm2_t36_3B_UR50D/"));
        assert_eq!(a.dnabert.as_deref(), Some("zhihan1996/DNABERT-S"));

        let mut with_dropout = p.clone();
        with_dropout.esm_token_dropout = Some(TokenDropout::On);
        let err = apply(
            &choice(&|c| c.esm_token_dropout = Some(TokenDropout::Off)),
            Some(&with_dropout),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--esm-token-dropout off"), "{err}");
        let a = apply(&choice(&|_| {}), Some(&with_dropout)).unwrap();
        assert_eq!(a.esm_token_dropout, Some(TokenDropout::On));
    }

    #[test]
    fn without_a_preset_the_flags_pass_through() {
        let c = ModelChoice {
            esm: Some("e".into()),
            classifier: Some("c.pth".into()),
            chunk_len: Some(42),
            ..Default::default()
        };
        let a = apply(&c, None).unwrap();
        assert_eq!(a.esm.as_deref(), Some("e"));
        assert_eq!(a.dnabert, None);
        assert_eq!(a.chunk_len, Some(42));
        assert!(
            matches!(a.classifier, Some(ClassifierSource::File { ref path, digest: None }) if path == Path::new("c.pth"))
        );
    }

    #[test]
    fn unknown_preset_and_missing_classifier_say_what_exists() {
        let t = PresetTable::builtin();
        let err = t.get("virnucpro-400").unwrap_err().to_string();
        assert!(
            err.contains("no preset `virnucpro-400`") && err.contains("virnucpro-500"),
            "{err}"
        );
        let help = t.no_classifier_help();
        assert!(
            help.contains("--preset NAME")
                && help.contains("--classifier FILE")
                && help.contains("virnucpro-300")
                && help.contains("train"),
            "{help}"
        );
    }

    #[test]
    fn train_preset_round_trips() {
        let text = preset_toml_for(
            "my model",
            "zhihan1996/DNABERT-S",
            "Synthyra/FastESM2_650",
            "my model.safetensors",
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            500,
        );
        let p = parse(&text).unwrap_err().to_string();
        // A name with a space is quoted in TOML but refused as a preset name.
        assert!(p.contains("one word"), "{p}");
        let text = preset_toml_for(
            "fast_500",
            "zhihan1996/DNABERT-S",
            "Synthyra/FastESM2_650",
            "fast_500.safetensors",
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            500,
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "fast_500");
        assert_eq!(p[0].chunk_len, 500);
        assert_eq!(
            p[0].classifier,
            ClassifierSource::File {
                path: "/conf/fast_500.safetensors".into(),
                digest: Some(
                    Digest::sha256(
                        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
                    )
                    .unwrap()
                ),
            }
        );
        assert!(text.contains("replace `classifier` by its http(s)"));
    }
}
