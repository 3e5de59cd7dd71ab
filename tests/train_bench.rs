//! Training throughput on a synthetic 2048-feature set (the FastESM2_650 + DNABERT-S size).
//! Ignored by default; run with
//! `cargo test --test integration train_bench:: -- --ignored --nocapture`
//! (VNP_BENCH_ROWS, VNP_BENCH_DIM and VNP_BENCH_EPOCHS override 20000, 2048 and 2).

use std::time::Instant;

use virnucpro_models::rng::Rng;
use virnucpro_train::features::{read_features, FeatureInfo, ShardWriter};
use virnucpro_train::train::{train, TrainOptions};

use crate::util::env_or;

#[test]
#[ignore]
fn train_throughput_2048() {
    let rows = env_or("VNP_BENCH_ROWS", 20_000);
    let dim = env_or("VNP_BENCH_DIM", 2048);
    let epochs = env_or("VNP_BENCH_EPOCHS", 2);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("features");
    let started = Instant::now();
    let mut w = ShardWriter::create(&dir, dim, FeatureInfo::default(), 10_000).unwrap();
    let mut rng = Rng::new(1, 0);
    let mut row = vec![0f32; dim];
    for i in 0..rows {
        let label = (i % 2) as u8;
        let centre = if label == 1 { 0.1 } else { -0.1 };
        for v in row.iter_mut() {
            *v = (centre + rng.normal()) as f32;
        }
        w.push(&format!("f{i}"), label, &row).unwrap();
    }
    w.finish().unwrap();
    let write_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let data = read_features(&dir).unwrap();
    let read_s = started.elapsed().as_secs_f64();
    let opts = TrainOptions {
        epochs,
        patience: epochs,
        ..Default::default()
    };
    let (_, report) = train(&data, &opts, |e| {
        println!(
            "epoch {}: {:.0} samples/s ({:.1} s), val loss {:.4}, val acc {:.4}",
            e.epoch, e.samples_per_s, e.seconds, e.val_loss, e.val.accuracy
        )
    })
    .unwrap();
    println!(
        "rows {rows} dim {dim}: shards written in {write_s:.1} s, read in {read_s:.1} s; \
         training {:.0} samples/s over {} epochs (CANDLE_NUM_THREADS={:?}, {} CPUs)",
        report.samples_per_s,
        report.epochs_run,
        std::env::var("CANDLE_NUM_THREADS").ok(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
