//! Large runs, end to end with the real binary on the tiny oracle models: a run killed with
//! `kill -9` and rerun gives the bytes of one uninterrupted run; a torn journal; a rerun with
//! another input, model or chunk length is refused (or restarted), never mixed; shards merged
//! back give the bytes of one run; `merge` refuses what does not belong together; several CPU
//! workers, one of which fails; injected out-of-memory failures.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, O};

const JOURNAL: &str = ".virnucpro.journal";
const SHARD_FILE: &str = "virnucpro-shard.journal";
const SHARD_INFO: &str = "virnucpro-shard.json";

/// Random records of skewed lengths (short reads to a few kb), some lower case and N runs.
fn write_input(path: &Path, records: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::new();
    for i in 0..records {
        let len = [90, 150, 150, 300, 300, 600, 1500][(next() % 7) as usize];
        text.push_str(&format!(">s{i} sample record {i}\n"));
        for j in 0..len {
            let b = b"ACGTacgtN"[(next() % if j % 50 == 0 { 9 } else { 4 }) as usize];
            text.push(b as char);
            if j % 70 == 69 {
                text.push('\n');
            }
        }
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

/// `predict` on the tiny oracle models, every optional file on; `extra` flags replace the
/// defaults of the same name.
fn predict_cmd(input: &Path, out: &Path, extra: &[&str]) -> Command {
    let classifier = format!("{O}/classifier/model_full.pth");
    let (dnabert, esm) = (format!("{O}/dnabert"), format!("{O}/fastesm"));
    let defaults = [
        ("--chunk-len", "60"),
        ("--dnabert", dnabert.as_str()),
        ("--esm", esm.as_str()),
        ("--classifier", classifier.as_str()),
        ("--device", "cpu"),
    ];
    let mut cmd = Command::new(BIN);
    cmd.arg("predict").arg(input);
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(["--keep-frames", "--write-viral-fasta", "--out-dir"])
        .arg(out)
        .args(extra)
        .env_remove("VIRNUCPRO_TEST_FAIL_DEVICE")
        .env_remove("VIRNUCPRO_TEST_OOM_TOKENS");
    cmd
}

fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_err(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file of a directory (hidden ones included) with its bytes; none if it does not exist.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The files of a directory that look like results: not hidden (the journal, temporary files
/// of an unfinished run) and not the shard record and its description.
fn results(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut f = files(dir);
    f.retain(|name, _| !name.starts_with('.') && name != SHARD_FILE && name != SHARD_INFO);
    f
}

fn assert_same_results(got: &Path, want: &Path) {
    let (a, b) = (results(got), results(want));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{} vs {}",
        got.display(),
        want.display()
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs between {} and {}",
            got.display(),
            want.display()
        );
    }
    assert_eq!(
        a.len(),
        6,
        "three result files, two frame files, the viral FASTA"
    );
}

/// Finished units in a journal file: its entries are `[u32 length][u8 kind][payload][u64
/// checksum]` after a 16-byte magic; kind 2 is a unit. A torn tail is not counted.
fn journal_units(path: &Path) -> usize {
    let Ok(bytes) = fs::read(path) else { return 0 };
    let mut at = 16;
    let mut units = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 5 + len + 8 > bytes.len() {
            break;
        }
        units += usize::from(bytes[at + 4] == 2);
        at += 5 + len + 8;
    }
    units
}

/// Kill -9 at several points of a run (before any unit is finished, and after some), rerun the
/// same command: the files equal one uninterrupted run's, finished units are reused, and
/// nothing of the killed run is left.
#[cfg(unix)]
#[test]
fn killed_runs_resume_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 100, 1);
    let reference = tmp.path().join("reference");
    run_ok(predict_cmd(&input, &reference, &[]));
    assert!(
        !reference.join(JOURNAL).exists(),
        "a finished run leaves no journal"
    );
    // The number of work units: a shard of one keeps its journal.
    let whole = tmp.path().join("whole");
    run_ok(predict_cmd(&input, &whole, &["--shard", "1/1"]));
    let total = journal_units(&whole.join(SHARD_FILE));
    assert!(total >= 50, "{total} work units");

    for (k, after) in [0, total / 3, 2 * total / 3].into_iter().enumerate() {
        let out = tmp.path().join(format!("killed{k}"));
        let mut child = predict_cmd(&input, &out, &[])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !(out.join(JOURNAL).exists() && journal_units(&out.join(JOURNAL)) >= after)
            && start.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed after {after} units"
        );
        crate::util::send_signal(child.id(), "KILL");
        child.wait().unwrap();
        let done = journal_units(&out.join(JOURNAL));
        assert!(
            done >= after && done < total,
            "{done} of {total} units journaled"
        );
        assert!(
            results(&out).is_empty(),
            "a killed run left files that look complete: {:?}",
            results(&out).keys()
        );
        let rerun = run_ok(predict_cmd(&input, &out, &[]));
        let log = String::from_utf8_lossy(&rerun.stderr);
        if done > 0 {
            assert!(
                log.contains(&format!("{done} of {total} work units")),
                "{done} units should be reused: {log}"
            );
        }
        assert_same_results(&out, &reference);
        // Nothing of the killed run is left: no journal, no temporary file.
        assert_eq!(
            files(&out).keys().filter(|n| n.starts_with('.')).count(),
            0,
            "{:?}",
            files(&out).keys()
        );
    }
}

/// A journal whose last entry was cut short (a crash mid-write) or damaged: that unit is
/// computed again, the files are still those of one run.
#[test]
fn torn_journal_entries_are_recomputed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 30, 2);
    let reference = tmp.path().join("reference");
    run_ok(predict_cmd(&input, &reference, &[]));

    // A journal of a whole run: a shard of one keeps it (sealed); renamed, it is the journal of
    // an unfinished run of the same command with `--shard 1/1`.
    let sharded = tmp.path().join("sharded");
    run_ok(predict_cmd(&input, &sharded, &["--shard", "1/1"]));
    let journal = fs::read(sharded.join(SHARD_FILE)).unwrap();
    for cut in [3usize, 40, 400] {
        let out = tmp.path().join(format!("torn{cut}"));
        fs::create_dir(&out).unwrap();
        fs::write(out.join(JOURNAL), &journal[..journal.len() - cut]).unwrap();
        let rerun = run_ok(predict_cmd(&input, &out, &["--shard", "1/1"]));
        let log = String::from_utf8_lossy(&rerun.stderr);
        assert!(log.contains("incomplete entry"), "{log}");
        assert!(log.contains("reused from the journal"), "{log}");
        assert_same_results(&out, &reference);
    }
    // A flipped byte inside an early entry: the journal ends there, the rest is recomputed.
    let out = tmp.path().join("flipped");
    fs::create_dir(&out).unwrap();
    let mut bad = journal.clone();
    bad[journal.len() / 3] ^= 0x20;
    fs::write(out.join(JOURNAL), &bad).unwrap();
    run_ok(predict_cmd(&input, &out, &["--shard", "1/1"]));
    assert_same_results(&out, &reference);
}

/// A rerun that is not the same command: refused with what changed, nothing mixed; --restart
/// starts over and gives the new command's results.
#[test]
fn changed_runs_are_refused_or_restarted_never_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 30, 3);
    let out = tmp.path().join("out");
    // An unfinished run: the device fails as it takes the 8th unit; the units finished before
    // stay in the journal.
    let mut crash = predict_cmd(&input, &out, &[]);
    crash.env("VIRNUCPRO_TEST_FAIL_DEVICE", "0:8");
    let err = run_err(crash);
    assert!(err.contains("injected failure"), "{err}");
    let journal = fs::read(out.join(JOURNAL)).unwrap();
    assert!(results(&out).is_empty());

    // Another chunk length, another protein model, another option that changes the files.
    let err = run_err(predict_cmd(&input, &out, &["--chunk-len", "90"]));
    assert!(err.contains("chunk length: 60 before, 90 now"), "{err}");
    assert!(err.contains("--restart"), "{err}");
    let esm2 = format!("{O}/esm2");
    let err = run_err(predict_cmd(&input, &out, &["--esm", &esm2]));
    assert!(err.contains("protein model:"), "{err}");
    let err = run_err(predict_cmd(&input, &out, &["--min-viral-fraction", "0.6"]));
    assert!(
        err.contains("--min-viral-fraction: 0.5 before, 0.6 now"),
        "{err}"
    );
    // The same input with one base changed early (same size, so the same cut into units): the
    // unit holding it no longer matches the journal's.
    let mut text = fs::read(&input).unwrap();
    let pos = 40 + text[40..].iter().position(|b| b"ACGT".contains(b)).unwrap();
    text[pos] = if text[pos] == b'A' { b'C' } else { b'A' };
    fs::create_dir(tmp.path().join("changed")).unwrap();
    let changed = tmp.path().join("changed/in.fa");
    fs::write(&changed, &text).unwrap();
    let err = run_err(predict_cmd(&changed, &out, &[]));
    assert!(err.contains("changed since the interrupted run"), "{err}");
    // Nothing was mixed: the journal is as it was, no result file appeared.
    assert_eq!(fs::read(out.join(JOURNAL)).unwrap(), journal);
    assert!(results(&out).is_empty());

    // The same command finishes it; --restart runs another one from scratch.
    let reference = tmp.path().join("reference");
    run_ok(predict_cmd(&input, &reference, &[]));
    let log = run_ok(predict_cmd(&input, &out, &[]));
    assert!(String::from_utf8_lossy(&log.stderr).contains("of 30 work units"));
    assert_same_results(&out, &reference);

    let mut crash = predict_cmd(&input, &out, &[]);
    crash.env("VIRNUCPRO_TEST_FAIL_DEVICE", "0:5");
    run_err(crash);
    let log = run_ok(predict_cmd(
        &input,
        &out,
        &["--restart", "--chunk-len", "90"],
    ));
    assert!(String::from_utf8_lossy(&log.stderr).contains("discarded"));
    let fresh = tmp.path().join("fresh");
    run_ok(predict_cmd(&input, &fresh, &["--chunk-len", "90"]));
    assert_same_results(&out, &fresh);

    // A shard checks the whole input up front.
    let shard = tmp.path().join("shard");
    run_ok(predict_cmd(&input, &shard, &["--shard", "1/2"]));
    let err = run_err(predict_cmd(&changed, &shard, &["--shard", "1/2"]));
    assert!(err.contains("input content"), "{err}");
}

/// Shards 1..N, then merge: the bytes of one run over the whole input, for N = 1, 2, 3, 7.
#[test]
fn merged_shards_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 70, 4);
    let whole = tmp.path().join("whole");
    run_ok(predict_cmd(&input, &whole, &[]));
    for n in [1u32, 2, 3, 7] {
        let dirs: Vec<PathBuf> = (1..=n)
            .map(|i| tmp.path().join(format!("n{n}/shard{i}")))
            .collect();
        let mut records = 0;
        for (i, dir) in dirs.iter().enumerate() {
            let spec = format!("{}/{n}", i + 1);
            run_ok(predict_cmd(&input, dir, &["--shard", &spec]));
            assert!(dir.join(SHARD_FILE).exists());
            let info: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join(SHARD_INFO)).unwrap()).unwrap();
            assert_eq!(info["shard"], spec.as_str());
            assert_eq!(info["run"]["chunk length"], "60");
            assert!(!dir.join(JOURNAL).exists());
            let summary = fs::read_to_string(dir.join("prediction_summary.tsv")).unwrap();
            records += summary.lines().count() - 1;
        }
        assert_eq!(records, 70, "every record in exactly one shard");
        let merged = tmp.path().join(format!("n{n}/merged"));
        let mut cmd = Command::new(BIN);
        cmd.arg("merge")
            .args(dirs.iter().rev())
            .arg("--out-dir")
            .arg(&merged);
        run_ok(cmd);
        assert_same_results(&merged, &whole);
    }
}

#[test]
fn merge_refuses_what_does_not_belong_together() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 24, 5);
    let shard = |spec: &str, name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut args = vec!["--shard", spec];
        args.extend_from_slice(extra);
        let mut cmd = predict_cmd(&input, &dir, &[]);
        cmd.args(&args);
        run_ok(cmd);
        dir
    };
    let s1 = shard("1/3", "s1", &[]);
    let s2 = shard("2/3", "s2", &[]);
    let s3 = shard("3/3", "s3", &[]);
    let foreign = shard("3/3", "foreign", &["--min-viral-fraction", "0.7"]);
    let merge = |dirs: &[&PathBuf]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("merge")
            .args(dirs)
            .arg("--out-dir")
            .arg(tmp.path().join("merged"));
        cmd
    };
    let err = run_err(merge(&[&s1, &s2]));
    assert!(err.contains("shard 3/3 of this run is missing"), "{err}");
    let err = run_err(merge(&[&s1, &s2, &s2, &s3]));
    assert!(err.contains("shard 2/3 is given twice"), "{err}");
    let err = run_err(merge(&[&s1, &s2, &foreign]));
    assert!(
        err.contains("shards of different runs") && err.contains("--min-viral-fraction"),
        "{err}"
    );
    let other_n = shard("1/2", "other_n", &[]);
    let err = run_err(merge(&[&s1, &s2, &s3, &other_n]));
    assert!(
        err.contains("same N") || err.contains("different runs"),
        "{err}"
    );
    let not_shard = tmp.path().join("empty");
    fs::create_dir(&not_shard).unwrap();
    let err = run_err(merge(&[&s1, &s2, &not_shard]));
    assert!(err.contains("holds no shard"), "{err}");
    // An unfinished shard: its journal, not a sealed record.
    let unfinished = tmp.path().join("unfinished");
    fs::create_dir(&unfinished).unwrap();
    fs::copy(s3.join(SHARD_FILE), unfinished.join(JOURNAL)).unwrap();
    let err = run_err(merge(&[&s1, &s2, &unfinished]));
    assert!(err.contains("unfinished run"), "{err}");
    assert!(!tmp.path().join("merged").exists(), "nothing written");
    run_ok(merge(&[&s3, &s1, &s2]));
}

/// Several CPU workers (each with its own models) give the bytes of one; a worker that fails
/// mid-run hands its units to the others; when every worker fails the run stops, writing
/// nothing complete.
#[test]
fn several_workers_and_a_failing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 40, 6);
    let one = tmp.path().join("one");
    run_ok(predict_cmd(&input, &one, &["--device", "cpu"]));
    let three = tmp.path().join("three");
    run_ok(predict_cmd(&input, &three, &["--device", "cpu,cpu,cpu"]));
    assert_same_results(&three, &one);

    let failing = tmp.path().join("failing");
    let mut cmd = predict_cmd(&input, &failing, &["--device", "cpu,cpu"]);
    cmd.env("VIRNUCPRO_TEST_FAIL_DEVICE", "1:3");
    let out = run_ok(cmd);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("injected failure") && log.contains("go to the other"),
        "{log}"
    );
    assert_same_results(&failing, &one);

    let all = tmp.path().join("all");
    let mut cmd = predict_cmd(&input, &all, &["--device", "cpu"]);
    cmd.env("VIRNUCPRO_TEST_FAIL_DEVICE", "0:2");
    let err = run_err(cmd);
    assert!(err.contains("cpu failed: injected failure"), "{err}");
    assert!(results(&all).is_empty());
}

/// Injected out-of-memory failures on every batch above a size: the run backs off, says so,
/// and finishes with every row once, in order.
#[test]
fn out_of_memory_back_off() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 20, 7);
    let reference = tmp.path().join("reference");
    run_ok(predict_cmd(&input, &reference, &["--batch-tokens", "64"]));
    let out = tmp.path().join("out");
    let mut cmd = predict_cmd(&input, &out, &["--batch-tokens", "1048576"]);
    cmd.env("VIRNUCPRO_TEST_OOM_TOKENS", "100");
    let done = run_ok(cmd);
    let log = String::from_utf8_lossy(&done.stderr);
    assert!(log.contains("ran out of memory"), "{log}");
    let ids = |dir: &Path| -> Vec<String> {
        fs::read_to_string(dir.join("prediction_results.txt"))
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&out), ids(&reference));
    assert_eq!(
        log.matches("ran out of memory").count(),
        1,
        "the smaller budget is logged once: {log}"
    );

    // A single sequence that cannot fit: an error naming it, nothing written as complete.
    let tiny = tmp.path().join("tiny");
    let mut cmd = predict_cmd(&input, &tiny, &[]);
    cmd.env("VIRNUCPRO_TEST_OOM_TOKENS", "5");
    let err = run_err(cmd);
    assert!(
        err.contains("does not fit in the memory of cpu even alone") && err.contains("record `s"),
        "{err}"
    );
    assert!(results(&tiny).is_empty());
}

/// --threads 1 gives the bytes of the default thread count.
#[test]
fn thread_count_does_not_change_results() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 20, 8);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_ok(predict_cmd(&input, &a, &[]));
    let mut cmd = predict_cmd(&input, &b, &[]);
    cmd.args(["--threads", "1"]);
    run_ok(cmd);
    assert_same_results(&b, &a);
}

/// Rows of two runs: same IDs, calls and order, scores within `tol`.
fn assert_same_rows(got: &Path, want: &Path, tol: f64) {
    for name in ["prediction_results.txt", "prediction_summary.tsv"] {
        let read = |dir: &Path| fs::read_to_string(dir.join(name)).unwrap();
        let (a, b) = (read(got), read(want));
        assert_eq!(a.lines().count(), b.lines().count(), "{name}");
        for (x, y) in a.lines().zip(b.lines()) {
            for (u, v) in x.split('\t').zip(y.split('\t')) {
                match (u.parse::<f64>(), v.parse::<f64>()) {
                    (Ok(u), Ok(v)) => assert!((u - v).abs() <= tol, "{name}: {x} / {y}"),
                    _ if u == "virus" || u == "others" => {}
                    _ => assert_eq!(u, v, "{name}: {x} / {y}"),
                }
            }
        }
    }
}

/// The grouping of work units that GPU workers do (on the CPU only with its test switch, as
/// there a row's last digits can depend on its batch): every row once, in order, with one or
/// several workers, a failing one, and out-of-memory back-off inside a group.
#[test]
fn grouped_units_keep_every_row_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.fa");
    write_input(&input, 40, 9);
    let plain = tmp.path().join("plain");
    run_ok(predict_cmd(&input, &plain, &[]));
    for (name, device, env) in [
        ("one", "cpu", None),
        (
            "two-failing",
            "cpu,cpu",
            Some(("VIRNUCPRO_TEST_FAIL_DEVICE", "1:2")),
        ),
        ("oom", "cpu", Some(("VIRNUCPRO_TEST_OOM_TOKENS", "200"))),
    ] {
        let out = tmp.path().join(name);
        let mut cmd = predict_cmd(&input, &out, &["--device", device, "-v"]);
        cmd.env("VIRNUCPRO_TEST_GROUP_UNITS", "1");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let log = String::from_utf8_lossy(&run_ok(cmd).stderr).into_owned();
        assert!(log.contains("a group of"), "{name}: no unit was grouped");
        assert_same_rows(&out, &plain, 1e-4);
        assert_eq!(
            fs::read(out.join("prediction_results_highestscore.csv"))
                .unwrap()
                .len(),
            fs::read(plain.join("prediction_results_highestscore.csv"))
                .unwrap()
                .len(),
            "{name}"
        );
    }
}
