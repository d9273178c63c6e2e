//! The per-container shim (as containerd-shim-runc-v2 is to containerd): a small process that owns one
//! container so the container is never a child of skiffd. The daemon spawns it with [`Shim::spawn`] and
//! talks to it with [`ShimClient`]; the shim and the daemon can each stop, die or restart without the
//! other. Everything either needs lives in the task dir ([`crate::task`] has its layout).
//!
//! 1. [`Shim::spawn`] writes `DIR/shim.json` (refused if the dir holds one already: a task dir serves one
//!    task) and runs `skiff-shim start --task-dir DIR`, which starts `skiff-shim serve` and exits at once:
//!    the shim is re-parented away from the spawner immediately.
//! 2. `serve` ([`server::serve`]) closes inherited descriptors, calls `setsid`, becomes a child subreaper,
//!    blocks SIGCHLD before any thread starts and runs one reaper thread (`waitpid(-1)` for every child:
//!    the runtime's own invocations and, once runc exits, the container's processes). It creates the
//!    container (`runc create`), answers the spawner with one [`protocol::ReadyMessage`] line on its
//!    stdout (`ready` with the init's pid, or `failed` with the runtime's own message), then serves the
//!    [`protocol`] on `DIR/shim.sock` (0600) on a current-thread tokio runtime, runtime calls on its
//!    blocking pool.
//! 3. Every exit is recorded in `DIR/EXEC.exit` (temp file, fsync, rename, fsync of the dir) before any
//!    `wait` is answered. When the init exits, exec processes still running are killed.
//! 4. stdio is the same for every process, so a restarted daemon reattaches by file name (`stdio`):
//!    output goes straight into `EXEC.stdout` / `EXEC.stderr`, or through a relay thread from the pty;
//!    stdin, when asked for, is the FIFO `EXEC.stdin`.
//! 5. [`ShimClient::connect`] needs only the task dir, and every call opens its own connection. With the
//!    shim gone (no socket, refused, or hung up), `state` and `wait` answer from `EXEC.exit`; without one
//!    the process is lost: `state` says `unknown` and `wait` fails with [`ShimError::Lost`] (reported as
//!    exit code 255), never as a clean exit.
//! 6. `delete` of the init runs `runc delete` (refused while the init runs unless forced; a created,
//!    never started container may go), removes the socket, answers with the init's exit, and the shim
//!    exits. The task dir stays for the daemon to remove.
//!
//! Requests on `shim.sock` (one JSON line each way; examples in [`protocol`]; `exec_id` defaults to `init`):
//!
//! | `op` | fields | reply |
//! | --- | --- | --- |
//! | `start` | — | `started` {pid} (`runc start`) |
//! | `kill` | `signal`, `all`, `exec_id` | `done` (init: `runc kill [--all]`; exec: `kill(2)` on its pid) |
//! | `exec` | `exec_id`, `process` (OCI `Process`), `terminal`, `stdin` | `started` {pid} (`runc exec --detach --process`) |
//! | `pause`, `resume` | — | `done` |
//! | `state` | `exec_id` | `state` {exec_id, pid, status, terminal, exit} |
//! | `wait` | `exec_id` | `exit` {code, signal, exited_at_unix_ns}, once the process has exited |
//! | `resize` | `exec_id`, `width`, `height` | `done` (`TIOCSWINSZ` on the pty master) |
//! | `metrics` | — | `metrics` {cpu, memory, pids} (`runc events --stats`) |
//! | `delete` | `exec_id`, `force` | `exit` (or `done` when unknown); for the init the shim then exits |
//!
//! A failure is `{"error":{"kind":K,"message":M}}`, K one of [`FailureKind`]: `not_found`,
//! `already_exists`, `failed_precondition`, `invalid_argument` (the gRPC codes of those names), `runtime`
//! (the runtime refused; M is its message) or `internal`.
//!
//! The shim binary is `skiff-shim` next to the running executable unless configured ([`shim_binary`]). It
//! knows the OCI runtime's command line and the task dir; nothing of images, snapshots or gRPC.

mod client;
pub mod protocol;
mod reaper;
pub mod server;
mod stdio;

pub use client::{shim_binary, Shim, ShimClient, ShimError, SHIM_BINARY_NAME};
pub use protocol::{Failure, FailureKind};
