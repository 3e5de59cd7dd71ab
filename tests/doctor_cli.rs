//! `virnucpro doctor --device cpu`: the model and classifier checks that need no GPU.

use assert_cmd::Command;
use predicates::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_virnucpro");
const O: &str = "tests/data/oracle";

fn doctor() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["doctor", "--device", "cpu"]);
    cmd
}

#[test]
fn consistent_models_and_classifier_pass() {
    doctor()
        .args([
            "--dnabert",
            &format!("{O}/dnabert"),
            "--esm",
            &format!("{O}/fastesm"),
        ])
        .args(["--classifier", &format!("{O}/classifier/model_full.pth")])
        .assert()
        .success()
        .stdout(predicate::str::contains("[PASS] ENV-03 --dnabert"))
        .stdout(predicate::str::contains("hidden 128"))
        .stdout(predicate::str::contains("256 inputs = 128 + 128"))
        .stdout(predicate::str::contains("[SKIP] ENV-04"))
        .stdout(predicate::str::contains("all checks passed"));
}

#[test]
fn model_of_the_wrong_family_fails_and_stops() {
    doctor()
        .args([
            "--dnabert",
            &format!("{O}/esm2"),
            "--esm",
            &format!("{O}/fastesm"),
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("[FAIL] ENV-03 --dnabert"))
        // Stops at the first failure.
        .stdout(predicate::str::contains("ENV-04").not())
        .stderr(predicate::str::contains("not a DNABERT model"));
}

#[test]
fn mismatched_classifier_fails_with_both_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    // A model directory whose config is fine but whose weights are missing fails to load.
    let broken = tmp.path().join("esm");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(format!("{O}/esm2/{f}"), broken.join(f)).unwrap();
    }
    doctor()
        .args(["--dnabert", &format!("{O}/dnabert"), "--esm"])
        .arg(&broken)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("[FAIL] ENV-03 --esm"));

    // A classifier for 300 inputs does not fit 128 + 128.
    let clf = tmp.path().join("c.safetensors");
    let d = candle_core::Device::Cpu;
    let r = |s: &[usize]| candle_core::Tensor::ones(s, candle_core::DType::F32, &d).unwrap();
    let tensors = std::collections::HashMap::from([
        ("hidden_layer.weight".to_string(), r(&[4, 300])),
        ("hidden_layer.bias".to_string(), r(&[4])),
        ("bn1.weight".to_string(), r(&[4])),
        ("bn1.bias".to_string(), r(&[4])),
        ("bn1.running_mean".to_string(), r(&[4])),
        ("bn1.running_var".to_string(), r(&[4])),
        ("output_layer.weight".to_string(), r(&[2, 4])),
        ("output_layer.bias".to_string(), r(&[2])),
    ]);
    virnucpro::models::classifier::Classifier::from_tensors(tensors, Default::default())
        .unwrap()
        .save(&clf)
        .unwrap();
    doctor()
        .args(["--dnabert", &format!("{O}/dnabert")])
        .args(["--esm", &format!("{O}/fastesm"), "--classifier"])
        .arg(&clf)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("[FAIL] ENV-03 --classifier"))
        .stderr(predicate::str::contains("300"))
        .stderr(predicate::str::contains("128 + 128 = 256"));
    doctor()
        .args(["--classifier", "nope.pth"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "[FAIL] ENV-03 --classifier nope.pth",
        ))
        .stderr(predicate::str::contains("nope.pth"));
}
