//! What a task is on disk and on the wire, shared by the shim and its clients: exec ids, exit statuses,
//! process states, the shim's configuration and the task dir layout. A task dir outlives the daemon and the
//! shim: a restarted daemon finds everything it needs to reattach (socket, stdio files, exit files) there.
//!
//! Task dir layout (`EXEC` is an exec id; the container's init process is `init`):
//!
//! | file | written by | what |
//! | --- | --- | --- |
//! | `shim.json` | spawner | the [`ShimConfig`] |
//! | `shim.pid` | shim | the shim's pid |
//! | `shim.sock` | shim | the control socket (JSON lines), gone once the shim exits |
//! | `shim.log` | shim | the shim's own log (its stderr) |
//! | `runtime.log` | runc | the runtime's JSON log (`--log`) |
//! | `EXEC.stdout`, `EXEC.stderr` | the process / shim | the process's output, appended; with a terminal everything is in `.stdout` |
//! | `EXEC.stdin` | shim | a FIFO relayed to the process's stdin (only when the process has stdin) |
//! | `EXEC.pid` | runc | the process's pid (`--pid-file`) |
//! | `EXEC.process.json` | shim | an exec process's OCI `process` spec (`runc exec --process`) |
//! | `EXEC.exit` | shim | the [`ExitStatus`], written once (temp file, fsync, rename) when the process is reaped |
//!
//! Files the shim or the spawner write whole (`shim.json`, `shim.pid`, `EXEC.exit`) are written durably
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves the old file or the new one. A task
//! dir serves one task: its exit and pid files would otherwise answer for the next one. Where the task dir
//! lives is the caller's choice (skiffd: `ROOT/tasks/NAMESPACE/ID`, with the bundle inside).
//!
//! Exit statuses follow containerd, ctr and the shells: the exit code, or 128 + the signal number when a
//! signal killed the process ([`ExitStatus::signal`] tells the two apart); a status that was lost (the shim
//! died before recording it) is [`UNKNOWN_EXIT_CODE`], never 0. A [`ShimConfig`] names the runtime binary
//! and its `--root` ([`DEFAULT_RUNTIME`] and [`DEFAULT_RUNTIME_ROOT`] unless set), whether the init gets a
//! terminal and stdin, and `no_pivot_root`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::runc::{ContainerStatus, DEFAULT_RUNTIME, DEFAULT_RUNTIME_ROOT};

/// The exec id of a container's init process.
pub const INIT_EXEC_ID: &str = "init";

/// Exit code reported when a process's real status is lost (its shim died before recording it), as
/// containerd reports it. Never 0.
pub const UNKNOWN_EXIT_CODE: u32 = 255;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid exec id {id:?}: {reason}")]
    InvalidExecId { id: String, reason: &'static str },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> TaskError + 'a {
    move |source| TaskError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Names a process of a task: `init` for the container's own process, any other for an exec process.
/// It names files in the task dir, so it is 1..=64 characters of ASCII letters, digits, `_`, `-` and `.`,
/// not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExecId(String);

impl ExecId {
    pub fn init() -> ExecId {
        ExecId(INIT_EXEC_ID.to_string())
    }

    pub fn new(id: impl Into<String>) -> Result<ExecId, TaskError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > 64 {
            Some("longer than 64 characters")
        } else if id.starts_with('.') {
            Some("starts with '.'")
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            Some("only ASCII letters, digits and _ - . are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(TaskError::InvalidExecId { id, reason }),
            None => Ok(ExecId(id)),
        }
    }

    pub fn is_init(&self) -> bool {
        self.0 == INIT_EXEC_ID
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ExecId {
    fn default() -> Self {
        ExecId::init()
    }
}

impl TryFrom<String> for ExecId {
    type Error = TaskError;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        ExecId::new(id)
    }
}

impl From<ExecId> for String {
    fn from(id: ExecId) -> String {
        id.0
    }
}

impl std::fmt::Display for ExecId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a process ended. `code` follows containerd, ctr and the shells: the exit code, or 128 + the
/// signal number when a signal killed it (SIGTERM → 143, SIGKILL → 137); `signal` tells the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: u32,
    /// The signal that killed the process, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// When the shim reaped it, in nanoseconds since the Unix epoch.
    pub exited_at_unix_ns: u64,
}

impl ExitStatus {
    pub fn exited(code: i32, at: SystemTime) -> ExitStatus {
        ExitStatus {
            code: code as u32 & 0xff,
            signal: None,
            exited_at_unix_ns: unix_ns(at),
        }
    }

    pub fn signaled(signal: i32, at: SystemTime) -> ExitStatus {
        ExitStatus {
            code: 128 + signal as u32,
            signal: Some(signal),
            exited_at_unix_ns: unix_ns(at),
        }
    }

    /// A status that was lost: [`UNKNOWN_EXIT_CODE`], no signal.
    pub fn unknown(at: SystemTime) -> ExitStatus {
        ExitStatus {
            code: UNKNOWN_EXIT_CODE,
            signal: None,
            exited_at_unix_ns: unix_ns(at),
        }
    }

    pub fn exited_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.exited_at_unix_ns)
    }
}

fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// A process's status, the runtime's words plus `Unknown` for a process whose shim is gone without
/// having recorded an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Created,
    Running,
    Pausing,
    Paused,
    Stopped,
    Unknown,
}

impl From<ContainerStatus> for TaskStatus {
    fn from(status: ContainerStatus) -> Self {
        match status {
            ContainerStatus::Created => TaskStatus::Created,
            ContainerStatus::Running => TaskStatus::Running,
            ContainerStatus::Pausing => TaskStatus::Pausing,
            ContainerStatus::Paused => TaskStatus::Paused,
            ContainerStatus::Stopped => TaskStatus::Stopped,
        }
    }
}

/// One process of a task as the shim (or, with the shim gone, the task dir) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub exec_id: ExecId,
    pub pid: Option<u32>,
    pub status: TaskStatus,
    pub terminal: bool,
    pub exit: Option<ExitStatus>,
}

fn default_runtime() -> PathBuf {
    PathBuf::from(DEFAULT_RUNTIME)
}

fn default_runtime_root() -> PathBuf {
    PathBuf::from(DEFAULT_RUNTIME_ROOT)
}

/// What a shim runs: written by the spawner to `shim.json`, read by the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// The container id given to the runtime.
    pub id: String,
    /// The OCI bundle (`config.json` + rootfs); its `process.terminal` must equal `terminal`.
    pub bundle: PathBuf,
    /// The OCI runtime binary, a path or a name looked up in `PATH` (`runc`, `crun`).
    #[serde(default = "default_runtime")]
    pub runtime: PathBuf,
    /// The runtime's `--root`.
    #[serde(default = "default_runtime_root")]
    pub runtime_root: PathBuf,
    /// Give the init process a pty (the shim receives its master through `--console-socket`).
    #[serde(default)]
    pub terminal: bool,
    /// Relay the FIFO `init.stdin` to the init process; without it, stdin is `/dev/null`.
    #[serde(default)]
    pub stdin: bool,
    /// `runc create --no-pivot` (a rootfs on ramfs).
    #[serde(default)]
    pub no_pivot_root: bool,
}

impl ShimConfig {
    /// A config with the default runtime (`runc`) and root (`/run/skiff/runc`), no terminal, no stdin.
    pub fn new(id: impl Into<String>, bundle: impl Into<PathBuf>) -> ShimConfig {
        ShimConfig {
            id: id.into(),
            bundle: bundle.into(),
            runtime: default_runtime(),
            runtime_root: default_runtime_root(),
            terminal: false,
            stdin: false,
            no_pivot_root: false,
        }
    }
}

/// A task's directory and the names of the files in it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    path: PathBuf,
}

impl TaskDir {
    pub fn new(path: impl Into<PathBuf>) -> TaskDir {
        TaskDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> PathBuf {
        self.path.join("shim.json")
    }

    pub fn shim_pid(&self) -> PathBuf {
        self.path.join("shim.pid")
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join(SOCKET_NAME)
    }

    pub fn shim_log(&self) -> PathBuf {
        self.path.join("shim.log")
    }

    pub fn runtime_log(&self) -> PathBuf {
        self.path.join("runtime.log")
    }

    pub fn stdout(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "stdout")
    }

    pub fn stderr(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "stderr")
    }

    pub fn stdin(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "stdin")
    }

    pub fn pid_file(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "pid")
    }

    pub fn process_spec(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "process.json")
    }

    pub fn exit_file(&self, exec_id: &ExecId) -> PathBuf {
        self.exec_file(exec_id, "exit")
    }

    fn exec_file(&self, exec_id: &ExecId, kind: &str) -> PathBuf {
        self.path.join(format!("{exec_id}.{kind}"))
    }

    pub fn read_config(&self) -> Result<ShimConfig, TaskError> {
        read_json(&self.config())
    }

    /// Writes `shim.json` (temp file, fsync, rename).
    pub fn write_config(&self, config: &ShimConfig) -> Result<(), TaskError> {
        write_json_durably(&self.config(), config)
    }

    /// The recorded exit of a process, `None` while it has not exited (or was never started).
    pub fn read_exit(&self, exec_id: &ExecId) -> Result<Option<ExitStatus>, TaskError> {
        let path = self.exit_file(exec_id);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", &path)(e)),
            Ok(_) => read_json(&path).map(Some),
        }
    }

    /// Records a process's exit (temp file, fsync, rename, fsync of the directory).
    pub fn write_exit(&self, exec_id: &ExecId, exit: &ExitStatus) -> Result<(), TaskError> {
        write_json_durably(&self.exit_file(exec_id), exit)
    }

    /// The pid the runtime wrote for a process.
    pub fn read_pid(&self, exec_id: &ExecId) -> Result<u32, TaskError> {
        read_pid_file(&self.pid_file(exec_id))
    }

    pub fn read_shim_pid(&self) -> Result<u32, TaskError> {
        read_pid_file(&self.shim_pid())
    }
}

pub(crate) const SOCKET_NAME: &str = "shim.sock";

fn read_pid_file(path: &Path) -> Result<u32, TaskError> {
    let text = std::fs::read_to_string(path).map_err(io_error("read", path))?;
    text.trim().parse::<u32>().map_err(|_| TaskError::Io {
        action: "parse pid in",
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a pid: {:?}", text.trim()),
        ),
    })
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, TaskError> {
    let bytes = std::fs::read(path).map_err(io_error("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| TaskError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as JSON to `path` so that a crash leaves either the old file or the whole new one.
pub(crate) fn write_json_durably<T: Serialize>(path: &Path, value: &T) -> Result<(), TaskError> {
    let bytes = serde_json::to_vec(value).expect("task records serialize");
    write_durably(path, &bytes)
}

pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), TaskError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = File::create(&temp).map_err(io_error("create", &temp))?;
    file.write_all(bytes).map_err(io_error("write", &temp))?;
    file.sync_all().map_err(io_error("fsync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io_error("rename into place", path))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids() {
        assert!(ExecId::init().is_init());
        assert_eq!(ExecId::default(), ExecId::init());
        for good in ["init", "e1", "exec-2.b_c", &"x".repeat(64)] {
            ExecId::new(good).unwrap();
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(ExecId::new(bad).is_err(), "{bad:?}");
        }
        let parsed: Result<ExecId, _> = serde_json::from_str("\"../etc\"");
        assert!(parsed.unwrap_err().to_string().contains("invalid exec id"));
    }

    #[test]
    fn exit_codes_follow_containerd() {
        let at = UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(ExitStatus::exited(7, at).code, 7);
        assert_eq!(ExitStatus::exited(7, at).signal, None);
        let term = ExitStatus::signaled(15, at);
        assert_eq!((term.code, term.signal), (143, Some(15)));
        assert_eq!(term.exited_at(), at);
    }

    #[test]
    fn exit_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let task = TaskDir::new(dir.path());
        let exec = ExecId::new("e1").unwrap();
        assert_eq!(task.read_exit(&exec).unwrap(), None);
        let exit = ExitStatus::signaled(9, SystemTime::now());
        task.write_exit(&exec, &exit).unwrap();
        assert_eq!(task.read_exit(&exec).unwrap(), Some(exit));
        assert!(!dir.path().join("e1.exit.tmp").exists());
        std::fs::write(task.exit_file(&exec), b"{").unwrap();
        assert!(matches!(
            task.read_exit(&exec),
            Err(TaskError::Corrupt { .. })
        ));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let config: ShimConfig = serde_json::from_str(r#"{"id":"c1","bundle":"/b"}"#).unwrap();
        assert_eq!(config, ShimConfig::new("c1", "/b"));
        assert_eq!(config.runtime, PathBuf::from("runc"));
        assert_eq!(config.runtime_root, PathBuf::from("/run/skiff/runc"));
        assert!(
            serde_json::from_str::<ShimConfig>(r#"{"id":"c","bundle":"/b","tty":true}"#).is_err()
        );
    }

    #[test]
    fn layout() {
        let task = TaskDir::new("/t");
        let init = ExecId::init();
        assert_eq!(task.stdout(&init), PathBuf::from("/t/init.stdout"));
        assert_eq!(task.stdin(&init), PathBuf::from("/t/init.stdin"));
        assert_eq!(task.exit_file(&init), PathBuf::from("/t/init.exit"));
        assert_eq!(task.socket(), PathBuf::from("/t/shim.sock"));
    }
}
