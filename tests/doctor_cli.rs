//! `virnucpro doctor --device cpu`: the model and classifier checks that need no GPU.

use assert_cmd::Command;
use predicates::prelude::*;

use crate::util::{BIN, O};

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
        .stdout(predicate::str::contains(
            "not hash-checked (a local directory",
        ))
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
    virnucpro_models::classifier::Classifier::from_tensors(tensors, Default::default())
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

/// A Hugging Face cache as `huggingface-cli download` leaves it, holding the oracle's tiny
/// FastESM2 under the Hub ID `test/tiny-fastesm`: `snapshots/<rev>/<file>` links to
/// `blobs/<hash>`, the weights named by their sha256 (Git LFS), the small files by their git
/// blob SHA-1. Returns the `hub` directory and the weights' blob.
#[cfg(unix)]
fn fake_hub_cache(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use sha1::Digest;
    let hub = root.join("hub");
    let repo = hub.join("models--test--tiny-fastesm");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut weights_blob = std::path::PathBuf::new();
    for file in [
        "config.json",
        "vocab.txt",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ] {
        let bytes = std::fs::read(format!("{O}/fastesm/{file}")).unwrap();
        let name = if file.ends_with(".safetensors") {
            hex(&sha2::Sha256::digest(&bytes))
        } else {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {}\0", bytes.len()).as_bytes());
            h.update(&bytes);
            hex(&h.finalize())
        };
        let blob = repo.join("blobs").join(&name);
        std::fs::write(&blob, &bytes).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{name}"),
            repo.join("snapshots").join(rev).join(file),
        )
        .unwrap();
        if file == "model.safetensors" {
            weights_blob = blob;
        }
    }
    (hub, weights_blob)
}

/// doctor checks the model files it resolves from the Hugging Face cache against the hashes the
/// cache names them by: an intact cache passes, a blob changed by one byte fails, naming the
/// file and both hashes.
#[cfg(unix)]
#[test]
fn cached_model_files_are_checked_against_their_blob_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, weights) = fake_hub_cache(tmp.path());
    let run = || {
        let mut cmd = doctor();
        cmd.env("HF_HUB_CACHE", &hub)
            .env("HF_HUB_OFFLINE", "1")
            .args(["--esm", "test/tiny-fastesm"]);
        cmd
    };
    run()
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "[PASS] ENV-03 --esm test/tiny-fastesm",
        ))
        .stdout(predicate::str::contains(
            "3 files match the content hashes the Hugging Face cache names them by (1 sha256, \
             2 git SHA-1)",
        ));

    // One byte of the weights' blob changed (the end of the file: tensor data).
    let mut bytes = std::fs::read(&weights).unwrap();
    let expected = weights.file_name().unwrap().to_string_lossy().into_owned();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, &bytes).unwrap();
    let actual = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    run()
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "[FAIL] ENV-03 --esm test/tiny-fastesm",
        ))
        .stdout(predicate::str::contains("model.safetensors"))
        .stdout(predicate::str::contains(format!(
            "expected sha256 {expected}, got {actual}"
        )))
        .stderr(predicate::str::contains("--force-download"));
}

/// `-v` raises every workspace crate's logs, not only the binary's: a debug line of the models
/// crate reaches stderr with it and not without it.
#[test]
fn verbose_shows_the_library_crates_debug_logs() {
    let clf = format!("{O}/classifier/model_full.pth");
    let debug_line = format!("classifier {clf}: ");
    Command::new(BIN)
        .args(["-v", "doctor", "--device", "cpu", "--classifier", &clf])
        .env_remove("RUST_LOG")
        .assert()
        .success()
        .stderr(predicate::str::contains(debug_line.clone()));
    doctor()
        .args(["--classifier", &clf])
        .env_remove("RUST_LOG")
        .assert()
        .success()
        .stderr(predicate::str::contains(debug_line).not());
}

/// A reader that closes the pipe before the report is written (`virnucpro bench --json | head`)
/// ends the command quietly: no panic, no error, exit 0.
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::process::{Command as StdCommand, Stdio};
    let mut child = StdCommand::new(BIN)
        .args([
            "bench",
            "--model",
            &format!("{O}/fastesm"),
            "--device",
            "cpu",
        ])
        .args([
            "--shapes",
            "2x8",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the model is even loaded: the report's write fails with a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}
