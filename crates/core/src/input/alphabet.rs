//! The nucleotide alphabet: which letters a nucleotide record may hold (docs/FORMATS.md,
//! "Nucleotide alphabet").
//!
//! Accepted, in upper or lower case (soft-masked sequence is lower case):
//! - `A C G T`: translated (docs/PIPELINE.md §3);
//! - `U` (RNA), the IUPAC ambiguity codes `R Y S W K M B D H V N`, and `X` (a masked base, as
//!   RepeatMasker `-x` writes): kept in place, and a codon containing one is dropped from the
//!   protein, as the reference does with anything but `ACGT`;
//! - `-` and `.` (alignment gaps): kept in place like `N`.
//!
//! Anything else is refused, with the letters named: `E F I J L O P Q Z` and `*` are amino-acid
//! codes (or a stop) that no nucleotide alphabet uses, so a record holding them is protein given
//! by mistake; digits and other punctuation are not sequence at all.
//!
//! The check is one table lookup per byte, OR-ed together (no branch per base); the offending
//! letters are only collected when a record fails.

/// Class bits of a byte.
const OK: u8 = 0;
const BAD: u8 = 1;
/// `U`/`u`: accepted, but RNA: its codons are dropped like `N` (see [`Finding::rna`]).
const RNA: u8 = 2;
/// `-`/`.`: accepted alignment gaps.
const GAP: u8 = 4;

/// Letters that only amino-acid alphabets use (with `*`, a stop): their presence means protein.
pub const PROTEIN_ONLY: &[u8] = b"EFIJLOPQZ*";

static CLASS: [u8; 256] = class_table();

const fn class_table() -> [u8; 256] {
    let mut t = [BAD; 256];
    let ok = b"ACGTRYSWKMBDHVNX";
    let mut i = 0;
    while i < ok.len() {
        t[ok[i] as usize] = OK;
        t[ok[i].to_ascii_lowercase() as usize] = OK;
        i += 1;
    }
    t[b'U' as usize] = RNA;
    t[b'u' as usize] = RNA;
    t[b'-' as usize] = GAP;
    t[b'.' as usize] = GAP;
    t
}

/// What [`check_nucleotides`] found in an accepted sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finding {
    /// The sequence holds `U`: RNA. Its codons are dropped like those with `N`; convert RNA to
    /// DNA first (`seqkit seq --rna2dna`).
    pub rna: bool,
    /// The sequence holds `-` or `.`: an alignment. Gaps stay in place like `N`; remove them
    /// first (`seqkit seq -g`).
    pub gaps: bool,
}

/// A sequence with bytes outside the nucleotide alphabet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotNucleotide {
    /// The offending bytes, each once, in byte order (upper case where a letter).
    pub letters: Vec<u8>,
    /// 1-based position of the first offending byte (whitespace removed).
    pub first: usize,
    /// How many bytes of the sequence are offending.
    pub count: usize,
    /// The sequence length.
    pub len: usize,
}

impl NotNucleotide {
    /// Whether the offending letters include amino-acid-only codes: the record is protein.
    pub fn looks_like_protein(&self) -> bool {
        self.letters.iter().any(|b| PROTEIN_ONLY.contains(b))
    }

    /// "E, F, L, P, Q" (non-printable bytes as hex).
    pub fn letters_text(&self) -> String {
        self.letters
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    (b as char).to_string()
                } else {
                    format!("{b:#04x}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The diagnosis, e.g. "the letters E, F, L that no nucleotide alphabet uses (5 of its 60
    /// positions, the first at position 3): this looks like protein, not DNA or RNA".
    pub fn describe(&self) -> String {
        let what = if self.letters.len() == 1 {
            "the letter"
        } else {
            "the letters"
        };
        let verdict = if self.looks_like_protein() {
            "this looks like protein, not DNA or RNA"
        } else {
            "these are not nucleotide codes"
        };
        format!(
            "{what} {} that no nucleotide alphabet uses ({} of its {} positions, the first at \
             position {}): {verdict}",
            self.letters_text(),
            self.count,
            self.len,
            self.first
        )
    }
}

/// Checks `seq` against the nucleotide alphabet (module docs).
pub fn check_nucleotides(seq: &[u8]) -> Result<Finding, NotNucleotide> {
    let all = seq.iter().fold(OK, |acc, &b| acc | CLASS[usize::from(b)]);
    if all & BAD == 0 {
        return Ok(Finding {
            rna: all & RNA != 0,
            gaps: all & GAP != 0,
        });
    }
    let mut seen = [false; 256];
    let mut first = 0;
    let mut count = 0;
    for (i, &b) in seq.iter().enumerate() {
        if CLASS[usize::from(b)] & BAD != 0 {
            if count == 0 {
                first = i + 1;
            }
            count += 1;
            seen[usize::from(b.to_ascii_uppercase())] = true;
        }
    }
    let letters = (0..=255u8).filter(|&b| seen[usize::from(b)]).collect();
    Err(NotNucleotide {
        letters,
        first,
        count,
        len: seq.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleotide_files_pass() {
        for seq in [
            &b"ACGTacgtNNNNnnnn"[..],
            b"RYSWKMBDHVNryswkmbdhvn",
            b"ACGTXXXXxxxx",
            b"",
        ] {
            assert_eq!(check_nucleotides(seq), Ok(Finding::default()), "{seq:?}");
        }
        assert_eq!(
            check_nucleotides(b"ACGUacgu"),
            Ok(Finding {
                rna: true,
                gaps: false
            })
        );
        assert_eq!(
            check_nucleotides(b"AC--G..T"),
            Ok(Finding {
                rna: false,
                gaps: true
            })
        );
    }

    #[test]
    fn protein_is_named_by_its_letters() {
        // Human insulin's B chain.
        let err = check_nucleotides(b"FVNQHLCGSHLVEALYLVCGERGFFYTPKT").unwrap_err();
        assert_eq!(err.letters_text(), "E, F, L, P, Q");
        assert!(err.looks_like_protein());
        assert_eq!(err.first, 1);
        let text = err.describe();
        assert!(
            text.contains("the letters E, F, L, P, Q that no nucleotide alphabet uses")
                && text.contains("(11 of its 30 positions, the first at position 1)")
                && text.contains("looks like protein"),
            "{text}"
        );
        // Lower-case protein letters, and a stop.
        let err = check_nucleotides(b"acgtacgtl*").unwrap_err();
        assert_eq!(err.letters_text(), "*, L");
        assert_eq!((err.first, err.count), (9, 2));
        assert!(err.looks_like_protein());
    }

    #[test]
    fn other_bytes_are_not_nucleotides_either() {
        let err = check_nucleotides(b"ACGT1234ACGT").unwrap_err();
        assert_eq!(err.letters_text(), "1, 2, 3, 4");
        assert!(!err.looks_like_protein());
        assert!(err.describe().contains("not nucleotide codes"));
        let err = check_nucleotides(b"ACGT\x01").unwrap_err();
        assert_eq!(err.letters_text(), "0x01");
    }

    #[test]
    fn every_byte_is_classified_as_documented() {
        for b in 0..=255u8 {
            let upper = b.to_ascii_uppercase();
            let want_ok = b"ACGTURYSWKMBDHVNX-.".contains(&upper);
            assert_eq!(check_nucleotides(&[b]).is_ok(), want_ok, "byte {b:#04x}");
            if PROTEIN_ONLY.contains(&upper) {
                assert!(check_nucleotides(&[b]).unwrap_err().looks_like_protein());
            }
        }
    }
}
