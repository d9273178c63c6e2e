//! skiff as containerd's remote snapshotter: a fresh skiffd (own root, so an empty chunk cache) and a
//! fresh containerd with skiffd as its `proxy_plugins` snapshotter `skiff` per cold start; `skiff image
//! rpull --containerd` (lazy for eStargz and zstd:chunked layers, unpacked by containerd otherwise),
//! `ctr container create --snapshotter skiff`, `ctr task start` until the ready line.
//!
//! skiffd reads lazy layers with its own registry settings: the mode writes a `hosts.toml` naming the
//! benchmark registry's host as plain HTTP.

use std::process::Command;

use anyhow::Result;
use skiff_tests::{cargo_bin, Containerd, ContainerdConfig, ProxyPlugin, Skiffd};
use tempfile::TempDir;

use super::{fresh_skiffd, ContainerdMode, ContainerdSetup};

/// The daemons of one cold start; dropped in order: containerd (its tasks and mounts) before skiffd.
pub struct Daemons {
    containerd: Containerd,
    skiffd: Skiffd,
    _config: TempDir,
}

/// containerd + skiffd as proxy snapshotter.
pub type SkiffContainerdMode = ContainerdMode<SkiffContainerd>;

impl SkiffContainerdMode {
    /// With `background_fetch` skiffd fetches the rest of each layer in the background (its default);
    /// without, what readers ask for alone.
    pub fn new(background_fetch: bool) -> Self {
        ContainerdMode::with(SkiffContainerd { background_fetch })
    }
}

/// skiffd behind containerd.
pub struct SkiffContainerd {
    background_fetch: bool,
}

impl ContainerdSetup for SkiffContainerd {
    type Daemons = Daemons;

    fn name(&self) -> &'static str {
        "skiff-containerd"
    }

    /// A fresh skiffd and a containerd that uses it as the `skiff` proxy snapshotter.
    fn start_daemons(&self, reference: &str) -> Result<Daemons> {
        let (skiffd, config) = fresh_skiffd(reference, self.background_fetch)?;
        let containerd = Containerd::start_with(ContainerdConfig {
            proxy_plugins: vec![ProxyPlugin::snapshotter("skiff", skiffd.socket())],
            ..ContainerdConfig::default()
        })?;
        Ok(Daemons {
            containerd,
            skiffd,
            _config: config,
        })
    }

    fn containerd(daemons: &Daemons) -> &Containerd {
        &daemons.containerd
    }

    fn pull(&self, daemons: &Daemons, reference: &str) -> Result<Command> {
        let mut pull = Command::new(cargo_bin("skiff")?);
        pull.args(["image", "rpull", "--containerd"])
            .arg(daemons.containerd.socket())
            .args(["--plain-http", reference]);
        Ok(pull)
    }

    fn log(daemons: &Daemons) -> String {
        daemons.skiffd.log()
    }

    fn snapshotter(&self) -> Option<&'static str> {
        Some("skiff")
    }
}
