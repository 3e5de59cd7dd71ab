//! The progress bar of the commands that embed a known number of items (`embed`, `extract`).

use std::io::IsTerminal;

/// A bar over `len` items called `what` ("sequences", "frames"), on an interactive terminal with
/// info logging on; `None` in logs and pipelines, where a bar would only add noise.
pub fn bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || !tracing::enabled!(tracing::Level::INFO) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let template = format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}}, eta {{eta}})"
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    Some(bar)
}
