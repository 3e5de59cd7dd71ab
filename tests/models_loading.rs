//! Model resolution and loading: local directories, a fake Hugging Face cache, checkpoint
//! layouts (sharded, unprefixed, PyTorch zip), and the errors for everything that can be wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use virnucpro_assets::hub::{resolve_model_with, HubOptions};
use virnucpro_assets::load::load_embedding_model;
use virnucpro_core::embed::read_embeddings;
use virnucpro_models::config::ModelFamily;
use virnucpro_models::device::DTypeSpec;
use virnucpro_models::embed::{embed_sequences, load_from_files, EmbeddingModel, LoadOptions};
use virnucpro_models::weights::{Checkpoint, WeightFiles, WeightsFormat};

use crate::util::{fake_hub, oracle, proteins};

/// A scratch copy of an oracle model directory.
fn copy_model(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(oracle(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

fn load(dir: &Path) -> anyhow::Result<EmbeddingModel> {
    // f32: the oracle's 1e-5 bounds are f32's (`auto` is bf16 on an AMX CPU).
    load_embedding_model(
        &dir.display().to_string(),
        &Device::Cpu,
        DTypeSpec::F32,
        &LoadOptions::default(),
    )
}

fn load_err(dir: &Path) -> String {
    format!("{:#}", load(dir).expect_err("loading should fail"))
}

/// Max per-row relative error against the esm2 reference.
fn esm2_error(model: &EmbeddingModel) -> f64 {
    let got = embed_sequences(model, &proteins(), 4096)
        .unwrap()
        .embeddings;
    let want = read_embeddings(&oracle("expected/esm2.safetensors"))
        .unwrap()
        .embeddings;
    let a: Vec<Vec<f32>> = got.to_vec2().unwrap();
    let b: Vec<Vec<f32>> = want.to_vec2().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let d: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let n: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (d / n).sqrt()
        })
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------- config / weights mismatch

#[test]
fn hidden_size_mismatch_names_tensor_shapes_and_files() {
    let (_t, dir) = copy_model("esm2");
    edit_config(&dir, "hidden_size", 256.into());
    let err = load_err(&dir);
    assert!(
        err.contains("esm.embeddings.word_embeddings.weight"),
        "{err}"
    );
    assert!(
        err.contains("[33, 128]") && err.contains("[33, 256]"),
        "{err}"
    );
    assert!(
        err.contains("model.safetensors") && err.contains("config.json"),
        "{err}"
    );
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn intermediate_size_mismatch_names_the_layer_tensor() {
    let (_t, dir) = copy_model("esm2");
    edit_config(&dir, "intermediate_size", 512.into());
    let err = load_err(&dir);
    assert!(
        err.contains("esm.encoder.layer.0.intermediate.dense.weight"),
        "{err}"
    );
    assert!(
        err.contains("[256, 128]") && err.contains("[512, 128]"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_model("esm2");
    edit_config(&dir, "num_hidden_layers", 3.into());
    let err = load_err(&dir);
    assert!(err.contains("esm.encoder.layer.2."), "{err}");
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn unknown_model_type_names_it_and_the_supported_ones() {
    let (_t, dir) = copy_model("esm2");
    edit_config(&dir, "model_type", "llama".into());
    let err = load_err(&dir);
    assert!(err.contains("\"llama\""), "{err}");
    assert!(
        err.contains("esm") && err.contains("fast_esm") && err.contains("bert"),
        "{err}"
    );
}

#[test]
fn invalid_config_json_is_reported_with_its_path() {
    let (_t, dir) = copy_model("esm2");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("config.json") && err.contains("not a valid"),
        "{err}"
    );
}

#[test]
fn unsupported_esm_settings_are_reported() {
    let (_t, dir) = copy_model("esm2");
    edit_config(&dir, "position_embedding_type", "absolute".into());
    let err = load_err(&dir);
    assert!(
        err.contains("position_embedding_type") && err.contains("absolute"),
        "{err}"
    );
}

// ---------------------------------------------------------------- missing / broken files

#[test]
fn missing_files_are_named() {
    for (file, expect) in [
        ("config.json", "config.json not found"),
        ("vocab.txt", "vocab.txt not found"),
        (
            "model.safetensors",
            "model.safetensors (or pytorch_model.bin) not found",
        ),
    ] {
        let (_t, dir) = copy_model("esm2");
        std::fs::remove_file(dir.join(file)).unwrap();
        let err = load_err(&dir);
        assert!(err.contains(expect), "{file}: {err}");
        assert!(err.contains(&dir.display().to_string()), "{file}: {err}");
    }
}

#[test]
fn truncated_safetensors_is_reported() {
    let (_t, dir) = copy_model("esm2");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("cannot read safetensors file"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn vocabulary_without_special_tokens_is_reported() {
    let (_t, dir) = copy_model("esm2");
    std::fs::write(dir.join("vocab.txt"), "A\nC\n").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("vocab.txt") && err.contains("<cls>"), "{err}");
}

#[test]
fn nonexistent_directory_and_file_specs() {
    let err = format!(
        "{:#}",
        load(Path::new("./no/such/model-dir")).expect_err("must fail")
    );
    assert!(err.contains("does not exist"), "{err}");
    let err = format!(
        "{:#}",
        load(&oracle("esm2/config.json")).expect_err("must fail")
    );
    assert!(err.contains("is a file"), "{err}");
}

// ---------------------------------------------------------------- checkpoint layouts

/// esm2 weights without the `esm.` prefix, split in two shards with an index.
#[test]
fn sharded_unprefixed_safetensors_load_and_match() {
    let (_t, dir) = copy_model("esm2");
    let all = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let short = name.strip_prefix("esm.").unwrap_or(name).to_string();
        let (shard, file) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        shard.insert(short.clone(), all[*name].clone());
        weight_map.insert(short, file.into());
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let model = load(&dir).unwrap();
    let err = esm2_error(&model);
    assert!(err <= 1e-5, "sharded/unprefixed: {err:.3e}");
}

#[test]
fn missing_shard_is_named() {
    let (_t, dir) = copy_model("esm2");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"x": "model-00001-of-00002.safetensors"}});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
}

/// PyTorch zip checkpoints (the DNABERT-S layout) read without Python, with shape checks.
#[test]
fn pytorch_bin_checkpoint_reads_and_checks_shapes() {
    let weights = WeightFiles {
        format: WeightsFormat::Pytorch,
        files: vec![oracle("dnabert/pytorch_model.bin")],
    };
    let ckpt = Checkpoint::open(
        &weights,
        ModelFamily::DnaBert.checkpoint_prefix(),
        "dnabert/config.json",
    )
    .unwrap();
    assert!(ckpt
        .names()
        .contains(&"encoder.layer.1.attention.self.Wqkv.weight"));
    let vb = ckpt.into_var_builder(DType::F32, &Device::Cpu);
    let emb = vb
        .get((96, 128), "embeddings.word_embeddings.weight")
        .unwrap();
    assert_eq!(emb.dims(), &[96, 128]);
    let sum: f32 = emb.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(sum > 0.0);
    let err = vb
        .pp("encoder.layer.0.attention.self")
        .get((3 * 256, 256), "Wqkv.weight")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.0.attention.self.Wqkv.weight"),
        "{err}"
    );
    assert!(err.contains("pytorch_model.bin"), "{err}");
    assert!(
        err.contains("[384, 128]") && err.contains("[768, 256]"),
        "{err}"
    );
}

#[test]
fn prefixed_names_are_optional() {
    let weights = WeightFiles::find_in_dir(&oracle("esm2")).unwrap();
    let vb = Checkpoint::open(&weights, "esm.", "config.json")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    let a = vb
        .get((33, 128), "embeddings.word_embeddings.weight")
        .unwrap();
    let b = vb
        .get((33, 128), "esm.embeddings.word_embeddings.weight")
        .unwrap();
    let d: f32 = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(d, 0.0);
    // Keys outside the encoder keep their own names.
    assert!(vb.contains_tensor("lm_head.dense.weight"));
}

/// f16 on the CPU is f16 throughout; bf16 is f32 activations with bf16 matrix products
/// (`kernels::Bf16Linear`), closer to f32.
#[test]
fn half_precision_cpu_path_runs_close() {
    for (spec, dtype) in [(DTypeSpec::F16, DType::F16), (DTypeSpec::Bf16, DType::F32)] {
        let model = load_embedding_model(
            &oracle("esm2").display().to_string(),
            &Device::Cpu,
            spec,
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(model.dtype, dtype);
        let bf16 = spec == DTypeSpec::Bf16;
        assert_eq!(
            model.options.kernels.cpu_matmul == virnucpro_kernels::CpuMatmul::Bf16,
            bf16
        );
        let err = esm2_error(&model);
        eprintln!("{spec} on CPU: max row rel err {err:.3e}");
        assert!(err < if bf16 { 1e-2 } else { 5e-2 }, "{spec}: {err}");
    }
}

// ---------------------------------------------------------------- Hugging Face cache

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: Some(cache.to_path_buf()),
        offline: true,
        endpoint: None,
        token: None,
    }
}

#[test]
fn offline_hub_id_resolves_from_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let snap = fake_hub(
        &cache,
        "Org/tiny-esm2",
        &oracle("esm2"),
        &[
            "config.json",
            "vocab.txt",
            "model.safetensors",
            "tokenizer_config.json",
        ],
    );
    let files = resolve_model_with("Org/tiny-esm2", &offline(&cache)).unwrap();
    assert_eq!(files.family(), ModelFamily::Esm);
    assert_eq!(files.source, "Org/tiny-esm2");
    assert!(
        files.config_path.starts_with(&snap),
        "{:?}",
        files.config_path
    );
    assert!(files.tokenizer.ends_with("vocab.txt"));
    let model =
        load_from_files(files, &Device::Cpu, DTypeSpec::F32, &LoadOptions::default()).unwrap();
    assert_eq!(model.source, "Org/tiny-esm2");
    let err = esm2_error(&model);
    assert!(err <= 1e-5, "{err:.3e}");
}

#[test]
fn offline_uncached_hub_id_says_how_to_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let err = format!(
        "{:#}",
        resolve_model_with("Synthyra/FastESM2_650", &offline(&cache)).unwrap_err()
    );
    assert!(
        err.contains("huggingface-cli download Synthyra/FastESM2_650"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(err.contains("local directory"), "{err}");
}

#[test]
fn offline_partially_cached_names_the_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    fake_hub(
        &cache,
        "org/half",
        &oracle("esm2"),
        &["config.json", "vocab.txt"],
    );
    let err = format!(
        "{:#}",
        resolve_model_with("org/half", &offline(&cache)).unwrap_err()
    );
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("huggingface-cli download org/half"), "{err}");
}

#[test]
fn unreachable_hub_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        cache_dir: Some(tmp.path().join("hub")),
        offline: false,
        // Nothing listens on the discard port: the request fails at once.
        endpoint: Some("http://127.0.0.1:9".into()),
        token: None,
    };
    let err = format!(
        "{:#}",
        resolve_model_with("org/some-model", &opts).unwrap_err()
    );
    assert!(
        err.contains("cannot list Hugging Face Hub repository `org/some-model`"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE=1"), "{err}");
}

#[test]
fn random_weight_model_has_the_real_shape() {
    use virnucpro_assets::load::random_embedding_model;
    use virnucpro_models::embed::RandomModel;
    // Only shape bookkeeping here: building the 650M model is the benchmark's job.
    assert_eq!(
        "esm2-650m".parse::<RandomModel>(),
        Ok(RandomModel::Esm2_650m)
    );
    assert!("esm3".parse::<RandomModel>().is_err());
    let err = random_embedding_model(
        RandomModel::DnaBertS,
        None,
        &Device::Cpu,
        DTypeSpec::Auto,
        &LoadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs a tokenizer"), "{err}");
}
