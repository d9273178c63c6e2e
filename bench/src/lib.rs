//! skiff-bench: measurements of skiff against the baseline a user would otherwise pick.
//!
//! - [`fuse_micro`] (`skiff-bench fuse`): the lazy layer filesystem's micro-benchmarks from the lazy
//!   filesystem issue — bytes fetched to read one file cold, warm sequential and random reads and a
//!   metadata walk, each against overlayfs over the same layer extracted to local disk. It mounts a
//!   layer with `skiff_fuse` directly, since what it measures is that filesystem.
//! - The cold-start harness (issue "Cold-start benchmark") will drive skiff and containerd like a user
//!   does and know none of their internals; it is not implemented yet.

pub mod fuse_micro;
