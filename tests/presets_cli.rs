//! Presets and downloads against a local HTTP server on 127.0.0.1 (no other network): download,
//! verify and cache; offline with and without the file; a tampered file; a server that is down;
//! `predict --preset` end to end on the oracle's tiny models; `presets`; `doctor --preset`;
//! the conflicts between a preset and the flags.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use assert_cmd::Command;
use predicates::prelude::*;
use virnucpro_assets::download::{Cache, Digest};

use crate::util::{isolated as vnp, BIN, O};

/// A tiny HTTP/1.1 server: GET of a known path answers its bytes, anything else 404. Counts the
/// requests it receives. The thread lives until the test process ends.
struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn start(files: &[(&str, Vec<u8>)]) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: HashMap<String, Vec<u8>> = files
            .iter()
            .map(|(p, b)| (p.to_string(), b.clone()))
            .collect();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = answer(stream, &files);
            }
        });
        Server { base, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, files: &HashMap<String, Vec<u8>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    let path = path.split('?').next().unwrap_or(path).to_string();
    let mut out = stream;
    match files.get(&path) {
        Some(body) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(body)?;
        }
        None => {
            out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            )?;
        }
    }
    out.flush()
}

/// A URL on which nobody listens (a port just released).
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/model.pth")
}

fn cache(dir: &Path, offline: bool) -> Cache {
    Cache {
        dir: dir.to_path_buf(),
        offline,
        progress: false,
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn sha256_of(bytes: &[u8]) -> Digest {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), bytes).unwrap();
    Digest::sha256_of_file(tmp.path()).unwrap()
}

fn classifier_bytes() -> Vec<u8> {
    fs::read(Path::new(O).join("classifier/model_full.pth")).unwrap()
}

#[test]
fn download_is_verified_cached_and_not_repeated() {
    let bytes = b"a classifier, byte for byte".to_vec();
    let server = Server::start(&[("files/clf.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("files/clf.pth?download=1");
    let digest = sha256_of(&bytes);
    let c = cache(tmp.path(), false);

    let path = c.fetch(&url, &digest).unwrap();
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(server.requests(), 1);
    // The cache path comes from the hash, with a readable name.
    assert_eq!(
        path,
        tmp.path()
            .join(format!("sha256-{}", digest.hex()))
            .join("clf.pth")
    );
    // Only the file: no temporary left beside it.
    assert_eq!(files_under(tmp.path()), std::slice::from_ref(&path));

    // Cached: no request.
    assert_eq!(c.fetch(&url, &digest).unwrap(), path);
    assert_eq!(server.requests(), 1);

    // The same URL pinned to another hash is another file (and this download fails).
    let other = sha256_of(b"another version");
    let err = format!("{:#}", c.fetch(&url, &other).unwrap_err());
    assert!(err.contains(&other.hex()), "{err}");
    assert_eq!(files_under(tmp.path()), [path]);
}

#[test]
fn git_blob_hashes_verify_downloads_as_the_builtin_presets_do() {
    let bytes = classifier_bytes();
    let server = Server::start(&[("raw/abc/300_model.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("fixture");
    fs::write(&fixture, &bytes).unwrap();
    let digest = Digest::GitBlobSha1([0; 20]).of_file(&fixture).unwrap();
    let dir = tmp.path().join("cache");
    let path = cache(&dir, false)
        .fetch(&server.url("raw/abc/300_model.pth"), &digest)
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert!(path.starts_with(dir.join(format!("git-sha1-{}", digest.hex()))));
}

#[test]
fn offline_uses_the_cache_and_never_the_network() {
    let bytes = b"offline test".to_vec();
    let server = Server::start(&[("a.pth", bytes.clone()), ("b.pth", b"b".to_vec())]);
    let tmp = tempfile::tempdir().unwrap();
    let digest = sha256_of(&bytes);
    let path = cache(tmp.path(), false)
        .fetch(&server.url("a.pth"), &digest)
        .unwrap();
    assert_eq!(server.requests(), 1);

    let offline = cache(tmp.path(), true);
    assert_eq!(offline.fetch(&server.url("a.pth"), &digest).unwrap(), path);
    let b = sha256_of(b"b");
    let err = format!("{:#}", offline.fetch(&server.url("b.pth"), &b).unwrap_err());
    assert_eq!(server.requests(), 1, "offline must not touch the network");
    let want_path = tmp.path().join(format!("sha256-{}", b.hex())).join("b.pth");
    for part in [
        "b.pth is not in virnucpro's cache",
        "VIRNUCPRO_OFFLINE or HF_HUB_OFFLINE",
        &server.url("b.pth"),
        &want_path.display().to_string(),
        &b.hex(),
    ] {
        assert!(err.contains(part), "`{part}` missing: {err}");
    }
    assert!(!want_path.exists());
}

#[test]
fn tampered_download_is_refused_and_leaves_nothing() {
    let published = b"the published classifier".to_vec();
    let server = Server::start(&[("m.pth", b"the published classifieR".to_vec())]);
    let tmp = tempfile::tempdir().unwrap();
    let expected = sha256_of(&published);
    let actual = sha256_of(b"the published classifieR");
    let err = format!(
        "{:#}",
        cache(tmp.path(), false)
            .fetch(&server.url("m.pth"), &expected)
            .unwrap_err()
    );
    assert!(
        err.contains(&format!("expected {}", expected.hex()))
            && err.contains(&format!("actual {}", actual.hex()))
            && err.contains(&server.url("m.pth"))
            && err.contains("not cached"),
        "{err}"
    );
    assert_eq!(files_under(tmp.path()), Vec::<PathBuf>::new());
    assert!(!tmp
        .path()
        .join(format!("sha256-{}", expected.hex()))
        .exists());
}

#[test]
fn a_cached_file_changed_later_is_an_error() {
    let bytes = b"original".to_vec();
    let server = Server::start(&[("m.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let digest = sha256_of(&bytes);
    let c = cache(tmp.path(), false);
    let path = c.fetch(&server.url("m.pth"), &digest).unwrap();
    fs::write(&path, b"changed!").unwrap();
    let err = format!("{:#}", c.fetch(&server.url("m.pth"), &digest).unwrap_err());
    assert!(
        err.contains("changed after it was downloaded") && err.contains(&digest.hex()),
        "{err}"
    );
}

#[test]
fn server_down_or_missing_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let digest = sha256_of(b"x");
    let url = dead_url();
    let err = format!(
        "{:#}",
        cache(tmp.path(), false).fetch(&url, &digest).unwrap_err()
    );
    assert!(
        err.contains(&format!("cannot download {url}")) && err.contains("put it at"),
        "{err}"
    );
    assert_eq!(files_under(tmp.path()), Vec::<PathBuf>::new());

    let server = Server::start(&[]);
    let err = format!(
        "{:#}",
        cache(tmp.path(), false)
            .fetch(&server.url("gone.pth"), &digest)
            .unwrap_err()
    );
    assert!(err.contains("answered 404"), "{err}");
    assert_eq!(files_under(tmp.path()), Vec::<PathBuf>::new());
}

// ---- the command line ----

fn abs(p: &str) -> String {
    fs::canonicalize(p).unwrap().display().to_string()
}

/// A presets file in `dir` with the preset `oracle`: the oracle's tiny models and its
/// classifier served at `url`.
fn write_presets(dir: &Path, classifier: &str, sha256: Option<&Digest>) -> PathBuf {
    let path = dir.join("lab-presets.toml");
    let mut text = format!(
        "# the oracle's tiny models\n[oracle]\ndnabert = \"{}\"\nesm = \"{}\"\nclassifier = \"{classifier}\"\nchunk_len = 60\ndescription = \"test models\"\n",
        abs(&format!("{O}/dnabert")),
        abs(&format!("{O}/fastesm")),
    );
    if let Some(d) = sha256 {
        text.push_str(&format!("sha256 = \"{}\"\n", d.hex()));
    }
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn predict_with_a_served_preset_equals_predict_with_the_classifier() {
    let bytes = classifier_bytes();
    let server = Server::start(&[("lab/oracle_60.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let presets = write_presets(
        tmp.path(),
        &server.url("lab/oracle_60.pth"),
        Some(&sha256_of(&bytes)),
    );
    let input = Path::new(O).join("inputs/genomes.fa");
    let by_preset = |out: &Path| {
        let mut cmd = vnp(tmp.path());
        cmd.arg("predict")
            .arg(&input)
            .arg("--presets")
            .arg(&presets)
            .args(["--preset", "oracle", "--device", "cpu", "--out-dir"])
            .arg(out);
        cmd
    };
    by_preset(&tmp.path().join("preset"))
        .assert()
        .success()
        .stderr(predicate::str::contains("preset oracle"));
    assert_eq!(server.requests(), 1);

    Command::new(BIN)
        .arg("predict")
        .arg(&input)
        .args(["--chunk-len", "60", "--dnabert", &format!("{O}/dnabert")])
        .args(["--esm", &format!("{O}/fastesm"), "--device", "cpu"])
        .args(["--classifier", &format!("{O}/classifier/model_full.pth")])
        .arg("--out-dir")
        .arg(tmp.path().join("direct"))
        .assert()
        .success();
    for file in [
        "prediction_results.txt",
        "prediction_results_highestscore.csv",
        "prediction_summary.tsv",
    ] {
        let read = |d: &str| fs::read_to_string(tmp.path().join(d).join(file)).unwrap();
        assert_eq!(read("preset"), read("direct"), "{file}");
    }

    // Cached: neither a second run nor an offline one asks the server; the same value of
    // --chunk-len as the preset's is fine.
    by_preset(&tmp.path().join("again"))
        .args(["--chunk-len", "60"])
        .assert()
        .success();
    by_preset(&tmp.path().join("offline"))
        .env("HF_HUB_OFFLINE", "1")
        .assert()
        .success();
    assert_eq!(server.requests(), 1);
    assert_eq!(
        fs::read_to_string(tmp.path().join("offline/prediction_summary.tsv")).unwrap(),
        fs::read_to_string(tmp.path().join("direct/prediction_summary.tsv")).unwrap()
    );
}

#[test]
fn offline_preset_without_the_file_says_how_to_get_it() {
    let bytes = classifier_bytes();
    let server = Server::start(&[("oracle.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let presets = write_presets(
        tmp.path(),
        &server.url("oracle.pth"),
        Some(&sha256_of(&bytes)),
    );
    vnp(tmp.path())
        .arg("predict")
        .arg(Path::new(O).join("inputs/genomes.fa"))
        .arg("--presets")
        .arg(&presets)
        .args(["--preset", "oracle", "--device", "cpu", "--out-dir"])
        .arg(tmp.path().join("out"))
        .env("VIRNUCPRO_OFFLINE", "1")
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "the classifier of preset `oracle`",
        ))
        .stderr(predicate::str::contains(server.url("oracle.pth")))
        .stderr(predicate::str::contains(
            tmp.path().join("cache").display().to_string(),
        ))
        .stderr(predicate::str::contains("virnucpro presets --fetch oracle"))
        .stderr(predicate::str::contains("--classifier FILE"));
    assert_eq!(server.requests(), 0);
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn tampered_or_unreachable_preset_classifier_fails_predict() {
    let bytes = classifier_bytes();
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let server = Server::start(&[("oracle.pth", tampered)]);
    let tmp = tempfile::tempdir().unwrap();
    let input = Path::new(O).join("inputs/genomes.fa");
    let run = |url: &str| {
        let presets = write_presets(tmp.path(), url, Some(&sha256_of(&bytes)));
        vnp(tmp.path())
            .arg("predict")
            .arg(&input)
            .arg("--presets")
            .arg(&presets)
            .args(["--preset", "oracle", "--device", "cpu", "--out-dir"])
            .arg(tmp.path().join("out"))
            .assert()
            .failure()
    };
    run(&server.url("oracle.pth"))
        .stderr(predicate::str::contains(
            "does not have the expected sha256",
        ))
        .stderr(predicate::str::contains(sha256_of(&bytes).hex()));
    assert_eq!(
        files_under(&tmp.path().join("cache")),
        Vec::<PathBuf>::new()
    );
    let dead = dead_url();
    run(&dead).stderr(predicate::str::contains(format!("cannot download {dead}")));
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn presets_command_lists_builtin_and_file_presets_and_fetches() {
    let bytes = classifier_bytes();
    let server = Server::start(&[("oracle.pth", bytes.clone())]);
    let tmp = tempfile::tempdir().unwrap();
    let digest = sha256_of(&bytes);
    let presets = write_presets(tmp.path(), &server.url("oracle.pth"), Some(&digest));
    let cached = tmp
        .path()
        .join("cache")
        .join(format!("sha256-{}", digest.hex()))
        .join("oracle.pth");
    let row = |out: &str, name: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row {name} in\n{out}"))
            .to_string()
    };

    let out = vnp(tmp.path())
        .arg("presets")
        .arg("--presets")
        .arg(&presets)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    for name in ["virnucpro-300", "virnucpro-500"] {
        let r = row(&out, name);
        assert!(
            r.contains("facebook/esm2_t36_3B_UR50D") && r.contains(" no "),
            "{r}"
        );
    }
    let r = row(&out, "oracle");
    assert!(
        r.contains(" 60 ") && r.contains(" no ") && r.contains(&server.url("oracle.pth")),
        "{r}"
    );
    assert!(out.contains(&presets.display().to_string()), "{out}");

    let out = vnp(tmp.path())
        .arg("presets")
        .arg("--presets")
        .arg(&presets)
        .args(["--fetch", "oracle"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = row(&String::from_utf8(out.stdout).unwrap(), "oracle");
    assert!(
        r.contains(" yes ") && r.contains(&cached.display().to_string()),
        "{r}"
    );
    assert_eq!(fs::read(&cached).unwrap(), bytes);
    assert_eq!(server.requests(), 1);

    // The default presets file is $XDG_CONFIG_HOME/virnucpro/presets.toml.
    let default = tmp.path().join("config/virnucpro/presets.toml");
    fs::create_dir_all(default.parent().unwrap()).unwrap();
    fs::copy(&presets, &default).unwrap();
    vnp(tmp.path())
        .arg("presets")
        .assert()
        .success()
        .stdout(predicate::str::contains("oracle "))
        .stdout(predicate::str::contains(default.display().to_string()));
}

#[test]
fn doctor_resolves_a_preset_with_a_relative_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        Path::new(O).join("classifier/model_full.pth"),
        tmp.path().join("oracle.pth"),
    )
    .unwrap();
    // Relative to the presets file, verified by its sha256.
    let presets = write_presets(
        tmp.path(),
        "oracle.pth",
        Some(&sha256_of(&classifier_bytes())),
    );
    vnp(tmp.path())
        .args([
            "doctor",
            "--device",
            "cpu",
            "--preset",
            "oracle",
            "--presets",
        ])
        .arg(&presets)
        .assert()
        .success()
        .stdout(predicate::str::contains("256 inputs = 128 + 128"))
        .stdout(predicate::str::contains("oracle.pth"));

    // A wrong hash for a local file is refused too.
    let presets = write_presets(tmp.path(), "oracle.pth", Some(&sha256_of(b"other")));
    vnp(tmp.path())
        .args([
            "doctor",
            "--device",
            "cpu",
            "--preset",
            "oracle",
            "--presets",
        ])
        .arg(&presets)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "does not have the expected sha256",
        ));
}

#[test]
fn flags_that_contradict_a_preset_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let presets = write_presets(tmp.path(), &dead_url(), Some(&sha256_of(b"x")));
    let predict = |args: &[&str]| {
        let mut cmd = vnp(tmp.path());
        cmd.current_dir(tmp.path())
            .args(["predict", "in.fa", "--out-dir", "out", "--presets"])
            .arg(&presets)
            .args(args);
        cmd.assert().failure()
    };
    predict(&["--preset", "virnucpro-500", "--chunk-len", "300"]).stderr(
        predicate::str::contains("--chunk-len 300 contradicts --preset virnucpro-500")
            .and(predicate::str::contains("--preset virnucpro-300")),
    );
    predict(&["--preset", "oracle", "--chunk-len", "500"]).stderr(predicate::str::contains(
        "--chunk-len 500 contradicts --preset oracle, whose classifier was trained on 60-bp",
    ));
    predict(&[
        "--preset",
        "virnucpro-300",
        "--esm",
        "Synthyra/FastESM2_650",
    ])
    .stderr(predicate::str::contains(
        "--esm Synthyra/FastESM2_650 contradicts --preset virnucpro-300",
    ));
    predict(&["--preset", "oracle", "--dnabert", "zhihan1996/DNABERT-S"]).stderr(
        predicate::str::contains("--dnabert zhihan1996/DNABERT-S contradicts --preset oracle"),
    );
    predict(&["--preset", "virnucpro-500", "--classifier", "mine.pth"]).stderr(
        predicate::str::contains("--classifier mine.pth and --preset virnucpro-500"),
    );
    predict(&["--preset", "virnucpro-1000"]).stderr(
        predicate::str::contains("no preset `virnucpro-1000`").and(predicate::str::contains(
            "virnucpro-300, virnucpro-500, oracle",
        )),
    );
    predict(&[]).stderr(
        predicate::str::contains("no classifier given")
            .and(predicate::str::contains("virnucpro-500"))
            .and(predicate::str::contains("oracle (60-bp chunks"))
            .and(predicate::str::contains("train")),
    );
    predict(&["--classifier", "mine.pth"])
        .stderr(predicate::str::contains("--chunk-len N is required"));
    // Nothing was downloaded or written.
    assert_eq!(files_under(tmp.path()).len(), 1, "only the presets file");

    // doctor applies the same rules.
    vnp(tmp.path())
        .args([
            "doctor",
            "--device",
            "cpu",
            "--preset",
            "virnucpro-500",
            "--chunk-len",
            "300",
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--chunk-len 300 contradicts"));
}

#[test]
fn broken_presets_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let presets = tmp.path().join("p.toml");
    let run = |text: &str| {
        fs::write(&presets, text).unwrap();
        vnp(tmp.path())
            .arg("presets")
            .arg("--presets")
            .arg(&presets)
            .assert()
            .failure()
            .stderr(predicate::str::contains(presets.display().to_string()))
    };
    let base =
        "[x]\ndnabert = \"d\"\nesm = \"e\"\nclassifier = \"https://h/c.pth\"\nchunk_len = 500\n";
    run(base).stderr(predicate::str::contains("`sha256` is required"));
    run(&format!(
        "{base}sha256 = \"{}\"\ncolour = \"red\"\n",
        "0".repeat(64)
    ))
    .stderr(predicate::str::contains("unknown field `colour`"));
    run(&base.replace("500", "0")).stderr(predicate::str::contains("chunk_len = 0"));
    vnp(tmp.path())
        .args(["presets", "--presets", "/nonexistent/presets.toml"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "cannot read the presets file /nonexistent/presets.toml",
        ));
}

#[test]
fn predict_help_lists_the_builtin_presets() {
    Command::new(BIN)
        .args(["predict", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--preset <NAME>"))
        .stdout(predicate::str::contains(
            "virnucpro-300  300-bp chunks: zhihan1996/DNABERT-S + facebook/esm2_t36_3B_UR50D",
        ))
        .stdout(predicate::str::contains("virnucpro-500  500-bp chunks"));
}
