//! What tests of skiffd's lazy layers share: a skiffd config that reaches a plain-HTTP registry through
//! `hosts.toml` with background fetching off (so the bytes a proxy counts are the ones reads needed), and
//! the FUSE mounts of skiffd's lazy filesystem (fs type `fuse.skiff`, source `skiff:sha256:…`).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::client_config::{write_docker_config, write_hosts_toml};

/// Writes `dir/skiffd.toml`: `host` over plain HTTP (its `hosts.toml` under `dir/certs.d`), no
/// credentials, no background fetching, debug logs of the snapshotter. Returns the file's path.
pub fn write_lazy_skiffd_config(dir: &Path, host: &str) -> Result<PathBuf> {
    write_skiffd_config(dir, host, false)
}

/// Like [`write_lazy_skiffd_config`], with background fetching as skiffd's default has it when
/// `background_fetch`.
pub fn write_skiffd_config(dir: &Path, host: &str, background_fetch: bool) -> Result<PathBuf> {
    let certs_d = dir.join("certs.d");
    write_hosts_toml(&certs_d, host, Some(&format!("http://{host}")), &[])?;
    let docker_config = write_docker_config(&dir.join("docker"), &[])?;
    let path = dir.join("skiffd.toml");
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("a string");
    std::fs::write(
        &path,
        format!(
            "[registry]\nconfig_path = {}\ndocker_config = {}\n\n{}[log]\nlevel = \"info,skiff_snapshotter=debug,skiff_daemon=debug\"\n",
            quote(&certs_d),
            quote(&docker_config),
            if background_fetch {
                ""
            } else {
                "[lazy.fetch]\nbackground = false\n\n"
            },
        ),
    )?;
    Ok(path)
}

/// A FUSE mount of skiffd's lazy filesystem, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyMount {
    pub mount_point: PathBuf,
    pub layer_digest: String,
}

/// skiff's FUSE mounts under `dir`.
pub fn lazy_mounts_under(dir: &Path) -> Result<Vec<LazyMount>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = PathBuf::from(left.split(' ').nth(4).unwrap_or_default());
        let mut right = right.split(' ');
        let (fs_type, source) = (right.next().unwrap_or(""), right.next().unwrap_or(""));
        if fs_type.starts_with("fuse") && mount_point.starts_with(dir) {
            if let Some(digest) = source.strip_prefix("skiff:") {
                found.push(LazyMount {
                    mount_point,
                    layer_digest: digest.to_owned(),
                });
            }
        }
    }
    Ok(found)
}
