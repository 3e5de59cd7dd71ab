//! Chunking a record into overlapping windows (docs/PIPELINE.md §2).
//!
//! A record of length `n` gives `k = ceil(n / L)` chunks. The overlap `r = k*L - n` is spread over
//! the gaps with the reference's shift list `[lo+1] * need + [lo] * (k-1-need) + [0]`, where
//! `lo = floor(r / k)` and `need = r - lo*(k-1)`. Chunk `j` starts at `j*L - (sum of the first j
//! shifts)` and is `L` long, clipped at the end of the record (Python slicing).
//!
//! When `need <= k-1` the shifts sum to `r` and every chunk is exactly `L` long. When
//! `need > k-1` (e.g. `n = L + 1`: `k = 2`, `r = L - 1`, `need = (L-1) - (L-1)/2 > 1`) the reference's
//! shifts sum to less than `r`, so its last chunk runs past the end and is clipped: it is shorter
//! than `L`. The published models were trained on these chunks and the oracle files contain one
//! (`g_plus1_chunk_3`), so this module reproduces it; [`last_chunk_is_clipped`] says when it happens.

use std::iter::FusedIterator;

/// The chunks `(start, end)` (half-open, 0-based) of a record of `len` bases cut at
/// `chunk_len`, in order. An empty record has no chunks; a record of at most `chunk_len` bases
/// has one, the whole record.
///
/// # Panics
/// If `chunk_len` is 0 (the command line rejects it before it gets here).
pub fn chunk_spans(len: usize, chunk_len: usize) -> ChunkSpans {
    assert!(chunk_len > 0, "chunk length must be > 0");
    let plan = Plan::new(len, chunk_len);
    ChunkSpans { plan, next: 0 }
}

/// Number of chunks of a record of `len` bases: `ceil(len / chunk_len)`.
pub fn chunk_count(len: usize, chunk_len: usize) -> usize {
    assert!(chunk_len > 0, "chunk length must be > 0");
    len.div_ceil(chunk_len)
}

/// Whether the reference's shift list leaves the last chunk of a `len`-base record shorter than
/// `chunk_len` (see the module documentation). Always false for records of at most one chunk.
pub fn last_chunk_is_clipped(len: usize, chunk_len: usize) -> bool {
    let plan = Plan::new(len, chunk_len);
    plan.count > 1 && plan.need > plan.count - 1
}

/// The ID of chunk `index` (0-based) of record `record_id`: `<record id>_chunk_<index+1>`.
pub fn chunk_id(record_id: &str, index: usize) -> String {
    let mut id = Vec::with_capacity(record_id.len() + 12);
    push_chunk_id(&mut id, record_id, index);
    String::from_utf8(id).expect("a record ID is UTF-8")
}

/// Appends [`chunk_id`] to `out`, for writers that build their lines as bytes.
pub fn push_chunk_id(out: &mut Vec<u8>, record_id: &str, index: usize) {
    use std::io::Write;
    out.extend_from_slice(record_id.as_bytes());
    out.extend_from_slice(b"_chunk_");
    write!(out, "{}", index + 1).expect("writing to a Vec cannot fail");
}

/// What the shift list boils down to: shift `j` (between chunk `j` and `j+1`) is `lo + 1` for
/// the first `need` gaps and `lo` after that.
#[derive(Debug, Clone, Copy)]
struct Plan {
    len: usize,
    chunk_len: usize,
    count: usize,
    lo: usize,
    need: usize,
}

impl Plan {
    fn new(len: usize, chunk_len: usize) -> Plan {
        let count = len.div_ceil(chunk_len);
        if count <= 1 {
            return Plan {
                len,
                chunk_len,
                count,
                lo: 0,
                need: 0,
            };
        }
        // count*chunk_len < len + chunk_len <= 2*len here, so this cannot overflow.
        let overlap = count * chunk_len - len;
        let lo = overlap / count;
        let need = overlap - lo * (count - 1);
        Plan {
            len,
            chunk_len,
            count,
            lo,
            need,
        }
    }

    fn span(&self, j: usize) -> (usize, usize) {
        let shifted = j * self.lo + j.min(self.need);
        let start = j * self.chunk_len - shifted;
        let end = (start + self.chunk_len).min(self.len);
        (start, end)
    }
}

/// Iterator returned by [`chunk_spans`].
#[derive(Debug, Clone)]
pub struct ChunkSpans {
    plan: Plan,
    next: usize,
}

impl Iterator for ChunkSpans {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.next >= self.plan.count {
            return None;
        }
        let span = self.plan.span(self.next);
        self.next += 1;
        Some(span)
    }

    fn nth(&mut self, n: usize) -> Option<(usize, usize)> {
        // Spans are computed directly, so skipping is O(1) (`skip` relies on this).
        self.next = self.next.saturating_add(n).min(self.plan.count);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.plan.count - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for ChunkSpans {}
impl FusedIterator for ChunkSpans {}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(n: usize, l: usize) -> Vec<(usize, usize)> {
        chunk_spans(n, l).collect()
    }

    #[test]
    fn short_exact_and_empty() {
        assert_eq!(spans(0, 60), vec![]);
        assert_eq!(spans(31, 60), vec![(0, 31)]);
        assert_eq!(spans(60, 60), vec![(0, 60)]);
        assert_eq!(spans(120, 60), vec![(0, 60), (60, 120)]);
    }

    #[test]
    fn skip_is_direct() {
        let all = spans(1000, 60);
        assert_eq!(chunk_spans(1000, 60).skip(5).collect::<Vec<_>>(), all[5..]);
        assert_eq!(chunk_spans(1000, 60).nth(100), None);
    }

    #[test]
    fn overlap_and_clipping() {
        // n=250, L=100: k=3, r=50, lo=16, need=50-32=18 > 2 -> clipped; the reference's chunks.
        assert_eq!(spans(250, 100), vec![(0, 100), (83, 183), (166, 250)]);
        // n=280, L=100: k=3, r=20, lo=6, need=8 > 2 -> clipped as well.
        assert_eq!(spans(280, 100), vec![(0, 100), (93, 193), (186, 280)]);
        // n=298, L=100: k=3, r=2, lo=0, need=2 -> shifts [1, 1, 0], all chunks full length.
        assert_eq!(spans(298, 100), vec![(0, 100), (99, 199), (198, 298)]);
        assert!(!last_chunk_is_clipped(298, 100));
    }

    #[test]
    fn oracle_plus_one_record() {
        // g_plus1 in the oracle: 121 bases at L=60 -> chunks at 0, 40, 80; the last one is 41 long.
        assert_eq!(spans(121, 60), vec![(0, 60), (40, 100), (80, 121)]);
        assert!(last_chunk_is_clipped(121, 60));
    }

    #[test]
    fn ids() {
        assert_eq!(chunk_id("contig7", 2), "contig7_chunk_3");
    }

    #[test]
    fn length_one_chunks() {
        assert_eq!(spans(3, 1), vec![(0, 1), (1, 2), (2, 3)]);
    }
}
