//! Work units: the input cut into runs of whole records, the grain of resuming, of spreading
//! work over several devices and of shards.
//!
//! The cut depends only on the records' content (IDs and sequences): a unit takes records in
//! order until the next one would bring it above [`UnitRule::max_bases`] (a unit always holds at
//! least one record), and that limit is derived from the number of bases in the input, counted in
//! a pass over the records before the run ([`UnitRule::for_inputs`]). Never from the bytes on
//! disk, so that a gzip and a plain copy of the same records, or the same records wrapped at 60
//! or 80 columns, are cut into the same units; never from the device, the number of devices,
//! timing or threads. A unit is computed whole on one device with the same batching wherever it
//! runs, so its numbers, and therefore every output byte, do not depend on who computed it or
//! when: a resumed run, a run on several GPUs and shards merged back all give the bytes of one
//! uninterrupted run.
//!
//! Each unit carries a hash of its records as read (header and sequence), which identifies it in
//! a journal: a resumed run reuses a unit only if the input still holds the same records there.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use xxhash_rust::xxh3::Xxh3;

use super::fasta::{Alphabet, InputError, RecordReader, STDIN};
use super::SeqRecord;

/// Units never grow past this many bases (big enough to fill a GPU's batches).
pub const MAX_UNIT_BASES: u64 = 1 << 20;
/// Smaller inputs are cut into about this many units, so that shards and devices can be
/// balanced even on inputs of a few hundred records.
pub const TARGET_UNITS: u64 = 1024;
/// Beyond this many bases every input gets units of [`MAX_UNIT_BASES`]: the counting pass stops
/// there, so that it reads at most the first gigabase of a large input.
const COUNT_LIMIT: u64 = MAX_UNIT_BASES * TARGET_UNITS;

/// How the input is cut into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitRule {
    /// A unit closes before a record that would bring it above this many bases.
    pub max_bases: u64,
}

impl UnitRule {
    /// The rule for inputs of `total_bases` bases (`None`: unknown, e.g. stdin, which cannot be
    /// read twice): `ceil(total / TARGET_UNITS)` bases per unit, at most [`MAX_UNIT_BASES`].
    pub fn for_bases(total_bases: Option<u64>) -> UnitRule {
        let max_bases = match total_bases {
            Some(total) => total.div_ceil(TARGET_UNITS).clamp(1, MAX_UNIT_BASES),
            None => MAX_UNIT_BASES,
        };
        UnitRule { max_bases }
    }

    /// The rule for these inputs, from their bases ([`count_bases`]; stdin: unknown).
    pub fn for_inputs(inputs: &[PathBuf]) -> Result<UnitRule, InputError> {
        Ok(UnitRule::for_bases(count_bases(inputs)?))
    }
}

/// The bases of the records in `inputs` (records as [`RecordReader`] returns them, duplicate IDs
/// and any letters allowed: the run itself judges those), counted up to the point where the rule
/// no longer changes; `None` when one of the inputs is stdin.
pub fn count_bases(inputs: &[PathBuf]) -> Result<Option<u64>, InputError> {
    if inputs.iter().any(|p| p.as_os_str() == STDIN) {
        return Ok(None);
    }
    // Silent: the run reads these records again and reports what it finds (empty records)
    // then, once.
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        let reader = RecordReader::with_alphabet(inputs, Alphabet::Any)?.allow_duplicate_ids(true);
        let mut total = 0u64;
        for record in reader {
            total += record?.seq.len() as u64;
            if total >= COUNT_LIMIT {
                break;
            }
        }
        Ok(Some(total))
    })
}

/// Total size on disk of `inputs`; `None` when one of them is stdin.
pub fn total_input_bytes(inputs: &[PathBuf]) -> Result<Option<u64>, InputError> {
    let mut total = 0u64;
    for path in inputs {
        if path.as_os_str() == STDIN {
            return Ok(None);
        }
        let meta = std::fs::metadata(path).map_err(|error| InputError::Open {
            input: path.display().to_string(),
            error,
        })?;
        total += meta.len();
    }
    Ok(Some(total))
}

/// A unit of work: consecutive records of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// 0-based position among the units of the input.
    pub index: u64,
    /// 0-based number of its first record among all records of the input (empty records,
    /// which are skipped, not counted).
    pub first_record: u64,
    pub records: Vec<SeqRecord>,
    pub bases: u64,
    /// Hash of the records as read; see [`UnitHasher`].
    pub hash: u64,
    /// Empty records skipped while this unit was read (before its last record).
    pub empty_skipped: u64,
}

/// What identifies a unit without its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct UnitId {
    pub index: u64,
    pub first_record: u64,
    pub records: u64,
    pub bases: u64,
    pub hash: u64,
}

impl Unit {
    pub fn id(&self) -> UnitId {
        UnitId {
            index: self.index,
            first_record: self.first_record,
            records: self.records.len() as u64,
            bases: self.bases,
            hash: self.hash,
        }
    }
}

/// The hash of a unit's records: every header and sequence with its length, so that moving a
/// byte from one field or record to the next changes it.
#[derive(Default)]
pub struct UnitHasher(Xxh3);

impl UnitHasher {
    pub fn add(&mut self, record: &SeqRecord) {
        for field in [&record.header, &record.seq] {
            self.0.update(&(field.len() as u64).to_le_bytes());
            self.0.update(field);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0.digest()
    }
}

/// Cuts the records of a [`RecordReader`] into [`Unit`]s by a [`UnitRule`]: an iterator of
/// `Result<Unit, InputError>` that stops after the first error.
pub struct UnitReader {
    reader: RecordReader,
    rule: UnitRule,
    /// The record read past the end of the previous unit.
    pending: Option<SeqRecord>,
    next_index: u64,
    next_record: u64,
    empty_seen: u64,
    done: bool,
}

impl UnitReader {
    pub fn new(reader: RecordReader, rule: UnitRule) -> UnitReader {
        UnitReader {
            reader,
            rule,
            pending: None,
            next_index: 0,
            next_record: 0,
            empty_seen: 0,
            done: false,
        }
    }

    /// Empty records skipped so far (all of them once the iterator has ended).
    pub fn empty_skipped(&self) -> u64 {
        self.reader.empty_skipped()
    }

    /// Where the record last read came from (for messages).
    pub fn reader(&self) -> &RecordReader {
        &self.reader
    }

    fn next_unit(&mut self) -> Result<Option<Unit>, InputError> {
        let mut records = Vec::new();
        let mut bases = 0u64;
        let mut hasher = UnitHasher::default();
        loop {
            let record = match self.pending.take() {
                Some(r) => r,
                None => match self.reader.next() {
                    Some(r) => r?,
                    None => break,
                },
            };
            let len = record.seq.len() as u64;
            if !records.is_empty() && bases + len > self.rule.max_bases {
                self.pending = Some(record);
                break;
            }
            hasher.add(&record);
            bases += len;
            records.push(record);
        }
        if records.is_empty() {
            return Ok(None);
        }
        let skipped_now = self.reader.empty_skipped();
        let unit = Unit {
            index: self.next_index,
            first_record: self.next_record,
            bases,
            hash: hasher.finish(),
            empty_skipped: skipped_now - self.empty_seen,
            records,
        };
        self.empty_seen = skipped_now;
        self.next_index += 1;
        self.next_record += unit.records.len() as u64;
        Ok(Some(unit))
    }
}

impl Iterator for UnitReader {
    type Item = Result<Unit, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_unit().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

/// `--shard I/N`: this process handles share `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

impl FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a shard: use I/N with 1 <= I <= N (e.g. 2/8)");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Every unit of an input, read ahead of a sharded run: the shards are cut from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitPlan {
    pub units: Vec<UnitId>,
    pub records: u64,
    pub bases: u64,
}

impl UnitPlan {
    /// Reads all of `reader` (nothing is kept but each unit's identity).
    pub fn read(reader: RecordReader, rule: UnitRule) -> Result<UnitPlan, InputError> {
        let mut plan = UnitPlan {
            units: Vec::new(),
            records: 0,
            bases: 0,
        };
        for unit in UnitReader::new(reader, rule) {
            let id = unit?.id();
            plan.records += id.records;
            plan.bases += id.bases;
            plan.units.push(id);
        }
        Ok(plan)
    }

    /// One hash of the whole plan: equal plans, equal inputs (as far as units see them).
    pub fn hash(&self) -> u64 {
        let mut h = Xxh3::new();
        for u in &self.units {
            for v in [u.index, u.first_record, u.records, u.bases, u.hash] {
                h.update(&v.to_le_bytes());
            }
        }
        h.digest()
    }

    /// The 0-based shard of every unit for `count` shards; see [`assign_shards`].
    pub fn shards(&self, count: u32) -> Vec<u32> {
        let bases: Vec<u64> = self.units.iter().map(|u| u.bases).collect();
        assign_shards(&bases, count)
    }
}

/// Splits units of `bases` among `count` shards, balanced by bases: largest unit first (ties by
/// position), each to the shard with the fewest bases so far (ties to the lower shard). The
/// result depends only on the sizes, so every process computes the same split. Returns the
/// 0-based shard of each unit.
pub fn assign_shards(bases: &[u64], count: u32) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    assert!(count > 0, "at least one shard");
    let mut order: Vec<usize> = (0..bases.len()).collect();
    order.sort_by_key(|&i| (Reverse(bases[i]), i));
    let mut loads: BinaryHeap<Reverse<(u64, u32)>> = (0..count).map(|s| Reverse((0, s))).collect();
    let mut shard = vec![0u32; bases.len()];
    for i in order {
        let Reverse((load, s)) = loads.pop().expect("count > 0");
        shard[i] = s;
        loads.push(Reverse((load + bases[i], s)));
    }
    shard
}

/// Throughput of the input pass (`bench --input`): the median of `repeats` runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputThroughput {
    pub bytes: u64,
    pub records: u64,
    pub bases: u64,
    pub units: usize,
    /// Read, decompress, parse, cut into units and hash every record (what a shard's first pass
    /// and a resumed run's input check do), in MB/s of the files as stored.
    pub units_mb_per_s: f64,
    /// The hash alone over the files' bytes (from the page cache).
    pub hash_mb_per_s: f64,
}

impl fmt::Display for InputThroughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "input: {:.1} MB, {} records, {} bases, {} work units",
            self.bytes as f64 / 1e6,
            self.records,
            self.bases,
            self.units
        )?;
        writeln!(
            f,
            "read + parse + cut + hash (fingerprint pass): {:.0} MB/s",
            self.units_mb_per_s
        )?;
        write!(
            f,
            "xxh3 alone over the bytes: {:.0} MB/s",
            self.hash_mb_per_s
        )
    }
}

/// Times [`UnitPlan::read`] and the bare hash on `inputs`.
pub fn measure_input(inputs: &[PathBuf], repeats: usize) -> anyhow::Result<InputThroughput> {
    use std::time::Instant;
    let bytes = total_input_bytes(inputs)?
        .ok_or_else(|| anyhow::anyhow!("--input needs files, not stdin"))?;
    let rule = UnitRule::for_inputs(inputs)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut plan = None;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        plan = Some(UnitPlan::read(
            RecordReader::with_alphabet(inputs, Alphabet::Any)?,
            rule,
        )?);
        times.push(t.elapsed().as_secs_f64());
    }
    let plan = plan.expect("repeats >= 1");
    let data: Vec<Vec<u8>> = inputs.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let mut hash_times = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let mut h = Xxh3::new();
        for d in &data {
            h.update(d);
        }
        std::hint::black_box(h.digest());
        hash_times.push(t.elapsed().as_secs_f64());
    }
    let mb = bytes as f64 / 1e6;
    Ok(InputThroughput {
        bytes,
        records: plan.records,
        bases: plan.bases,
        units: plan.units.len(),
        units_mb_per_s: mb / median(times).max(1e-9),
        hash_mb_per_s: mb / median(hash_times).max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_fasta(dir: &std::path::Path, records: &[(String, usize)]) -> PathBuf {
        let path = dir.join("in.fa");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for (id, len) in records {
            writeln!(f, ">{id} some description").unwrap();
            f.write_all(&b"ACGT".repeat(len.div_ceil(4))[..*len])
                .unwrap();
            writeln!(f).unwrap();
        }
        drop(f);
        path
    }

    fn units(path: &PathBuf, max_bases: u64) -> Vec<Unit> {
        let reader = RecordReader::new(std::slice::from_ref(path)).unwrap();
        UnitReader::new(reader, UnitRule { max_bases })
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn rule_scales_with_input_bases() {
        assert_eq!(UnitRule::for_bases(None).max_bases, MAX_UNIT_BASES);
        assert_eq!(UnitRule::for_bases(Some(0)).max_bases, 1);
        assert_eq!(
            UnitRule::for_bases(Some(10 * TARGET_UNITS + 1)).max_bases,
            11
        );
        assert_eq!(
            UnitRule::for_bases(Some(COUNT_LIMIT)).max_bases,
            MAX_UNIT_BASES
        );
        assert_eq!(
            UnitRule::for_bases(Some(u64::MAX)).max_bases,
            MAX_UNIT_BASES
        );
    }

    /// The rule follows the records, not the file: the same records wrapped otherwise, or
    /// gzip-compressed, give the same count.
    #[test]
    fn bases_are_counted_from_the_records() {
        use flate2::write::GzEncoder;
        let dir = tempfile::tempdir().unwrap();
        let mut plain = Vec::new();
        let mut wide = Vec::new();
        for i in 0..50 {
            let seq = b"ACGTN".repeat(30 + i);
            writeln!(plain, ">r{i} x").unwrap();
            writeln!(wide, ">r{i} x").unwrap();
            for line in seq.chunks(60) {
                plain.extend_from_slice(line);
                plain.push(b'\n');
            }
            wide.extend_from_slice(&seq);
            wide.push(b'\n');
        }
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let want: u64 = (0..50).map(|i| 5 * (30 + i)).sum();
        for (name, bytes) in [("a.fa", plain), ("b.fa", wide), ("c.fa.gz", gz)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            assert_eq!(count_bases(&[path]).unwrap(), Some(want), "{name}");
        }
        assert_eq!(count_bases(&["-".into()]).unwrap(), None);
    }

    #[test]
    fn units_hold_whole_records_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [30, 40, 50, 200, 10, 10, 10, 95];
        let records: Vec<(String, usize)> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (format!("r{i}"), l))
            .collect();
        let path = write_fasta(dir.path(), &records);
        let got = units(&path, 100);
        let shape: Vec<Vec<usize>> = got
            .iter()
            .map(|u| u.records.iter().map(|r| r.seq.len()).collect())
            .collect();
        // 30+40 = 70, +50 > 100; 50 alone (+200 > 100); 200 alone; 10+10+10, +95 > 100; 95.
        assert_eq!(
            shape,
            vec![
                vec![30, 40],
                vec![50],
                vec![200],
                vec![10, 10, 10],
                vec![95]
            ]
        );
        let firsts: Vec<u64> = got.iter().map(|u| u.first_record).collect();
        assert_eq!(firsts, [0, 2, 3, 4, 7]);
        let indices: Vec<u64> = got.iter().map(|u| u.index).collect();
        assert_eq!(indices, [0, 1, 2, 3, 4]);
        assert_eq!(got[2].bases, 200);
        // The header is part of the identity; the same records give the same hashes.
        assert_eq!(got, units(&path, 100));
        let mut other = records.clone();
        other[1].0 = "r1x".into();
        let other_path = dir.path().join("other");
        std::fs::rename(write_fasta(dir.path(), &other), &other_path).unwrap();
        let changed = units(&other_path, 100);
        assert_ne!(changed[0].hash, got[0].hash);
        assert_eq!(changed[1].hash, got[1].hash);
    }

    #[test]
    fn shard_spec_parses() {
        assert_eq!(
            "2/7".parse::<ShardSpec>(),
            Ok(ShardSpec { index: 2, count: 7 })
        );
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "1/2/3"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
    }

    /// Shares within 5% of the mean with at least 100 records per shard, also for skewed
    /// length mixes (lognormal; many short reads with a few long contigs).
    #[test]
    fn shards_are_balanced_by_bases() {
        let mut rng = virnucpro_models::rng::Rng::new(11, 0);
        let mut normal = || {
            // Box-Muller from two uniforms.
            let (u, v) = (rng.next_f32().max(1e-7) as f64, rng.next_f32() as f64);
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        for count in [1u32, 2, 3, 7, 16, 32] {
            for mix in 0..3 {
                let n = 100 * count as usize;
                let lengths: Vec<u64> = (0..n)
                    .map(|i| match mix {
                        0 => 1000,
                        1 => (7.0 + 1.2 * normal()).exp().max(1.0) as u64,
                        _ if i % 20 == 0 => 50_000,
                        _ => 150,
                    })
                    .collect();
                // Units as the rule would cut them for an input of that many bases.
                let total: u64 = lengths.iter().sum();
                let rule = UnitRule::for_bases(Some(total));
                let mut unit_bases = Vec::new();
                let mut current = 0u64;
                for &l in &lengths {
                    if current > 0 && current + l > rule.max_bases {
                        unit_bases.push(current);
                        current = 0;
                    }
                    current += l;
                }
                unit_bases.push(current);
                let shard = assign_shards(&unit_bases, count);
                let mut loads = vec![0u64; count as usize];
                for (b, s) in unit_bases.iter().zip(&shard) {
                    loads[*s as usize] += b;
                }
                let mean = total as f64 / count as f64;
                for (s, &l) in loads.iter().enumerate() {
                    let off = (l as f64 - mean).abs() / mean;
                    assert!(
                        off <= 0.05,
                        "{count} shards, mix {mix}: shard {s} has {l} bases, mean {mean:.0}"
                    );
                }
            }
        }
    }
}
