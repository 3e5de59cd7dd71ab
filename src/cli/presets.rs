//! `virnucpro presets`: the built-in presets and those of the presets file.

use std::path::PathBuf;

use virnucpro_assets::download::Cache;
use virnucpro_assets::presets::{self, PresetTable};

/// List the presets (built in and from the presets file): their models, chunk length and
/// classifier, and whether the classifier is already in the download cache.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Built-in presets:
  virnucpro-300, virnucpro-500: zhihan1996/DNABERT-S + facebook/esm2_t36_3B_UR50D + the published
  VirNucPro classifier for 300- or 500-bp chunks, downloaded from GitHub on first use and verified
  by its git blob hash.

The download cache is $VIRNUCPRO_CACHE, else $XDG_CACHE_HOME/virnucpro, else ~/.cache/virnucpro.
With VIRNUCPRO_OFFLINE=1 or HF_HUB_OFFLINE=1 nothing is downloaded.

Examples:
  virnucpro presets
  virnucpro presets --presets lab-presets.toml
  virnucpro presets --fetch virnucpro-500    # download now, e.g. before going offline")]
pub struct Args {
    /// Presets file (TOML). Default: $XDG_CONFIG_HOME/virnucpro/presets.toml, if it exists.
    #[arg(long, value_name = "FILE")]
    pub presets: Option<PathBuf>,

    /// Download and verify these presets' classifiers into the cache now (comma-separated
    /// names), then list.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    pub fetch: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let table = PresetTable::load(args.presets.as_deref())?;
    let cache = Cache::from_env(tracing::enabled!(tracing::Level::INFO));
    for name in &args.fetch {
        let preset = table.get(name)?;
        let cache = cache.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let path = presets::classifier_path(&preset.classifier, Some(name), cache)?;
        tracing::info!("{name}: classifier at {}", path.display());
    }
    print!("{}", presets::render_table(&table, cache.as_ref().ok()));
    Ok(())
}
