//! What the lazy layers of one daemon share besides the chunk store: [`ReaderActivity`] (which readers
//! wait on the network now, and since when none has: background fetching stays off the link meanwhile)
//! and [`LayerTasks`] (every task the layers spawn, tracked, so shutdown cancels what nobody waits for and
//! waits for the rest), and [`TocBudget`] (the memory all TOCs being parsed at once may take).
//! [`SharedStore`] bundles them with the store.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{ChunkStore, TocCache};

/// The chunk store of a daemon's lazy layers, with the readers and the tasks of every layer that uses it.
/// Cheap to clone; clones share all three. Every layer opened on the same `SharedStore` yields to the
/// others' readers, and one shutdown ends all their work.
#[derive(Clone)]
pub struct SharedStore {
    store: ChunkStore,
    readers: Arc<ReaderActivity>,
    tasks: LayerTasks,
    toc_budget: TocBudget,
    tocs: Option<TocCache>,
}

impl SharedStore {
    pub fn new(store: ChunkStore) -> Self {
        SharedStore {
            store,
            readers: Arc::new(ReaderActivity::new()),
            tasks: LayerTasks::default(),
            toc_budget: TocBudget::new(DEFAULT_TOC_MEMORY_BYTES),
            tocs: None,
        }
    }

    /// The same, keeping the TOCs of the layers it opens in `tocs`.
    pub fn with_toc_cache(mut self, tocs: TocCache) -> Self {
        self.tocs = Some(tocs);
        self
    }

    /// Where the TOCs of opened layers are kept, if anywhere.
    pub fn toc_cache(&self) -> Option<&TocCache> {
        self.tocs.as_ref()
    }

    /// The same, with `budget` for parsing TOCs.
    pub fn with_toc_budget(mut self, budget: TocBudget) -> Self {
        self.toc_budget = budget;
        self
    }

    /// The memory every layer on this store may use to parse TOCs at once.
    pub fn toc_budget(&self) -> &TocBudget {
        &self.toc_budget
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
        if self.tracker.is_closed() {
            // Shutdown has begun: the task fails fast (its fetches are cancelled) and is not waited
            // for, or a container reading on would keep shutdown waiting for the whole grace period.
            return runtime.spawn(task);
        }
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

/// The default of `[lazy] toc_memory_bytes`.
pub const DEFAULT_TOC_MEMORY_BYTES: u64 = 256 << 20;

/// The estimated memory to parse a TOC and build its file tree, beyond the JSON itself: per byte of JSON
/// and per JSON object (an entry, or an entry's xattrs). Measured on generated TOCs (release build, peak
/// RSS over the JSON buffer): about 1,280 bytes per file entry with chunk digests (300 bytes of JSON
/// each) and 1,080 per directory entry (118 bytes of JSON); the estimate is 1.2–1.4 times that.
pub const TOC_PARSE_COST: (u64, u64) = (5, 1000);

/// The memory all TOCs being parsed at once may take: a TOC waits until its estimated cost
/// ([`TocBudget::cost`]) fits, and one that could never fit is refused. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TocBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u64,
}

/// What one TOC holds of the budget, until dropped.
#[derive(Debug)]
pub struct TocPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl TocBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = bytes.div_ceil(1024).clamp(1, u64::from(u32::MAX));
        TocBudget {
            kib: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> u64 {
        self.total_kib * 1024
    }

    /// The estimated memory to parse the TOC `json` and build its tree: the JSON, 2.5 times it again,
    /// and [`TOC_PARSE_COST`]`.1` per `{` (every entry is an object; a `{` inside a string only makes the
    /// estimate larger).
    pub fn cost(json: &[u8]) -> u64 {
        let objects = json.iter().filter(|&&b| b == b'{').count() as u64;
        let bytes = json.len() as u64;
        bytes
            .saturating_add(bytes.saturating_mul(TOC_PARSE_COST.0) / 2)
            .saturating_add(objects.saturating_mul(TOC_PARSE_COST.1))
    }

    /// Waits until parsing the TOC `json` fits; `Err(cost)` when it never can.
    pub async fn reserve(&self, json: &[u8]) -> Result<TocPermit, u64> {
        let cost = Self::cost(json);
        let kib = cost.div_ceil(1024).max(1);
        if kib > self.total_kib {
            return Err(cost);
        }
        let permit = Arc::clone(&self.kib)
            .acquire_many_owned(kib as u32)
            .await
            .expect("the TOC budget's semaphore is never closed");
        Ok(TocPermit(permit))
    }
}
