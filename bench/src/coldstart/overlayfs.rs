//! The baseline a user would otherwise pick: a fresh containerd (own root, state and socket) with its
//! built-in overlayfs snapshotter, `ctr image pull` (a full pull: every layer downloaded and unpacked),
//! `ctr container create`, `ctr task start` until the ready line.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use skiff_tests::Containerd;

use super::ready::run_until_ready;
use super::{drop_caches, Mode, StartTimes, Temperature, Workload, READY_TIMEOUT};

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

    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes> {
        if temperature == Temperature::Cold || self.containerd.is_none() {
            // Dropping the old one removes its root, and with it every cached layer.
            self.containerd = None;
            self.containerd = Some(Containerd::start()?);
            drop_caches()?;
        }
        let containerd = self.containerd.as_ref().context("containerd")?;
        let started = Instant::now();
        containerd.ctr_ok(&["image", "pull", "--plain-http", reference])?;
        let pull = started.elapsed();

        let started = Instant::now();
        // `--`: the command's own flags (`sh -c`) are not ctr's.
        let mut create = vec!["container", "create", reference, id, "--"];
        create.extend(workload.command.iter().map(String::as_str));
        containerd.ctr_ok(&create)?;
        let create = started.elapsed();

        let outcome = run_until_ready(
            Command::new("ctr")
                .arg("-a")
                .arg(containerd.socket())
                .args(["task", "start", id]),
            &workload.ready,
            READY_TIMEOUT,
        );
        // Whatever happened, the container goes (the image stays for a warm start).
        let _ = containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let mut ready = outcome?;
        let _ = ready.child.wait();
        let _ = containerd.ctr(&["task", "delete", "-f", id]);
        containerd.ctr_ok(&["container", "delete", id])?;
        Ok(StartTimes {
            pull,
            create,
            run: ready.elapsed,
        })
    }
}
