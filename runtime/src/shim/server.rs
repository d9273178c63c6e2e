//! The shim process (`skiff-shim serve`): one per container, detached from whoever spawned it. It creates
//! the container with the OCI runtime, reaps the container's processes as a child subreaper, records every
//! exit in the task dir, and answers the control protocol on `shim.sock` until `delete`.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch, Notify};

use super::protocol::{
    read_message, write_message, Failure, FailureKind, ReadyMessage, Reply, Request, Response,
};
use super::reaper::{Reaped, Reaper};
use super::stdio::{self, PreparedIo};
use crate::runc::{ContainerStatus, CreateOptions, ExecOptions, Runc, RuncError};
use crate::task::{
    ExecId, ExitStatus, ProcessState, ShimConfig, TaskDir, TaskError, TaskStatus, SOCKET_NAME,
};

/// How long a recorded exit waits for a terminal's output relay to drain.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a forced delete waits for the killed init to be reaped.
const FORCED_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{action}: {source}")]
    Setup {
        action: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("creating the container failed: {0}")]
    Create(String),
}

fn setup(action: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Setup { action, source }
}

/// Runs the shim for `task_dir` (absolute) to completion. Call it first thing in `main`: it closes
/// inherited descriptors, leaves the spawner's session, becomes a child subreaper and blocks SIGCHLD
/// before any thread starts.
pub fn serve(task_dir: &Path) -> Result<(), ServeError> {
    // Descriptors leaked by the spawner (a daemon's lock file, a FUSE device, a listening socket) must
    // not live as long as the container. 0, 1 and 2 stay: stdout carries the ready message.
    // SAFETY: close_range only closes descriptors; nothing in this process owns any above 2 yet.
    unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    nix::unistd::setsid().map_err(|e| setup("setsid")(e.into()))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| setup("become a child subreaper")(e.into()))?;
    std::env::set_current_dir(task_dir).map_err(setup("enter the task dir"))?;
    let reaper = Reaper::start().map_err(setup("start the reaper"))?;

    let task = TaskDir::new(task_dir);
    crate::task::write_durably(&task.shim_pid(), std::process::id().to_string().as_bytes())?;
    let config = match task.read_config() {
        Ok(config) => config,
        Err(error) => {
            announce(&ReadyMessage::Failed {
                message: error.to_string(),
            });
            return Err(error.into());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(setup("build the tokio runtime"))?;
    let shim = Arc::new(Shim::new(config, task, reaper));
    let result = runtime.block_on(shim.run());
    // Waits for runtime calls still on the blocking pool; connections still open (a `wait` on another
    // process) are dropped, and their clients read the task dir instead.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Writes the ready message on stdout, then points stdout at /dev/null: the spawner reads one line.
fn announce(message: &ReadyMessage) {
    let mut line = serde_json::to_vec(message).expect("ready messages serialize");
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(&line).and_then(|_| stdout.flush()) {
        tracing::warn!(%error, "cannot tell the spawner whether the shim is ready");
    }
    match std::fs::File::open("/dev/null") {
        Ok(null) => {
            if let Err(error) = nix::unistd::dup2_stdout(&null) {
                tracing::warn!(%error, "cannot point stdout at /dev/null");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot open /dev/null"),
    }
}

struct Process {
    pid: u32,
    terminal: bool,
    console: Option<OwnedFd>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Process {
    fn exit(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }
}

struct Shim {
    config: ShimConfig,
    task: TaskDir,
    runc: Runc,
    reaper: Arc<Reaper>,
    processes: Mutex<HashMap<ExecId, Arc<Process>>>,
    shutdown: Notify,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure::new(kind, message)
}

fn internal(error: impl std::fmt::Display) -> Failure {
    failure(FailureKind::Internal, error.to_string())
}

fn runtime_failure(error: RuncError) -> Failure {
    let kind = match &error {
        RuncError::InvalidId { .. } | RuncError::InvalidSignal(_) => FailureKind::InvalidArgument,
        error if error.is_not_found() => FailureKind::NotFound,
        _ => FailureKind::Runtime,
    };
    failure(kind, error.to_string())
}

/// How the runtime starts a process: `runc create` for the init, `runc exec` for the others.
enum Launch {
    Create,
    Exec { process_file: PathBuf },
}

enum RuntimeCommand {
    Create(CreateOptions),
    Exec(ExecOptions),
}

impl Shim {
    fn new(config: ShimConfig, task: TaskDir, reaper: Arc<Reaper>) -> Shim {
        let runc = Runc::new(&config.runtime, &config.runtime_root)
            .with_log(task.runtime_log())
            .with_runner(reaper.clone());
        Shim {
            config,
            task,
            runc,
            reaper,
            processes: Mutex::new(HashMap::new()),
            shutdown: Notify::new(),
        }
    }

    async fn run(self: Arc<Self>) -> Result<(), ServeError> {
        let listener = bind_control_socket().map_err(setup("bind the control socket"))?;
        let init = ExecId::init();
        let created = self
            .launch(
                init.clone(),
                self.config.terminal,
                self.config.stdin,
                Launch::Create,
            )
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(error) => {
                tracing::error!(message = %error.message, "creating the container failed");
                let runc = self.runc.clone();
                let id = self.config.id.clone();
                let _ = tokio::task::spawn_blocking(move || runc.delete(&id, true)).await;
                let _ = std::fs::remove_file(SOCKET_NAME);
                announce(&ReadyMessage::Failed {
                    message: error.message.clone(),
                });
                return Err(ServeError::Create(error.message));
            }
        };
        tracing::info!(id = %self.config.id, pid, "container created");
        announce(&ReadyMessage::Ready { pid });

        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(Arc::clone(&self).serve_connection(stream));
                    }
                    Err(error) => tracing::warn!(%error, "accept on the control socket failed"),
                },
                _ = self.shutdown.notified() => break,
            }
        }
        tracing::info!(id = %self.config.id, "shim exits");
        Ok(())
    }

    async fn serve_connection(self: Arc<Self>, stream: UnixStream) {
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::new(reader);
        loop {
            let request = match read_message::<Request, _>(&mut reader).await {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(error) => {
                    let answer = Response::Error(failure(
                        FailureKind::InvalidArgument,
                        format!("bad request: {error}"),
                    ));
                    let _ = write_message(&mut writer, &answer).await;
                    return;
                }
            };
            let deleting = matches!(&request, Request::Delete { exec_id, .. } if exec_id.is_init());
            let answer = match self.handle(request).await {
                Ok(reply) => Response::Ok(reply),
                Err(failure) => Response::Error(failure),
            };
            let written = write_message(&mut writer, &answer).await;
            if deleting && matches!(answer, Response::Ok(_)) {
                self.shutdown.notify_one();
                return;
            }
            if written.is_err() {
                return;
            }
        }
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Result<Reply, Failure> {
        tracing::debug!(?request, "request");
        match request {
            Request::Start => {
                let init = self.process(&ExecId::init())?;
                self.runtime(|runc, id| runc.start(id)).await?;
                Ok(Reply::Started { pid: init.pid })
            }
            Request::Kill {
                signal,
                all,
                exec_id,
            } => self.kill(&exec_id, signal, all).await,
            Request::Exec {
                exec_id,
                mut process,
                terminal,
                stdin,
            } => {
                if exec_id.is_init() || self.lookup(&exec_id).is_some() {
                    return Err(failure(
                        FailureKind::AlreadyExists,
                        format!("process {exec_id} exists"),
                    ));
                }
                if self.process(&ExecId::init())?.exit().is_some() {
                    return Err(failure(
                        FailureKind::FailedPrecondition,
                        "the container is not running",
                    ));
                }
                process.set_terminal(Some(terminal));
                let process_file = self.task.process_spec(&exec_id);
                let json = serde_json::to_vec(&process).map_err(internal)?;
                std::fs::write(&process_file, json).map_err(internal)?;
                let pid = self
                    .launch(exec_id, terminal, stdin, Launch::Exec { process_file })
                    .await?;
                Ok(Reply::Started { pid })
            }
            Request::Pause => self
                .runtime(|runc, id| runc.pause(id))
                .await
                .map(|_| Reply::Done),
            Request::Resume => self
                .runtime(|runc, id| runc.resume(id))
                .await
                .map(|_| Reply::Done),
            Request::State { exec_id } => self.state(&exec_id).await.map(Reply::State),
            Request::Wait { exec_id } => {
                let mut exit = self.process(&exec_id)?.exit.clone();
                let exited = *exit
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| internal("the exit watcher is gone"))?;
                exited
                    .map(Reply::Exit)
                    .ok_or_else(|| internal("the exit watcher woke without an exit"))
            }
            Request::Resize {
                exec_id,
                width,
                height,
            } => {
                let process = self.process(&exec_id)?;
                let console = process.console.as_ref().ok_or_else(|| {
                    failure(
                        FailureKind::FailedPrecondition,
                        format!("process {exec_id} has no terminal"),
                    )
                })?;
                stdio::resize(console, width, height).map_err(internal)?;
                Ok(Reply::Done)
            }
            Request::Metrics => self
                .runtime(|runc, id| runc.stats(id))
                .await
                .map(Reply::Metrics),
            Request::Delete { exec_id, force } => self.delete(&exec_id, force).await,
        }
    }

    fn lookup(&self, exec_id: &ExecId) -> Option<Arc<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
    }

    fn process(&self, exec_id: &ExecId) -> Result<Arc<Process>, Failure> {
        self.lookup(exec_id)
            .ok_or_else(|| failure(FailureKind::NotFound, format!("no process {exec_id}")))
    }

    /// Runs one runtime command for this container on the blocking pool.
    async fn runtime<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Runc, &str) -> Result<T, RuncError> + Send + 'static,
    ) -> Result<T, Failure> {
        let runc = self.runc.clone();
        let id = self.config.id.clone();
        tokio::task::spawn_blocking(move || call(&runc, &id))
            .await
            .map_err(internal)?
            .map_err(runtime_failure)
    }

    /// Prepares stdio, has the runtime create or exec the process, then watches for its exit.
    async fn launch(
        self: &Arc<Self>,
        exec_id: ExecId,
        terminal: bool,
        stdin: bool,
        launch: Launch,
    ) -> Result<u32, Failure> {
        let mut io = PreparedIo::new(&self.task, &exec_id, terminal, stdin).map_err(internal)?;
        let process_stdio = std::mem::take(&mut io.stdio);
        let console_socket = io.console_socket_path();
        let pid_file = self.task.pid_file(&exec_id);
        let _ = std::fs::remove_file(&pid_file);
        let command = match launch {
            Launch::Create => RuntimeCommand::Create(CreateOptions {
                bundle: self.config.bundle.clone(),
                pid_file,
                console_socket,
                no_pivot_root: self.config.no_pivot_root,
                stdio: process_stdio,
            }),
            Launch::Exec { process_file } => RuntimeCommand::Exec(ExecOptions {
                process_file,
                pid_file,
                console_socket,
                detach: true,
                stdio: process_stdio,
            }),
        };
        self.runtime(move |runc, id| match command {
            RuntimeCommand::Create(options) => runc.create(id, options),
            RuntimeCommand::Exec(options) => runc.exec(id, options),
        })
        .await?;
        let pid = self.task.read_pid(&exec_id).map_err(internal)?;
        let exited = self.reaper.subscribe(pid);
        let started = match io.start(exec_id.as_str()) {
            Ok(started) => started,
            Err(error) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                return Err(internal(format!("stdio of process {exec_id}: {error}")));
            }
        };
        let (exit_sender, exit) = watch::channel(None);
        let process = Arc::new(Process {
            pid,
            terminal,
            console: started.console,
            exit,
        });
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(exec_id.clone(), process);
        tokio::spawn(Arc::clone(self).record_exit(
            exec_id,
            exited,
            started.output_done,
            started.stdin_relay,
            exit_sender,
        ));
        Ok(pid)
    }

    async fn record_exit(
        self: Arc<Self>,
        exec_id: ExecId,
        exited: oneshot::Receiver<Reaped>,
        output_done: Option<oneshot::Receiver<()>>,
        stdin_relay: Option<stdio::StdinRelay>,
        sender: watch::Sender<Option<ExitStatus>>,
    ) {
        let Ok(reaped) = exited.await else {
            tracing::error!(%exec_id, "the reaper dropped this process's exit");
            return;
        };
        if let Some(done) = output_done {
            let _ = tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, done).await;
        }
        drop(stdin_relay);
        let exit = exit_status(reaped);
        tracing::info!(%exec_id, code = exit.code, signal = ?exit.signal, "process exited");
        let task = self.task.clone();
        let id = exec_id.clone();
        match tokio::task::spawn_blocking(move || task.write_exit(&id, &exit)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%exec_id, %error, "cannot record the exit status"),
            Err(error) => tracing::error!(%exec_id, %error, "cannot record the exit status"),
        }
        sender.send_replace(Some(exit));
        if exec_id.is_init() {
            self.kill_orphaned_execs();
        }
    }

    /// When the init exits, exec processes go with it: the kernel kills them in the container's own
    /// PID namespace; without one (a shared or host PID namespace) the shim does, as containerd's does.
    fn kill_orphaned_execs(&self) {
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for (exec_id, process) in processes.iter() {
            if !exec_id.is_init() && process.exit().is_none() {
                tracing::info!(%exec_id, pid = process.pid, "killing an exec process that outlived the init");
                let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
            }
        }
    }

    async fn kill(&self, exec_id: &ExecId, signal: i32, all: bool) -> Result<Reply, Failure> {
        let process = self.process(exec_id)?;
        if process.exit().is_some() {
            return Err(failure(
                FailureKind::NotFound,
                format!("process {exec_id} already finished"),
            ));
        }
        if exec_id.is_init() {
            self.runtime(move |runc, id| runc.kill(id, signal, all))
                .await?;
        } else {
            let signal = Signal::try_from(signal).map_err(|_| {
                failure(
                    FailureKind::InvalidArgument,
                    format!("invalid signal {signal}"),
                )
            })?;
            kill(Pid::from_raw(process.pid as i32), signal).map_err(|e| {
                failure(
                    FailureKind::NotFound,
                    format!("signal process {exec_id}: {e}"),
                )
            })?;
        }
        Ok(Reply::Done)
    }

    async fn state(&self, exec_id: &ExecId) -> Result<ProcessState, Failure> {
        let process = self.process(exec_id)?;
        let exit = process.exit();
        let status = match exit {
            Some(_) => TaskStatus::Stopped,
            None if exec_id.is_init() => {
                self.runtime(|runc, id| runc.state(id)).await?.status.into()
            }
            None => TaskStatus::Running,
        };
        Ok(ProcessState {
            exec_id: exec_id.clone(),
            pid: Some(process.pid),
            status,
            terminal: process.terminal,
            exit,
        })
    }

    async fn delete(&self, exec_id: &ExecId, force: bool) -> Result<Reply, Failure> {
        let process = self.process(exec_id)?;
        if !exec_id.is_init() {
            let Some(exit) = process.exit() else {
                return Err(failure(
                    FailureKind::FailedPrecondition,
                    format!("process {exec_id} is running"),
                ));
            };
            self.processes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(exec_id);
            return Ok(Reply::Exit(exit));
        }
        if process.exit().is_none() && !force {
            // A container created but never started may go (runc delete kills its init); not a running one.
            let state = self.runtime(|runc, id| runc.state(id)).await?;
            if state.status != ContainerStatus::Created {
                return Err(failure(
                    FailureKind::FailedPrecondition,
                    "the container is running: kill it first, or delete with force",
                ));
            }
        }
        match self.runtime(move |runc, id| runc.delete(id, force)).await {
            Ok(()) => {}
            Err(error) if error.kind == FailureKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let mut exit = process.exit.clone();
        let exit =
            match tokio::time::timeout(FORCED_EXIT_TIMEOUT, exit.wait_for(Option::is_some)).await {
                Ok(Ok(exit)) => *exit,
                _ => None,
            };
        // From here on a client finds no socket and reads the task dir instead.
        let _ = std::fs::remove_file(SOCKET_NAME);
        Ok(exit.map(Reply::Exit).unwrap_or(Reply::Done))
    }
}

/// Binds `shim.sock` in the current directory (the task dir): a relative name is never too long.
fn bind_control_socket() -> std::io::Result<UnixListener> {
    match std::fs::remove_file(SOCKET_NAME) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(SOCKET_NAME)?;
    std::fs::set_permissions(SOCKET_NAME, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn exit_status(reaped: Reaped) -> ExitStatus {
    match reaped.status {
        WaitStatus::Signaled(_, signal, _) => ExitStatus::signaled(signal as i32, reaped.at),
        WaitStatus::Exited(_, code) => ExitStatus::exited(code, reaped.at),
        other => {
            tracing::error!(?other, "reaped a status that is not an exit");
            ExitStatus::unknown(reaped.at)
        }
    }
}
