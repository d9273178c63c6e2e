//! The content-addressable chunk cache: verified, uncompressed chunk bytes keyed by their sha256.
//!
//! Lazily fetched layer files arrive chunk by chunk. Each chunk is stored under the sha256 of its
//! *uncompressed* bytes (the TOC's `chunkDigest`), so a chunk shared by several layers or images is stored
//! once. The same store holds whole-file copies keyed by the file's own sha256 (the TOC's `digest`),
//! assembled by the caller from chunks, so a wholly cached file can be handed to the kernel for FUSE
//! passthrough; for a single-chunk file the chunk *is* the file and nothing extra is stored.
//!
//! Two tiers, one index:
//!
//! ```text
//! DIR/
//!   sha256/<first 2 hex>/<64 hex>   verified chunks and whole files, read-only, never partial
//!   tmp/<hex>.<pid>.<n>.tmp         in-flight writes; removed on failure and at open
//! ```
//!
//! - **disk**: every entry, capped at [`CacheConfig::disk_bytes`] with least-recently-used eviction at
//!   entry granularity; an entry with a live [`PinGuard`] is never evicted. The index is rebuilt from the
//!   files at [`ChunkStore::open`], recency from their access/modification times, so it survives restarts.
//! - **memory**: an LRU of hot entries bounded by [`CacheConfig::memory_bytes`]; always a subset of disk.
//!
//! Nothing unverified is ever returned: [`ChunkStore::insert`] checks the sha256 before writing, and a read
//! from disk checks it again, dropping a corrupt file and answering a miss.
//!
//! It knows nothing of registries, layer formats, HTTP or FUSE: callers fetch, decompress and assemble; the
//! cache stores and serves bytes. All methods are synchronous; those that may touch the disk (`open`,
//! `get` on a memory miss, `insert`, `verify`, `touch`) belong on a blocking thread.
//!
//! One store serves every lazy layer of a daemon (skiffd opens it at `ROOT/chunks`; the layers share it
//! through `fetch::SharedStore`), so a chunk two layers or images have in common is stored once. A
//! [`PinGuard`] keeps an entry from eviction while it is in use, e.g. as the backing file of a FUSE
//! passthrough open. Sizes are the `[cache]` section of skiffd's config ([`CacheConfig`]).

mod memory;
mod store;
mod tocs;

pub use store::{ChunkStore, PinGuard};
pub use tocs::TocCache;

use std::io;
use std::path::PathBuf;

use skiff_types::Digest;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Sizes of the two cache tiers; the `[cache]` section of the daemon's config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte budget of the in-memory LRU (sum of the cached entries' sizes). An entry larger than this is
    /// served from disk only.
    pub memory_bytes: u64,
    /// Cap on the bytes stored on disk; `None` (`false` in the config file) means unbounded.
    #[serde(deserialize_with = "crate::off::deserialize_size")]
    pub disk_bytes: Option<u64>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 256 * MIB,
            disk_bytes: Some(10 * GIB),
        }
    }
}

/// Counters and sizes of a [`ChunkStore`], for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes of the entries on disk (file sizes, not blocks).
    pub disk_bytes: u64,
    pub disk_entries: u64,
    /// Bytes of the entries held in memory.
    pub memory_bytes: u64,
    pub memory_entries: u64,
    /// `get` answered from memory.
    pub hits_memory: u64,
    /// `get` answered from disk (and verified).
    pub hits_disk: u64,
    /// `get` found nothing (including entries dropped as corrupt or missing).
    pub misses: u64,
    /// Entries written to disk by `insert` (an insert of a digest already stored is not counted).
    pub inserts: u64,
    /// Entries removed from disk to honour the cap (at open or after an insert).
    pub evictions: u64,
    /// Files removed because their bytes no longer matched their digest.
    pub corrupt_dropped: u64,
}

/// Failures of the chunk cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The bytes given to `insert` hash to something other than the digest they were inserted under.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A filesystem operation on `path` failed (including ENOSPC while writing; nothing partial is kept).
    #[error("chunk cache io on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The entry cannot be stored without exceeding the disk cap, because everything else that would have to
    /// go is pinned (or the entry alone is larger than the cap).
    #[error("chunk cache full: {needed} bytes do not fit under the {cap}-byte cap beside the pinned entries")]
    Full { needed: u64, cap: u64 },
}

impl CacheError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| CacheError::Io { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_pinned() {
        let config = CacheConfig::default();
        assert_eq!(config.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(config.disk_bytes, Some(10 * 1024 * 1024 * 1024));
    }

    #[test]
    fn config_parses_from_toml_with_defaults_and_rejects_unknown_fields() {
        let empty: CacheConfig = toml::from_str("").unwrap();
        assert_eq!(empty, CacheConfig::default());

        let set: CacheConfig = toml::from_str("memory_bytes = 1024\ndisk_bytes = 4096\n").unwrap();
        assert_eq!(
            set,
            CacheConfig {
                memory_bytes: 1024,
                disk_bytes: Some(4096),
            }
        );

        let err = toml::from_str::<CacheConfig>("memory = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let unbounded: CacheConfig = toml::from_str("disk_bytes = false\n").unwrap();
        assert_eq!(unbounded.disk_bytes, None);
        let err = toml::from_str::<CacheConfig>("disk_bytes = 0\n").unwrap_err();
        assert!(err.to_string().contains("write `false`"), "{err}");
    }

    #[test]
    fn config_from_json_can_be_unbounded() {
        let unbounded: CacheConfig = serde_json::from_str(r#"{"disk_bytes": null}"#).unwrap();
        assert_eq!(unbounded.disk_bytes, None);
        assert_eq!(unbounded.memory_bytes, CacheConfig::default().memory_bytes);
    }

    #[test]
    fn errors_read_well() {
        let full = CacheError::Full { needed: 10, cap: 5 };
        assert_eq!(
            full.to_string(),
            "chunk cache full: 10 bytes do not fit under the 5-byte cap beside the pinned entries"
        );
        let mismatch = CacheError::DigestMismatch {
            expected: Digest::of(b"a"),
            actual: Digest::of(b"b"),
        };
        assert!(mismatch
            .to_string()
            .starts_with("digest mismatch: expected sha256:"));
    }
}
