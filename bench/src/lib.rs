//! skiff-bench: measurements of skiff against the baseline a user would otherwise pick.
//!
//! - [`fuse_micro`] (`skiff-bench fuse`): the lazy layer filesystem's micro-benchmarks from the lazy
//!   filesystem issue — bytes fetched to read one file cold, warm sequential and random reads and a
//!   metadata walk, each against overlayfs over the same layer extracted to local disk. It mounts a
//!   layer with `skiff_fuse` directly, since what it measures is that filesystem.
//! - [`link`]: the shaped network link (rate and round-trip time in user space, byte counters) the
//!   cold-start harness puts between the registry and its clients; [`link_check`] (`skiff-bench
//!   link-check`) measures it against a real registry.
//! - The cold-start harness (issue "Cold-start benchmark") will drive skiff and containerd like a user
//!   does and know none of their internals; it is not implemented yet.

pub mod fuse_micro;
pub mod link;
pub mod link_check;
