//! `virnucpro merge`: the finished shards of one run into the files of one `predict` over the
//! whole input.
//!
//! Each shard directory holds the sealed journal of its units ([`SHARD_FILE`]). Merge checks that
//! the shards belong together (same fingerprint: inputs, models, options), that every share
//! `1..N` is there exactly once and holds every unit it should, then writes the files from the
//! units in input order with the same [`Assembler`] a single run uses: the bytes are those of one
//! `predict` over the whole input.
//!
//! [`SHARD_FILE`]: super::journal::SHARD_FILE

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::journal::SealedShard;
use super::units::{Assembler, OutputOptions, UnitCounts};
use crate::input::units::assign_shards;

/// The fingerprint entry that names the shard; the only one shards of a run differ in.
pub const SHARD_KEY: &str = "shard (--shard)";

/// What a merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    pub shards: u32,
    pub units: usize,
    pub counts: UnitCounts,
}

impl std::fmt::Display for MergeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "merged {} shards ({} work units): {} records ({} called virus, {} without a \
             scorable frame), {} chunks, {} frames",
            self.shards,
            self.units,
            self.counts.records,
            self.counts.virus_records,
            self.counts.records_without_frames,
            self.counts.chunks,
            self.counts.frames
        )
    }
}

/// Merges the shards in `dirs` into `out_dir`; see the module documentation.
pub fn merge(dirs: &[PathBuf], out_dir: &Path) -> anyhow::Result<MergeReport> {
    if dirs.is_empty() {
        bail!("give the shard directories to merge");
    }
    let mut shards = Vec::with_capacity(dirs.len());
    for dir in dirs {
        shards.push(SealedShard::open(dir)?);
    }
    let first = &shards[0];
    for other in &shards[1..] {
        let diff = first
            .fingerprint
            .differences(&other.fingerprint, &[SHARD_KEY]);
        if !diff.is_empty() {
            bail!(
                "{} and {} are shards of different runs; what differs:\n  {}\nMerge only the \
                 shards of one command (same inputs, models and options).",
                first.dir.display(),
                other.dir.display(),
                diff.join("\n  ")
            );
        }
    }
    let count = first.seal.shard.count;
    let mut by_index: BTreeMap<u32, usize> = BTreeMap::new();
    for (k, s) in shards.iter().enumerate() {
        if s.seal.shard.count != count {
            bail!(
                "{} holds shard {} but {} holds shard {}: shards of one run have the same N",
                first.dir.display(),
                first.seal.shard,
                s.dir.display(),
                s.seal.shard
            );
        }
        if let Some(&j) = by_index.get(&s.seal.shard.index) {
            bail!(
                "shard {} is given twice: {} and {}",
                s.seal.shard,
                shards[j].dir.display(),
                s.dir.display()
            );
        }
        by_index.insert(s.seal.shard.index, k);
    }
    let missing: Vec<String> = (1..=count)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "shard{} {} of this run {} missing; run `predict --shard` for {} and merge all {count}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "are" } else { "is" },
            if missing.len() > 1 { "them" } else { "it" },
        );
    }

    let plan = first.seal.plan.clone();
    for s in &shards[1..] {
        if s.seal.plan != plan {
            bail!(
                "{} and {} cut the input differently although their fingerprints agree; rerun \
                 the shards with --restart",
                first.dir.display(),
                s.dir.display()
            );
        }
    }
    let bases: Vec<u64> = plan.iter().map(|u| u.bases).collect();
    let assignment = assign_shards(&bases, count);
    for s in &shards {
        let want: Vec<u64> = plan
            .iter()
            .zip(&assignment)
            .filter(|(_, &a)| a + 1 == s.seal.shard.index)
            .map(|(u, _)| u.index)
            .collect();
        if s.seal.units != want {
            bail!(
                "{} (shard {}) does not hold the work units its share should: rerun its \
                 predict command with --restart",
                s.dir.display(),
                s.seal.shard
            );
        }
        for u in plan.iter().filter(|u| want.contains(&u.index)) {
            match s.has(u.index) {
                Some(e) if e.unit == *u => {}
                _ => bail!(
                    "{} (shard {}) is incomplete: work unit {} (records {}..{}) is missing or \
                     differs; rerun its predict command",
                    s.dir.display(),
                    s.seal.shard,
                    u.index,
                    u.first_record + 1,
                    u.first_record + u.records
                ),
            }
        }
    }

    let options = OutputOptions::from_fingerprint(&first.fingerprint)
        .with_context(|| format!("in {}", first.dir.display()))?;
    let mut out = Assembler::create(out_dir, &options)?;
    for (u, &a) in plan.iter().zip(&assignment) {
        let shard = &mut shards[by_index[&(a + 1)]];
        let unit = shard.read(u.index)?;
        out.push(&unit)?;
    }
    let report = MergeReport {
        shards: count,
        units: plan.len(),
        counts: *out.counts(),
    };
    out.commit()?;
    Ok(report)
}
