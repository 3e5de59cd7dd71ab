//! Feature shards: what `extract` writes and `train`/`evaluate` read (docs/FORMATS.md).
//!
//! A feature set is a directory of `shard-00000.safetensors`, `shard-00001.safetensors`, ... (tensor
//! `features` f32 [n, D], tensor `labels` u8 [n], metadata `ids`) and a `manifest.json` written
//! last: a directory without a manifest is an interrupted extraction, never a smaller data set.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use virnucpro_atomic::write_atomic;
/// The checksum of feature shards and of their frames (`fnv1a64` in the manifest).
pub use virnucpro_models::checksum::Fnv1a64;

pub const FEATURES_FORMAT: &str = "virnucpro-features";
pub const FEATURES_FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
/// Rows per shard for [`ShardWriter`] when the caller has no preference (80 MB at D = 2048).
pub const DEFAULT_ROWS_PER_SHARD: usize = 10_000;

/// What produced a feature set; stored in the manifest and copied into trained classifiers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    /// Nucleotide model ID or path (DNABERT-S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnabert_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnabert_hidden: Option<usize>,
    /// Protein model ID or path (ESM2 / FastESM2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esm_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esm_hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_len: Option<usize>,
    /// Where the frames came from (e.g. a prepared `frames.tsv`), for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl FeatureInfo {
    /// Both hidden sizes, when recorded, must add up to the feature dimension: the classifier
    /// written from these features records them and its format requires the same.
    pub fn check_dim(&self, dim: usize) -> Result<()> {
        if let (Some(d), Some(e)) = (self.dnabert_hidden, self.esm_hidden) {
            ensure!(
                d.checked_add(e) == Some(dim),
                "nucleotide hidden size {d} + protein hidden size {e} is not the feature \
                 dimension {dim}"
            );
        }
        Ok(())
    }
}

/// One shard as listed in the manifest; `bytes` and `fnv1a64` catch truncated or swapped files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub rows: usize,
    pub bytes: u64,
    /// FNV-1a 64 of the whole file, 16 lower-case hex digits.
    pub fnv1a64: String,
}

/// `manifest.json` of a feature directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureManifest {
    pub format: String,
    pub format_version: u32,
    pub feature_dim: usize,
    pub rows: usize,
    #[serde(flatten)]
    pub info: FeatureInfo,
    pub shards: Vec<ShardEntry>,
    #[serde(default)]
    pub virnucpro_version: String,
}

/// A whole feature set in memory (row-major `features`, `rows * dim` values).
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub features: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<u8>,
    pub ids: Vec<String>,
    pub manifest: FeatureManifest,
}

impl FeatureSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// Rows per label: `[host (0), viral (1)]`.
    pub fn label_counts(&self) -> [usize; 2] {
        let viral = self.labels.iter().filter(|&&l| l == 1).count();
        [self.labels.len() - viral, viral]
    }
}

/// `shard-NNNNN.safetensors`, the name of shard `index` (0-based) of a feature directory.
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.safetensors")
}

/// A shard as safetensors bytes. The header is written here rather than by
/// `safetensors::serialize`, whose metadata map comes out in random order: the same rows must
/// give the same bytes, so that a recomputed shard has the checksum of the one it replaces.
fn shard_bytes(features: &[f32], dim: usize, labels: &[u8], ids: &[String]) -> Result<Vec<u8>> {
    let n = labels.len();
    let feature_len = features.len() * 4;
    let metadata: BTreeMap<&str, String> = [
        ("format", FEATURES_FORMAT.to_string()),
        ("format_version", FEATURES_FORMAT_VERSION.to_string()),
        ("ids", serde_json::to_string(ids)?),
    ]
    .into();
    let mut header = format!(
        "{{\"__metadata__\":{},\"features\":{{\"dtype\":\"F32\",\"shape\":[{n},{dim}],\
         \"data_offsets\":[0,{feature_len}]}},\"labels\":{{\"dtype\":\"U8\",\"shape\":[{n}],\
         \"data_offsets\":[{feature_len},{}]}}}}",
        serde_json::to_string(&metadata)?,
        feature_len + n
    )
    .into_bytes();
    // The data starts 8-byte aligned, as safetensors writes it (spaces pad the JSON).
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = Vec::with_capacity(8 + header.len() + feature_len + n);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for v in features {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(labels);
    Ok(bytes)
}

/// Writes one shard (atomically) and returns its manifest entry. `features` is row-major
/// `[labels.len(), dim]`; labels are 0 (host/others) or 1 (viral); `ids` one per row.
pub fn write_shard(
    path: &Path,
    features: &[f32],
    dim: usize,
    labels: &[u8],
    ids: &[String],
) -> Result<ShardEntry> {
    let n = labels.len();
    ensure!(dim > 0, "feature dimension must be positive");
    ensure!(
        features.len() == n * dim,
        "shard {}: {} feature values for {n} rows of {dim}",
        path.display(),
        features.len()
    );
    ensure!(
        ids.len() == n,
        "shard {}: {} ids for {n} rows",
        path.display(),
        ids.len()
    );
    if let Some(bad) = labels.iter().position(|&l| l > 1) {
        bail!(
            "shard {}: row {} ({}) has label {}, expected 0 or 1",
            path.display(),
            bad,
            ids[bad],
            labels[bad]
        );
    }
    let bytes = shard_bytes(features, dim, labels, ids)?;
    write_atomic(path, &bytes).with_context(|| format!("cannot write shard {}", path.display()))?;
    Ok(ShardEntry {
        file: path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rows: n,
        bytes: bytes.len() as u64,
        fnv1a64: Fnv1a64::hex(&bytes),
    })
}

/// Streams rows into `shard-NNNNN.safetensors` files of `rows_per_shard` rows, then writes the
/// manifest in [`ShardWriter::finish`].
pub struct ShardWriter {
    dir: PathBuf,
    dim: usize,
    info: FeatureInfo,
    rows_per_shard: usize,
    features: Vec<f32>,
    labels: Vec<u8>,
    ids: Vec<String>,
    shards: Vec<ShardEntry>,
    rows: usize,
}

impl ShardWriter {
    /// Creates `dir` if needed. Refuses a directory that already holds a feature set, so that
    /// stale shards never mix with new ones.
    pub fn create(
        dir: &Path,
        dim: usize,
        info: FeatureInfo,
        rows_per_shard: usize,
    ) -> Result<Self> {
        ensure!(dim > 0, "feature dimension must be positive");
        ensure!(rows_per_shard > 0, "rows per shard must be positive");
        info.check_dim(dim)?;
        virnucpro_atomic::create_output_dir(dir)
            .with_context(|| format!("cannot create feature directory {}", dir.display()))?;
        let manifest = dir.join(MANIFEST_FILE);
        if manifest.exists() {
            bail!(
                "{} already holds a feature set ({} exists): remove it or choose another directory",
                dir.display(),
                manifest.display()
            );
        }
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            dim,
            info,
            rows_per_shard,
            features: Vec::new(),
            labels: Vec::new(),
            ids: Vec::new(),
            shards: Vec::new(),
            rows: 0,
        })
    }

    pub fn push(&mut self, id: &str, label: u8, features: &[f32]) -> Result<()> {
        ensure!(
            features.len() == self.dim,
            "row {id}: {} feature values, the set has {}",
            features.len(),
            self.dim
        );
        ensure!(label <= 1, "row {id}: label {label}, expected 0 or 1");
        self.features.extend_from_slice(features);
        self.labels.push(label);
        self.ids.push(id.to_string());
        if self.labels.len() == self.rows_per_shard {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(shard_file_name(self.shards.len()));
        let entry = write_shard(&path, &self.features, self.dim, &self.labels, &self.ids)?;
        self.rows += entry.rows;
        self.shards.push(entry);
        self.features.clear();
        self.labels.clear();
        self.ids.clear();
        Ok(())
    }

    /// Writes the last shard and the manifest; returns the manifest.
    pub fn finish(mut self) -> Result<FeatureManifest> {
        self.flush()?;
        let manifest = FeatureManifest {
            format: FEATURES_FORMAT.to_string(),
            format_version: FEATURES_FORMAT_VERSION,
            feature_dim: self.dim,
            rows: self.rows,
            info: self.info.clone(),
            shards: std::mem::take(&mut self.shards),
            virnucpro_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        write_manifest(&self.dir, &manifest)?;
        Ok(manifest)
    }
}

/// Writes `DIR/manifest.json` atomically. Call it last: its presence marks the set complete.
pub fn write_manifest(dir: &Path, manifest: &FeatureManifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(manifest)?;
    write_atomic(&path, json.as_bytes())
        .with_context(|| format!("cannot write the feature manifest {}", path.display()))
}

/// Reads and checks `DIR/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<FeatureManifest> {
    let path = dir.join(MANIFEST_FILE);
    if !dir.is_dir() {
        bail!(
            "feature directory {} does not exist (run `virnucpro extract` to create it)",
            dir.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: a feature directory needs the manifest that `virnucpro extract` writes \
             last (a directory without one is an unfinished extraction)",
            path.display()
        )
    })?;
    let m: FeatureManifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid feature manifest", path.display()))?;
    ensure!(
        m.format == FEATURES_FORMAT,
        "{}: format is {:?}, expected {FEATURES_FORMAT:?}",
        path.display(),
        m.format
    );
    ensure!(
        m.format_version == FEATURES_FORMAT_VERSION,
        "{}: format version {} is not supported (this virnucpro reads version {}); \
         re-run `virnucpro extract` with this version",
        path.display(),
        m.format_version,
        FEATURES_FORMAT_VERSION
    );
    ensure!(m.feature_dim > 0, "{}: feature_dim is 0", path.display());
    m.info.check_dim(m.feature_dim).with_context(|| {
        format!(
            "{}: the manifest contradicts itself; re-run `virnucpro extract`",
            path.display()
        )
    })?;
    let sum: usize = m.shards.iter().map(|s| s.rows).sum();
    ensure!(
        sum == m.rows,
        "{}: shards list {sum} rows in all but the manifest says {}",
        path.display(),
        m.rows
    );
    Ok(m)
}

fn labels_from_view(view: &TensorView<'_>, path: &Path) -> Result<Vec<u8>> {
    let data = view.data();
    let values: Vec<i64> = match view.dtype() {
        Dtype::U8 => data.iter().map(|&b| b as i64).collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        other => bail!(
            "{}: tensor `labels` has dtype {other:?}, expected U8 or I64",
            path.display()
        ),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| match v {
            0 | 1 => Ok(v as u8),
            _ => bail!(
                "{}: row {i} has label {v}, expected 0 (host) or 1 (viral)",
                path.display()
            ),
        })
        .collect()
}

/// Reads one shard file into the given buffers, checking it against its manifest entry.
pub(crate) fn read_shard(
    dir: &Path,
    entry: &ShardEntry,
    dim: usize,
    features: &mut Vec<f32>,
    labels: &mut Vec<u8>,
    ids: &mut Vec<String>,
) -> Result<()> {
    let path = dir.join(&entry.file);
    let bytes = fs::read(&path).with_context(|| {
        format!(
            "cannot read shard {} listed in {}",
            path.display(),
            dir.join(MANIFEST_FILE).display()
        )
    })?;
    let redo =
        "the feature set is damaged or was changed after extraction: re-run `virnucpro extract`";
    ensure!(
        bytes.len() as u64 == entry.bytes,
        "shard {} has {} bytes, the manifest says {}: {redo}",
        path.display(),
        bytes.len(),
        entry.bytes
    );
    let hash = Fnv1a64::hex(&bytes);
    ensure!(
        hash == entry.fnv1a64,
        "shard {} has checksum {hash}, the manifest says {}: {redo}",
        path.display(),
        entry.fnv1a64
    );
    parse_shard(&path, &bytes, entry.rows, dim, features, labels, ids)
}

/// The contents of a shard file (`bytes`, read from `path`) appended to the buffers, after
/// checking that it holds `rows` rows of `dim` features, labels and IDs.
pub(crate) fn parse_shard(
    path: &Path,
    bytes: &[u8],
    rows: usize,
    dim: usize,
    features: &mut Vec<f32>,
    labels: &mut Vec<u8>,
    ids: &mut Vec<String>,
) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)
        .with_context(|| format!("shard {} is not a valid safetensors file", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)?;
    let feat = st
        .tensor("features")
        .with_context(|| format!("shard {} has no tensor `features`", path.display()))?;
    ensure!(
        feat.dtype() == Dtype::F32,
        "shard {}: `features` has dtype {:?}, expected F32",
        path.display(),
        feat.dtype()
    );
    ensure!(
        feat.shape() == [rows, dim],
        "shard {}: `features` has shape {:?}, expected [{rows}, {dim}]",
        path.display(),
        feat.shape()
    );
    let lab = st
        .tensor("labels")
        .with_context(|| format!("shard {} has no tensor `labels`", path.display()))?;
    ensure!(
        lab.shape() == [rows],
        "shard {}: `labels` has shape {:?}, expected [{rows}]",
        path.display(),
        lab.shape()
    );
    let shard_ids: Vec<String> = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ids"))
        .with_context(|| format!("shard {} has no `ids` metadata", path.display()))
        .and_then(|s| {
            serde_json::from_str(s).with_context(|| {
                format!(
                    "shard {}: `ids` metadata is not a JSON array of strings",
                    path.display()
                )
            })
        })?;
    ensure!(
        shard_ids.len() == rows,
        "shard {}: {} ids for {} rows",
        path.display(),
        shard_ids.len(),
        rows
    );
    features.extend(
        feat.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
    );
    labels.extend(labels_from_view(&lab, path)?);
    ids.extend(shard_ids);
    Ok(())
}

/// Reads a whole feature directory into memory (rows * dim * 4 bytes), in shard order.
pub fn read_features(dir: &Path) -> Result<FeatureSet> {
    let manifest = read_manifest(dir)?;
    let dim = manifest.feature_dim;
    let mut features = Vec::with_capacity(manifest.rows * dim);
    let mut labels = Vec::with_capacity(manifest.rows);
    let mut ids = Vec::with_capacity(manifest.rows);
    for entry in &manifest.shards {
        read_shard(dir, entry, dim, &mut features, &mut labels, &mut ids)?;
    }
    if let Some((i, f)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!(
            "feature set {}: row {} ({}) has a non-finite value {f}: the embeddings are broken; \
             re-run `virnucpro extract`",
            dir.display(),
            i / dim,
            ids[i / dim]
        );
    }
    Ok(FeatureSet {
        features,
        dim,
        labels,
        ids,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The same rows give the same file, and safetensors reads it with its metadata.
    #[test]
    fn shard_bytes_are_deterministic_safetensors() {
        let ids: Vec<String> = (0..3).map(|i| format!("id{i}")).collect();
        let feats = [0.5f32, -1.0, 2.0, 3.5, 1e-3, -7.0];
        let a = shard_bytes(&feats, 2, &[1, 0, 1], &ids).unwrap();
        for _ in 0..5 {
            assert_eq!(shard_bytes(&feats, 2, &[1, 0, 1], &ids).unwrap(), a);
        }
        let n = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        let st = SafeTensors::deserialize(&a).unwrap();
        let f = st.tensor("features").unwrap();
        assert_eq!((f.dtype(), f.shape()), (Dtype::F32, &[3, 2][..]));
        assert_eq!(f.data(), &f32_bytes(&feats)[..]);
        assert_eq!(st.tensor("labels").unwrap().data(), &[1, 0, 1]);
        let (_, meta) = SafeTensors::read_metadata(&a).unwrap();
        let md = meta.metadata().clone().unwrap();
        assert_eq!(md["format"], FEATURES_FORMAT);
        assert_eq!(md["format_version"], "1");
        assert_eq!(md["ids"], r#"["id0","id1","id2"]"#);
    }

    #[test]
    fn round_trip_and_damage_detected() {
        let dir = std::env::temp_dir().join(format!("vnp-features-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let info = FeatureInfo {
            chunk_len: Some(300),
            ..Default::default()
        };
        let mut w = ShardWriter::create(&dir, 3, info.clone(), 2).unwrap();
        for i in 0..5u8 {
            let v = [i as f32, 1.0, -(i as f32)];
            w.push(&format!("r{i}"), i % 2, &v).unwrap();
        }
        let m = w.finish().unwrap();
        assert_eq!(m.shards.len(), 3);
        assert_eq!(m.rows, 5);
        let set = read_features(&dir).unwrap();
        assert_eq!(set.ids, ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(set.labels, [0, 1, 0, 1, 0]);
        assert_eq!(set.row(4), &[4.0, 1.0, -4.0]);
        assert_eq!(set.manifest.info, info);
        // A second writer must not mix into an existing set.
        assert!(ShardWriter::create(&dir, 3, FeatureInfo::default(), 2).is_err());
        // Flip one byte of a shard: the checksum catches it.
        let p = dir.join("shard-00001.safetensors");
        let mut b = fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&p, b).unwrap();
        let err = format!("{:#}", read_features(&dir).unwrap_err());
        assert!(err.contains("checksum"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Hidden sizes that do not add up to the feature dimension would make a classifier whose
    /// metadata contradicts its weights: refused when writing and when reading.
    #[test]
    fn hidden_sizes_must_add_up() {
        let dir = std::env::temp_dir().join(format!("vnp-features-dims-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let info = FeatureInfo {
            dnabert_hidden: Some(768),
            esm_hidden: Some(1280),
            ..Default::default()
        };
        let err = ShardWriter::create(&dir, 12, info.clone(), 2)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("768 + protein hidden size 1280"),
            "{err:#}"
        );
        let mut w = ShardWriter::create(&dir, 12, FeatureInfo::default(), 2).unwrap();
        w.push("a", 1, &[0.5; 12]).unwrap();
        let mut m = w.finish().unwrap();
        m.info = info;
        fs::write(dir.join(MANIFEST_FILE), serde_json::to_string(&m).unwrap()).unwrap();
        let err = format!("{:#}", read_features(&dir).unwrap_err());
        assert!(
            err.contains("contradicts itself") && err.contains("dimension 12"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `labels` may also be i64 (what a PyTorch-side writer produces naturally).
    #[test]
    fn reads_i64_labels() {
        let dir = std::env::temp_dir().join(format!("vnp-features-i64-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let feats = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let labels: Vec<u8> = [1i64, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let md: HashMap<String, String> = [("ids".to_string(), r#"["a","b"]"#.to_string())].into();
        let bytes = safetensors::tensor::serialize(
            vec![
                (
                    "features",
                    TensorView::new(Dtype::F32, vec![2, 2], &feats).unwrap(),
                ),
                (
                    "labels",
                    TensorView::new(Dtype::I64, vec![2], &labels).unwrap(),
                ),
            ],
            Some(md),
        )
        .unwrap();
        fs::write(dir.join("shard-00000.safetensors"), &bytes).unwrap();
        let manifest = FeatureManifest {
            format: FEATURES_FORMAT.into(),
            format_version: 1,
            feature_dim: 2,
            rows: 2,
            info: FeatureInfo::default(),
            shards: vec![ShardEntry {
                file: "shard-00000.safetensors".into(),
                rows: 2,
                bytes: bytes.len() as u64,
                fnv1a64: Fnv1a64::hex(&bytes),
            }],
            virnucpro_version: String::new(),
        };
        fs::write(
            dir.join(MANIFEST_FILE),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        let set = read_features(&dir).unwrap();
        assert_eq!(set.labels, [1, 0]);
        assert_eq!(set.ids, ["a", "b"]);
        assert_eq!(set.row(1), &[3.0, 4.0]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
