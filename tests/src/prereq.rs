//! Prerequisite checks: every end-to-end test calls `require` first, so a missing tool fails the
//! test with a message naming what is missing and how to install it, instead of skipping.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Known prerequisites: name as passed to `require`, what it is, and how to get it.
const KNOWN: &[(&str, &str)] = &[
    ("docker-registry", "apt-get install docker-registry"),
    ("skopeo", "apt-get install skopeo"),
    ("umoci", "apt-get install umoci"),
    (
        "busybox",
        "apt-get install busybox-static (a static /bin/busybox)",
    ),
    ("containerd", "apt-get install containerd"),
    ("ctr", "apt-get install containerd"),
    ("runc", "apt-get install runc"),
    ("crun", "apt-get install crun"),
    ("ctr-remote", "apt-get install stargz-snapshotter"),
    ("htpasswd", "apt-get install apache2-utils"),
    ("fusermount3", "apt-get install fuse3"),
    ("ip", "apt-get install iproute2"),
    ("tc", "apt-get install iproute2"),
    ("python3", "apt-get install python3"),
    ("debootstrap", "apt-get install debootstrap"),
    ("pip", "apt-get install python3-pip"),
    ("npm", "apt-get install npm"),
    ("chroot", "apt-get install coreutils"),
    ("go", "apt-get install golang-go"),
    ("systemd-analyze", "apt-get install systemd"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "apt-get install fonts-dejavu-core",
    ),
];

/// Checks prerequisites and fails with one message listing everything that is missing.
///
/// Each name is a binary looked up on PATH (`docker-registry`, `skopeo`, `containerd`, `ctr`,
/// `ctr-remote`, `runc`, `htpasswd`, `busybox` …), or one of the special names
/// `root` (effective uid 0), `/dev/fuse` (present and openable), `pip` (`python3 -m pip` runs) and `overlayfs`
/// (listed in /proc/filesystems); any other absolute path must be a file.
pub fn require(names: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &name in names {
        if let Some(problem) = check(name) {
            missing.push(format!("  - {name}: {problem}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "test bed prerequisites missing (this test does not skip; install them):\n{}",
            missing.join("\n")
        );
    }
    Ok(())
}

fn check(name: &str) -> Option<String> {
    match name {
        "root" => (!nix::unistd::geteuid().is_root())
            .then(|| "must run as root (effective uid 0), e.g. sudo -E cargo test".to_string()),
        "/dev/fuse" | "fuse" => match std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            Ok(_) => None,
            Err(e) => Some(format!(
                "cannot open /dev/fuse ({e}); load the fuse module (modprobe fuse) and install fuse3"
            )),
        },
        "overlayfs" | "overlay" => {
            let listed = std::fs::read_to_string("/proc/filesystems")
                .map(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
                .unwrap_or(false);
            (!listed).then(|| "overlay filesystem not available (modprobe overlay)".to_string())
        }
        "busybox" => {
            // The busybox layer copies this exact file into images, so it must be the static one.
            if Path::new(BUSYBOX_PATH).is_file() {
                None
            } else {
                Some(format!("{BUSYBOX_PATH} not found; {}", install_hint("busybox")))
            }
        }
        "pip" => {
            let works = std::process::Command::new("python3")
                .args(["-m", "pip", "--version"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            (!works).then(|| format!("`python3 -m pip` does not run; {}", install_hint("pip")))
        }
        "crun" => find_on_path("crun")
            .is_none()
            .then(|| format!("`crun` not found on PATH; {}", install_hint("crun")))
            .or_else(|| hybrid_cgroup_controllers().map(|controllers| {
                format!(
                    "crun refuses a hybrid cgroup host whose cgroup v2 root still holds controllers \
                     ({controllers} in {UNIFIED_CONTROLLERS}); tests/install-deps.sh mounts them as \
                     cgroup v1 hierarchies"
                )
            })),
        path if path.starts_with('/') => (!Path::new(path).is_file())
            .then(|| format!("{path} not found; {}", install_hint(path))),
        binary => match find_on_path(binary) {
            Some(_) => None,
            None => Some(format!("`{binary}` not found on PATH; {}", install_hint(binary))),
        },
    }
}

const UNIFIED_CONTROLLERS: &str = "/sys/fs/cgroup/unified/cgroup.controllers";

/// The controllers a hybrid host (cgroup v1 hierarchies, v2 at /sys/fs/cgroup/unified) left on v2, if
/// any: crun then refuses to create containers.
fn hybrid_cgroup_controllers() -> Option<String> {
    let controllers = std::fs::read_to_string(UNIFIED_CONTROLLERS).ok()?;
    let controllers = controllers.trim();
    (!controllers.is_empty()).then(|| controllers.to_owned())
}

/// Where the busybox layer takes its binary from (Debian's busybox-static).
pub const BUSYBOX_PATH: &str = "/bin/busybox";

fn install_hint(name: &str) -> String {
    KNOWN
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, hint)| hint.to_string())
        .unwrap_or_else(|| "no known Debian package provides it".to_string())
}

/// The first executable named `binary` on PATH (or `binary` itself if it is a path).
pub fn find_on_path(binary: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    // Debian puts runc in /usr/sbin, which a non-login PATH may lack.
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_binary_and_package() {
        let err = require(&["definitely-not-a-binary-skiff", "sh"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("definitely-not-a-binary-skiff"), "{msg}");
        assert!(!msg.contains("- sh"), "{msg}");
    }

    #[test]
    fn hints_debian_package() {
        assert_eq!(
            install_hint("ctr-remote"),
            "apt-get install stargz-snapshotter"
        );
    }
}
