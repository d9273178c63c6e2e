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

use super::{containerd_start, daemons_for, fresh_skiffd, Mode, StartTimes, Temperature, Workload};

/// The daemons of one cold start; dropped in order: containerd (its tasks and mounts) before skiffd.
struct Daemons {
    containerd: Containerd,
    skiffd: Skiffd,
    _config: TempDir,
}

/// containerd + skiffd as proxy snapshotter.
pub struct SkiffContainerdMode {
    /// Fetch the rest of each layer in the background (skiffd's default); off measures on-demand reads
    /// alone.
    background_fetch: bool,
    daemons: Option<Daemons>,
}

impl SkiffContainerdMode {
    pub fn new(background_fetch: bool) -> Self {
        SkiffContainerdMode {
            background_fetch,
            daemons: None,
        }
    }
}

/// A fresh skiffd and a containerd that uses it as the `skiff` proxy snapshotter.
fn start_daemons(reference: &str, background_fetch: bool) -> Result<Daemons> {
    let (skiffd, config) = fresh_skiffd(reference, background_fetch)?;
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

impl Mode for SkiffContainerdMode {
    fn name(&self) -> &'static str {
        "skiff-containerd"
    }

    fn stop(&mut self) {
        self.daemons = None;
    }

    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes> {
        let background_fetch = self.background_fetch;
        let daemons = daemons_for(&mut self.daemons, temperature, || {
            start_daemons(reference, background_fetch)
        })?;
        containerd_start(
            &daemons.containerd,
            Command::new(cargo_bin("skiff")?)
                .args(["image", "rpull", "--containerd"])
                .arg(daemons.containerd.socket())
                .args(["--plain-http", reference]),
            || daemons.skiffd.log(),
            Some("skiff"),
            reference,
            id,
            workload,
        )
    }
}
