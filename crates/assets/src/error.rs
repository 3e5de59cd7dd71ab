//! Errors of this crate that callers act on, typed so that nobody has to read their text.

use std::path::PathBuf;

/// A file whose content is not the one its hash names: callers delete it and fetch it again, or
/// stop. The message says which file, both hashes, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// A file in virnucpro's download cache changed after it was verified and cached.
    #[error(
        "the cached file {} does not have the expected {algorithm} (expected {expected}, actual \
         {actual}): it was changed after it was downloaded; delete it and run again to download \
         it anew",
        path.display()
    )]
    Cached {
        path: PathBuf,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// A download whose bytes are not the expected ones (nothing was cached).
    #[error(
        "the file downloaded from {url} ({bytes} bytes) does not have the expected {algorithm}: \
         expected {expected}, actual {actual}; it was not cached. The file at the URL changed or \
         the download was altered on the way: check the URL, or fix the expected hash if you \
         published a new version"
    )]
    Downloaded {
        url: String,
        bytes: u64,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// A file of the Hugging Face cache whose content does not match the hash its blob is named
    /// by.
    #[error(
        "{} of `{source_id}` does not match the content hash the Hugging Face cache names it by: \
         expected {algorithm} {expected}, got {actual}. The cached file is corrupt (bit rot, an \
         interrupted or bad copy): delete {} and download it again (`huggingface-cli download \
         {source_id} --force-download`)",
        path.display(),
        blob.display()
    )]
    HubBlob {
        path: PathBuf,
        blob: PathBuf,
        source_id: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
}
