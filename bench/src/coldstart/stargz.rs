//! A peer to compare with: stargz-snapshotter, the remote snapshotter whose eStargz format skiff serves.
//! Per cold start a fresh `containerd-stargz-grpc` (own root: an empty cache) and a fresh containerd with
//! it as the `stargz` proxy snapshotter; `ctr-remote image rpull` (lazy for eStargz layers, unpacked by
//! containerd otherwise), `ctr container create --snapshotter stargz`, `ctr task start` until the ready
//! line — the same steps as `skiff-containerd`, with the other snapshotter.
//!
//! The mode runs when the daemon is found: `CONTAINERD_STARGZ_GRPC_BIN`, or `containerd-stargz-grpc` on
//! PATH. Debian ships stargz-snapshotter's library but not this daemon; `bench/peers/stargz/build.sh`
//! builds it from the Debian sources.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use skiff_tests::{ChildProcess, Containerd, ContainerdConfig, ProxyPlugin};
use tempfile::TempDir;

use super::{ContainerdMode, ContainerdSetup};

/// The daemon's name, on PATH or in [`BIN_VAR`].
pub const BINARY: &str = "containerd-stargz-grpc";
/// Names the daemon's binary when it is not on PATH.
pub const BIN_VAR: &str = "CONTAINERD_STARGZ_GRPC_BIN";

/// A running `containerd-stargz-grpc` with its own root, socket and config; dropping it stops it
/// (SIGTERM: it unmounts its layers), detaches what it left mounted and removes its directory.
pub struct StargzSnapshotter {
    process: Option<ChildProcess>,
    dir: TempDir,
    socket: PathBuf,
}

/// The daemon's config: no metrics, background fetching as asked, and `host` (the registry of the images
/// it mounts) reached over plain HTTP.
pub fn config_toml(host: &str, background_fetch: bool) -> String {
    let host = toml_quote(host);
    format!(
        "no_prometheus = true\n\
         no_background_fetch = {no_background}\n\
         \n\
         [[resolver.host.{host}.mirrors]]\n\
         host = {host}\n\
         insecure = true\n",
        no_background = !background_fetch,
    )
}

fn toml_quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The daemon, `CONTAINERD_STARGZ_GRPC_BIN` or `containerd-stargz-grpc` on PATH, or an error saying how
/// to get it (or `ctr-remote`, which the mode pulls with).
pub fn binary() -> Result<PathBuf> {
    skiff_tests::require(&["ctr-remote"])?;
    let found = match std::env::var_os(BIN_VAR) {
        Some(path) => skiff_tests::prereq::find_on_path(&path.to_string_lossy()),
        None => skiff_tests::prereq::find_on_path(BINARY),
    };
    found.with_context(|| {
        format!(
            "mode stargz needs stargz-snapshotter's daemon `{BINARY}` on PATH or in {BIN_VAR}; \
             `bash bench/peers/stargz/build.sh` builds it from Debian's sources"
        )
    })
}

impl StargzSnapshotter {
    /// Starts the daemon `binary` for images on `host`; waits until its socket accepts.
    pub fn start(binary: &Path, host: &str, background_fetch: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-bench-stargz-")
            .tempdir()
            .context("create the stargz snapshotter's temp dir")?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml(host, background_fetch))?;
        let socket = dir.path().join("stargz.sock");
        let process = ChildProcess::spawn_listening(
            BINARY,
            Command::new(binary)
                .arg("--address")
                .arg(&socket)
                .arg("--root")
                .arg(&root)
                .arg("--config")
                .arg(&config),
            &dir.path().join("stargz.log"),
            &socket,
        );
        let process = match process {
            Ok(process) => process,
            Err(e) => {
                skiff_tests::unmount_all_under(dir.path());
                return Err(e);
            }
        };
        Ok(StargzSnapshotter {
            process: Some(process),
            dir,
            socket,
        })
    }

    /// The snapshots gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last lines of the daemon's log.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.log_tail(40))
            .unwrap_or_default()
    }
}

impl Drop for StargzSnapshotter {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        for (mount, e) in skiff_tests::unmount_all_under(self.dir.path()) {
            eprintln!("{BINARY}: could not unmount {}: {e}", mount.display());
        }
    }
}

/// The daemons of one cold start; dropped in order: containerd (its tasks and mounts) before the
/// snapshotter.
pub struct Daemons {
    containerd: Containerd,
    snapshotter: StargzSnapshotter,
}

/// containerd + stargz-snapshotter as proxy snapshotter.
pub type StargzMode = ContainerdMode<Stargz>;

impl StargzMode {
    /// The daemon `binary` (see [`binary`]). With `background_fetch` it runs as it does by default
    /// (prefetch list, then the rest of each layer in the background); without, it fetches what readers
    /// and the prefetch list ask for.
    pub fn new(binary: PathBuf, background_fetch: bool) -> Self {
        ContainerdMode::with(Stargz {
            binary,
            background_fetch,
        })
    }
}

/// stargz-snapshotter behind containerd.
pub struct Stargz {
    binary: PathBuf,
    background_fetch: bool,
}

impl ContainerdSetup for Stargz {
    type Daemons = Daemons;

    fn name(&self) -> &'static str {
        "stargz"
    }

    fn start_daemons(&self, reference: &str) -> Result<Daemons> {
        let host = reference
            .split_once('/')
            .map(|(host, _)| host)
            .context("reference without a registry host")?;
        let snapshotter = StargzSnapshotter::start(&self.binary, host, self.background_fetch)?;
        let containerd = Containerd::start_with(ContainerdConfig {
            proxy_plugins: vec![ProxyPlugin::snapshotter("stargz", snapshotter.socket())],
            ..ContainerdConfig::default()
        })?;
        Ok(Daemons {
            containerd,
            snapshotter,
        })
    }

    fn containerd(daemons: &Daemons) -> &Containerd {
        &daemons.containerd
    }

    fn pull(&self, daemons: &Daemons, reference: &str) -> Result<Command> {
        let mut pull = Command::new("ctr-remote");
        pull.arg("-a").arg(daemons.containerd.socket()).args([
            "image",
            "rpull",
            "--plain-http",
            reference,
        ]);
        Ok(pull)
    }

    fn log(daemons: &Daemons) -> String {
        daemons.snapshotter.log()
    }

    fn snapshotter(&self) -> Option<&'static str> {
        Some("stargz")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_registry_as_plain_http() {
        let config: toml::Value = toml::from_str(&config_toml("127.0.0.1:5000", false)).unwrap();
        assert_eq!(config["no_background_fetch"].as_bool(), Some(true));
        let mirrors = config["resolver"]["host"]["127.0.0.1:5000"]["mirrors"]
            .as_array()
            .unwrap();
        assert_eq!(mirrors.len(), 1);
        assert_eq!(mirrors[0]["host"].as_str(), Some("127.0.0.1:5000"));
        assert_eq!(mirrors[0]["insecure"].as_bool(), Some(true));
    }
}
