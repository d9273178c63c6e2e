//! Running skiff's own binaries: locating them in the cargo target directory, and a `skiffd`
//! daemon with a private root and socket that is stopped (and its mounts detached) on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::process::{check_output, run, ChildProcess};

/// Locates a binary of this workspace, in this order: the env var `NAME_BIN` (upper case,
/// '-' → '_', e.g. `SKIFFD_BIN`), the profile directory the running test executable lives in
/// (`…/debug/deps/testbed-…` → `…/debug/NAME`), then `$CARGO_TARGET_DIR/debug/NAME`.
pub fn cargo_bin(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{var}={} does not name a file", path.display());
        }
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            candidates.push(dir.join(name));
            if dir.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile_dir) = dir.parent() {
                    candidates.push(profile_dir.join(name));
                }
                break;
            }
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("debug").join(name));
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "binary `{name}` not found (looked in {candidates:?}); build it first \
                 (cargo build --bin {name}) or set {var}"
            )
        })
}

/// How to start skiffd.
#[derive(Debug, Clone, Default)]
pub struct SkiffdOptions {
    /// The binary; default `cargo_bin("skiffd")`.
    pub binary: Option<PathBuf>,
    /// Passed as `--config FILE`.
    pub config: Option<PathBuf>,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// A running skiffd with its own `--root` and `--address`; dropping it stops it (SIGTERM, SIGKILL
/// after 10 s), detaches any mount left under its root and removes its directory.
pub struct Skiffd {
    process: Option<ChildProcess>,
    dir: TempDir,
    socket: PathBuf,
    binary: PathBuf,
    options: SkiffdOptions,
}

impl Skiffd {
    /// Starts `cargo_bin("skiffd")` with default options.
    pub fn start() -> Result<Self> {
        Self::start_with(SkiffdOptions::default())
    }

    /// Starts skiffd and waits until its socket accepts a connection.
    pub fn start_with(options: SkiffdOptions) -> Result<Self> {
        let binary = match &options.binary {
            Some(binary) => binary.clone(),
            None => cargo_bin("skiffd")?,
        };
        let dir = tempfile::Builder::new()
            .prefix("skiff-skiffd-")
            .tempdir()
            .context("create skiffd temp dir")?;
        std::fs::create_dir_all(dir.path().join("root"))?;
        let socket = dir.path().join("skiffd.sock");
        let mut skiffd = Self {
            process: None,
            dir,
            socket,
            binary,
            options,
        };
        if let Err(e) = skiffd.spawn() {
            crate::mounts::unmount_all_under(skiffd.dir.path());
            return Err(e);
        }
        Ok(skiffd)
    }

    /// Starts the process with this daemon's root, socket and options; waits until the socket accepts.
    fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(self.root())
            .arg("--address")
            .arg(&self.socket);
        if let Some(config) = &self.options.config {
            command.arg("--config").arg(config);
        }
        command.args(&self.options.extra_args);
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(ChildProcess::spawn_listening(
            "skiffd",
            &mut command,
            &self.dir.path().join("skiffd.log"),
            &self.socket,
        )?);
        Ok(())
    }

    /// Stops skiffd (SIGTERM) if it runs and starts it again with the same root, socket and options, as
    /// after a crash or an upgrade; its log goes on in the same file.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.process = None;
        self.spawn()
    }

    /// The gRPC socket (`--address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The state directory (`--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Everything skiffd printed, across restarts.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("skiffd.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Runs the CLI: `skiff --address SOCK ARGS…` (binary from `cargo_bin("skiff")`).
    pub fn skiff(&self, args: &[&str]) -> Result<Output> {
        let binary = cargo_bin("skiff")?;
        run(Command::new(binary)
            .arg("--address")
            .arg(&self.socket)
            .args(args))
    }

    /// Like `skiff` but fails unless it exits 0; returns stdout.
    pub fn skiff_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.skiff(args)?;
        check_output(&format!("skiff {}", args.join(" ")), &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Kills skiffd with SIGKILL (no shutdown at all, as in a crash) and starts it again with the same root,
    /// socket and options.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.restart_after(Signal::SIGKILL, std::time::Duration::ZERO)
            .map(drop)
    }

    /// Ends skiffd with `signal` (SIGKILL: a crash; SIGTERM: a restart or an upgrade), leaves it down for
    /// `down`, and starts it again with the same root, socket and options. Returns how it ended (a
    /// skiffd still running 10 s after the signal is killed).
    pub fn restart_after(
        &mut self,
        signal: Signal,
        down: std::time::Duration,
    ) -> Result<Option<ExitStatus>> {
        self.restart_after_with(signal, down, || Ok(()))
    }

    /// Like [`restart_after`](Self::restart_after), running `meanwhile` while skiffd is down.
    pub fn restart_after_with(
        &mut self,
        signal: Signal,
        down: std::time::Duration,
        meanwhile: impl FnOnce() -> Result<()>,
    ) -> Result<Option<ExitStatus>> {
        let status = self.end(signal);
        meanwhile()?;
        std::thread::sleep(down);
        self.spawn()?;
        Ok(status)
    }

    /// Ends skiffd with `signal` and waits for it (SIGKILL after 10 s); [`start_again`](Self::start_again)
    /// starts it again.
    pub fn end(&mut self, signal: Signal) -> Option<ExitStatus> {
        self.process.take().map(|mut process| {
            let _ = kill(Pid::from_raw(process.pid() as i32), signal);
            process.stop()
        })
    }

    /// Starts skiffd again after [`end`](Self::end), with the same root, socket and options.
    pub fn start_again(&mut self) -> Result<()> {
        self.spawn()
    }

    /// The pids of the keeper (`skiff-keeper`) serving this skiffd's root.
    pub fn keeper_pids(&self) -> Vec<u32> {
        let socket = self.root().join("keeper.sock").display().to_string();
        crate::process::processes_mentioning(&socket)
            .into_iter()
            .filter(|(_, command)| command.contains("skiff-keeper"))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Ends every container skiffd's tasks still run (through runc with skiffd's `--root ROOT/runc`) and
    /// their shims, which carry the root's path on their command lines.
    fn end_tasks(&self) {
        let runc_root = self.root().join("runc");
        if let Ok(entries) = std::fs::read_dir(&runc_root) {
            for entry in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "-f"])
                    .arg(entry.file_name())
                    .output();
            }
        }
        let root = self.root().display().to_string();
        for (pid, _) in crate::process::processes_mentioning(&root) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Stops skiffd now (SIGTERM, SIGKILL after 10 s) and returns how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.as_mut().map(ChildProcess::stop)
    }
}

impl Drop for Skiffd {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        self.end_tasks();
        let failed = crate::mounts::unmount_all_under(self.dir.path());
        if !failed.is_empty() {
            eprintln!("skiff-tests: could not unmount under skiffd dir: {failed:?}");
        }
    }
}
