//! Writes a DNABERT-style model directory whose tokenizer cuts DNA into 4-mers, for the GPU
//! `predict` benchmarks only (`scripts/gpu-bench.sh`; no Python needed):
//!
//! ```text
//! cargo run --release --example kmer_tokenizer -- TEMPLATE_DIR OUT_DIR
//! ```
//!
//! `predict --random-weights` builds DNABERT-S with random weights of its real shape but takes
//! the tokenizer from `--dnabert`. The real DNABERT-S tokenizer (a 4096-token BPE) may not be at
//! hand on a GPU machine without network, and the oracle's tiny tokenizer cuts a 500-bp frame
//! into ~178 tokens (the real one: ~110), which would overstate DNABERT's share of the run. This
//! one cuts a sequence into 4-base pieces (a regex pre-tokenizer, a word-level vocabulary of all
//! 1- to 4-mers after the special tokens), so a frame of n bases becomes ceil(n / 4) tokens plus
//! [CLS] and [SEP] (127 for a 499-bp frame), with ids below DNABERT-S's vocabulary size (4096).
//!
//! TEMPLATE_DIR: a DNABERT directory whose tokenizer.json gives the special tokens and the
//! post-processor (e.g. tests/data/oracle/dnabert); its other files are copied as they are.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dst] = args.as_slice() else {
        eprintln!("usage: kmer_tokenizer TEMPLATE_DIR OUT_DIR");
        std::process::exit(2);
    };
    let (src, dst) = (Path::new(src), Path::new(dst));
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        if path.is_file() && path.file_name().is_some_and(|n| n != "tokenizer.json") {
            std::fs::copy(&path, dst.join(path.file_name().unwrap()))?;
        }
    }
    let mut tok: Value = serde_json::from_slice(&std::fs::read(src.join("tokenizer.json"))?)?;
    let mut vocab: BTreeMap<String, u64> = BTreeMap::new();
    for t in tok["added_tokens"]
        .as_array()
        .ok_or("tokenizer.json has no added_tokens")?
    {
        let content = t["content"].as_str().ok_or("added token without content")?;
        let id = t["id"].as_u64().ok_or("added token without id")?;
        vocab.insert(content.to_string(), id);
    }
    let mut next = vocab.values().max().map_or(0, |m| m + 1);
    for k in 1..=4u32 {
        for i in 0..4usize.pow(k) {
            let kmer: String = (0..k)
                .rev()
                .map(|p| ['A', 'C', 'G', 'T'][(i >> (2 * p)) & 3])
                .collect();
            vocab.entry(kmer).or_insert_with(|| {
                next += 1;
                next - 1
            });
        }
    }
    assert!(vocab.len() <= 4096, "{} tokens", vocab.len());
    tok["normalizer"] = Value::Null;
    tok["pre_tokenizer"] = json!({
        "type": "Split", "pattern": {"Regex": ".{1,4}"}, "behavior": "Isolated", "invert": false
    });
    tok["model"] = json!({"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"});
    std::fs::write(dst.join("tokenizer.json"), serde_json::to_vec(&tok)?)?;
    eprintln!(
        "{}: {} tokens (1- to 4-mers and the special tokens)",
        dst.join("tokenizer.json").display(),
        vocab.len()
    );
    Ok(())
}
