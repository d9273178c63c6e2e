//! skiff's task layer (issue "Task layer"): containers as metadata, tasks as processes run by an OCI
//! runtime binary (runc by default), OCI runtime specs generated from image configs, bundles, stdio and
//! exit status. It must not know registries or FUSE: it receives a mounted rootfs from the snapshotter.
//!
//! `spec` generates the OCI runtime spec of a container from its image config and options (`options` parses
//! the flags, `user` resolves users inside the rootfs).

pub mod options;
pub mod spec;
pub mod user;
