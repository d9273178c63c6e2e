//! A process's stdio, the same for every process so a restarted daemon can reattach by name:
//! - without a terminal, the process writes straight into `EXEC.stdout` / `EXEC.stderr` (opened
//!   `O_APPEND`; nothing is lost if the shim dies, and every byte is on disk when the exit is recorded);
//! - with a terminal, the runtime sends the pty master over a console socket (`SCM_RIGHTS`) and a relay
//!   thread appends the master's output to `EXEC.stdout` (`EXEC.stderr` stays empty);
//! - with stdin, a relay thread opens the FIFO `EXEC.stdin` (blocking until a writer opens it) and copies it
//!   into the process's stdin pipe, closing the pipe (EOF) when the writer closes; with a terminal it copies
//!   into the master instead, and EOF is whatever the writer sends (^D). Without stdin: `/dev/null`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::stat::Mode;
use tokio::sync::oneshot;

use crate::runc::ProcessStdio;
use crate::task::{ExecId, TaskDir};

/// The files and relays of one process, prepared before the runtime runs it.
pub(crate) struct PreparedIo {
    /// Handed to the runtime (and so to the process) when there is no terminal: take it
    /// (`std::mem::take`) before calling `start`.
    pub stdio: ProcessStdio,
    pub console: Option<ConsoleSocket>,
    stdin_fifo: Option<PathBuf>,
    /// The write end of the process's stdin pipe (no terminal, with stdin).
    stdin_pipe: Option<OwnedFd>,
    stdout_path: PathBuf,
}

/// A started process's terminal and the relay that drains it.
pub(crate) struct ProcessIo {
    /// The pty master, for resizes.
    pub console: Option<OwnedFd>,
    /// Fires when the output relay has copied everything (the terminal's last writer closed it).
    pub output_done: Option<oneshot::Receiver<()>>,
    /// Dropping it ends the stdin relay (once the process has exited, even if no writer ever came).
    pub stdin_relay: Option<StdinRelay>,
}

/// The cancel side of a stdin relay: the write end of a pipe the relay polls alongside the FIFO.
pub(crate) struct StdinRelay {
    _cancel: OwnedFd,
}

impl PreparedIo {
    pub fn new(
        task: &TaskDir,
        exec_id: &ExecId,
        terminal: bool,
        stdin: bool,
    ) -> io::Result<PreparedIo> {
        let stdout_path = task.stdout(exec_id);
        let stdout = open_append(&stdout_path)?;
        let stderr = open_append(&task.stderr(exec_id))?;
        let stdin_fifo = if stdin {
            let path = task.stdin(exec_id);
            make_fifo(&path)?;
            Some(path)
        } else {
            None
        };
        if terminal {
            return Ok(PreparedIo {
                stdio: ProcessStdio::default(),
                console: Some(ConsoleSocket::bind()?),
                stdin_fifo,
                stdin_pipe: None,
                stdout_path,
            });
        }
        let (stdin, stdin_pipe) = if stdin_fifo.is_some() {
            let (read, write) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            (Stdio::from(read), Some(write))
        } else {
            (Stdio::null(), None)
        };
        Ok(PreparedIo {
            stdio: ProcessStdio {
                stdin,
                stdout: Stdio::from(stdout),
                stderr: Stdio::from(stderr),
            },
            console: None,
            stdin_fifo,
            stdin_pipe,
            stdout_path,
        })
    }

    /// The path to hand the runtime as `--console-socket`.
    pub fn console_socket_path(&self) -> Option<PathBuf> {
        self.console.as_ref().map(|c| c.path.clone())
    }

    /// After the runtime created the process: receive its terminal (if any) and start the relays.
    /// `self.stdio` must have been handed to the runtime already (the shim keeps no copy of the
    /// process's end of the pipes).
    pub fn start(self, label: &str) -> io::Result<ProcessIo> {
        let mut io = ProcessIo {
            console: None,
            output_done: None,
            stdin_relay: None,
        };
        let stdin_target = match self.console {
            Some(console) => {
                let master = console.receive()?;
                let output = File::from(master.try_clone()?);
                let stdout = open_append(&self.stdout_path)?;
                let (done, output_done) = oneshot::channel();
                spawn_relay(format!("{label}-pty-out"), move || {
                    copy_until_closed(output, stdout);
                    let _ = done.send(());
                })?;
                io.output_done = Some(output_done);
                let stdin_target = master.try_clone()?;
                io.console = Some(master);
                Some(stdin_target)
            }
            None => self.stdin_pipe,
        };
        if let (Some(fifo), Some(target)) = (self.stdin_fifo, stdin_target) {
            // Opened without blocking, so the relay never waits in open(2) for a writer that may never
            // come; poll reports nothing until a writer has connected, then data or its hang-up.
            let source = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)?;
            let (cancelled, cancel) =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            spawn_relay(format!("{label}-stdin"), move || {
                relay_stdin(source, File::from(target), cancelled)
            })?;
            io.stdin_relay = Some(StdinRelay { _cancel: cancel });
        }
        Ok(io)
    }
}

fn spawn_relay(name: String, relay: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(relay)
        .map(drop)
}

/// Copies the FIFO into the process's stdin until the writer closes it (end of file), the process's
/// stdin is closed, or `cancelled` reports that the shim let go of the relay.
fn relay_stdin(mut source: File, mut destination: File, cancelled: OwnedFd) {
    let mut buffer = [0u8; 32 * 1024];
    loop {
        let mut fds = [
            PollFd::new(source.as_fd(), PollFlags::POLLIN),
            PollFd::new(cancelled.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(error) => {
                tracing::warn!(%error, "poll on the stdin fifo failed");
                return;
            }
        }
        if fds[1].revents().is_some_and(|events| !events.is_empty()) {
            return;
        }
        if fds[0].revents().is_none_or(|events| events.is_empty()) {
            continue;
        }
        match source.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if destination.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// Copies until the source reports end of file or an error (a pty master reads EIO once the last
/// slave is closed); the destination is closed on return.
fn copy_until_closed(mut source: File, mut destination: File) {
    let mut buffer = [0u8; 32 * 1024];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(error) = destination.write_all(&buffer[..n]) {
                    tracing::debug!(%error, "stdio relay destination closed");
                    return;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))
}

fn make_fifo(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mkfifo {}: {e}", path.display()),
        )
    })
}

/// A listening unix socket the runtime sends a pty master to. It lives in a fresh private directory
/// under the temp dir: socket paths are limited to 108 bytes and task dirs can be deep.
pub(crate) struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn bind() -> io::Result<ConsoleSocket> {
        let template = std::env::temp_dir().join("skiff-console-XXXXXX");
        let dir = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?;
        let path = dir.join("s");
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    /// Takes the master the runtime sent. The runtime has exited by now, so its connection and message
    /// are already queued; nothing queued means it sent none.
    fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the runtime sent no terminal to the console socket: {e}"),
            )
        })?;
        stream.set_nonblocking(false)?;
        let mut name = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut received = Vec::new();
        for cmsg in message.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for us alone.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let mut fds = received.into_iter();
        match (fds.next(), fds.next()) {
            (Some(master), None) => Ok(master),
            (None, _) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the console socket message carried no file descriptor",
            )),
            (Some(_), Some(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the console socket message carried more than one file descriptor",
            )),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Sets a terminal's size (`TIOCSWINSZ` on its master).
pub(crate) fn resize(master: &OwnedFd, width: u16, height: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
    let result = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
