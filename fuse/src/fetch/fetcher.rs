//! `ChunkFetcher`: cache lookups, single-flight, span planning, bounded parallel Range requests,
//! decompression and verification of one layer's chunks.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, warn};

use super::{
    BlobSource, CorruptChunk, FetchConfig, FetchError, LayerStats, LayerTasks, SharedStore,
    SourceError,
};
use crate::cache::{CacheError, ChunkStore};
use crate::format::chunk::{decompress_chunk, Compression};
use crate::format::tree::ChunkRef;
use skiff_types::Digest;

/// Who is asking: a reader waiting now, the prioritized files at mount (likely read next, so they use the
/// readers' request budget), or background work that must never delay a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Demand,
    Prefetch,
    Background,
}

/// One Range request and the chunks it carries.
#[derive(Debug, Clone)]
struct Span {
    range: Range<u64>,
    chunks: Vec<ChunkRef>,
}

type SpanResult = Result<Arc<HashMap<Digest, Bytes>>, FetchError>;
type SpanFuture = Shared<BoxFuture<'static, SpanResult>>;

/// A span being fetched, as the chunks it carries see it.
#[derive(Clone)]
struct InFlight {
    fetch: SpanFuture,
    /// A reader (or the prefetch) waits on this span. A background span that a reader joins is
    /// promoted: it no longer yields to waiting readers (one of them waits on it) and takes a readers'
    /// request slot.
    urgent: Arc<AtomicBool>,
}

/// How often background work looks again whether readers still wait on the network.
const YIELD_POLL: Duration = Duration::from_millis(5);

pub struct ChunkFetcher {
    source: Arc<dyn BlobSource>,
    store: SharedStore,
    compression: Compression,
    config: FetchConfig,
    stats: Arc<LayerStats>,
    inflight: Mutex<HashMap<Digest, InFlight>>,
    demand_requests: Semaphore,
    background_requests: Semaphore,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ChunkFetcher {
    pub fn new(
        source: Arc<dyn BlobSource>,
        store: impl Into<SharedStore>,
        compression: Compression,
        config: FetchConfig,
        stats: Arc<LayerStats>,
    ) -> Arc<Self> {
        let store = store.into();
        let background = config
            .background
            .as_ref()
            .map_or(1, |b| b.parallel_requests.max(1));
        // The mount counts as a reader's wait: background work waits for a quiet spell after it.
        store.readers().touch();
        Arc::new(ChunkFetcher {
            demand_requests: Semaphore::new(config.parallel_requests.max(1)),
            background_requests: Semaphore::new(background),
            source,
            store,
            compression,
            config,
            stats,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &ChunkStore {
        self.store.store()
    }

    /// Where this layer's tasks are tracked (shared with every layer of the store).
    pub fn tasks(&self) -> &LayerTasks {
        self.store.tasks()
    }

    pub fn stats(&self) -> &Arc<LayerStats> {
        &self.stats
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Chunks whose bytes are not in the cache now (no IO beyond the cache's index).
    pub fn missing(&self, chunks: &[ChunkRef]) -> Vec<ChunkRef> {
        chunks
            .iter()
            .filter(|c| !self.store.contains(&c.digest))
            .cloned()
            .collect()
    }

    /// The uncompressed bytes of every chunk, in order: from the cache, from a fetch already in flight,
    /// or fetched now in as few Range requests as the config allows.
    pub async fn get(
        self: &Arc<Self>,
        chunks: &[ChunkRef],
        priority: Priority,
    ) -> Result<Vec<Bytes>, FetchError> {
        let digests: Vec<Digest> = chunks.iter().map(|c| c.digest).collect();
        let mut found = self.lookup(digests.clone()).await?;

        let mut waits: Vec<(usize, SpanFuture)> = Vec::new();
        let mut landed: Vec<usize> = Vec::new();
        {
            let mut inflight = lock(&self.inflight);
            let mut to_fetch: Vec<ChunkRef> = Vec::new();
            let mut pending: Vec<usize> = Vec::new();
            let mut planned = HashSet::new();
            let mut hits = 0;
            for (i, chunk) in chunks.iter().enumerate() {
                let digest = digests[i];
                if found[i].is_some() {
                    hits += 1;
                } else if let Some(span) = inflight.get(&digest) {
                    hits += 1;
                    if priority != Priority::Background {
                        span.urgent.store(true, Ordering::Release);
                    }
                    waits.push((i, span.fetch.clone()));
                } else if self.store.contains(&digest) {
                    // A fetch finished between our lookup and now.
                    landed.push(i);
                } else {
                    if planned.insert(digest) {
                        to_fetch.push(chunk.clone());
                    }
                    pending.push(i);
                }
            }
            LayerStats::add(&self.stats.chunk_hits, hits);
            LayerStats::add(&self.stats.chunk_misses, planned.len() as u64);
            for span in plan_spans(to_fetch, &self.config) {
                let digests_in_span: Vec<Digest> = span.chunks.iter().map(|c| c.digest).collect();
                let span = self.start_span(span, priority);
                for digest in digests_in_span {
                    inflight.insert(digest, span.clone());
                }
            }
            for i in pending {
                waits.push((i, inflight[&digests[i]].fetch.clone()));
            }
        }

        if !landed.is_empty() {
            let again = self
                .lookup(landed.iter().map(|&i| digests[i]).collect())
                .await?;
            for (i, bytes) in landed.into_iter().zip(again) {
                found[i] = bytes;
            }
        }

        if !waits.is_empty() {
            let _waiting = (priority == Priority::Demand).then(|| self.store.readers().wait());
            let started = Instant::now();
            for (i, fetch) in waits {
                let fetched = fetch.await?;
                found[i] = fetched.get(&digests[i]).cloned();
            }
            if priority == Priority::Demand {
                LayerStats::add(
                    &self.stats.wait_nanos,
                    started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
                );
            }
        }

        found
            .into_iter()
            .zip(&digests)
            .map(|(bytes, digest)| {
                // Every span result holds all of its chunks (decode_span fails otherwise).
                bytes.ok_or(FetchError::Missing { digest: *digest })
            })
            .collect()
    }

    /// Cache lookups on the blocking pool (a disk hit reads and verifies a file).
    async fn lookup(&self, digests: Vec<Digest>) -> Result<Vec<Option<Bytes>>, FetchError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            digests
                .iter()
                .map(|d| store.get(d))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|_| FetchError::Cancelled)?
        .map_err(|err| FetchError::Cache(Arc::new(err)))
    }

    /// Starts fetching a span in its own task, so it completes (and lands in the cache) even if every
    /// reader that wanted it goes away.
    fn start_span(self: &Arc<Self>, span: Span, priority: Priority) -> InFlight {
        let this = Arc::clone(self);
        let urgent = Arc::new(AtomicBool::new(priority != Priority::Background));
        let promoted = Arc::clone(&urgent);
        let tasks = self.store.tasks();
        let task = tasks.spawn(&tokio::runtime::Handle::current(), async move {
            let result = tokio::select! {
                result = this.fetch_span(&span, priority, &promoted) => result,
                () = this.store.tasks().cancelled() => Err(FetchError::Cancelled),
            };
            let mut inflight = lock(&this.inflight);
            for chunk in &span.chunks {
                inflight.remove(&chunk.digest);
            }
            result
        });
        let fetch = task
            .map(|joined| joined.unwrap_or(Err(FetchError::Cancelled)))
            .boxed()
            .shared();
        InFlight { fetch, urgent }
    }

    async fn fetch_span(&self, span: &Span, priority: Priority, urgent: &AtomicBool) -> SpanResult {
        let attempts = self.config.attempts.max(1);
        let mut last_error = FetchError::Cancelled;
        for attempt in 1..=attempts {
            if attempt > 1 {
                LayerStats::add(&self.stats.retries, 1);
                tokio::time::sleep(Duration::from_millis(50 << (attempt - 2).min(4))).await;
            }
            let received = {
                let _permit = self.request_permit(priority, urgent).await?;
                LayerStats::add(&self.stats.requests, 1);
                self.source.read_range(span.range.clone()).await
            };
            let expected_len = span.range.end - span.range.start;
            let received = received.and_then(|bytes| {
                if bytes.len() as u64 == expected_len {
                    Ok(bytes)
                } else {
                    Err(SourceError::ShortRead {
                        expected: expected_len,
                        got: bytes.len() as u64,
                    })
                }
            });
            let bytes = match received {
                Ok(bytes) => bytes,
                Err(source) => {
                    warn!(blob = %self.source.describe(), start = span.range.start, end = span.range.end,
                          attempt, error = %source, "range read failed");
                    last_error = FetchError::Source {
                        blob: self.source.describe(),
                        start: span.range.start,
                        end: span.range.end,
                        source,
                    };
                    continue;
                }
            };
            LayerStats::add(&self.stats.bytes_fetched, bytes.len() as u64);
            // Background work a reader came to wait on counts as the reader's.
            if priority == Priority::Prefetch
                || (priority == Priority::Background && !urgent.load(Ordering::Acquire))
            {
                LayerStats::add(&self.stats.background_bytes, bytes.len() as u64);
            }
            debug!(blob = %self.source.describe(), start = span.range.start, len = bytes.len(),
                   chunks = span.chunks.len(), ?priority, "fetched span");

            let store = self.store.clone();
            let stats = Arc::clone(&self.stats);
            let compression = self.compression;
            let chunks = span.chunks.clone();
            let start = span.range.start;
            let decoded = tokio::task::spawn_blocking(move || {
                decode_span(&store, &stats, compression, start, &bytes, &chunks)
            })
            .await
            .map_err(|_| FetchError::Cancelled)?;
            match decoded {
                Ok(map) => return Ok(Arc::new(map)),
                Err(DecodeError::Cache(err)) => return Err(FetchError::Cache(Arc::new(err))),
                Err(DecodeError::Corrupt(digest, reason)) => {
                    warn!(blob = %self.source.describe(), %digest, attempt, error = %reason,
                          "chunk failed verification; fetching again");
                    last_error = FetchError::Corrupt {
                        blob: self.source.describe(),
                        digest,
                        attempts: attempt,
                        source: Arc::new(reason),
                    };
                }
            }
        }
        Err(last_error)
    }

    /// A request slot. Background work takes one only while no reader waits on the network, unless a
    /// reader waits on this very span (`urgent`): then it takes a reader's slot, as the reader would have.
    async fn request_permit(
        &self,
        priority: Priority,
        urgent: &AtomicBool,
    ) -> Result<SemaphorePermit<'_>, FetchError> {
        let demand = || async {
            self.demand_requests
                .acquire()
                .await
                .map_err(|_| FetchError::Cancelled)
        };
        if priority != Priority::Background {
            return demand().await;
        }
        let quiet = Duration::from_millis(
            self.config
                .background
                .as_ref()
                .map_or(0, |background| background.quiet_ms),
        );
        // How much longer readers have to stay off the network before background work may go.
        let readers = self.store.readers();
        let quiet_left = || quiet.saturating_sub(readers.quiet_for());
        let readers_wait = || readers.waiting();
        loop {
            if urgent.load(Ordering::Acquire) {
                return demand().await;
            }
            if readers_wait() {
                tokio::time::sleep(YIELD_POLL).await;
                continue;
            }
            let left = quiet_left();
            if !left.is_zero() {
                // Short naps: a reader joining this span makes it urgent meanwhile.
                tokio::time::sleep(left.min(YIELD_POLL * 10)).await;
                continue;
            }
            let permit = self
                .background_requests
                .acquire()
                .await
                .map_err(|_| FetchError::Cancelled)?;
            if urgent.load(Ordering::Acquire) || (!readers_wait() && quiet_left().is_zero()) {
                return Ok(permit);
            }
        }
    }
}

enum DecodeError {
    Corrupt(Digest, CorruptChunk),
    Cache(CacheError),
}

/// Decompresses and verifies every chunk of a fetched span and stores it. A chunk that does not
/// verify fails the whole span (it is fetched again); a cache that cannot store (disk full) does not
/// fail the read: verified bytes are still served. A chunk the store already holds was fetched twice
/// (`duplicate_fetches`).
fn decode_span(
    store: &ChunkStore,
    stats: &LayerStats,
    compression: Compression,
    start: u64,
    bytes: &[u8],
    chunks: &[ChunkRef],
) -> Result<HashMap<Digest, Bytes>, DecodeError> {
    let mut decoded = HashMap::with_capacity(chunks.len());
    for chunk in chunks {
        let digest = chunk.digest;
        let from = (chunk.compressed.start - start) as usize;
        let to = (chunk.compressed.end - start) as usize;
        let data = decompress_chunk(compression, &bytes[from..to], chunk.size)
            .map_err(|err| DecodeError::Corrupt(digest, CorruptChunk::Decompress(err)))?;
        let actual = Digest::of(&data);
        if actual != digest {
            return Err(DecodeError::Corrupt(
                digest,
                CorruptChunk::Digest(CacheError::DigestMismatch {
                    expected: digest,
                    actual,
                }),
            ));
        }
        if store.contains(&digest) {
            LayerStats::add(&stats.duplicate_fetches, 1);
            debug!(%digest, "chunk fetched although it was cached already");
        }
        match store.insert(&digest, &data) {
            Ok(()) => {}
            Err(err @ CacheError::DigestMismatch { .. }) => return Err(DecodeError::Cache(err)),
            Err(err) => {
                warn!(%digest, error = %err, "cannot cache a verified chunk; serving it uncached")
            }
        }
        decoded.insert(digest, Bytes::from(data));
    }
    Ok(decoded)
}

/// Groups chunks into Range requests: sorted by blob offset, neighbours (across gaps of at most
/// `max_gap_bytes`) share a request of at most `max_request_bytes`; a larger chunk gets its own.
fn plan_spans(mut chunks: Vec<ChunkRef>, config: &FetchConfig) -> Vec<Span> {
    chunks.sort_by_key(|c| c.compressed.start);
    let mut spans: Vec<Span> = Vec::new();
    for chunk in chunks {
        if let Some(last) = spans.last_mut() {
            let end = last.range.end.max(chunk.compressed.end);
            if chunk.compressed.start <= last.range.end.saturating_add(config.max_gap_bytes)
                && end - last.range.start <= config.max_request_bytes
            {
                last.range.end = end;
                last.chunks.push(chunk);
                continue;
            }
        }
        spans.push(Span {
            range: chunk.compressed.clone(),
            chunks: vec![chunk],
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, end: u64, seed: u8) -> ChunkRef {
        ChunkRef {
            file_offset: 0,
            size: 1,
            compressed: start..end,
            digest: Digest::from_bytes([seed; 32]),
        }
    }

    fn config(max_request_bytes: u64, max_gap_bytes: u64) -> FetchConfig {
        FetchConfig {
            max_request_bytes,
            max_gap_bytes,
            ..FetchConfig::default()
        }
    }

    fn ranges(spans: &[Span]) -> Vec<Range<u64>> {
        spans.iter().map(|s| s.range.clone()).collect()
    }

    #[test]
    fn neighbours_share_a_request_in_blob_order() {
        let spans = plan_spans(
            vec![chunk(200, 300, 3), chunk(0, 100, 1), chunk(100, 200, 2)],
            &config(1000, 0),
        );
        assert_eq!(ranges(&spans), vec![0..300]);
        assert_eq!(spans[0].chunks.len(), 3);
    }

    #[test]
    fn small_gaps_are_bridged_large_ones_are_not() {
        let spans = plan_spans(
            vec![chunk(0, 100, 1), chunk(150, 200, 2), chunk(1000, 1100, 3)],
            &config(10_000, 64),
        );
        assert_eq!(ranges(&spans), vec![0..200, 1000..1100]);
    }

    #[test]
    fn requests_are_bounded_but_a_large_chunk_still_goes_alone() {
        let spans = plan_spans(
            vec![chunk(0, 100, 1), chunk(100, 200, 2), chunk(200, 900, 3)],
            &config(250, 0),
        );
        assert_eq!(ranges(&spans), vec![0..200, 200..900]);
    }
}
