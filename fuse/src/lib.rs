//! skiff's lazy layer filesystem crate: a layer is mounted after fetching only its footer and TOC, and file
//! bytes arrive on demand, chunk by chunk, verified and cached by content.
//!
//! - `format`: eStargz and zstd:chunked footers, TOCs and the file tree (pure, no IO).
//! - `cache`: the content-addressed chunk store (disk + memory LRU).
//! - `fetch`: blob sources and the chunk fetcher (single-flight, merged Range requests, priorities).
//! - `lazyfs`: `LazyLayer`, the filesystem as plain methods.
//! - `adapter`: the fuser adapter and `MountedLayer`, the only code that sees fuser's replies.
//! - `connection`: `FuseConnection`, a mount's `/dev/fuse` descriptor, served afresh or taken over.
//! - `off`: `false` for off in the config's optional settings.
//! - `manager`: `LayerManager`, the layers one daemon has mounted (unmounted on removal and shutdown).
//!
//! Blobs are read through a [`fetch::BlobSource`] its user hands in (skiffd's reads the registry); it
//! builds no registry client and knows nothing of containerd, snapshots or runc.

pub mod adapter;
pub mod cache;
pub mod connection;
pub mod fetch;
pub mod format;
pub mod lazyfs;
pub mod manager;
pub mod off;
