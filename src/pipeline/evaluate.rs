//! `evaluate`: metrics of one or more classifiers on a labelled feature directory, side by side,
//! with optional ROC and score-histogram plots.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors};
use serde::Serialize;

use super::features::{read_features, FeatureSet};
use super::metrics::{binary_metrics, roc_curve, Metrics};
use super::train::{MlpWeights, BN_EPS, CLASSIFIER_FORMAT};
use crate::output::plots::{write_roc, write_score_histogram, RocCurve, ScoreSeries};

/// Anything that turns feature rows into (score1, score2) probabilities; lets `evaluate` score
/// classifiers however they are loaded.
pub trait FrameScorer {
    fn input_dim(&self) -> usize;
    /// `features` is row-major `[n, input_dim]`.
    fn predict_proba(&self, features: &[f32]) -> Result<Vec<[f32; 2]>>;
}

impl FrameScorer for MlpWeights {
    fn input_dim(&self) -> usize {
        self.input_dim
    }

    fn predict_proba(&self, features: &[f32]) -> Result<Vec<[f32; 2]>> {
        MlpWeights::predict_proba(self, features)
    }
}

/// A classifier file read by [`read_classifier`].
#[derive(Debug, Clone)]
pub struct ClassifierFile {
    pub path: PathBuf,
    pub weights: MlpWeights,
    /// The safetensors metadata as stored (all strings).
    pub metadata: HashMap<String, String>,
}

fn parse_meta_usize(md: &HashMap<String, String>, key: &str, path: &Path) -> Result<Option<usize>> {
    md.get(key)
        .map(|v| {
            v.parse::<usize>().with_context(|| {
                format!(
                    "{}: metadata {key} = {v:?} is not a whole number",
                    path.display()
                )
            })
        })
        .transpose()
}

// merge: replace with models::classifier::Classifier::load
/// Minimal reader of classifier format v1 (docs/FORMATS.md): checks format, version, tensor
/// names, dtypes and shapes against `input_dim`/`hidden_dim`.
pub fn read_classifier(path: &Path) -> Result<ClassifierFile> {
    let bytes =
        fs::read(path).with_context(|| format!("cannot read classifier {}", path.display()))?;
    let hint = "expected a classifier in virnucpro's safetensors format v1 (from `virnucpro \
                train`, or `virnucpro convert` for a published .pth)";
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file; {hint}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    match md.get("format") {
        Some(f) if f == CLASSIFIER_FORMAT => {}
        other => bail!(
            "{}: metadata format is {other:?}, not {CLASSIFIER_FORMAT:?}; {hint}",
            path.display()
        ),
    }
    match md.get("format_version").map(String::as_str) {
        Some("1") => {}
        other => bail!(
            "{}: classifier format version {other:?} is not supported (this virnucpro reads 1)",
            path.display()
        ),
    }
    let input_dim = parse_meta_usize(&md, "input_dim", path)?
        .with_context(|| format!("{}: metadata has no input_dim", path.display()))?;
    let hidden_dim = parse_meta_usize(&md, "hidden_dim", path)?
        .with_context(|| format!("{}: metadata has no hidden_dim", path.display()))?;
    let bn_eps = match md.get("bn_eps") {
        Some(v) => v.parse::<f64>().with_context(|| {
            format!(
                "{}: metadata bn_eps = {v:?} is not a number",
                path.display()
            )
        })?,
        None => BN_EPS,
    };
    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: tensor {name} is missing", path.display()))?;
        ensure!(
            t.dtype() == Dtype::F32,
            "{}: tensor {name} is {:?}, expected F32",
            path.display(),
            t.dtype()
        );
        ensure!(
            t.shape() == shape,
            "{}: tensor {name} has shape {:?}, expected {shape:?} (input_dim {input_dim}, \
             hidden_dim {hidden_dim})",
            path.display(),
            t.shape()
        );
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    };
    let (d, h) = (input_dim, hidden_dim);
    let weights = MlpWeights {
        input_dim: d,
        hidden_dim: h,
        bn_eps,
        hidden_weight: tensor("hidden_layer.weight", &[h, d])?,
        hidden_bias: tensor("hidden_layer.bias", &[h])?,
        bn_weight: tensor("bn1.weight", &[h])?,
        bn_bias: tensor("bn1.bias", &[h])?,
        bn_running_mean: tensor("bn1.running_mean", &[h])?,
        bn_running_var: tensor("bn1.running_var", &[h])?,
        output_weight: tensor("output_layer.weight", &[2, h])?,
        output_bias: tensor("output_layer.bias", &[2])?,
    };
    Ok(ClassifierFile {
        path: path.to_path_buf(),
        weights,
        metadata: md,
    })
}

/// One classifier's results.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierEvaluation {
    pub name: String,
    pub path: String,
    pub metrics: Metrics,
    #[serde(skip)]
    pub probs: Vec<[f32; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvaluateReport {
    pub features_dir: String,
    pub rows: usize,
    pub viral: usize,
    pub host: usize,
    pub classifiers: Vec<ClassifierEvaluation>,
    pub plots: Vec<String>,
}

/// Scores every row of `data` with `scorer` and computes the metrics.
pub fn evaluate_scorer(
    scorer: &dyn FrameScorer,
    data: &FeatureSet,
) -> Result<(Metrics, Vec<[f32; 2]>)> {
    ensure!(
        scorer.input_dim() == data.dim,
        "classifier takes {} features per frame but the feature set has {}",
        scorer.input_dim(),
        data.dim
    );
    let probs = scorer.predict_proba(&data.features)?;
    ensure!(
        probs.len() == data.len(),
        "classifier returned {} scores for {} rows",
        probs.len(),
        data.len()
    );
    Ok((binary_metrics(&data.labels, &probs), probs))
}

/// Names for the table: file stems, or whole paths where stems collide.
fn display_names(paths: &[PathBuf]) -> Vec<String> {
    let stems: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        })
        .collect();
    stems
        .iter()
        .zip(paths)
        .map(|(s, p)| {
            if stems.iter().filter(|t| *t == s).count() > 1 {
                p.display().to_string()
            } else {
                s.clone()
            }
        })
        .collect()
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Warns when a classifier's recorded provenance differs from the feature set's.
fn check_provenance(c: &ClassifierFile, data: &FeatureSet) {
    let info = &data.manifest.info;
    let pairs = [
        ("chunk_len", info.chunk_len.map(|v| v.to_string())),
        ("dnabert_model", info.dnabert_model.clone()),
        ("esm_model", info.esm_model.clone()),
    ];
    for (key, ours) in pairs {
        if let (Some(theirs), Some(ours)) = (c.metadata.get(key), ours) {
            if *theirs != ours {
                tracing::warn!(
                    "{}: trained with {key} {theirs} but the features have {key} {ours}; the \
                     metrics may not mean what you expect",
                    c.path.display()
                );
            }
        }
    }
}

/// `virnucpro evaluate`: every classifier on `features_dir`; plots into `plots_dir` if given.
pub fn evaluate(
    features_dir: &Path,
    classifiers: &[PathBuf],
    plots_dir: Option<&Path>,
) -> Result<EvaluateReport> {
    ensure!(!classifiers.is_empty(), "give at least one --classifier");
    // Read all classifiers first: a bad file fails before minutes of scoring.
    let files = classifiers
        .iter()
        .map(|p| read_classifier(p))
        .collect::<Result<Vec<_>>>()?;
    let data = read_features(features_dir)?;
    ensure!(
        !data.is_empty(),
        "feature set {} has no rows",
        features_dir.display()
    );
    let [host, viral] = data.label_counts();
    let names = display_names(classifiers);
    let mut evals = Vec::new();
    for (file, name) in files.iter().zip(&names) {
        check_provenance(file, &data);
        let (metrics, probs) = evaluate_scorer(&file.weights, &data).with_context(|| {
            format!(
                "cannot evaluate {} on {}",
                file.path.display(),
                features_dir.display()
            )
        })?;
        evals.push(ClassifierEvaluation {
            name: name.clone(),
            path: file.path.display().to_string(),
            metrics,
            probs,
        });
    }
    let mut plots = Vec::new();
    if let Some(dir) = plots_dir {
        let curves: Vec<RocCurve> = evals
            .iter()
            .map(|e| {
                let scores: Vec<f32> = e.probs.iter().map(|p| p[1]).collect();
                RocCurve {
                    name: e.name.clone(),
                    points: roc_curve(&data.labels, &scores),
                    auroc: e.metrics.auroc,
                }
            })
            .collect();
        plots.extend(write_roc(dir, "roc", "ROC curve", &curves)?);
        for e in &evals {
            let pick = |label: u8| -> Vec<f32> {
                e.probs
                    .iter()
                    .zip(&data.labels)
                    .filter(|(_, &l)| l == label)
                    .map(|(p, _)| p[1])
                    .collect()
            };
            let series = [
                ScoreSeries {
                    name: "viral".into(),
                    scores: pick(1),
                },
                ScoreSeries {
                    name: "host".into(),
                    scores: pick(0),
                },
            ];
            plots.extend(write_score_histogram(
                dir,
                &format!("scores-{}", file_safe(&e.name)),
                &format!("Virus score (score2): {}", e.name),
                "score2",
                &series,
                50,
            )?);
        }
    }
    Ok(EvaluateReport {
        features_dir: features_dir.display().to_string(),
        rows: data.len(),
        viral,
        host,
        classifiers: evals,
        plots: plots.iter().map(|p| p.display().to_string()).collect(),
    })
}

/// The side-by-side table: one row per metric, one column per classifier.
pub fn report_table(report: &EvaluateReport) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![(
        "metric".into(),
        report.classifiers.iter().map(|c| c.name.clone()).collect(),
    )];
    type Getter = fn(&Metrics) -> String;
    let fields: [(&str, Getter); 10] = [
        ("accuracy", |m| format!("{:.4}", m.accuracy)),
        ("precision", |m| format!("{:.4}", m.precision)),
        ("recall", |m| format!("{:.4}", m.recall)),
        ("f1", |m| format!("{:.4}", m.f1)),
        ("auroc", |m| {
            m.auroc
                .map(|a| format!("{a:.4}"))
                .unwrap_or_else(|| "n/a".into())
        }),
        ("tp (viral called viral)", |m| m.confusion.tp.to_string()),
        ("fn (viral called others)", |m| m.confusion.fn_.to_string()),
        ("fp (host called viral)", |m| m.confusion.fp.to_string()),
        ("tn (host called others)", |m| m.confusion.tn.to_string()),
        ("frames", |m| m.n.to_string()),
    ];
    for (name, get) in fields {
        rows.push((
            name.to_string(),
            report.classifiers.iter().map(|c| get(&c.metrics)).collect(),
        ));
    }
    let w0 = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    let ws: Vec<usize> = (0..report.classifiers.len())
        .map(|i| rows.iter().map(|(_, v)| v[i].len()).max().unwrap_or(0))
        .collect();
    let mut s = format!(
        "{}: {} frames ({} viral, {} host)\n",
        report.features_dir, report.rows, report.viral, report.host
    );
    for (name, vals) in &rows {
        let mut line = format!("{name:<w0$}");
        for (v, w) in vals.iter().zip(&ws) {
            line.push_str(&format!("  {v:>w$}"));
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}
