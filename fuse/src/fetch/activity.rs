//! Scheduling between layers: [`ReaderActivity`], which readers wait on the network now and since when
//! none has, and [`SharedStore`], the chunk store together with the readers of every layer that uses it.
//! Background fetching reads these to stay off the link while any reader waits.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::ChunkStore;

/// The chunk store of a daemon's lazy layers and the readers that share it. Cheap to clone; clones share
/// both. Every layer opened on the same `SharedStore` yields to the others' readers.
#[derive(Clone)]
pub struct SharedStore {
    store: ChunkStore,
    readers: Arc<ReaderActivity>,
}

impl SharedStore {
    pub fn new(store: ChunkStore) -> Self {
        SharedStore {
            store,
            readers: Arc::new(ReaderActivity::new()),
        }
    }

    pub fn store(&self) -> &ChunkStore {
        &self.store
    }

    /// Readers of any layer using this store that wait on the network.
    pub fn readers(&self) -> &ReaderActivity {
        &self.readers
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
