//! `evaluate`: metrics of one or more classifiers on a labelled feature directory, side by side,
//! with optional ROC and score-histogram plots.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;
use virnucpro_models::classifier::Classifier;

use crate::features::{read_features, FeatureSet};
use crate::metrics::{binary_metrics, roc_curve, Metrics};
use crate::plots::{write_roc, write_score_histogram, RocCurve, ScoreSeries};
use crate::train::MlpWeights;

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

impl FrameScorer for Classifier {
    fn input_dim(&self) -> usize {
        Classifier::input_dim(self)
    }

    fn predict_proba(&self, features: &[f32]) -> Result<Vec<[f32; 2]>> {
        let d = Classifier::input_dim(self);
        ensure!(
            d > 0 && features.len().is_multiple_of(d),
            "{} feature values are not whole rows of {d}",
            features.len()
        );
        let mut out = Vec::with_capacity(features.len() / d);
        // Blocks bound the hidden activations ([rows, hidden] f32) whatever the set's size.
        for block in features.chunks(4096 * d) {
            let x = Tensor::from_slice(block, (block.len() / d, d), &Device::Cpu)?;
            let p = self.forward(&x)?.to_vec2::<f32>()?;
            out.extend(p.into_iter().map(|r| [r[0], r[1]]));
        }
        Ok(out)
    }
}

/// A classifier loaded for evaluation, with the path it came from.
struct LoadedClassifier {
    path: PathBuf,
    classifier: Classifier,
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
fn check_provenance(c: &LoadedClassifier, data: &FeatureSet) {
    let info = &data.manifest.info;
    let meta = c.classifier.meta();
    let pairs = [
        (
            "chunk_len",
            meta.chunk_len.map(|v| v.to_string()),
            info.chunk_len.map(|v| v.to_string()),
        ),
        (
            "dnabert_model",
            meta.dnabert_model.clone(),
            info.dnabert_model.clone(),
        ),
        ("esm_model", meta.esm_model.clone(), info.esm_model.clone()),
    ];
    for (key, theirs, ours) in pairs {
        if let (Some(theirs), Some(ours)) = (theirs, ours) {
            if theirs != ours {
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
        .map(|p| {
            Ok(LoadedClassifier {
                path: p.clone(),
                classifier: Classifier::load(p, &Device::Cpu)?,
            })
        })
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
        let (metrics, probs) = evaluate_scorer(&file.classifier, &data).with_context(|| {
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
