//! Output files that appear complete or not at all.
//!
//! An [`AtomicFile`] writes to a hidden temporary file beside its target
//! (`.<name>.tmp-<pid>-<random>`) and renames it over the target on [`AtomicFile::commit`], after
//! an fsync. Dropping it uncommitted (an error, a panic) removes the temporary file. Every live
//! temporary file is kept in a process-wide registry so that [`install_interrupt_handler`] can
//! remove them on Ctrl-C or SIGTERM before exiting with status 130. Outputs that belong together
//! are committed with [`commit_all`], which renames nothing until every file is written.
//!
//! ```no_run
//! use std::io::Write;
//! use virnucpro_atomic::{self as atomic, AtomicFile};
//! atomic::install_interrupt_handler()?;
//! let mut a = AtomicFile::create("out/a.txt")?;
//! let mut b = AtomicFile::create("out/b.txt")?;
//! writeln!(a, "hello")?;
//! writeln!(b, "world")?;
//! atomic::commit_all(vec![a, b])?; // both appear, or neither
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Exit status after an interrupt, as shells report death by SIGINT (128 + 2).
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// Temporary files not yet committed or removed, for the interrupt handler.
static LIVE_TEMPS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// A random value for temporary names: std's per-process random hash keys, which differ for
/// every `RandomState`.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Locks the registry. A panic while it was held cannot leave it inconsistent (every update is
/// a single insert or remove), so a poisoned lock is used as is.
fn registry() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    LIVE_TEMPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A file written under a temporary name and renamed to its target when complete.
/// Writes are buffered.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    /// `None` once committed.
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file for `target` in the target's directory (which must exist).
    /// Nothing appears at `target` until [`commit`](Self::commit).
    pub fn create(target: impl AsRef<Path>) -> io::Result<AtomicFile> {
        let target = target.as_ref().to_path_buf();
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("output path {} has no file name", target.display()),
            )
        })?;
        // Create and register under the lock, so an interrupt either sees the file or finds
        // it not yet created. `create_new` makes the name exclusive; a name already taken (by
        // another writer of the same target) is drawn again.
        let mut live = registry();
        let mut attempt = 0;
        let (temp, file) = loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".tmp-{}-{:016x}", std::process::id(), random_u64()));
            let temp = target.with_file_name(temp_name);
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => break (temp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(annotate(e, "cannot create temporary file", &temp)),
            }
        };
        live.get_or_insert_with(HashSet::new).insert(temp.clone());
        drop(live);

        Ok(AtomicFile {
            target,
            temp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The temporary path written to until commit.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes, fsyncs and renames the file to its target, replacing any file there.
    pub fn commit(self) -> io::Result<()> {
        commit_all(vec![self])
    }

    /// Flushes the buffer and fsyncs, so that the rename publishes complete data.
    fn finish_writing(&mut self) -> io::Result<()> {
        let writer = self.writer.as_mut().expect("not committed yet");
        writer
            .flush()
            .and_then(|()| writer.get_ref().sync_all())
            .map_err(|e| annotate(e, "cannot write", &self.target))
    }

    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.writer.as_mut().ok_or_else(|| {
            io::Error::other(format!("{} was already committed", self.target.display()))
        })
    }
}

/// Write errors name the target file (e.g. "cannot write out/a.txt: No space left on device").
impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.writer()?.write(buf);
        result.map_err(|e| annotate(e, "cannot write", &self.target))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.writer()?.write_all(buf);
        result.map_err(|e| annotate(e, "cannot write", &self.target))
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.writer()?.flush();
        result.map_err(|e| annotate(e, "cannot write", &self.target))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            // Not committed: the data is incomplete, remove it. Errors cannot be reported from
            // drop and a leftover hidden temp file is harmless.
            let _ = fs::remove_file(&self.temp);
            if let Some(live) = registry().as_mut() {
                live.remove(&self.temp);
            }
        }
    }
}

/// Commits `files` together: all are flushed and fsynced first, and only when every one of them
/// succeeded are they renamed to their targets, back to back. On error nothing is renamed and
/// all the temporary files are removed. An interrupt cannot fall between the renames.
pub fn commit_all(mut files: Vec<AtomicFile>) -> io::Result<()> {
    for file in &mut files {
        file.finish_writing()?;
    }
    // Hold the registry lock during the renames: the interrupt handler waits for them, so a
    // set of outputs is never published half.
    let mut live = registry();
    for file in &mut files {
        fs::rename(&file.temp, &file.target).map_err(|e| {
            annotate(
                e,
                &format!("cannot rename {} to", file.temp.display()),
                &file.target,
            )
        })?;
        file.writer = None;
        if let Some(live) = live.as_mut() {
            live.remove(&file.temp);
        }
    }
    drop(live);
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.target.parent()).collect();
    dirs.dedup();
    for dir in dirs {
        sync_dir(dir);
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a whole file or none (one [`AtomicFile`], committed).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let path = path.as_ref();
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .map_err(|e| annotate(e, "cannot write", path))?;
    file.commit()
}

/// Makes the renames durable. Best effort: not every platform or file system allows it.
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the temporary files that [`AtomicFile`]s for `names` in `dir` left behind when their
/// process was killed (`kill -9`, a power cut): `.<name>.tmp-<pid>-<random>`. Only call it while
/// holding the directory (e.g. its journal's lock), when no other process can be writing there.
/// Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let ours = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            names.iter().any(|n| {
                name.strip_prefix(&format!(".{n}.tmp-"))
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| pid != ours)
            })
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Directories [`create_output_dir`] made, outermost first.
static CREATED_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn created_dirs() -> MutexGuard<'static, Vec<PathBuf>> {
    CREATED_DIRS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `fs::create_dir_all`, remembering the directories that did not exist before, so that a run
/// that fails or is interrupted before committing anything does not leave them behind
/// ([`remove_created_dirs`]).
pub fn create_output_dir(dir: &Path) -> io::Result<()> {
    create_dir_recording(dir, &mut created_dirs())
}

/// Removes the directories [`create_output_dir`] created that are still empty, innermost first
/// (a directory holding any file, committed output or not, stays). Called on an error exit and
/// by the interrupt handler.
pub fn remove_created_dirs() {
    remove_empty_dirs(std::mem::take(&mut *created_dirs()));
}

fn create_dir_recording(dir: &Path, created: &mut Vec<PathBuf>) -> io::Result<()> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(dir)?;
    created.extend(missing.into_iter().rev());
    Ok(())
}

fn remove_empty_dirs(outermost_first: Vec<PathBuf>) {
    for dir in outermost_first.into_iter().rev() {
        let _ = fs::remove_dir(dir); // fails, and so keeps it, unless empty
    }
}

/// Removes every registered temporary file now. Returns how many were removed.
/// The interrupt handler calls this; a command may call it before exiting abnormally.
pub fn remove_live_temp_files() -> usize {
    let mut live = registry();
    let paths = live.take().unwrap_or_default();
    paths
        .iter()
        .filter(|path| fs::remove_file(path).is_ok())
        .count()
}

/// Installs a handler for Ctrl-C (SIGINT), SIGTERM and SIGHUP that removes the temporary files
/// of all uncommitted [`AtomicFile`]s and exits with status 130. Call it once at the start of a
/// command that writes outputs; later calls do nothing.
pub fn install_interrupt_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        ctrlc::set_handler(|| {
            // Keep the registry locked through exit so that no new file is registered, and no
            // commit starts, after the cleanup.
            let mut live = registry();
            for path in live.take().unwrap_or_default() {
                let _ = fs::remove_file(path);
            }
            remove_created_dirs();
            // Not eprintln!, which panics when stderr is a pipe whose reader died first (`| tee`
            // under a job's SIGTERM): the handler's thread would end and the run go on.
            let _ = writeln!(io::stderr(), "interrupted: incomplete outputs removed");
            std::process::exit(INTERRUPTED_EXIT_CODE);
        })
        .map_err(|e| e.to_string())
    });
    result
        .clone()
        .map_err(|e| io::Error::other(format!("cannot install the interrupt handler: {e}")))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn created_dirs_are_removed_only_when_empty() {
        // The process-wide list is shared with other tests: exercise its two halves on a list
        // of this test's own.
        let root = tempfile::tempdir().unwrap();
        let mut created = Vec::new();
        let empty = root.path().join("a/b/c");
        let used = root.path().join("kept");
        create_dir_recording(&empty, &mut created).unwrap();
        create_dir_recording(&used, &mut created).unwrap();
        write_atomic(used.join("x.txt"), b"x").unwrap();
        create_dir_recording(root.path(), &mut created).unwrap(); // existed: not recorded
        assert_eq!(created.len(), 4, "{created:?}");
        remove_empty_dirs(created);
        assert!(!root.path().join("a").exists());
        assert!(used.join("x.txt").exists());
        assert!(root.path().exists());
    }

    #[test]
    fn commit_publishes_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = AtomicFile::create(dir.path().join("a.txt")).unwrap();
        f.write_all(b"data").unwrap();
        assert!(!dir.path().join("a.txt").exists());
        let temp = f.temp_path().to_path_buf();
        assert!(temp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".a.txt.tmp-"));
        assert!(registry().as_ref().unwrap().contains(&temp));
        f.commit().unwrap();
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"data");
        assert!(!registry().as_ref().unwrap().contains(&temp));
        assert_eq!(names(dir.path()), ["a.txt"]);

        let mut g = AtomicFile::create(dir.path().join("b.txt")).unwrap();
        g.write_all(b"partial").unwrap();
        drop(g);
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn commit_all_replaces_existing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), "old").unwrap();
        let mut x = AtomicFile::create(dir.path().join("x")).unwrap();
        let mut y = AtomicFile::create(dir.path().join("y")).unwrap();
        x.write_all(b"new x").unwrap();
        y.write_all(b"new y").unwrap();
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"old");
        commit_all(vec![x, y]).unwrap();
        assert_eq!(fs::read(dir.path().join("x")).unwrap(), b"new x");
        assert_eq!(fs::read(dir.path().join("y")).unwrap(), b"new y");
        assert_eq!(names(dir.path()), ["x", "y"]);
    }

    #[test]
    fn stale_temps_of_other_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = AtomicFile::create(dir.path().join("a.txt")).unwrap();
        fs::write(dir.path().join(".a.txt.tmp-999999999-0"), "old").unwrap();
        fs::write(dir.path().join(".b.txt.tmp-999999999-3"), "old").unwrap();
        fs::write(dir.path().join("a.txt.tmp-1-0"), "not hidden: not ours").unwrap();
        assert_eq!(remove_stale_temps(dir.path(), &["a.txt", "b.txt"]), 2);
        assert!(mine.temp_path().exists(), "this process's own file stays");
        assert_eq!(names(dir.path()).len(), 2);
    }

    #[test]
    fn missing_directory_is_reported() {
        let err = AtomicFile::create("/nonexistent-dir/out.txt").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/.out.txt.tmp-"),
            "{err}"
        );
    }
}
