//! The ESM alphabet tokenizer (`vocab.txt`): one token per residue, `<cls> residues <eos>`.
//!
//! (The DNABERT BPE tokenizer lives with its model in `dnabert.rs`.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context};

use super::SeqTokenizer;

/// Residues kept per protein (docs/PIPELINE.md §4); the rest is dropped.
pub const ESM_MAX_RESIDUES: usize = 1024;

/// The 33-token alphabet of every ESM2 checkpoint, in id order.
pub const ESM2_VOCAB: [&str; 33] = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
    "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>",
    "<mask>",
];

/// ESM tokenizer. Residues are looked up byte by byte, case-sensitively as the reference
/// tokenizer does: anything that is not a one-character token (lower case included) becomes
/// `<unk>`.
#[derive(Debug)]
pub struct EsmTokenizer {
    /// Byte -> token id for the one-character tokens.
    by_byte: [Option<u32>; 256],
    cls: u32,
    eos: u32,
    pad: u32,
    unk: u32,
    vocab_size: usize,
    max_residues: usize,
    warned_truncation: AtomicBool,
}

impl EsmTokenizer {
    /// Reads `vocab.txt` (one token per line, id = line number).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read ESM vocabulary {}", path.display()))?;
        let tokens: Vec<&str> = text.lines().map(str::trim_end).collect();
        Self::from_tokens(&tokens).with_context(|| format!("bad ESM vocabulary {}", path.display()))
    }

    /// The standard ESM2 alphabet, for models built without files (`--random-weights`).
    pub fn esm2() -> Self {
        Self::from_tokens(&ESM2_VOCAB).expect("the built-in ESM2 alphabet is valid")
    }

    fn from_tokens(tokens: &[&str]) -> anyhow::Result<Self> {
        let find = |name: &str| -> anyhow::Result<u32> {
            match tokens.iter().position(|t| *t == name) {
                Some(i) => Ok(i as u32),
                None => bail!("special token {name} is missing"),
            }
        };
        let mut by_byte = [None; 256];
        for (id, tok) in tokens.iter().enumerate() {
            if let [b] = tok.as_bytes() {
                by_byte[*b as usize] = Some(id as u32);
            }
        }
        Ok(Self {
            by_byte,
            cls: find("<cls>")?,
            eos: find("<eos>")?,
            pad: find("<pad>")?,
            unk: find("<unk>")?,
            vocab_size: tokens.len(),
            max_residues: ESM_MAX_RESIDUES,
            warned_truncation: AtomicBool::new(false),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

impl SeqTokenizer for EsmTokenizer {
    fn encode(&self, id: &str, seq: &[u8]) -> anyhow::Result<Vec<u32>> {
        if seq.is_empty() {
            bail!("record `{id}` has an empty sequence; ESM needs at least one residue");
        }
        let kept = if seq.len() > self.max_residues {
            // Once per run at warn level; the rest at debug so long inputs do not flood the log.
            if !self.warned_truncation.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "protein `{id}` has {} residues; ESM embeddings use the first {} \
                     (further truncations are logged at debug level)",
                    seq.len(),
                    self.max_residues
                );
            } else {
                tracing::debug!(
                    "protein `{id}` truncated from {} to {} residues",
                    seq.len(),
                    self.max_residues
                );
            }
            &seq[..self.max_residues]
        } else {
            seq
        };
        let mut ids = Vec::with_capacity(kept.len() + 2);
        ids.push(self.cls);
        ids.extend(
            kept.iter()
                .map(|&b| self.by_byte[b as usize].unwrap_or(self.unk)),
        );
        ids.push(self.eos);
        Ok(ids)
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_specials_and_unknowns() {
        let t = EsmTokenizer::esm2();
        assert_eq!(t.encode("a", b"LAJ").unwrap(), vec![0, 4, 5, 3, 2]);
        assert_eq!(t.encode("a", b"l").unwrap(), vec![0, 3, 2]);
        assert_eq!(t.pad_id(), 1);
        assert!(t
            .encode("empty", b"")
            .unwrap_err()
            .to_string()
            .contains("`empty`"));
    }

    #[test]
    fn truncates_to_1024_residues() {
        let t = EsmTokenizer::esm2();
        let ids = t.encode("long", &[b'A'; 1030]).unwrap();
        assert_eq!(ids.len(), 1026);
        assert_eq!(ids[1025], 2);
    }
}
