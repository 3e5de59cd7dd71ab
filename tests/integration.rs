//! The integration tests: one test binary (one link against candle) with a module per area.
//! `cargo test --test integration` runs them all; `cargo test --test integration MODULE::`
//! one module (e.g. `gpu_parity::`). A new file `tests/NAME.rs` needs `mod NAME;` here
//! (`every_test_file_is_a_module` fails otherwise): Cargo.toml has `autotests = false`.

mod util;

mod classifier;
mod classifier_cli;
mod doctor_cli;
mod embed_cli;
mod embed_oracle;
mod evaluate_metrics;
mod extract_bench;
mod fetch_cli;
mod frames_cli;
mod gpu_parity;
mod input_props;
mod large_runs;
mod models_loading;
mod nucleotide_input;
mod oom_injection;
mod predict_cli;
mod prepare_cli;
mod presets_cli;
mod train_bench;
mod train_cli;
mod train_e2e;
mod units_content;
mod workflow;

/// With `autotests = false` Cargo builds no file of tests/ by itself: one left out of the list
/// above would never run.
#[test]
fn every_test_file_is_a_module() {
    let this = include_str!("integration.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(module) = name.strip_suffix(".rs") else {
            continue;
        };
        if module != "integration" && !this.contains(&format!("\nmod {module};\n")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not declared in tests/integration.rs: {missing:?}"
    );
}
