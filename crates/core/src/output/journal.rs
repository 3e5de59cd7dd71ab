//! The journal of a resumable run: which work units are finished and what they produced.
//!
//! `predict` appends one entry per finished unit to `<out dir>/.virnucpro.journal` while it
//! runs. Rerunning the same command after an interruption (Ctrl-C, SIGTERM, `kill -9`, a crash,
//! a power cut) reads it back and computes only the units it lacks; the final files are written
//! from the units in order either way, so they are byte-identical to an uninterrupted run.
//!
//! Layout: a 16-byte magic, then entries `[u32 payload length][u8 kind][payload][u64 xxh3 of
//! everything before it in the entry]`. The first entry holds the run's [`Fingerprint`]: every
//! input and option that can change an output byte. A rerun whose fingerprint differs is refused
//! with the differences named (or, with `--restart`, the journal is discarded), so results of
//! different runs are never mixed. An entry whose length or checksum does not hold (a write cut
//! short by a crash or power cut) ends the journal there: it and anything after it are dropped
//! and recomputed. Entries are flushed to the operating system as they are written (a killed
//! process loses nothing) and synced to disk every few seconds (a power cut loses at most the
//! last few seconds of work, detected as above).
//!
//! The journal is locked while a run uses it, so two runs cannot write into one directory. A
//! finished run removes it; a finished shard (`--shard I/N`) keeps it, sealed, as
//! [`SHARD_FILE`], the record that `virnucpro merge` reads.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;
use super::units::UnitOutput;
use crate::input::units::{ShardSpec, UnitId};

/// The journal of a run in progress.
pub const JOURNAL_FILE: &str = ".virnucpro.journal";
/// A finished shard's sealed journal: its units, read by `merge`.
pub const SHARD_FILE: &str = "virnucpro-shard.journal";
/// What a finished shard holds, for people: which shard of which input and options.
pub const SHARD_INFO_FILE: &str = "virnucpro-shard.json";

const MAGIC: &[u8; 16] = b"VIRNUCPRO-JRNL1\n";
/// Bytes around a payload: length, kind, checksum.
const FRAME: u64 = 4 + 1 + 8;
/// How often appended entries are synced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Header = 1,
    Unit = 2,
    Seal = 3,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Header),
            2 => Some(Kind::Unit),
            3 => Some(Kind::Seal),
            _ => None,
        }
    }
}

/// Where a finished unit's entry is in the journal file.
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo {
    pub unit: UnitId,
    pub halvings: u64,
    offset: u64,
    len: u64,
}

/// What a sealed shard says about itself (the last entry of [`SHARD_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSeal {
    pub shard: ShardSpec,
    /// Every unit of the whole input, in order (the plan all shards are cut from).
    pub plan: Vec<UnitId>,
    /// The units this shard holds.
    pub units: Vec<u64>,
}

/// What [`Journal::open`] found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Units finished by an earlier run and valid for this one.
    pub units: usize,
    /// A torn or corrupt entry was dropped at this byte offset.
    pub torn_at: Option<u64>,
    /// An earlier journal was discarded (`--restart`).
    pub discarded: bool,
    /// The run resumes from a finished shard's record.
    pub from_shard_file: bool,
}

/// An open, locked journal (or none at all, for benchmarks: [`Journal::disabled`]).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None`: journaling is off.
    file: Option<File>,
    entries: HashMap<u64, EntryInfo>,
    last_sync: Instant,
    dirty: bool,
    /// What this process wrote and how long it took (encoding, hashing, writing, syncing).
    written: JournalCost,
}

/// The journal's own cost in a run, for the log and the benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalCost {
    pub entries: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Journal {
    /// Opens the journal of `dir` for a run with `fingerprint`: a new one, or the one an earlier
    /// run of the same command left (also a finished shard's [`SHARD_FILE`]), whose finished
    /// units are then reused. A journal of a run with another fingerprint is an error naming the
    /// differences, unless `restart`, which discards it.
    pub fn open(
        dir: &Path,
        fingerprint: &Fingerprint,
        restart: bool,
    ) -> anyhow::Result<(Journal, OpenReport)> {
        let path = dir.join(JOURNAL_FILE);
        let shard_path = dir.join(SHARD_FILE);
        let mut report = OpenReport::default();
        if !path.exists() && shard_path.exists() {
            // A finished shard run again: its record becomes the journal (all units reused);
            // with another fingerprint it is refused, or discarded with --restart.
            let old = File::open(&shard_path)
                .and_then(|mut f| scan(&mut f))
                .with_context(|| format!("cannot read {}", shard_path.display()))?;
            let diff = old
                .fingerprint
                .map(|f| f.differences(fingerprint, &[]))
                .unwrap_or_else(|| vec!["the record is damaged".into()]);
            // The description goes with the seal; a new one is written when sealed again.
            let _ = fs::remove_file(dir.join(SHARD_INFO_FILE));
            if diff.is_empty() {
                fs::rename(&shard_path, &path).with_context(|| {
                    format!("cannot reopen the shard record {}", shard_path.display())
                })?;
                report.from_shard_file = true;
            } else if restart {
                fs::remove_file(&shard_path)
                    .with_context(|| format!("cannot remove {}", shard_path.display()))?;
                report.discarded = true;
            } else {
                bail!(
                    "{} holds a finished shard of another command; what differs:\n  {}\nGive \
                     this run another --out-dir, or add --restart to discard that shard.",
                    dir.display(),
                    diff.join("\n  ")
                );
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the journal {}", path.display()))?;
        lock(&file, &path, dir)?;
        let len = file.metadata()?.len();
        let mut journal = Journal {
            path: path.clone(),
            file: Some(file),
            entries: HashMap::new(),
            last_sync: Instant::now(),
            dirty: false,
            written: JournalCost::default(),
        };
        let file = journal.file.as_mut().expect("just opened");
        if len > 0 {
            let scan = scan(file)
                .with_context(|| format!("cannot read the journal {}", path.display()))?;
            let usable = match &scan.fingerprint {
                Some(old) => {
                    let diff = old.differences(fingerprint, &[]);
                    if diff.is_empty() {
                        true
                    } else if restart {
                        false
                    } else {
                        bail!(
                            "{} holds the unfinished run of another command; what differs:\n  \
                             {}\nRerun the earlier command to finish it, or add --restart to \
                             discard its {} finished work units and start this one.",
                            dir.display(),
                            diff.join("\n  "),
                            scan.entries.len()
                        );
                    }
                }
                // Not even a whole header: nothing to keep.
                None => false,
            };
            if usable {
                journal.entries = scan.entries;
                report.units = journal.entries.len();
                if scan.end < len {
                    report.torn_at = Some(scan.end);
                }
                file.set_len(scan.end)?;
                file.seek(SeekFrom::Start(scan.end))?;
                return Ok((journal, report));
            }
            report.discarded |= scan.fingerprint.is_some();
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(MAGIC)?;
        journal.write_entry(Kind::Header, &serde_json::to_vec(fingerprint)?)?;
        journal.sync()?;
        Ok((journal, report))
    }

    /// No journal: nothing is written and nothing can be resumed (benchmarks of the journal's
    /// cost).
    pub fn disabled(dir: &Path) -> Journal {
        Journal {
            path: dir.join(JOURNAL_FILE),
            file: None,
            entries: HashMap::new(),
            last_sync: Instant::now(),
            dirty: false,
            written: JournalCost::default(),
        }
    }

    /// What this process has written to the journal so far.
    pub fn cost(&self) -> JournalCost {
        self.written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The finished unit `index`, if this journal has it.
    pub fn get(&self, index: u64) -> Option<&EntryInfo> {
        self.entries.get(&index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The finished units, in no particular order.
    pub fn units(&self) -> impl Iterator<Item = &EntryInfo> {
        self.entries.values()
    }

    /// The most halvings of the batch budget a finished unit was computed with.
    pub fn most_halvings(&self) -> u64 {
        self.entries.values().map(|e| e.halvings).max().unwrap_or(0)
    }

    /// Reads a finished unit back.
    pub fn read(&mut self, index: u64) -> anyhow::Result<UnitOutput> {
        let e = *self
            .entries
            .get(&index)
            .with_context(|| format!("work unit {index} is not in the journal"))?;
        let file = self.file.as_mut().context("journaling is off")?;
        read_payload(file, &self.path, &e)
    }

    /// Appends a finished unit. The entry is handed to the operating system before this returns
    /// and synced to disk every few seconds.
    pub fn append(&mut self, unit: &UnitOutput) -> anyhow::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let payload = unit.encode();
        let offset = self.write_entry(Kind::Unit, &payload)?;
        self.entries.insert(
            unit.unit.index,
            EntryInfo {
                unit: unit.unit,
                halvings: unit.halvings,
                offset,
                len: payload.len() as u64,
            },
        );
        self.dirty = true;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        self.written.entries += 1;
        self.written.bytes += payload.len() as u64 + FRAME;
        self.written.seconds += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Writes an entry at the end; returns the payload's offset.
    fn write_entry(&mut self, kind: Kind, payload: &[u8]) -> anyhow::Result<u64> {
        let len = u32::try_from(payload.len()).context("a journal entry over 4 GiB")?;
        let file = self.file.as_mut().context("journaling is off")?;
        let start = file.seek(SeekFrom::End(0))?;
        let mut entry = Vec::with_capacity(payload.len() + FRAME as usize);
        entry.extend_from_slice(&len.to_le_bytes());
        entry.push(kind as u8);
        entry.extend_from_slice(payload);
        let sum = xxhash_rust::xxh3::xxh3_64(&entry);
        entry.extend_from_slice(&sum.to_le_bytes());
        file.write_all(&entry)
            .with_context(|| format!("cannot write the journal {}", self.path.display()))?;
        Ok(start + 5)
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        if let Some(file) = &self.file {
            file.sync_data()
                .with_context(|| format!("cannot write the journal {}", self.path.display()))?;
        }
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// The run is finished and its outputs committed: the journal goes.
    pub fn remove(self) -> anyhow::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove the journal {}", self.path.display()))
    }

    /// A shard is finished: seals the journal and keeps it as [`SHARD_FILE`] for `merge`, with
    /// [`SHARD_INFO_FILE`] beside it saying what it holds.
    pub fn seal(mut self, seal: &ShardSeal, fingerprint: &Fingerprint) -> anyhow::Result<PathBuf> {
        self.write_entry(Kind::Seal, &serde_json::to_vec(seal)?)?;
        self.sync()?;
        let mine: std::collections::HashSet<u64> = seal.units.iter().copied().collect();
        let held = seal.plan.iter().filter(|u| mine.contains(&u.index));
        let info = serde_json::json!({
            "shard": seal.shard.to_string(),
            "work_units": seal.units.len(),
            "records": held.clone().map(|u| u.records).sum::<u64>(),
            "bases": held.map(|u| u.bases).sum::<u64>(),
            "work_units_of_the_whole_input": seal.plan.len(),
            "records_of_the_whole_input": seal.plan.iter().map(|u| u.records).sum::<u64>(),
            "run": fingerprint.0,
            "merge": "virnucpro merge <the N shard directories> --out-dir <dir>",
        });
        let info_path = self.path.with_file_name(SHARD_INFO_FILE);
        virnucpro_atomic::write_atomic(&info_path, &serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("cannot write {}", info_path.display()))?;
        let target = self.path.with_file_name(SHARD_FILE);
        fs::rename(&self.path, &target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.path.display(),
                target.display()
            )
        })?;
        Ok(target)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let (true, Some(file)) = (self.dirty, &self.file) {
            let _ = file.sync_data();
        }
    }
}

fn lock(file: &File, path: &Path, dir: &Path) -> anyhow::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "another virnucpro run is writing to {} (its journal {} is locked); wait for it to \
             end or stop it, or give this run another --out-dir",
            dir.display(),
            path.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            // Some network file systems have no locks: go on without (one run per directory is
            // then the user's to ensure).
            tracing::debug!(
                "cannot lock {}: {e}; going on without a lock",
                path.display()
            );
            Ok(())
        }
    }
}

fn read_payload(file: &mut File, path: &Path, e: &EntryInfo) -> anyhow::Result<UnitOutput> {
    file.seek(SeekFrom::Start(e.offset))?;
    let mut payload = vec![0u8; e.len as usize];
    file.read_exact(&mut payload)
        .with_context(|| format!("cannot read the journal {}", path.display()))?;
    UnitOutput::decode(&payload).with_context(|| {
        format!(
            "work unit {} in the journal {} is corrupt",
            e.unit.index,
            path.display()
        )
    })
}

/// What a journal file holds up to its first bad entry.
struct Scan {
    fingerprint: Option<Fingerprint>,
    entries: HashMap<u64, EntryInfo>,
    seal: Option<ShardSeal>,
    /// Offset just past the last good entry.
    end: u64,
}

/// Reads entries until the end or the first entry that does not check out.
fn scan(file: &mut File) -> io::Result<Scan> {
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, &mut *file);
    let mut scan = Scan {
        fingerprint: None,
        entries: HashMap::new(),
        seal: None,
        end: 0,
    };
    let mut magic = [0u8; 16];
    if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok(scan);
    }
    let mut pos = MAGIC.len() as u64;
    let mut entry = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        entry.clear();
        entry.extend_from_slice(&head);
        entry.resize(5 + len + 8, 0);
        if r.read_exact(&mut entry[5..]).is_err() {
            break; // cut short
        }
        let sum = u64::from_le_bytes(entry[5 + len..].try_into().expect("8 bytes"));
        if xxhash_rust::xxh3::xxh3_64(&entry[..5 + len]) != sum {
            break;
        }
        let payload = &entry[5..5 + len];
        let ok = match (Kind::from_u8(head[4]), scan.fingerprint.is_some()) {
            (Some(Kind::Header), false) => {
                scan.fingerprint = serde_json::from_slice(payload).ok();
                scan.fingerprint.is_some()
            }
            (Some(Kind::Unit), true) => match UnitOutput::decode(payload) {
                Ok(u) => {
                    scan.entries.insert(
                        u.unit.index,
                        EntryInfo {
                            unit: u.unit,
                            halvings: u.halvings,
                            offset: pos + 5,
                            len: len as u64,
                        },
                    );
                    true
                }
                Err(_) => false,
            },
            (Some(Kind::Seal), true) => {
                scan.seal = serde_json::from_slice(payload).ok();
                scan.seal.is_some()
            }
            _ => false,
        };
        if !ok {
            break;
        }
        pos += FRAME + len as u64;
        scan.end = pos;
    }
    Ok(scan)
}

/// A finished shard as `merge` reads it.
#[derive(Debug)]
pub struct SealedShard {
    pub dir: PathBuf,
    pub fingerprint: Fingerprint,
    pub seal: ShardSeal,
    path: PathBuf,
    file: File,
    entries: HashMap<u64, EntryInfo>,
}

impl SealedShard {
    /// Reads the shard record of `dir`; errors say what is missing or unfinished.
    pub fn open(dir: &Path) -> anyhow::Result<SealedShard> {
        let path = dir.join(SHARD_FILE);
        if !path.exists() {
            if dir.join(JOURNAL_FILE).exists() {
                bail!(
                    "{} holds an unfinished run (its journal {} is there, not a finished shard \
                     record): rerun its `predict --shard` command to finish it",
                    dir.display(),
                    JOURNAL_FILE
                );
            }
            bail!(
                "{} holds no shard: {} is missing (was it written by `virnucpro predict \
                 --shard I/N`?)",
                dir.display(),
                SHARD_FILE
            );
        }
        let mut file =
            File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let s = scan(&mut file).with_context(|| format!("cannot read {}", path.display()))?;
        let (Some(fingerprint), Some(seal)) = (s.fingerprint, s.seal) else {
            bail!(
                "{} is damaged or incomplete (no valid header or seal); rerun that shard's \
                 predict command with --restart",
                path.display()
            );
        };
        if s.end != len {
            bail!(
                "{} is damaged after byte {}; rerun that shard's predict command with --restart",
                path.display(),
                s.end
            );
        }
        Ok(SealedShard {
            dir: dir.to_path_buf(),
            fingerprint,
            seal,
            path,
            file,
            entries: s.entries,
        })
    }

    pub fn has(&self, index: u64) -> Option<&EntryInfo> {
        self.entries.get(&index)
    }

    pub fn read(&mut self, index: u64) -> anyhow::Result<UnitOutput> {
        let e = *self.entries.get(&index).with_context(|| {
            format!("work unit {index} is missing from {}", self.path.display())
        })?;
        read_payload(&mut self.file, &self.path, &e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::units::UnitCounts;

    fn fp(chunk: usize) -> Fingerprint {
        let mut f = Fingerprint::default();
        f.set("chunk length", chunk).set("classifier", "abc");
        f
    }

    fn unit(index: u64) -> UnitOutput {
        UnitOutput {
            unit: UnitId {
                index,
                first_record: index * 2,
                records: 2,
                bases: 100,
                hash: 1000 + index,
            },
            counts: UnitCounts {
                records: 2,
                ..Default::default()
            },
            results: format!("row of unit {index}\n").into_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
        assert_eq!(report.units, 0);
        for i in [0, 2, 1] {
            j.append(&unit(i)).unwrap();
        }
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let full = fs::read(&path).unwrap();

        let (mut j, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
        assert_eq!((report.units, report.torn_at), (3, None));
        assert_eq!(j.read(2).unwrap(), unit(2));
        assert!(j.get(3).is_none());
        drop(j);

        // Cut inside the last entry: that unit is dropped, the others kept.
        for cut in [1, 8, 20] {
            fs::write(&path, &full[..full.len() - cut]).unwrap();
            let (mut j, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
            assert_eq!(report.units, 2, "cut {cut}");
            assert!(report.torn_at.is_some());
            assert!(j.get(1).is_none());
            // Appending after a torn tail gives a valid journal again.
            j.append(&unit(1)).unwrap();
            drop(j);
            let (mut j, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
            assert_eq!((report.units, report.torn_at), (3, None));
            assert_eq!(j.read(1).unwrap(), unit(1));
            drop(j);
            fs::write(&path, &full).unwrap();
        }

        // A flipped byte in the middle entry: it and what follows are dropped.
        let mut bad = full.clone();
        let at = full.len() - 30 - unit(1).encode().len() - 13;
        bad[at] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        let (_, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
        assert!(report.units < 3 && report.torn_at.is_some(), "{report:?}");
    }

    #[test]
    fn another_fingerprint_is_refused_or_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), &fp(500), false).unwrap();
        j.append(&unit(0)).unwrap();
        drop(j);
        let err = Journal::open(dir.path(), &fp(300), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chunk length: 500 before, 300 now") && err.contains("--restart"),
            "{err}"
        );
        let (j, report) = Journal::open(dir.path(), &fp(300), true).unwrap();
        assert!(report.discarded);
        assert_eq!(j.len(), 0);
    }

    #[test]
    fn a_second_run_in_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_j, _) = Journal::open(dir.path(), &fp(500), false).unwrap();
        let err = Journal::open(dir.path(), &fp(500), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another virnucpro run"), "{err}");
    }

    #[test]
    fn sealed_shards_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), &fp(500), false).unwrap();
        j.append(&unit(4)).unwrap();
        let seal = ShardSeal {
            shard: ShardSpec { index: 1, count: 2 },
            plan: vec![unit(4).unit],
            units: vec![4],
        };
        j.seal(&seal, &fp(500)).unwrap();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        let info: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(SHARD_INFO_FILE)).unwrap()).unwrap();
        assert_eq!(info["shard"], "1/2");
        assert_eq!(info["records"], 2);
        assert_eq!(info["run"]["chunk length"], "500");
        let mut s = SealedShard::open(dir.path()).unwrap();
        assert_eq!(s.seal, seal);
        assert_eq!(s.fingerprint, fp(500));
        assert_eq!(s.read(4).unwrap(), unit(4));
        // Rerunning the finished shard reuses its record.
        drop(s);
        let (j, report) = Journal::open(dir.path(), &fp(500), false).unwrap();
        assert!(report.from_shard_file);
        assert_eq!(j.len(), 1);
    }
}
