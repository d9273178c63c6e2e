//! [`DaemonTasks`]: the daemon's own spawned work — pulls, the streams of task output and content, and periodic
//! jobs (the keeper check, heap trimming) —
//! owned by one tracker and one cancellation token, so shutdown ends it in a known order (see
//! [`crate::daemon`]): streams stop at once, pulls stop at their next step and clean up after
//! themselves, and the daemon waits for them before it unmounts anything.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; clones own the same tasks.
#[derive(Clone, Debug, Default)]
pub struct DaemonTasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl DaemonTasks {
    /// Runs `task`, tracked; it should watch [`DaemonTasks::token`] to end at shutdown.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Runs `job` on the blocking pool every `period`, tracked, until shutdown begins.
    pub fn every(&self, period: Duration, job: impl Fn() + Send + Sync + 'static) {
        let job = std::sync::Arc::new(job);
        let stop = self.cancel.clone();
        self.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                let job = std::sync::Arc::clone(&job);
                let _ = tokio::task::spawn_blocking(move || job()).await;
            }
        });
    }

    /// Cancelled when shutdown begins.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Tells every task to stop (the first step of shutdown).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits up to `grace` for every task to end; returns how many were still running then.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.tracker.len()
    }
}
