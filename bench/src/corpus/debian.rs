//! Debian-based corpus layers, made offline from the machine's own apt sources: a minbase root
//! filesystem from `debootstrap`, then one layer per install step: `apt-get install` (below), or PyPI
//! and npm packages ([`super::packages`]).
//!
//! Each apt step runs in a chroot on an overlayfs whose lower directories are the earlier steps' trees and
//! whose upper directory, once unmounted, is the step's layer (see [`super::dir_layer`]). apt's package
//! lists and downloaded `.deb`s are bind-mounted from the cache, so the layers hold neither — the image a
//! Dockerfile with `rm -rf /var/lib/apt/lists/*` makes — and a rebuild downloads nothing.
//!
//! Cache (`--cache`, default `/var/cache/skiff-bench`):
//! - `debootstrap/`: debootstrap's `--cache-dir` (the base system's `.deb`s);
//! - `apt/lists`, `apt/archives`: apt's lists and `.deb`s for the install steps;
//! - `pip/`, `npm/`: PyPI wheels and npm's cache for the language-package steps ([`super::packages`]);
//! - `layers/KEY/`: a finished step — `tree/` (its root filesystem or upper directory, the lower
//!   directory of later steps), `layer.tar.gz` and `layer.json` (its digests). KEY hashes the step's
//!   inputs (suite, mirror, architecture, packages, parent step), so a step is built once; a step that
//!   failed half-way is left as `KEY.partial/` (with its `debootstrap.log` / `apt.log`) until the next
//!   build removes it;
//! - `lock`: held by the build using the cache (a second build waits).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_tests::mounts::{ensure_unmounted_under, unmount_all_under};
use skiff_tests::{LayerBlobFile, Platform};

use super::dir_layer::{write_layer, TreeOptions};
use super::packages::{
    host_python, image_dpkg_status, npm_command, pip_commands, under_root, WheelTarget,
};

/// Bumped when what a step produces changes for the same inputs (cleanup, tar writer).
const LAYER_FORMAT: &str = "skiff-bench corpus layer v2";

/// The PATH the chroot'ed commands and the images get.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where debootstrap and apt fetch from: the host's own apt source for its release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// The archive's base URI, without a trailing '/'.
    pub mirror: String,
    /// The release codename (`bookworm`).
    pub suite: String,
    /// The `Signed-By` keyring, when the source names one.
    pub keyring: Option<PathBuf>,
}

impl AptSource {
    /// The host's release (`VERSION_CODENAME` of /etc/os-release) and the apt source serving it.
    pub fn from_host() -> Result<Self> {
        let os_release = std::fs::read_to_string("/etc/os-release")
            .context("read /etc/os-release (the host's Debian release)")?;
        let suite = codename(&os_release)
            .context("/etc/os-release has no VERSION_CODENAME: not a Debian-like host")?;
        let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
        if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
            let mut listed: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
            listed.sort();
            files.extend(listed);
        }
        for file in &files {
            let name = file.to_string_lossy();
            let parse = if name.ends_with(".sources") {
                parse_deb822
            } else if name.ends_with(".list") {
                parse_one_line
            } else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            if let Some(source) = parse(&text, &suite) {
                return Ok(source);
            }
        }
        bail!(
            "no apt source of type deb serves suite {suite:?} in /etc/apt/sources.list or \
             /etc/apt/sources.list.d/*.{{list,sources}}; add one (the corpus is built from it)"
        )
    }
}

/// `VERSION_CODENAME` of an os-release file.
pub fn codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim().trim_matches('"').trim_matches('\'');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The first `Types: deb` stanza of a deb822 `.sources` file listing `suite`, its first http(s) URI.
pub fn parse_deb822(text: &str, suite: &str) -> Option<AptSource> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut stanzas = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !stanza.is_empty() {
                stanzas.push(std::mem::take(&mut stanza));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line (e.g. an inline Signed-By key): part of the previous field.
            if let Some(last) = stanza.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            stanza.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    stanzas.into_iter().find_map(|fields| {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let words = |name: &str| -> Vec<String> {
            field(name)
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        if field("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            return None;
        }
        if !words("types").iter().any(|t| t == "deb") || !words("suites").iter().any(|s| s == suite)
        {
            return None;
        }
        let mirror = words("uris").into_iter().find(|u| is_http(u))?;
        // A keyring path (an inline key is a multi-line value: debootstrap then uses its default).
        let keyring = field("signed-by")
            .filter(|v| v.starts_with('/') && !v.contains('\n'))
            .map(PathBuf::from);
        Some(AptSource {
            mirror: mirror.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            keyring,
        })
    })
}

/// The first one-line `deb [options] URI SUITE COMPONENTS…` entry for `suite`.
pub fn parse_one_line(text: &str, suite: &str) -> Option<AptSource> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(after) => {
                let (options, rest) = after.split_once(']')?;
                (options, rest)
            }
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        if words.next()? != suite || !is_http(uri) {
            return None;
        }
        let keyring = options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
            .map(PathBuf::from);
        Some(AptSource {
            mirror: uri.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            keyring,
        })
    })
}

fn is_http(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

/// One build step on top of the Debian base system.
#[derive(Debug, Clone, Copy)]
pub enum Install {
    /// `apt-get install --no-install-recommends PACKAGES`, in a chroot.
    Apt(&'static [&'static str]),
    /// `pip install PACKAGES`: PyPI wheels into the image's `/usr/local/lib/pythonX.Y/dist-packages`.
    Pip(&'static [&'static str]),
    /// `npm install PACKAGES` in the project directory `dir` (absolute), which also gets `files`
    /// (name, contents).
    Npm {
        dir: &'static str,
        packages: &'static [&'static str],
        files: &'static [(&'static str, &'static str)],
    },
}

impl Install {
    /// The host programs the step runs (for the prerequisite check).
    pub fn needs(&self) -> &'static [&'static str] {
        match self {
            Install::Apt(_) => &["chroot", "overlayfs"],
            Install::Pip(_) => &["python3", "pip"],
            Install::Npm { .. } => &["npm"],
        }
    }
}

/// A finished build step: its tree (a lower directory for later steps) and its layer blob.
#[derive(Debug, Clone)]
pub struct Step {
    pub key: String,
    pub tree: PathBuf,
    pub layer: LayerBlobFile,
}

/// `layer.json` of a cached step.
#[derive(Debug, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    size: u64,
    media_type: String,
    /// What made it (for people reading the cache).
    made_by: String,
}

/// Builds (or finds in the cache) Debian base and apt-install layers.
pub struct DebianBuilder {
    cache: PathBuf,
    source: AptSource,
    architecture: String,
    /// `CACHE/lock`, held while this builder lives: one build at a time per cache.
    _lock: Flock<File>,
}

impl DebianBuilder {
    pub fn new(cache: &Path) -> Result<Self> {
        let source = AptSource::from_host()?;
        let cache = std::path::absolute(cache)
            .with_context(|| format!("cache directory {}", cache.display()))?;
        for dir in [
            "debootstrap",
            "apt/lists/partial",
            "apt/archives/partial",
            "pip",
            "npm",
            "layers",
        ] {
            let dir = cache.join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        // overlayfs option strings separate lower directories with ':' and options with ','.
        if cache.to_string_lossy().contains([':', ',', '\\']) {
            bail!(
                "cache directory {} contains ':', ',' or '\\', which overlayfs options cannot name",
                cache.display()
            );
        }
        let lock_path = cache.join("lock");
        let file =
            File::create(&lock_path).with_context(|| format!("create {}", lock_path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, nix::Error::EWOULDBLOCK)) => {
                println!("waiting for another corpus build using {}", cache.display());
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("lock {}", lock_path.display()))?
            }
            Err((_, e)) => {
                return Err(e).with_context(|| format!("lock {}", lock_path.display()));
            }
        };
        Ok(Self {
            cache,
            source,
            architecture: Platform::host().architecture,
            _lock: lock,
        })
    }

    pub fn source(&self) -> &AptSource {
        &self.source
    }

    /// The base system and one step per install, bottom first (each built unless cached).
    pub fn steps(&self, installs: &[Install]) -> Result<Vec<Step>> {
        let mut steps = vec![self.base()?];
        for install in installs {
            let step = match install {
                Install::Apt(packages) => self.apt_install(&steps, packages)?,
                Install::Pip(packages) => self.pip_install(&steps, packages)?,
                Install::Npm {
                    dir,
                    packages,
                    files,
                } => self.npm_install(&steps, dir, packages, files)?,
            };
            steps.push(step);
        }
        Ok(steps)
    }

    /// `debootstrap --variant=minbase`, without the `.deb`s and package lists it leaves behind.
    fn base(&self) -> Result<Step> {
        let AptSource {
            mirror,
            suite,
            keyring,
        } = &self.source;
        let made_by = format!(
            "debootstrap --variant=minbase --arch={} {suite} / {mirror}",
            self.architecture
        );
        self.cached_or_build(&[LAYER_FORMAT, &made_by], &made_by, |dir| {
            let tree = dir.join("tree");
            let mut command = Command::new("debootstrap");
            command
                .arg("--variant=minbase")
                .arg(format!("--arch={}", self.architecture))
                .arg(format!(
                    "--cache-dir={}",
                    self.cache.join("debootstrap").display()
                ));
            if let Some(keyring) = keyring {
                command.arg(format!("--keyring={}", keyring.display()));
            }
            command.arg(suite).arg(&tree).arg(mirror);
            let result = run_logged(&mut command, &dir.join("debootstrap.log"));
            // debootstrap mounts /proc and /sys in the target while it configures packages.
            ensure_unmounted_under(&tree)?;
            result?;
            for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
                empty_dir_except(&tree.join(dir), &["partial", "lock"])?;
            }
            // The runtime provides resolv.conf; an empty one is the target the install steps bind the
            // host's over.
            std::fs::write(tree.join("etc/resolv.conf"), "").context("empty /etc/resolv.conf")?;
            let options = TreeOptions {
                overlay_upper: false,
                skip_contents_of: ["dev", "proc", "sys"].map(PathBuf::from).to_vec(),
            };
            write_layer(&tree, &options, &dir.join("layer.tar.gz"))
        })
    }

    /// `apt-get install --no-install-recommends PACKAGES` on top of `lower` (bottom first).
    fn apt_install(&self, lower: &[Step], packages: &[&str]) -> Result<Step> {
        let parent = lower.last().context("an install step needs a base")?;
        let made_by = format!(
            "apt-get install -y --no-install-recommends {}",
            packages.join(" ")
        );
        let parent_line = format!("parent {}", parent.key);
        self.cached_or_build(&[LAYER_FORMAT, &parent_line, &made_by], &made_by, |dir| {
            let upper = dir.join("tree");
            let work = dir.join("work");
            let merged = dir.join("merged");
            for d in [&upper, &work, &merged] {
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            }
            let lowerdirs: Vec<String> = lower
                .iter()
                .rev()
                .map(|step| step.tree.display().to_string())
                .collect();
            let overlay = format!(
                "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
                lowerdirs.join(":"),
                upper.display(),
                work.display()
            );
            let result = {
                let _unmount = UnmountOnDrop(merged.clone());
                mount(
                    Some("overlay"),
                    &merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(overlay.as_str()),
                )
                .with_context(|| format!("mount overlayfs on {}", merged.display()))?;
                self.chroot_install(&merged, packages, &dir.join("apt.log"))
            };
            ensure_unmounted_under(&merged)?;
            result?;
            std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
            std::fs::remove_dir(&merged).with_context(|| format!("remove {}", merged.display()))?;
            // apt's binary caches are rebuilt on demand; a Dockerfile's cleanup drops them too.
            for cache in [
                "var/cache/apt/pkgcache.bin",
                "var/cache/apt/srcpkgcache.bin",
            ] {
                let path = upper.join(cache);
                if path.exists() {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("remove {}", path.display()))?;
                }
            }
            let options = TreeOptions {
                overlay_upper: true,
                skip_contents_of: Vec::new(),
            };
            write_layer(&upper, &options, &dir.join("layer.tar.gz"))
        })
    }

    /// `pip install PACKAGES` (binary wheels for the image's Python and glibc) into the image's
    /// dist-packages, by the host's pip (see `corpus::packages`).
    pub fn pip_install(&self, lower: &[Step], packages: &[&str]) -> Result<Step> {
        let parent = lower.last().context("an install step needs a base")?;
        let trees: Vec<&Path> = lower.iter().rev().map(|step| step.tree.as_path()).collect();
        let target = WheelTarget::of_image(&image_dpkg_status(&trees)?, &self.architecture)?;
        let host_python = host_python()?;
        let (major, minor) = target.python;
        let made_by = format!(
            "pip install {} (wheels for cp{major}{minor} manylinux_2_{} {})",
            packages.join(" "),
            target.glibc_minor,
            target.machine
        );
        let parent_line = format!("parent {}", parent.key);
        let compiled = format!("host python {host_python:?}");
        let inputs = [LAYER_FORMAT, &parent_line, &made_by, &compiled];
        self.cached_or_build(&inputs, &made_by, |dir| {
            let tree = dir.join("tree");
            let log = dir.join("pip.log");
            let downloads = self.cache.join("pip");
            for mut command in pip_commands(&target, host_python, &downloads, &tree, packages) {
                run_logged(&mut command, &log)?;
            }
            // Console scripts: their #! names the host's interpreter.
            let scripts = tree.join(target.dist_packages()).join("bin");
            if scripts.exists() {
                std::fs::remove_dir_all(&scripts)
                    .with_context(|| format!("remove {}", scripts.display()))?;
            }
            write_layer(&tree, &TreeOptions::default(), &dir.join("layer.tar.gz"))
        })
    }

    /// `npm install --omit=dev PACKAGES` in the image's project directory `project` (absolute), which
    /// also gets `files` (name, contents), by the host's npm (see `corpus::packages`).
    pub fn npm_install(
        &self,
        lower: &[Step],
        project: &str,
        packages: &[&str],
        files: &[(&str, &str)],
    ) -> Result<Step> {
        let parent = lower.last().context("an install step needs a base")?;
        let made_by = format!("npm install --omit=dev {} in {project}", packages.join(" "));
        let parent_line = format!("parent {}", parent.key);
        let mut inputs = vec![LAYER_FORMAT, &parent_line, &made_by];
        for (name, contents) in files {
            inputs.extend([*name, *contents]);
        }
        self.cached_or_build(&inputs, &made_by, |dir| {
            let tree = dir.join("tree");
            let app = under_root(&tree, project)?;
            std::fs::create_dir_all(&app).with_context(|| format!("create {}", app.display()))?;
            for (name, contents) in files {
                let path = under_root(&app, &format!("/{name}"))?;
                std::fs::write(&path, contents)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            let mut command = npm_command(&app, &self.cache.join("npm"), packages);
            run_logged(&mut command, &dir.join("npm.log"))?;
            write_layer(&tree, &TreeOptions::default(), &dir.join("layer.tar.gz"))
        })
    }

    /// Mounts /proc, the cached apt lists and archives and the host's resolv.conf into `root`, runs
    /// `apt-get update` and `apt-get install` in a chroot, and unmounts them again.
    fn chroot_install(&self, root: &Path, packages: &[&str], log: &Path) -> Result<()> {
        let _unmount = UnmountOnDrop(root.to_path_buf());
        mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .context("mount /proc in the build root")?;
        let binds = [
            (self.cache.join("apt/lists"), "var/lib/apt/lists"),
            (self.cache.join("apt/archives"), "var/cache/apt/archives"),
            (PathBuf::from("/etc/resolv.conf"), "etc/resolv.conf"),
        ];
        for (source, target) in &binds {
            let target = root.join(target);
            if !target.exists() {
                bail!("{} is missing in the build root", target.display());
            }
            mount(
                Some(source.as_path()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind {} on {}", source.display(), target.display()))?;
        }
        let apt = |args: &[&str]| -> Result<()> {
            let mut command = Command::new("chroot");
            command
                .arg(root)
                .args(["/usr/bin/env", "-i"])
                .arg(format!("PATH={PATH}"))
                .args([
                    "HOME=/root",
                    "LC_ALL=C",
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "-q",
                    "-o",
                    "APT::Sandbox::User=root",
                    "-o",
                    "Acquire::Languages=none",
                    "-o",
                    "Dpkg::Use-Pty=0",
                ])
                .args(args);
            run_logged(&mut command, log)
        };
        apt(&["update"])?;
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend_from_slice(packages);
        apt(&install)
    }

    /// The cached step with these inputs, or `build(DIR)` into a fresh `DIR` that becomes the cache
    /// entry; `build` leaves `DIR/tree` and returns the blob it wrote in `DIR`.
    fn cached_or_build(
        &self,
        inputs: &[&str],
        made_by: &str,
        build: impl FnOnce(&Path) -> Result<LayerBlobFile>,
    ) -> Result<Step> {
        let key = hex::encode(&Sha256::digest(inputs.join("\n").as_bytes())[..12]);
        let done = self.cache.join("layers").join(&key);
        if let Some(step) = load_step(&key, &done)? {
            println!("  cached  {made_by} ({key})");
            return Ok(step);
        }
        let partial = self.cache.join("layers").join(format!("{key}.partial"));
        if partial.exists() {
            ensure_unmounted_under(&partial)?;
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("remove the unfinished {}", partial.display()))?;
        }
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("create {}", partial.display()))?;
        println!("  build   {made_by} ({key})");
        let started = std::time::Instant::now();
        let blob =
            build(&partial).with_context(|| format!("{made_by} (in {})", partial.display()))?;
        let record = LayerRecord {
            digest: blob.digest,
            diff_id: blob.diff_id,
            size: blob.size,
            media_type: blob.media_type,
            made_by: made_by.to_string(),
        };
        std::fs::write(
            partial.join("layer.json"),
            serde_json::to_vec_pretty(&record)?,
        )?;
        std::fs::rename(&partial, &done)
            .with_context(|| format!("rename {} to {}", partial.display(), done.display()))?;
        println!(
            "          {:.1} s, layer {:.1} MB",
            started.elapsed().as_secs_f64(),
            record.size as f64 / 1e6
        );
        load_step(&key, &done)?.with_context(|| format!("{} vanished", done.display()))
    }
}

/// The step cached in `dir`, if it is complete.
fn load_step(key: &str, dir: &Path) -> Result<Option<Step>> {
    let record_path = dir.join("layer.json");
    let blob_path = dir.join("layer.tar.gz");
    if !record_path.exists() || !blob_path.exists() || !dir.join("tree").is_dir() {
        return Ok(None);
    }
    let record: LayerRecord = serde_json::from_slice(
        &std::fs::read(&record_path).with_context(|| format!("read {}", record_path.display()))?,
    )
    .with_context(|| format!("parse {}", record_path.display()))?;
    Ok(Some(Step {
        key: key.to_string(),
        tree: dir.join("tree"),
        layer: LayerBlobFile {
            path: blob_path,
            digest: record.digest,
            diff_id: record.diff_id,
            size: record.size,
            media_type: record.media_type,
        },
    }))
}

/// Detaches every mount under the path when dropped (also on an early return or a panic).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        for (mount_point, error) in unmount_all_under(&self.0) {
            tracing::error!(mount_point = %mount_point.display(), %error, "could not unmount");
        }
    }
}

/// Removes everything in `dir` but the names in `keep`.
fn empty_dir_except(dir: &Path, keep: &[&str]) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

/// Runs `command` with stdout and stderr appended to `log`; a failure quotes the log's last lines.
fn run_logged(command: &mut Command, log: &Path) -> Result<()> {
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let start = file.seek(SeekFrom::End(0))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .status()
        .with_context(|| format!("run {command:?}"))?;
    if status.success() {
        return Ok(());
    }
    let mut reader = BufReader::new(File::open(log)?);
    reader.seek(SeekFrom::Start(start))?;
    let lines: Vec<String> = reader.lines().map_while(Result::ok).collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    bail!(
        "{:?} failed ({status}); the end of {}:\n{tail}",
        command.get_program(),
        log.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_suite_in_deb822_sources() {
        let text = "\
Types: deb
# a comment
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src deb
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
        assert_eq!(
            parse_deb822(text, "bookworm"),
            Some(AptSource {
                mirror: "http://mirror.example/debian".into(),
                suite: "bookworm".into(),
                keyring: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            })
        );
        assert_eq!(parse_deb822(text, "trixie"), None);
        let disabled = "Types: deb\nURIs: http://m/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(parse_deb822(disabled, "bookworm"), None);
        let inline_key = "Types: deb\nURIs: http://m/debian\nSuites: bookworm\nSigned-By:\n -----BEGIN PGP\n .\n";
        assert_eq!(parse_deb822(inline_key, "bookworm").unwrap().keyring, None);
    }

    #[test]
    fn finds_the_suite_in_one_line_sources() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/k.gpg] http://mirror.example/debian bookworm main contrib
";
        assert_eq!(
            parse_one_line(text, "bookworm"),
            Some(AptSource {
                mirror: "http://mirror.example/debian".into(),
                suite: "bookworm".into(),
                keyring: Some("/etc/apt/k.gpg".into()),
            })
        );
        assert_eq!(
            parse_one_line("deb cdrom:[x]/ bookworm main\n", "bookworm"),
            None
        );
    }

    #[test]
    fn reads_the_codename() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n";
        assert_eq!(codename(text).as_deref(), Some("bookworm"));
        assert_eq!(codename("ID=debian\n"), None);
    }
}
