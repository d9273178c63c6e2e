//! The fuser adapter: the only place that sees `fuser::Reply*`. It maps `LazyLayer` results to FUSE
//! replies and errors to errno, answers cache hits on the FUSE thread, moves misses to the tokio runtime,
//! and opens wholly cached files in passthrough mode so the kernel reads them without us.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, SessionACL,
};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::cache::PinGuard;
use crate::connection::FuseConnection;
use crate::format::tree::NodeKind;
use crate::lazyfs::{Attr, DirEntry, FsError, LazyLayer};

/// Layers never change: the kernel may cache entries and attributes for as long as it likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: UNIX_EPOCH,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(err: &FsError) -> Errno {
    Errno::from_i32(err.errno())
}

/// A passthrough backing file shared by the open handles of one inode.
struct Backing {
    id: BackingId,
    _pin: PinGuard,
    opens: usize,
}

/// Passthrough state: backing files by inode, and which open handles use them; and the handles opened
/// without passthrough, per inode. The kernel keeps one I/O mode per inode while any file of it is open
/// (an mmap keeps its file open): a passthrough open of an inode that has a cached-mode open fails with
/// EIO, so an inode opened before it was wholly cached stays in cached mode until its last release.
#[derive(Default)]
struct BackingTable {
    by_ino: HashMap<u64, Backing>,
    handles: HashMap<u64, u64>,
    cached_opens: HashMap<u64, usize>,
    cached_handles: HashMap<u64, u64>,
}

struct LayerFs {
    layer: Arc<LazyLayer>,
    runtime: Handle,
    passthrough: AtomicBool,
    backing: Mutex<BackingTable>,
    next_handle: AtomicU64,
    /// Serving a connection taken over from an earlier daemon: files opened then, in passthrough or
    /// cached mode, may still be open, and the kernel fails an open whose mode conflicts with theirs. So
    /// every open is direct I/O, which takes no inode mode at all (no page cache, no passthrough).
    resumed: bool,
}

impl LayerFs {
    /// Hands the directory's entries after `offset` to `add` until it says the reply is full.
    fn each_entry(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), FsError> {
        for entry in self.layer.readdir(ino.0, offset)? {
            if add(&entry) {
                break;
            }
        }
        Ok(())
    }

    /// Reply with `size` bytes of `data` or ERANGE, or the size needed when `size` is 0 (xattr protocol).
    fn reply_xattr(reply: ReplyXattr, data: &[u8], size: u32) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
    }

    /// Registers a backing file for `ino` if the whole file is cached and the kernel allows it.
    fn ensure_backing(&self, table: &mut BackingTable, ino: u64, reply: &ReplyOpen) -> bool {
        if table.by_ino.contains_key(&ino) {
            return true;
        }
        let (path, pin) = match self.layer.cached_file(ino) {
            Ok(Some(found)) => found,
            Ok(None) => return false,
            Err(err) => {
                debug!(ino, error = %err, "no passthrough");
                return false;
            }
        };
        let Ok(file) = std::fs::File::open(&path) else {
            return false;
        };
        match reply.open_backing(&file) {
            Ok(id) => {
                table.by_ino.insert(
                    ino,
                    Backing {
                        id,
                        _pin: pin,
                        opens: 0,
                    },
                );
                true
            }
            Err(err) => {
                warn!(error = %err, "the kernel refused FUSE passthrough; serving reads ourselves");
                self.passthrough.store(false, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            // Overlayfs stacks on top of this mount: the backing files may sit one level below us.
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(passthrough, Ordering::Relaxed);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // After a takeover files are opened with direct I/O (see `LayerFs::resumed`); this lets them be
        // mmapped shared as well as privately. It changes nothing for files opened otherwise.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        info!(layer = %self.layer.descriptor().digest, passthrough, "fuse session ready");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.layer.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.layer.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.layer.readlink(ino.0) {
            Ok(target) => reply.data(target),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != fuser::OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        if let Err(err) = self.layer.getattr(ino.0) {
            reply.error(errno(&err));
            return;
        }
        let fh = FileHandle(self.next_handle.fetch_add(1, Ordering::Relaxed));
        if self.resumed {
            reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
            return;
        }
        let mut table = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        let cached_mode = table.cached_opens.contains_key(&ino.0);
        if self.passthrough.load(Ordering::Relaxed)
            && !cached_mode
            && self.ensure_backing(&mut table, ino.0, &reply)
        {
            table.handles.insert(fh.0, ino.0);
            let entry = table.by_ino.get_mut(&ino.0).expect("backing just ensured");
            entry.opens += 1;
            // The kernel refuses page-cache flags on passthrough opens (FOPEN_PASSTHROUGH_MASK).
            reply.opened_passthrough(fh, FopenFlags::empty(), &entry.id);
            crate::fetch::LayerStats::add(&self.layer.stats().passthrough_opens, 1);
            return;
        }
        *table.cached_opens.entry(ino.0).or_default() += 1;
        table.cached_handles.insert(fh.0, ino.0);
        drop(table);
        reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.layer.read_cached(ino.0, offset, size) {
            Ok(Some(bytes)) => reply.data(&bytes),
            Ok(None) => {
                let layer = Arc::clone(&self.layer);
                let tasks = self.layer.tasks().clone();
                tasks.spawn(&self.runtime, async move {
                    match layer.read(ino.0, offset, size).await {
                        Ok(bytes) => reply.data(&bytes),
                        Err(err) => {
                            warn!(ino = ino.0, offset, size, error = ?err, "read failed");
                            reply.error(errno(&err));
                        }
                    }
                });
            }
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut table = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ino) = table.cached_handles.remove(&fh.0) {
            if let Some(count) = table.cached_opens.get_mut(&ino) {
                *count -= 1;
                if *count == 0 {
                    table.cached_opens.remove(&ino);
                }
            }
        }
        if let Some(ino) = table.handles.remove(&fh.0) {
            if let Some(entry) = table.by_ino.get_mut(&ino) {
                entry.opens -= 1;
                if entry.opens == 0 {
                    table.by_ino.remove(&ino);
                }
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.layer.getattr(ino.0) {
            Ok(attr) if attr.kind == NodeKind::Dir => {
                // Layers never change: the kernel may keep directory listings too.
                reply.opened(
                    FileHandle(0),
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.each_entry(ino, offset, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                file_type(entry.kind),
                OsStr::from_bytes(&entry.name),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.each_entry(ino, offset, |entry| {
            let Ok(attr) = self.layer.getattr(entry.ino) else {
                return false;
            };
            reply.add(
                INodeNo(entry.ino),
                entry.offset,
                OsStr::from_bytes(&entry.name),
                &TTL,
                &file_attr(&attr),
                Generation(0),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stat = self.layer.statfs();
        reply.statfs(
            stat.blocks,
            0,
            0,
            stat.files,
            0,
            stat.block_size,
            stat.name_max,
            stat.block_size,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.layer.getxattr(ino.0, name.as_bytes()) {
            Ok(value) => Self::reply_xattr(reply, value, size),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.layer.listxattr(ino.0) {
            Ok(list) => Self::reply_xattr(reply, &list, size),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); only writes are refused here.
        match self.layer.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(err) => reply.error(errno(&err)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount layer {digest} at {}", mountpoint.display())]
    Mount {
        digest: skiff_types::Digest,
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unmount {}", mountpoint.display())]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mounted lazy layer. Dropping it (or `unmount`) unmounts it and stops its background fetching;
/// [`MountedLayer::hand_over`] leaves it mounted for the keeper and the next daemon.
pub struct MountedLayer {
    session: Option<fuser::BackgroundSession>,
    background: tokio::task::JoinHandle<()>,
    layer: Arc<LazyLayer>,
    mountpoint: PathBuf,
    connection: FuseConnection,
}

impl MountedLayer {
    /// Mounts `layer` read-only at `mountpoint` (`allow_other`, kernel permission checks) and starts its
    /// prefetch and background fetching on `runtime`.
    pub fn mount(
        layer: Arc<LazyLayer>,
        mountpoint: &Path,
        runtime: Handle,
    ) -> Result<MountedLayer, MountError> {
        let fsname = format!("skiff:{}", layer.descriptor().digest);
        let connection = FuseConnection::mount(mountpoint, &fsname)
            .map_err(|source| Self::mount_error(&layer, mountpoint, source))?;
        let started = Self::serve(layer, mountpoint, runtime, connection, true);
        if started.is_err() {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        started
    }

    /// Serves again a connection an earlier daemon mounted at `mountpoint` for the same layer (the
    /// kernel's inode numbers are the layer's tree's, so they stay valid), and starts background
    /// fetching. Requests the kernel queued meanwhile, and those the earlier daemon left unanswered,
    /// are served now.
    pub fn resume(
        layer: Arc<LazyLayer>,
        mountpoint: &Path,
        runtime: Handle,
        connection: FuseConnection,
    ) -> Result<MountedLayer, MountError> {
        Self::serve(layer, mountpoint, runtime, connection, false)
    }

    fn mount_error(layer: &LazyLayer, mountpoint: &Path, source: std::io::Error) -> MountError {
        MountError::Mount {
            digest: layer.descriptor().digest,
            mountpoint: mountpoint.to_path_buf(),
            source,
        }
    }

    fn serve(
        layer: Arc<LazyLayer>,
        mountpoint: &Path,
        runtime: Handle,
        connection: FuseConnection,
        fresh: bool,
    ) -> Result<MountedLayer, MountError> {
        let mut config = Config::default();
        config.acl = SessionACL::All;
        config.n_threads = Some(2);
        let fs = LayerFs {
            layer: Arc::clone(&layer),
            runtime: runtime.clone(),
            passthrough: AtomicBool::new(false),
            backing: Mutex::new(BackingTable::default()),
            next_handle: AtomicU64::new(1),
            resumed: !fresh,
        };
        let session = connection
            .serve(fs, config, fresh)
            .map_err(|source| Self::mount_error(&layer, mountpoint, source))?;
        let background = layer
            .tasks()
            .spawn_cancellable(&runtime, Arc::clone(&layer).fetch_in_background());
        Ok(MountedLayer {
            session: Some(session),
            background,
            layer,
            mountpoint: mountpoint.to_path_buf(),
            connection,
        })
    }

    pub fn layer(&self) -> &Arc<LazyLayer> {
        &self.layer
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The FUSE connection (for the keeper to hold a copy of).
    pub fn connection(&self) -> &FuseConnection {
        &self.connection
    }

    /// Unmounts; the FUSE session ends with the connection.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.stop()
    }

    /// Stops background fetching and leaves the mount and its connection as they are: whoever else holds
    /// the connection (the keeper) keeps it alive, and the next daemon serves it. The session's threads
    /// end with the process.
    pub fn hand_over(mut self) {
        self.background.abort();
        drop(self.session.take());
    }

    fn stop(&mut self) -> Result<(), MountError> {
        self.background.abort();
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
            // An overlay stacked on the layer holds it through a private copy of the mount: unmounting
            // succeeds but the connection lives on, and the containers on that overlay keep reading,
            // served by the session's threads until skiffd exits.
            Ok(()) if self.connection.is_alive() => {
                let used_by = crate::connection::overlays_above(&self.mountpoint);
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    ?used_by,
                    "unmounted while in use; the containers on these root filesystems read it until \
                     skiffd exits, then get ENOTCONN"
                );
                return Ok(());
            }
            // The connection ends with the mount: the session's threads read ENODEV and exit.
            Ok(()) => {
                if session.join().is_err() {
                    warn!(mountpoint = %self.mountpoint.display(), "FUSE session ended with an error");
                }
                return Ok(());
            }
            Err(nix::errno::Errno::EINVAL) => return Ok(()),
            Err(_) => {}
        }
        // Typically EBUSY: a file is still open, or an overlay stacks on it. Detach now so the mount leaves
        // the namespace; the connection lives on while its users do, served by the session's threads.
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                let used_by = crate::connection::overlays_above(&self.mountpoint);
                warn!(
                    mountpoint = %self.mountpoint.display(),
                    ?used_by,
                    "unmount busy; detached lazily (the containers on these root filesystems read \
                     it until skiffd exits, then get ENOTCONN)"
                );
                Ok(())
            }
            // No longer a mount point: nothing left to do.
            Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(errno) => Err(MountError::Unmount {
                mountpoint: self.mountpoint.clone(),
                source: errno.into(),
            }),
        }
    }
}

impl Drop for MountedLayer {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            warn!(error = ?err, "unmount failed");
        }
    }
}
