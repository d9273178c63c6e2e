//! `skiff`: a ctr-like command line client of skiffd. It speaks only skiff's gRPC API (and, for
//! `snapshot`, containerd's snapshots.v1) over the daemon's unix socket and links nothing of the daemon (no
//! RocksDB, no FUSE). `image rpull` instead speaks
//! containerd's API and resolves the image itself with skiff-registry's client.

mod containers;
mod content;
mod credentials;
mod images;
mod namespaces;
mod output;
mod rpull;
mod run;
mod snapshots;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use skiff_api::v1;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "skiff: start containers from lazily pulled images"
)]
struct Cli {
    /// skiffd's gRPC socket.
    #[arg(long, global = true, env = "SKIFF_ADDRESS", default_value = skiff_api::DEFAULT_ADDRESS)]
    address: PathBuf,
    /// Namespace to act in.
    #[arg(short = 'n', long, global = true, env = "SKIFF_NAMESPACE", default_value = skiff_api::DEFAULT_NAMESPACE)]
    namespace: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage namespaces.
    #[command(subcommand, visible_alias = "ns")]
    Namespace(namespaces::NamespaceCommand),
    /// Pull, list, inspect and remove images.
    #[command(subcommand, visible_alias = "i")]
    Image(images::ImageCommand),
    /// List, inspect and read blobs in the content store.
    #[command(subcommand)]
    Content(content::ContentCommand),
    /// Create, list, inspect and remove containers.
    #[command(subcommand, visible_alias = "c")]
    Container(containers::ContainerCommand),
    /// Start, inspect, signal and delete tasks (running containers).
    #[command(subcommand, visible_alias = "t")]
    Task(tasks::TaskCommand),
    /// Run a container: pull the image if needed, create the container, start its task.
    Run(Box<run::RunArgs>),
    /// Manage snapshots: prepare, view, commit, remove, list, mount (keys are relative to the namespace;
    /// image layers are `skiff.image/<chain id>` in every namespace).
    #[command(subcommand, visible_aliases = ["snapshots", "sn"])]
    Snapshot(snapshots::SnapshotCommand),
    /// Print the client's and the daemon's versions.
    Version,
}

/// What every command needs: a channel to skiffd and the namespace to act in.
pub struct Ctx {
    pub channel: Channel,
    pub namespace: String,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // rpull talks to containerd, not to skiffd.
    let command = match cli.command {
        Command::Image(images::ImageCommand::Rpull(args)) => {
            return rpull::run(&cli.namespace, args).await
        }
        command => command,
    };
    let channel = skiff_api::connect(&cli.address).await?;
    let ctx = Ctx {
        channel,
        namespace: cli.namespace,
    };
    match command {
        Command::Namespace(command) => namespaces::run(&ctx, command).await,
        Command::Image(command) => images::run(&ctx, command).await,
        Command::Content(command) => content::run(&ctx, command).await,
        Command::Container(command) => containers::run(&ctx, command).await,
        Command::Task(command) => tasks::run(&ctx, command).await,
        Command::Run(args) => run::run(&ctx, *args).await,
        Command::Snapshot(command) => snapshots::run(&ctx, command).await,
        Command::Version => {
            let server = v1::version_client::VersionClient::new(ctx.channel.clone())
                .version(v1::VersionRequest {})
                .await
                .map_err(output::status)
                .context("version")?
                .into_inner();
            println!("Client:\n  Version: {}", env!("CARGO_PKG_VERSION"));
            println!("Server:\n  Version: {}", server.version);
            if !server.revision.is_empty() {
                println!("  Revision: {}", server.revision);
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("skiff: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A read of our stdin (forwarded to a container) may still be blocked in tokio's blocking pool; do
    // not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A container's exit code is passed on as ours, silently.
            if let Some(code) = err.downcast_ref::<tasks::ExitCode>() {
                return ExitCode::from(code.0);
            }
            eprintln!("skiff: {err:#}");
            ExitCode::FAILURE
        }
    }
}
