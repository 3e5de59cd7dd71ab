//! `virnucpro frames`: chunk and translate, write the kept frames (no models involved).

use std::path::PathBuf;

use virnucpro_core::frames::{self, FramesOptions};
use virnucpro_core::output::fasta::{NUCLEOTIDE_FILE, PROTEIN_FILE};

const EXAMPLES: &str = "\
Examples:
  # The frames the 300-bp model would classify:
  virnucpro frames contigs.fa.gz --chunk-len 300 --out-dir frames300/

  # Several inputs, one of them on stdin:
  zcat more.fa.gz | virnucpro frames a.fa b.fq.zst - --chunk-len 500 --out-dir out/

Inputs may be FASTA or FASTQ, plain or compressed (gzip, bzip2, xz, zstd; detected from the
content). Each record is cut into overlapping chunks of --chunk-len bases, every chunk is
translated in six frames, and a frame is kept when its protein is non-empty and has no stop
codon. Codons with letters other than A/C/G/T are dropped. Output headers are
<record>_chunk_<n><F|R><1-3>, in input order.";

/// Chunk records and translate them in six frames; write the frames that the classifier would
/// see (identified_nucleotide.fa, identified_protein.faa).
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// FASTA/FASTQ files, plain or gzip/bzip2/xz/zstd compressed; `-` reads stdin.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Chunk length in bases (300 or 500 for the published models).
    #[arg(short = 'l', long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chunk_len: u64,

    /// Directory for identified_nucleotide.fa and identified_protein.faa (created if missing;
    /// existing files are replaced only when the run succeeds).
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: PathBuf,

    /// Keep records that share an ID (the reference merges them silently); by default a
    /// repeated ID is an error.
    #[arg(long)]
    pub allow_duplicate_ids: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let chunk_len = usize::try_from(args.chunk_len)
        .map_err(|_| anyhow::anyhow!("--chunk-len {} is too large", args.chunk_len))?;
    let options = FramesOptions {
        chunk_len,
        allow_duplicate_ids: args.allow_duplicate_ids,
        // The pool's default size follows --threads (global), through RAYON_NUM_THREADS.
        threads: 0,
    };
    let summary = frames::run(&args.inputs, &args.out_dir, &options)?;
    let without = summary.records_without_frames;
    if without > 0 {
        let more = without as usize - summary.without_frames_examples.len();
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        tracing::warn!(
            "{without} {} no kept frame (every frame has a stop codon or no complete codon) and \
             will get no prediction: {}{more}",
            if without == 1 {
                "record has"
            } else {
                "records have"
            },
            summary.without_frames_examples.join(", ")
        );
    }
    tracing::info!(
        "{summary}; wrote {} and {}",
        args.out_dir.join(NUCLEOTIDE_FILE).display(),
        args.out_dir.join(PROTEIN_FILE).display()
    );
    Ok(())
}
