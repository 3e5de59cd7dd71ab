//! `extract` throughput with the tiny oracle models (hidden 128, 2 layers) on 300-bp frames.
//! Ignored by default; run with
//! `cargo test --test integration extract_bench:: -- --ignored --nocapture`
//! (VNP_BENCH_FRAMES and VNP_BENCH_CHUNK override 2000 and 300; VNP_BENCH_DEVICE picks the device).

use std::fs;
use std::path::Path;

use virnucpro_models::device::DeviceSpec;
use virnucpro_models::rng::Rng;
use virnucpro_train::extract::{extract, ExtractOptions};
use virnucpro_train::prepare::{PrepareSummary, FRAMES_FILE, FRAMES_HEADER, SUMMARY_FILE};

use crate::util::{env_or, oracle, CODE};

/// A prepared data set of `n` F1 frames of stop-free random chunks (what `prepare` keeps from a
/// coding region): DNA `chunk` bases, protein `chunk / 3` residues.
fn write_dataset(dir: &Path, n: usize, chunk: usize) {
    fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(7, 0);
    let mut tsv = format!("{FRAMES_HEADER}\n");
    for i in 0..n {
        let (mut dna, mut protein) = (String::new(), String::new());
        while protein.len() < chunk / 3 {
            let c = rng.below(64) as usize;
            if CODE[c] == b'*' {
                continue;
            }
            for k in [c / 16, (c / 4) % 4, c % 4] {
                dna.push(b"TCAG"[k] as char);
            }
            protein.push(CODE[c] as char);
        }
        let label = i % 2;
        tsv += &format!("r{i}_chunk_1F1\t{label}\tg{label}\t{dna}\t{protein}\n");
    }
    fs::write(dir.join(FRAMES_FILE), tsv).unwrap();
    let summary = PrepareSummary {
        format: "virnucpro-prepared".into(),
        format_version: 1,
        virnucpro_version: env!("CARGO_PKG_VERSION").into(),
        chunk_len: chunk,
        seed: 0,
        frames_file: FRAMES_FILE.into(),
        viral_frames: n.div_ceil(2) as u64,
        host_frames_available: (n / 2) as u64,
        host_frames_written: (n / 2) as u64,
        balanced: n.is_multiple_of(2),
        groups: Vec::new(),
    };
    fs::write(
        dir.join(SUMMARY_FILE),
        serde_json::to_string(&summary).unwrap(),
    )
    .unwrap();
}

#[test]
#[ignore]
fn extract_throughput_tiny_models() {
    let frames = env_or("VNP_BENCH_FRAMES", 2000);
    let chunk = env_or("VNP_BENCH_CHUNK", 300);
    let device: DeviceSpec = std::env::var("VNP_BENCH_DEVICE")
        .ok()
        .map(|d| d.parse().unwrap())
        .unwrap_or(DeviceSpec::Cpu);
    let tmp = tempfile::tempdir().unwrap();
    let dataset = tmp.path().join("data");
    write_dataset(&dataset, frames, chunk);
    let mut opts = ExtractOptions::new(&dataset, tmp.path().join("features"));
    opts.dnabert = oracle("dnabert").display().to_string();
    opts.esm = oracle("fastesm").display().to_string();
    opts.device = device;
    opts.rows_per_shard = 1000;
    let report = extract(&opts).unwrap();
    assert_eq!(report.manifest.rows, frames);
    println!(
        "{frames} frames of {chunk} bp on {device}: {:.1} frames/s ({:.1} s embedding + writing), \
         CANDLE_NUM_THREADS={:?}, {} CPUs",
        report.frames_per_s().unwrap(),
        report.seconds,
        std::env::var("CANDLE_NUM_THREADS").ok(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // A rerun finds every shard finished.
    let again = extract(&opts).unwrap();
    assert_eq!((again.shards_kept, again.shards_computed), (2, 0));
}
