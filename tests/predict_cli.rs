//! `virnucpro predict` end to end against the original pipeline's outputs (tests/data/oracle),
//! the dimension guard, and what a failed or interrupted run leaves behind.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use predicates::prelude::*;
use virnucpro_models::classifier::{Classifier, ClassifierMeta};

use crate::util::{entries, BIN, O};

const RESULTS: &str = "prediction_results.txt";
const HIGHEST: &str = "prediction_results_highestscore.csv";
const SUMMARY: &str = "prediction_summary.tsv";

fn predict(input: &Path, esm: &str, classifier: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("predict")
        .arg(input)
        .args(["--chunk-len", "60", "--dnabert", &format!("{O}/dnabert")])
        .args([
            "--esm",
            &format!("{O}/{esm}"),
            "--device",
            "cpu",
            "--classifier",
        ])
        .arg(classifier)
        .arg("--out-dir")
        .arg(out);
    cmd
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Same IDs, predictions and order as the reference; scores within 1e-5; the per-chunk file
/// identical.
fn assert_matches_reference(out: &Path, reference: &str) {
    let got = rows(&out.join(RESULTS));
    let want = rows(&Path::new(O).join(reference).join(RESULTS));
    assert_eq!(got.len(), want.len(), "row count");
    assert_eq!(got[0], want[0], "header");
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(&want).skip(1) {
        assert_eq!(g[..2], w[..2], "ID/prediction differ");
        for i in 2..4 {
            let (a, b): (f64, f64) = (g[i].parse().unwrap(), w[i].parse().unwrap());
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-5, "max score difference {worst:e}");
    assert_eq!(
        fs::read_to_string(out.join(HIGHEST)).unwrap(),
        fs::read_to_string(Path::new(O).join(reference).join(HIGHEST)).unwrap(),
        "{HIGHEST} differs"
    );
}

fn genomes() -> PathBuf {
    Path::new(O).join("inputs/genomes.fa")
}

#[test]
fn pickled_module_with_fastesm_and_esm2_matches_the_original_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    for (esm, reference) in [("fastesm", "e2e_fastesm"), ("esm2", "e2e_esm2")] {
        let out = tmp.path().join(esm);
        // f32: the reference bound (1e-5) is f32's; `auto` is bf16 on an AMX CPU.
        predict(&genomes(), esm, &clf, &out)
            .args(["--dtype", "f32"])
            .assert()
            .success();
        assert_matches_reference(&out, reference);
        assert_eq!(entries(&out), [RESULTS, HIGHEST, SUMMARY]);
    }
}

/// `--dtype int8` (opt-in): it must run int8 (scores differ from the f32 reference) and stay
/// close to it. On the oracle's tiny models it does not pass the default's gate (scores within
/// 5e-3, same calls; measured 2026-12-07: 1.0e-2 and 2.3e-2, a call or two near 0.5 flips),
/// which is why it is not the CPU default (docs/BENCHMARKS.md, "CPU int8").
#[test]
fn int8_predict_runs_int8_and_stays_near_the_original_pipeline() {
    if !virnucpro_kernels::cpu_int8_isa().simd {
        return; // --dtype int8 keeps f32 on this CPU
    }
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    for (esm, reference) in [("fastesm", "e2e_fastesm"), ("esm2", "e2e_esm2")] {
        let out = tmp.path().join(esm);
        predict(&genomes(), esm, &clf, &out)
            .args(["--dtype", "int8"])
            .assert()
            .success();
        let got = rows(&out.join(RESULTS));
        let want = rows(&Path::new(O).join(reference).join(RESULTS));
        assert_eq!(got.len(), want.len(), "{esm}: row count");
        let mut worst = 0f64;
        for (g, w) in got.iter().zip(&want).skip(1) {
            assert_eq!(g[0], w[0], "{esm}: IDs differ");
            for i in 2..4 {
                let (a, b): (f64, f64) = (g[i].parse().unwrap(), w[i].parse().unwrap());
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst > 1e-5, "{esm}: int8 gave f32's scores");
        assert!(worst <= 0.05, "{esm}: max score difference {worst:e}");
    }
}

/// `--dtype bf16` on the CPU (the default where it has AMX or AVX512-BF16) passes the gate of
/// the GPU's f16: every score within 5e-3 of the original pipeline's and every call the same,
/// for both protein models; and it really ran bf16 (the scores are not f32's). This CPU's bf16
/// path runs: AMX, else AVX512-BF16, else the emulation (the same rounding, f32 sums in another
/// order).
#[test]
fn bf16_predict_passes_the_gate_against_the_original_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    for (esm, reference) in [("fastesm", "e2e_fastesm"), ("esm2", "e2e_esm2")] {
        let out = tmp.path().join(esm);
        predict(&genomes(), esm, &clf, &out)
            .args(["--dtype", "bf16"])
            .assert()
            .success();
        let got = rows(&out.join(RESULTS));
        let want = rows(&Path::new(O).join(reference).join(RESULTS));
        assert_eq!(got.len(), want.len(), "{esm}: row count");
        let mut worst = 0f64;
        for (g, w) in got.iter().zip(&want).skip(1) {
            assert_eq!(g[0], w[0], "{esm}: IDs differ");
            assert_eq!(g[1], w[1], "{esm} {}: the call changed", g[0]);
            for i in 2..4 {
                let (a, b): (f64, f64) = (g[i].parse().unwrap(), w[i].parse().unwrap());
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst > 1e-5, "{esm}: bf16 gave f32's scores");
        assert!(worst <= 5e-3, "{esm}: max score difference {worst:e}");
        eprintln!("{esm}: bf16 max score difference {worst:.3e}");
    }
}

#[test]
fn state_dict_and_converted_classifier_give_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let converted = tmp.path().join("clf.safetensors");
    Command::new(BIN)
        .args([
            "convert",
            "--classifier",
            &format!("{O}/classifier/model_full.pth"),
        ])
        .arg("--out")
        .arg(&converted)
        .args([
            "--dnabert-model",
            &format!("{O}/dnabert"),
            "--dnabert-hidden",
            "128",
        ])
        .args([
            "--esm-model",
            &format!("{O}/fastesm"),
            "--esm-hidden",
            "128",
        ])
        .args(["--chunk-len", "60"])
        .assert()
        .success();
    for clf in [Path::new(O).join("classifier/state_dict.pth"), converted] {
        let out = tmp.path().join(clf.file_stem().unwrap());
        predict(&genomes(), "fastesm", &clf, &out)
            .args(["--dtype", "f32"])
            .assert()
            .success()
            // Metadata names the same models and chunk length: no warning.
            .stderr(predicate::str::contains("WARN").not());
        assert_matches_reference(&out, "e2e_fastesm");
    }
}

#[test]
fn summary_and_kept_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    // A record too short for a single codon has no frame to score: `no_frames`.
    let mut text = fs::read_to_string(genomes()).unwrap();
    text.push_str(">stops\nAC\n");
    fs::write(&input, text).unwrap();
    let out = tmp.path().join("out");
    predict(
        &input,
        "fastesm",
        &Path::new(O).join("classifier/model_full.pth"),
        &out,
    )
    .arg("--keep-frames")
    .assert()
    .success()
    .stderr(predicate::str::contains("8 records"));
    assert_eq!(
        fs::read_to_string(out.join("identified_protein.faa")).unwrap(),
        fs::read_to_string(Path::new(O).join("e2e_fastesm/identified_protein.faa")).unwrap()
    );
    let summary = rows(&out.join(SUMMARY));
    assert_eq!(
        summary[0].join("\t"),
        "record_id\tlength\tchunks\tscored_chunks\tframes_scored\tviral_chunks\tviral_fraction\tmax_score2\tcall"
    );
    let ids: Vec<&str> = summary[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        ["g_exact", "g_plus1", "g_short", "g_long", "g_lower", "g_ambig", "g_one", "stops"]
    );
    assert_eq!(
        summary[8][1..].join("\t"),
        "2\t1\t0\t0\t0\tNA\tNA\tno_frames"
    );

    // Cross-check every summary row against the two published files.
    let results = rows(&out.join(RESULTS));
    let highest: HashMap<String, bool> = rows(&out.join(HIGHEST))[1..]
        .iter()
        .map(|r| (r[0].clone(), r[1] == "True"))
        .collect();
    for row in &summary[1..8] {
        let id = &row[0];
        let prefix = format!("{id}_chunk_");
        let frames: Vec<&Vec<String>> = results[1..]
            .iter()
            .filter(|r| r[0].starts_with(&prefix))
            .collect();
        let chunks: Vec<&String> = highest.keys().filter(|k| k.starts_with(&prefix)).collect();
        let viral = chunks.iter().filter(|k| highest[k.as_str()]).count();
        assert_eq!(row[4], frames.len().to_string(), "{id} frames");
        assert_eq!(row[3], chunks.len().to_string(), "{id} scored chunks");
        assert_eq!(row[5], viral.to_string(), "{id} viral chunks");
        let fraction = viral as f64 / chunks.len() as f64;
        assert_eq!(row[6], format!("{fraction:.4}"));
        assert_eq!(row[8], if fraction >= 0.5 { "virus" } else { "others" });
        let max2 = frames
            .iter()
            .map(|r| r[3].parse::<f64>().unwrap())
            .fold(f64::MIN, f64::max);
        assert!((row[7].parse::<f64>().unwrap() - max2).abs() < 1e-6);
    }
}

/// A classifier with random weights and the given input size, in this project's format.
fn classifier_with_inputs(path: &Path, input: usize, meta: ClassifierMeta) {
    let d = Device::Cpu;
    let h = 8;
    let t = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &d).unwrap();
    let mut tensors = HashMap::new();
    tensors.insert("hidden_layer.weight".to_string(), t(&[h, input]));
    tensors.insert("hidden_layer.bias".to_string(), t(&[h]));
    tensors.insert("bn1.weight".to_string(), t(&[h]));
    tensors.insert("bn1.bias".to_string(), t(&[h]));
    tensors.insert("bn1.running_mean".to_string(), t(&[h]));
    tensors.insert("bn1.running_var".to_string(), t(&[h]).abs().unwrap());
    tensors.insert("output_layer.weight".to_string(), t(&[2, h]));
    tensors.insert("output_layer.bias".to_string(), t(&[2]));
    Classifier::from_tensors(tensors, meta)
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn guard_refuses_mismatched_classifier_before_reading_input() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = tmp.path().join("esm3b.safetensors");
    classifier_with_inputs(&clf, 3328, ClassifierMeta::default());
    let out = tmp.path().join("out");
    // The input does not exist: the guard must fail first, naming both sizes.
    predict(&tmp.path().join("missing.fa"), "fastesm", &clf, &out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("3328"))
        .stderr(predicate::str::contains("128"))
        .stderr(predicate::str::contains("hidden size 3200"))
        .stderr(predicate::str::contains("missing.fa").not());
    assert!(entries(&out).is_empty());
}

#[test]
fn metadata_mismatch_warns_or_refuses_with_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = tmp.path().join("other.safetensors");
    let meta = ClassifierMeta {
        esm_model: Some("facebook/esm2_t6_8M_UR50D".into()),
        esm_hidden: Some(128),
        dnabert_model: Some(format!("{O}/dnabert")),
        dnabert_hidden: Some(128),
        chunk_len: Some(300),
        ..ClassifierMeta::default()
    };
    classifier_with_inputs(&clf, 256, meta);
    let out = tmp.path().join("out");
    predict(&genomes(), "fastesm", &clf, &out)
        .assert()
        .success()
        .stderr(predicate::str::contains("esm2_t6_8M_UR50D"))
        .stderr(predicate::str::contains("300"));
    let strict = tmp.path().join("strict");
    predict(&genomes(), "fastesm", &clf, &strict)
        .arg("--strict")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("esm2_t6_8M_UR50D"));
    assert!(entries(&strict).is_empty());
}

#[test]
fn wrong_model_kinds_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    let mut cmd = Command::new(BIN);
    cmd.arg("predict")
        .arg(genomes())
        .args(["--chunk-len", "60", "--dnabert", &format!("{O}/fastesm")])
        .args([
            "--esm",
            &format!("{O}/fastesm"),
            "--device",
            "cpu",
            "--classifier",
        ])
        .arg(&clf)
        .arg("--out-dir")
        .arg(tmp.path().join("o"));
    cmd.assert()
        .code(1)
        .stderr(predicate::str::contains("--dnabert"))
        .stderr(predicate::str::contains("DNABERT"));
}

#[test]
fn bad_input_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    let cases: [(&str, &[u8], &str); 3] = [
        (
            "not_fasta.txt",
            b"hello world\nthis is not a sequence file\n",
            "not_fasta.txt",
        ),
        (
            "dup.fa",
            b">a\nACGTACGTACGTACGTACGTACGTACGT\n>a\nACGTACGTACGTACGTACGTACGTACGT\n",
            "duplicate",
        ),
        ("empty.fa", b"", "empty.fa"),
    ];
    for (name, content, message) in cases {
        let input = tmp.path().join(name);
        fs::write(&input, content).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        predict(&input, "fastesm", &clf, &out)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(message));
        assert!(entries(&out).is_empty(), "{name}: {:?}", entries(&out));
        // The run created the directory; it does not leave it behind empty.
        assert!(!out.exists(), "{name}: {} left behind", out.display());
    }
    // Truncated gzip: the records before the damage must not be written as a result.
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
        for i in 0..400 {
            writeln!(
                enc,
                ">r{i}\nACGTTGCATGCATGCAAGCTAGCTAGGATCCGATCGATCGTAGCTAGCTAGCTAGCATGC"
            )
            .unwrap();
        }
        enc.finish().unwrap();
    }
    gz.truncate(gz.len() / 2);
    let input = tmp.path().join("cut.fa.gz");
    fs::write(&input, gz).unwrap();
    let out = tmp.path().join("out-gz");
    predict(&input, "fastesm", &clf, &out).assert().code(1);
    // Only the journal of the units before the damage may stay (for a rerun on a repaired
    // file); no result file.
    let left: Vec<String> = entries(&out)
        .into_iter()
        .filter(|e| e != ".virnucpro.journal")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[cfg(unix)]
#[test]
fn interrupted_run_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("big.fa");
    // Enough work for several seconds with the tiny models.
    let mut text = String::new();
    let mut x: u64 = 42;
    for i in 0..3000 {
        text.push_str(&format!(">r{i}\n"));
        for _ in 0..600 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push(b"ACGT"[(x >> 62) as usize] as char);
        }
        text.push('\n');
    }
    fs::write(&input, text).unwrap();
    let out = tmp.path().join("out");
    let mut child = std::process::Command::new(BIN)
        .arg("predict")
        .arg(&input)
        .args(["--chunk-len", "60", "--dnabert", &format!("{O}/dnabert")])
        .args([
            "--esm",
            &format!("{O}/fastesm"),
            "--device",
            "cpu",
            "--classifier",
        ])
        .arg(Path::new(O).join("classifier/model_full.pth"))
        .arg("--out-dir")
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run is writing (its temporary files exist), then interrupt it.
    let start = Instant::now();
    while entries(&out).is_empty() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!entries(&out).is_empty(), "the run never started writing");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished too early for this test"
    );
    // SIGINT, as Ctrl-C sends it.
    crate::util::send_signal(child.id(), "INT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Only the journal stays: the same command resumes from it.
    assert_eq!(entries(&out), [".virnucpro.journal"], "left behind");
}

/// `--write-viral-fasta`: exactly the records `prediction_summary.tsv` calls `virus`, in input
/// order, header and sequence as read; `--min-viral-fraction` moves records in and out of it.
#[test]
fn viral_fasta_holds_the_records_called_virus() {
    let tmp = tempfile::tempdir().unwrap();
    let clf = Path::new(O).join("classifier/model_full.pth");
    // The input as read: multi-line, lower case, descriptions with tabs.
    let input = tmp.path().join("in.fa");
    let mut text = fs::read_to_string(genomes()).unwrap();
    text.push_str(">wrapped\tsome description\nacgtgcatgcaaatggctagct\nGCATCGATCGGCTAGCTTAGGC\nATGAAACCCGGGTTTAAACCC\n");
    fs::write(&input, &text).unwrap();
    // The input records, ID -> (header, sequence without line breaks).
    let mut records: Vec<(String, String, String)> = Vec::new();
    for block in text.split('>').skip(1) {
        let (header, seq) = block.split_once('\n').unwrap();
        let id = header.split_whitespace().next().unwrap().to_string();
        records.push((id, header.to_string(), seq.split_whitespace().collect()));
    }
    let mut sizes = Vec::new();
    for fraction in ["0.5", "0.9"] {
        let out = tmp.path().join(format!("out{fraction}"));
        predict(&input, "fastesm", &clf, &out)
            .args(["--write-viral-fasta", "--min-viral-fraction", fraction])
            .assert()
            .success();
        let called: Vec<String> = rows(&out.join(SUMMARY))[1..]
            .iter()
            .filter(|r| r[8] == "virus")
            .map(|r| r[0].clone())
            .collect();
        let mut want = String::new();
        for (id, header, seq) in &records {
            if called.contains(id) {
                want.push_str(&format!(">{header}\n{seq}\n"));
            }
        }
        let got = fs::read_to_string(out.join("viral_records.fa")).unwrap();
        assert_eq!(got, want, "--min-viral-fraction {fraction}");
        sizes.push(called.len());
    }
    assert!(sizes[0] > 0, "some records are called virus: {sizes:?}");
    assert!(
        sizes[1] < sizes[0],
        "a stricter fraction calls fewer: {sizes:?}"
    );
    // Without the flag there is no such file.
    let plain = tmp.path().join("plain");
    predict(&input, "fastesm", &clf, &plain).assert().success();
    assert!(!plain.join("viral_records.fa").exists());
}
