//! Six-frame translation and frame selection (docs/PIPELINE.md §3).
//!
//! Everything works on byte slices through 256-entry lookup tables, so upper and lower case need
//! no separate pass: a base's 2-bit code comes from [`BASE_CODE`], a codon's amino acid from
//! [`STANDARD_CODE`]. Reverse frames are read straight off the forward chunk (complementing the
//! codes), so the reverse complement is only built for the DNA of frames that are kept. A frame is
//! abandoned at its first stop codon, which is where random or non-coding sequence ends up fast.

use std::fmt;

use super::Frame;

/// Code of an invalid base (anything but A/C/G/T in either case). Large enough that a codon
/// index `16*c1 + 4*c2 + c3` containing it is >= 64 whatever its position.
const INVALID: u8 = 0x40;

/// 2-bit code of each byte: A=0, C=1, G=2, T=3 (either case), everything else [`INVALID`].
static BASE_CODE: [u8; 256] = base_code_table(false);
/// Code of the complementary base: A->T=3, C->G=2, G->C=1, T->A=0, everything else [`INVALID`].
static COMPLEMENT_CODE: [u8; 256] = base_code_table(true);
/// Complement of each byte, case kept (`a` -> `t`); any other byte maps to itself.
static COMPLEMENT: [u8; 256] = complement_table(false);
/// Complement of the upper-cased byte (`a` -> `T`, `n` -> `N`): the reference upper-cases each
/// chunk before taking its reverse complement.
static COMPLEMENT_UPPER: [u8; 256] = complement_table(true);

/// The standard genetic code indexed by `16*b1 + 4*b2 + b3` with A=0, C=1, G=2, T=3; `*` = stop.
pub const STANDARD_CODE: &[u8; 64] =
    b"KNKNTTTTRSRSIIMIQHQHPPPPRRRRLLLLEDEDAAAAGGGGVVVV*Y*YSSSS*CWCLFLF";

const fn base_code_table(complement: bool) -> [u8; 256] {
    let mut table = [INVALID; 256];
    let bases = *b"ACGT";
    let mut i = 0;
    while i < 4 {
        let code = if complement { 3 - i as u8 } else { i as u8 };
        table[bases[i] as usize] = code;
        table[bases[i].to_ascii_lowercase() as usize] = code;
        i += 1;
    }
    table
}

const fn complement_table(upper: bool) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let b = if upper { b.to_ascii_uppercase() } else { b };
        table[i] = match b {
            b'A' => b'T',
            b'C' => b'G',
            b'G' => b'C',
            b'T' => b'A',
            b'a' => b't',
            b'c' => b'g',
            b'g' => b'c',
            b't' => b'a',
            other => other,
        };
        i += 1;
    }
    table
}

/// Stop codons TAA (48), TAG (50), TGA (56) as bits of their codon index.
const STOP_BITS: u64 = (1 << 48) | (1 << 50) | (1 << 56);

/// Index of a codon into [`STANDARD_CODE`] from its base codes; >= 64 if a base is invalid.
#[inline(always)]
fn codon_index(c1: u8, c2: u8, c3: u8) -> usize {
    (usize::from(c1) << 4) | (usize::from(c2) << 2) | usize::from(c3)
}

/// Codon indices of the forward frame of `seq` starting at `offset`.
#[inline(always)]
fn forward_codons(seq: &[u8], offset: usize) -> impl Iterator<Item = usize> + '_ {
    seq.get(offset..)
        .unwrap_or_default()
        .chunks_exact(3)
        .map(|c| {
            codon_index(
                BASE_CODE[usize::from(c[0])],
                BASE_CODE[usize::from(c[1])],
                BASE_CODE[usize::from(c[2])],
            )
        })
}

/// Codon indices of frame `offset` of the reverse complement of `seq`, read off `seq` itself:
/// reverse codon `i` is the complement of `seq[n-1-offset-3i]`, `seq[n-2-offset-3i]`,
/// `seq[n-3-offset-3i]`.
#[inline(always)]
fn reverse_codons(seq: &[u8], offset: usize) -> impl Iterator<Item = usize> + '_ {
    let end = seq.len().saturating_sub(offset);
    seq[..end].rchunks_exact(3).map(|c| {
        codon_index(
            COMPLEMENT_CODE[usize::from(c[2])],
            COMPLEMENT_CODE[usize::from(c[1])],
            COMPLEMENT_CODE[usize::from(c[0])],
        )
    })
}

#[inline(always)]
fn is_stop(codon: usize) -> bool {
    codon < 64 && (STOP_BITS >> codon) & 1 == 1
}

/// Translates `codons` into `protein` (at least as long as the frame), dropping codons with
/// invalid bases: the protein length, or `None` at the first stop codon.
#[inline(always)]
fn translate_open(codons: impl Iterator<Item = usize>, protein: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    for codon in codons {
        if is_stop(codon) {
            return None;
        }
        // Written unconditionally, kept only for a valid codon: no branch on N.
        protein[len] = STANDARD_CODE[codon & 63];
        len += usize::from(codon < 64);
    }
    Some(len)
}

/// Appends the amino acids of `codons` to `protein`, dropping codons with invalid bases.
#[inline(always)]
fn push_amino_acids(codons: impl Iterator<Item = usize>, protein: &mut Vec<u8>) {
    protein.extend(codons.filter(|&c| c < 64).map(|c| STANDARD_CODE[c]));
}

/// Translates `dna` from its first base with the standard code, as the reference does: a codon
/// containing anything but A/C/G/T (either case) is dropped, stops are `*`, a trailing partial
/// codon is ignored.
pub fn translate(dna: &[u8]) -> Vec<u8> {
    let mut protein = Vec::with_capacity(dna.len() / 3);
    push_amino_acids(forward_codons(dna, 0), &mut protein);
    protein
}

/// Reverse complement as the reference computes it: A/C/G/T are complemented in either case
/// (case kept), every other byte is kept as it is, and the order is reversed.
pub fn reverse_complement(dna: &[u8]) -> Vec<u8> {
    dna.iter()
        .rev()
        .map(|&b| COMPLEMENT[usize::from(b)])
        .collect()
}

/// Which strand a frame is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strand {
    /// The chunk as given (`F`).
    Forward,
    /// Its reverse complement (`R`).
    Reverse,
}

/// One of the six frames: strand and 1-based offset; displays as `F1`..`F3`, `R1`..`R3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameTag {
    pub strand: Strand,
    /// 1, 2 or 3: the frame starts at base `offset - 1` of its strand.
    pub offset: u8,
}

impl FrameTag {
    /// The six frames in output order: F1, F2, F3, R1, R2, R3.
    pub const ALL: [FrameTag; 6] = [
        FrameTag {
            strand: Strand::Forward,
            offset: 1,
        },
        FrameTag {
            strand: Strand::Forward,
            offset: 2,
        },
        FrameTag {
            strand: Strand::Forward,
            offset: 3,
        },
        FrameTag {
            strand: Strand::Reverse,
            offset: 1,
        },
        FrameTag {
            strand: Strand::Reverse,
            offset: 2,
        },
        FrameTag {
            strand: Strand::Reverse,
            offset: 3,
        },
    ];

    /// The two-byte suffix of a frame ID, e.g. `b"R2"`.
    pub fn suffix(self) -> [u8; 2] {
        let strand = match self.strand {
            Strand::Forward => b'F',
            Strand::Reverse => b'R',
        };
        [strand, b'0' + self.offset]
    }
}

impl fmt::Display for FrameTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [strand, offset] = self.suffix();
        write!(f, "{}{}", strand as char, offset as char)
    }
}

/// Reusable buffers for [`for_each_kept_frame`], so that translating millions of chunks does not
/// allocate per frame.
#[derive(Debug, Default, Clone)]
pub struct FrameScratch {
    protein: Vec<u8>,
    dna: Vec<u8>,
}

impl FrameScratch {
    pub fn new() -> FrameScratch {
        FrameScratch::default()
    }
}

/// Translates the six frames of `chunk` and calls `keep(tag, dna, protein)` for each frame that
/// is kept (protein non-empty and without stop codon), in the order F1, F2, F3, R1, R2, R3.
///
/// `dna` is the reference's slice of the upper-cased strand, `strand[f-1 : f + 3p]` clipped at
/// its end (`p` = protein length): one base longer than the codons, and shorter than the bases
/// read when codons with other letters than A/C/G/T were dropped. Returns the number of kept
/// frames.
pub fn for_each_kept_frame<F>(chunk: &[u8], scratch: &mut FrameScratch, mut keep: F) -> usize
where
    F: FnMut(FrameTag, &[u8], &[u8]),
{
    let mut kept = 0;
    for tag in FrameTag::ALL {
        let offset = usize::from(tag.offset - 1);
        // One pass that gives up at the first stop: most frames of non-coding sequence hit one
        // within a few dozen codons. The protein buffer is sized once for the longest frame so
        // that the loop does no capacity checks.
        let codons = chunk.len().saturating_sub(offset) / 3;
        if scratch.protein.len() < codons {
            scratch.protein.resize(codons, 0);
        }
        let translated = match tag.strand {
            Strand::Forward => translate_open(forward_codons(chunk, offset), &mut scratch.protein),
            Strand::Reverse => translate_open(reverse_codons(chunk, offset), &mut scratch.protein),
        };
        let protein_len = match translated {
            Some(len) if len > 0 => len,
            _ => continue,
        };
        let protein = &scratch.protein[..protein_len];
        let end = (offset + 3 * protein_len + 1).min(chunk.len());
        scratch.dna.clear();
        match tag.strand {
            Strand::Forward => scratch
                .dna
                .extend(chunk[offset..end].iter().map(u8::to_ascii_uppercase)),
            Strand::Reverse => {
                // revcomp(chunk)[offset..end] is the complement of chunk[n-end .. n-offset], reversed.
                let n = chunk.len();
                scratch.dna.extend(
                    chunk[n - end..n - offset]
                        .iter()
                        .rev()
                        .map(|&b| COMPLEMENT_UPPER[usize::from(b)]),
                );
            }
        }
        keep(tag, &scratch.dna, protein);
        kept += 1;
    }
    kept
}

/// The kept frames of one chunk as [`Frame`]s with IDs `<chunk_id>F1` .. `<chunk_id>R3`.
/// Convenience over [`for_each_kept_frame`], which avoids the allocations.
pub fn select_frames(chunk_id: &str, chunk: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for_each_kept_frame(chunk, &mut FrameScratch::new(), |tag, dna, protein| {
        frames.push(Frame {
            id: format!("{chunk_id}{tag}"),
            dna: dna.to_vec(),
            protein: protein.to_vec(),
        });
    });
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(chunk: &[u8]) -> Vec<(String, String, String)> {
        select_frames("c", chunk)
            .into_iter()
            .map(|f| {
                (
                    f.id,
                    String::from_utf8(f.dna).unwrap(),
                    String::from_utf8(f.protein).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn translate_drops_ambiguous_codons() {
        assert_eq!(translate(b"ATGNNNTGGTAA"), b"MW*");
        assert_eq!(translate(b"atgRcaGGc"), b"MG");
        assert_eq!(translate(b"AT"), b"");
        assert_eq!(translate(b"ATGGC"), b"M");
    }

    #[test]
    fn reverse_complement_keeps_other_letters_and_case() {
        assert_eq!(reverse_complement(b"ACGTNacgtRy"), b"yRacgtNACGT");
        assert_eq!(reverse_complement(b""), b"");
    }

    #[test]
    fn frame_dna_is_one_base_longer_than_codons() {
        // F1 of ATG GCC ATT TG: protein MAI (3 codons), DNA chunk[0:10].
        let frames = kept(b"ATGGCCATTTG");
        assert_eq!(frames[0], ("cF1".into(), "ATGGCCATTT".into(), "MAI".into()));
    }

    #[test]
    fn lower_case_is_upper_cased_in_the_output() {
        let upper = kept(b"ATGGCCATTTGGN");
        let lower = kept(b"atggccatttggn");
        assert_eq!(upper, lower);
        assert!(upper
            .iter()
            .all(|(_, dna, _)| !dna.bytes().any(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn reverse_frames_match_explicit_reverse_complement() {
        let chunk = b"GGCNATTAcgtRCCATGAAACCTTTGGGA";
        let rc = reverse_complement(&chunk.to_ascii_uppercase());
        for frame in select_frames("x", chunk) {
            let tag = &frame.id[1..];
            let offset = usize::from(tag.as_bytes()[1] - b'1');
            let strand: &[u8] = if tag.starts_with('F') {
                &chunk[..]
            } else {
                &rc
            };
            let strand = strand.to_ascii_uppercase();
            let protein = translate(&strand[offset..]);
            assert_eq!(frame.protein, protein, "{}", frame.id);
            let end = (offset + 3 * protein.len() + 1).min(strand.len());
            assert_eq!(frame.dna, &strand[offset..end], "{}", frame.id);
        }
    }

    #[test]
    fn short_and_stop_frames_are_dropped() {
        assert!(kept(b"").is_empty());
        assert!(kept(b"AT").is_empty());
        assert!(kept(b"NNNNNN").is_empty());
        // TAA TAA: F1 has a stop; R1 = TTATTA -> LL kept.
        let frames = kept(b"TAATAA");
        assert_eq!(frames.len(), 5);
        assert!(!frames.iter().any(|f| f.0 == "cF1"));
        assert!(frames.iter().any(|f| f.0 == "cR1" && f.2 == "LL"));
    }

    #[test]
    fn tags() {
        let names: Vec<String> = FrameTag::ALL.iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["F1", "F2", "F3", "R1", "R2", "R3"]);
    }
}
