//! `virnucpro embed` end to end: output file, exit codes and error messages.

use assert_cmd::Command;
use predicates::prelude::*;
use virnucpro_core::embed::read_embeddings;

use crate::util::{oracle, vnp};

fn embed() -> Command {
    let mut cmd = vnp();
    cmd.arg("embed");
    // Keep tests independent of the machine's HF settings.
    cmd.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_ENDPOINT")
        .env_remove("RUST_LOG");
    cmd
}

#[test]
fn writes_embeddings_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fast.safetensors");
    embed()
        .arg("--model")
        .arg(oracle("fastesm"))
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu", "--batch-tokens", "2048"])
        .assert()
        .success()
        .stderr(predicate::str::contains("embedded 7 sequences"))
        .stderr(predicate::str::contains("token-dropout scaling off"));
    let f = read_embeddings(&out).unwrap();
    assert_eq!(f.embeddings.dims(), &[7, 128]);
    assert_eq!(f.ids[0], "p_single");
    assert_eq!(f.model.unwrap(), oracle("fastesm").display().to_string());
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

#[test]
fn token_dropout_choice_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    embed()
        .arg("--model")
        .arg(oracle("fastesm"))
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(dir.path().join("x.safetensors"))
        .args(["--device", "cpu", "--esm-token-dropout", "on"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "token-dropout scaling on (--esm-token-dropout on)",
        ));
}

#[test]
fn empty_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.fa");
    std::fs::write(&empty, "").unwrap();
    let out = dir.path().join("o.safetensors");
    embed()
        .arg("--model")
        .arg(oracle("esm2"))
        .arg(&empty)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains("no sequences to embed"))
        .stderr(predicate::str::contains("empty.fa"));
    assert!(!out.exists());
}

#[test]
fn record_with_empty_sequence_is_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let fa = dir.path().join("a.fa");
    std::fs::write(&fa, ">ok\nMKV\n>hollow desc\n>ok2\nAA\n").unwrap();
    embed()
        .arg("--model")
        .arg(oracle("esm2"))
        .arg(&fa)
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .args(["--device", "cpu"])
        .assert()
        // Skipped like everywhere else in the tool, with a warning that names the record.
        .success()
        .stderr(predicate::str::contains("hollow"))
        .stderr(predicate::str::contains("empty"));
    let out = virnucpro_core::embed::read_embeddings(&dir.path().join("o.safetensors")).unwrap();
    assert_eq!(out.ids, ["ok", "ok2"]);
}

#[test]
fn missing_input_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    embed()
        .arg("--model")
        .arg(oracle("esm2"))
        .arg(dir.path().join("nope.fa"))
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot open"))
        .stderr(predicate::str::contains("nope.fa"));
}

#[test]
fn unknown_model_type_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.safetensors", "vocab.txt"] {
        std::fs::copy(oracle("esm2").join(f), model.join(f)).unwrap();
    }
    std::fs::write(model.join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    embed()
        .arg("--model")
        .arg(&model)
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "model_type \"t5\" is not supported",
        ))
        .stderr(predicate::str::contains("fast_esm"));
}

#[test]
fn mismatched_config_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    for f in ["model.safetensors", "vocab.txt"] {
        std::fs::copy(oracle("esm2").join(f), model.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(oracle("esm2/config.json"))
        .unwrap()
        .replace("\"hidden_size\": 128", "\"hidden_size\": 192");
    std::fs::write(model.join("config.json"), cfg).unwrap();
    embed()
        .arg("--model")
        .arg(&model)
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "tensor `esm.embeddings.word_embeddings.weight`",
        ))
        .stderr(predicate::str::contains("[33, 128]"))
        .stderr(predicate::str::contains("[33, 192]"));
}

#[test]
fn offline_hub_id_from_hf_home() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let repo = hf_home.join("hub/models--tiny--esm2");
    let snap = repo.join("snapshots/abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc").unwrap();
    for f in ["config.json", "vocab.txt", "model.safetensors"] {
        std::fs::copy(oracle("esm2").join(f), snap.join(f)).unwrap();
    }
    let out = dir.path().join("o.safetensors");
    embed()
        .env("HF_HOME", &hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .args(["--model", "tiny/esm2"])
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu"])
        .assert()
        .success();
    assert_eq!(read_embeddings(&out).unwrap().model.unwrap(), "tiny/esm2");

    embed()
        .env("HF_HOME", &hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .args(["--model", "zhihan1996/DNABERT-S"])
        .arg(oracle("inputs/dna.fa"))
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "huggingface-cli download zhihan1996/DNABERT-S",
        ));
}

#[test]
fn gpu_without_feature_fails_clearly() {
    if cfg!(feature = "cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    embed()
        .arg("--model")
        .arg(oracle("esm2"))
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .args(["--device", "cuda"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("without CUDA support"))
        .stderr(predicate::str::contains("--features cuda"));
}

#[test]
fn bad_option_values_are_rejected() {
    for (flag, value, msg) in [
        ("--device", "tpu", "not a device"),
        ("--dtype", "f8", "not a dtype"),
        ("--esm-token-dropout", "maybe", "auto, on, off"),
        ("--batch-tokens", "0", "0"),
    ] {
        embed()
            .args([
                "--model",
                "x",
                "in.fa",
                "--out",
                "o.safetensors",
                flag,
                value,
            ])
            .assert()
            .failure()
            .stderr(predicate::str::contains(msg));
    }
}

#[test]
fn output_directory_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    embed()
        .arg("--model")
        .arg(oracle("esm2"))
        .arg(oracle("inputs/proteins.fa"))
        .arg("--out")
        .arg(dir.path().join("missing/o.safetensors"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not exist"));
}

#[test]
fn dnabert_input_over_tokenizer_limit_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let fa = dir.path().join("long.fa");
    // Far beyond the tiny tokenizer's 512-token limit, whatever the merges.
    let long: String = "ACGTTGCA".repeat(2000);
    std::fs::write(&fa, format!(">short\nACGTACGT\n>too_long_one\n{long}\n")).unwrap();
    embed()
        .arg("--model")
        .arg(oracle("dnabert"))
        .arg(&fa)
        .arg("--out")
        .arg(dir.path().join("o.safetensors"))
        .args(["--device", "cpu"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("too_long_one"));
}

#[test]
fn random_weight_dnabert_has_the_real_width() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    embed()
        .args(["--random-weights", "dnabert-s", "--model"])
        .arg(oracle("dnabert"))
        .arg(oracle("inputs/dna.fa"))
        .arg("--out")
        .arg(&out)
        .args(["--device", "cpu"])
        .assert()
        .success();
    assert_eq!(read_embeddings(&out).unwrap().embeddings.dims(), &[5, 768]);
}
