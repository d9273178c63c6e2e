//! A throwaway containerd 1.6 with its own root, state, sockets and config, plus `ctr` /
//! `ctr-remote` helpers and eStargz / zstd:chunked conversion through a registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

use crate::process::{check_output, processes_mentioning, run, wait_until, ChildProcess};

/// A `[proxy_plugins.NAME]` entry, e.g. skiffd as a remote snapshotter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPlugin {
    pub name: String,
    /// "snapshot" or "content".
    pub kind: String,
    pub address: PathBuf,
}

impl ProxyPlugin {
    /// A snapshotter proxy plugin named `name` served at the unix socket `address`.
    pub fn snapshotter(name: &str, address: &Path) -> Self {
        Self {
            name: name.to_string(),
            kind: "snapshot".to_string(),
            address: address.to_path_buf(),
        }
    }
}

/// What goes into the generated config.toml besides the private paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerdConfig {
    pub proxy_plugins: Vec<ProxyPlugin>,
    /// TOML appended verbatim to the generated config (e.g. `[plugins."…"]` sections).
    pub extra_toml: String,
}

/// A running containerd; dropping it removes its tasks, stops it, unmounts what is left under
/// its root and state, and removes its directories.
pub struct Containerd {
    process: ChildProcess,
    dir: TempDir,
    socket: PathBuf,
}

impl Containerd {
    /// Starts containerd with the default config (no proxy plugins).
    pub fn start() -> Result<Self> {
        Self::start_with(ContainerdConfig::default())
    }

    /// Starts containerd with `config` and waits until `ctr version` answers.
    pub fn start_with(config: ContainerdConfig) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skiff-containerd-")
            .tempdir()
            .context("create containerd temp dir")?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&state)?;
        let socket = dir.path().join("containerd.sock");
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            render_config(&root, &state, &socket, &dir.path().join("opt"), &config),
        )?;
        let mut process = ChildProcess::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(&config_path)
                .arg("--log-level")
                .arg("warn"),
            &dir.path().join("containerd.log"),
        )?;
        let ready = wait_until(
            "containerd to answer `ctr version`",
            Duration::from_secs(30),
            || {
                process.ensure_running()?;
                if !socket.exists() {
                    return Ok(false);
                }
                let output = run(Command::new("ctr").arg("-a").arg(&socket).arg("version"))?;
                Ok(output.status.success())
            },
        );
        if let Err(e) = ready {
            let log = process.log_tail(40);
            drop(process);
            crate::mounts::unmount_all_under(dir.path());
            return Err(e.context(format!("containerd log:\n{log}")));
        }
        Ok(Self {
            process,
            dir,
            socket,
        })
    }

    /// The gRPC socket (`ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The directory holding everything of this containerd.
    pub fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `ctr -a SOCK ARGS…`, output captured whatever the exit status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ctr").arg("-a").arg(&self.socket).args(args))
    }

    /// `ctr -a SOCK ARGS…`, failing unless it exits 0; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.ctr(args)?;
        check_output(&format!("ctr {}", args.join(" ")), &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ctr-remote -a SOCK ARGS…`, failing unless it exits 0; returns stdout.
    pub fn ctr_remote_ok(&self, args: &[&str]) -> Result<String> {
        let output = run(Command::new("ctr-remote")
            .arg("-a")
            .arg(&self.socket)
            .args(args))?;
        check_output(&format!("ctr-remote {}", args.join(" ")), &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `ctr-remote images push --plain-http REF REF [--user U:P]`, tried up to three times: containerd's
    /// push from a throwaway content store now and then fails with "unexpected EOF" on a loaded machine,
    /// and the registry accepts the same push again.
    pub fn push_with_retries(&self, reference: &str, user: Option<&str>) -> Result<()> {
        let mut push = vec!["images", "push", "--plain-http"];
        if let Some(user) = user {
            push.extend(["--user", user]);
        }
        push.extend([reference, reference]);
        let mut attempt = 1;
        loop {
            match self.ctr_remote_ok(&push) {
                Ok(_) => return Ok(()),
                Err(err) if attempt < 3 => {
                    eprintln!("skiff-tests: push of {reference} failed (attempt {attempt}), again: {err:#}");
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The target digest of image `name` in namespace "default".
    pub fn image_digest(&self, name: &str) -> Result<String> {
        let listing = self.ctr_ok(&["images", "ls"])?;
        listing
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&name))
            .and_then(|cols| cols.get(2).map(|d| d.to_string()))
            .with_context(|| format!("image {name} not in `ctr images ls`:\n{listing}"))
    }

    /// Kills and deletes every task and container in every namespace (best effort).
    pub fn remove_all_tasks(&self) {
        let Ok(namespaces) = self.ctr_ok(&["namespaces", "ls", "-q"]) else {
            return;
        };
        for namespace in namespaces.lines().map(str::trim).filter(|n| !n.is_empty()) {
            if let Ok(tasks) = self.ctr_ok(&["-n", namespace, "tasks", "ls", "-q"]) {
                for task in tasks.lines().map(str::trim).filter(|t| !t.is_empty()) {
                    let _ = self.ctr(&[
                        "-n", namespace, "tasks", "kill", "-a", "-s", "SIGKILL", task,
                    ]);
                    let _ = self.ctr(&["-n", namespace, "tasks", "delete", "-f", task]);
                }
            }
            if let Ok(containers) = self.ctr_ok(&["-n", namespace, "containers", "ls", "-q"]) {
                for container in containers.lines().map(str::trim).filter(|c| !c.is_empty()) {
                    let _ = self.ctr(&["-n", namespace, "containers", "delete", container]);
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_tasks();
        self.process.stop();
        // Shims outlive containerd by design; they carry our socket path on their command line.
        let socket = self.socket.display().to_string();
        for (pid, _) in processes_mentioning(&socket) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let failed = crate::mounts::unmount_all_under(self.dir.path());
        if !failed.is_empty() {
            eprintln!("skiff-tests: could not unmount under containerd dir: {failed:?}");
        }
    }
}

fn toml_string(value: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(value).expect("string serializes")
}

fn render_config(
    root: &Path,
    state: &Path,
    socket: &Path,
    opt: &Path,
    config: &ContainerdConfig,
) -> String {
    let path = |p: &Path| toml_string(&p.display().to_string());
    let mut toml = format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
        root = path(root),
        state = path(state),
        socket = path(socket),
        ttrpc = toml_string(&format!("{}.ttrpc", socket.display())),
        opt = path(opt),
    );
    for plugin in &config.proxy_plugins {
        toml.push_str(&format!(
            "\n[proxy_plugins.{name}]\n  type = {kind}\n  address = {address}\n",
            name = toml_string(&plugin.name),
            kind = toml_string(&plugin.kind),
            address = path(&plugin.address),
        ));
    }
    if !config.extra_toml.is_empty() {
        toml.push('\n');
        toml.push_str(&config.extra_toml);
        toml.push('\n');
    }
    toml
}

/// Lazy-pull layer formats `ctr-remote image convert` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyFormat {
    Estargz,
    ZstdChunked,
}

/// Annotation eStargz layers carry: the digest of their TOC.
pub const ESTARGZ_TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Annotation every converted layer carries: the digest of its uncompressed tar.
pub const UNCOMPRESSED_DIGEST_ANNOTATION: &str = "containerd.io/uncompressed";

/// A converted image as pushed.
#[derive(Debug, Clone)]
pub struct ConvertedImage {
    /// Digest of the pushed manifest.
    pub digest: String,
    /// The pushed manifest.
    pub manifest: Value,
}

/// Pulls `REGISTRY/src`, converts it to eStargz (OCI media types) and pushes `REGISTRY/dst`;
/// returns the pushed manifest digest after checking every layer has a TOC digest annotation.
pub fn convert_estargz(
    containerd: &Containerd,
    registry_host: &str,
    src: &str,
    dst: &str,
    creds: Option<(&str, &str)>,
) -> Result<String> {
    Ok(convert_image(
        containerd,
        registry_host,
        src,
        dst,
        creds,
        LazyFormat::Estargz,
    )?
    .digest)
}

/// [`convert_image`] in a containerd of its own that goes away afterwards (its content store gets every
/// blob), from `registry`'s `src` to its `dst`.
pub fn convert_in_own_containerd(
    registry_host: &str,
    src: &str,
    dst: &str,
    format: LazyFormat,
) -> Result<ConvertedImage> {
    let converter = Containerd::start()?;
    convert_image(&converter, registry_host, src, dst, None, format)
}

/// `ctr-remote images optimize`: converts `src` to `format` (eStargz, or zstd:chunked) with the files
/// `command` reads while it runs (in a container of this containerd, for `period_secs`) placed first and
/// marked for prefetch, and pushes it as `dst`; returns the pushed manifest digest.
pub fn optimize_image(
    containerd: &Containerd,
    registry_host: &str,
    src: &str,
    dst: &str,
    command: &[String],
    period_secs: u32,
    format: LazyFormat,
) -> Result<String> {
    let src_ref = format!("{registry_host}/{src}");
    let dst_ref = format!("{registry_host}/{dst}");
    containerd.ctr_remote_ok(&["images", "pull", "--plain-http", &src_ref])?;
    let entrypoint = serde_json::to_string(command)?;
    let period = period_secs.to_string();
    let mut optimize = vec!["images", "optimize", "--oci"];
    if format == LazyFormat::ZstdChunked {
        optimize.push("--zstdchunked");
    }
    optimize.extend([
        "--period",
        &period,
        "--entrypoint",
        &entrypoint,
        "--args",
        "[]",
        &src_ref,
        &dst_ref,
    ]);
    containerd.ctr_remote_ok(&optimize)?;
    containerd.push_with_retries(&dst_ref, None)?;
    containerd.image_digest(&dst_ref)
}

/// Like `convert_estargz` for either lazy format (host platform only).
pub fn convert_image(
    containerd: &Containerd,
    registry_host: &str,
    src: &str,
    dst: &str,
    creds: Option<(&str, &str)>,
    format: LazyFormat,
) -> Result<ConvertedImage> {
    let src_ref = format!("{registry_host}/{src}");
    let dst_ref = format!("{registry_host}/{dst}");
    let user = creds.map(|(u, p)| format!("{u}:{p}"));
    let mut pull = vec!["images", "pull", "--plain-http"];
    if let Some(user) = &user {
        pull.extend(["--user", user]);
    }
    pull.push(&src_ref);
    containerd.ctr_remote_ok(&pull)?;
    let format_flag = match format {
        LazyFormat::Estargz => "--estargz",
        LazyFormat::ZstdChunked => "--zstdchunked",
    };
    containerd.ctr_remote_ok(&[
        "images",
        "convert",
        format_flag,
        "--oci",
        &src_ref,
        &dst_ref,
    ])?;
    containerd.push_with_retries(&dst_ref, user.as_deref())?;

    let digest = containerd.image_digest(&dst_ref)?;
    let raw = crate::skopeo::inspect_raw(&dst_ref, creds)?;
    let pushed = crate::image::sha256_digest(&raw);
    if pushed != digest {
        bail!("registry has {pushed} for {dst_ref} but containerd converted to {digest}");
    }
    let manifest: Value = serde_json::from_slice(&raw).context("parse converted manifest")?;
    let layers = manifest["layers"]
        .as_array()
        .with_context(|| format!("converted {dst_ref} is not a single manifest: {manifest}"))?;
    for layer in layers {
        let annotations = &layer["annotations"];
        let ok = match format {
            LazyFormat::Estargz => annotations[ESTARGZ_TOC_DIGEST_ANNOTATION].is_string(),
            LazyFormat::ZstdChunked => layer["mediaType"]
                .as_str()
                .is_some_and(|m| m.contains("zstd")),
        };
        if !ok {
            bail!("converted layer lacks the {format:?} markers: {layer}");
        }
    }
    Ok(ConvertedImage { digest, manifest })
}
