//! The cold-start harness (issue "Cold-start benchmark"): workloads, the modes that start them, and the
//! measurements of one start. It drives skiff and containerd the way a user does (their binaries) and
//! knows none of their internals.
//!
//! A [`Mode`] starts one image variant for one workload and reports [`StartTimes`]; the registry sits
//! behind a [`crate::link::ShapedLink`], whose counters give the bytes each start fetched.

pub mod overlayfs;
pub mod ready;
pub mod workloads;

use std::time::Duration;

use anyhow::Result;

pub use workloads::Workload;

/// How long each phase of one start took.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StartTimes {
    /// Fetching the image (a full pull, or a lazy pull's manifest, config and TOCs).
    pub pull: Duration,
    /// Creating the container (snapshot, spec).
    pub create: Duration,
    /// From starting the task to the workload's ready line.
    pub run: Duration,
}

impl StartTimes {
    pub fn total(&self) -> Duration {
        self.pull + self.create + self.run
    }
}

/// Whether a start finds nothing cached (fresh daemon state, page cache dropped) or what an earlier start
/// of the same image left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temperature {
    Cold,
    Warm,
}

/// One way of starting containers (a column of the results).
pub trait Mode {
    /// The name used in `--modes` and in the results.
    fn name(&self) -> &'static str;
    /// Starts `reference` (`HOST:PORT/repository:tag`) with the workload's command until its ready line,
    /// as container `id`, then stops and removes the container (keeping the image for a warm start).
    fn start(
        &mut self,
        reference: &str,
        workload: &Workload,
        id: &str,
        temperature: Temperature,
    ) -> Result<StartTimes>;
}

/// Longest a workload may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Drops the page cache, dentries and inodes (root), so a cold start reads from disk or the network.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| anyhow::anyhow!("drop the page cache (needs root): {e}"))
}
