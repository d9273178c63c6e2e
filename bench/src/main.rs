//! `skiff-bench`: the benchmark binary. One subcommand per benchmark; see the library for what each
//! measures.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "skiff-bench", version, about = "skiff's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// FUSE micro-benchmarks: a lazily mounted eStargz layer against overlayfs over the same layer on
    /// local disk (cold read of one file, warm sequential and random reads, stat of every file).
    Fuse(skiff_bench::fuse_micro::FuseArgs),
    /// Checks a shaped network link: a whole-blob GET and small Range GETs from a real registry through
    /// the profile's rate and round-trip time, against what the profile predicts.
    LinkCheck(skiff_bench::link_check::LinkCheckArgs),
    /// Cold starts: every workload's image variants in every mode, cold and warm, through a shaped link
    /// in front of a registry; a table, results.csv (and results.json).
    Run(skiff_bench::coldstart::run::RunArgs),
    /// Concurrency: N containers of one image started at the same moment on a cold skiffd, against one;
    /// total ÷ single, registry bytes and duplicate chunk fetches; concurrent.csv.
    Concurrent(skiff_bench::coldstart::concurrent::ConcurrentArgs),
    /// Memory: skiffd's resident memory after lazily pulling images and fetching them whole in the
    /// background, against `[cache] memory_bytes` + 64 MiB + 8 MiB per 10,000 mounted files; memory.csv.
    Memory(skiff_bench::memory::MemoryArgs),
    /// Build the benchmark images and push them as plain gzip, eStargz, optimized eStargz and zstd:chunked.
    #[command(subcommand)]
    Corpus(skiff_bench::corpus::CorpusCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Fuse(args) => skiff_bench::fuse_micro::run(&args, runtime.handle()),
        Command::LinkCheck(args) => skiff_bench::link_check::run(&args, runtime.handle()),
        Command::Run(args) => skiff_bench::coldstart::run::run(&args, runtime.handle()),
        Command::Memory(args) => skiff_bench::memory::run(&args, runtime.handle()),
        Command::Concurrent(args) => {
            skiff_bench::coldstart::concurrent::run(&args, runtime.handle())
        }
        Command::Corpus(command) => skiff_bench::corpus::run(&command),
    }
}
