//! skiffd, the daemon that wires skiff's crates together behind its gRPC API:
//!
//! - [`config`]: skiffd's TOML configuration (embedding the lazy filesystem's own config types);
//! - [`daemon`]: startup (root lock, stores, remounts), the socket, and the designed shutdown;
//! - [`grpc`]: the services, one module each, and the one error → `Status` mapping;
//! - [`images`]: pulls (resolve once, then each layer mounted lazily or fetched and unpacked), image
//!   details, removal with garbage collection;
//! - [`lazy_layers`]: the glue between the snapshotter's remote layers and the FUSE lazy filesystem,
//!   reading blobs through the registry client;
//! - [`keeper`]: hands every lazy mount's FUSE connection to `skiff-keeper` and takes them back at
//!   startup, so mounts outlive skiffd;
//! - [`containers`], [`tasks`]: container records and their processes, through [`task_runtime`]'s seam
//!   (`skiff-shim` + runc in skiffd);
//! - [`malloc`]: glibc malloc settings and trimming that keep skiffd's memory within its bound;
//! - [`work`]: the daemon's spawned work (pulls, output and content streams), drained at shutdown.
//!
//! Dependencies point one way: this crate uses `skiff-registry`, `skiff-fuse`, `skiff-snapshotter`,
//! `skiff-runtime`, `skiff-keeper` and `skiff-api`; none of them knows this crate.

pub mod config;
pub mod containers;
pub mod daemon;
pub mod grpc;
pub mod images;
pub mod keeper;
pub mod lazy_layers;
pub mod malloc;
pub mod task_runtime;
pub mod tasks;
pub mod work;
