//! skiff-bench: measurements of skiff against the baseline a user would otherwise pick.
//!
//! - [`fuse_micro`] (`skiff-bench fuse`): the lazy layer filesystem's micro-benchmarks from the lazy
//!   filesystem issue — bytes fetched to read one file cold, warm sequential and random reads and a
//!   metadata walk, each against overlayfs over the same layer extracted to local disk. It mounts a
//!   layer with `skiff_fuse` directly, since what it measures is that filesystem.
//! - [`link`]: the shaped network link (rate and round-trip time in user space, byte counters) the
//!   cold-start harness puts between the registry and its clients; [`link_check`] (`skiff-bench
//!   link-check`) measures it against a real registry.
//! - [`coldstart`]: the cold-start harness (issue "Cold-start benchmark"): workloads, modes (so far the
//!   `overlayfs` baseline and `skiff-containerd`), ready-line timing, and [`coldstart::concurrent`]
//!   (`skiff-bench concurrent`): N simultaneous cold starts of one image against one. It drives skiff
//!   and containerd like a user does.

pub mod coldstart;
pub mod corpus;
pub mod fuse_micro;
pub mod link;
pub mod link_check;
