//! The Snakemake workflow (`workflow/Snakefile`) end to end, with this build's binary and the
//! demo's tiny models, on 2 samples (one plain, one gzip-compressed) x 3 shards, compared byte for
//! byte with `virnucpro predict` run directly on each sample:
//! - with the local profile: one shard job fails on its first attempt (the device test switch)
//!   and snakemake's retry resumes from the journal; shard jobs forced to run again reuse their
//!   finished records; then `--dry-run`s with the Slurm profiles;
//! - with the Slurm CPU profile on a real single-node Slurm: one shard job `scancel`led, one
//!   whose `virnucpro` is killed (`kill -9`), one over its time limit; each is retried and
//!   resumes from the units its first attempt journaled.
//!
//! Needs `snakemake` on PATH (`scripts/snakemake-venv.sh` installs the pinned one) and, for the
//! Slurm test, the Slurm of `scripts/slurm-local.sh start` (`.ci/run` provides both). Without them
//! a test prints a notice and passes, unless VIRNUCPRO_REQUIRE_SNAKEMAKE=1 or
//! VIRNUCPRO_REQUIRE_SLURM=1 (CI), where it fails.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::BIN;

const RESULTS: [&str; 3] = [
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "prediction_summary.tsv",
];

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `snakemake` on PATH, or `None` after a loud notice (a failure with
/// VIRNUCPRO_REQUIRE_SNAKEMAKE=1).
fn snakemake() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("snakemake"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let how = "install it with `PATH=\"$(scripts/snakemake-venv.sh):$PATH\"` (README, Tests)";
        if std::env::var("VIRNUCPRO_REQUIRE_SNAKEMAKE").as_deref() == Ok("1") {
            panic!("VIRNUCPRO_REQUIRE_SNAKEMAKE=1 but `snakemake` is not on PATH; {how}");
        }
        // Straight to the file descriptor: the test harness hides what `eprintln!` prints.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!!!! SKIPPED: the Snakemake workflow test did not run: `snakemake` is not on \
             PATH; {how} !!!!!!!!!!\n"
        );
    }
    found
}

/// Whether the single-node Slurm of `scripts/slurm-local.sh` runs here; a loud notice when not (a
/// failure with VIRNUCPRO_REQUIRE_SLURM=1). Only that one: the test must never submit its jobs to
/// a real cluster that happens to be configured on this machine.
fn slurm() -> bool {
    let status = Command::new(repo("scripts/slurm-local.sh"))
        .arg("status")
        .output()
        .unwrap();
    if status.status.success() {
        return true;
    }
    let why = String::from_utf8_lossy(&status.stderr);
    let how = "start it with `scripts/slurm-local.sh start` (root, apt-get; README, Tests)";
    if std::env::var("VIRNUCPRO_REQUIRE_SLURM").as_deref() == Ok("1") {
        panic!(
            "VIRNUCPRO_REQUIRE_SLURM=1 but there is no local Slurm: {}; {how}",
            why.trim()
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!! SKIPPED: the Slurm workflow test did not run: {}; {how} !!!!!!!!!!\n",
        why.trim()
    );
    false
}

fn run(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `snakemake` with the workflow, run in `dir`, with `bin` first on PATH.
fn workflow(snakemake: &Path, dir: &Path, bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(snakemake);
    let path = std::env::join_paths(
        std::iter::once(bin.to_path_buf())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    cmd.current_dir(dir)
        .env("PATH", path)
        .env("HF_HOME", dir.join("hf"))
        .env("VIRNUCPRO_CACHE", dir.join("vnp-cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("VIRNUCPRO_TEST_FAIL_DEVICE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("VIRNUCPRO_OFFLINE")
        .arg("--snakefile")
        .arg(repo("workflow/Snakefile"))
        .args(["--configfile", "config.yaml"])
        .args(args);
    cmd
}

/// The models of every run here, as predict flags.
fn model_flags() -> Vec<String> {
    let demo = |p: &str| repo(&format!("demo/{p}")).display().to_string();
    vec![
        "--chunk-len".into(),
        "60".into(),
        "--dnabert".into(),
        demo("models/dnabert"),
        "--esm".into(),
        demo("models/fastesm"),
        "--classifier".into(),
        demo("classifier.safetensors"),
    ]
}

/// The two samples and the config of every workflow run here: `zeta`, the demo genomes
/// gzip-compressed; `alpha`, five renamed copies, plain (35 records, enough work units per shard
/// for a failure part-way). Listed not in alphabetical order: the summary follows the TSV.
fn write_inputs(dir: &Path) {
    let demo = fs::read_to_string(repo("demo/genomes.fa")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(dir.join("zeta.fa.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(demo.as_bytes()).unwrap();
    gz.finish().unwrap();
    let alpha: String = (1..=5)
        .map(|k| demo.replace('>', &format!(">c{k}_")))
        .collect();
    fs::write(dir.join("alpha.fa"), alpha).unwrap();
    fs::write(
        dir.join("samples.tsv"),
        "sample\tfasta\nzeta\tzeta.fa.gz\nalpha\talpha.fa\n",
    )
    .unwrap();
    let m = model_flags();
    fs::write(
        dir.join("config.yaml"),
        format!(
            "samples: samples.tsv\nout_dir: results\nshards: 3\nchunk_len: {}\ndnabert: {}\n\
             esm: {}\nclassifier: {}\ndevice: cpu\nvirnucpro_cpu: {BIN}\n",
            m[1], m[3], m[5], m[7]
        ),
    )
    .unwrap();
}

/// `DIR/bin/virnucpro`, the `virnucpro` the shard jobs find on PATH: a shell script with `body`
/// (which ends by running this build, `BIN`); returns `DIR/bin`.
fn write_wrapper(dir: &Path, body: &str) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("virnucpro");
    fs::write(&wrapper, format!("#!/bin/sh\n{body}")).unwrap();
    let mut perms = fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&wrapper, perms).unwrap();
    bin
}

/// Each sample's files in DIR/results are those of one `predict` on it, and DIR/results/summary.tsv
/// is their summaries.
fn assert_same_as_direct(dir: &Path) {
    let mut summary = String::new();
    for (sample, input) in [("zeta", "zeta.fa.gz"), ("alpha", "alpha.fa")] {
        let direct = dir.join("direct").join(sample);
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args(["-q", "predict", input, "--device", "cpu", "--out-dir"])
            .arg(&direct)
            .args(model_flags())
            .env_remove("VIRNUCPRO_TEST_FAIL_DEVICE")
            .env_remove("VIRNUCPRO_TEST_STALL_AFTER");
        run(cmd);
        for name in RESULTS {
            let want = fs::read(direct.join(name)).unwrap();
            let got = fs::read(dir.join("results").join(sample).join(name)).unwrap();
            assert!(got == want, "{sample}/{name} differs from a direct predict");
        }
        let text = fs::read_to_string(direct.join("prediction_summary.tsv")).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        if summary.is_empty() {
            summary = format!("sample\t{header}\n");
        }
        for line in lines {
            summary.push_str(&format!("{sample}\t{line}\n"));
        }
    }
    assert_eq!(
        fs::read_to_string(dir.join("results/summary.tsv")).unwrap(),
        summary
    );
    assert_eq!(summary.lines().count(), 1 + 7 + 35);
    let fetched = fs::read_to_string(dir.join("results/fetch.txt")).unwrap();
    assert!(fetched.contains("classifier "), "{fetched}");
}

/// The attempts a shard job's `attempts.log` records, oldest first.
fn attempts(dir: &Path, sample: &str, i: usize) -> Vec<String> {
    let path = dir.join(format!("results/{sample}/shards/{i}/attempts.log"));
    let log = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    log.split("== ")
        .skip(1)
        .map(|a| format!("== {a}"))
        .collect()
}

/// (N, M) of "N of M work units (...) reused from the journal" in an attempt's log.
fn reused(attempt: &str) -> Option<(u64, u64)> {
    let part = attempt
        .split("; ")
        .find(|p| p.contains(" work units (") && p.contains(" reused from the journal"))?;
    let w: Vec<&str> = part.split_whitespace().collect();
    match w[..] {
        [n, "of", m, "work", "units", ..] => Some((n.parse().ok()?, m.parse().ok()?)),
        _ => None,
    }
}

#[test]
fn workflow_equals_direct_predict_and_a_failed_shard_resumes() {
    let Some(snakemake) = snakemake() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_inputs(dir);
    // The first attempt of alpha's shard 2/3 fails as the device takes its 4th work unit.
    let marker = dir.join("failed-once");
    let bin = write_wrapper(
        dir,
        &format!(
            "case \"$*\" in\n  *\"--shard 2/3\"*alpha/shards/2*)\n    if [ ! -e '{m}' ]; then\n      touch '{m}'\n      VIRNUCPRO_TEST_FAIL_DEVICE=0:4 exec '{BIN}' \"$@\"\n    fi;;\nesac\nexec '{BIN}' \"$@\"\n",
            m = marker.display()
        ),
    );

    let local = repo("workflow/profiles/local").display().to_string();
    let out = run(workflow(
        &snakemake,
        dir,
        &bin,
        &["--profile", &local, "--cores", "2"],
    ));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(marker.exists(), "the failure was not injected");
    assert!(log.contains("Error in rule shard"), "{log}");
    assert!(log.contains("Trying to restart job"), "{log}");
    let tries = attempts(dir, "alpha", 2);
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(tries[0].contains("injected failure"), "{tries:?}");
    let (n, m) = reused(&tries[1]).unwrap_or_else(|| panic!("not resumed: {tries:?}"));
    assert!(n >= 1 && n < m, "{tries:?}");

    assert_same_as_direct(dir);

    // Done: a second run has nothing to do.
    let again = run(workflow(
        &snakemake,
        dir,
        &bin,
        &["--profile", &local, "--cores", "2"],
    ));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("Nothing to be done"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Shard jobs run again (--forcerun; also what a change of the workflow's code does): the
    // same command, so every shard reuses its finished record instead of computing again, and
    // says which file it reused.
    let before = fs::read(dir.join("results/alpha/prediction_results.txt")).unwrap();
    run(workflow(
        &snakemake,
        dir,
        &bin,
        &["--profile", &local, "--cores", "2", "--forcerun", "shard"],
    ));
    for i in 1..=3 {
        let tries = attempts(dir, "alpha", i);
        let last = tries.last().unwrap();
        let (n, m) = reused(last).unwrap_or_else(|| panic!("not resumed: {last}"));
        assert_eq!(n, m, "every unit reused: {last}");
        assert!(
            last.contains(&format!(
                "resuming: {n} work units finished by an earlier run are reused from \
                 results/alpha/shards/{i}/virnucpro-shard.journal"
            )),
            "{last}"
        );
    }
    assert_eq!(
        fs::read(dir.join("results/alpha/prediction_results.txt")).unwrap(),
        before
    );

    // The Slurm profiles: a dry run of a fresh output directory plans every job, with the
    // threads and resources the jobs will get.
    for (profile, threads, gpu) in [("slurm-gpu", 8, true), ("slurm-cpu", 16, false)] {
        let path = repo(&format!("workflow/profiles/{profile}"))
            .display()
            .to_string();
        let dry = run(workflow(
            &snakemake,
            dir,
            &bin,
            &[
                "--profile",
                &path,
                "--dry-run",
                "--config",
                "out_dir=results-slurm",
            ],
        ));
        let plan = String::from_utf8_lossy(&dry.stdout).into_owned()
            + &String::from_utf8_lossy(&dry.stderr);
        for (rule, count) in [("fetch", 1), ("shard", 6), ("merge", 2), ("summary", 1)] {
            assert!(
                plan.lines().any(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w == [rule, &count.to_string()]
                }),
                "{profile}: {rule} x{count} missing from the plan:\n{plan}"
            );
        }
        assert_eq!(
            plan.matches(&format!("virnucpro --threads {threads} predict"))
                .count(),
            6,
            "{profile}:\n{plan}"
        );
        assert_eq!(plan.contains("gpu=1"), gpu, "{profile}:\n{plan}");
        assert!(!dir.join("results-slurm").exists());
    }
}

/// What the Slurm test does to the first attempt of alpha's shard I: `(I, what, Slurm state)`.
const SABOTAGE: [(usize, &str, &str); 3] = [
    (1, "cancel", "CANCELLED"),
    (2, "kill", "FAILED"),
    (3, "timeout", "TIMEOUT"),
];
/// Units the sabotaged attempts journal before they stall (VIRNUCPRO_TEST_STALL_AFTER).
const STALL_AFTER: u64 = 3;

#[test]
fn slurm_workflow_resumes_cancelled_killed_and_timed_out_shards() {
    let Some(snakemake) = snakemake() else { return };
    if !slurm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_inputs(dir);
    // The first attempt of each of alpha's shards notes its pid (that of virnucpro, after exec)
    // and Slurm job in DIR/WHAT.job, then stalls after journaling STALL_AFTER units: the test
    // then cancels the job (1/3), kills virnucpro (2/3), or lets the 1-minute limit end it (3/3).
    let mut body = String::from("case \"$*\" in\n");
    for (i, what, _) in SABOTAGE {
        body += &format!("  *\"--shard {i}/3\"*alpha/shards/{i}*) what={what};;\n");
    }
    body += &format!(
        "  *) exec '{BIN}' \"$@\";;\nesac\nif [ ! -e \"{d}/$what.job\" ]; then\n  \
         echo \"$$ $SLURM_JOB_ID\" > \"{d}/$what.tmp\" && mv \"{d}/$what.tmp\" \"{d}/$what.job\"\n  \
         VIRNUCPRO_TEST_STALL_AFTER={STALL_AFTER} exec '{BIN}' \"$@\"\nfi\nexec '{BIN}' \"$@\"\n",
        d = dir.display()
    );
    let bin = write_wrapper(dir, &body);

    // The CPU profile as shipped, with what the test node has (README, "Many samples on a
    // cluster"), a 1-minute limit for shard jobs and status checks every few seconds.
    let profile = repo("workflow/profiles/slurm-cpu").display().to_string();
    let log_path = dir.join("snakemake.log");
    let log_file = fs::File::create(&log_path).unwrap();
    let mut cmd = workflow(
        &snakemake,
        dir,
        &bin,
        &[
            "--profile",
            &profile,
            "--set-threads",
            "shard=1",
            "--default-resources",
            "mem_mb=500",
            "runtime=5",
            "--set-resources",
            "shard:mem_mb=1000",
            "shard:runtime=1",
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--seconds-between-status-checks",
            "2",
        ],
    );
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let log = || fs::read_to_string(&log_path).unwrap_or_default();
    let stalled = format!("VIRNUCPRO_TEST_STALL_AFTER: {STALL_AFTER} work units journaled");
    let mut to_do = vec!["cancel", "kill"];
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("the Slurm workflow still ran after 10 minutes:\n{}", log());
        }
        to_do.retain(|&what| {
            let i = SABOTAGE.iter().find(|s| s.1 == what).unwrap().0;
            let stalled_now =
                fs::read_to_string(dir.join(format!("results/alpha/shards/{i}/attempts.log")))
                    .is_ok_and(|l| l.contains(&stalled));
            let job = fs::read_to_string(dir.join(format!("{what}.job")));
            let (true, Ok(job)) = (stalled_now, job) else {
                return true;
            };
            let (pid, slurm_job) = job.trim().split_once(' ').unwrap();
            let args = match what {
                "cancel" => vec!["scancel", slurm_job],
                _ => vec!["kill", "-9", pid],
            };
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]);
            run(cmd);
            false
        });
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = log();
    assert!(status.success(), "the Slurm workflow failed:\n{log}");
    assert!(to_do.is_empty(), "never stalled: {to_do:?}\n{log}");
    let took = started.elapsed().as_secs_f64();

    // Each sabotaged job ended as it should have, was retried, and its retry reused the units
    // of the first attempt.
    assert!(!log.contains("Falling back to 'sacct'"), "{log}");
    let mut report = format!("the Slurm workflow: {took:.0} s");
    for (i, what, state) in SABOTAGE {
        let job = fs::read_to_string(dir.join(format!("{what}.job"))).unwrap();
        let slurm_job = job.split_whitespace().nth(1).unwrap();
        assert!(
            log.contains(&format!(
                "SLURM-job '{slurm_job}' failed, SLURM status is: '{state}'"
            )),
            "{what}: job {slurm_job} not {state}:\n{log}"
        );
        let tries = attempts(dir, "alpha", i);
        assert_eq!(tries.len(), 2, "{what}: {tries:?}");
        assert!(tries[0].contains(&stalled), "{what}: {tries:?}");
        let (n, m) = reused(&tries[1]).unwrap_or_else(|| panic!("{what}: not resumed: {tries:?}"));
        assert_eq!(n, STALL_AFTER, "{what}: {}", tries[1]);
        assert!(m > n, "{what}: {}", tries[1]);
        report += &format!("; {what}: {n} of {m} work units reused");
    }
    assert_eq!(log.matches("Trying to restart job").count(), 3, "{log}");
    for i in 1..=3 {
        assert_eq!(attempts(dir, "zeta", i).len(), 1);
    }

    assert_same_as_direct(dir);
    // For CI's log (the harness hides what `eprintln!` prints).
    let _ = writeln!(std::io::stderr(), "{report}");
}
