//! skiff-keeper: holds the `/dev/fuse` descriptors of one skiffd root's lazy mounts (see the library's
//! header). skiffd starts it when none serves its socket; under systemd it runs beside skiffd and
//! survives `systemctl restart skiffd` (docs/skiffd.service).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "skiff-keeper",
    version,
    about = "holds skiffd's FUSE connections while skiffd restarts"
)]
struct Args {
    /// The unix socket to serve (skiffd uses ROOT/keeper.sock).
    #[arg(long, value_name = "SOCK")]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A terminal's hangup must not end it: the mounts it holds outlive the session that started skiffd.
    // SAFETY: setting a signal's disposition to "ignore" at startup, before any thread exists.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    match skiff_keeper::serve(&args.socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-keeper: {err}");
            ExitCode::FAILURE
        }
    }
}
