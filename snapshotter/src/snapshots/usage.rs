//! Disk usage of a snapshot's tree, counted as containerd does: allocated bytes (`st_blocks` × 512) and
//! inodes, each hard-linked inode once, the top directory included, symlinks never followed.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::meta::UsageRecord;

/// Walks `dir` without following symlinks or leaving it.
pub fn disk_usage(dir: &Path) -> std::io::Result<UsageRecord> {
    let mut usage = UsageRecord::default();
    let mut seen = HashSet::new();
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += meta.blocks() * 512;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_inode_once() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        assert_eq!(empty.inodes, 1);
        std::fs::write(dir.path().join("a"), vec![7u8; 64 << 10]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let usage = disk_usage(dir.path()).unwrap();
        assert_eq!(usage.inodes, 4, "dir, a (=b), link, sub");
        assert!(usage.size >= empty.size + (64 << 10), "{usage:?}");
    }
}
