//! skiff's snapshotter crate: the content store, the RocksDB metadata store, the gRPC services skiffd serves
//! and the daemon that wires them to the registry client.
//!
//! It must not know FUSE internals: lazy layers reach the snapshots through `snapshots::RemoteLayers`;
//! `lazy_layers` (daemon wiring) is the only module naming the lazy filesystem's types.

pub mod config;
pub mod containers;
pub mod content;
pub mod daemon;
pub mod images;
pub mod lazy_layers;
pub mod meta;
pub mod service;
pub mod snapshots;
pub mod tasks;
pub mod unpack;
