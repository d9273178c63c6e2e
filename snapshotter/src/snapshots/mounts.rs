//! What a snapshot's mounts are, as containerd's overlayfs snapshotter returns them. Pure: paths in, mount
//! descriptions out; nothing is mounted here (the caller mounts them).

use std::path::{Path, PathBuf};

use crate::meta::SnapshotKind;

/// One mount, in mount(8) terms: `mount -t {fs_type} -o {options} {source} TARGET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The directories of a snapshot and of its ancestors, under `ROOT/snapshots`.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotDirs<'a> {
    root: &'a Path,
}

impl<'a> SnapshotDirs<'a> {
    pub fn new(root: &'a Path) -> Self {
        SnapshotDirs { root }
    }

    /// `ROOT/snapshots/{id}`
    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// `ROOT/snapshots/{id}/fs`: the snapshot's tree (the overlay upper dir while active, a lower dir once
    /// committed). A remote layer is mounted here, so mounts need not know which layers are remote.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// `ROOT/snapshots/{id}/work`: overlayfs's work dir (active snapshots only).
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }
}

/// The mounts of snapshot `id` of `kind` whose ancestors are `parent_ids`, nearest first.
///
/// - no parent: a bind mount of its own `fs` (`rw`, `ro` for a view);
/// - a view of exactly one parent: a read-only bind mount of the parent's `fs`;
/// - otherwise `overlay`: `lowerdir` = the parents' `fs`, nearest first, and for active snapshots
///   `upperdir` / `workdir` (a view has no upper dir, so it is read-only).
pub fn mounts(
    dirs: SnapshotDirs<'_>,
    kind: SnapshotKind,
    id: u64,
    parent_ids: &[u64],
) -> Vec<Mount> {
    let bind = |path: PathBuf, mode: &str| Mount {
        fs_type: "bind".to_owned(),
        source: path.to_string_lossy().into_owned(),
        options: vec![mode.to_owned(), "rbind".to_owned()],
    };
    let writable = kind == SnapshotKind::Active;
    match parent_ids {
        [] => vec![bind(dirs.fs(id), if writable { "rw" } else { "ro" })],
        [parent] if !writable => vec![bind(dirs.fs(*parent), "ro")],
        parents => {
            let mut options = Vec::with_capacity(3);
            if writable {
                options.push(format!("workdir={}", dirs.work(id).display()));
                options.push(format!("upperdir={}", dirs.fs(id).display()));
            }
            let lower: Vec<String> = parents
                .iter()
                .map(|parent| dirs.fs(*parent).to_string_lossy().into_owned())
                .collect();
            options.push(format!("lowerdir={}", lower.join(":")));
            vec![Mount {
                fs_type: "overlay".to_owned(),
                source: "overlay".to_owned(),
                options,
            }]
        }
    }
}

impl Mount {
    /// Mounts this at `target` (an existing directory): a bind mount (`rbind`, made read-only by a remount
    /// when `ro`), or a filesystem of `fs_type` with the options as its data.
    pub fn mount_at(&self, target: &Path) -> nix::Result<()> {
        use nix::mount::{mount, MsFlags};
        if self.fs_type == "bind" {
            let recursive = self.options.iter().any(|o| o == "rbind");
            let mut flags = MsFlags::MS_BIND;
            if recursive {
                flags |= MsFlags::MS_REC;
            }
            mount(
                Some(self.source.as_str()),
                target,
                None::<&str>,
                flags,
                None::<&str>,
            )?;
            if self.options.iter().any(|o| o == "ro") {
                let remounted = mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                if let Err(err) = remounted {
                    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
                    return Err(err);
                }
            }
            return Ok(());
        }
        let data = self.options.join(",");
        mount(
            Some(self.source.as_str()),
            target,
            Some(self.fs_type.as_str()),
            MsFlags::empty(),
            Some(data.as_str()),
        )
    }
}

/// Detaches whatever is mounted at `mountpoint` (nothing is fine) and removes the then empty directory.
/// `remove_dir` refuses a directory that still holds anything, so a mount that stayed can never have its
/// files deleted here.
pub fn unmount_and_remove(mountpoint: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(errno) => return Err(errno.into()),
    }
    std::fs::remove_dir(mountpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> SnapshotDirs<'static> {
        SnapshotDirs::new(Path::new("/r/snapshots"))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn without_parent_a_bind_mount_of_its_own_tree() {
        let active = mounts(dirs(), SnapshotKind::Active, 7, &[]);
        assert_eq!(
            active,
            [Mount {
                fs_type: "bind".into(),
                source: "/r/snapshots/7/fs".into(),
                options: strings(&["rw", "rbind"]),
            }]
        );
        let view = mounts(dirs(), SnapshotKind::View, 7, &[]);
        assert_eq!(view[0].options, strings(&["ro", "rbind"]));
        assert_eq!(view[0].source, "/r/snapshots/7/fs");
    }

    #[test]
    fn view_of_one_parent_binds_the_parent_read_only() {
        let view = mounts(dirs(), SnapshotKind::View, 9, &[3]);
        assert_eq!(
            view,
            [Mount {
                fs_type: "bind".into(),
                source: "/r/snapshots/3/fs".into(),
                options: strings(&["ro", "rbind"]),
            }]
        );
    }

    #[test]
    fn active_over_parents_is_an_overlay_nearest_parent_first() {
        let active = mounts(dirs(), SnapshotKind::Active, 9, &[3]);
        assert_eq!(
            active,
            [Mount {
                fs_type: "overlay".into(),
                source: "overlay".into(),
                options: strings(&[
                    "workdir=/r/snapshots/9/work",
                    "upperdir=/r/snapshots/9/fs",
                    "lowerdir=/r/snapshots/3/fs",
                ]),
            }]
        );
        let deep = mounts(dirs(), SnapshotKind::Active, 9, &[5, 4, 1]);
        assert_eq!(
            deep[0].options[2],
            "lowerdir=/r/snapshots/5/fs:/r/snapshots/4/fs:/r/snapshots/1/fs"
        );
    }

    #[test]
    fn view_of_several_parents_is_a_lower_only_overlay() {
        let view = mounts(dirs(), SnapshotKind::View, 9, &[5, 4]);
        assert_eq!(view[0].fs_type, "overlay");
        assert_eq!(
            view[0].options,
            strings(&["lowerdir=/r/snapshots/5/fs:/r/snapshots/4/fs"])
        );
    }
}
