//! skiff's task layer (issue "Task layer"): containers as metadata, tasks as processes run by an OCI
//! runtime binary (runc by default), OCI runtime specs generated from image configs, bundles, stdio and
//! exit status. It must not know registries or FUSE: it receives a mounted rootfs from the snapshotter.
//!
//! Nothing is implemented here yet; the crate exists so the workspace has its final shape.
