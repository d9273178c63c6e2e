//! The baseline a user would otherwise pick: a fresh containerd (own root, state and socket) with its
//! built-in overlayfs snapshotter, `ctr image pull` (a full pull: every layer downloaded and unpacked),
//! `ctr container create`, `ctr task start` until the ready line.

use std::process::Command;

use anyhow::Result;
use skiff_tests::Containerd;

use super::{containerd_start, daemons_for, Mode, StartTimes, Temperature, Workload};

/// containerd + overlayfs; a cold start gets a new containerd.
#[derive(Default)]
pub struct OverlayfsMode {
    containerd: Option<Containerd>,
}

impl OverlayfsMode {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Mode for OverlayfsMode {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn stop(&mut self) {
        self.containerd = None;
    }

    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes> {
        let containerd = daemons_for(&mut self.containerd, temperature, Containerd::start)?;
        containerd_start(
            containerd,
            Command::new("ctr")
                .arg("-a")
                .arg(containerd.socket())
                .args(["image", "pull", "--plain-http", reference]),
            || containerd.log(),
            None,
            reference,
            id,
            workload,
        )
    }
}
