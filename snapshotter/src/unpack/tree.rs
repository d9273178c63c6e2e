//! Filesystem work of an unpack, always relative to directory file descriptors: a path is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against the snapshot's `fs` dir (a symlink inside the layer, `/` or `..`
//! in a link target all stay inside it, as if the snapshot were `/`), and the last component is then
//! created, replaced or changed with `*at` calls that never follow it. Parents' `fs` dirs (the lower
//! layers) are read the same way.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::paths::InnerPath;

/// xattrs of overlayfs itself; never copied from a lower dir into an implicitly created one.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// A directory tree the unpack writes into (the snapshot's `fs`) or reads from (a parent's `fs`).
pub struct Tree {
    fd: OwnedFd,
}

/// Why a parent directory cannot be reached or made.
#[derive(Debug)]
pub enum ParentError {
    /// A component exists and is not a directory (or is a dangling symlink).
    NotADirectory(InnerPath),
    Io(InnerPath, io::Error),
}

fn errno(err: Errno) -> io::Error {
    io::Error::from_raw_os_error(err as i32)
}

impl Tree {
    pub fn open(dir: &Path) -> io::Result<Tree> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Tree { fd })
    }

    /// Opens `path` resolved inside this tree (symlinks followed, but never out of it).
    fn open_in_root(&self, path: &InnerPath, flags: OFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(&self.fd, &path.relative(), how) {
                // Another rename in the same filesystem raced the resolution; the kernel asks to retry.
                Err(Errno::EAGAIN) => continue,
                other => return other,
            }
        }
    }

    /// The directory `path` if it exists (inside this tree).
    pub fn existing_dir(&self, path: &InnerPath) -> Result<Option<OwnedFd>, ParentError> {
        match self.open_in_root(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
                Err(ParentError::NotADirectory(path.clone()))
            }
            Err(err) => Err(ParentError::Io(path.clone(), errno(err))),
        }
    }

    /// What `name` in `dir` is, without following it.
    pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(err) => Err(errno(err)),
        }
    }

    /// The directory `dir` of this tree, made (with its missing ancestors) if absent. A made directory
    /// takes the metadata of the same directory in the nearest lower tree that has one (containerd's
    /// `mkparent`), else mode 0755 owned by root.
    pub fn make_dirs(&self, dir: &InnerPath, lowers: &[Tree]) -> Result<OwnedFd, ParentError> {
        let mut current = self
            .fd
            .try_clone()
            .map_err(|err| ParentError::Io(dir.prefix(0), err))?;
        for depth in 1..=dir.len() {
            let prefix = dir.prefix(depth);
            if let Some(fd) = self.existing_dir(&prefix)? {
                current = fd;
                continue;
            }
            let name = prefix.file_name().expect("a component");
            let io = |err: Errno| ParentError::Io(prefix.clone(), errno(err));
            match mkdirat(&current, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                // Something that is not a directory resolving inside the tree: a dangling symlink.
                Err(Errno::EEXIST) => return Err(ParentError::NotADirectory(prefix.clone())),
                Err(err) => return Err(io(err)),
            }
            let made = openat(
                &current,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(io)?;
            fchmod(&made, Mode::from_bits_truncate(0o755)).map_err(io)?;
            copy_dir_info(&prefix, &made, lowers)
                .map_err(|e| ParentError::Io(prefix.clone(), e))?;
            current = made;
        }
        Ok(current)
    }

    /// `path` in the first of `lowers` that has it, opened without following a final symlink: the lower
    /// tree's parent dir, and the entry's metadata. A whiteout (0/0 char device) in a nearer tree hides
    /// it.
    pub fn find_in_lowers(
        lowers: &[Tree],
        path: &InnerPath,
    ) -> io::Result<Option<(OwnedFd, FileStat)>> {
        let Some(name) = path.file_name() else {
            return Ok(None);
        };
        for lower in lowers {
            let parent = match lower.existing_dir(&path.parent()) {
                Ok(Some(parent)) => parent,
                Ok(None) | Err(ParentError::NotADirectory(_)) => continue,
                Err(ParentError::Io(_, err)) => return Err(err),
            };
            if let Some(stat) = Tree::stat_at(parent.as_fd(), name)? {
                if is_whiteout(&stat) {
                    return Ok(None);
                }
                return Ok(Some((parent, stat)));
            }
        }
        Ok(None)
    }
}

/// An overlayfs whiteout: a character device 0/0.
pub fn is_whiteout(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && stat.st_rdev == 0
}

pub fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT
}

/// Gives `made` the mode, owner, times and xattrs of `path` in the nearest lower that has it as a
/// directory; keeps 0755/root when the nearest one is something else or none has it.
fn copy_dir_info(path: &InnerPath, made: &OwnedFd, lowers: &[Tree]) -> io::Result<()> {
    for lower in lowers {
        let fd = match lower.open_in_root(path, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
            Err(err) => return Err(errno(err)),
        };
        let stat = fstat(&fd).map_err(errno)?;
        if file_type(&stat) != SFlag::S_IFDIR {
            // Replaced by something else in that layer: the new dir gets nothing from below it.
            return Ok(());
        }
        fchown(
            made,
            Some(Uid::from_raw(stat.st_uid)),
            Some(Gid::from_raw(stat.st_gid)),
        )
        .map_err(errno)?;
        fchmod(made, Mode::from_bits_truncate(stat.st_mode & 0o7777)).map_err(errno)?;
        let source = proc_fd_path(fd.as_fd());
        let target = proc_fd_path(made.as_fd());
        for name in xattr::list_deref(&source)? {
            if name.as_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
                continue;
            }
            if let Some(value) = xattr::get_deref(&source, &name)? {
                ignore_unsupported(xattr::set_deref(&target, &name, &value))?;
            }
        }
        futimens(
            made,
            &TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
            &TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
        )
        .map_err(errno)?;
        return Ok(());
    }
    Ok(())
}

/// `/proc/self/fd/N`: the file an fd refers to, for the xattr calls that only take paths.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `/proc/self/fd/DIR/NAME`: `NAME` inside an open directory, for the path-only `l*xattr` calls (which
/// do not follow `NAME`).
pub fn path_at(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    proc_fd_path(dir).join(name)
}

/// A filesystem that cannot store some xattr is not an error (containerd ignores it too).
pub fn ignore_unsupported(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.raw_os_error() == Some(Errno::ENOTSUP as i32) => {
            tracing::warn!(error = %err, "xattr not supported here; ignored");
            Ok(())
        }
        other => other,
    }
}

/// Removes `name` from `dir`, recursively if it is a directory; absent is fine. Never follows symlinks.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(err) => return Err(errno(err)),
    }
    let sub = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(proc_fd_path(sub.as_fd()))? {
        names.push(entry?.file_name());
    }
    for child in names {
        remove_all_at(sub.as_fd(), &child)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(err) => Err(errno(err)),
    }
}

/// Ownership, mode and times applied to a new entry.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
}

/// Owner then mode (a chown clears setuid/setgid bits) of `name` in `dir`, not following it; no
/// mode for symlinks (Linux has none).
pub fn chown_chmod_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Meta,
    symlink: bool,
) -> io::Result<()> {
    fchownat(
        dir,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(errno)?;
    if !symlink {
        // The entry was just made by this unpack and is not a symlink: following is moot.
        fchmodat(
            dir,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(errno)?;
    }
    Ok(())
}

pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: &TimeSpec,
    mtime: &TimeSpec,
) -> io::Result<()> {
    utimensat(dir, name, atime, mtime, UtimensatFlags::NoFollowSymlink).map_err(errno)
}

/// Creates the regular file `name` in `dir` (which must not exist) with the bytes of `data`; returns
/// it open for the metadata calls and how many bytes were written.
pub fn create_file_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    data: &mut dyn Read,
) -> io::Result<(File, u64)> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(errno)?;
    let mut file = File::from(fd);
    let written = io::copy(data, &mut file)?;
    file.flush()?;
    Ok((file, written))
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(errno)
}

pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(errno)
}

pub fn symlink_at(target: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    symlinkat(target, dir, name).map_err(errno)
}

/// A device node or fifo.
pub fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: SFlag,
    perm: u32,
    rdev: u64,
) -> io::Result<()> {
    mknodat(
        dir,
        name,
        kind,
        Mode::from_bits_truncate(perm),
        rdev as nix::libc::dev_t,
    )
    .map_err(errno)
}

/// A hard link `new_dir/new_name` to `old_dir/old_name` (which is not followed if a symlink).
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old_name: &OsStr,
    new_dir: BorrowedFd<'_>,
    new_name: &OsStr,
) -> io::Result<()> {
    linkat(old_dir, old_name, new_dir, new_name, AtFlags::empty()).map_err(errno)
}

/// Copies the entry `name` of a lower tree's `from` dir into `to` (overlayfs's copy-up): contents,
/// owner, mode, times and xattrs (but overlayfs's own). Regular files, symlinks, device nodes and
/// fifos; directories are refused.
pub fn copy_up(
    from: BorrowedFd<'_>,
    stat: &FileStat,
    name: &OsStr,
    to: BorrowedFd<'_>,
) -> io::Result<()> {
    let kind = file_type(stat);
    match kind {
        SFlag::S_IFREG => {
            let source = openat(
                from,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            create_file_at(to, name, &mut File::from(source))?;
        }
        SFlag::S_IFLNK => {
            let target = nix::fcntl::readlinkat(from, name).map_err(errno)?;
            symlink_at(Path::new(&target), to, name)?;
        }
        SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
            mknod_at(to, name, kind, 0o600, stat.st_rdev)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only files, symlinks, devices and fifos are copied up",
            ))
        }
    }
    let symlink = kind == SFlag::S_IFLNK;
    let meta = Meta {
        uid: stat.st_uid,
        gid: stat.st_gid,
        mode: stat.st_mode & 0o7777,
        atime: TimeSpec::new(stat.st_atime, stat.st_atime_nsec),
        mtime: TimeSpec::new(stat.st_mtime, stat.st_mtime_nsec),
    };
    chown_chmod_at(to, name, &meta, symlink)?;
    let source = path_at(from, name);
    let target = path_at(to, name);
    for xattr_name in xattr::list(&source)? {
        if xattr_name
            .as_bytes()
            .starts_with(OVERLAY_XATTR_PREFIX.as_bytes())
        {
            continue;
        }
        if let Some(value) = xattr::get(&source, &xattr_name)? {
            ignore_unsupported(xattr::set(&target, &xattr_name, &value))?;
        }
    }
    set_times_at(to, name, &meta.atime, &meta.mtime)
}
