//! Parity with the reference embeddings (tests/data/oracle, computed in float64 with the public
//! reference code) and batching invariance.

use std::path::Path;

use candle_core::{Device, Tensor};
use virnucpro_assets::load::load_embedding_model;
use virnucpro_core::embed::{read_embeddings, run, EmbedRequest};
use virnucpro_models::device::{DTypeSpec, DeviceSpec};
use virnucpro_models::embed::{embed_sequences, LoadOptions};
use virnucpro_models::esm::TokenDropout;

use crate::util::{max_abs_diff, oracle, proteins};

/// Per-row `‖a − b‖ / ‖b‖`.
fn row_rel_errors(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let a: Vec<Vec<f32>> = a.to_vec2().unwrap();
    let b: Vec<Vec<f32>> = b.to_vec2().unwrap();
    assert_eq!(a.len(), b.len(), "row count");
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row width");
            let d: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum();
            let n: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (d / n).sqrt()
        })
        .collect()
}

fn request(model: &str, input: &str, out: &Path) -> EmbedRequest {
    EmbedRequest {
        model: Some(oracle(model).display().to_string()),
        inputs: vec![oracle(input)],
        out: out.to_path_buf(),
        device: DeviceSpec::Cpu,
        // The oracle's 1e-5 bound is f32's (`auto` is bf16 on an AMX CPU).
        dtype: DTypeSpec::F32,
        batch_tokens: None,
        esm_token_dropout: TokenDropout::Auto,
        random_weights: None,
        model_options: Default::default(),
    }
}

fn check_against(model: &str, input: &str, expected: &str, batch_tokens: Option<usize>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emb.safetensors");
    let mut req = request(model, input, &out);
    req.batch_tokens = batch_tokens;
    run(&req).unwrap();
    let got = read_embeddings(&out).unwrap();
    let want = read_embeddings(&oracle(expected)).unwrap();
    assert_eq!(got.ids, want.ids, "same IDs in the same order");
    assert_eq!(got.pooling, want.pooling, "pooling description");
    assert_eq!(
        got.model.as_deref(),
        Some(oracle(model).display().to_string().as_str())
    );
    let errs = row_rel_errors(&got.embeddings, &want.embeddings);
    let max = errs.iter().cloned().fold(0.0, f64::max);
    let errs: Vec<String> = errs.iter().map(|e| format!("{e:.2e}")).collect();
    eprintln!("{model} vs {expected} (batch tokens {batch_tokens:?}): max row rel err {max:.3e}, rows {errs:?}");
    for (id, e) in got
        .ids
        .iter()
        .zip(row_rel_errors(&got.embeddings, &want.embeddings))
    {
        assert!(e <= 1e-5, "{model}: row {id} rel err {e:.3e} > 1e-5");
    }
    max
}

#[test]
fn esm2_matches_reference() {
    check_against(
        "esm2",
        "inputs/proteins.fa",
        "expected/esm2.safetensors",
        None,
    );
    // Small budget: every sequence in its own batch, plus the longest forced alone.
    check_against(
        "esm2",
        "inputs/proteins.fa",
        "expected/esm2.safetensors",
        Some(64),
    );
}

#[test]
fn fastesm_matches_reference() {
    check_against(
        "fastesm",
        "inputs/proteins.fa",
        "expected/fastesm.safetensors",
        None,
    );
}

#[test]
fn dnabert_matches_reference() {
    check_against(
        "dnabert",
        "inputs/dna.fa",
        "expected/dnabert.safetensors",
        None,
    );
}

/// The token-dropout switch does matter (so the auto choice above is really tested).
#[test]
fn esm_token_dropout_override_changes_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("emb.safetensors");
    let mut req = request("esm2", "inputs/proteins.fa", &out);
    req.esm_token_dropout = TokenDropout::Off;
    run(&req).unwrap();
    let got = read_embeddings(&out).unwrap();
    let want = read_embeddings(&oracle("expected/esm2.safetensors")).unwrap();
    let errs = row_rel_errors(&got.embeddings, &want.embeddings);
    assert!(errs.iter().all(|e| *e > 1e-4), "{errs:?}");
}

/// A sequence alone and inside a padded batch of mixed lengths gives the same vector.
#[test]
fn padding_does_not_change_embeddings() {
    for model in ["esm2", "fastesm"] {
        let m = load_embedding_model(
            &oracle(model).display().to_string(),
            &Device::Cpu,
            DTypeSpec::F32,
            &LoadOptions::default(),
        )
        .unwrap();
        let recs = proteins();
        // Two heavily padded batches holding everything (lengths 3..1026 tokens; rows of 768
        // tokens and more are batched apart, see `plan_batches`).
        let together = embed_sequences(&m, &recs, usize::MAX).unwrap();
        assert_eq!(together.stats.batches, 2);
        let mut worst = 0f32;
        for (i, rec) in recs.iter().enumerate() {
            let alone = embed_sequences(&m, std::slice::from_ref(rec), usize::MAX).unwrap();
            let row = together.embeddings.narrow(0, i, 1).unwrap();
            let d = max_abs_diff(&row, &alone.embeddings);
            let norm: f32 = alone
                .embeddings
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar()
                .unwrap();
            worst = worst.max(d / norm);
        }
        eprintln!("{model}: alone vs padded batch, max |diff| / ‖row‖ = {worst:.3e}");
        assert!(worst <= 1e-6, "{model}: {worst:.3e}");
    }
}

/// Results come back in input order whatever the batching.
#[test]
fn input_order_is_kept_across_budgets() {
    let m = load_embedding_model(
        &oracle("esm2").display().to_string(),
        &Device::Cpu,
        DTypeSpec::Auto,
        &LoadOptions::default(),
    )
    .unwrap();
    let recs = proteins();
    let a = embed_sequences(&m, &recs, usize::MAX).unwrap();
    let b = embed_sequences(&m, &recs, 300).unwrap();
    assert!(b.stats.batches > 2);
    assert!(max_abs_diff(&a.embeddings, &b.embeddings) < 1e-5);
    let empty: Vec<(String, Vec<u8>)> = Vec::new();
    let e = embed_sequences(&m, &empty, 100).unwrap();
    assert_eq!(e.embeddings.dims(), &[0, m.hidden_size]);
}
