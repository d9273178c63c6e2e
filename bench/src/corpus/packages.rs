//! Language-package layers on top of the Debian steps: PyPI wheels (`pip install`) and npm packages
//! (`npm install`), fetched by the host's own pip and npm — so they go through the machine's configured
//! package indexes and certificates — and installed into a directory tree that becomes the layer.
//!
//! - pip: binary wheels only, chosen for the image's Python and glibc (read from the image's dpkg status,
//!   not the host's), downloaded into the cache's `pip/` and installed from there with `--no-index` into
//!   `/usr/local/lib/pythonX.Y/dist-packages` — where Debian's python3 finds what a Dockerfile's
//!   `pip install` puts there. Byte code is compiled when the host's Python has the image's version (the
//!   `.pyc` files a `pip install` leaves); console scripts are dropped (their `#!` would name the host's
//!   interpreter).
//! - npm: `npm install --omit=dev` in the image's project directory (with the project's own files, e.g. a
//!   `server.js`), with the cache's `npm/` as npm's download cache. Pure-JavaScript packages only: an
//!   addon compiled here would be built for the host's Node.js, not the image's.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A Debian package's version in a dpkg status file (`Version:` of its `Package:` stanza).
pub fn dpkg_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let mut name = None;
        let mut version = None;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            }
        }
        (name == Some(package))
            .then_some(version)
            .flatten()
            .map(str::to_string)
    })
}

/// `MAJOR.MINOR` of a Debian version (`3.11.2-1+b1` → `3.11`, `2.36-9+deb12u4` → `2.36`), skipping an
/// epoch (`1:`).
pub fn major_minor(debian_version: &str) -> Option<(u32, u32)> {
    let upstream = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, v)| v);
    let mut parts = upstream.split(['.', '-', '+', '~']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What pip needs to pick wheels for another interpreter than its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelTarget {
    /// (3, 11)
    pub python: (u32, u32),
    /// The glibc minor version (2.x).
    pub glibc_minor: u32,
    /// The machine name in wheel tags: `x86_64`, `aarch64`.
    pub machine: String,
}

impl WheelTarget {
    /// The image's Python and glibc from its dpkg status file (the top-most one in `lower`, top first).
    pub fn of_image(status: &str, architecture: &str) -> Result<Self> {
        let python = dpkg_version(status, "python3")
            .context("the image has no Debian python3 for pip to install into (install python3 in an earlier apt step)")?;
        let python = major_minor(&python)
            .with_context(|| format!("unexpected python3 version {python:?}"))?;
        let glibc = dpkg_version(status, "libc6").context("the image has no libc6")?;
        let (glibc_major, glibc_minor) =
            major_minor(&glibc).with_context(|| format!("unexpected libc6 version {glibc:?}"))?;
        if glibc_major != 2 {
            bail!("unexpected libc6 version {glibc:?}");
        }
        let machine = match architecture {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            other => bail!("no wheel platform tag known for the Debian architecture {other}"),
        };
        Ok(Self {
            python,
            glibc_minor,
            machine: machine.to_string(),
        })
    }

    /// `site-packages` of the image's Python as Debian lays it out, relative to the root.
    pub fn dist_packages(&self) -> PathBuf {
        let (major, minor) = self.python;
        PathBuf::from(format!("usr/local/lib/python{major}.{minor}/dist-packages"))
    }

    /// pip's options choosing binary wheels for this target: manylinux tags from glibc 2.17 up to the
    /// image's.
    pub fn pip_options(&self) -> Vec<String> {
        let (major, minor) = self.python;
        let mut options = vec![
            "--only-binary=:all:".to_string(),
            format!("--python-version={major}.{minor}"),
            "--implementation=cp".to_string(),
            format!("--abi=cp{major}{minor}"),
        ];
        for glibc in (17..=self.glibc_minor).rev() {
            options.push(format!("--platform=manylinux_2_{glibc}_{}", self.machine));
        }
        options.push(format!("--platform=manylinux2014_{}", self.machine));
        options
    }
}

/// The text of the top-most `var/lib/dpkg/status` among `trees` (top first).
pub fn image_dpkg_status(trees_top_first: &[&Path]) -> Result<String> {
    for tree in trees_top_first {
        let path = tree.join("var/lib/dpkg/status");
        if path.is_file() {
            return std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()));
        }
    }
    bail!("no var/lib/dpkg/status in the image's layers: not a Debian image")
}

/// `MAJOR.MINOR` of the host's `python3` (the one whose pip runs).
pub fn host_python() -> Result<(u32, u32)> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ])
        .output()
        .context("run python3")?;
    if !output.status.success() {
        bail!(
            "python3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace().map(str::parse::<u32>);
    match (words.next(), words.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => bail!("python3 printed {text:?} for its version"),
    }
}

/// `python3 -m pip download` of `packages` (and their dependencies) into `downloads`, then
/// `pip install --no-index` from there into `tree`'s dist-packages.
pub fn pip_commands(
    target: &WheelTarget,
    host_python: (u32, u32),
    downloads: &Path,
    tree: &Path,
    packages: &[&str],
) -> [Command; 2] {
    let pip = || {
        let mut command = Command::new("python3");
        command
            .args(["-m", "pip"])
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1");
        command
    };
    let mut download = pip();
    download
        .args(["download", "--progress-bar=off", "--dest"])
        .arg(downloads)
        .args(target.pip_options())
        .args(packages);
    let mut install = pip();
    install
        .args([
            "install",
            "--progress-bar=off",
            "--no-index",
            "--find-links",
        ])
        .arg(downloads)
        .args(target.pip_options())
        .arg("--target")
        .arg(tree.join(target.dist_packages()));
    if host_python != target.python {
        // The host would compile byte code for its own version, which the image's Python ignores.
        install.arg("--no-compile");
    }
    install.args(packages);
    [download, install]
}

/// `npm install --omit=dev PACKAGES` in `project` with `cache` as npm's download cache.
pub fn npm_command(project: &Path, cache: &Path, packages: &[&str]) -> Command {
    let mut command = Command::new("npm");
    command
        .args(["install", "--omit=dev", "--no-audit", "--no-fund"])
        .arg("--cache")
        .arg(cache)
        .arg("--prefix")
        .arg(project)
        .args(packages);
    command
}

/// `root`/`dir` for an absolute image path `dir` (`/opt/app`); an error for anything that could leave
/// `root` (`..`, a relative path).
pub fn under_root(root: &Path, dir: &str) -> Result<PathBuf> {
    let relative = dir
        .strip_prefix('/')
        .with_context(|| format!("{dir:?}: an image path must be absolute"))?;
    let relative = Path::new(relative);
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("{dir:?}: an image path may not contain '..'");
    }
    Ok(root.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4

Package: python3
Status: install ok installed
Version: 3.11.2-1+b1
Description: interactive high-level object-oriented language
 a continuation line: Version: 9.9

Package: tzdata
Version: 1:2024a-0+deb12u1
";

    #[test]
    fn reads_package_versions_from_dpkg_status() {
        assert_eq!(
            dpkg_version(STATUS, "python3").as_deref(),
            Some("3.11.2-1+b1")
        );
        assert_eq!(
            dpkg_version(STATUS, "libc6").as_deref(),
            Some("2.36-9+deb12u4")
        );
        assert_eq!(dpkg_version(STATUS, "python3-numpy"), None);
        assert_eq!(major_minor("3.11.2-1+b1"), Some((3, 11)));
        assert_eq!(major_minor("2.36-9+deb12u4"), Some((2, 36)));
        assert_eq!(major_minor("1:2024a-0"), None);
        assert_eq!(major_minor("7:4.4.1-3"), Some((4, 4)));
    }

    #[test]
    fn wheels_are_chosen_for_the_image_not_the_host() {
        let target = WheelTarget::of_image(STATUS, "amd64").unwrap();
        assert_eq!(
            target,
            WheelTarget {
                python: (3, 11),
                glibc_minor: 36,
                machine: "x86_64".into()
            }
        );
        assert_eq!(
            target.dist_packages(),
            Path::new("usr/local/lib/python3.11/dist-packages")
        );
        let options = target.pip_options();
        for expected in [
            "--only-binary=:all:",
            "--python-version=3.11",
            "--abi=cp311",
            "--platform=manylinux_2_36_x86_64",
            "--platform=manylinux_2_17_x86_64",
            "--platform=manylinux2014_x86_64",
        ] {
            assert!(
                options.iter().any(|o| o == expected),
                "{expected}: {options:?}"
            );
        }
        assert!(!options.iter().any(|o| o.contains("2_37")), "{options:?}");

        let [_, install] = pip_commands(
            &target,
            (3, 12),
            Path::new("/c"),
            Path::new("/t"),
            &["numpy"],
        );
        let args: Vec<_> = install
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--no-index".to_string()), "{args:?}");
        assert!(args.contains(&"--no-compile".to_string()), "{args:?}");
        assert!(
            args.contains(&"/t/usr/local/lib/python3.11/dist-packages".to_string()),
            "{args:?}"
        );
        assert_eq!(args.last().map(String::as_str), Some("numpy"));
        let [_, same] = pip_commands(
            &target,
            (3, 11),
            Path::new("/c"),
            Path::new("/t"),
            &["numpy"],
        );
        assert!(!same.get_args().any(|a| a == "--no-compile"));
    }

    #[test]
    fn an_image_without_python_or_of_an_unknown_architecture_is_an_error() {
        let no_python = "Package: libc6\nVersion: 2.36-9\n";
        let err = WheelTarget::of_image(no_python, "amd64").unwrap_err();
        assert!(err.to_string().contains("python3"), "{err}");
        let err = WheelTarget::of_image(STATUS, "mips64el").unwrap_err();
        assert!(err.to_string().contains("mips64el"), "{err}");
    }

    #[test]
    fn image_paths_stay_under_the_root() {
        let root = Path::new("/build/tree");
        assert_eq!(
            under_root(root, "/opt/app").unwrap(),
            Path::new("/build/tree/opt/app")
        );
        for bad in ["opt/app", "/opt/../../etc", "/.."] {
            assert!(under_root(root, bad).is_err(), "{bad}");
        }
    }
}
