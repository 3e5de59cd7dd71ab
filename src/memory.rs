//! The process's memory allocator: mimalloc (the binary's `#[global_allocator]`), told to keep
//! the memory it frees for reuse instead of handing it back to the OS.
//!
//! Why: a CPU forward pass allocates and frees tens of MB per layer (activations, packed rows,
//! products). glibc's malloc serves blocks that large with `mmap` and returns them with
//! `munmap`, and mimalloc by default returns freed memory after a second: every new block then
//! faults its pages in again and the kernel zeroes them: ESM2-650M at 8x168 on 2 cores took
//! ~600 000 page faults per forward pass and a fifth of its CPU time in the kernel
//! (docs/ARCHITECTURE.md, "Memory allocator"). With freed memory kept, a layer's blocks are
//! reused by the next layer and the faults are gone. The price: what a peak freed stays with the
//! process until it exits, so its resident memory is its peak, not its current, use.

use std::os::raw::c_long;

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// mimalloc's `mi_option_purge_delay` (milliseconds before freed memory goes back to the OS; -1:
/// never): its place in `mi_option_t`, the same in mimalloc v2 and v3. The crate exports no
/// constant for it.
const PURGE_DELAY: mi_option_t = 15;
/// mimalloc v3's default purge delay: what [`PURGE_DELAY`] holds unless `MIMALLOC_PURGE_DELAY`
/// set it. Any other value means the user chose one, or the option moved: then it is left alone.
const DEFAULT_PURGE_DELAY: c_long = 1000;

/// What [`keep_freed_memory`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreedMemory {
    /// Kept for reuse (the purge delay set to -1).
    Kept,
    /// The build uses the system's malloc (`--features system-alloc`): nothing was changed.
    System,
    /// Left as it was: the purge delay held this (ms) instead of mimalloc's default, because
    /// `MIMALLOC_PURGE_DELAY` set it (or this mimalloc numbers its options differently).
    Left(c_long),
}

impl std::fmt::Display for FreedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreedMemory::Kept => write!(f, "mimalloc, freed memory kept for reuse"),
            FreedMemory::System => write!(f, "the system's (built with --features system-alloc)"),
            FreedMemory::Left(ms) => write!(
                f,
                "mimalloc, freed memory returned to the OS after {ms} ms (MIMALLOC_PURGE_DELAY, \
                 or mimalloc's option numbering changed: CPU runs may be slower)"
            ),
        }
    }
}

/// Tells mimalloc to keep freed memory; call it first thing in `main`.
pub fn keep_freed_memory() -> FreedMemory {
    if cfg!(feature = "system-alloc") {
        return FreedMemory::System;
    }
    // SAFETY: reading and setting an option of mimalloc's is safe at any time; the option index
    // is checked against its known default first.
    unsafe {
        let now = mi_option_get(PURGE_DELAY);
        if now != DEFAULT_PURGE_DELAY && now != -1 {
            return FreedMemory::Left(now);
        }
        mi_option_set(PURGE_DELAY, -1);
    }
    FreedMemory::Kept
}

/// What the allocator does with freed memory now (for `doctor`).
pub fn freed_memory() -> FreedMemory {
    if cfg!(feature = "system-alloc") {
        return FreedMemory::System;
    }
    // SAFETY: as in `keep_freed_memory`.
    match unsafe { mi_option_get(PURGE_DELAY) } {
        -1 => FreedMemory::Kept,
        ms => FreedMemory::Left(ms),
    }
}

#[cfg(all(test, target_os = "linux", not(feature = "system-alloc")))]
mod tests {
    use super::*;
    use libmimalloc_sys::{mi_collect, mi_free, mi_malloc};

    /// This process's resident memory (bytes).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("resident pages in /proc/self/statm");
        pages * 4096
    }

    /// The option index is the purge delay: after `keep_freed_memory`, 256 MiB freed and left for
    /// longer than mimalloc's default delay stays resident. With the option left alone, the same
    /// steps take the process's resident memory back down by the whole block (checked).
    #[test]
    fn freed_memory_stays_resident() {
        assert_eq!(keep_freed_memory(), FreedMemory::Kept);
        assert_eq!(freed_memory(), FreedMemory::Kept);

        const SIZE: usize = 256 << 20;
        // SAFETY: a fresh block of SIZE bytes, written in bounds and freed once.
        unsafe {
            let p = mi_malloc(SIZE).cast::<u8>();
            assert!(!p.is_null());
            for i in (0..SIZE).step_by(4096) {
                p.add(i).write(1);
            }
            let before = resident();
            mi_free(p.cast());
            std::thread::sleep(std::time::Duration::from_millis(
                (DEFAULT_PURGE_DELAY as u64) * 3 / 2,
            ));
            mi_collect(true);
            let after = resident();
            assert!(
                after + SIZE / 2 > before,
                "mimalloc returned the freed block: resident {before} -> {after} bytes"
            );
        }
    }
}
