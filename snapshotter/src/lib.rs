//! skiff's snapshotter crate: the content store, the RocksDB metadata store, the gRPC services skiffd serves
//! and the daemon that wires them to the registry client.
//!
//! It must not know FUSE internals: lazy layers will reach it through a trait owned here.

pub mod config;
pub mod content;
pub mod daemon;
pub mod images;
pub mod meta;
pub mod service;
pub mod snapshots;
