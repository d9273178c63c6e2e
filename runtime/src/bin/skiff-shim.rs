//! `skiff-shim`: the per-container shim. `start --task-dir DIR` launches `serve` detached and exits at
//! once; `serve --task-dir DIR` is the shim itself (see `skiff_runtime::shim`). Spawned by skiffd (or
//! `skiff_runtime::shim::Shim::spawn`), not meant to be run by hand.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "skiff-shim", version, about = "skiff's per-container shim")]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Launch the shim for a task dir in the background and exit.
    Start {
        #[arg(long)]
        task_dir: PathBuf,
    },
    /// Be the shim for a task dir (run by `start`).
    Serve {
        #[arg(long)]
        task_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Mode::Start { task_dir } => launch(&task_dir),
        Mode::Serve { task_dir } => serve(&task_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("skiff-shim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts `serve` with stdout inherited (the spawner reads the ready line from it) and stderr appended
/// to `shim.log`, and returns without waiting: `serve` is orphaned and re-parented at once.
fn launch(task_dir: &std::path::Path) -> anyhow::Result<()> {
    let task = skiff_runtime::task::TaskDir::new(task_dir);
    let log_path = task.shim_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("find the shim's own executable")?;
    Command::new(&exe)
        .arg("serve")
        .arg("--task-dir")
        .arg(task_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} serve", exe.display()))?;
    Ok(())
}

fn serve(task_dir: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    skiff_runtime::shim::server::serve(task_dir)
        .with_context(|| format!("shim for {}", task_dir.display()))
}
