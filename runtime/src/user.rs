//! Turning a `USER[:GROUP]` (from `--user` or the image's `User`) into the uid, gid and supplementary gids
//! the container's process runs with, by reading `/etc/passwd` and `/etc/group` *inside* the rootfs.
//!
//! The files are opened with `openat2(RESOLVE_IN_ROOT)` relative to the rootfs, so a symlink in the
//! image (`/etc/passwd -> /etc/shadow`, `../../..`) resolves inside the rootfs and never reaches the host;
//! only regular files are read, and at most [`MAX_FILE_BYTES`] of them.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::options::{IdRef, UserSpec};

/// Larger passwd/group files are refused.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a user could not be resolved in a rootfs.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot open rootfs {path}: {source}")]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("cannot read /{file} in rootfs {rootfs}: {source}")]
    Read {
        rootfs: PathBuf,
        file: &'static str,
        source: io::Error,
    },
    #[error("user {name:?} not found in /etc/passwd of rootfs {rootfs}")]
    UnknownUser { rootfs: PathBuf, name: String },
    #[error("group {name:?} not found in /etc/group of rootfs {rootfs}")]
    UnknownGroup { rootfs: PathBuf, name: String },
}

/// The identity a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group in `/etc/group` that lists the user's name, besides `gid`.
    pub additional_gids: Vec<u32>,
    /// The user's name when `/etc/passwd` knows it.
    pub name: Option<String>,
}

/// Resolves `spec` against `rootfs`'s `/etc/passwd` and `/etc/group`, the way docker and containerd do:
/// a user name must exist in passwd (its uid and primary gid are taken from there); a numeric uid is taken
/// as is, its primary gid from passwd if an entry has that uid, else 0; an explicit group (name looked up in
/// `/etc/group`, or a number) replaces the primary gid. Missing files are fine for numeric ids.
pub fn resolve_user(rootfs: &Path, spec: &UserSpec) -> Result<ResolvedUser, UserError> {
    let root = RootDir::open(rootfs)?;
    let passwd = root.read("etc/passwd")?;
    let passwd: Vec<PasswdEntry> = passwd.as_deref().map(parse_passwd).unwrap_or_default();

    let (uid, entry) =
        match &spec.user {
            IdRef::Name(name) => {
                let entry = passwd.iter().find(|e| &e.name == name).ok_or_else(|| {
                    UserError::UnknownUser {
                        rootfs: rootfs.to_owned(),
                        name: name.clone(),
                    }
                })?;
                (entry.uid, Some(entry))
            }
            IdRef::Id(uid) => (*uid, passwd.iter().find(|e| e.uid == *uid)),
        };
    let name = entry.map(|e| e.name.clone());

    // /etc/group is needed for a group name or to find a named user's supplementary groups.
    let needs_groups = name.is_some() || matches!(spec.group, Some(IdRef::Name(_)));
    let groups: Vec<GroupEntry> = if needs_groups {
        root.read("etc/group")?
            .as_deref()
            .map(parse_group)
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    let gid = match &spec.group {
        Some(IdRef::Id(gid)) => *gid,
        Some(IdRef::Name(group)) => {
            groups
                .iter()
                .find(|g| &g.name == group)
                .ok_or_else(|| UserError::UnknownGroup {
                    rootfs: rootfs.to_owned(),
                    name: group.clone(),
                })?
                .gid
        }
        None => entry.map_or(0, |e| e.gid),
    };

    let mut additional_gids = Vec::new();
    if let Some(name) = &name {
        for group in &groups {
            if group.gid != gid
                && group.members.iter().any(|m| m == name)
                && !additional_gids.contains(&group.gid)
            {
                additional_gids.push(group.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        name,
    })
}

/// An open rootfs directory whose files are read with every path resolved inside it.
struct RootDir<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

impl<'a> RootDir<'a> {
    fn open(path: &'a Path) -> Result<Self, UserError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UserError::Rootfs {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Ok(RootDir { path, fd })
    }

    /// The file's contents, `None` if it does not exist. `relative` has no leading `/`.
    fn read(&self, relative: &'static str) -> Result<Option<String>, UserError> {
        let err = |source: io::Error| UserError::Read {
            rootfs: self.path.to_owned(),
            file: relative,
            source,
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match nix::fcntl::openat2(&self.fd, relative, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            )));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_FILE_BYTES} bytes"),
            )));
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The entries of a colon-separated database (`name:password:REST...`): `entry` gets the name and the
/// fields after the password and returns `None` for a malformed line. Comments and malformed lines are
/// skipped, as libc does.
fn parse_database<'a, T>(
    text: &'a str,
    entry: impl Fn(&'a str, &mut std::str::Split<'a, char>) -> Option<T>,
) -> Vec<T> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields
                .next()
                .filter(|n| !n.is_empty() && !n.starts_with('#'))?;
            let _password = fields.next()?;
            entry(name, &mut fields)
        })
        .collect()
}

/// `name:password:uid:gid:gecos:home:shell` lines.
fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    parse_database(text, |name, fields| {
        Some(PasswdEntry {
            name: name.to_owned(),
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

/// `name:password:gid:member,member` lines.
fn parse_group(text: &str) -> Vec<GroupEntry> {
    parse_database(text, |name, fields| {
        Some(GroupEntry {
            name: name.to_owned(),
            gid: fields.next()?.parse().ok()?,
            members: fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::parse_user;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/:/bin/false\n";
    const GROUP: &str = "root:x:0:root\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        staff:x:50: app , other\n\
        bad:x:notanumber:app\n";

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    fn resolve(root: &Path, user: &str) -> Result<ResolvedUser, UserError> {
        resolve_user(root, &parse_user(user).unwrap())
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(root.path(), "app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, [10, 50]);
        assert_eq!(u.name.as_deref(), Some("app"));

        let u = resolve(root.path(), "app:staff").unwrap();
        assert_eq!(u.gid, 50);
        assert_eq!(u.additional_gids, [10], "the primary group is not repeated");

        let u = resolve(root.path(), "root").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 0, vec![10]));
    }

    #[test]
    fn numeric_ids() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let u = resolve(root.path(), "1000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000), "gid from the passwd entry");
        assert_eq!(u.additional_gids, [10, 50]);
        let u = resolve(root.path(), "4242:77").unwrap();
        assert_eq!((u.uid, u.gid, u.name), (4242, 77, None));
        assert!(u.additional_gids.is_empty());
        let u = resolve(root.path(), "app:0").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 0));
    }

    #[test]
    fn numeric_ids_need_no_files() {
        let root = tempfile::tempdir().unwrap();
        let u = resolve(root.path(), "123:456").unwrap();
        assert_eq!((u.uid, u.gid), (123, 456));
        let u = resolve(root.path(), "0").unwrap();
        assert_eq!((u.uid, u.gid, u.name), (0, 0, None));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let root = rootfs(Some(PASSWD), Some(GROUP));
        let e = resolve(root.path(), "ghost").unwrap_err().to_string();
        assert!(e.contains("user \"ghost\" not found in /etc/passwd"), "{e}");
        let e = resolve(root.path(), "app:ghosts").unwrap_err().to_string();
        assert!(
            e.contains("group \"ghosts\" not found in /etc/group"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(empty.path(), "app").unwrap_err().to_string();
        assert!(e.contains("user \"app\" not found"), "{e}");
        let e = resolve(Path::new("/nonexistent/rootfs"), "0")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot open rootfs /nonexistent/rootfs"),
            "{e}"
        );
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        // An absolute symlink to the host's /etc/passwd must resolve to ROOTFS/etc/passwd-host.
        let root = rootfs(None, None);
        fs::write(
            root.path().join("etc/passwd-host"),
            "inside:x:7:7::/:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/passwd-host", root.path().join("etc/passwd")).unwrap();
        let u = resolve(root.path(), "inside").unwrap();
        assert_eq!(u.uid, 7);
        let e = resolve(root.path(), "root").unwrap_err().to_string();
        assert!(
            e.contains("not found"),
            "the host's root entry must not be seen: {e}"
        );

        // Climbing out with .. stops at the rootfs too.
        fs::remove_file(root.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../etc/passwd-host",
            root.path().join("etc/passwd"),
        )
        .unwrap();
        assert_eq!(resolve(root.path(), "inside").unwrap().uid, 7);
    }

    #[test]
    fn only_regular_files_are_read() {
        let root = rootfs(None, None);
        fs::create_dir(root.path().join("etc/passwd")).unwrap();
        let e = resolve(root.path(), "app").unwrap_err().to_string();
        assert!(
            e.contains("/etc/passwd") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn parsers_skip_malformed_lines() {
        assert_eq!(parse_passwd(PASSWD).len(), 3);
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[3].members, ["app", "other"]);
    }
}
