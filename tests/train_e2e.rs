//! Training end to end through the command line, with the tiny oracle models:
//! GenBank -> `prepare` -> `extract` (resumed after damage) -> `train` -> `evaluate` (-> `predict`).

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::Device;
use predicates::prelude::*;
use virnucpro_assets::load::load_embedding_model;
use virnucpro_models::device::DTypeSpec;
use virnucpro_models::embed::{embed_sequences, LoadOptions};
use virnucpro_train::features::{read_features, read_manifest, FeatureSet};
use virnucpro_train::prepare::{FramesReader, PreparedFrame};

use crate::util::{raw_metadata, vnp, CODE};

const CHUNK_LEN: usize = 60;
/// 80 frames (40 viral + 40 host) in shards of 25: 25, 25, 25, 5.
const ROWS_PER_SHARD: &str = "25";

fn oracle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/oracle")
        .join(name)
        .display()
        .to_string()
}

// ---- GenBank input --------------------------------------------------------------------------

/// A stop-free ORF of `codons` codons and its protein. `gc` biases the codon choice (viral
/// records GC-rich, host ones AT-rich) so that the two classes differ.
fn orf(codons: usize, gc: bool, state: &mut u64) -> (String, String) {
    let (mut dna, mut protein) = (String::new(), String::new());
    while protein.len() < codons {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = (*state >> 33) as usize % 64;
        let bases: Vec<u8> = [i / 16, (i / 4) % 4, i % 4]
            .iter()
            .map(|&k| b"TCAG"[k])
            .collect();
        let strong = bases.iter().filter(|&&b| b == b'G' || b == b'C').count();
        if CODE[i] == b'*' || (gc && strong < 2) || (!gc && strong > 1) {
            continue;
        }
        dna.push_str(std::str::from_utf8(&bases).unwrap());
        protein.push(CODE[i] as char);
    }
    (dna, protein)
}

/// One GenBank record whose single CDS covers the whole sequence.
fn record(id: &str, seq: &str, translation: &str, division: &str) -> String {
    let mut s = format!(
        "LOCUS       {id:<16} {:>11} bp    DNA     linear   {division} 01-JAN-2000\n\
         DEFINITION  synthetic record {id}.\n\
         ACCESSION   {id}\n\
         VERSION     {id}.1\n\
         KEYWORDS    .\n\
         SOURCE      synthetic\n  ORGANISM  synthetic\n            Unclassified.\n\
         FEATURES             Location/Qualifiers\n\
         \x20    source          1..{}\n\
         \x20                    /organism=\"synthetic\"\n\
         \x20    CDS             1..{}\n\
         \x20                    /codon_start=1\n\
         \x20                    /translation=\"{translation}\"\n\
         ORIGIN      \n",
        seq.len(),
        seq.len(),
        seq.len()
    );
    for (i, line) in seq.to_ascii_lowercase().as_bytes().chunks(60).enumerate() {
        let groups: Vec<&str> = line
            .chunks(10)
            .map(|g| std::str::from_utf8(g).unwrap())
            .collect();
        s += &format!("{:>9} {}\n", i * 60 + 1, groups.join(" "));
    }
    s + "//\n"
}

/// `records` records of 5 chunks each; returns the sequences too (for a FASTA).
fn genbank(
    path: &Path,
    prefix: &str,
    records: usize,
    gc: bool,
    seed: u64,
) -> Vec<(String, String)> {
    let mut state = seed;
    let mut text = String::new();
    let mut seqs = Vec::new();
    for r in 0..records {
        let (dna, protein) = orf(5 * CHUNK_LEN / 3, gc, &mut state);
        let id = format!("{prefix}{r}");
        text += &record(&id, &dna, &protein, if gc { "VRL" } else { "BCT" });
        seqs.push((id, dna));
    }
    fs::write(path, text).unwrap();
    seqs
}

// ---- steps ----------------------------------------------------------------------------------

struct Run {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dataset: PathBuf,
    features: PathBuf,
    viral_seqs: Vec<(String, String)>,
}

/// Writes the GenBank files and runs `prepare` (chunk length 60).
fn prepared() -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let viral_seqs = genbank(&dir.join("viral.gbff"), "VIR", 8, true, 11);
    genbank(&dir.join("host.gbff"), "HOST", 12, false, 12);
    let dataset = dir.join("train60");
    vnp()
        .args([
            "prepare",
            "--chunk-len",
            &CHUNK_LEN.to_string(),
            "--seed",
            "3",
        ])
        .arg("--viral")
        .arg(dir.join("viral.gbff"))
        .arg("--host")
        .arg(dir.join("host.gbff"))
        .arg("--out-dir")
        .arg(&dataset)
        .assert()
        .success();
    Run {
        features: dataset.join("features"),
        _tmp: tmp,
        dir,
        dataset,
        viral_seqs,
    }
}

fn extract(run: &Run, rows_per_shard: &str) -> assert_cmd::assert::Assert {
    vnp()
        .args([
            "extract",
            "--device",
            "cpu",
            // f32, as the rows are compared with below (`auto` is bf16 on an AMX CPU).
            "--dtype",
            "f32",
            "--rows-per-shard",
            rows_per_shard,
        ])
        .args(["--dnabert", &oracle("dnabert"), "--esm", &oracle("fastesm")])
        .arg("--dataset")
        .arg(&run.dataset)
        .arg("--out")
        .arg(&run.features)
        .assert()
}

fn output(a: &assert_cmd::assert::Assert) -> (String, String) {
    let o = a.get_output();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn frames(run: &Run) -> Vec<PreparedFrame> {
    FramesReader::open(&run.dataset.join("frames.tsv"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn train(run: &Run) -> PathBuf {
    let model = run.dir.join("model.safetensors");
    vnp()
        .args(["train", "--epochs", "3", "--hidden", "16", "--seed", "5"])
        .arg("--features")
        .arg(&run.features)
        .arg("--out")
        .arg(&model)
        .assert()
        .success()
        .stdout(predicate::str::contains("best epoch"));
    model
}

fn shard(run: &Run, i: usize) -> PathBuf {
    run.features.join(format!("shard-{i:05}.safetensors"))
}

/// Identity of the files on disk: a shard that was rewritten (atomic rename) has a new inode.
/// (Elsewhere than on Unix only the content is compared.)
fn inodes(run: &Run, shards: &[usize]) -> Vec<u64> {
    shards
        .iter()
        .map(|&i| {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                fs::metadata(shard(run, i)).unwrap().ino()
            }
            #[cfg(not(unix))]
            {
                fs::metadata(shard(run, i)).unwrap().len()
            }
        })
        .collect()
}

fn assert_same_features(a: &FeatureSet, b: &FeatureSet) {
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.dim, b.dim);
    assert!(a.features == b.features, "recomputed features differ");
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn prepare_extract_resume_train_evaluate() {
    let run = prepared();
    let frames = frames(&run);
    let viral = frames.iter().filter(|f| f.label == 1).count();
    assert_eq!(viral, 40, "every chunk's F1 is in its record's CDS");
    assert_eq!(frames.len(), 80, "balanced: as many host as viral frames");

    // extract: 4 shards of [dnabert 128 | esm 128], rows in frames.tsv order.
    let first = extract(&run, ROWS_PER_SHARD).success();
    let (stdout, _) = output(&first);
    assert!(
        stdout.contains("80 frames x 256 features (128 + 128) in 4 shards: 4 computed"),
        "{stdout}"
    );
    let set = read_features(&run.features).unwrap();
    assert_eq!(set.dim, 256);
    assert_eq!(set.len(), 80);
    let want_ids: Vec<&str> = frames.iter().map(|f| f.id.as_str()).collect();
    let want_labels: Vec<u8> = frames.iter().map(|f| f.label).collect();
    assert_eq!(set.ids, want_ids);
    assert_eq!(set.labels, want_labels);
    let m = &set.manifest;
    let rows: Vec<usize> = m.shards.iter().map(|s| s.rows).collect();
    assert_eq!(rows, [25, 25, 25, 5]);
    assert_eq!(
        m.info.dnabert_model.as_deref(),
        Some(oracle("dnabert").as_str())
    );
    assert_eq!(
        m.info.esm_model.as_deref(),
        Some(oracle("fastesm").as_str())
    );
    assert_eq!(
        (m.info.dnabert_hidden, m.info.esm_hidden),
        (Some(128), Some(128))
    );
    assert_eq!(m.info.chunk_len, Some(CHUNK_LEN));
    // Each shard's completion record is there.
    for i in 0..4 {
        assert!(run
            .features
            .join(format!("shard-{i:05}.done.json"))
            .is_file());
    }

    // A row is [nucleotide embedding of its DNA | protein embedding of its protein].
    let load = |name: &str| {
        load_embedding_model(
            &oracle(name),
            &Device::Cpu,
            DTypeSpec::F32,
            &LoadOptions::default(),
        )
        .unwrap()
    };
    let row = 41;
    let f = &frames[row];
    for (model, seq, range) in [
        (load("dnabert"), f.dna.as_bytes(), 0..128),
        (load("fastesm"), f.protein.as_bytes(), 128..256),
    ] {
        let e = embed_sequences(&model, &[(f.id.as_str(), seq)], 4096).unwrap();
        let want = e.embeddings.to_vec2::<f32>().unwrap().remove(0);
        let got = &set.row(row)[range];
        let diff = want
            .iter()
            .zip(got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "row {row}: max difference {diff}");
    }

    // Resume 1: shard 1 and the manifest deleted -> exactly shard 1 is computed again.
    let kept_before = inodes(&run, &[0, 2, 3]);
    fs::remove_file(shard(&run, 1)).unwrap();
    fs::remove_file(run.features.join("manifest.json")).unwrap();
    assert!(read_manifest(&run.features).is_err());
    let again = extract(&run, ROWS_PER_SHARD).success();
    let (stdout, stderr) = output(&again);
    assert!(
        stdout.contains("4 shards: 1 computed (1 of them recomputed), 3 kept"),
        "{stdout}"
    );
    assert!(
        stderr.contains("shard-00001.safetensors: the file is missing"),
        "{stderr}"
    );
    assert!(!stderr.contains("shard-00000.safetensors:"), "{stderr}");
    assert_eq!(
        kept_before,
        inodes(&run, &[0, 2, 3]),
        "the other shards were not rewritten"
    );
    let resumed = read_features(&run.features).unwrap();
    assert_same_features(&set, &resumed);
    assert_eq!(resumed.manifest.shards, set.manifest.shards);

    // Resume 2: one byte of shard 2 flipped (manifest still there) -> caught and recomputed.
    let mut bytes = fs::read(shard(&run, 2)).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    fs::write(shard(&run, 2), bytes).unwrap();
    let (stdout, stderr) = output(&extract(&run, ROWS_PER_SHARD).success());
    assert!(
        stdout.contains("1 computed (1 of them recomputed), 3 kept"),
        "{stdout}"
    );
    assert!(
        stderr.contains("shard-00002.safetensors: its checksum is")
            && stderr.contains("recomputing it"),
        "{stderr}"
    );
    assert_same_features(&set, &read_features(&run.features).unwrap());

    // Nothing to do: every shard verified and kept.
    let (stdout, _) = output(&extract(&run, ROWS_PER_SHARD).success());
    assert!(
        stdout.contains("0 computed (0 of them recomputed), 4 kept"),
        "{stdout}"
    );

    // train: the classifier records the models, their hidden sizes and the chunk length.
    let model = train(&run);
    let md = raw_metadata(&model);
    assert_eq!(md["format"], "virnucpro-classifier");
    assert_eq!(md["input_dim"], "256");
    assert_eq!(md["dnabert_model"], oracle("dnabert"));
    assert_eq!(md["dnabert_hidden"], "128");
    assert_eq!(md["esm_model"], oracle("fastesm"));
    assert_eq!(md["esm_hidden"], "128");
    assert_eq!(md["chunk_len"], "60");
    let training: serde_json::Value = serde_json::from_str(&md["training"]).unwrap();
    assert_eq!(training["data"]["rows"], 80);

    // evaluate prints the metrics table; beside the trained model, the oracle's pickled PyTorch
    // classifier of the same size (256 inputs) is read as it is.
    let table = vnp()
        .args(["evaluate", "--features"])
        .arg(&run.features)
        .arg("--classifier")
        .arg(&model)
        .arg(oracle("classifier/model_full.pth"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("80 frames (40 viral, 40 host)"), "{table}");
    for key in [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auroc",
        "tn (host called others)",
    ] {
        assert!(table.contains(key), "{table}");
    }
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.contains("model") && header.contains("model_full"),
        "{table}"
    );
    let frames_line = table.lines().find(|l| l.starts_with("frames")).unwrap();
    let counts: Vec<&str> = frames_line.split_whitespace().skip(1).collect();
    assert_eq!(counts, ["80", "80"], "{table}");

    // Another shard size re-plans every shard; stale shard 3 is removed.
    let (stdout, _) = output(&extract(&run, "30").success());
    assert!(stdout.contains("in 3 shards: 3 computed"), "{stdout}");
    assert!(!shard(&run, 3).exists());
    assert!(!run.features.join("shard-00003.done.json").exists());
    let resharded = read_features(&run.features).unwrap();
    assert_eq!(resharded.ids, set.ids);
    let max_diff = resharded
        .features
        .iter()
        .zip(&set.features)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-4, "batching changed features by {max_diff}");
}

#[test]
fn extract_explains_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    // Not a prepared data set.
    vnp()
        .args(["extract", "--device", "cpu", "--dataset"])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("f"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("summary.json").and(predicate::str::contains("prepare")));

    // The models swapped: refused before any weight is read, naming the flag.
    let run = prepared();
    vnp()
        .args(["extract", "--device", "cpu"])
        .args(["--dnabert", &oracle("fastesm"), "--esm", &oracle("dnabert")])
        .arg("--dataset")
        .arg(&run.dataset)
        .arg("--out")
        .arg(&run.features)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("--dnabert")
                .and(predicate::str::contains("takes a nucleotide model")),
        );
    assert!(!run.features.join("manifest.json").exists());

    // A damaged frames.tsv row names file and line.
    let tsv = run.dataset.join("frames.tsv");
    let text = fs::read_to_string(&tsv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[3] = "broken\trow";
    fs::write(&tsv, lines.join("\n") + "\n").unwrap();
    extract(&run, ROWS_PER_SHARD)
        .failure()
        .stderr(predicate::str::contains("frames.tsv:4").and(predicate::str::contains("5 tab")));
}

#[test]
fn extract_help_has_an_example() {
    vnp().args(["extract", "--help"]).assert().success().stdout(
        predicate::str::contains("Example:")
            .and(predicate::str::contains("virnucpro extract --dataset"))
            .and(predicate::str::contains("zhihan1996/DNABERT-S"))
            .and(predicate::str::contains("Synthyra/FastESM2_650")),
    );
}

// ---- predict with the trained classifier (predict is being merged on main) -------------------

/// A trained classifier and a FASTA of the viral records.
fn trained() -> (Run, PathBuf, PathBuf) {
    let run = prepared();
    extract(&run, ROWS_PER_SHARD).success();
    let model = train(&run);
    let fasta = run.dir.join("contigs.fa");
    let text: String = run
        .viral_seqs
        .iter()
        .map(|(id, seq)| format!(">{id}\n{seq}\n"))
        .collect();
    fs::write(&fasta, text).unwrap();
    (run, model, fasta)
}

fn predict(fasta: &Path, model: &Path, esm: &str, out: &Path) -> Command {
    let mut cmd = vnp();
    cmd.arg("predict")
        .arg(fasta)
        .args(["--chunk-len", &CHUNK_LEN.to_string()])
        .args(["--dnabert", &oracle("dnabert"), "--esm", &oracle(esm)])
        .arg("--classifier")
        .arg(model)
        .arg("--out-dir")
        .arg(out);
    cmd
}

#[test]
fn predict_accepts_the_trained_classifier() {
    let (run, model, fasta) = trained();
    let out = run.dir.join("pred");
    predict(&fasta, &model, "fastesm", &out).assert().success();
    let results = fs::read_to_string(out.join("prediction_results.txt")).unwrap();
    assert!(
        results.starts_with("Sequence_ID\tPrediction\tscore1\tscore2\n"),
        "{results}"
    );
    // Every chunk of the 8 records (5 each) has at least its F1 frame.
    assert!(results.lines().count() > 40, "{results}");
    assert!(results.contains("VIR0_chunk_1F1\t"), "{results}");
    let best = fs::read_to_string(out.join("prediction_results_highestscore.csv")).unwrap();
    assert!(best.starts_with("Modified_ID\tIs_Virus\n"), "{best}");
    assert_eq!(best.lines().count(), 1 + 40, "{best}");
    let summary = fs::read_to_string(out.join("prediction_summary.tsv")).unwrap();
    assert!(summary.contains("VIR7"), "{summary}");
}

#[test]
fn predict_warns_about_another_protein_model_and_strict_refuses() {
    let (run, model, fasta) = trained();
    // ESM2 has the same hidden size as the FastESM2 the classifier was trained on: it runs, with
    // a warning naming both models.
    let out = run.dir.join("pred-esm2");
    predict(&fasta, &model, "esm2", &out)
        .assert()
        .success()
        .stderr(
            predicate::str::contains("protein model")
                .and(predicate::str::contains("fastesm"))
                .and(predicate::str::contains("esm2")),
        );
    assert!(out.join("prediction_results.txt").is_file());
    // --strict turns the warning into an error, and nothing is written.
    let strict = run.dir.join("pred-strict");
    predict(&fasta, &model, "esm2", &strict)
        .arg("--strict")
        .assert()
        .failure()
        .stderr(predicate::str::contains("protein model").and(predicate::str::contains("strict")));
    assert!(!strict.join("prediction_results.txt").exists());
}
