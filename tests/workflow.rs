//! The Snakemake workflow (`workflow/Snakefile`) end to end, with this build's binary and the
//! demo's tiny models: 2 samples (one plain, one gzip-compressed) x 3 shards with the local
//! profile, compared byte for byte with `virnucpro predict` run directly on each sample; one shard
//! job fails on its first attempt (the device test switch) and snakemake's retry resumes from the
//! journal; shard jobs forced to run again reuse their finished records; then a `--dry-run` with
//! the Slurm profile.
//!
//! Needs `snakemake` on PATH (`scripts/snakemake-venv.sh` installs the pinned one; `.ci/run`
//! does). Without it the test prints a notice and passes, unless VIRNUCPRO_REQUIRE_SNAKEMAKE=1
//! (CI), where it fails.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_virnucpro");
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

#[test]
fn workflow_equals_direct_predict_and_a_failed_shard_resumes() {
    let Some(snakemake) = snakemake() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let demo = fs::read_to_string(repo("demo/genomes.fa")).unwrap();

    // `zeta`: the demo genomes gzip-compressed; `alpha`: five renamed copies, plain (35 records,
    // enough work units per shard for a failure part-way).
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
    // Not in alphabetical order: the summary follows the TSV.
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

    // `virnucpro` on PATH: this build, except that the first attempt of alpha's shard 2/3 fails
    // as the device takes its 4th work unit.
    let bin = dir.join("bin");
    fs::create_dir(&bin).unwrap();
    let marker = dir.join("failed-once");
    let wrapper = bin.join("virnucpro");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *\"--shard 2/3\"*alpha/shards/2*)\n    if [ ! -e '{m}' ]; then\n      touch '{m}'\n      VIRNUCPRO_TEST_FAIL_DEVICE=0:4 exec '{BIN}' \"$@\"\n    fi;;\nesac\nexec '{BIN}' \"$@\"\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let mut perms = fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&wrapper, perms).unwrap();

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
    let attempts = fs::read_to_string(dir.join("results/alpha/shards/2/attempts.log")).unwrap();
    assert!(attempts.contains("injected failure"), "{attempts}");
    assert!(attempts.contains("reused from the journal"), "{attempts}");
    assert_eq!(attempts.matches("== ").count(), 2, "{attempts}");

    // Each sample's files are those of one predict on it.
    let mut summary = String::new();
    for (sample, input) in [("zeta", "zeta.fa.gz"), ("alpha", "alpha.fa")] {
        let direct = dir.join("direct").join(sample);
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .args(["-q", "predict", input, "--device", "cpu", "--out-dir"])
            .arg(&direct)
            .args(&m)
            .env_remove("VIRNUCPRO_TEST_FAIL_DEVICE");
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
    // same command, so every shard reuses its finished record instead of computing again.
    let before = fs::read(dir.join("results/alpha/prediction_results.txt")).unwrap();
    run(workflow(
        &snakemake,
        dir,
        &bin,
        &["--profile", &local, "--cores", "2", "--forcerun", "shard"],
    ));
    for i in 1..=3 {
        let attempts =
            fs::read_to_string(dir.join(format!("results/alpha/shards/{i}/attempts.log"))).unwrap();
        let last = attempts.rsplit("== ").next().unwrap();
        let units = last
            .split("resuming: ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("not resumed: {last}"));
        assert!(
            last.contains(&format!("{units} of {units} work units")),
            "every unit reused: {last}"
        );
    }
    assert_eq!(
        fs::read(dir.join("results/alpha/prediction_results.txt")).unwrap(),
        before
    );

    // The Slurm profile: a dry run of a fresh output directory plans every job.
    let slurm = repo("workflow/profiles/slurm").display().to_string();
    let dry = run(workflow(
        &snakemake,
        dir,
        &bin,
        &[
            "--profile",
            &slurm,
            "--dry-run",
            "--config",
            "out_dir=results-slurm",
        ],
    ));
    let plan =
        String::from_utf8_lossy(&dry.stdout).into_owned() + &String::from_utf8_lossy(&dry.stderr);
    for (rule, count) in [("fetch", 1), ("shard", 6), ("merge", 2), ("summary", 1)] {
        assert!(
            plan.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w == [rule, &count.to_string()]
            }),
            "{rule} x{count} missing from the plan:\n{plan}"
        );
    }
    assert!(plan.contains("gpu=1"), "{plan}");
    assert!(!dir.join("results-slurm").exists());
}
