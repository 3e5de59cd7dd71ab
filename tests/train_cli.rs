//! `virnucpro train` / `evaluate` on synthetic feature shards: two Gaussians with different means.

use std::fs;
use std::path::Path;

use candle_core::Device;
use predicates::prelude::*;
use virnucpro_models::classifier::Classifier;
use virnucpro_models::rng::Rng;
use virnucpro_train::features::{read_features, FeatureInfo, ShardWriter};
use virnucpro_train::train::{train, TrainOptions};

use crate::util::{raw_metadata, vnp};

/// `n` rows of `dim` features; viral rows centred at +shift, host rows at -shift, unit variance.
/// The manifest names the real models with made-up hidden sizes that add up to `dim`
/// (2/3 nucleotide, the rest protein), as the format requires.
fn write_gaussians(dir: &Path, n: usize, dim: usize, shift: f64, seed: u64) {
    let info = FeatureInfo {
        dnabert_model: Some("zhihan1996/DNABERT-S".into()),
        dnabert_hidden: Some(dim * 2 / 3),
        esm_model: Some("Synthyra/FastESM2_650".into()),
        esm_hidden: Some(dim - dim * 2 / 3),
        chunk_len: Some(300),
        source: Some("synthetic".into()),
    };
    let mut w = ShardWriter::create(dir, dim, info, 256).unwrap();
    let mut rng = Rng::new(seed, 99);
    for i in 0..n {
        let label = (i % 2) as u8;
        let centre = if label == 1 { shift } else { -shift };
        let row: Vec<f32> = (0..dim).map(|_| (centre + rng.normal()) as f32).collect();
        w.push(&format!("frame{i}"), label, &row).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn learns_a_separable_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = tmp.path().join("features");
    write_gaussians(&feats, 1200, 16, 0.75, 1);
    let data = read_features(&feats).unwrap();
    let opts = TrainOptions {
        epochs: 30,
        seed: 3,
        ..Default::default()
    };
    let (_, report) = train(&data, &opts, |_| {}).unwrap();
    let best = report.best();
    assert!(best.val.accuracy >= 0.95, "{best:#?}");
    assert!(best.val.auroc.unwrap() >= 0.98, "{best:#?}");
    assert_eq!(report.val_rows, 120);
    assert_eq!(report.train_rows, 1080);
    // Training loss goes down.
    assert!(report.epochs.last().unwrap().train_loss < report.epochs[0].train_loss);
}

#[test]
fn same_seed_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = tmp.path().join("features");
    write_gaussians(&feats, 300, 8, 0.5, 2);
    let data = read_features(&feats).unwrap();
    let opts = TrainOptions {
        epochs: 4,
        patience: 10,
        seed: 11,
        hidden: 16,
        ..Default::default()
    };
    let (a, ra) = train(&data, &opts, |_| {}).unwrap();
    let (b, rb) = train(&data, &opts, |_| {}).unwrap();
    assert_eq!(a, b, "identical weights, running statistics included");
    let la: Vec<f64> = ra.epochs.iter().map(|e| e.val_loss).collect();
    let lb: Vec<f64> = rb.epochs.iter().map(|e| e.val_loss).collect();
    assert_eq!(la, lb);
    let other = TrainOptions { seed: 12, ..opts };
    let (c, _) = train(&data, &other, |_| {}).unwrap();
    assert_ne!(a.hidden_weight, c.hidden_weight);
}

#[test]
fn cli_writes_model_log_and_evaluates_with_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let feats = tmp.path().join("features");
    write_gaussians(&feats, 400, 12, 0.75, 4);
    let model = tmp.path().join("model.safetensors");
    vnp()
        .args([
            "train",
            "--epochs",
            "6",
            "--hidden",
            "32",
            "--seed",
            "5",
            "--features",
        ])
        .arg(&feats)
        .arg("--out")
        .arg(&model)
        .assert()
        .success()
        .stdout(predicate::str::contains("best epoch"))
        .stdout(predicate::str::contains("model.preset.toml"))
        .stderr(predicate::str::contains("val acc"));

    // The model is format v1 with provenance from the manifest and the training record.
    let c = Classifier::load(&model, &Device::Cpu).unwrap();
    assert_eq!(c.input_dim(), 12);
    assert_eq!(c.meta().hidden_dim, 32);
    let md = raw_metadata(&model);
    assert_eq!(md["format"], "virnucpro-classifier");
    assert_eq!(md["format_version"], "1");
    assert_eq!(md["input_dim"], "12");
    assert_eq!(md["hidden_dim"], "32");
    assert_eq!(md["bn_eps"].parse::<f64>().unwrap(), 1e-5);
    assert_eq!(md["dnabert_model"], "zhihan1996/DNABERT-S");
    assert_eq!(md["dnabert_hidden"], "8");
    assert_eq!(md["esm_model"], "Synthyra/FastESM2_650");
    assert_eq!(md["esm_hidden"], "4");
    assert_eq!(md["chunk_len"], "300");
    let training: serde_json::Value = serde_json::from_str(&md["training"]).unwrap();
    assert_eq!(training["seed"], 5);
    assert_eq!(training["options"]["hidden"], 32);
    assert_eq!(training["data"]["rows"], 400);
    assert_eq!(training["virnucpro_version"], env!("CARGO_PKG_VERSION"));
    assert!(training["best_epoch"].as_u64().unwrap() >= 1);
    assert!(training["metrics"]["val"]["accuracy"].as_f64().unwrap() > 0.5);

    let log = fs::read_to_string(tmp.path().join("model.safetensors.log.csv")).unwrap();
    let mut lines = log.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("epoch,lr,train_loss,val_loss,val_accuracy"));
    assert_eq!(
        lines.count(),
        training["epochs_run"].as_u64().unwrap() as usize
    );

    // A preset beside it names the models, the chunk length and the classifier with its hash.
    let preset_file = tmp.path().join("model.preset.toml");
    let text = fs::read_to_string(&preset_file).unwrap();
    assert!(
        text.contains("replace `classifier` by its http(s)"),
        "{text}"
    );
    let presets = virnucpro_assets::presets::parse_presets_file(&text, &preset_file).unwrap();
    assert_eq!(presets.len(), 1);
    let p = &presets[0];
    assert_eq!(p.name, "model");
    assert_eq!(
        (p.dnabert.as_str(), p.esm.as_str(), p.chunk_len),
        ("zhihan1996/DNABERT-S", "Synthyra/FastESM2_650", 300)
    );
    let sha = virnucpro_assets::download::Digest::sha256_of_file(&model).unwrap();
    assert_eq!(
        p.classifier,
        virnucpro_assets::presets::ClassifierSource::File {
            path: model.clone(),
            digest: Some(sha)
        }
    );

    // Evaluate it and a copy side by side, with plots.
    let copy = tmp.path().join("copy.safetensors");
    fs::copy(&model, &copy).unwrap();
    let plots = tmp.path().join("plots");
    let out = vnp()
        .args(["evaluate", "--features"])
        .arg(&feats)
        .arg("--classifier")
        .arg(&model)
        .arg(&copy)
        .arg("--plots")
        .arg(&plots)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(out).unwrap();
    for key in [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "tp (viral called viral)",
    ] {
        assert!(table.contains(key), "{table}");
    }
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.contains("model") && header.contains("copy"),
        "{table}"
    );
    for (name, label) in [
        ("roc", "True positive rate"),
        ("scores-model", "Frames"),
        ("scores-copy", "Frames"),
    ] {
        let png = fs::read(plots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name}.png is a PNG");
        let svg = fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{name}.svg is an SVG");
        assert!(svg.contains(label), "{name}.svg has the label {label:?}");
    }

    // --json carries the same numbers.
    let out = vnp()
        .args(["evaluate", "--json", "--features"])
        .arg(&feats)
        .arg("--classifier")
        .arg(&model)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let m = &json["classifiers"][0]["metrics"];
    let cm = &m["confusion"];
    let total: u64 = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| cm[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, 400);
    assert_eq!(json["rows"], 400);
}

#[test]
fn clear_errors_for_bad_feature_dirs_and_models() {
    let tmp = tempfile::tempdir().unwrap();
    // No manifest.
    fs::create_dir(tmp.path().join("empty")).unwrap();
    vnp()
        .args(["train", "--features"])
        .arg(tmp.path().join("empty"))
        .arg("--out")
        .arg(tmp.path().join("m.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("manifest.json").and(predicate::str::contains("extract")));
    // One class only.
    let feats = tmp.path().join("one");
    let mut w = ShardWriter::create(&feats, 3, FeatureInfo::default(), 10).unwrap();
    for i in 0..10 {
        w.push(&format!("r{i}"), 1, &[1.0, 2.0, 3.0]).unwrap();
    }
    w.finish().unwrap();
    vnp()
        .args(["train", "--features"])
        .arg(&feats)
        .arg("--out")
        .arg(tmp.path().join("m.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("needs both classes"));
    // Not a classifier.
    fs::write(tmp.path().join("bogus.safetensors"), b"not a model").unwrap();
    vnp()
        .args(["evaluate", "--features"])
        .arg(&feats)
        .arg("--classifier")
        .arg(tmp.path().join("bogus.safetensors"))
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("bogus.safetensors")
                .and(predicate::str::contains("format v1")),
        );
}
