//! skiff's task layer: OCI runtime specs generated from image configs, a typed driver for the OCI runtime
//! binary (runc by default, or crun), and tasks — a container's processes, each container under its own
//! `skiff-shim` — with their stdio and exit statuses kept in a task dir. Container records and their rootfs
//! snapshots belong to the daemon (`skiff-daemon`'s `containers` and `tasks`); this crate is handed a
//! rootfs that is already mounted and a bundle directory.
//!
//! - [`spec`]: the OCI runtime spec of a container from its image config and options ([`options`] parses
//!   the flags, [`user`] resolves users inside the rootfs).
//! - [`runc`]: the typed driver for the OCI runtime binary.
//! - [`task`]: exec ids, exit statuses, process states, the shim's config and the task dir layout.
//! - [`shim`]: the per-container shim that runs a container apart from the daemon (the `skiff-shim`
//!   binary, `src/bin/skiff-shim.rs`), its control protocol, and the client the daemon uses.
//!
//! It depends on no other skiff crate and knows nothing of registries, FUSE, snapshots or gRPC.

pub mod options;
pub mod runc;
pub mod shim;
pub mod spec;
pub mod task;
pub mod user;
