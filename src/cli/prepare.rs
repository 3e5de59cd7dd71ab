//! `virnucpro prepare`: GenBank files -> balanced, labelled training frames.

use std::path::PathBuf;

use virnucpro_train::prepare::{parse_input_arg, prepare, summary_table, PrepareOptions};

/// Make a training set: chunk viral and host GenBank records, keep the six-frame translations
/// that match an annotated CDS protein, and balance host against viral frames.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each input is a GenBank flat file (.gbff, gzip or not). Its frames form a group named after the
file (viral.1.1.genomic.gbff.gz -> viral.1.1.genomic); write GROUP=FILE to name it, so several
files can share a group. All viral frames are kept; host frames are sampled from the host groups
in proportion to their sizes until there are as many host as viral frames.

Writes DIR/frames.tsv (id, label, group, dna, protein) and DIR/summary.json (counts per group).
A record the GenBank parser rejects is skipped with a warning and counted (--strict: stop).

Example:
  virnucpro prepare --chunk-len 300 --out-dir train300 \\
      --viral viral.1.1.genomic.gbff.gz \\
      --host bacteria=bacteria.1.genomic.gbff.gz --host bacteria=bacteria.2.genomic.gbff.gz \\
      --host fungi=fungi.1.genomic.gbff.gz")]
pub struct Args {
    /// Viral GenBank file(s), `[GROUP=]FILE` (label 1).
    #[arg(long, value_name = "GBFF", num_args = 1.., required = true)]
    pub viral: Vec<String>,
    /// Host GenBank file(s), `[GROUP=]FILE` (label 0).
    #[arg(long, value_name = "GBFF", num_args = 1.., required = true)]
    pub host: Vec<String>,
    /// Chunk length in bases (300 or 500 for the published models).
    #[arg(long, value_name = "N")]
    pub chunk_len: usize,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Seed of the host sampling.
    #[arg(long, value_name = "S", default_value_t = 42)]
    pub seed: u64,
    /// Group name for every input given without `GROUP=` (default: its file name).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Stop at the first GenBank record the parser rejects. By default such a record (e.g. an
    /// NCBI WGS/TSA/TLS master record, which has no sequence) is skipped with a warning naming
    /// the file, record number and line, and counted in summary.json (`records_rejected`).
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let group = args.group.as_deref();
    let inputs: Vec<_> = args
        .viral
        .iter()
        .map(|v| parse_input_arg(v, 1, group))
        .chain(args.host.iter().map(|v| parse_input_arg(v, 0, group)))
        .collect();
    let opts = PrepareOptions {
        chunk_len: args.chunk_len,
        seed: args.seed,
        out_dir: args.out_dir,
        strict: args.strict,
    };
    let summary = prepare(&inputs, &opts)?;
    print!("{}", summary_table(&summary));
    Ok(())
}
