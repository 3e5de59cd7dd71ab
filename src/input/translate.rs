//! Six-frame translation and frame selection (PIPELINE.md §3).
//!
//! Everything works on byte slices through 256-entry lookup tables, so upper and lower case need
//! no separate pass: a base's 2-bit code comes from [`BASE_CODE`], a codon's amino acid from
//! [`STANDARD_CODE`]. Reverse frames are read straight off the forward chunk (complementing the
//! codes), so the reverse complement is only built for the DNA of frames that are kept. A frame is
//! abandoned at its first stop codon, which is where random or non-coding sequence ends up fast.

use std::fmt;

use super::Frame;

/// Code of an invalid base (anything but A/C/G/T in either case); its bit 2 marks the codon.
const INVALID: u8 = 4;

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

/// The amino acid of a codon from three base codes, or `None` if any base is not A/C/G/T.
#[inline(always)]
fn amino_acid(c1: u8, c2: u8, c3: u8) -> Option<u8> {
    if (c1 | c2 | c3) & INVALID != 0 {
        return None;
    }
    Some(STANDARD_CODE[usize::from((c1 << 4) | (c2 << 2) | c3)])
}

/// Translates `dna` from its first base with the standard code, as the reference does: a codon
/// containing anything but A/C/G/T (either case) is dropped, stops are `*`, a trailing partial
/// codon is ignored.
pub fn translate(dna: &[u8]) -> Vec<u8> {
    let mut protein = Vec::with_capacity(dna.len() / 3);
    for codon in dna.chunks_exact(3) {
        let codes = [0, 1, 2].map(|i| BASE_CODE[usize::from(codon[i])]);
        protein.extend(amino_acid(codes[0], codes[1], codes[2]));
    }
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
        let open = match tag.strand {
            Strand::Forward => translate_forward(chunk, offset, &mut scratch.protein),
            Strand::Reverse => translate_reverse(chunk, offset, &mut scratch.protein),
        };
        if !open {
            continue;
        }
        let end = (offset + 3 * scratch.protein.len() + 1).min(chunk.len());
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
        keep(tag, &scratch.dna, &scratch.protein);
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

/// Translates the forward frame starting at `offset` into `protein`; false (and `protein` left
/// partial) as soon as a stop codon shows the frame will not be kept, or if it is empty.
#[inline]
fn translate_forward(chunk: &[u8], offset: usize, protein: &mut Vec<u8>) -> bool {
    protein.clear();
    let Some(frame) = chunk.get(offset..) else {
        return false;
    };
    for codon in frame.chunks_exact(3) {
        let aa = amino_acid(
            BASE_CODE[usize::from(codon[0])],
            BASE_CODE[usize::from(codon[1])],
            BASE_CODE[usize::from(codon[2])],
        );
        match aa {
            Some(b'*') => return false,
            Some(aa) => protein.push(aa),
            None => {}
        }
    }
    !protein.is_empty()
}

/// Like [`translate_forward`] for the reverse complement: its codon `i` is the complement of
/// `chunk[n-1-offset-3i]`, `chunk[n-2-offset-3i]`, `chunk[n-3-offset-3i]`.
#[inline]
fn translate_reverse(chunk: &[u8], offset: usize, protein: &mut Vec<u8>) -> bool {
    protein.clear();
    let Some(end) = chunk.len().checked_sub(offset) else {
        return false;
    };
    for codon in chunk[..end].rchunks_exact(3) {
        let aa = amino_acid(
            COMPLEMENT_CODE[usize::from(codon[2])],
            COMPLEMENT_CODE[usize::from(codon[1])],
            COMPLEMENT_CODE[usize::from(codon[0])],
        );
        match aa {
            Some(b'*') => return false,
            Some(aa) => protein.push(aa),
            None => {}
        }
    }
    !protein.is_empty()
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
