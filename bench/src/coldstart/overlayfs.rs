//! The baseline a user would otherwise pick: a fresh containerd (own root, state and socket) with its
//! built-in overlayfs snapshotter, `ctr image pull` (a full pull: every layer downloaded and unpacked),
//! `ctr container create`, `ctr task start` until the ready line.

use std::process::Command;

use anyhow::Result;
use skiff_tests::Containerd;

use super::{ContainerdMode, ContainerdSetup};

/// containerd + overlayfs; a cold start gets a new containerd.
pub type OverlayfsMode = ContainerdMode<Overlayfs>;

impl OverlayfsMode {
    pub fn new() -> Self {
        ContainerdMode::with(Overlayfs)
    }
}

impl Default for OverlayfsMode {
    fn default() -> Self {
        Self::new()
    }
}

/// containerd's own snapshotter: nothing beside containerd.
pub struct Overlayfs;

impl ContainerdSetup for Overlayfs {
    type Daemons = Containerd;

    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn start_daemons(&self, _reference: &str) -> Result<Containerd> {
        Containerd::start()
    }

    fn containerd(daemons: &Containerd) -> &Containerd {
        daemons
    }

    fn pull(&self, containerd: &Containerd, reference: &str) -> Result<Command> {
        let mut pull = Command::new("ctr");
        pull.arg("-a")
            .arg(containerd.socket())
            .args(["image", "pull", "--plain-http", reference]);
        Ok(pull)
    }

    fn log(containerd: &Containerd) -> String {
        containerd.log()
    }

    fn snapshotter(&self) -> Option<&'static str> {
        None
    }
}
