//! Out-of-memory injected where a real one happens, in a linear layer
//! (`VIRNUCPRO_TEST_OOM_TOKENS=T`: a linear call on more than T tokens fails with the typed
//! out-of-memory error): `predict` on the CPU with the tiny oracle models backs off (splits its
//! batches) and writes the bytes of a run that never ran out of memory.
//!
//! Why the bytes can be equal on the CPU, where a row's last digits may depend on its batch: the
//! injected run starts at twice the reference's budget with the limit at the reference's budget,
//! so its first failure halves the budget to exactly the reference's, and every later batch plan
//! is the reference's. A plan made at the larger budget that never failed holds batches of at
//! most the limit, which the greedy planner would have made the same at the smaller budget.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{output_files, BIN};
const ORACLE: &str = "tests/data/oracle";
/// The reference run's `--batch-tokens` and the injected run's limit.
const BUDGET: usize = 128;

/// Records of mixed lengths (several 60-bp chunks each, some shorter), some lower case.
fn write_input(path: &Path) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut text = String::new();
    for i in 0..16 {
        let len = [45, 90, 150, 300, 420][next(5) as usize];
        text.push_str(&format!(">r{i}\n"));
        text.extend((0..len).map(|_| b"ACGTacgt"[next(8) as usize] as char));
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

/// `predict` on the CPU with the oracle models; the test variables of the environment removed
/// (`oom_tokens` sets the one this test is about).
fn predict(input: &Path, out: &Path, batch_tokens: usize, oom_tokens: Option<usize>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("predict")
        .arg(input)
        .args(["--chunk-len", "60", "--device", "cpu", "--keep-frames"])
        .args(["--dnabert", &format!("{ORACLE}/dnabert")])
        .args(["--esm", &format!("{ORACLE}/fastesm")])
        .args([
            "--classifier",
            &format!("{ORACLE}/classifier/model_full.pth"),
        ])
        .args(["--batch-tokens", &batch_tokens.to_string()])
        .arg("--out-dir")
        .arg(out);
    for var in [
        "VIRNUCPRO_TEST_OOM_TOKENS",
        "VIRNUCPRO_TEST_FAIL_DEVICE",
        "VIRNUCPRO_TEST_GROUP_UNITS",
        "VIRNUCPRO_TEST_STALL_AFTER",
    ] {
        cmd.env_remove(var);
    }
    if let Some(t) = oom_tokens {
        cmd.env("VIRNUCPRO_TEST_OOM_TOKENS", t.to_string());
    }
    let done = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&done.stderr).into_owned();
    assert!(done.status.success(), "{cmd:?} failed:\n{log}");
    log
}

/// The result files of a run (hidden ones, the journal, left out) with their bytes.
fn result_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = output_files(dir);
    files.retain(|name, _| !name.starts_with('.'));
    files
}

#[test]
fn linear_layer_oom_backs_off_to_the_bytes_of_a_run_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input);

    let reference = tmp.path().join("reference");
    let log = predict(&input, &reference, BUDGET, None);
    assert!(!log.contains("ran out of memory"), "{log}");

    let injected = tmp.path().join("injected");
    let log = predict(&input, &injected, 2 * BUDGET, Some(BUDGET));
    // The back-off happened, once: a batch was split and retried at half the budget.
    assert_eq!(log.matches("ran out of memory").count(), 1, "{log}");
    assert!(
        log.contains("split and retried") && log.contains(&format!("at most {BUDGET} (DNABERT)")),
        "{log}"
    );

    let (got, want) = (result_files(&injected), result_files(&reference));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    assert!(want.contains_key("prediction_results.txt"), "{want:?}");
    for (name, bytes) in &want {
        assert!(
            got[name] == *bytes,
            "{name} differs after the back-off:\n{}\nvs\n{}",
            String::from_utf8_lossy(&got[name]),
            String::from_utf8_lossy(bytes)
        );
    }
}
