//! Test kit for the runtime crate's tests on the real runc: prerequisite checks, busybox-static bundles
//! and a task guard that leaves no container, shim or zombie behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use skiff_runtime::shim::{Shim, ShimClient, ShimError};
use skiff_runtime::task::{ExecId, ShimConfig, TaskDir};

pub const BUSYBOX: &str = "/bin/busybox";

/// Fails (never skips) naming whatever the tests need and the machine lacks.
pub fn require_prerequisites() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (runc needs it to create containers)".to_string());
    }
    match Command::new("runc").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => missing.push(format!("runc (`runc --version` failed: {})", output.status)),
        Err(error) => missing.push(format!("runc ({error}); Debian package `runc`")),
    }
    match static_elf(Path::new(BUSYBOX)) {
        Ok(true) => {}
        Ok(false) => missing.push(format!(
            "busybox-static ({BUSYBOX} is dynamically linked; Debian package `busybox-static`)"
        )),
        Err(error) => missing.push(format!("busybox-static ({BUSYBOX}: {error})")),
    }
    assert!(
        missing.is_empty(),
        "prerequisites missing (install with tests/install-deps.sh; these tests do not skip):\n  - {}",
        missing.join("\n  - ")
    );
    // Shims are re-parented to the nearest subreaper when their launcher exits; make that this test
    // process, so the guards can reap them (PID 1 of a minimal VM may never reap anything).
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
}

/// Whether an ELF file has no program interpreter (PT_INTERP), i.e. runs in an empty rootfs.
fn static_elf(path: &Path) -> Result<bool, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    for index in 0..count {
        let at = phoff + index * entry_size;
        let header = bytes.get(at..at + 4).ok_or("truncated program headers")?;
        if u32::from_le_bytes(header.try_into().unwrap()) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn unique_id(name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "skiff-test-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the container's init runs and how.
pub struct Spec<'a> {
    pub args: &'a [&'a str],
    pub terminal: bool,
    /// Without a PID namespace the init is not PID 1 there, so SIGTERM's default action kills it.
    pub pid_namespace: bool,
}

impl<'a> Spec<'a> {
    pub fn new(args: &'a [&'a str]) -> Spec<'a> {
        Spec {
            args,
            terminal: false,
            pid_namespace: true,
        }
    }
}

/// A bundle (`config.json` from `runc spec`, adjusted) with a busybox-static rootfs, a task dir and a
/// runc root, all in one temp dir.
pub struct Bed {
    pub dir: tempfile::TempDir,
    pub id: String,
}

impl Bed {
    pub fn new(name: &str, spec: &Spec) -> Bed {
        let dir = tempfile::Builder::new()
            .prefix("skiff-rt-")
            .tempdir()
            .unwrap();
        let bed = Bed {
            dir,
            id: unique_id(name),
        };
        let bin = bed.bundle().join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for empty in ["proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(bed.bundle().join("rootfs").join(empty)).unwrap();
        }
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        let made = Command::new("runc")
            .arg("spec")
            .current_dir(bed.bundle())
            .output()
            .unwrap();
        assert!(made.status.success(), "runc spec: {made:?}");
        let path = bed.bundle().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["process"]["terminal"] = spec.terminal.into();
        config["process"]["args"] = spec
            .args
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into();
        config["root"]["readonly"] = false.into();
        let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces
            .retain(|ns| ns["type"] != "network" && (spec.pid_namespace || ns["type"] != "pid"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        bed
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    pub fn task_dir(&self) -> PathBuf {
        self.dir.path().join("task")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    pub fn task(&self) -> TaskDir {
        TaskDir::new(self.task_dir())
    }

    pub fn config(&self, terminal: bool, stdin: bool) -> ShimConfig {
        ShimConfig {
            runtime_root: self.runc_root(),
            terminal,
            stdin,
            ..ShimConfig::new(&self.id, self.bundle())
        }
    }

    pub async fn spawn(&self, terminal: bool, stdin: bool) -> ShimClient {
        self.try_spawn(terminal, stdin)
            .await
            .expect("spawn the shim")
    }

    pub async fn try_spawn(&self, terminal: bool, stdin: bool) -> Result<ShimClient, ShimError> {
        Shim::spawn(
            &shim_binary(),
            &self.task_dir(),
            &self.config(terminal, stdin),
        )
        .await
    }

    /// `runc state ID` on the test's root: `None` once runc has no such container.
    pub fn runc_status(&self) -> Option<String> {
        let output = Command::new("runc")
            .arg("--root")
            .arg(self.runc_root())
            .args(["state", &self.id])
            .output()
            .unwrap();
        if !output.status.success() {
            return None;
        }
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        Some(state["status"].as_str().unwrap().to_string())
    }

    pub fn read(&self, file: PathBuf) -> String {
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
    }
}

impl Drop for Bed {
    /// Kills what is left: the shim, then every container process, then the runc state, reaping the
    /// processes this (subreaper) test process inherited.
    fn drop(&mut self) {
        let task = self.task();
        if let Ok(pid) = task.read_shim_pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            reap(pid);
        }
        let runc = |args: &[&str]| {
            Command::new("runc")
                .arg("--root")
                .arg(self.runc_root())
                .args(args)
                .output()
        };
        let _ = runc(&["kill", "--all", &self.id, "KILL"]);
        if let Ok(pid) = task.read_pid(&ExecId::init()) {
            reap(pid);
        }
        let _ = runc(&["delete", "--force", &self.id]);
    }
}

pub fn shim_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff-shim"))
}

/// Waits (up to 10 s) for `pid` to exit and reaps it if it is this process's child. Returns whether it
/// is gone.
pub fn reap(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = Pid::from_raw(pid as i32);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            // Not our child: gone when /proc says so (or it is a zombie of someone else).
            Err(_) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat)
                    if stat
                        .rsplit(')')
                        .next()
                        .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
                {
                    return true
                }
                Ok(_) => {}
            },
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `file` until it contains `needle` (10 s), returning its contents.
pub fn wait_for_text(file: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never contained {needle:?}; it holds {text:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `input` into a stdin FIFO and closes it (the open blocks until the shim's relay reads).
pub async fn write_stdin(fifo: PathBuf, input: &'static [u8]) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        writer.write_all(input).unwrap();
    })
    .await
    .unwrap();
}
