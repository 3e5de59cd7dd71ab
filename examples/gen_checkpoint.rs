//! Writes a random-weight ESM2 checkpoint in the Hugging Face layout (`config.json`,
//! `vocab.txt`, `model.safetensors` with the `esm.` keys, the rotary `inv_freq` buffers and the
//! `lm_head.*`/`contact_head.*` tensors a real `facebook/esm2_*` file holds), for benchmarks that
//! read real files: loading time of ESM2-3B from disk, and other engines (esm.cpp) on the same
//! weights. The tensors are streamed to disk, so an 11 GB f32 ESM2-3B needs little memory.
//!
//! ```text
//! cargo run --release --example gen_checkpoint -- esm2-3b OUT_DIR [f32|f16] [SEED]
//! cargo run --release --example gen_checkpoint -- esm2-650m OUT_DIR
//! ```
//!
//! Weights are uniform with the standard deviation of the models' initialisation (0.02),
//! LayerNorm weights near 1; deterministic for a given seed (default 1).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// xorshift64*: fast, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

#[derive(Clone, Copy)]
enum Fill {
    /// Uniform with standard deviation 0.02.
    Weight,
    /// 1 + uniform noise of 0.02 (LayerNorm scales).
    One,
    /// Uniform noise of 0.002 (biases).
    Small,
    /// The rotary frequencies `1 / 10000^(2i/d)`.
    InvFreq,
}

struct Spec {
    name: String,
    shape: Vec<usize>,
    fill: Fill,
}

const VOCAB: &str = include_str!("../tests/data/oracle/esm2/vocab.txt");

fn tensors(layers: usize, hidden: usize, heads: usize, ffn: usize) -> Vec<Spec> {
    let mut v = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, fill: Fill| v.push(Spec { name, shape, fill });
    let vocab = 33;
    add(
        "esm.embeddings.word_embeddings.weight".into(),
        vec![vocab, hidden],
        Fill::Weight,
    );
    for i in 0..layers {
        let p = format!("esm.encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            add(
                format!("{p}.attention.self.{part}.weight"),
                vec![hidden, hidden],
                Fill::Weight,
            );
            add(
                format!("{p}.attention.self.{part}.bias"),
                vec![hidden],
                Fill::Small,
            );
        }
        add(
            format!("{p}.attention.self.rotary_embeddings.inv_freq"),
            vec![hidden / heads / 2],
            Fill::InvFreq,
        );
        add(
            format!("{p}.attention.output.dense.weight"),
            vec![hidden, hidden],
            Fill::Weight,
        );
        add(
            format!("{p}.attention.output.dense.bias"),
            vec![hidden],
            Fill::Small,
        );
        for ln in ["attention.LayerNorm", "LayerNorm"] {
            add(format!("{p}.{ln}.weight"), vec![hidden], Fill::One);
            add(format!("{p}.{ln}.bias"), vec![hidden], Fill::Small);
        }
        add(
            format!("{p}.intermediate.dense.weight"),
            vec![ffn, hidden],
            Fill::Weight,
        );
        add(
            format!("{p}.intermediate.dense.bias"),
            vec![ffn],
            Fill::Small,
        );
        add(
            format!("{p}.output.dense.weight"),
            vec![hidden, ffn],
            Fill::Weight,
        );
        add(format!("{p}.output.dense.bias"), vec![hidden], Fill::Small);
    }
    add(
        "esm.encoder.emb_layer_norm_after.weight".into(),
        vec![hidden],
        Fill::One,
    );
    add(
        "esm.encoder.emb_layer_norm_after.bias".into(),
        vec![hidden],
        Fill::Small,
    );
    add(
        "esm.contact_head.regression.weight".into(),
        vec![1, layers * heads],
        Fill::Weight,
    );
    add(
        "esm.contact_head.regression.bias".into(),
        vec![1],
        Fill::Small,
    );
    add(
        "lm_head.dense.weight".into(),
        vec![hidden, hidden],
        Fill::Weight,
    );
    add("lm_head.dense.bias".into(), vec![hidden], Fill::Small);
    add("lm_head.layer_norm.weight".into(), vec![hidden], Fill::One);
    add("lm_head.layer_norm.bias".into(), vec![hidden], Fill::Small);
    add(
        "lm_head.decoder.weight".into(),
        vec![vocab, hidden],
        Fill::Weight,
    );
    add("lm_head.bias".into(), vec![vocab], Fill::Small);
    v
}

fn config(layers: usize, hidden: usize, heads: usize, ffn: usize) -> String {
    format!(
        r#"{{
  "architectures": ["EsmForMaskedLM"],
  "model_type": "esm",
  "vocab_size": 33,
  "mask_token_id": 32,
  "pad_token_id": 1,
  "hidden_size": {hidden},
  "num_hidden_layers": {layers},
  "num_attention_heads": {heads},
  "intermediate_size": {ffn},
  "hidden_dropout_prob": 0.0,
  "attention_probs_dropout_prob": 0.0,
  "max_position_embeddings": 1026,
  "initializer_range": 0.02,
  "layer_norm_eps": 1e-05,
  "position_embedding_type": "rotary",
  "emb_layer_norm_before": false,
  "token_dropout": true,
  "hidden_act": "gelu",
  "torch_dtype": "float32"
}}
"#
    )
}

fn values<'a>(spec: &'a Spec, rng: &'a mut Rng, n: usize) -> impl Iterator<Item = f32> + 'a {
    let amp = 0.02f32 * 3f32.sqrt();
    (0..n).map(move |i| match spec.fill {
        Fill::Weight => rng.unit() * amp,
        Fill::One => 1.0 + rng.unit() * amp,
        Fill::Small => rng.unit() * amp * 0.1,
        Fill::InvFreq => 1.0 / 10000f32.powf(2.0 * i as f32 / (2 * n) as f32),
    })
}

fn write_safetensors(path: &Path, specs: &[Spec], f16: bool, seed: u64) -> std::io::Result<()> {
    let width = if f16 { 2 } else { 4 };
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0usize;
    for s in specs {
        let bytes = s.shape.iter().product::<usize>() * width;
        let shape: Vec<String> = s.shape.iter().map(usize::to_string).collect();
        header.push_str(&format!(
            ",\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            s.name,
            if f16 { "F16" } else { "F32" },
            shape.join(","),
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    // The data starts 8-byte aligned.
    while (header.len() + 8) % 8 != 0 {
        header.push(' ');
    }
    let mut out = BufWriter::with_capacity(8 << 20, File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = Vec::with_capacity(8 << 20);
    for s in specs {
        let n = s.shape.iter().product::<usize>();
        buf.clear();
        for x in values(s, &mut rng, n) {
            if f16 {
                buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
            } else {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            if buf.len() >= 8 << 20 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
    }
    out.flush()
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gen_checkpoint esm2-650m|esm2-3b|esm2-8m OUT_DIR [f32|f16] [SEED]";
    let (Some(shape), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2)
    };
    let (layers, hidden, heads, ffn) = match shape.as_str() {
        "esm2-3b" => (36, 2560, 40, 10240),
        "esm2-650m" => (33, 1280, 20, 5120),
        "esm2-8m" => (6, 320, 20, 1280),
        other => {
            eprintln!("unknown shape `{other}`\n{usage}");
            std::process::exit(2)
        }
    };
    let f16 = match args.get(2).map(String::as_str) {
        None | Some("f32") => false,
        Some("f16") => true,
        Some(other) => {
            eprintln!("unknown dtype `{other}`\n{usage}");
            std::process::exit(2)
        }
    };
    let seed = args.get(3).map_or(1, |s| {
        s.parse().unwrap_or_else(|_| {
            eprintln!("SEED: expected a number, got `{s}`\n{usage}");
            std::process::exit(2)
        })
    });
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), config(layers, hidden, heads, ffn))?;
    std::fs::write(dir.join("vocab.txt"), VOCAB)?;
    let specs = tensors(layers, hidden, heads, ffn);
    write_safetensors(&dir.join("model.safetensors"), &specs, f16, seed)?;
    let params: usize = specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    println!(
        "{}: {shape}, {params} parameters, {}",
        dir.display(),
        if f16 { "f16" } else { "f32" }
    );
    Ok(())
}
