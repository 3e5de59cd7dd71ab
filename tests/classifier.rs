//! The VirNucPro classifier: the three file formats against the PyTorch oracle, save/load,
//! the dimension guard, and corrupt input.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use virnucpro_models::classifier::{Classifier, ClassifierMeta, TENSOR_NAMES};
use virnucpro_models::WeightsError;

use crate::util::{max_abs_diff, oracle};

fn expected() -> (Tensor, Tensor) {
    let t = candle_core::safetensors::load(oracle("expected/classifier.safetensors"), &Device::Cpu)
        .unwrap();
    (t["features"].clone(), t["probabilities"].clone())
}

fn load(rel: &str) -> Classifier {
    Classifier::load(&oracle(rel), &Device::Cpu).unwrap_or_else(|e| panic!("{rel}: {e:#}"))
}

fn check_against_oracle(rel: &str) -> f32 {
    let c = load(rel);
    let (features, probs) = expected();
    let out = c.forward(&features).unwrap();
    assert_eq!(out.dims(), &[16, 2]);
    assert_eq!(out.dtype(), DType::F32);
    let err = max_abs_diff(&out, &probs);
    eprintln!("{rel}: max abs error vs oracle probabilities = {err:e}");
    assert!(err <= 1e-6, "{rel}: max abs error {err}");
    err
}

#[test]
fn pickled_module_matches_oracle() {
    check_against_oracle("classifier/model_full.pth");
    let m = load("classifier/model_full.pth").meta().clone();
    assert_eq!((m.input_dim, m.hidden_dim), (256, 32));
    assert_eq!(m.bn_eps, 1e-5);
    assert!(
        m.source_format.contains("pickled PyTorch module"),
        "{}",
        m.source_format
    );
    assert!(
        m.source_format.contains("MLPClassifier"),
        "{}",
        m.source_format
    );
}

#[test]
fn state_dict_matches_oracle() {
    check_against_oracle("classifier/state_dict.pth");
    let c = load("classifier/state_dict.pth");
    assert_eq!(c.input_dim(), 256);
    assert!(
        c.meta().source_format.contains("state dict"),
        "{}",
        c.meta().source_format
    );
}

#[test]
fn both_pth_formats_give_identical_weights() {
    let a = load("classifier/model_full.pth");
    let b = load("classifier/state_dict.pth");
    assert_eq!(a.tensors().len(), TENSOR_NAMES.len());
    for name in TENSOR_NAMES {
        let (x, y) = (&a.tensors()[name], &b.tensors()[name]);
        assert_eq!(x.dims(), y.dims(), "{name}");
        let x = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(x, y, "{name}");
    }
}

/// Pickle protocol 4 (`torch.save(..., pickle_protocol=4)`) and a `DataParallel` wrapper, made
/// from the oracle by `tests/data/classifier_extra/make.py`.
#[test]
fn pickle_variants_match_oracle() {
    let reference = load("classifier/model_full.pth");
    for rel in [
        "../classifier_extra/model_full_proto4.pth",
        "../classifier_extra/dataparallel.pth",
    ] {
        check_against_oracle(rel);
        let c = load(rel);
        for name in TENSOR_NAMES {
            let a = reference.tensors()[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = c.tensors()[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(a, b, "{rel}: {name}");
        }
        assert_eq!(c.meta().bn_eps, 1e-5);
    }
    let dp = load("../classifier_extra/dataparallel.pth");
    assert!(
        dp.meta().source_format.contains("DataParallel"),
        "{}",
        dp.meta().source_format
    );
}

#[test]
fn forward_converts_dtype_and_rejects_wrong_width() {
    let c = load("classifier/model_full.pth");
    let (features, probs) = expected();
    let out = c.forward(&features.to_dtype(DType::F64).unwrap()).unwrap();
    assert_eq!(out.dtype(), DType::F32);
    assert!(max_abs_diff(&out, &probs) <= 1e-6);
    let sums = out.sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
    let empty = c
        .forward(&Tensor::zeros((0, 256), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(empty.dims(), &[0, 2]);
    let err = c
        .forward(&Tensor::zeros((3, 255), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("256"), "{err}");
    assert!(c
        .forward(&Tensor::zeros(256, DType::F32, &Device::Cpu).unwrap())
        .is_err());
}

#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clf.safetensors");
    let c = load("classifier/model_full.pth")
        .with_dnabert("zhihan1996/DNABERT-S", 128)
        .with_esm("Synthyra/FastESM2_650", 128)
        .with_chunk_len(60)
        .with_training(serde_json::json!({"seed": 1, "metrics": {"accuracy": 0.5}}));
    c.save(&path).unwrap();
    // Nothing but the file itself is left behind.
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("clf.safetensors")]);

    let back = Classifier::load(&path, &Device::Cpu).unwrap();
    let (mut m1, mut m2) = (c.meta().clone(), back.meta().clone());
    assert!(
        m2.source_format.contains("format v1"),
        "{}",
        m2.source_format
    );
    m1.source_format.clear();
    m2.source_format.clear();
    assert_eq!(m1, m2);
    let (features, _) = expected();
    let (a, b) = (
        c.forward(&features).unwrap(),
        back.forward(&features).unwrap(),
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // The metadata is as docs/FORMATS.md specifies.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().clone().unwrap();
    assert_eq!(md["format"], "virnucpro-classifier");
    assert_eq!(md["format_version"], "1");
    assert_eq!(md["input_dim"], "256");
    assert_eq!(md["hidden_dim"], "32");
    assert_eq!(md["bn_eps"].parse::<f64>().unwrap(), 1e-5);
    assert_eq!(md["chunk_len"], "60");
    assert_eq!(md["esm_hidden"], "128");

    // Saving again over the same file works (atomic replace).
    back.save(&path).unwrap();
    Classifier::load(&path, &Device::Cpu).unwrap();
}

#[test]
fn save_refuses_inconsistent_hidden_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let c = load("classifier/state_dict.pth")
        .with_dnabert("a", 128)
        .with_esm("b", 100);
    let err = format!(
        "{:#}",
        c.save(&dir.path().join("x.safetensors")).unwrap_err()
    );
    assert!(err.contains("228") && err.contains("256"), "{err}");
}

fn oracle_tensors() -> HashMap<String, Tensor> {
    load("classifier/state_dict.pth")
        .tensors()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn write_plain(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn plain_safetensors_state_dict_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.safetensors");
    // DataParallel-style names, and the integer buffer PyTorch keeps.
    let mut tensors: HashMap<String, Tensor> = oracle_tensors()
        .into_iter()
        .map(|(k, v)| (format!("module.{k}"), v))
        .collect();
    tensors.insert(
        "module.bn1.num_batches_tracked".into(),
        Tensor::new(&[7i64], &Device::Cpu).unwrap(),
    );
    write_plain(&path, &tensors);
    let c = Classifier::load(&path, &Device::Cpu).unwrap();
    assert!(c.meta().source_format.contains("no virnucpro metadata"));
    let (features, probs) = expected();
    assert!(max_abs_diff(&c.forward(&features).unwrap(), &probs) <= 1e-6);
}

#[test]
fn from_tensors_builds_and_checks() {
    let t = oracle_tensors();
    let c = Classifier::from_tensors(t.clone(), ClassifierMeta::default()).unwrap();
    assert_eq!((c.meta().input_dim, c.meta().hidden_dim), (256, 32));
    let bad = ClassifierMeta {
        input_dim: 300,
        ..Default::default()
    };
    let err = format!("{:#}", Classifier::from_tensors(t, bad).unwrap_err());
    assert!(err.contains("300") && err.contains("256"), "{err}");
}

/// A random classifier of the given sizes (for the dimension guard).
fn random_classifier(input: usize, hidden: usize) -> Classifier {
    let dev = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 0.1, shape, &dev).unwrap();
    let mut t = HashMap::new();
    t.insert("hidden_layer.weight".to_owned(), r(&[hidden, input]));
    t.insert("hidden_layer.bias".to_owned(), r(&[hidden]));
    t.insert(
        "bn1.weight".to_owned(),
        Tensor::ones(hidden, DType::F32, &dev).unwrap(),
    );
    t.insert("bn1.bias".to_owned(), r(&[hidden]));
    t.insert("bn1.running_mean".to_owned(), r(&[hidden]));
    t.insert(
        "bn1.running_var".to_owned(),
        Tensor::ones(hidden, DType::F32, &dev).unwrap(),
    );
    t.insert("output_layer.weight".to_owned(), r(&[2, hidden]));
    t.insert("output_layer.bias".to_owned(), r(&[2]));
    Classifier::from_tensors(t, ClassifierMeta::default()).unwrap()
}

#[test]
fn dimension_guard_accepts_matching_models() {
    let c = load("classifier/model_full.pth");
    let warnings = c
        .check_dimensions(("dnabert", 128), ("fastesm", 128), 60, true)
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn dimension_guard_mismatch_names_models_and_sizes() {
    let c = load("classifier/model_full.pth");
    let err = format!(
        "{:#}",
        c.check_dimensions(("my-dnabert", 128), ("my-esm", 200), 60, false)
            .unwrap_err()
    );
    for needle in [
        "my-dnabert",
        "my-esm",
        "128",
        "200",
        "328",
        "256",
        "model_full.pth",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
}

#[test]
fn dimension_guard_suggests_the_fitting_protein_model() {
    // Published VirNucPro classifiers: 3328 = 768 + 2560 (ESM2-3B).
    let c = random_classifier(3328, 8);
    let err = format!(
        "{:#}",
        c.check_dimensions(
            ("zhihan1996/DNABERT-S", 768),
            ("Synthyra/FastESM2_650", 1280),
            300,
            false
        )
        .unwrap_err()
    );
    for needle in [
        "3328",
        "2048",
        "768",
        "1280",
        "Synthyra/FastESM2_650",
        "zhihan1996/DNABERT-S",
        "facebook/esm2_t36_3B_UR50D",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    let c = random_classifier(2048, 8);
    let err = format!(
        "{:#}",
        c.check_dimensions(
            ("zhihan1996/DNABERT-S", 768),
            ("facebook/esm2_t36_3B_UR50D", 2560),
            300,
            false
        )
        .unwrap_err()
    );
    assert!(
        err.contains("FastESM2_650") && err.contains("3328"),
        "{err}"
    );
    let c = random_classifier(1000, 8);
    let err = format!(
        "{:#}",
        c.check_dimensions(("d", 768), ("e", 1280), 300, false)
            .unwrap_err()
    );
    assert!(err.contains("hidden size 232"), "{err}");
}

#[test]
fn dimension_guard_metadata_mismatch_warns_or_fails_when_strict() {
    let c = load("classifier/model_full.pth")
        .with_dnabert("zhihan1996/DNABERT-S", 128)
        .with_esm("Synthyra/FastESM2_650", 128)
        .with_chunk_len(60);
    // Same models, named by a local path: no warning.
    let w = c
        .check_dimensions(
            ("/models/DNABERT-S/", 128),
            ("Synthyra/FastESM2_650", 128),
            60,
            true,
        )
        .unwrap();
    assert!(w.is_empty(), "{w:?}");

    let w = c
        .check_dimensions(
            ("zhihan1996/DNABERT-S", 128),
            ("facebook/esm2_t6_8M_UR50D", 128),
            300,
            false,
        )
        .unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w
        .iter()
        .any(|m| m.contains("Synthyra/FastESM2_650") && m.contains("facebook/esm2_t6_8M_UR50D")));
    // The fix it suggests is a flag of predict and doctor.
    assert!(
        w.iter()
            .any(|m| m.contains("use --esm Synthyra/FastESM2_650)")),
        "{w:?}"
    );
    assert!(w.iter().any(|m| m.contains("60") && m.contains("300")));

    let err = format!(
        "{:#}",
        c.check_dimensions(
            ("zhihan1996/DNABERT-S", 128),
            ("facebook/esm2_t6_8M_UR50D", 128),
            300,
            true
        )
        .unwrap_err()
    );
    assert!(
        err.contains("strict") && err.contains("facebook/esm2_t6_8M_UR50D"),
        "{err}"
    );
}

// ---- corrupt and wrong input: always an error that names the file, never a panic ----

fn load_err(path: &Path) -> String {
    match std::panic::catch_unwind(|| Classifier::load(path, &Device::Cpu)) {
        Ok(Ok(_)) => panic!("{} loaded, expected an error", path.display()),
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => panic!("{} panicked", path.display()),
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Copies a zip, letting `edit` replace (Some) or drop (None) each entry's bytes.
fn rewrite_zip(src: &Path, dst: &Path, mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_owned();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            zout.start_file(name, opts).unwrap();
            zout.write_all(&data).unwrap();
        }
    }
    zout.finish().unwrap();
}

#[test]
fn random_bytes_and_empty_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("random.pth");
    std::fs::write(&p, Rng(42).bytes(4096)).unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("random.pth") && err.contains("supported"),
        "{err}"
    );

    let p = dir.path().join("empty.safetensors");
    std::fs::write(&p, b"").unwrap();
    let err = load_err(&p);
    assert!(err.contains("empty"), "{err}");

    let err = load_err(&dir.path().join("does-not-exist.pth"));
    assert!(err.contains("does-not-exist.pth"), "{err}");
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(oracle("classifier/model_full.pth")).unwrap();
    for cut in [10, 100, full.len() / 2, full.len() - 30] {
        let p = dir.path().join(format!("cut{cut}.pth"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let err = load_err(&p);
        assert!(err.contains(&format!("cut{cut}.pth")), "{err}");
    }
    // A safetensors file cut inside its data.
    let st = dir.path().join("whole.safetensors");
    load("classifier/model_full.pth").save(&st).unwrap();
    let bytes = std::fs::read(&st).unwrap();
    let p = dir.path().join("cut.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(&p);
    assert!(err.contains("cut.safetensors"), "{err}");
}

/// One flipped byte in a tensor's zip entry (bit rot, a bad copy): every entry carries a
/// CRC-32, so the load fails and names the file and the entry instead of scoring differently.
#[test]
fn a_flipped_byte_in_a_tensor_entry_fails_its_crc() {
    let dir = tempfile::tempdir().unwrap();
    let src = oracle("classifier/model_full.pth");
    let mut bytes = std::fs::read(&src).unwrap();
    let entry = "model_full/data/0"; // the hidden layer's weight, 32 KiB
    let start = {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
        let f = zip.by_name(entry).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        f.data_start() as usize
    };
    bytes[start + 1000] ^= 0x10;
    let p = dir.path().join("bitrot.pth");
    std::fs::write(&p, &bytes).unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("bitrot.pth") && err.contains(entry) && err.contains("CRC-32"),
        "{err}"
    );
    // Callers tell a damaged file from other failures by the error's type, not its text.
    let typed = Classifier::load(&p, &Device::Cpu).err().unwrap();
    match typed.downcast_ref::<WeightsError>() {
        Some(WeightsError::ChecksumMismatch { file, entry: e, .. }) => {
            assert_eq!((file.as_path(), e.as_str()), (p.as_path(), entry))
        }
        other => panic!("expected a checksum mismatch, got {other:?}: {typed:#}"),
    }
    // The pickle entry is checked the same way.
    let mut bytes = std::fs::read(&src).unwrap();
    let start = {
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&src).unwrap()).unwrap();
        let f = zip.by_name("model_full/data.pkl").unwrap();
        f.data_start() as usize
    };
    bytes[start + 200] ^= 0x01;
    let p = dir.path().join("badpickle.pth");
    std::fs::write(&p, &bytes).unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("badpickle.pth") && err.contains("data.pkl") && err.contains("CRC-32"),
        "{err}"
    );
}

#[test]
fn zip_without_a_checkpoint_or_without_tensors_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = oracle("classifier/model_full.pth");

    let p = dir.path().join("other.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    z.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(b"hello").unwrap();
    z.finish().unwrap();
    let err = load_err(&p);
    assert!(
        err.contains("other.zip") && err.contains("data.pkl"),
        "{err}"
    );

    let p = dir.path().join("nodata.pth");
    rewrite_zip(&src, &p, |name, d| (!name.contains("/data/")).then_some(d));
    let err = load_err(&p);
    assert!(
        err.contains("nodata.pth") && err.contains("hidden_layer.weight"),
        "{err}"
    );

    let p = dir.path().join("short_storage.pth");
    rewrite_zip(&src, &p, |name, d| {
        Some(if name.ends_with("/data/0") {
            d[..100].to_vec()
        } else {
            d
        })
    });
    let err = load_err(&p);
    assert!(
        err.contains("short_storage.pth") && err.contains("truncated"),
        "{err}"
    );

    // A pickle that is not a module or state dict: `{'a': 1}`.
    let p = dir.path().join("dict.pth");
    rewrite_zip(&src, &p, |name, d| {
        Some(if name.ends_with("data.pkl") {
            b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.".to_vec()
        } else {
            d
        })
    });
    let err = load_err(&p);
    assert!(err.contains("dict.pth") && err.contains("`a`"), "{err}");
}

#[test]
fn missing_or_misshapen_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = oracle_tensors();
    t.remove("bn1.running_var");
    let p = dir.path().join("novar.safetensors");
    write_plain(&p, &t);
    let err = load_err(&p);
    assert!(
        err.contains("novar.safetensors") && err.contains("bn1.running_var"),
        "{err}"
    );

    let mut t = oracle_tensors();
    t.insert(
        "bn1.running_var".into(),
        Tensor::ones(31, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("shape.safetensors");
    write_plain(&p, &t);
    let err = load_err(&p);
    for needle in ["shape.safetensors", "bn1.running_var", "[31]", "[32]"] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }

    let mut t = oracle_tensors();
    t.insert(
        "output_layer.weight".into(),
        Tensor::ones((3, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "output_layer.bias".into(),
        Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("three.safetensors");
    write_plain(&p, &t);
    let err = load_err(&p);
    assert!(
        err.contains("output_layer.weight") && err.contains("3 output classes"),
        "{err}"
    );

    let mut t = oracle_tensors();
    t.insert(
        "bn1.running_mean".into(),
        Tensor::new(&[f32::NAN; 32], &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("nan.safetensors");
    write_plain(&p, &t);
    let err = load_err(&p);
    assert!(
        err.contains("bn1.running_mean") && err.contains("non-finite"),
        "{err}"
    );

    // The pickled module with the running variance's storage key pointing at a 2-element storage.
    let p = dir.path().join("swapped.pth");
    let src = oracle("classifier/state_dict.pth");
    rewrite_zip(&src, &p, |name, d| {
        Some(if name.ends_with("/data/5") {
            vec![0u8; 8]
        } else {
            d
        })
    });
    let err = load_err(&p);
    assert!(err.contains("swapped.pth"), "{err}");
}

#[test]
fn bad_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = oracle_tensors();
    let write = |name: &str, md: &[(&str, &str)]| -> PathBuf {
        let p = dir.path().join(name);
        let data: Vec<(String, Tensor)> = t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let views: Vec<(String, Vec<u8>, Vec<usize>)> = data
            .iter()
            .map(|(k, v)| {
                let bytes = v
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                (k.clone(), bytes, v.dims().to_vec())
            })
            .collect();
        let st: Vec<(String, safetensors::tensor::TensorView)> = views
            .iter()
            .map(|(k, b, s)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        let md: HashMap<String, String> = md
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        std::fs::write(&p, safetensors::serialize(st, Some(md)).unwrap()).unwrap();
        p
    };
    let base = [
        ("format", "virnucpro-classifier"),
        ("format_version", "1"),
        ("input_dim", "256"),
        ("hidden_dim", "32"),
    ];
    Classifier::load(&write("ok.safetensors", &base), &Device::Cpu).unwrap();

    let mut md = base.to_vec();
    md[1].1 = "2";
    let err = load_err(&write("v2.safetensors", &md));
    assert!(
        err.contains("v2.safetensors") && err.contains("upgrade"),
        "{err}"
    );

    let mut md = base.to_vec();
    md[2].1 = "300";
    let err = load_err(&write("dim.safetensors", &md));
    assert!(
        err.contains("input_dim 300") && err.contains("256"),
        "{err}"
    );

    let mut md = base.to_vec();
    md.push(("bn_eps", "tiny"));
    let err = load_err(&write("eps.safetensors", &md));
    assert!(err.contains("bn_eps") && err.contains("tiny"), "{err}");

    let mut md = base.to_vec();
    md.push(("training", "{not json"));
    let err = load_err(&write("json.safetensors", &md));
    assert!(err.contains("training"), "{err}");
}

#[test]
fn mutated_pickles_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    for (i, src) in ["classifier/model_full.pth", "classifier/state_dict.pth"]
        .iter()
        .enumerate()
    {
        let src = oracle(src);
        for round in 0..60 {
            let p = dir.path().join(format!("m{i}_{round}.pth"));
            rewrite_zip(&src, &p, |name, mut d| {
                if name.ends_with("data.pkl") {
                    match rng.next() % 3 {
                        0 => {
                            let k = rng.next() as usize % d.len();
                            d[k] = rng.next() as u8;
                        }
                        1 => d.truncate(rng.next() as usize % d.len()),
                        _ => {
                            let k = rng.next() as usize % d.len();
                            d.insert(k, rng.next() as u8);
                        }
                    }
                }
                Some(d)
            });
            let result = std::panic::catch_unwind(|| Classifier::load(&p, &Device::Cpu));
            assert!(
                result.is_ok(),
                "round {round} of {} panicked",
                src.display()
            );
        }
    }
}
