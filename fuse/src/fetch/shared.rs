//! What the lazy layers of one daemon share besides the chunk store: [`ReaderActivity`] (which readers
//! wait on the network now, and since when none has: background fetching stays off the link meanwhile)
//! and [`LayerTasks`] (every task the layers spawn, tracked, so shutdown cancels what nobody waits for and
//! waits for the rest). [`SharedStore`] bundles them with the store.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::ChunkStore;

/// The chunk store of a daemon's lazy layers, with the readers and the tasks of every layer that uses it.
/// Cheap to clone; clones share all three. Every layer opened on the same `SharedStore` yields to the
/// others' readers, and one shutdown ends all their work.
#[derive(Clone)]
pub struct SharedStore {
    store: ChunkStore,
    readers: Arc<ReaderActivity>,
    tasks: LayerTasks,
}

impl SharedStore {
    pub fn new(store: ChunkStore) -> Self {
        SharedStore {
            store,
            readers: Arc::new(ReaderActivity::new()),
            tasks: LayerTasks::default(),
        }
    }

    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Readers of any layer using this store that wait on the network.
    pub fn readers(&self) -> &ReaderActivity {
        &self.readers
    }

    /// The tasks of every layer using this store.
    pub fn tasks(&self) -> &LayerTasks {
        &self.tasks
    }
}

/// The tasks lazy layers spawn: span fetches, read replies, readahead and background fetching. Cheap to
/// clone; clones track the same tasks.
#[derive(Clone, Debug, Default)]
pub struct LayerTasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl LayerTasks {
    /// Work someone waits for (a read's reply, a span a reader joined): it runs to its end, which comes
    /// soon after shutdown since the fetches it waits on are cancelled.
    pub fn spawn<F>(&self, runtime: &Handle, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn_on(task, runtime)
    }

    /// Work nobody waits for (readahead, background fetching): it ends early at shutdown.
    pub fn spawn_cancellable<F>(&self, runtime: &Handle, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn_on(
            async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = task => {}
                }
            },
            runtime,
        )
    }

    /// Resolves once shutdown has begun (a fetch in flight gives up then).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Cancels what nobody waits for, then waits up to `grace` for every task to end; returns how many
    /// were still running then.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
        self.tracker.len()
    }
}

/// A store used by one layer alone (tests and tools); a daemon shares one [`SharedStore`].
impl From<ChunkStore> for SharedStore {
    fn from(store: ChunkStore) -> Self {
        SharedStore::new(store)
    }
}

impl Deref for SharedStore {
    type Target = ChunkStore;

    fn deref(&self) -> &ChunkStore {
        &self.store
    }
}

/// Readers waiting on the network, whichever layer they read: every lazy layer of a daemon shares the
/// link and the CPU that fetch and verify chunks, so one layer's background fetching holds back while a
/// reader of any layer waits.
#[derive(Debug)]
pub struct ReaderActivity {
    waiting: AtomicUsize,
    /// When a reader last stopped waiting, in nanoseconds since `created` (0: none has yet).
    last_wait_nanos: AtomicU64,
    created: Instant,
}

impl ReaderActivity {
    pub fn new() -> Self {
        ReaderActivity {
            waiting: AtomicUsize::new(0),
            last_wait_nanos: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// A reader waits on the network for as long as the returned guard lives.
    pub fn wait(&self) -> ReaderWait<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        ReaderWait(self)
    }

    /// Counts as a wait that just ended (a layer being mounted is one).
    pub fn touch(&self) {
        self.last_wait_nanos
            .fetch_max(self.now_nanos(), Ordering::AcqRel);
    }

    /// Whether some reader waits on the network now.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// How long readers have not waited on the network.
    pub fn quiet_for(&self) -> Duration {
        Duration::from_nanos(
            self.now_nanos()
                .saturating_sub(self.last_wait_nanos.load(Ordering::Acquire)),
        )
    }

    fn now_nanos(&self) -> u64 {
        self.created.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }
}

/// A reader waiting on the network (from [`ReaderActivity::wait`]); dropping it notes when it stopped.
pub struct ReaderWait<'a>(&'a ReaderActivity);

impl Drop for ReaderWait<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for ReaderActivity {
    fn default() -> Self {
        ReaderActivity::new()
    }
}
