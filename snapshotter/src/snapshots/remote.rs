//! Remote (lazy) layers: the containerd remote-snapshotter contract, seen from the snapshots side.
//!
//! containerd's unpacker calls `Prepare(key, parent, labels)` with `containerd.io/snapshot.ref` naming the
//! snapshot the layer will be committed under, plus labels saying which layer of which image it is (parsed
//! once, at the gRPC edge, into a [`RemoteLayer`]: `skiff_types`' label codec). Whoever serves the layer
//! reserves that snapshot ([`Snapshotter::reserve_remote`](super::Snapshotter::reserve_remote)), mounts
//! the layer at the reservation's directory, and commits it as a [`RemoteSnapshot`]; containerd is then
//! told `AlreadyExists` and neither downloads nor unpacks the blob.
//!
//! This module knows no FUSE and no registry client: the snapshotter only unmounts remote snapshots it
//! removes, through [`RemoteMounts`] (the daemon wires the lazy filesystem in).

use std::path::Path;

use serde::{Deserialize, Serialize};
use skiff_types::LayerDescriptor;
pub use skiff_types::RemoteLayer;

use skiff_types::Digest;

use super::SnapshotError;

impl From<skiff_types::LabelError> for SnapshotError {
    fn from(err: skiff_types::LabelError) -> Self {
        SnapshotError::InvalidLabel {
            label: err.label,
            reason: err.reason,
        }
    }
}

/// Why a remote layer could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The layer has no lazy format (no eStargz or zstd:chunked TOC): containerd unpacks it.
    #[error("layer {digest} is not lazily readable: {reason}")]
    NotLazy { digest: Digest, reason: String },
    #[error("no remote layer is mounted at {}", mountpoint.display())]
    NotMounted { mountpoint: std::path::PathBuf },
    #[error("mounting layer {digest} of {image_ref}")]
    Mount {
        digest: Digest,
        image_ref: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("unmounting {}", mountpoint.display())]
    Unmount {
        mountpoint: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a remote snapshot's record keeps: the layer the labels named and, since the pull that mounted it
/// knew it, the layer's descriptor (so mounting it again needs no manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSnapshot {
    #[serde(flatten)]
    pub layer: RemoteLayer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<LayerDescriptor>,
}

/// Whatever mounts layers lazily at snapshots' directories (skiffd: the FUSE lazy filesystem), as far as
/// the snapshotter needs it: to unmount a remote snapshot it removes, and to say what one has fetched.
/// The methods may block (unmount syscalls).
pub trait RemoteMounts: Send + Sync {
    /// Unmounts what is mounted at `mountpoint`; [`RemoteError::NotMounted`] if nothing is.
    fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteError>;
    /// What the layer mounted at `mountpoint` has fetched so far; `None` when nothing is mounted there.
    fn stats(&self, mountpoint: &Path) -> Option<RemoteLayerStats> {
        let _ = mountpoint;
        None
    }
}

/// How much of a remote layer has been read from the registry, and by whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteLayerStats {
    /// Its lazy mount is in place; `false`: it could not be mounted (it reads as empty) and the counters
    /// are all 0.
    pub mounted: bool,
    /// Compressed bytes fetched (on demand, prefetch and background).
    pub bytes_fetched: u64,
    /// Range requests made.
    pub requests: u64,
    /// Bytes of all the layer's files, uncompressed.
    pub file_bytes: u64,
    /// The part of `bytes_fetched` that prefetch and background fetching brought in.
    pub background_bytes: u64,
    /// Uncompressed bytes the layer returned to readers (reads of passthrough opens bypass it).
    pub bytes_read: u64,
    /// Distinct chunks in the layer's TOC.
    pub chunks_total: u64,
    /// Of those, the chunks in the chunk cache now.
    pub chunks_cached: u64,
    /// Chunks fetched although the cache held them already when they arrived (goal: 0).
    pub duplicate_fetches: u64,
}
