//! The VirNucPro MLP classifier (docs/PIPELINE.md §5):
//! `Linear(in, H) -> BatchNorm1d (eval) -> ReLU -> Dropout (identity) -> Linear(H, 2) -> softmax`.
//!
//! [`Classifier::load`] reads, by content and not by file name:
//! - this project's safetensors format v1 (`docs/FORMATS.md`), or a plain safetensors state dict;
//! - a PyTorch zip checkpoint holding the whole pickled `MLPClassifier` module (the published
//!   `300_model.pth` / `500_model.pth`) or its state dict, read without Python
//!   ([`crate::pickle`]).
//!
//! [`Classifier::check_dimensions`] is the guard that the embedding models of a run fit the
//! classifier (its input is `[nucleotide embedding | protein embedding]`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};

use crate::pickle::{self, CheckpointKind, PthArchive};

/// Value of the `format` metadata key.
pub const FORMAT_NAME: &str = "virnucpro-classifier";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// `BatchNorm1d`'s default epsilon, used when a file does not record one.
pub const DEFAULT_BN_EPS: f64 = 1e-5;

/// The tensors of the classifier, with the names of the published PyTorch module.
pub const TENSOR_NAMES: [&str; 8] = [
    "hidden_layer.weight",
    "hidden_layer.bias",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "output_layer.weight",
    "output_layer.bias",
];

/// Tensors a checkpoint may hold that the forward pass does not use.
const IGNORED_TENSORS: [&str; 1] = ["bn1.num_batches_tracked"];

/// Number of classes: column 0 is "others" (score1), column 1 "virus" (score2).
pub const NUM_CLASSES: usize = 2;

const SUPPORTED_FORMATS: &str = "supported classifier formats: this project's safetensors \
format v1 (written by `virnucpro train` or `virnucpro convert`), a plain safetensors state dict, and a \
PyTorch .pth zip archive holding the whole pickled MLPClassifier module (like the published \
300_model.pth / 500_model.pth) or its state dict";

/// Well-known embedding models and their hidden sizes, for hints and `convert`.
const KNOWN_MODELS: [(&str, usize); 9] = [
    ("zhihan1996/DNABERT-S", 768),
    ("zhihan1996/DNABERT-2-117M", 768),
    ("Synthyra/FastESM2_650", 1280),
    ("facebook/esm2_t33_650M_UR50D", 1280),
    ("facebook/esm2_t36_3B_UR50D", 2560),
    ("facebook/esm2_t48_15B_UR50D", 5120),
    ("facebook/esm2_t30_150M_UR50D", 640),
    ("facebook/esm2_t12_35M_UR50D", 480),
    ("facebook/esm2_t6_8M_UR50D", 320),
];

/// Hidden size of a well-known model, by Hub ID or by a local directory of the same name.
pub fn known_hidden_size(model: &str) -> Option<usize> {
    KNOWN_MODELS
        .iter()
        .find(|(id, _)| same_model(id, model))
        .map(|(_, h)| *h)
}

/// Model names match when equal, or when their last path components are equal ignoring case:
/// `zhihan1996/DNABERT-S` and `/models/DNABERT-S/` name the same model in practice.
pub fn same_model(a: &str, b: &str) -> bool {
    fn last(s: &str) -> &str {
        let s = s.trim_end_matches(['/', '\\']);
        s.rsplit(['/', '\\']).next().unwrap_or(s)
    }
    a == b || (!last(a).is_empty() && last(a).eq_ignore_ascii_case(last(b)))
}

/// What a classifier file says about itself, and how it was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierMeta {
    /// Feature count: nucleotide hidden size + protein hidden size.
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub bn_eps: f64,
    /// Nucleotide model (Hub ID or path) the classifier was trained on, and its hidden size.
    pub dnabert_model: Option<String>,
    pub dnabert_hidden: Option<usize>,
    /// Protein model (Hub ID or path) and its hidden size.
    pub esm_model: Option<String>,
    pub esm_hidden: Option<usize>,
    /// Chunk length the classifier was trained for.
    pub chunk_len: Option<usize>,
    /// Free-form training record (data summary, metrics, seed, options, version).
    pub training: Option<serde_json::Value>,
    /// How the weights were stored, e.g. "pickled PyTorch module (__main__.MLPClassifier)".
    /// Describes the source only; not written by [`Classifier::save`].
    pub source_format: String,
}

impl Default for ClassifierMeta {
    fn default() -> Self {
        Self {
            input_dim: 0,
            hidden_dim: 0,
            bn_eps: DEFAULT_BN_EPS,
            dnabert_model: None,
            dnabert_hidden: None,
            esm_model: None,
            esm_hidden: None,
            chunk_len: None,
            training: None,
            source_format: String::new(),
        }
    }
}

impl ClassifierMeta {
    /// The safetensors `__metadata__` of format v1.
    fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        m.insert("format".into(), FORMAT_NAME.into());
        m.insert("format_version".into(), FORMAT_VERSION.to_string());
        m.insert("input_dim".into(), self.input_dim.to_string());
        m.insert("hidden_dim".into(), self.hidden_dim.to_string());
        // `{}` of an f64 is the shortest text that parses back to the same value.
        m.insert("bn_eps".into(), format!("{}", self.bn_eps));
        let opt = |m: &mut HashMap<String, String>, k: &str, v: Option<String>| {
            // An empty value would read back as "unknown" anyway; leave the key out.
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                m.insert(k.to_owned(), v);
            }
        };
        opt(&mut m, "dnabert_model", self.dnabert_model.clone());
        opt(
            &mut m,
            "dnabert_hidden",
            self.dnabert_hidden.map(|v| v.to_string()),
        );
        opt(&mut m, "esm_model", self.esm_model.clone());
        opt(&mut m, "esm_hidden", self.esm_hidden.map(|v| v.to_string()));
        opt(&mut m, "chunk_len", self.chunk_len.map(|v| v.to_string()));
        opt(
            &mut m,
            "training",
            self.training.as_ref().map(|v| v.to_string()),
        );
        m
    }

    /// Parses format v1 metadata; sizes are checked against the tensors later.
    fn from_metadata(m: &HashMap<String, String>, file: &str) -> Result<Self> {
        let version = m.get("format_version").map(String::as_str).unwrap_or("");
        if version != FORMAT_VERSION.to_string() {
            match version.parse::<u32>() {
                Ok(v) if v > FORMAT_VERSION => bail!(
                    "`{file}` is a virnucpro classifier of format version {v}, newer than this build reads \
                     (version {FORMAT_VERSION}): upgrade virnucpro"
                ),
                _ => bail!(
                    "`{file}` has metadata `format_version` = `{version}`; expected `{FORMAT_VERSION}`"
                ),
            }
        }
        let get_usize = |k: &str| -> Result<Option<usize>> {
            m.get(k)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        anyhow!("`{file}` has metadata `{k}` = `{v}`, which is not a non-negative integer")
                    })
                })
                .transpose()
        };
        let need = |k: &str| -> Result<usize> {
            get_usize(k)?.ok_or_else(|| {
                anyhow!("`{file}` is a virnucpro classifier but its metadata lacks `{k}`; re-create it with `virnucpro convert`")
            })
        };
        let bn_eps = match m.get("bn_eps") {
            None => DEFAULT_BN_EPS,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(e) if e.is_finite() && e >= 0.0 => e,
                _ => bail!(
                    "`{file}` has metadata `bn_eps` = `{v}`, which is not a non-negative number"
                ),
            },
        };
        let training = match m.get("training") {
            None => None,
            Some(v) => {
                let json: serde_json::Value = serde_json::from_str(v).with_context(|| {
                    format!("`{file}` has metadata `training` that is not valid JSON")
                })?;
                if !json.is_object() {
                    bail!("`{file}` has metadata `training` that is not a JSON object");
                }
                Some(json)
            }
        };
        let text = |k: &str| m.get(k).filter(|s| !s.is_empty()).cloned();
        Ok(Self {
            input_dim: need("input_dim")?,
            hidden_dim: need("hidden_dim")?,
            bn_eps,
            dnabert_model: text("dnabert_model"),
            dnabert_hidden: get_usize("dnabert_hidden")?,
            esm_model: text("esm_model"),
            esm_hidden: get_usize("esm_hidden")?,
            chunk_len: get_usize("chunk_len")?,
            training,
            source_format: format!("virnucpro classifier safetensors (format v{FORMAT_VERSION})"),
        })
    }

    /// The recorded hidden sizes must add up to the input size.
    fn hidden_sum_problem(&self) -> Option<String> {
        let (d, e) = (self.dnabert_hidden?, self.esm_hidden?);
        (d.saturating_add(e) != self.input_dim).then(|| {
            format!(
                "its metadata says nucleotide hidden {d} + protein hidden {e} = {}, but the classifier's input size is {}",
                d.saturating_add(e),
                self.input_dim
            )
        })
    }
}

/// The VirNucPro MLP classifier, ready for inference.
#[derive(Debug, Clone)]
pub struct Classifier {
    meta: ClassifierMeta,
    /// The eight tensors of [`TENSOR_NAMES`], f32, as loaded (kept for `save` and inspection).
    tensors: BTreeMap<String, Tensor>,
    hidden: candle_nn::Linear,
    /// BatchNorm in eval mode folded into one affine map: `x * scale + shift`.
    bn_scale: Tensor,
    bn_shift: Tensor,
    output: candle_nn::Linear,
    /// The file it came from, for messages.
    path: Option<PathBuf>,
}

enum FileKind {
    Safetensors,
    Zip,
    LegacyTorch,
    Unknown,
}

fn sniff(head: &[u8], file_len: u64) -> FileKind {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return FileKind::Zip;
    }
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        if head[8] == b'{' && n > 1 && n.checked_add(8).is_some_and(|end| end <= file_len) {
            return FileKind::Safetensors;
        }
    }
    // torch < 1.6 wrote a bare pickle stream starting with a LONG1 magic number.
    if head.starts_with(b"\x80\x02\x8a\x0a") {
        return FileKind::LegacyTorch;
    }
    FileKind::Unknown
}

impl Classifier {
    /// Loads a classifier, detecting the format from the file's content.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let shown = path.display().to_string();
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open classifier `{shown}`"))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read classifier `{shown}`"))?
            .len();
        if len == 0 {
            bail!("classifier `{shown}` is an empty file; {SUPPORTED_FORMATS}");
        }
        let mut head = Vec::with_capacity(16);
        (&mut file)
            .take(16)
            .read_to_end(&mut head)
            .with_context(|| format!("cannot read classifier `{shown}`"))?;
        drop(file);
        let mut c = match sniff(&head, len) {
            FileKind::Safetensors => Self::load_safetensors(path, device),
            FileKind::Zip => Self::load_pth(path, device),
            FileKind::LegacyTorch => bail!(
                "classifier `{shown}` is a PyTorch file in the legacy (pre-1.6) serialization, which this build does \
                 not read; re-save it with a current PyTorch (`torch.save(torch.load(f), f)`); {SUPPORTED_FORMATS}"
            ),
            FileKind::Unknown => {
                let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
                bail!(
                    "`{shown}` is not a classifier file: it starts with bytes {}, which is neither a safetensors \
                     header nor a zip archive; {SUPPORTED_FORMATS}",
                    hex.join(" ")
                )
            }
        }?;
        c.path = Some(path.to_owned());
        tracing::debug!(
            "classifier {shown}: {} -> {} -> 2 ({})",
            c.meta.input_dim,
            c.meta.hidden_dim,
            c.meta.source_format
        );
        Ok(c)
    }

    fn load_safetensors(path: &Path, device: &Device) -> Result<Self> {
        let shown = path.display().to_string();
        let origin = format!("`{shown}`");
        let names = safetensors_names(path)?;
        let canon = canonical_names(&names, &origin)?;
        require_all(|n| canon.iter().any(|(c, _)| c == n), &origin, &names)?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read classifier `{shown}`"))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow!("`{shown}` is not a valid safetensors file: {e}"))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("`{shown}` is not a valid safetensors file: {e}"))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let format = metadata.get("format").map(String::as_str);
        let meta = match format {
            Some(FORMAT_NAME) => ClassifierMeta::from_metadata(&metadata, &shown)?,
            _ => ClassifierMeta {
                source_format: "safetensors state dict (no virnucpro metadata)".into(),
                ..Default::default()
            },
        };
        let mut tensors = HashMap::new();
        for (name, original) in &canon {
            let view = st
                .tensor(original)
                .map_err(|e| anyhow!("`{shown}`: tensor `{original}`: {e}"))?;
            let data =
                view_to_f32(&view).with_context(|| format!("`{shown}`: tensor `{original}`"))?;
            let t = Tensor::from_vec(data, view.shape(), device)?;
            tensors.insert(name.clone(), t);
        }
        let c = Self::assemble(tensors, meta, &origin, &names)?;
        match format {
            Some(FORMAT_NAME) => {
                if let Some(problem) = c.meta.hidden_sum_problem() {
                    tracing::warn!("classifier {shown}: {problem}");
                }
            }
            other => {
                tracing::warn!(
                    "classifier {shown} has no virnucpro metadata{}; reading it as a plain state dict \
                     (BatchNorm eps {DEFAULT_BN_EPS:e}, models and chunk length unknown). \
                     Add them with `virnucpro convert --classifier {shown} --out NEW.safetensors --dnabert-model ... \
                     --esm-model ... --chunk-len ...`",
                    other.map(|f| format!(" (format `{f}`)")).unwrap_or_default()
                );
            }
        }
        Ok(c)
    }

    fn load_pth(path: &Path, device: &Device) -> Result<Self> {
        let shown = path.display().to_string();
        let mut archive = PthArchive::open(path)?;
        let ck = pickle::flatten(archive.pickle())
            .with_context(|| format!("`{shown}` is a PyTorch checkpoint, but not a classifier"))?;
        let names: Vec<String> = ck.tensors.iter().map(|(n, _)| n.clone()).collect();
        let origin = format!("`{shown}`");
        let canon = canonical_names(&names, &origin)?;
        require_all(|n| canon.iter().any(|(c, _)| c == n), &origin, &names)?;
        let mut tensors = HashMap::new();
        for (name, original) in &canon {
            let Some((_, tref)) = ck.tensors.iter().find(|(n, _)| n == original) else {
                continue;
            };
            let data = archive
                .read_f32(tref)
                .with_context(|| format!("`{shown}`: tensor `{original}`"))?;
            tensors.insert(
                name.clone(),
                Tensor::from_vec(data, tref.shape.as_slice(), device)?,
            );
        }
        let under = ck
            .found_under
            .as_ref()
            .map(|k| format!(" under key `{k}`"))
            .unwrap_or_default();
        let (source_format, bn_eps) = match &ck.kind {
            CheckpointKind::Module { class } => {
                let eps = ck.attr("bn1.eps").or_else(|| ck.attr("module.bn1.eps"));
                (format!("pickled PyTorch module ({class}){under}"), eps)
            }
            CheckpointKind::StateDict => (format!("PyTorch state dict{under}"), None),
        };
        let bn_eps = match bn_eps {
            Some(e) if e.is_finite() && e >= 0.0 => e,
            Some(e) => {
                bail!("`{shown}`: the pickled BatchNorm has eps {e}, which is not a usable epsilon")
            }
            None => DEFAULT_BN_EPS,
        };
        let meta = ClassifierMeta {
            bn_eps,
            source_format,
            ..Default::default()
        };
        Self::assemble(tensors, meta, &origin, &names)
    }

    /// Builds a classifier from tensors named as in [`TENSOR_NAMES`] (an optional `module.` prefix
    /// is accepted; `bn1.num_batches_tracked` is ignored). `meta.input_dim` / `meta.hidden_dim`
    /// may be 0, meaning "take them from the tensors"; otherwise they must match the tensors.
    /// Tensors are converted to f32 and stay on their device.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, meta: ClassifierMeta) -> Result<Self> {
        let names: Vec<String> = tensors.keys().cloned().collect();
        let what = "the tensors given to Classifier::from_tensors";
        let canon = canonical_names(&names, what)?;
        let mut by_name = HashMap::new();
        for (name, original) in canon {
            if let Some(t) = tensors.get(&original) {
                by_name.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        let mut meta = meta;
        if meta.source_format.is_empty() {
            meta.source_format = "built in memory".into();
        }
        let c = Self::assemble(by_name, meta, what, &names)?;
        if let Some(problem) = c.meta.hidden_sum_problem() {
            bail!("{what}: {problem}");
        }
        Ok(c)
    }

    /// Validates shapes and values, fills the sizes in `meta`, and prepares the forward pass.
    /// `origin` names the source in messages; `all_names` lists what the source held.
    fn assemble(
        tensors: HashMap<String, Tensor>,
        mut meta: ClassifierMeta,
        origin: &str,
        all_names: &[String],
    ) -> Result<Self> {
        require_all(|n| tensors.contains_key(n), origin, all_names)?;
        let w1 = &tensors["hidden_layer.weight"];
        let (hidden, input) = match w1.dims() {
            &[h, i] if h > 0 && i > 0 => (h, i),
            dims => bail!(
                "{origin}: tensor `hidden_layer.weight` has shape {dims:?}; expected [hidden, input] with both sizes above 0"
            ),
        };
        let expect = |name: &str, shape: &[usize], why: &str| -> Result<()> {
            let found = tensors[name].dims();
            if found != shape {
                bail!("{origin}: tensor `{name}` has shape {found:?}, expected {shape:?} ({why})");
            }
            Ok(())
        };
        let from_w1 = format!(
            "hidden size {hidden} from `hidden_layer.weight` {:?}",
            [hidden, input]
        );
        for name in [
            "hidden_layer.bias",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
        ] {
            expect(name, &[hidden], &from_w1)?;
        }
        let w2 = tensors["output_layer.weight"].dims();
        if w2.len() == 2 && w2[1] == hidden && w2[0] != NUM_CLASSES {
            bail!(
                "{origin}: tensor `output_layer.weight` has shape {w2:?}: {} output classes, but a VirNucPro \
                 classifier has {NUM_CLASSES} (others, virus)",
                w2[0]
            );
        }
        expect(
            "output_layer.weight",
            &[NUM_CLASSES, hidden],
            &format!("{NUM_CLASSES} classes x {from_w1}"),
        )?;
        expect(
            "output_layer.bias",
            &[NUM_CLASSES],
            &format!("{NUM_CLASSES} classes"),
        )?;
        for (key, value, found) in [
            ("input_dim", meta.input_dim, input),
            ("hidden_dim", meta.hidden_dim, hidden),
        ] {
            if value != 0 && value != found {
                bail!(
                    "{origin}: metadata says {key} {value}, but `hidden_layer.weight` has shape {:?} ({key} {found})",
                    [hidden, input]
                );
            }
        }
        meta.input_dim = input;
        meta.hidden_dim = hidden;

        let mut host: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for name in TENSOR_NAMES {
            let t = &tensors[name];
            let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{origin}: tensor `{name}` holds a non-finite value ({}) at element {i}",
                    v[i]
                );
            }
            host.insert(name.to_owned(), v);
        }
        let var = &host["bn1.running_var"];
        if let Some(i) = var.iter().position(|&v| f64::from(v) + meta.bn_eps <= 0.0) {
            bail!(
                "{origin}: tensor `bn1.running_var` has {} at element {i}, so variance + eps ({}) is not positive",
                var[i],
                meta.bn_eps
            );
        }
        // Fold BatchNorm in f64: scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
        let (gamma, beta, mean) = (
            &host["bn1.weight"],
            &host["bn1.bias"],
            &host["bn1.running_mean"],
        );
        let mut scale = Vec::with_capacity(hidden);
        let mut shift = Vec::with_capacity(hidden);
        for j in 0..hidden {
            let s = f64::from(gamma[j]) / (f64::from(var[j]) + meta.bn_eps).sqrt();
            scale.push(s as f32);
            shift.push((f64::from(beta[j]) - f64::from(mean[j]) * s) as f32);
        }
        let device = tensors["hidden_layer.weight"].device().clone();
        let stored: BTreeMap<String, Tensor> = TENSOR_NAMES
            .iter()
            .map(|&n| -> Result<(String, Tensor)> {
                let t = tensors[n]
                    .to_dtype(DType::F32)?
                    .to_device(&device)?
                    .contiguous()?;
                Ok((n.to_owned(), t))
            })
            .collect::<Result<_>>()?;
        let linear =
            |w: &str, b: &str| candle_nn::Linear::new(stored[w].clone(), Some(stored[b].clone()));
        Ok(Self {
            hidden: linear("hidden_layer.weight", "hidden_layer.bias"),
            output: linear("output_layer.weight", "output_layer.bias"),
            bn_scale: Tensor::from_vec(scale, hidden, &device)?,
            bn_shift: Tensor::from_vec(shift, hidden, &device)?,
            tensors: stored,
            meta,
            path: None,
        })
    }

    /// Feature count the classifier expects.
    pub fn input_dim(&self) -> usize {
        self.meta.input_dim
    }

    pub fn meta(&self) -> &ClassifierMeta {
        &self.meta
    }

    /// The eight weight tensors (f32), by their PyTorch names.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    pub fn device(&self) -> &Device {
        self.hidden.weight().device()
    }

    /// Probabilities `[N, 2]` f32 (column 0 "others", column 1 "virus") for features `[N, input]`.
    /// Features of another dtype or device are converted.
    pub fn forward(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        let n = match features.dims() {
            &[n, d] if d == self.meta.input_dim => n,
            dims => {
                return Err(candle_core::Error::Msg(format!(
                    "classifier input has shape {dims:?}, expected [N, {}] ({})",
                    self.meta.input_dim,
                    self.describe_input()
                )))
            }
        };
        let device = self.device();
        if n == 0 {
            return Tensor::zeros((0, NUM_CLASSES), DType::F32, device);
        }
        let x = features.to_device(device)?.to_dtype(DType::F32)?;
        let h = self.hidden.forward(&x)?;
        let h = h
            .broadcast_mul(&self.bn_scale)?
            .broadcast_add(&self.bn_shift)?
            .relu()?;
        // Dropout is the identity at inference.
        let logits = self.output.forward(&h)?;
        candle_nn::ops::softmax_last_dim(&logits)
    }

    fn describe_input(&self) -> String {
        let m = &self.meta;
        match (m.dnabert_hidden, m.esm_hidden) {
            (Some(d), Some(e)) => format!(
                "{} {d} + {} {e}",
                m.dnabert_model.as_deref().unwrap_or("nucleotide embedding"),
                m.esm_model.as_deref().unwrap_or("protein embedding")
            ),
            _ => "nucleotide embedding followed by protein embedding".to_owned(),
        }
    }

    /// Records the nucleotide model (Hub ID or path) and its hidden size.
    pub fn with_dnabert(mut self, model: impl Into<String>, hidden: usize) -> Self {
        self.meta.dnabert_model = Some(model.into());
        self.meta.dnabert_hidden = Some(hidden);
        self
    }

    /// Records the protein model (Hub ID or path) and its hidden size.
    pub fn with_esm(mut self, model: impl Into<String>, hidden: usize) -> Self {
        self.meta.esm_model = Some(model.into());
        self.meta.esm_hidden = Some(hidden);
        self
    }

    pub fn with_chunk_len(mut self, chunk_len: usize) -> Self {
        self.meta.chunk_len = Some(chunk_len);
        self
    }

    /// Records the training summary (a JSON object).
    pub fn with_training(mut self, training: serde_json::Value) -> Self {
        self.meta.training = Some(training);
        self
    }

    /// Replaces the descriptive metadata (models, hidden sizes, chunk length, training, eps).
    /// `meta.input_dim` / `hidden_dim` may be 0 (keep) or must match the weights. A changed
    /// `bn_eps` takes effect in the forward pass.
    pub fn with_meta(self, meta: ClassifierMeta) -> Result<Self> {
        let what = "Classifier::with_meta";
        for (key, value, have) in [
            ("input_dim", meta.input_dim, self.meta.input_dim),
            ("hidden_dim", meta.hidden_dim, self.meta.hidden_dim),
        ] {
            if value != 0 && value != have {
                bail!("{what}: metadata says {key} {value}, but the weights have {key} {have}");
            }
        }
        let mut meta = meta;
        if meta.source_format.is_empty() {
            meta.source_format = self.meta.source_format.clone();
        }
        let tensors: HashMap<String, Tensor> = self.tensors.into_iter().collect();
        let mut c = Self::assemble(tensors, meta, what, &[])?;
        c.path = self.path;
        if let Some(problem) = c.meta.hidden_sum_problem() {
            bail!("{what}: {problem}");
        }
        Ok(c)
    }

    /// Writes format v1 (`docs/FORMATS.md`) atomically: a temporary file in the same directory,
    /// renamed over `path` only once complete.
    pub fn save(&self, path: &Path) -> Result<()> {
        let shown = path.display();
        if let Some(problem) = self.meta.hidden_sum_problem() {
            bail!("refusing to write `{shown}`: {problem}; fix the hidden sizes");
        }
        if let Some(t) = &self.meta.training {
            if !t.is_object() {
                bail!("refusing to write `{shown}`: the training record must be a JSON object");
            }
        }
        let mut views = Vec::with_capacity(TENSOR_NAMES.len());
        for (name, t) in &self.tensors {
            let data = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            views.push((
                name.clone(),
                F32View {
                    shape: t.dims().to_vec(),
                    bytes,
                },
            ));
        }
        let buf = safetensors::serialize(views, Some(self.meta.to_metadata()))
            .map_err(|e| anyhow!("cannot encode classifier for `{shown}`: {e}"))?;
        virnucpro_atomic::write_atomic(path, &buf)
            .with_context(|| format!("cannot write classifier `{shown}`"))
    }

    /// The dimension guard: the run's embedding models must produce the classifier's input size,
    /// and should be the ones it was trained with. Returns warnings for metadata mismatches (models,
    /// chunk length); with `strict` those are errors. A size mismatch is always an error.
    pub fn check_dimensions(
        &self,
        dnabert: (&str, usize),
        esm: (&str, usize),
        chunk_len: usize,
        strict: bool,
    ) -> Result<Vec<String>> {
        let m = &self.meta;
        let (dn_model, dn_hidden) = dnabert;
        let (esm_model, esm_hidden) = esm;
        let sum = dn_hidden.saturating_add(esm_hidden);
        let file = self
            .path
            .as_ref()
            .map(|p| format!("classifier `{}`", p.display()))
            .unwrap_or_else(|| "the classifier".to_owned());
        if sum != m.input_dim {
            let mut msg = format!(
                "{file} expects {} input features, but nucleotide model `{dn_model}` (hidden {dn_hidden}) + \
                 protein model `{esm_model}` (hidden {esm_hidden}) give {dn_hidden} + {esm_hidden} = {sum}",
                m.input_dim
            );
            if let (Some(d), Some(e)) = (m.dnabert_hidden, m.esm_hidden) {
                let _ = write!(
                    msg,
                    "; it was trained with {} (hidden {d}) + {} (hidden {e})",
                    m.dnabert_model.as_deref().unwrap_or("a nucleotide model"),
                    m.esm_model.as_deref().unwrap_or("a protein model")
                );
            }
            msg.push_str(". ");
            msg.push_str(&size_hint(m.input_dim, dn_hidden, m.dnabert_hidden));
            bail!(msg);
        }

        let mut notes = Vec::new();
        let mut model_note = |kind: &str,
                              flag: &str,
                              trained: &Option<String>,
                              trained_h: Option<usize>,
                              run: &str,
                              run_h: usize| {
            if let Some(t) = trained {
                if !same_model(t, run) {
                    notes.push(format!(
                        "{file} was trained with {kind} model `{t}`, but this run uses `{run}`; \
                         predictions may be meaningless (use {flag} {t})"
                    ));
                    return;
                }
            }
            if let Some(th) = trained_h {
                if th != run_h {
                    notes.push(format!(
                        "{file} was trained with a {kind} model of hidden size {th}, but `{run}` has {run_h}"
                    ));
                }
            }
        };
        model_note(
            "nucleotide",
            "--dnabert",
            &m.dnabert_model,
            m.dnabert_hidden,
            dn_model,
            dn_hidden,
        );
        model_note(
            "protein",
            "--esm",
            &m.esm_model,
            m.esm_hidden,
            esm_model,
            esm_hidden,
        );
        if let Some(trained) = m.chunk_len {
            if trained != chunk_len {
                notes.push(format!(
                    "{file} was trained on {trained}-base chunks, but this run uses --chunk-len {chunk_len}; \
                     use --chunk-len {trained} or a classifier trained for {chunk_len}"
                ));
            }
        }
        if strict && !notes.is_empty() {
            bail!("{} (strict mode)", notes.join("; "));
        }
        Ok(notes)
    }
}

/// What protein model would fit `input = nucleotide hidden + protein hidden`.
fn size_hint(input: usize, dn_hidden: usize, trained_dn: Option<usize>) -> String {
    if input <= dn_hidden {
        return format!(
            "Its input size {input} is not larger than the nucleotide model's hidden size {dn_hidden}: it was \
             trained with a different nucleotide model{}.",
            trained_dn.map(|d| format!(" (hidden {d})")).unwrap_or_default()
        );
    }
    let need = input - dn_hidden;
    let models = match need {
        2560 => "the ESM2-3B model `facebook/esm2_t36_3B_UR50D` (hidden 2560), as the original VirNucPro \
                 300_model.pth / 500_model.pth"
            .to_owned(),
        1280 => "FastESM2_650 (`Synthyra/FastESM2_650`) or ESM2-650M (`facebook/esm2_t33_650M_UR50D`), hidden 1280"
            .to_owned(),
        _ => {
            let known: Vec<String> = KNOWN_MODELS
                .iter()
                .filter(|(id, h)| *h == need && id.contains("esm"))
                .map(|(id, _)| format!("`{id}`"))
                .collect();
            if known.is_empty() {
                format!("a protein model with hidden size {need}")
            } else {
                format!("{} (hidden {need})", known.join(" or "))
            }
        }
    };
    format!("{input} = {dn_hidden} + {need}: use {models} with this classifier, or a classifier trained for your models.")
}

/// Fails unless every tensor of [`TENSOR_NAMES`] is present, saying which are missing and what
/// the source holds instead.
fn require_all(present: impl Fn(&str) -> bool, origin: &str, all_names: &[String]) -> Result<()> {
    let missing: Vec<String> = TENSOR_NAMES
        .iter()
        .filter(|n| !present(n))
        .map(|n| format!("`{n}`"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if missing.len() < TENSOR_NAMES.len() {
        bail!(
            "{origin} is not a complete VirNucPro classifier: tensor(s) {} missing; it needs {}",
            missing.join(", "),
            TENSOR_NAMES.join(", ")
        );
    }
    let mut names: Vec<&str> = all_names.iter().map(String::as_str).collect();
    names.sort_unstable();
    let held = if names.is_empty() {
        "it holds no tensors".to_owned()
    } else {
        format!(
            "it holds {} other tensor(s), e.g. {}",
            names.len(),
            names
                .iter()
                .take(4)
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    bail!(
        "{origin} does not hold a VirNucPro classifier (no `hidden_layer.*`, `bn1.*`, `output_layer.*` tensors; \
         {held}); {SUPPORTED_FORMATS}"
    )
}

/// Tensor names in a safetensors header, read without loading the data, so that a large file that
/// is not a classifier (an embedding model, say) is refused without reading it whole.
fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    let shown = path.display();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open classifier `{shown}`"))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("cannot read classifier `{shown}`"))?;
    let n = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB.
    if n > 100_000_000 {
        bail!("`{shown}` is not a valid safetensors file: header of {n} bytes");
    }
    let mut header = Vec::with_capacity(n as usize);
    (&mut file)
        .take(n)
        .read_to_end(&mut header)
        .with_context(|| format!("cannot read classifier `{shown}`"))?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| {
            format!("`{shown}` is not a valid safetensors file: its header is not a JSON object")
        })?;
    Ok(map
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect())
}

/// Maps canonical names (`hidden_layer.weight`, ...) to the names in the source, accepting the
/// `module.` (DataParallel) and `_orig_mod.` (torch.compile) prefixes.
fn canonical_names(names: &[String], origin: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for name in names {
        let mut c = name.as_str();
        while let Some(rest) = c
            .strip_prefix("module.")
            .or_else(|| c.strip_prefix("_orig_mod."))
        {
            c = rest;
        }
        if !TENSOR_NAMES.contains(&c) {
            if !IGNORED_TENSORS.contains(&c) {
                tracing::debug!("{origin}: ignoring tensor `{name}`");
            }
            continue;
        }
        if let Some((_, first)) = out.iter().find(|(k, _)| k == c) {
            bail!("{origin} holds tensor `{c}` twice (as `{first}` and `{name}`)");
        }
        out.push((c.to_owned(), name.clone()));
    }
    Ok(out)
}

fn view_to_f32(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let data = view.data();
    let out = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            bail!("stored as {other:?}, expected a floating-point type (F32, F64, F16 or BF16)")
        }
    };
    Ok(out)
}

/// A host-side f32 tensor for `safetensors::serialize`.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
