//! skiff on its own, no containerd: a fresh skiffd (own root, so an empty chunk cache) per cold start;
//! `skiff image pull` (lazy for eStargz and zstd:chunked layers, downloaded and unpacked otherwise),
//! `skiff container create`, `skiff task start` until the ready line.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use skiff_tests::{cargo_bin, Skiffd};
use tempfile::TempDir;

use super::concurrent::{image_fetch, ImageFetch};
use super::ready::run_until_ready;
use super::{
    daemons_for, fresh_skiffd, LazyReads, Mode, StartTimes, Temperature, Workload, READY_TIMEOUT,
};

/// skiffd + the skiff CLI.
pub struct SkiffMode {
    background_fetch: bool,
    daemon: Option<(Skiffd, TempDir)>,
}

impl SkiffMode {
    pub fn new(background_fetch: bool) -> Self {
        SkiffMode {
            background_fetch,
            daemon: None,
        }
    }
}

/// `skiff --address SOCK ARGS…` that must succeed; returns how long it took.
pub(super) fn skiff(skiffd: &Skiffd, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let output = Command::new(cargo_bin("skiff")?)
        .arg("--address")
        .arg(skiffd.socket())
        .args(args)
        .output()
        .context("run skiff")?;
    if !output.status.success() {
        bail!(
            "skiff {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(started.elapsed())
}

impl Mode for SkiffMode {
    fn name(&self) -> &'static str {
        if self.background_fetch {
            "skiff"
        } else {
            "skiff-ondemand"
        }
    }

    fn stop(&mut self) {
        self.daemon = None;
    }

    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes> {
        let background_fetch = self.background_fetch;
        let (skiffd, _) = daemons_for(&mut self.daemon, temperature, || {
            fresh_skiffd(reference, background_fetch)
        })?;
        // The lazy layers' counters live as long as skiffd: a warm start counts from here.
        let fetched_before = match temperature {
            Temperature::Warm => image_fetch(skiffd, reference)?,
            Temperature::Cold => ImageFetch::default(),
        };
        let pull = skiff(skiffd, &["image", "pull", "--plain-http", reference])?;
        let mut create = vec!["container", "create", reference, id];
        create.extend(workload.command.iter().map(String::as_str));
        let create = skiff(skiffd, &create)?;
        let outcome = run_until_ready(
            Command::new(cargo_bin("skiff")?)
                .arg("--address")
                .arg(skiffd.socket())
                .args(["task", "start", id]),
            &workload.ready,
            READY_TIMEOUT,
        );
        let fetched = outcome
            .as_ref()
            .ok()
            .map(|_| image_fetch(skiffd, reference))
            .transpose();
        // Whatever happened, the container goes (the image stays for a warm start): killed, then the
        // attached `task start` (which deletes the task once the process is gone) is waited for.
        let _ = skiff(skiffd, &["task", "kill", "-s", "KILL", id]);
        let mut ready = outcome?;
        let lazy = fetched?
            .filter(|fetched| fetched.lazy_layers > 0)
            .map(|fetched| LazyReads {
                demand_bytes: (fetched.bytes_fetched - fetched.background_bytes)
                    .saturating_sub(fetched_before.bytes_fetched - fetched_before.background_bytes),
                read_bytes: fetched.bytes_read.saturating_sub(fetched_before.bytes_read),
            });
        let _ = ready.child.wait();
        let _ = skiff(skiffd, &["task", "rm", "-f", id]);
        skiff(skiffd, &["container", "rm", id])?;
        Ok(StartTimes {
            pull,
            create,
            run: ready.elapsed,
            ready_at: Some(ready.at),
            lazy,
        })
    }
}
