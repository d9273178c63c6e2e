//! Background processes owned by the kit: spawned with their output in a log file, stopped by PID
//! (SIGTERM, then SIGKILL after a grace period) and always waited for, also when a test panics.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process that is stopped (SIGTERM, then SIGKILL after `grace`) and reaped when dropped.
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    grace: Duration,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout + stderr appended to `log_path`.
    pub fn spawn(name: &str, command: &mut Command, log_path: &Path) -> Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("open log file {}", log_path.display()))?;
        let log_err = log.try_clone().context("clone log file handle")?;
        // Its own process group: a Ctrl-C in the terminal reaches the program that owns this daemon,
        // which then stops it in order (unmounting what it mounted), not the daemon directly.
        let child = std::os::unix::process::CommandExt::process_group(command, 0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawn {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            grace: Duration::from_secs(10),
            exit: None,
        })
    }

    /// Spawns a daemon like [`spawn`](Self::spawn) and waits (30 s at most) until its unix socket
    /// `socket` accepts a connection; if it exits or never does, it is stopped and the error carries
    /// the last lines of its log.
    pub fn spawn_listening(
        name: &str,
        command: &mut Command,
        log_path: &Path,
        socket: &Path,
    ) -> Result<Self> {
        let mut process = Self::spawn(name, command, log_path)?;
        let ready = wait_until(
            &format!("{name}'s socket to accept"),
            Duration::from_secs(30),
            || {
                process.ensure_running()?;
                Ok(std::os::unix::net::UnixStream::connect(socket).is_ok())
            },
        );
        match ready {
            Ok(()) => Ok(process),
            Err(e) => {
                let log = process.log_tail(40);
                drop(process);
                Err(e.context(format!("{name} log:\n{log}")))
            }
        }
    }

    /// Sets how long `stop` waits after SIGTERM before sending SIGKILL (default 10 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log file (stdout + stderr) so far, lossily decoded.
    pub fn log(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .with_context(|| format!("wait for {}", self.name))?;
        }
        Ok(self.exit)
    }

    /// Fails with the log tail if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            bail!(
                "{} (pid {}) exited with {status}; log {}:\n{}",
                self.name,
                self.pid(),
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Sends `signal` to the process (by PID) unless it has already been reaped.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        if self.exited()?.is_some() {
            return Ok(());
        }
        kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("send {signal} to {} (pid {})", self.name, self.pid()))
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL; always reaps it.
    pub fn stop(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.exited() {
            return status;
        }
        let _ = self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(self.grace) {
            return status;
        }
        let _ = self.signal(Signal::SIGKILL);
        let status = self.child.wait().expect("wait for killed child");
        self.exit = Some(status);
        status
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.exited() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 50 ms until it returns `Ok(true)`; fails after `timeout` naming `what`
/// and the last error `check` returned.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion, capturing its output; fails only if it cannot be started.
pub fn run(command: &mut Command) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {command:?}"))
}

/// Runs a command and fails with its stderr and stdout unless it exits 0; returns stdout.
pub fn run_ok(command: &mut Command) -> Result<String> {
    let output = run(command)?;
    check_output(&format!("{command:?}"), &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Fails with a message quoting stderr and stdout unless `output` is a success.
pub fn check_output(what: &str, output: &Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "{what} failed with {}\nstderr:\n{}\nstdout:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&output.stdout).trim_end()
        );
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the caller retries if it is taken).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// PIDs and command lines of live processes whose command line contains `needle`
/// (e.g. a test's temporary directory), for leak checks.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && !is_zombie(pid) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
