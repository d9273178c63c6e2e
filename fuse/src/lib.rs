//! skiff's lazy layer filesystem crate: the OCI registry client that blobs are read through, and (as it
//! lands) the format readers, the chunk cache and the FUSE adapter. It knows nothing of containerd,
//! snapshots or runc.

pub mod registry;
