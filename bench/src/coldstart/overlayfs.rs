//! The baseline a user would otherwise pick: a fresh containerd (own root, state and socket) with its
//! built-in overlayfs snapshotter, `ctr image pull` (a full pull: every layer downloaded and unpacked),
//! `ctr container create`, `ctr task start` until the ready line.

use std::time::Instant;

use anyhow::Result;
use skiff_tests::Containerd;

use super::{ctr_create_and_run, daemons_for, Mode, StartTimes, Temperature, Workload};

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
        let started = Instant::now();
        containerd.ctr_ok(&["image", "pull", "--plain-http", reference])?;
        let pull = started.elapsed();

        let (create, run, ready_at) =
            ctr_create_and_run(containerd, None, reference, id, workload)?;
        Ok(StartTimes {
            pull,
            create,
            run,
            ready_at: Some(ready_at),
            lazy: None,
        })
    }
}
