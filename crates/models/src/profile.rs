//! Opt-in per-section timing of the encoders' forward passes: each named section synchronizes
//! the device before and after, so the times are the device's, at the cost of the overlap between
//! host and device. For finding where a forward pass spends its time in context (an op measured
//! alone can differ: caches, layouts). The caller makes a [`Profiler`], gives it to the model in
//! its options ([`crate::options::ModelOptions::profiler`]) and takes the report
//! ([`Profiler::take_report`]); `virnucpro bench` prints it (`VIRNUCPRO_PROFILE=1`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{Device, Result};

/// Accumulated device time per named section, for the models it was given to.
#[derive(Debug, Default)]
pub struct Profiler {
    table: Mutex<BTreeMap<&'static str, (f64, u64)>>,
    paused: AtomicBool,
}

impl Profiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Suspends the sections (no synchronization) while `paused`, e.g. to time a whole pass.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Runs `f`, timing it under `name` unless paused.
    pub fn section<T>(
        &self,
        name: &'static str,
        dev: &Device,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if self.paused.load(Ordering::Relaxed) {
            return f();
        }
        dev.synchronize()?;
        let t = Instant::now();
        let out = f()?;
        dev.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if let Ok(mut m) = self.table.lock() {
            let e = m.entry(name).or_insert((0.0, 0));
            e.0 += ms;
            e.1 += 1;
        }
        Ok(out)
    }

    /// The accumulated sections as a table (empty when nothing was timed), and clears them.
    pub fn take_report(&self) -> String {
        let Ok(mut m) = self.table.lock() else {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_reported_once_and_not_while_paused() -> Result<()> {
        let p = Profiler::new();
        p.section("a", &Device::Cpu, || Ok(()))?;
        p.pause(true);
        p.section("b", &Device::Cpu, || Ok(()))?;
        let r = p.take_report();
        assert!(r.contains("a ") && !r.contains("b "), "{r}");
        assert!(p.take_report().is_empty(), "taking the report clears it");
        assert!(Profiler::new().take_report().is_empty());
        Ok(())
    }
}
