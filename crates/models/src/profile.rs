//! Opt-in per-section timing of the encoders' forward passes (`VIRNUCPRO_PROFILE=1`): each named
//! section synchronizes the device before and after, so the times are the device's, at the cost
//! of the overlap between host and device. For finding where a forward pass spends its time in
//! context (an op measured alone can differ: caches, layouts); `virnucpro bench` prints the table.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::{Device, Result};

/// Whether `VIRNUCPRO_PROFILE` is set (and not 0).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("VIRNUCPRO_PROFILE").is_ok_and(|v| v != "0"))
}

fn table() -> &'static Mutex<BTreeMap<&'static str, (f64, u64)>> {
    static T: OnceLock<Mutex<BTreeMap<&'static str, (f64, u64)>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Suspends the sections (no synchronization) while `paused`, e.g. to time a whole pass.
pub fn pause(paused: bool) {
    PAUSED.store(paused, std::sync::atomic::Ordering::Relaxed);
}

/// Runs `f`, timing it under `name` when profiling is on.
pub fn section<T>(name: &'static str, dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() || PAUSED.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    dev.synchronize()?;
    let t = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if let Ok(mut m) = table().lock() {
        let e = m.entry(name).or_insert((0.0, 0));
        e.0 += ms;
        e.1 += 1;
    }
    Ok(out)
}

/// The accumulated sections as a table (empty when profiling is off), and clears them.
pub fn take_report() -> String {
    let Ok(mut m) = table().lock() else {
        return String::new();
    };
    if m.is_empty() {
        return String::new();
    }
    let total: f64 = m.values().map(|v| v.0).sum();
    let mut s = format!(
        "{:<28} {:>10} {:>8} {:>10} {:>6}\n",
        "section", "total ms", "calls", "ms/call", "%"
    );
    for (name, (ms, n)) in m.iter() {
        s.push_str(&format!(
            "{name:<28} {ms:>10.2} {n:>8} {:>10.4} {:>5.1}%\n",
            ms / *n as f64,
            100.0 * ms / total
        ));
    }
    m.clear();
    s
}
