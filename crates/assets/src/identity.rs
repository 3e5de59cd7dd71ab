//! Content identities of models and classifiers, for the fingerprint of a resumable run.
//!
//! A run that resumes, or shards that are merged, must have used the same models: comparing
//! paths would refuse a model copied elsewhere and accept one replaced in place. So identities are
//! hashes of content: the whole of the small files (config, tokenizer, classifier) and, for
//! weight files of gigabytes, their size plus evenly spaced samples of their bytes, which tell
//! any two different checkpoints apart in milliseconds (integrity is `doctor`'s job, which
//! checks whole files against the Hugging Face cache's hashes).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use virnucpro_models::files::ModelFiles;
use xxhash_rust::xxh3::Xxh3;

/// Files up to this size are hashed whole.
const WHOLE_FILE_BYTES: u64 = 64 << 20;
/// Larger files: this many samples of [`SAMPLE_BYTES`].
const SAMPLES: u64 = 64;
const SAMPLE_BYTES: usize = 64 << 10;

/// The identity of one file: `xxh3:<hex>` of its content (sampled beyond 64 MiB, see the module
/// documentation).
pub fn file_identity(path: &Path) -> io::Result<String> {
    let mut h = Xxh3::new();
    add_file(&mut h, path)?;
    Ok(format!("xxh3:{:016x}", h.digest()))
}

/// The identity of a model: its config, tokenizer and weights.
pub fn model_identity(files: &ModelFiles) -> io::Result<String> {
    let mut h = Xxh3::new();
    add_file(&mut h, &files.config_path)?;
    add_file(&mut h, &files.tokenizer)?;
    for w in &files.weights.files {
        add_file(&mut h, w)?;
    }
    Ok(format!("xxh3:{:016x}", h.digest()))
}

fn add_file(h: &mut Xxh3, path: &Path) -> io::Result<()> {
    let annotate = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(annotate)?;
    let len = file.metadata().map_err(annotate)?.len();
    h.update(&len.to_le_bytes());
    if len <= WHOLE_FILE_BYTES {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).map_err(annotate)?;
        h.update(&buf);
        return Ok(());
    }
    let mut buf = vec![0u8; SAMPLE_BYTES];
    let last = len - SAMPLE_BYTES as u64;
    for i in 0..SAMPLES {
        // First and last sample at the very ends (headers, final tensors).
        let at = last * i / (SAMPLES - 1);
        file.seek(SeekFrom::Start(at)).map_err(annotate)?;
        file.read_exact(&mut buf).map_err(annotate)?;
        h.update(&buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_follow_content_not_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("b.bin");
        std::fs::write(&a, b"weights").unwrap();
        std::fs::write(&b, b"weights").unwrap();
        assert_eq!(file_identity(&a).unwrap(), file_identity(&b).unwrap());
        std::fs::write(&b, b"weightz").unwrap();
        assert_ne!(file_identity(&a).unwrap(), file_identity(&b).unwrap());
        let err = file_identity(&dir.path().join("none")).unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }

    #[test]
    fn large_files_are_sampled_at_both_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        let mut bytes = vec![7u8; WHOLE_FILE_BYTES as usize + 12345];
        std::fs::write(&path, &bytes).unwrap();
        let before = file_identity(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] = 8;
        std::fs::write(&path, &bytes).unwrap();
        assert_ne!(before, file_identity(&path).unwrap());
    }
}
