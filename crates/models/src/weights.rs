//! Checkpoint weights: `model.safetensors` (single or sharded with `model.safetensors.index.json`)
//! and `pytorch_model.bin` (a zip of pickled tensors, single or sharded), behind one candle
//! `VarBuilder` backend.
//!
//! The backend makes the family prefix (`esm.`, `bert.`) optional, checks every tensor's shape
//! before reading its data, and words its errors for people: the tensor, the file, the shape the
//! config implies and the one found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use serde::Deserialize;

/// Storage format of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// PyTorch zip (`torch.save` since 1.6), read without Python.
    Pytorch,
}

/// The weight files of one checkpoint, shards in index order.
#[derive(Debug, Clone)]
pub struct WeightFiles {
    pub format: WeightsFormat,
    pub files: Vec<PathBuf>,
}

/// Weight file names in order of preference; the `.index.json` ones list shards.
pub const WEIGHT_CANDIDATES: [(&str, WeightsFormat, bool); 4] = [
    ("model.safetensors", WeightsFormat::Safetensors, false),
    (
        "model.safetensors.index.json",
        WeightsFormat::Safetensors,
        true,
    ),
    ("pytorch_model.bin", WeightsFormat::Pytorch, false),
    ("pytorch_model.bin.index.json", WeightsFormat::Pytorch, true),
];

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// Reads a large weight file once in the background, in file order, so that the disk works at its
/// full sequential speed while the tensors are copied to the device in model order (page faults
/// on the memory map alone read it a little at a time). Small files are left alone.
fn prefetch(path: &Path) {
    const MIN_BYTES: u64 = 256 << 20;
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    if file.metadata().map_or(true, |m| m.len() < MIN_BYTES) {
        return;
    }
    std::thread::spawn(move || {
        use std::io::Read;
        let mut file = file;
        let mut buf = vec![0u8; 16 << 20];
        while matches!(file.read(&mut buf), Ok(n) if n > 0) {}
    });
}

/// Shard file names listed by a `*.index.json`, each once, sorted.
pub fn shard_names(index: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read shard index {}", index.display()))?;
    let idx: ShardIndex = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid shard index", index.display()))?;
    let mut names: Vec<String> = idx.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    for n in &names {
        // Shards sit beside the index; anything else would escape the model directory.
        if n.contains("..") || Path::new(n).is_absolute() {
            bail!(
                "{}: shard name `{n}` is not a plain file name",
                index.display()
            );
        }
    }
    if names.is_empty() {
        bail!("{} lists no shards", index.display());
    }
    Ok(names)
}

impl WeightFiles {
    /// Finds the weights in a local model directory, in the order of [`WEIGHT_CANDIDATES`].
    pub fn find_in_dir(dir: &Path) -> anyhow::Result<Self> {
        for (name, format, is_index) in WEIGHT_CANDIDATES {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let files = if is_index {
                let shards = shard_names(&path)?
                    .into_iter()
                    .map(|s| dir.join(s))
                    .collect::<Vec<_>>();
                if let Some(missing) = shards.iter().find(|p| !p.is_file()) {
                    bail!(
                        "shard {} listed in {} is missing",
                        missing.display(),
                        path.display()
                    );
                }
                shards
            } else {
                vec![path]
            };
            return Ok(Self { format, files });
        }
        bail!(
            "no weights in {}: expected model.safetensors, model.safetensors.index.json (+ shards) \
             or pytorch_model.bin",
            dir.display()
        )
    }

    /// Files for messages: one path, or the first shard and the count.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [one] => one.display().to_string(),
            [first, ..] => format!(
                "{} (+{} more shards)",
                first.display(),
                self.files.len() - 1
            ),
            [] => "(no files)".into(),
        }
    }
}

enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    Pytorch(candle_core::pickle::PthTensors),
}

/// Where one tensor lives.
struct Entry {
    store: usize,
    shape: Shape,
}

/// An opened checkpoint; becomes a `VarBuilder` with [`Checkpoint::into_var_builder`].
pub struct Checkpoint {
    stores: Vec<(PathBuf, Store)>,
    /// Full key as stored -> location.
    entries: HashMap<String, Entry>,
    /// Prefix found on the checkpoint's keys (e.g. `esm.`), put back on lookups.
    prefix: Option<String>,
    /// Names the config in shape-mismatch messages.
    config_origin: String,
}

impl Checkpoint {
    /// Opens every file and indexes its tensors (headers only; data is read on demand).
    ///
    /// `optional_prefix` (e.g. `esm.`) is used when the checkpoint's keys carry it, so models can
    /// always ask for unprefixed names. `config_origin` names the config in shape errors.
    pub fn open(
        weights: &WeightFiles,
        optional_prefix: &str,
        config_origin: &str,
    ) -> anyhow::Result<Self> {
        let mut stores = Vec::new();
        let mut entries = HashMap::new();
        for path in &weights.files {
            let index = stores.len();
            let store = match weights.format {
                WeightsFormat::Safetensors => {
                    prefetch(path);
                    // SAFETY: the file is mapped read-only; like every safetensors reader we rely
                    // on nobody truncating it while the model loads.
                    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot read safetensors file {}: {e}; re-download it or \
                                 point --model at another copy",
                                path.display()
                            )
                        })?;
                    for (name, view) in st.tensors() {
                        entries.insert(
                            name,
                            Entry {
                                store: index,
                                shape: Shape::from(view.shape().to_vec()),
                            },
                        );
                    }
                    Store::Safetensors(st)
                }
                WeightsFormat::Pytorch => {
                    let pth = candle_core::pickle::PthTensors::new(path, None).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read PyTorch checkpoint {}: {e}; it must be a zip written by \
                             torch.save (PyTorch >= 1.6) holding a state dict",
                            path.display()
                        )
                    })?;
                    for (name, info) in pth.tensor_infos() {
                        entries.insert(
                            name.clone(),
                            Entry {
                                store: index,
                                shape: info.layout.shape().clone(),
                            },
                        );
                    }
                    Store::Pytorch(pth)
                }
            };
            stores.push((path.clone(), store));
        }
        if entries.is_empty() {
            bail!("{} holds no tensors", weights.describe());
        }
        let prefix = entries
            .keys()
            .any(|k| k.starts_with(optional_prefix))
            .then(|| optional_prefix.to_string())
            .filter(|p| !p.is_empty());
        Ok(Self {
            stores,
            entries,
            prefix,
            config_origin: config_origin.to_string(),
        })
    }

    /// Tensor names as stored (prefix included), sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of tensors in the checkpoint.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A `VarBuilder` over this checkpoint that converts to `dtype` on `device`.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// The stored key for a requested name: unprefixed first, then with the prefix.
    fn key(&self, name: &str) -> Option<String> {
        if self.entries.contains_key(name) {
            return Some(name.to_string());
        }
        let prefixed = format!("{}{name}", self.prefix.as_deref()?);
        self.entries.contains_key(&prefixed).then_some(prefixed)
    }

    fn display_name(&self, name: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}{name}"),
            None => name.to_string(),
        }
    }

    fn files_description(&self) -> String {
        match self.stores.as_slice() {
            [(one, _)] => one.display().to_string(),
            [(first, _), ..] => format!(
                "{} and {} other shard(s)",
                first.display(),
                self.stores.len() - 1
            ),
            [] => "(no files)".into(),
        }
    }

    fn load(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(key) = self.key(name) else {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{}` is missing from {}; the weights do not match the architecture that \
                 {} declares (wrong or incomplete checkpoint?)",
                self.display_name(name),
                self.files_description(),
                self.config_origin
            )));
        };
        let entry = &self.entries[&key];
        let (path, store) = &self.stores[entry.store];
        if let Some(expected) = expected {
            if &entry.shape != expected {
                return Err(candle_core::Error::Msg(format!(
                    "tensor `{key}` in {} has shape {:?}, but {} implies {:?}; the config does \
                     not match the weights",
                    path.display(),
                    entry.shape.dims(),
                    self.config_origin,
                    expected.dims()
                )));
            }
        }
        let tensor = match store {
            Store::Safetensors(st) => st.load(&key, dev),
            Store::Pytorch(pth) => pth
                .get(&key)
                .and_then(|t| t.ok_or_else(|| candle_core::Error::Msg("vanished".into())))
                .and_then(|t| t.to_device(dev)),
        }
        .map_err(|e| {
            candle_core::Error::Msg(format!(
                "cannot read tensor `{key}` from {}: {e}",
                path.display()
            ))
        })?;
        tensor.to_dtype(dtype)
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.key(name).is_some()
    }
}

/// Seeded random weights for any architecture: whatever tensor a model asks for is generated with
/// the requested shape (benchmarks on real-size models without their checkpoints).
///
/// Layer-norm weights are 1 and biases 0; other tensors are uniform with standard deviation 0.02
/// (like the usual initialisers), from a generator seeded by `seed` and the tensor's name, so a
/// model is the same on every run and every device.
pub struct RandomWeights {
    pub seed: u64,
}

impl RandomWeights {
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = s.elem_count();
        let lower = name.to_ascii_lowercase();
        let is_norm = lower.contains("norm");
        let data: Vec<f32> = if is_norm && lower.ends_with("weight") {
            vec![1.0; n]
        } else if lower.ends_with("bias") {
            vec![0.0; n]
        } else {
            // Uniform on [-a, a] with a = 0.02 * sqrt(3): standard deviation 0.02.
            let a = 0.02f32 * 3f32.sqrt();
            let mut state = self.seed ^ crate::checksum::Fnv1a64::of(name.as_bytes());
            (0..n)
                .map(|_| {
                    let u = (crate::rng::splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * a
                })
                .collect()
        };
        Tensor::from_vec(data, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_are_seeded() -> candle_core::Result<()> {
        let vb = RandomWeights { seed: 7 }.into_var_builder(DType::F32, &Device::Cpu);
        let a = vb
            .get((4, 3), "x.weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = vb
            .get((4, 3), "x.weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.abs() < 0.035));
        let ln = vb.get(3, "LayerNorm.weight")?.to_vec1::<f32>()?;
        assert_eq!(ln, vec![1.0; 3]);
        Ok(())
    }
}
