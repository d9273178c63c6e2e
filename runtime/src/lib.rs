//! skiff's task layer (issue "Task layer"): containers as metadata, tasks as processes run by an OCI
//! runtime binary (runc by default), OCI runtime specs generated from image configs, bundles, stdio and
//! exit status. It must not know registries or FUSE: it receives a mounted rootfs from the snapshotter.
//!
//! - [`spec`]: the OCI runtime spec of a container from its image config and options ([`options`] parses
//!   the flags, [`user`] resolves users inside the rootfs).
//! - [`runc`]: a typed driver for the OCI runtime binary (runc, crun).
//! - [`task`]: exec ids, exit statuses, process states and the task dir layout.
//! - [`shim`]: the per-container shim (`skiff-shim`) that runs a container apart from the daemon, and
//!   its client.

pub mod options;
pub mod runc;
pub mod shim;
pub mod spec;
pub mod task;
pub mod user;
