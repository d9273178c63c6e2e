//! Mount bookkeeping from /proc/self/mountinfo: what is mounted under a directory, and detaching it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{umount2, MntFlags};

/// Mount points at or below `dir`, in mountinfo order (parents before children).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect()
}

/// Lazily unmounts (MNT_DETACH) everything mounted at or below `dir`, deepest first.
/// Returns the mount points that could not be unmounted, with the error.
pub fn unmount_all_under(dir: &Path) -> Vec<(PathBuf, nix::Error)> {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    let mut failed = Vec::new();
    for mount_point in mounts {
        match umount2(&mount_point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => failed.push((mount_point, e)),
        }
    }
    failed
}

/// Like `unmount_all_under` but fails naming what stayed mounted.
pub fn ensure_unmounted_under(dir: &Path) -> Result<()> {
    let failed = unmount_all_under(dir);
    let left = mounts_under(dir);
    if !failed.is_empty() || !left.is_empty() {
        anyhow::bail!(
            "mounts left under {}: {left:?} (errors: {failed:?})",
            dir.display()
        );
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a directory tree after detaching any mounts inside it.
pub fn remove_dir_after_unmount(dir: &Path) -> Result<()> {
    unmount_all_under(dir);
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_sequences() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), "/end\\");
    }
}
