//! The `virnucpro` command line: parses arguments and calls the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, told to keep freed memory (`virnucpro::memory` says why).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let freed = virnucpro::memory::keep_freed_memory();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose, args.quiet);
    tracing::debug!("memory allocator: {freed}");
    if let Err(err) = cli::set_threads(args.threads) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(args.command, args.attention) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not an error of ours.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // An output directory this run created and never filled is not left behind.
            virnucpro_atomic::remove_created_dirs();
            // `{:#}` prints the whole context chain on one line: what failed, where, why.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
