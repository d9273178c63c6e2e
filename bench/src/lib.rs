//! skiff-bench: measurements of skiff against the baseline a user would otherwise pick, and against a
//! peer. One subcommand per benchmark (`src/main.rs`); commands, results and the commits they came from
//! are in `bench/README.md`.
//!
//! - [`fuse_micro`] (`skiff-bench fuse`): the lazy layer filesystem's micro-benchmarks — bytes fetched to
//!   read one file cold, warm sequential and random reads and a metadata walk, each against overlayfs over
//!   the same layer extracted to local disk. It mounts a layer with `skiff_fuse` directly (reading through
//!   skiffd's `RegistryBlob`), since what it measures is that filesystem.
//! - [`link`]: the shaped network link (rate and round-trip time in user space, byte counters) the
//!   cold-start harness puts between the registry and its clients; [`link_check`] (`skiff-bench
//!   link-check`) measures it against a real registry.
//! - [`coldstart`]: the cold-start harness: workloads, ready-line timing, the modes (`overlayfs`, `skiff`,
//!   `skiff-ondemand`, `skiff-containerd`, and the peer `stargz`), `skiff-bench run` and
//!   [`coldstart::concurrent`] (`skiff-bench concurrent`: N simultaneous cold starts of one image against
//!   one). It drives skiff and containerd through their binaries, like a user.
//! - [`memory`] (`skiff-bench memory`): skiffd's resident memory once lazily pulled images are whole in
//!   its chunk cache, against the bound `[cache] memory_bytes` + 64 MiB + 8 MiB per 10,000 mounted files.
//! - [`corpus`] (`skiff-bench corpus build|push`): the benchmark images, built offline and pushed in
//!   their plain gzip, eStargz and zstd:chunked variants.

pub mod coldstart;
pub mod corpus;
pub mod fuse_micro;
pub mod link;
pub mod link_check;
pub mod memory;
