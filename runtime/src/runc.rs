//! A typed driver for an OCI runtime binary with runc's command line (runc by default; crun, selected by
//! path or name, takes the same commands). Every call runs `BINARY --root ROOT [--log FILE --log-format
//! json] COMMAND ...`, and a failure carries the runtime's own message, read back from its JSON log (or its
//! stderr when the log has none).
//!
//! The driver knows no shim, task dir or image. How the binary is spawned and waited for is a seam
//! ([`ProcessRunner`]): a process that reaps every child itself (the shim, a child subreaper) must hand the
//! runtime's exit status to the driver instead of letting `Command::output` race its reaper.
//!
//! Commands: `create` (`--bundle`, `--pid-file`, optional `--console-socket` and `--no-pivot`), `start`,
//! `exec` (`--process`, `--pid-file`, optional `--detach` and `--console-socket`), `kill` (a signal 1..=64,
//! optional `--all`), `delete` (optional `--force`), `pause`, `resume`, `state` (JSON, parsed into
//! [`ContainerState`]) and `events --stats` (one sample of the cgroup statistics, [`parse_stats`]). Ids are
//! checked first ([`check_container_id`]: no leading `-`). skiff gives the runtime a `--root` of its own
//! ([`DEFAULT_RUNTIME_ROOT`] unless configured; skiffd uses `ROOT/runc`), apart from any other user of runc
//! on the host.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The runtime binary used when none is configured (looked up in `PATH`).
pub const DEFAULT_RUNTIME: &str = "runc";
/// skiff's own `--root` for the runtime's state, apart from any other runc user on the host.
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/skiff/runc";

/// Memory limits at or above this mean "no limit": cgroup v1 reports `PAGE_COUNTER_MAX` pages
/// (0x7FFFFFFFFFFFF000 bytes with 4 KiB pages), cgroup v2 `max` becomes `u64::MAX`.
const UNLIMITED_MEMORY: u64 = 0x7FFF_FFFF_FFFF_F000;

/// Runs a prepared command to completion and returns its exit status and whatever output it captured
/// (only the streams the command was given as `Stdio::piped()`).
pub trait ProcessRunner: Send + Sync {
    fn run(&self, command: Command) -> io::Result<Output>;
}

/// Spawns and waits with the standard library: right for any process that does not reap other children.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectRunner;

impl ProcessRunner for DirectRunner {
    fn run(&self, mut command: Command) -> io::Result<Output> {
        command.output()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("invalid signal {0}: must be 1..=64")]
    InvalidSignal(i32),
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("{binary} {command} {id}: {message}")]
    Failed {
        binary: PathBuf,
        command: &'static str,
        id: String,
        /// The runtime's exit code, `None` when it was killed by a signal.
        code: Option<i32>,
        message: String,
    },
    #[error("{binary} {command} {id}: unreadable output: {source}")]
    Output {
        binary: PathBuf,
        command: &'static str,
        id: String,
        source: serde_json::Error,
    },
}

impl RuncError {
    /// The runtime said the container does not exist (runc and crun both word it so).
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuncError::Failed { message, .. } if message.contains("does not exist"))
    }
}

/// A container's status as the runtime reports it (`runc state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Pausing,
    Paused,
    Stopped,
}

/// `runc state ID`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    /// The init process, `None` once it has stopped (runc reports 0).
    pub pid: Option<u32>,
    pub status: ContainerStatus,
    pub bundle: PathBuf,
}

#[derive(Deserialize)]
struct RawState {
    id: String,
    #[serde(default)]
    pid: u32,
    status: ContainerStatus,
    #[serde(default)]
    bundle: PathBuf,
}

/// Resource usage of a container's cgroup (`runc events --stats ID`), typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time consumed, in nanoseconds.
    pub usage_ns: u64,
    pub kernel_ns: u64,
    pub user_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    pub max_usage_bytes: u64,
    /// `None` when the cgroup has no memory limit.
    pub limit_bytes: Option<u64>,
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: u64,
    /// `None` when the cgroup has no pids limit.
    pub limit: Option<u64>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: RawStats,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStats {
    cpu: RawCpu,
    memory: RawMemory,
    pids: RawPids,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCpu {
    usage: RawCpuUsage,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCpuUsage {
    total: u64,
    kernel: u64,
    user: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMemory {
    cache: u64,
    usage: RawMemoryEntry,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMemoryEntry {
    limit: u64,
    usage: u64,
    max: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPids {
    current: u64,
    limit: u64,
}

/// Parses the output of `runc events --stats` (one `{"type":"stats","data":{...}}` object).
pub fn parse_stats(json: &[u8]) -> Result<Stats, serde_json::Error> {
    let event: RawEvent = serde_json::from_slice(json)?;
    if event.kind != "stats" {
        return Err(serde::de::Error::custom(format!(
            "expected a stats event, got type {:?}",
            event.kind
        )));
    }
    let data = event.data;
    Ok(Stats {
        cpu: CpuStats {
            usage_ns: data.cpu.usage.total,
            kernel_ns: data.cpu.usage.kernel,
            user_ns: data.cpu.usage.user,
        },
        memory: MemoryStats {
            usage_bytes: data.memory.usage.usage,
            max_usage_bytes: data.memory.usage.max,
            limit_bytes: (data.memory.usage.limit != 0
                && data.memory.usage.limit < UNLIMITED_MEMORY)
                .then_some(data.memory.usage.limit),
            cache_bytes: data.memory.cache,
        },
        pids: PidsStats {
            current: data.pids.current,
            limit: (data.pids.limit != 0 && data.pids.limit != u64::MAX).then_some(data.pids.limit),
        },
    })
}

/// The container's or exec process's standard streams; each defaults to `/dev/null`. Ignored by the
/// runtime when a console socket is given (the process then gets a pty).
#[derive(Debug)]
pub struct ProcessStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl Default for ProcessStdio {
    fn default() -> Self {
        ProcessStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

/// `runc create --bundle B --pid-file F [--console-socket S] [--no-pivot] ID`.
#[derive(Debug)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: PathBuf,
    /// A unix socket the runtime sends the pty master to (the spec must ask for a terminal).
    pub console_socket: Option<PathBuf>,
    /// Use `chroot`-like setup instead of `pivot_root` (a rootfs on ramfs cannot pivot).
    pub no_pivot_root: bool,
    pub stdio: ProcessStdio,
}

/// `runc exec --process P --pid-file F [--detach] [--console-socket S] ID`.
#[derive(Debug)]
pub struct ExecOptions {
    /// A JSON file holding the OCI runtime spec `process` object to run.
    pub process_file: PathBuf,
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    /// Return once the process runs instead of waiting for it.
    pub detach: bool,
    pub stdio: ProcessStdio,
}

/// The driver: which binary, which `--root`, which log, and how to run it.
#[derive(Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    log: Option<PathBuf>,
    runner: Arc<dyn ProcessRunner>,
}

impl std::fmt::Debug for Runc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runc")
            .field("binary", &self.binary)
            .field("root", &self.root)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl Runc {
    /// `binary` is a path or a name looked up in `PATH` (`runc`, `crun`); `root` holds the runtime's state.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Runc {
        Runc {
            binary: binary.into(),
            root: root.into(),
            log: None,
            runner: Arc::new(DirectRunner),
        }
    }

    /// Passes `--log FILE --log-format json`; failures then carry the runtime's logged error message.
    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Runc {
        self.log = Some(log.into());
        self
    }

    pub fn with_runner(mut self, runner: Arc<dyn ProcessRunner>) -> Runc {
        self.runner = runner;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn create(&self, id: &str, options: CreateOptions) -> Result<(), RuncError> {
        let mut command = self.command("create", id)?;
        command
            .arg("--bundle")
            .arg(&options.bundle)
            .arg("--pid-file")
            .arg(&options.pid_file);
        if let Some(socket) = &options.console_socket {
            command.arg("--console-socket").arg(socket);
        }
        if options.no_pivot_root {
            command.arg("--no-pivot");
        }
        command.arg(id);
        set_stdio(&mut command, options.stdio);
        self.run("create", id, command).map(drop)
    }

    pub fn start(&self, id: &str) -> Result<(), RuncError> {
        self.simple("start", id, &[])
    }

    pub fn exec(&self, id: &str, options: ExecOptions) -> Result<(), RuncError> {
        let mut command = self.command("exec", id)?;
        command
            .arg("--process")
            .arg(&options.process_file)
            .arg("--pid-file")
            .arg(&options.pid_file);
        if options.detach {
            command.arg("--detach");
        }
        if let Some(socket) = &options.console_socket {
            command.arg("--console-socket").arg(socket);
        }
        command.arg(id);
        set_stdio(&mut command, options.stdio);
        self.run("exec", id, command).map(drop)
    }

    /// Sends `signal` (a number, 1..=64) to the init process, or with `all` to every process of the container.
    pub fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuncError> {
        if !(1..=64).contains(&signal) {
            return Err(RuncError::InvalidSignal(signal));
        }
        let mut command = self.command("kill", id)?;
        if all {
            command.arg("--all");
        }
        command.arg(id).arg(signal.to_string());
        self.run_captured("kill", id, command).map(drop)
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        self.simple("delete", id, if force { &["--force"] } else { &[] })
    }

    pub fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.simple("pause", id, &[])
    }

    pub fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.simple("resume", id, &[])
    }

    pub fn state(&self, id: &str) -> Result<ContainerState, RuncError> {
        let mut command = self.command("state", id)?;
        command.arg(id);
        let output = self.run_captured("state", id, command)?;
        let raw: RawState = serde_json::from_slice(&output.stdout)
            .map_err(|source| self.output_error("state", id, source))?;
        Ok(ContainerState {
            id: raw.id,
            pid: (raw.pid != 0).then_some(raw.pid),
            status: raw.status,
            bundle: raw.bundle,
        })
    }

    /// One sample of the container's cgroup statistics (`events --stats`).
    pub fn stats(&self, id: &str) -> Result<Stats, RuncError> {
        let mut command = self.command("events", id)?;
        command.arg("--stats").arg(id);
        let output = self.run_captured("events", id, command)?;
        parse_stats(&output.stdout).map_err(|source| self.output_error("events", id, source))
    }

    fn simple(&self, name: &'static str, id: &str, flags: &[&str]) -> Result<(), RuncError> {
        let mut command = self.command(name, id)?;
        command.args(flags).arg(id);
        self.run_captured(name, id, command).map(drop)
    }

    /// `BINARY --root ROOT [--log L --log-format json] NAME`, after checking the id.
    fn command(&self, name: &str, id: &str) -> Result<Command, RuncError> {
        check_container_id(id)?;
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root);
        if let Some(log) = &self.log {
            command
                .arg("--log")
                .arg(log)
                .arg("--log-format")
                .arg("json");
        }
        command.arg(name);
        Ok(command)
    }

    fn run_captured(
        &self,
        name: &'static str,
        id: &str,
        mut command: Command,
    ) -> Result<Output, RuncError> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.run(name, id, command)
    }

    fn run(&self, name: &'static str, id: &str, command: Command) -> Result<Output, RuncError> {
        let log_offset = self.log.as_deref().map(log_len).unwrap_or(0);
        let output = self
            .runner
            .run(command)
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(output);
        }
        let message = self
            .log
            .as_deref()
            .and_then(|log| last_logged_error(log, log_offset))
            .or_else(|| last_line(&output.stderr))
            .unwrap_or_else(|| format!("failed with {}", output.status));
        Err(RuncError::Failed {
            binary: self.binary.clone(),
            command: name,
            id: id.to_string(),
            code: output.status.code(),
            message,
        })
    }

    fn output_error(
        &self,
        command: &'static str,
        id: &str,
        source: serde_json::Error,
    ) -> RuncError {
        RuncError::Output {
            binary: self.binary.clone(),
            command,
            id: id.to_string(),
            source,
        }
    }
}

fn set_stdio(command: &mut Command, stdio: ProcessStdio) {
    command
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
}

/// runc accepts `^[\w+-\.]+$`; a leading `-` would read as a flag.
pub fn check_container_id(id: &str) -> Result<(), RuncError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > 1024 {
        Some("longer than 1024 bytes")
    } else if id.starts_with('-') {
        Some("starts with '-'")
    } else if id == "." || id == ".." {
        Some("is a relative directory name")
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'))
    {
        Some("only ASCII letters, digits and _ + - . are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RuncError::InvalidId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The last `error`/`fatal` message the runtime logged after `offset`.
fn last_logged_error(path: &Path, offset: u64) -> Option<String> {
    let mut file = File::open(path).ok()?;
    // A log truncated since (or rotated) is read from its start.
    if file.metadata().ok()?.len() >= offset {
        file.seek(SeekFrom::Start(offset)).ok()?;
    }
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<LogLine>(&line).ok())
        .filter(|line| {
            matches!(line.level.as_str(), "error" | "fatal" | "panic") && !line.msg.is_empty()
        })
        .map(|line| line.msg)
        .last()
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from runc 1.1 on cgroup v1, shortened.
    const STATS_V1: &str = r#"{"type":"stats","id":"c1","data":{"cpu":{"usage":{"total":17285011,
        "percpu":[2102853,15182158],"kernel":10000000,"user":0},"throttling":{}},
        "memory":{"cache":4096,"usage":{"limit":9223372036854771712,"usage":507904,"max":2256896,"failcnt":0},
        "swap":{"limit":9223372036854771712,"usage":507904}},"pids":{"current":1},"blkio":{},"hugetlb":{},
        "network_interfaces":null}}"#;

    #[test]
    fn stats_from_runc_events() {
        let stats = parse_stats(STATS_V1.as_bytes()).unwrap();
        assert_eq!(
            stats,
            Stats {
                cpu: CpuStats {
                    usage_ns: 17285011,
                    kernel_ns: 10000000,
                    user_ns: 0
                },
                memory: MemoryStats {
                    usage_bytes: 507904,
                    max_usage_bytes: 2256896,
                    limit_bytes: None,
                    cache_bytes: 4096
                },
                pids: PidsStats {
                    current: 1,
                    limit: None
                },
            }
        );
    }

    #[test]
    fn stats_with_limits() {
        let json = r#"{"type":"stats","data":{"memory":{"usage":{"limit":67108864,"usage":10}},
            "pids":{"current":3,"limit":20}}}"#;
        let stats = parse_stats(json.as_bytes()).unwrap();
        assert_eq!(stats.memory.limit_bytes, Some(67108864));
        assert_eq!(stats.pids.limit, Some(20));
        assert_eq!(stats.cpu, CpuStats::default());
    }

    #[test]
    fn stats_refuses_other_events_and_garbage() {
        let oom = parse_stats(br#"{"type":"oom","id":"c1"}"#).unwrap_err();
        assert!(oom.to_string().contains("oom"), "{oom}");
        assert!(parse_stats(b"not json").is_err());
    }

    #[test]
    fn container_ids() {
        for good in ["a", "web-1", "x_y.z+2", &"a".repeat(1024)] {
            check_container_id(good).unwrap();
        }
        for bad in ["", "-rf", "..", ".", "a/b", "a b", "é", &"a".repeat(1025)] {
            let error = check_container_id(bad).unwrap_err();
            assert!(
                matches!(error, RuncError::InvalidId { .. }),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn failure_message_comes_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old failure\"}\n{\"level\":\"info\",\"msg\":\"noise\"}\n",
        )
        .unwrap();
        let offset = log_len(&log);
        assert_eq!(last_logged_error(&log, offset), None);
        std::fs::write(
            &log,
            format!(
                "{}{}",
                std::fs::read_to_string(&log).unwrap(),
                "{\"level\":\"warning\",\"msg\":\"w\"}\nnot json\n{\"level\":\"error\",\"msg\":\"container does not exist\"}\n"
            ),
        )
        .unwrap();
        assert_eq!(
            last_logged_error(&log, offset).as_deref(),
            Some("container does not exist")
        );
        assert_eq!(last_line(b"first\nsecond\n\n").as_deref(), Some("second"));
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let runc = Runc::new("/nonexistent/skiff-no-runtime", "/tmp/skiff-no-root");
        let error = runc.state("c1").unwrap_err();
        assert!(matches!(error, RuncError::Spawn { .. }), "{error}");
        assert!(
            error.to_string().contains("/nonexistent/skiff-no-runtime"),
            "{error}"
        );
        let error = runc.kill("c1", 0, false).unwrap_err();
        assert!(matches!(error, RuncError::InvalidSignal(0)), "{error}");
    }
}
