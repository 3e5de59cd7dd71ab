//! Property tests of chunking and translation against independent, naive implementations
//! written from PIPELINE.md §2–3 (strings and maps, no lookup tables).

use std::collections::HashMap;

use proptest::prelude::*;
use virnucpro_core::input::chunk::{chunk_count, chunk_spans, last_chunk_is_clipped};
use virnucpro_core::input::translate::{reverse_complement, select_frames, translate};
use virnucpro_core::input::{record_frames, SeqRecord};

/// The standard code as NCBI prints it (transl_table=1), bases in TCAG order.
fn standard_code() -> HashMap<String, char> {
    let aas = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG";
    let bases = ['T', 'C', 'A', 'G'];
    let mut code = HashMap::new();
    let mut aa = aas.chars();
    for a in bases {
        for b in bases {
            for c in bases {
                code.insert(format!("{a}{b}{c}"), aa.next().unwrap());
            }
        }
    }
    code
}

fn naive_translate(code: &HashMap<String, char>, dna: &str) -> String {
    let mut protein = String::new();
    let mut i = 0;
    while i + 3 <= dna.len() {
        if let Some(&aa) = code.get(&dna[i..i + 3]) {
            protein.push(aa);
        }
        i += 3;
    }
    protein
}

fn naive_revcomp(dna: &str) -> String {
    dna.chars()
        .rev()
        .map(|c| match c {
            'A' => 'T',
            'T' => 'A',
            'C' => 'G',
            'G' => 'C',
            'a' => 't',
            't' => 'a',
            'c' => 'g',
            'g' => 'c',
            other => other,
        })
        .collect()
}

/// The reference chunking, transcribed literally: the shift list as a list, Python slicing.
fn naive_chunks(n: usize, l: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return vec![];
    }
    let k = n.div_ceil(l);
    if k == 1 {
        return vec![(0, n)];
    }
    let r = k * l - n;
    let lo = r / k;
    let need = r - lo * (k - 1);
    let mut shifts = vec![lo + 1; need];
    shifts.extend(std::iter::repeat_n(lo, (k - 1).saturating_sub(need)));
    shifts.push(0);
    let mut spans = vec![];
    let mut start = 0;
    for shift in shifts.iter().take(k) {
        spans.push((start, (start + l).min(n)));
        start = start + l - shift;
    }
    spans
}

/// The reference frame selection on an upper-cased chunk: (frame suffix, DNA, protein).
fn naive_frames(chunk: &str) -> Vec<(String, String, String)> {
    let code = standard_code();
    let chunk = chunk.to_ascii_uppercase();
    let rc = naive_revcomp(&chunk);
    let mut kept = vec![];
    for (strand, seq) in [("F", &chunk), ("R", &rc)] {
        for f in 1..=3 {
            let protein = naive_translate(&code, seq.get(f - 1..).unwrap_or(""));
            if !protein.is_empty() && !protein.contains('*') {
                let end = (f + 3 * protein.len()).min(seq.len());
                kept.push((format!("{strand}{f}"), seq[f - 1..end].to_string(), protein));
            }
        }
    }
    kept
}

fn dna(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    let letters: Vec<char> = alphabet.chars().collect();
    prop::collection::vec(prop::sample::select(letters), 0..max)
        .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn chunks_cover_the_record(n in 0usize..5000, l in 1usize..700) {
        let spans: Vec<_> = chunk_spans(n, l).collect();
        prop_assert_eq!(&spans, &naive_chunks(n, l));
        prop_assert_eq!(spans.len(), n.div_ceil(l));
        prop_assert_eq!(spans.len(), chunk_count(n, l));
        if n == 0 {
            return Ok(());
        }
        // End to end, in order, without gaps.
        prop_assert_eq!(spans[0].0, 0);
        prop_assert_eq!(spans.last().unwrap().1, n);
        for w in spans.windows(2) {
            prop_assert!(w[0].0 < w[1].0);
            prop_assert!(w[1].0 <= w[0].1, "gap between {:?} and {:?}", w[0], w[1]);
        }
        // Every chunk is exactly L long (the whole record when shorter), except that the
        // reference's shift list clips the last one in some cases (see input::chunk).
        let (last, rest) = spans.split_last().unwrap();
        for &(s, e) in rest {
            prop_assert_eq!(e - s, l);
        }
        if n <= l {
            prop_assert_eq!(*last, (0, n));
        } else if last_chunk_is_clipped(n, l) {
            prop_assert!(last.1 - last.0 < l);
        } else {
            prop_assert_eq!(last.1 - last.0, l);
        }
    }

    #[test]
    fn translation_agrees_with_the_standard_code(seq in dna("ACGTacgtNRYKMSWBDHV", 400)) {
        let expected = naive_translate(&standard_code(), &seq.to_ascii_uppercase());
        let got = translate(seq.as_bytes());
        prop_assert_eq!(String::from_utf8(got).unwrap(), expected);
    }

    #[test]
    fn reverse_complement_is_an_involution(seq in dna("ACGTacgt", 500)) {
        let rc = reverse_complement(seq.as_bytes());
        prop_assert_eq!(String::from_utf8(rc.clone()).unwrap(), naive_revcomp(&seq));
        prop_assert_eq!(reverse_complement(&rc), seq.as_bytes());
    }

    #[test]
    fn frame_selection_matches_the_reference(chunk in dna("ACGTacgtNRY", 120)) {
        let got: Vec<_> = select_frames("c", chunk.as_bytes())
            .into_iter()
            .map(|f| {
                (
                    f.id.strip_prefix('c').unwrap().to_string(),
                    String::from_utf8(f.dna).unwrap(),
                    String::from_utf8(f.protein).unwrap(),
                )
            })
            .collect();
        prop_assert_eq!(got, naive_frames(&chunk));
    }

    #[test]
    fn records_are_chunked_then_translated(seq in dna("ACGTN", 400), l in 1usize..90) {
        let record = SeqRecord::new("rec", seq.clone().into_bytes());
        let frames = record_frames(&record, l);
        let spans = naive_chunks(seq.len(), l);
        prop_assert_eq!(frames.chunks.len(), spans.len());
        for (j, (chunk, (s, e))) in frames.chunks.iter().zip(spans).enumerate() {
            prop_assert_eq!(&chunk.id, &format!("rec_chunk_{}", j + 1));
            prop_assert_eq!((chunk.start, chunk.end), (s, e));
            let expected: Vec<_> = naive_frames(&seq[s..e])
                .into_iter()
                .map(|(tag, dna, protein)| (format!("{}{tag}", chunk.id), dna, protein))
                .collect();
            let got: Vec<_> = chunk
                .frames
                .iter()
                .map(|f| {
                    (
                        f.id.clone(),
                        String::from_utf8(f.dna.clone()).unwrap(),
                        String::from_utf8(f.protein.clone()).unwrap(),
                    )
                })
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
