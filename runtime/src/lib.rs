//! skiff's task layer (issue "Task layer"): containers as metadata, tasks as processes run by an OCI
//! runtime binary (runc by default), OCI runtime specs generated from image configs, bundles, stdio and
//! exit status. It must not know registries or FUSE: it receives a mounted rootfs from the snapshotter.
//!
//! - [`runc`]: a typed driver for the OCI runtime binary (runc, crun).
//! - [`task`]: exec ids, exit statuses, process states and the task dir layout.
//! - [`shim`]: the per-container shim (`skiff-shim`) that runs a container apart from the daemon, and
//!   its client.

pub mod runc;
pub mod shim;
pub mod task;
