//! Files fetched by URL (a preset's classifier) into virnucpro's own cache, verified by hash.
//!
//! The cache is `$VIRNUCPRO_CACHE`, else `$XDG_CACHE_HOME/virnucpro`, else
//! `~/.cache/virnucpro`. A file lives at `<cache>/<algorithm>-<hex digest>/<name from the URL>`:
//! the directory comes from the expected hash, so two files with different contents never
//! collide, and the name stays readable. A download is written to a temporary name beside its
//! target, hashed, and renamed only when the hash is the expected one; a mismatch removes it and
//! says both hashes. A cached file is hashed again on every use (a classifier is a few MB).
//!
//! Offline (`VIRNUCPRO_OFFLINE=1` or `HF_HUB_OFFLINE=1`) the network is never touched; a file
//! that is not cached is an error that says which file, from where, and where to put it.

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sha1::Digest as _;
use virnucpro_atomic::AtomicFile;

use crate::error::ChecksumError;

/// The expected hash of a file: what a preset pins its classifier to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Digest {
    /// SHA-256 of the bytes (presets files).
    Sha256([u8; 32]),
    /// Git's blob hash: SHA-1 of `blob <size>\0` followed by the bytes (what `git hash-object`
    /// prints and GitHub shows; the built-in presets pin the published files this way).
    GitBlobSha1([u8; 20]),
}

impl Digest {
    /// A SHA-256 from 64 hex digits (either case).
    pub fn sha256(hex: &str) -> Result<Digest, String> {
        parse_hex::<32>(hex, "sha256").map(Digest::Sha256)
    }

    /// A git blob SHA-1 from 40 hex digits (either case).
    pub fn git_blob_sha1(hex: &str) -> Result<Digest, String> {
        parse_hex::<20>(hex, "git blob SHA-1").map(Digest::GitBlobSha1)
    }

    /// The algorithm, as the error messages say it.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "sha256",
            Digest::GitBlobSha1(_) => "git blob SHA-1",
        }
    }

    /// Lower-case hex of the digest.
    pub fn hex(&self) -> String {
        let bytes: &[u8] = match self {
            Digest::Sha256(b) => b,
            Digest::GitBlobSha1(b) => b,
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The cache directory name of a file with this digest.
    fn dir_name(&self) -> String {
        match self {
            Digest::Sha256(_) => format!("sha256-{}", self.hex()),
            Digest::GitBlobSha1(_) => format!("git-sha1-{}", self.hex()),
        }
    }

    /// The SHA-256 of the file at `path`.
    pub fn sha256_of_file(path: &Path) -> io::Result<Digest> {
        Digest::Sha256([0; 32]).of_file(path)
    }

    /// The same kind of digest, computed over the file at `path`.
    pub fn of_file(&self, path: &Path) -> io::Result<Digest> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut buf = vec![0u8; 1 << 16];
        match self {
            Digest::Sha256(_) => {
                let mut h = sha2::Sha256::new();
                feed(&mut file, &mut buf, |b| h.update(b))?;
                Ok(Digest::Sha256(h.finalize().into()))
            }
            Digest::GitBlobSha1(_) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {len}\0").as_bytes());
                let read = feed(&mut file, &mut buf, |b| h.update(b))?;
                if read != len {
                    return Err(io::Error::other(format!(
                        "{} changed while it was hashed",
                        path.display()
                    )));
                }
                Ok(Digest::GitBlobSha1(h.finalize().into()))
            }
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm(), self.hex())
    }
}

fn parse_hex<const N: usize>(hex: &str, what: &str) -> Result<[u8; N], String> {
    let hex = hex.trim();
    let bad = || format!("`{hex}` is not a {what} ({} hex digits)", 2 * N);
    if hex.len() != 2 * N || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Reads `file` to the end through `buf`, handing every piece to `sink`; the bytes read.
fn feed(file: &mut File, buf: &mut [u8], mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink(&buf[..n]);
        total += n as u64;
    }
}

/// True for the usual spellings of "on" in an environment variable.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Whether `VIRNUCPRO_OFFLINE` or `HF_HUB_OFFLINE` forbids the network.
pub fn offline_from_env() -> bool {
    env_flag("VIRNUCPRO_OFFLINE") || env_flag("HF_HUB_OFFLINE")
}

/// The download cache and whether it may use the network.
#[derive(Debug, Clone)]
pub struct Cache {
    pub dir: PathBuf,
    /// Never touch the network; a missing file is an error.
    pub offline: bool,
    /// Show a progress bar while downloading (only ever on a terminal).
    pub progress: bool,
}

impl Cache {
    /// `$VIRNUCPRO_CACHE`, else `$XDG_CACHE_HOME/virnucpro`, else `$HOME/.cache/virnucpro`;
    /// offline from `VIRNUCPRO_OFFLINE` / `HF_HUB_OFFLINE`.
    pub fn from_env(progress: bool) -> anyhow::Result<Cache> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = var("VIRNUCPRO_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("virnucpro")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("virnucpro")));
        let Some(dir) = dir else {
            bail!(
                "cannot locate virnucpro's download cache: set VIRNUCPRO_CACHE (or \
                 XDG_CACHE_HOME or HOME) to a writable directory"
            );
        };
        Ok(Cache {
            dir,
            offline: offline_from_env(),
            progress,
        })
    }

    /// A cache that is never used (local files need none): offline, no directory.
    pub(crate) fn unused() -> Cache {
        Cache {
            dir: PathBuf::new(),
            offline: true,
            progress: false,
        }
    }

    /// Where the file of `url` with `digest` lives in the cache (whether it is there or not).
    pub fn path_for(&self, url: &str, digest: &Digest) -> PathBuf {
        self.dir.join(digest.dir_name()).join(file_name_of(url))
    }

    /// The cached file, if present (not verified; [`fetch`](Self::fetch) verifies).
    pub fn cached(&self, url: &str, digest: &Digest) -> Option<PathBuf> {
        let path = self.path_for(url, digest);
        path.is_file().then_some(path)
    }

    /// The local path of `url`'s file with `digest`: the cached copy after checking its hash,
    /// else downloaded (unless offline), verified and then cached.
    pub fn fetch(&self, url: &str, digest: &Digest) -> anyhow::Result<PathBuf> {
        let path = self.path_for(url, digest);
        if path.is_file() {
            let actual = digest
                .of_file(&path)
                .with_context(|| format!("cannot read the cached file {}", path.display()))?;
            if &actual != digest {
                return Err(ChecksumError::Cached {
                    path,
                    algorithm: digest.algorithm(),
                    expected: digest.hex(),
                    actual: actual.hex(),
                }
                .into());
            }
            tracing::debug!("{url}: cached at {}", path.display());
            return Ok(path);
        }
        if self.offline {
            bail!(
                "{name} is not in virnucpro's cache and VIRNUCPRO_OFFLINE or HF_HUB_OFFLINE is \
                 set, so it is not downloaded from {url}; download it on a machine with network \
                 access (e.g. `curl -L -o {name} '{url}'`) and put it at {path} (its {algorithm} \
                 must be {hex})",
                name = file_name_of(url),
                path = path.display(),
                algorithm = digest.algorithm(),
                hex = digest.hex(),
            );
        }
        self.download(url, digest, &path)?;
        Ok(path)
    }

    fn download(&self, url: &str, digest: &Digest, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().expect("a cache path has a directory");
        let created_dir = !dir.exists();
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the cache directory {} (set VIRNUCPRO_CACHE to a writable \
                 directory)",
                dir.display()
            )
        })?;
        let result = self.download_into(url, digest, path);
        if result.is_err() && created_dir {
            // Nothing of a failed download stays in the cache; fails harmlessly if not empty.
            let _ = std::fs::remove_dir(dir);
        }
        result
    }

    fn download_into(&self, url: &str, digest: &Digest, path: &Path) -> anyhow::Result<()> {
        let advice = format!(
            "check the URL and your network (a proxy is taken from HTTPS_PROXY/HTTP_PROXY), or \
             download the file elsewhere and put it at {}",
            path.display()
        );
        tracing::info!("downloading {url}");
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(!is_loopback(url))
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .user_agent(concat!("virnucpro/", env!("CARGO_PKG_VERSION")))
            .build();
        let response = match agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => bail!(
                "cannot download {url}: the server answered {code} {}; {advice}",
                r.status_text()
            ),
            Err(ureq::Error::Transport(t)) => bail!("cannot download {url}: {t}; {advice}"),
        };
        let total: Option<u64> = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        let bar = self.progress_bar(total, &file_name_of(url));
        let mut file = AtomicFile::create(path)
            .with_context(|| format!("cannot write into the cache {}", self.dir.display()))?;
        let mut reader = response.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut received = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.finish_and_clear();
                    bail!("cannot download {url}: the transfer failed after {received} bytes: {e}; {advice}");
                }
            };
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", file.temp_path().display()))?;
            received += n as u64;
            bar.set_position(received);
        }
        bar.finish_and_clear();
        if let Some(total) = total.filter(|&t| t != received) {
            bail!("cannot download {url}: the server announced {total} bytes but sent {received}; {advice}");
        }
        file.flush()
            .with_context(|| format!("cannot write {}", file.temp_path().display()))?;
        let actual = digest
            .of_file(file.temp_path())
            .with_context(|| format!("cannot read back {}", file.temp_path().display()))?;
        if &actual != digest {
            // Dropping `file` removes the temporary file: nothing is cached.
            return Err(ChecksumError::Downloaded {
                url: url.to_string(),
                bytes: received,
                algorithm: digest.algorithm(),
                expected: digest.hex(),
                actual: actual.hex(),
            }
            .into());
        }
        file.commit()
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!("cached {url} at {}", path.display());
        Ok(())
    }

    fn progress_bar(&self, total: Option<u64>, name: &str) -> ProgressBar {
        if !self.progress || !io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let (bar, template) = match total {
            Some(n) => (
                ProgressBar::new(n),
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ),
            None => (
                ProgressBar::new_spinner(),
                "{spinner} {msg} {bytes} ({bytes_per_sec})",
            ),
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(format!("downloading {name}"));
        bar
    }
}

/// The last path segment of a URL (query and fragment removed), reduced to safe characters.
pub fn file_name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    let last = path
        .split_once('/')
        .map_or("", |(_, p)| p.rsplit('/').next().unwrap_or(""));
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_start_matches('.');
    if name.is_empty() {
        "download".into()
    } else {
        name.into()
    }
}

/// Whether `url` points at this machine (no proxy applies then).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `s` is an http(s) URL (the only schemes downloads support).
pub fn is_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached file changed after it was verified: a typed error callers can match, and the
    /// cached copy is never returned.
    #[test]
    fn a_changed_cached_file_is_a_typed_checksum_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: dir.path().to_path_buf(),
            offline: true,
            progress: false,
        };
        let url = "https://example.org/models/classifier.pth";
        // `printf 'hello\n' | sha256sum`
        let digest =
            Digest::sha256("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
                .unwrap();
        let path = cache.path_for(url, &digest);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"hello\n").unwrap();
        assert_eq!(cache.fetch(url, &digest).unwrap(), path);
        std::fs::write(&path, b"hellO\n").unwrap();
        let err = cache.fetch(url, &digest).unwrap_err();
        match err.downcast_ref::<ChecksumError>() {
            Some(ChecksumError::Cached {
                path: p,
                algorithm: "sha256",
                expected,
                ..
            }) => {
                assert_eq!(p, &path);
                assert_eq!(expected, &digest.hex());
            }
            other => panic!("not a typed cached-file checksum error: {other:?} ({err:#})"),
        }
        assert!(err.to_string().contains("delete it and run again"), "{err}");
    }

    #[test]
    fn git_blob_sha1_matches_git_hash_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello\n").unwrap();
        // `printf 'hello\n' | git hash-object --stdin`
        let want = Digest::git_blob_sha1("ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        assert_eq!(want.of_file(&path).unwrap(), want);
        // `printf 'hello\n' | sha256sum`
        let want =
            Digest::sha256("5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03")
                .unwrap();
        assert_eq!(want.of_file(&path).unwrap(), want);
        assert_eq!(
            want.hex(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!(Digest::sha256("abc").unwrap_err().contains("64 hex digits"));
        assert!(Digest::git_blob_sha1(&"g".repeat(40)).is_err());
        assert!(Digest::sha256(&"é".repeat(32)).is_err());
    }

    #[test]
    fn names_and_hosts_from_urls() {
        assert_eq!(
            file_name_of("https://github.com/a/b/raw/0f93/500_model.pth?x=1#y"),
            "500_model.pth"
        );
        assert_eq!(file_name_of("http://h/"), "download");
        assert_eq!(file_name_of("http://h"), "download");
        assert_eq!(file_name_of("http://h/..%2f"), "_2f");
        assert!(is_loopback("http://127.0.0.1:8080/x"));
        assert!(is_loopback("http://localhost/x"));
        assert!(is_loopback("http://[::1]:9/x"));
        assert!(!is_loopback("https://github.com/x"));
        assert!(is_url("HTTPS://x/y") && !is_url("/tmp/x.pth") && !is_url("ftp://x"));
    }
}
