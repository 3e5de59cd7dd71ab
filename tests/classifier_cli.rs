//! `virnucpro convert`.

use candle_core::Device;
use predicates::str::contains;
use virnucpro_models::classifier::Classifier;

use crate::util::{oracle, vnp as virnucpro};

#[test]
fn convert_pickled_module_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clf.safetensors");
    virnucpro()
        .arg("convert")
        .arg("--classifier")
        .arg(oracle("classifier/model_full.pth"))
        .arg("--out")
        .arg(&out)
        .args([
            "--dnabert-model",
            "zhihan1996/DNABERT-S",
            "--dnabert-hidden",
            "128",
        ])
        .args([
            "--esm-model",
            "Synthyra/FastESM2_650",
            "--esm-hidden",
            "128",
        ])
        .args(["--chunk-len", "60"])
        .assert()
        .success()
        .stdout(contains("clf.safetensors"))
        .stdout(contains("256"))
        .stdout(contains("Synthyra/FastESM2_650"));

    let c = Classifier::load(&out, &Device::Cpu).unwrap();
    let m = c.meta();
    assert_eq!((m.input_dim, m.hidden_dim, m.bn_eps), (256, 32, 1e-5));
    assert_eq!(m.dnabert_model.as_deref(), Some("zhihan1996/DNABERT-S"));
    assert_eq!(m.dnabert_hidden, Some(128));
    assert_eq!(m.esm_model.as_deref(), Some("Synthyra/FastESM2_650"));
    assert_eq!(m.esm_hidden, Some(128));
    assert_eq!(m.chunk_len, Some(60));
    let reference = Classifier::load(&oracle("classifier/model_full.pth"), &Device::Cpu).unwrap();
    for (name, t) in reference.tensors() {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = c.tensors()[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{name}");
    }

    // Converting the converted file keeps its metadata and can override part of it.
    let out2 = dir.path().join("clf2.safetensors");
    virnucpro()
        .arg("convert")
        .arg("--classifier")
        .arg(&out)
        .arg("--out")
        .arg(&out2)
        .args(["--chunk-len", "300"])
        .assert()
        .success();
    let m2 = Classifier::load(&out2, &Device::Cpu)
        .unwrap()
        .meta()
        .clone();
    assert_eq!(m2.chunk_len, Some(300));
    assert_eq!(m2.esm_model.as_deref(), Some("Synthyra/FastESM2_650"));
}

#[test]
fn convert_state_dict_fills_the_other_hidden_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sd.safetensors");
    virnucpro()
        .arg("convert")
        .arg("--classifier")
        .arg(oracle("classifier/state_dict.pth"))
        .arg("--out")
        .arg(&out)
        .args([
            "--dnabert-model",
            "tiny-dnabert",
            "--dnabert-hidden",
            "128",
            "--esm-model",
            "tiny-esm",
        ])
        .assert()
        .success();
    let m = Classifier::load(&out, &Device::Cpu).unwrap().meta().clone();
    assert_eq!(m.esm_hidden, Some(128));
    assert_eq!(m.chunk_len, None);
}

#[test]
fn convert_refuses_sizes_that_do_not_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.safetensors");
    virnucpro()
        .arg("convert")
        .arg("--classifier")
        .arg(oracle("classifier/model_full.pth"))
        .arg("--out")
        .arg(&out)
        .args([
            "--dnabert-model",
            "zhihan1996/DNABERT-S",
            "--esm-model",
            "Synthyra/FastESM2_650",
        ])
        .assert()
        .failure()
        .stderr(contains("256"))
        .stderr(contains("768"))
        .stderr(contains("1280"));
    assert!(!out.exists());
}

#[test]
fn convert_reports_unreadable_input() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("garbage.pth");
    std::fs::write(&bad, b"this is not a model at all, just some text").unwrap();
    virnucpro()
        .arg("convert")
        .arg("--classifier")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .failure()
        .stderr(contains("garbage.pth"))
        .stderr(contains("supported classifier formats"));
}

#[test]
fn convert_help_has_an_example() {
    virnucpro()
        .args(["convert", "--help"])
        .assert()
        .success()
        .stdout(contains("--classifier"))
        .stdout(contains("300_model.pth"));
}
