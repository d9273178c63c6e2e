//! skiff's snapshot core: what a node stores of images, independent of how it is served.
//!
//! - [`content`]: the content store, sha256-addressed blobs on disk (manifests, configs, layer blobs);
//! - [`meta`]: the metadata store (RocksDB behind a `KvStore` trait, with an in-memory fake): namespaces,
//!   images, content references, containers, snapshots;
//! - [`snapshots`]: snapshots with containerd's semantics over overlayfs, including remote (lazy) layers
//!   committed through a reservation;
//! - [`unpack`]: applying a layer tar to a snapshot as containerd's overlayfs applier does.
//!
//! It knows no FUSE, no runc, no registry client and no gRPC: the daemon (`skiff-daemon`) wires those in,
//! and lazy layers reach the snapshots only as mounts the daemon makes at a reserved directory.

pub mod content;
pub mod meta;
pub mod snapshots;
pub mod unpack;
