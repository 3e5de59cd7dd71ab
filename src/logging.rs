//! Which log events the command line shows: every crate of this workspace at the level `-v`/`-q`
//! choose, everything else (candle, tokenizers, the HTTP client) at warnings and errors only.

/// The `tracing` target of every crate of the workspace (its crate name, `-` as `_`), lowest
/// layer first. A crate added to the workspace belongs here, or its logs stay at warnings
/// whatever `-v` says.
pub const WORKSPACE_TARGETS: [&str; 7] = [
    "virnucpro_kernels",
    "virnucpro_atomic",
    "virnucpro_models",
    "virnucpro_assets",
    "virnucpro_core",
    "virnucpro_train",
    "virnucpro",
];

/// `EnvFilter` directives for `level` (`error`, `info`, `debug`, `trace`, ...): each workspace
/// target at `level`, other crates at `warn`.
pub fn filter_directives(level: &str) -> String {
    let mut d = String::from("warn");
    for target in WORKSPACE_TARGETS {
        d.push_str(&format!(",{target}={level}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` logs, as the filter of `filter_level` lets it through.
    fn shown(filter_level: &str, emit: impl FnOnce()) -> String {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter_directives(
                filter_level,
            )))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn every_workspace_crate_follows_the_chosen_level() {
        let text = shown("debug", || {
            tracing::debug!(target: "virnucpro_kernels::cuda", "from kernels");
            tracing::debug!(target: "virnucpro_atomic", "from atomic");
            tracing::debug!(target: "virnucpro_models::embed", "from models");
            tracing::debug!(target: "virnucpro_assets::hub", "from assets");
            tracing::debug!(target: "virnucpro_core::predict", "from core");
            tracing::debug!(target: "virnucpro_train::train", "from train");
            tracing::debug!(target: "virnucpro::doctor", "from the binary");
            tracing::debug!(target: "candle_core::cuda", "debug from candle");
            tracing::warn!(target: "candle_core::cuda", "warning from candle");
        });
        for crate_ in [
            "kernels",
            "atomic",
            "models",
            "assets",
            "core",
            "train",
            "the binary",
        ] {
            assert!(text.contains(&format!("from {crate_}")), "{crate_}: {text}");
        }
        // Other crates: warnings only.
        assert!(!text.contains("debug from candle"), "{text}");
        assert!(text.contains("warning from candle"), "{text}");
        // `-q`: errors only, from the workspace too.
        let quiet = shown("error", || {
            tracing::warn!(target: "virnucpro_models::classifier", "a warning");
            tracing::error!(target: "virnucpro_models::classifier", "an error");
        });
        assert!(
            !quiet.contains("a warning") && quiet.contains("an error"),
            "{quiet}"
        );
    }
}
