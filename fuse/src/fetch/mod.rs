//! Lazy fetching: blob sources, the fetch policy ([`policy`]: readahead, neighbour, directory and
//! background planning, pure functions), and the `ChunkFetcher` that turns "these chunks of this layer" into
//! verified uncompressed bytes with as few, as parallel and as shared registry requests as possible.
//!
//! - A miss becomes one Range GET per span of neighbouring chunks (bounded by `max_request_bytes`, and
//!   across small gaps up to `max_gap_bytes`: files that sit next to each other in the blob travel together).
//! - Single-flight: concurrent readers of one chunk share one fetch.
//! - Every chunk is decompressed and its sha256 checked (by the chunk store) before anyone sees it; a bad
//!   span is fetched again, then reported — never served.
//! - On-demand reads and background fetching have separate request budgets, and background work waits
//!   while readers wait on the network — readers of any layer sharing the chunk store, as the layers of
//!   an image share the link.

mod fetcher;
pub mod policy;
mod shared;
mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

pub use fetcher::{ChunkFetcher, Priority};
pub use shared::{
    LayerTasks, ReaderActivity, ReaderWait, SharedStore, TocBudget, TocPermit,
    DEFAULT_TOC_MEMORY_BYTES, TOC_PARSE_COST,
};
pub use source::{check_range, BlobSource, FileBlob, MemoryBlob};

use crate::cache::CacheError;
use crate::format::FormatError;
use skiff_types::Digest;

/// A blob source failed to deliver a range.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The remote end (a registry) failed; the source says how.
    #[error(transparent)]
    Remote(Arc<dyn std::error::Error + Send + Sync>),
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("range {start}..{end} is outside the blob ({size} bytes)")]
    OutOfBounds { start: u64, end: u64, size: u64 },
    #[error("the read was cancelled")]
    Cancelled,
    #[error("the source answered {got} bytes where {expected} were asked for")]
    ShortRead { expected: u64, got: u64 },
}

/// Why chunks could not be served. Cheap to clone: one failed fetch is reported to every reader
/// that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("fetching bytes {start}..{end} of {blob}")]
    Source {
        blob: String,
        start: u64,
        end: u64,
        #[source]
        source: SourceError,
    },
    #[error("chunk {digest} of {blob} is corrupt after {attempts} attempts")]
    Corrupt {
        blob: String,
        digest: Digest,
        attempts: u32,
        #[source]
        source: Arc<CorruptChunk>,
    },
    #[error("chunk cache")]
    Cache(#[source] Arc<CacheError>),
    #[error("the fetch was cancelled")]
    Cancelled,
    #[error("chunk {digest} was not delivered by its fetch")]
    Missing { digest: Digest },
}

/// What was wrong with a chunk's bytes.
#[derive(Debug, thiserror::Error)]
pub enum CorruptChunk {
    #[error("cannot decompress")]
    Decompress(#[source] FormatError),
    #[error("does not match its digest")]
    Digest(#[source] CacheError),
}

/// How a layer fetches; one section of skiffd's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Largest single Range request when merging neighbouring chunks.
    pub max_request_bytes: u64,
    /// Unneeded bytes between two needed chunks that are still fetched in the same request (a round
    /// trip costs more than a few KiB on any real link).
    pub max_gap_bytes: u64,
    /// Range requests in flight at once for readers.
    pub parallel_requests: usize,
    /// Attempts per span, and per read of a layer's footer and TOC when it is mounted, when the registry
    /// fails or sends bytes that do not verify.
    pub attempts: u32,
    /// Longest a read waits for the registry, in seconds: then it fails with EIO, whatever the registry
    /// does (a span otherwise costs up to `attempts` × the registry client's retries × its request
    /// timeout). The fetch may go on; a later read of the same bytes joins it or starts anew.
    pub read_timeout_secs: u64,
    /// Largest readahead after sequential reads, in bytes; a sequential read starts it at twice its own size, and each next one doubles it.
    pub max_readahead_bytes: u64,
    /// When a read misses, also fetch (beside it, unawaited) the chunks that follow it in the blob, up
    /// to this many compressed bytes: a starting program reads many small files that lie near each
    /// other in the layer, and each would otherwise cost a round trip. `None` (`false`) turns it off.
    #[serde(deserialize_with = "crate::off::deserialize")]
    pub neighbour_bytes: Option<u64>,
    /// Once reads have missed on an eighth of a directory's small files (two at least), also fetch
    /// (unawaited) the directory's other small files, up to this many compressed bytes: a program going
    /// through a directory, like an interpreter importing a package, would otherwise pay a round trip
    /// per file. `None` (`false`) turns it off.
    #[serde(deserialize_with = "crate::off::deserialize")]
    pub directory_bytes: Option<u64>,
    /// Fetch the prioritized files (before `.prefetch.landmark`) at mount.
    pub prefetch: bool,
    /// Fetch the rest of the layer in the background after mount; `None` (`false`) turns it off.
    #[serde(deserialize_with = "crate::off::deserialize")]
    pub background: Option<BackgroundConfig>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_request_bytes: 4 << 20,
            max_gap_bytes: 256 << 10,
            parallel_requests: 8,
            attempts: 3,
            read_timeout_secs: 60,
            max_readahead_bytes: 8 << 20,
            neighbour_bytes: Some(128 << 10),
            directory_bytes: Some(2 << 20),
            prefetch: true,
            background: Some(BackgroundConfig::default()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Range requests in flight at once for background fetching.
    pub parallel_requests: usize,
    /// Background requests start only after readers (of any layer sharing the chunk store) have not
    /// waited on the network for this long (milliseconds; a mount counts as a wait): a starting workload
    /// reads in bursts, and a background request on the link delays each of its reads.
    pub quiet_ms: u64,
    /// Largest background Range request: a reader's request queues behind at most
    /// `parallel_requests` of these.
    pub max_request_bytes: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            parallel_requests: 2,
            quiet_ms: 1000,
            max_request_bytes: 512 << 10,
        }
    }
}

/// Counters of one layer's fetching.
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Compressed bytes received from the source.
    pub bytes_fetched: AtomicU64,
    /// Range requests made.
    pub requests: AtomicU64,
    /// Chunks found in the cache (or in flight) when asked for.
    pub chunk_hits: AtomicU64,
    /// Chunks that had to be fetched.
    pub chunk_misses: AtomicU64,
    /// Time readers spent waiting for the network, in nanoseconds.
    pub wait_nanos: AtomicU64,
    /// Bytes fetched by prefetch and background fetching (part of `bytes_fetched`).
    pub background_bytes: AtomicU64,
    /// Spans refetched because the source failed or sent bytes that did not verify.
    pub retries: AtomicU64,
    /// Opens handed to the kernel as FUSE passthrough (reads then bypass skiff).
    pub passthrough_opens: AtomicU64,
    /// Uncompressed bytes returned to readers by FUSE read replies. Reads of a passthrough open go from
    /// the kernel straight to the cached file and are not counted.
    pub bytes_read: AtomicU64,
    /// Chunks a span fetch brought in that were already in the chunk store when the fetched bytes landed:
    /// fetched twice. Single-flight keeps this 0 within a layer; identical chunks fetched by two layers
    /// at the same moment can still count here.
    pub duplicate_fetches: AtomicU64,
}

/// A copy of `LayerStats` at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub bytes_fetched: u64,
    pub requests: u64,
    pub chunk_hits: u64,
    pub chunk_misses: u64,
    pub wait_nanos: u64,
    pub background_bytes: u64,
    pub retries: u64,
    pub passthrough_opens: u64,
    pub bytes_read: u64,
    pub duplicate_fetches: u64,
}

impl LayerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_fetched: get(&self.bytes_fetched),
            requests: get(&self.requests),
            chunk_hits: get(&self.chunk_hits),
            chunk_misses: get(&self.chunk_misses),
            wait_nanos: get(&self.wait_nanos),
            background_bytes: get(&self.background_bytes),
            retries: get(&self.retries),
            passthrough_opens: get(&self.passthrough_opens),
            bytes_read: get(&self.bytes_read),
            duplicate_fetches: get(&self.duplicate_fetches),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}
