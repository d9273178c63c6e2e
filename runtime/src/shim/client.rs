//! The daemon's side of a shim: spawning one for a task dir, and talking to it — again after a daemon
//! restart, since everything needed is in the task dir. When the shim is gone, `state` and `wait` answer
//! from the exit files it left; a process whose shim died before recording its exit is reported as lost
//! (status unknown), never as a clean exit.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{
    read_message, write_message, Failure, FailureKind, ReadyMessage, Reply, Request, Response,
};
use crate::runc::{check_container_id, RuncError, Stats};
use crate::task::{
    ExecId, ExitStatus, ProcessState, ShimConfig, TaskDir, TaskError, TaskStatus, SOCKET_NAME,
};

/// The shim binary's file name; by default it is looked for next to the running executable.
pub const SHIM_BINARY_NAME: &str = "skiff-shim";

/// Socket paths longer than this are reached through `/proc/self/fd` (the kernel limit is 108 bytes).
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("invalid container: {0}")]
    Config(#[from] RuncError),
    #[error("cannot find the shim binary next to {exe}: {source}")]
    NoShimBinary { exe: PathBuf, source: io::Error },
    #[error("cannot run the shim {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("a shim is already running in {task_dir}")]
    AlreadyRunning { task_dir: PathBuf },
    #[error("{task_dir} already holds a task (remove it first)")]
    TaskDirInUse { task_dir: PathBuf },
    #[error("the shim for {task_dir} did not start the container: {message}")]
    Start { task_dir: PathBuf, message: String },
    #[error("the shim of {task_dir} is not running")]
    Gone { task_dir: PathBuf },
    #[error("process {exec_id} of {task_dir}: its shim died before recording an exit status (status unknown)")]
    Lost { task_dir: PathBuf, exec_id: ExecId },
    #[error("talking to the shim at {path}: {source}")]
    Connection { path: PathBuf, source: io::Error },
    #[error("the shim answered {request} with an unexpected reply: {reply:?}")]
    UnexpectedReply {
        request: &'static str,
        reply: Box<Reply>,
    },
    #[error(transparent)]
    Refused(#[from] Failure),
}

impl ShimError {
    /// The kind of failure the shim reported, for a gRPC edge (a lost or gone shim is `FailedPrecondition`-like).
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            ShimError::Refused(failure) => Some(failure.kind),
            _ => None,
        }
    }
}

/// The path of the shim binary: `configured`, or `skiff-shim` next to the running executable.
pub fn shim_binary(configured: Option<&Path>) -> Result<PathBuf, ShimError> {
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|source| ShimError::NoShimBinary {
        exe: PathBuf::from("the current executable"),
        source,
    })?;
    let candidate = exe.with_file_name(SHIM_BINARY_NAME);
    match std::fs::metadata(&candidate) {
        Ok(_) => Ok(candidate),
        Err(source) => Err(ShimError::NoShimBinary { exe, source }),
    }
}

/// Starts shims.
pub struct Shim;

impl Shim {
    /// Creates `task_dir` (if needed; it must not hold a task yet), writes `shim.json` and starts
    /// `shim_binary` for it. The shim detaches
    /// (own session, not a child of the caller, survives it), creates the container with the runtime and
    /// answers once the init process exists, in the `created` state. Errors carry the runtime's message;
    /// the task dir is then left as it is (`shim.log`, `runtime.log`) for the caller to read and remove.
    /// There is no timeout: a caller that cannot wait for a slow rootfs wraps the call in one.
    pub async fn spawn(
        shim_binary: &Path,
        task_dir: &Path,
        config: &ShimConfig,
    ) -> Result<ShimClient, ShimError> {
        check_container_id(&config.id)?;
        std::fs::create_dir_all(task_dir)
            .map_err(crate::task::io_error("create task dir", task_dir))?;
        let task_dir =
            std::fs::canonicalize(task_dir).map_err(crate::task::io_error("resolve", task_dir))?;
        let client = ShimClient {
            task: TaskDir::new(&task_dir),
        };
        if client.is_alive().await {
            return Err(ShimError::AlreadyRunning { task_dir });
        }
        // Old exit and pid files would answer for the new task: a task dir serves one task.
        if client.task.config().exists() {
            return Err(ShimError::TaskDirInUse { task_dir });
        }
        client.task.write_config(config)?;

        let mut launcher = tokio::process::Command::new(shim_binary)
            .arg("start")
            .arg("--task-dir")
            .arg(&task_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ShimError::Spawn {
                binary: shim_binary.to_path_buf(),
                source,
            })?;
        let stdout = launcher.stdout.take().expect("stdout is piped");
        let mut stderr = launcher.stderr.take().expect("stderr is piped");
        let ready = read_message::<ReadyMessage, _>(&mut BufReader::new(stdout)).await;
        let mut launcher_errors = String::new();
        let _ = stderr.read_to_string(&mut launcher_errors).await;
        let _ = launcher.wait().await;
        let failed = |message: String| ShimError::Start {
            task_dir: task_dir.clone(),
            message,
        };
        match ready {
            Ok(Some(ReadyMessage::Ready { pid })) => {
                tracing::debug!(task_dir = %task_dir.display(), pid, "shim ready");
                Ok(client)
            }
            Ok(Some(ReadyMessage::Failed { message })) => Err(failed(message)),
            Ok(None) => Err(failed(format!(
                "the shim exited without a word ({}); see {}",
                launcher_errors.trim(),
                client.task.shim_log().display()
            ))),
            Err(error) => Err(failed(format!("unreadable ready message: {error}"))),
        }
    }
}

/// A handle on one task's shim, built from the task dir alone (so it works again after a restart). Every
/// call opens its own connection; `wait` may be called from many places at once.
#[derive(Debug, Clone)]
pub struct ShimClient {
    task: TaskDir,
}

/// What a request got: the shim's reply, or nobody there (no socket, refused, or hung up unanswered).
enum Answer {
    Reply(Reply),
    Gone,
}

impl ShimClient {
    /// Opens the task dir of a shim spawned earlier. It succeeds even when the shim has exited, so the
    /// exit files can still be read; calls then fail with [`ShimError::Gone`] or answer from the files.
    pub fn connect(task_dir: impl Into<PathBuf>) -> Result<ShimClient, ShimError> {
        let task = TaskDir::new(task_dir);
        task.read_config()?;
        Ok(ShimClient { task })
    }

    pub fn task_dir(&self) -> &TaskDir {
        &self.task
    }

    pub fn config(&self) -> Result<ShimConfig, ShimError> {
        Ok(self.task.read_config()?)
    }

    /// The shim's pid as it recorded it (the process may have exited since).
    pub fn shim_pid(&self) -> Result<u32, ShimError> {
        Ok(self.task.read_shim_pid()?)
    }

    /// Whether a shim answers on the task's socket.
    pub async fn is_alive(&self) -> bool {
        connect_socket(self.task.path()).await.is_ok()
    }

    /// Starts the init process; returns its pid.
    pub async fn start(&self) -> Result<u32, ShimError> {
        match self.call(Request::Start).await? {
            Reply::Started { pid } => Ok(pid),
            reply => Err(unexpected("start", reply)),
        }
    }

    /// Sends `signal` to a process; `all` (init only) signals every process of the container.
    pub async fn kill(&self, exec_id: &ExecId, signal: i32, all: bool) -> Result<(), ShimError> {
        self.call_done(
            "kill",
            Request::Kill {
                signal,
                all,
                exec_id: exec_id.clone(),
            },
        )
        .await
    }

    /// Starts `process` in the running container as `exec_id`; its stdio is `EXEC.stdout`/`.stderr` and,
    /// with `stdin`, the FIFO `EXEC.stdin`. Returns its pid.
    pub async fn exec(
        &self,
        exec_id: &ExecId,
        process: &oci_spec::runtime::Process,
        terminal: bool,
        stdin: bool,
    ) -> Result<u32, ShimError> {
        let request = Request::Exec {
            exec_id: exec_id.clone(),
            process: Box::new(process.clone()),
            terminal,
            stdin,
        };
        match self.call(request).await? {
            Reply::Started { pid } => Ok(pid),
            reply => Err(unexpected("exec", reply)),
        }
    }

    pub async fn pause(&self) -> Result<(), ShimError> {
        self.call_done("pause", Request::Pause).await
    }

    pub async fn resume(&self) -> Result<(), ShimError> {
        self.call_done("resume", Request::Resume).await
    }

    /// A process's state; with the shim gone, from the task dir (`stopped` with its exit, or `unknown`).
    pub async fn state(&self, exec_id: &ExecId) -> Result<ProcessState, ShimError> {
        let request = Request::State {
            exec_id: exec_id.clone(),
        };
        match self.try_call(&request).await? {
            Answer::Reply(Reply::State(state)) => Ok(state),
            Answer::Reply(reply) => Err(unexpected("state", reply)),
            Answer::Gone => self.state_from_files(exec_id),
        }
    }

    /// Waits for a process to exit. With the shim gone, the recorded exit, or [`ShimError::Lost`].
    pub async fn wait(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        let request = Request::Wait {
            exec_id: exec_id.clone(),
        };
        match self.try_call(&request).await? {
            Answer::Reply(Reply::Exit(exit)) => Ok(exit),
            Answer::Reply(reply) => Err(unexpected("wait", reply)),
            Answer::Gone => {
                let state = self.state_from_files(exec_id)?;
                state.exit.ok_or_else(|| ShimError::Lost {
                    task_dir: self.task.path().to_path_buf(),
                    exec_id: exec_id.clone(),
                })
            }
        }
    }

    /// Sets the terminal size of a process started with a terminal.
    pub async fn resize(&self, exec_id: &ExecId, width: u16, height: u16) -> Result<(), ShimError> {
        let request = Request::Resize {
            exec_id: exec_id.clone(),
            width,
            height,
        };
        self.call_done("resize", request).await
    }

    pub async fn metrics(&self) -> Result<Stats, ShimError> {
        match self.call(Request::Metrics).await? {
            Reply::Metrics(stats) => Ok(stats),
            reply => Err(unexpected("metrics", reply)),
        }
    }

    /// Deletes the container (`force` kills it if it still runs); the shim exits. Returns the init's
    /// exit status when it is known. The task dir is left for the caller to remove.
    pub async fn delete(&self, force: bool) -> Result<Option<ExitStatus>, ShimError> {
        let request = Request::Delete {
            exec_id: ExecId::init(),
            force,
        };
        match self.call(request).await? {
            Reply::Exit(exit) => Ok(Some(exit)),
            Reply::Done => Ok(None),
            reply => Err(unexpected("delete", reply)),
        }
    }

    /// Forgets an exited exec process; returns its exit status.
    pub async fn delete_exec(&self, exec_id: &ExecId) -> Result<ExitStatus, ShimError> {
        let request = Request::Delete {
            exec_id: exec_id.clone(),
            force: false,
        };
        match self.call(request).await? {
            Reply::Exit(exit) => Ok(exit),
            reply => Err(unexpected("delete", reply)),
        }
    }

    async fn call_done(&self, name: &'static str, request: Request) -> Result<(), ShimError> {
        match self.call(request).await? {
            Reply::Done => Ok(()),
            reply => Err(unexpected(name, reply)),
        }
    }

    async fn call(&self, request: Request) -> Result<Reply, ShimError> {
        match self.try_call(&request).await? {
            Answer::Reply(reply) => Ok(reply),
            Answer::Gone => Err(ShimError::Gone {
                task_dir: self.task.path().to_path_buf(),
            }),
        }
    }

    async fn try_call(&self, request: &Request) -> Result<Answer, ShimError> {
        let path = self.task.socket();
        let connection_error = |source: io::Error| ShimError::Connection {
            path: path.clone(),
            source,
        };
        let stream = match connect_socket(self.task.path()).await {
            Ok(stream) => stream,
            Err(error) if shim_absent(&error) => return Ok(Answer::Gone),
            Err(error) => return Err(connection_error(error)),
        };
        let (reader, mut writer) = stream.into_split();
        match write_message(&mut writer, request).await {
            Ok(()) => {}
            Err(error) if hung_up(&error) => return Ok(Answer::Gone),
            Err(error) => return Err(connection_error(error)),
        }
        match read_message::<Response, _>(&mut BufReader::new(reader)).await {
            Ok(Some(Response::Ok(reply))) => Ok(Answer::Reply(reply)),
            Ok(Some(Response::Error(failure))) => Err(ShimError::Refused(failure)),
            Ok(None) => Ok(Answer::Gone),
            Err(error) if hung_up(&error) => Ok(Answer::Gone),
            Err(error) => Err(connection_error(error)),
        }
    }

    /// What the task dir tells about a process whose shim is gone.
    fn state_from_files(&self, exec_id: &ExecId) -> Result<ProcessState, ShimError> {
        let exit = self.task.read_exit(exec_id)?;
        let pid = self.task.read_pid(exec_id).ok();
        if exit.is_none() && pid.is_none() {
            return Err(
                Failure::new(FailureKind::NotFound, format!("no process {exec_id}")).into(),
            );
        }
        let terminal = if exec_id.is_init() {
            self.task.read_config()?.terminal
        } else {
            std::fs::read(self.task.process_spec(exec_id))
                .ok()
                .and_then(|json| serde_json::from_slice::<oci_spec::runtime::Process>(&json).ok())
                .and_then(|process| process.terminal())
                .unwrap_or(false)
        };
        Ok(ProcessState {
            exec_id: exec_id.clone(),
            pid,
            status: if exit.is_some() {
                TaskStatus::Stopped
            } else {
                TaskStatus::Unknown
            },
            terminal,
            exit,
        })
    }
}

fn unexpected(request: &'static str, reply: Reply) -> ShimError {
    ShimError::UnexpectedReply {
        request,
        reply: Box::new(reply),
    }
}

/// No socket file, or nobody listening on it (a killed shim leaves the file behind).
fn shim_absent(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// The shim closed the connection under us (it exited or was killed).
fn hung_up(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Connects to `DIR/shim.sock`, through `/proc/self/fd/N/shim.sock` when the path is too long for a
/// socket address.
async fn connect_socket(dir: &Path) -> io::Result<UnixStream> {
    let path = dir.join(SOCKET_NAME);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return UnixStream::connect(&path).await;
    }
    let dir_handle = std::fs::File::open(dir)?;
    let short = format!("/proc/self/fd/{}/{SOCKET_NAME}", dir_handle.as_raw_fd());
    let stream = UnixStream::connect(&short).await;
    drop(dir_handle);
    stream
}
