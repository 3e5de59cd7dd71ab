//! Helpers shared by the modules of the integration-test binary (`tests/integration.rs`).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

/// The `virnucpro` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_virnucpro");
/// The oracle's files, relative to the package root (the tests' working directory).
pub const O: &str = "tests/data/oracle";

/// An oracle file by absolute path.
pub fn oracle(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(O).join(rel)
}

/// The binary, with the environment of the test process.
pub fn vnp() -> assert_cmd::Command {
    assert_cmd::Command::new(BIN)
}

/// The binary with private Hugging Face, download and config caches under `home`, and no
/// offline or proxy settings from the environment.
pub fn isolated(home: &Path) -> assert_cmd::Command {
    let mut cmd = vnp();
    cmd.env("HF_HOME", home.join("hf"))
        .env("VIRNUCPRO_CACHE", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("xdg-cache"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("VIRNUCPRO_OFFLINE");
    for proxy in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    cmd
}

/// The names in `dir`, sorted; none when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Writes `dir/name` and returns its path.
pub fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path
}

/// Lays out `models--org--name` in the Hugging Face hub cache `cache` the way huggingface_hub
/// does: blobs, snapshot symlinks, refs/main; `files` are copied from `from`. Returns the
/// snapshot directory.
pub fn fake_hub(cache: &Path, repo: &str, from: &Path, files: &[&str]) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo_dir.join("snapshots").join(rev);
    fs::create_dir_all(&snap).unwrap();
    fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    fs::create_dir_all(repo_dir.join("refs")).unwrap();
    fs::write(repo_dir.join("refs/main"), rev).unwrap();
    for (i, f) in files.iter().enumerate() {
        let blob = repo_dir.join("blobs").join(format!("blob{i:04}"));
        fs::copy(from.join(f), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(f)).unwrap();
    }
    snap
}

/// A number from the environment (benchmark sizes), else `default`.
pub fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The standard genetic code, codons in TCAG order.
pub const CODE: &[u8; 64] = b"FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG";

/// The oracle's protein inputs as (ID, residues).
pub fn proteins() -> Vec<(String, Vec<u8>)> {
    let text = fs::read_to_string(oracle("inputs/proteins.fa")).unwrap();
    let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix('>') {
            recs.push((h.split_whitespace().next().unwrap().to_string(), Vec::new()));
        } else {
            recs.last_mut().unwrap().1.extend(line.trim().bytes());
        }
    }
    recs
}

/// Largest `|a - b|` of two f32 tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Sends `signal` (a name: INT, KILL, TERM) to process `pid` with the `kill` utility (no libc
/// dependency).
#[cfg(unix)]
pub fn send_signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Every file of an output directory with its bytes, by name (hidden ones included).
pub fn output_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The safetensors `__metadata__` exactly as stored.
pub fn raw_metadata(path: &Path) -> HashMap<String, String> {
    let bytes = fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().clone().unwrap()
}
