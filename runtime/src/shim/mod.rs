//! The per-container shim (as containerd-shim-runc-v2 is to containerd): a small process that owns one
//! container so the container is never a child of skiffd. The daemon spawns it with [`Shim::spawn`] and
//! talks to it with [`ShimClient`]; both it and the daemon can restart or die independently.
//!
//! - `skiff-shim start --task-dir DIR` (what `Shim::spawn` runs) starts `skiff-shim serve` and exits, so
//!   the shim is re-parented away from the spawner at once.
//! - `serve` ([`server::serve`]) leaves the spawner's session, becomes a child subreaper, creates the
//!   container (`runc create`), writes one [`protocol::ReadyMessage`] line on its stdout, and serves the
//!   [`protocol`] on `DIR/shim.sock` until `delete`. It records every exit in `DIR/EXEC.exit`.
//!
//! It knows the OCI runtime's command line and the task dir; nothing of images, snapshots or gRPC.

mod client;
pub mod protocol;
mod reaper;
pub mod server;
mod stdio;

pub use client::{shim_binary, Shim, ShimClient, ShimError, SHIM_BINARY_NAME};
pub use protocol::{Failure, FailureKind};
