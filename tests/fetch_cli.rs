//! `virnucpro fetch` on the demo's tiny models: local directories; Hub IDs found in a Hugging
//! Face cache laid out as huggingface_hub does, offline; a Hub ID missing offline; models that do
//! not fit the classifier; a preset whose classifier is a URL (served on 127.0.0.1), downloaded
//! once and then found offline by `fetch` and `predict`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use predicates::prelude::*;
use virnucpro_assets::download::Digest;

use crate::util::{entries, isolated as vnp};

const DEMO: &str = "demo";

fn demo(p: &str) -> String {
    fs::canonicalize(Path::new(DEMO).join(p))
        .unwrap()
        .display()
        .to_string()
}

/// Every file of the demo's `from` under the Hub ID `repo` in `hf_home`'s cache.
fn fake_hub(hf_home: &Path, repo: &str, from: &str) -> PathBuf {
    let dir = PathBuf::from(demo(from));
    let names = entries(&dir);
    let files: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::util::fake_hub(&hf_home.join("hub"), repo, &dir, &files)
}

#[test]
fn local_models_and_classifier_are_checked_and_printed() {
    let tmp = tempfile::tempdir().unwrap();
    vnp(tmp.path())
        .args(["fetch", "--chunk-len", "60"])
        .args([
            "--dnabert",
            "demo/models/dnabert",
            "--esm",
            "demo/models/fastesm",
        ])
        .args(["--classifier", "demo/classifier.safetensors"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "dnabert     demo/models/dnabert (DNABERT, hidden 128)\n",
        ))
        .stdout(predicate::str::contains(
            "esm         demo/models/fastesm (ESM2, hidden 128)\n",
        ))
        .stdout(predicate::str::contains(
            "classifier  demo/classifier.safetensors (256 inputs = 128 + 128)\n",
        ))
        .stdout(predicate::str::contains("chunk_len   60\n"))
        .stderr(predicate::str::contains("everything is in place"));
}

#[test]
fn hub_ids_come_from_the_cache_offline_and_missing_ones_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let dnabert = fake_hub(&hf, "Lab/tiny-dnabert", "models/dnabert");
    fake_hub(&hf, "Lab/tiny-fastesm", "models/fastesm");
    vnp(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["fetch", "--chunk-len", "60", "--classifier"])
        .arg(demo("classifier.safetensors"))
        .args(["--dnabert", "Lab/tiny-dnabert", "--esm", "Lab/tiny-fastesm"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "dnabert     Lab/tiny-dnabert (DNABERT, hidden 128; Hugging Face cache: {})\n",
            dnabert.display()
        )));

    // Offline and not in the cache: non-zero, naming the model, the cache and what to do.
    vnp(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "fetch",
            "--dnabert",
            "Lab/tiny-dnabert",
            "--esm",
            "Lab/absent",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(
            "model `Lab/absent` is not in the Hugging Face cache",
        ))
        .stderr(predicate::str::contains("HF_HUB_OFFLINE is set"))
        .stderr(predicate::str::contains(
            "huggingface-cli download Lab/absent",
        ));

    // A directory that does not exist.
    vnp(tmp.path())
        .args([
            "fetch",
            "--dnabert",
            "Lab/tiny-dnabert",
            "--esm",
            "./no/such/dir",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("`./no/such/dir` does not exist"));
}

#[test]
fn models_that_do_not_fit_the_classifier_fail_before_any_weights_load() {
    let tmp = tempfile::tempdir().unwrap();
    // The demo protein model with another hidden size in its config (and no weights at all:
    // fetch reads configs only).
    let esm = tmp.path().join("esm64");
    fs::create_dir(&esm).unwrap();
    let config = fs::read_to_string(demo("models/fastesm/config.json")).unwrap();
    assert!(config.contains("\"hidden_size\": 128"));
    fs::write(
        esm.join("config.json"),
        config.replace("\"hidden_size\": 128", "\"hidden_size\": 64"),
    )
    .unwrap();
    fs::copy(demo("models/fastesm/vocab.txt"), esm.join("vocab.txt")).unwrap();
    fs::write(esm.join("model.safetensors"), b"not read").unwrap();
    vnp(tmp.path())
        .args([
            "fetch",
            "--chunk-len",
            "60",
            "--dnabert",
            "demo/models/dnabert",
        ])
        .arg("--esm")
        .arg(&esm)
        .args(["--classifier", "demo/classifier.safetensors"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("expects 256 input features"))
        .stderr(predicate::str::contains("128 + 64 = 192"));

    // A model of the other family.
    vnp(tmp.path())
        .args(["fetch", "--dnabert", "demo/models/fastesm"])
        .args(["--esm", "demo/models/fastesm"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("needs a DNABERT model"));
}

/// Serves `body` at any path to the connections it accepts, counting them, until the test
/// process ends.
fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (base, count)
}

#[test]
fn a_preset_url_classifier_is_downloaded_once_then_found_offline() {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = fs::read(demo("classifier.safetensors")).unwrap();
    let sha = Digest::sha256_of_file(Path::new(&demo("classifier.safetensors"))).unwrap();
    let (base, requests) = serve(bytes);
    let presets = tmp.path().join("presets.toml");
    fs::write(
        &presets,
        format!(
            "[demo]\ndnabert = \"{}\"\nesm = \"{}\"\nclassifier = \"{base}/demo_60.safetensors\"\nsha256 = \"{}\"\nchunk_len = 60\n",
            demo("models/dnabert"),
            demo("models/fastesm"),
            sha.hex()
        ),
    )
    .unwrap();
    let fetch = |offline: bool| {
        let mut cmd = vnp(tmp.path());
        if offline {
            cmd.env("VIRNUCPRO_OFFLINE", "1");
        }
        cmd.args(["fetch", "--preset", "demo", "--presets"])
            .arg(&presets);
        cmd
    };
    // Offline before the download: non-zero, saying how to get it.
    fetch(true)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("preset `demo`"));
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    let cached = tmp.path().join("cache");
    fetch(false)
        .assert()
        .success()
        .stdout(predicate::str::contains("preset      demo\n"))
        .stdout(predicate::str::contains(format!(
            "classifier  {}",
            cached.display()
        )))
        .stdout(predicate::str::contains("chunk_len   60\n"));
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // Now everything is local: fetch and predict offline never ask the server again.
    fetch(true).assert().success();
    vnp(tmp.path())
        .env("VIRNUCPRO_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .args(["predict", &demo("genomes.fa"), "--device", "cpu"])
        .args(["--preset", "demo", "--presets"])
        .arg(&presets)
        .arg("--out-dir")
        .arg(tmp.path().join("out"))
        .assert()
        .success();
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}
