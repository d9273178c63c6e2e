//! The shim's one reaper. As a child subreaper the shim inherits the container's init and exec processes
//! when the runtime that started them exits, so a single thread waits for *every* child (`waitpid(-1)`)
//! and hands each exit to whoever subscribed to that pid. The runtime's own invocations go through the
//! same reaper ([`ProcessRunner`]): spawning and subscribing happen under one lock, so no exit is missed
//! or stolen. Exits nobody subscribed to yet are kept (bounded), because a container process can exit
//! before its pid file has been read.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::sync::oneshot;

use crate::runc::ProcessRunner;

/// How many unclaimed exits are remembered (oldest forgotten first).
const UNCLAIMED_LIMIT: usize = 4096;

/// A reaped child: its wait status and when it was reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub status: WaitStatus,
    pub at: SystemTime,
}

#[derive(Default)]
struct Subscriptions {
    waiting: HashMap<i32, oneshot::Sender<Reaped>>,
    unclaimed: HashMap<i32, Reaped>,
    unclaimed_order: VecDeque<i32>,
}

pub(crate) struct Reaper {
    subscriptions: Mutex<Subscriptions>,
}

impl Reaper {
    /// Blocks SIGCHLD in the calling thread and starts the reaper thread. Call it from `main` before any
    /// other thread exists, so every thread inherits the blocked signal and only the reaper takes it.
    pub fn start() -> io::Result<Arc<Reaper>> {
        let sigchld = SigSet::from(Signal::SIGCHLD);
        sigchld.thread_block().map_err(io::Error::from)?;
        let reaper = Arc::new(Reaper {
            subscriptions: Mutex::new(Subscriptions::default()),
        });
        let thread_reaper = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || thread_reaper.reap_forever(sigchld))?;
        Ok(reaper)
    }

    /// The exit of `pid`, whether it happens later or already happened unclaimed.
    pub fn subscribe(&self, pid: u32) -> oneshot::Receiver<Reaped> {
        let pid = pid as i32;
        let (sender, receiver) = oneshot::channel();
        let mut subscriptions = self.lock();
        match subscriptions.unclaimed.remove(&pid) {
            Some(reaped) => {
                subscriptions.unclaimed_order.retain(|p| *p != pid);
                let _ = sender.send(reaped);
            }
            None => {
                subscriptions.waiting.insert(pid, sender);
            }
        }
        receiver
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reap_forever(&self, sigchld: SigSet) {
        loop {
            self.reap_all();
            // SIGCHLD is blocked everywhere, so one arriving since `reap_all` stays pending until here.
            if let Err(error) = sigchld.wait() {
                tracing::error!(%error, "sigwait for SIGCHLD failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    fn reap_all(&self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _))) => {
                    self.deliver(
                        pid.as_raw(),
                        Reaped {
                            status,
                            at: SystemTime::now(),
                        },
                    );
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(error) => {
                    tracing::error!(%error, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn deliver(&self, pid: i32, reaped: Reaped) {
        let mut subscriptions = self.lock();
        match subscriptions.waiting.remove(&pid) {
            Some(sender) => {
                let _ = sender.send(reaped);
            }
            None => {
                tracing::debug!(pid, "reaped a process nobody waits for (yet)");
                subscriptions.unclaimed.insert(pid, reaped);
                subscriptions.unclaimed_order.push_back(pid);
                while subscriptions.unclaimed_order.len() > UNCLAIMED_LIMIT {
                    if let Some(old) = subscriptions.unclaimed_order.pop_front() {
                        subscriptions.unclaimed.remove(&old);
                    }
                }
            }
        }
    }
}

impl ProcessRunner for Reaper {
    fn run(&self, mut command: Command) -> io::Result<Output> {
        let (mut child, exited) = {
            let mut subscriptions = self.lock();
            let child = command.spawn()?;
            let (sender, receiver) = oneshot::channel();
            subscriptions.waiting.insert(child.id() as i32, sender);
            (child, receiver)
        };
        let stderr_reader = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = stderr.read_to_end(&mut bytes);
                bytes
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            pipe.read_to_end(&mut stdout)?;
        }
        let stderr = stderr_reader
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        // `child` is never waited on: the reaper collects it and sends its status here.
        let reaped = exited
            .blocking_recv()
            .map_err(|_| io::Error::other("the reaper dropped a child's exit"))?;
        Ok(Output {
            status: std::process::ExitStatus::from_raw(raw_wait_status(reaped.status)),
            stdout,
            stderr,
        })
    }
}

/// The `wait(2)` encoding of an exit, for `std::process::ExitStatus::from_raw`.
fn raw_wait_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => (code & 0xff) << 8,
        WaitStatus::Signaled(_, signal, core) => signal as i32 | if core { 0x80 } else { 0 },
        _ => 0xff << 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn wait_statuses_convert_to_std() {
        let pid = Pid::from_raw(1);
        let exited =
            std::process::ExitStatus::from_raw(raw_wait_status(WaitStatus::Exited(pid, 7)));
        assert_eq!(exited.code(), Some(7));
        let killed = std::process::ExitStatus::from_raw(raw_wait_status(WaitStatus::Signaled(
            pid,
            Signal::SIGKILL,
            false,
        )));
        assert_eq!((killed.code(), killed.signal()), (None, Some(9)));
    }
}
