//! skiffd: the skiff daemon. Serves skiff's gRPC API on a unix socket over a root directory holding the
//! content store and the metadata database.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use skiff_daemon::config::Config;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "skiffd",
    version,
    about = "the skiff daemon: lazy-pulling image store and snapshotter"
)]
struct Args {
    /// TOML config file (see docs/config.md); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory [default: /var/lib/skiff].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Unix socket to serve the gRPC API on [default: /run/skiff/skiffd.sock].
    #[arg(long, value_name = "SOCK")]
    address: Option<PathBuf>,
    /// Log filter, e.g. `debug` [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// On SIGTERM unmount the lazy layers (those in use are detached) instead of leaving them to the
    /// keeper for the next skiffd.
    #[arg(long)]
    unmount_on_exit: bool,
}

fn main() -> ExitCode {
    skiff_daemon::malloc::tune();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("skiffd: {}", skiff_api::error_chain(&err));
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(address) = args.address {
        config.address = address;
    }
    config.unmount_on_exit |= args.unmount_on_exit;
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("skiffd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(skiff_daemon::daemon::run(config));
    // Never dropped: dropping a FUSE reply that was not sent answers the kernel with EIO, and a read
    // still in flight after a hand-over must reach the next skiffd instead (the kernel resends it).
    std::mem::forget(runtime);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiffd: {}", skiff_api::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}
