//! Typed errors of this crate, for callers that must tell one failure from another (retry a
//! download, refuse a file) without reading message text.

use std::path::PathBuf;

/// A weights file whose bytes are damaged or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A zip entry of a `.pth` archive whose bytes do not match the CRC-32 the archive stores.
    #[error(
        "`{}`: zip entry `{entry}` fails its CRC-32 check (stored {stored:08x}, computed \
         {computed:08x}): the file is corrupt (bit rot, an interrupted or bad copy); copy or \
         download it again",
        file.display()
    )]
    ChecksumMismatch {
        file: PathBuf,
        entry: String,
        stored: u32,
        computed: u32,
    },
    /// A zip entry of a `.pth` archive that could not be decompressed or read to its end.
    #[error(
        "`{}`: zip entry `{entry}` cannot be read after {read} of its {size} bytes ({source}): \
         the file is corrupt (bit rot, an interrupted or bad copy); copy or download it again",
        file.display()
    )]
    UnreadableEntry {
        file: PathBuf,
        entry: String,
        read: u64,
        size: u64,
        source: std::io::Error,
    },
}
