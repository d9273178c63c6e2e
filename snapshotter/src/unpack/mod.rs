//! Applying an OCI image layer (a tar, plain or gzip or zstd compressed) to an active snapshot's `fs`
//! dir, with the result containerd's overlayfs snapshotter produces: the directory holds only what the
//! layer changes, OCI whiteouts become what overlayfs understands (`.wh.NAME` → a 0/0 character device
//! `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory) when the snapshot has parents
//! (in a bottom layer a whiteout only deletes, and an opaque marker does nothing), and missing parent
//! directories take their metadata from the nearest parent layer.
//!
//! [`apply_layer`] streams the blob through sha256 (the blob digest), the decompressor chosen by the media
//! type ([`Compression`]: flate2's multi-member gzip, zstd) and sha256 again (the diff id) into the `tar`
//! crate; both digests must match once the last byte (trailing bytes included) has passed. Each entry gets
//! its owner, mode (setuid, setgid and sticky bits included), times (PAX times when present) and
//! `SCHILY.xattr` records; `trusted.overlay.*` xattrs in a layer are ignored, and directory times are set
//! last, once nothing more is written inside them. A hard link to a file of a lower layer copies that file
//! up first, as overlayfs would. [`Snapshotter::unpack_layer`](crate::snapshots::Snapshotter::unpack_layer)
//! wraps it in a temporary active snapshot and commits the result.
//!
//! Safety: entry names are cleaned lexically (`paths`: no `..`, `/` means the snapshot root) and
//! resolved only inside the snapshot (`openat2` with `RESOLVE_IN_ROOT`, `tree`), so neither a
//! symlink in the layer, nor an absolute link target, nor a hard link to `/etc/passwd` reaches outside
//! it; the final component is never followed. The blob's sha256 and the diff id (sha256 of the
//! uncompressed tar) are checked over every byte; a mismatch fails the apply (the caller then discards
//! the snapshot).
//!
//! Blocking (disk IO, decompression, hashing): async callers use `spawn_blocking`. Knows nothing of
//! snapshots' metadata, registries or FUSE.

mod paths;
mod tree;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};
use skiff_types::Digest;
use tracing::{debug, warn};
use xattr::FileExt as _;

use paths::{whiteout, Whiteout};
pub use paths::{InnerPath, PathProblem, OPAQUE_MARKER, WHITEOUT_PREFIX};
use tree::{Meta, ParentError, Tree, OVERLAY_XATTR_PREFIX};

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of an OCI or Docker schema2 layer media type (distributable or not); `None` for
    /// anything else.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::Uncompressed),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Uncompressed => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The layer an apply reads: its media type, the digest of the blob and its diff id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerBlob {
    pub media_type: String,
    /// The (compressed) blob.
    pub digest: Digest,
    /// The uncompressed tar (the image config's `rootfs.diff_ids` entry).
    pub diff_id: Digest,
}

/// What an apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tar entries read (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of the uncompressed tar.
    pub tar_bytes: u64,
}

/// Why a layer could not be applied. Every variant names the layer blob.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: Digest, media_type: String },
    #[error("layer {digest}: reading the blob")]
    Read {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: corrupt {compression} stream")]
    Decompress {
        digest: Digest,
        compression: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: corrupt or truncated tar")]
    Tar {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        digest: Digest,
        path: String,
        reason: &'static str,
    },
    #[error("layer {digest}: unsupported tar entry type {kind} at {path:?}")]
    UnsupportedEntry {
        digest: Digest,
        path: String,
        kind: String,
    },
    #[error("layer {digest}: invalid entry {path:?}: {reason}")]
    InvalidEntry {
        digest: Digest,
        path: String,
        reason: String,
    },
    #[error("layer {digest}: {action} {path:?}")]
    Write {
        digest: Digest,
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer blob digest mismatch: expected {expected}, the blob is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "layer {digest}: diff id mismatch: expected {expected}, the uncompressed tar is {actual}"
    )]
    DiffIdMismatch {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
}

/// A reader that hashes what passes through it and remembers whether its source failed.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    failed: bool,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            failed: false,
        }
    }

    fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                self.failed = true;
                Err(err)
            }
        }
    }
}

/// Applies the layer read from `blob` to `upper` (an active snapshot's empty `fs` dir), with `lowers`
/// the parents' `fs` dirs, nearest first (empty for a bottom layer). On error `upper` holds a partial
/// layer: the caller discards the snapshot.
pub fn apply_layer(
    blob: impl Read,
    layer: &LayerBlob,
    upper: &Path,
    lowers: &[PathBuf],
) -> Result<Applied, UnpackError> {
    let digest = layer.digest;
    let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
        UnpackError::UnsupportedMediaType {
            digest,
            media_type: layer.media_type.clone(),
        }
    })?;
    let open = |dir: &Path| {
        Tree::open(dir).map_err(|source| UnpackError::Write {
            digest,
            action: "open",
            path: dir.display().to_string(),
            source,
        })
    };
    let upper_tree = open(upper)?;
    let lower_trees = lowers
        .iter()
        .map(|dir| open(dir))
        .collect::<Result<Vec<_>, _>>()?;

    let mut blob = Hashing::new(blob);
    let (result, tar_digest, tar_bytes, tar_failed) = {
        let decoder: Box<dyn Read + '_> = match compression {
            Compression::Uncompressed => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => match zstd::stream::read::Decoder::new(&mut blob) {
                Ok(decoder) => Box::new(decoder),
                Err(source) => {
                    return Err(UnpackError::Decompress {
                        digest,
                        compression: "zstd",
                        source,
                    })
                }
            },
        };
        let mut tar = Hashing::new(decoder);
        let mut extractor = Extractor {
            digest,
            upper: &upper_tree,
            lowers: &lower_trees,
            dirs: Vec::new(),
            entries: 0,
        };
        let result = extractor.run(&mut tar).and_then(|entries| {
            // The end-of-archive blocks and anything after them count towards the diff id.
            io::copy(&mut tar, &mut io::sink()).map_err(ExtractError::Stream)?;
            Ok(entries)
        });
        (result, tar.digest(), tar.bytes, tar.failed)
    };
    let stream_error = |source: io::Error, blob_failed: bool| {
        if blob_failed {
            UnpackError::Read { digest, source }
        } else if tar_failed && compression != Compression::Uncompressed {
            UnpackError::Decompress {
                digest,
                compression: compression.name(),
                source,
            }
        } else {
            UnpackError::Tar { digest, source }
        }
    };
    let entries = match result {
        Ok(entries) => entries,
        Err(ExtractError::Stream(source)) => return Err(stream_error(source, blob.failed)),
        Err(ExtractError::Layer(err)) => return Err(err),
    };
    // Trailing bytes of the blob (after the compressed stream) are part of its digest.
    if let Err(source) = io::copy(&mut blob, &mut io::sink()) {
        return Err(UnpackError::Read { digest, source });
    }
    let blob_digest = blob.digest();
    if blob_digest != layer.digest {
        return Err(UnpackError::DigestMismatch {
            expected: layer.digest,
            actual: blob_digest,
        });
    }
    if tar_digest != layer.diff_id {
        return Err(UnpackError::DiffIdMismatch {
            digest,
            expected: layer.diff_id,
            actual: tar_digest,
        });
    }
    debug!(layer = %digest, entries, tar_bytes, "layer applied");
    Ok(Applied { entries, tar_bytes })
}

/// A reader that remembers whether its source failed (to tell a broken stream from a failed write).
struct ReadFailed<R> {
    inner: R,
    failed: bool,
}

impl<R: Read> Read for ReadFailed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        if result
            .as_ref()
            .is_err_and(|e| e.kind() != io::ErrorKind::Interrupted)
        {
            self.failed = true;
        }
        result
    }
}

/// A failure while extracting: of the byte stream (classified by the caller: blob, decompression or tar)
/// or of the layer's contents.
enum ExtractError {
    Stream(io::Error),
    Layer(UnpackError),
}

impl From<UnpackError> for ExtractError {
    fn from(err: UnpackError) -> Self {
        ExtractError::Layer(err)
    }
}

/// Ownership, mode, times and xattrs of one entry, from its header and PAX records.
struct EntryMeta {
    meta: Meta,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// A numeric header field; a blank one (all NUL or space, as some writers leave fields they do not use)
/// is 0, as Go's archive/tar reads it.
fn numeric<T: Default>(raw: &[u8], parse: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if raw.iter().all(|b| *b == 0 || *b == b' ') {
        Ok(T::default())
    } else {
        parse()
    }
}

/// A device entry's major and minor numbers (blank fields are 0).
fn device_numbers(header: &tar::Header) -> io::Result<(u32, u32)> {
    let fields = header
        .as_ustar()
        .map(|h| (h.dev_major, h.dev_minor))
        .or_else(|| header.as_gnu().map(|h| (h.dev_major, h.dev_minor)))
        .unwrap_or_default();
    let major = numeric(&fields.0, || Ok(header.device_major()?.unwrap_or(0)))?;
    let minor = numeric(&fields.1, || Ok(header.device_minor()?.unwrap_or(0)))?;
    Ok((major, minor))
}

/// `SECONDS[.FRACTION]` of a PAX time record.
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (seconds, fraction) = value.split_once('.').unwrap_or((value, ""));
    let seconds: i64 = seconds.parse().ok()?;
    let digits: String = fraction.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    // A negative time with a fraction means seconds - fraction.
    let (seconds, nanos) = if seconds < 0 && nanos > 0 {
        (seconds - 1, 1_000_000_000 - nanos)
    } else {
        (seconds, nanos)
    };
    Some(TimeSpec::new(seconds, nanos))
}

struct Extractor<'a> {
    digest: Digest,
    upper: &'a Tree,
    lowers: &'a [Tree],
    /// Directories with the times to set once everything inside them is written.
    dirs: Vec<(InnerPath, TimeSpec, TimeSpec)>,
    entries: u64,
}

impl Extractor<'_> {
    fn run(&mut self, stream: &mut dyn Read) -> Result<u64, ExtractError> {
        let mut archive = tar::Archive::new(stream);
        for entry in archive.entries().map_err(ExtractError::Stream)? {
            let mut entry = entry.map_err(ExtractError::Stream)?;
            self.entries += 1;
            self.entry(&mut entry)?;
        }
        self.finish_dirs()?;
        Ok(self.entries)
    }

    fn invalid(&self, path: &InnerPath, reason: impl Into<String>) -> UnpackError {
        UnpackError::InvalidEntry {
            digest: self.digest,
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn write_error(
        &self,
        action: &'static str,
        path: &InnerPath,
    ) -> impl FnOnce(io::Error) -> UnpackError {
        let digest = self.digest;
        let path = path.to_string();
        move |source| UnpackError::Write {
            digest,
            action,
            path,
            source,
        }
    }

    /// A parent directory of `entry` (or of its hard link target) that cannot be reached or made.
    fn parent_error(&self, entry: &InnerPath, err: ParentError) -> UnpackError {
        match err {
            ParentError::NotADirectory(parent) => self.invalid(
                entry,
                format!("its parent {parent} is not a directory (or is a dangling symlink)"),
            ),
            ParentError::Io(path, source) => self.write_error("create directory", &path)(source),
        }
    }

    fn entry_meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &InnerPath,
    ) -> Result<EntryMeta, ExtractError> {
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(&old.mode, || header.mode()).map_err(ExtractError::Stream)? & 0o7777;
        let mut uid = numeric(&old.uid, || header.uid()).map_err(ExtractError::Stream)?;
        let mut gid = numeric(&old.gid, || header.gid()).map_err(ExtractError::Stream)?;
        let seconds = numeric(&old.mtime, || header.mtime()).map_err(ExtractError::Stream)?;
        let mut mtime = TimeSpec::new(seconds as i64, 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions().map_err(ExtractError::Stream)? {
            for extension in extensions {
                let extension = extension.map_err(ExtractError::Stream)?;
                let Ok(key) = extension.key() else { continue };
                let value = extension.value().ok();
                let bad = || self.invalid(path, format!("bad PAX record {key}"));
                match key {
                    "uid" => uid = value.and_then(|v| v.parse().ok()).ok_or_else(bad)?,
                    "gid" => gid = value.and_then(|v| v.parse().ok()).ok_or_else(bad)?,
                    "mtime" => mtime = value.and_then(parse_pax_time).ok_or_else(bad)?,
                    "atime" => atime = Some(value.and_then(parse_pax_time).ok_or_else(bad)?),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            if name.starts_with(OVERLAY_XATTR_PREFIX) {
                                warn!(layer = %self.digest, %path, xattr = name, "overlayfs xattr in a layer ignored");
                            } else {
                                xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
                            }
                        }
                    }
                }
            }
        }
        let id = |value: u64, what: &str| {
            u32::try_from(value)
                .map_err(|_| self.invalid(path, format!("{what} {value} is out of range")))
        };
        let atime = match atime {
            Some(atime) if atime > mtime => atime,
            _ => mtime,
        };
        Ok(EntryMeta {
            meta: Meta {
                uid: id(uid, "uid")?,
                gid: id(gid, "gid")?,
                mode,
                atime,
                mtime,
            },
            xattrs,
        })
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw = entry.path().map_err(ExtractError::Stream)?.into_owned();
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(());
        }
        let path = InnerPath::parse(&raw).map_err(|problem| UnpackError::UnsafePath {
            digest: self.digest,
            path: raw.display().to_string(),
            reason: problem.reason(),
        })?;
        let Some(name) = path.file_name().map(OsStr::to_owned) else {
            debug!(layer = %self.digest, "entry for the root directory skipped");
            return Ok(());
        };
        let EntryMeta { meta, xattrs } = self.entry_meta(entry, &path)?;
        let parent = self
            .upper
            .make_dirs(&path.parent(), self.lowers)
            .map_err(|err| self.parent_error(&path, err))?;
        let has_parents = !self.lowers.is_empty();

        match whiteout(&name) {
            Err(reason) => return Err(self.invalid(&path, reason).into()),
            Ok(Whiteout::Opaque) => {
                // A bottom layer has nothing below to hide.
                if has_parents {
                    File::from(parent)
                        .set_xattr("trusted.overlay.opaque", b"y")
                        .map_err(self.write_error("mark opaque", &path.parent()))?;
                }
                return Ok(());
            }
            Ok(Whiteout::Delete(hidden)) => {
                let hidden_path = path.parent().join(hidden);
                tree::remove_all_at(parent.as_fd(), hidden)
                    .map_err(self.write_error("remove", &hidden_path))?;
                if has_parents {
                    tree::mknod_at(parent.as_fd(), hidden, SFlag::S_IFCHR, 0, 0)
                        .and_then(|()| {
                            let owner = Meta { mode: 0, ..meta };
                            tree::chown_chmod_at(parent.as_fd(), hidden, &owner, false)
                        })
                        .map_err(self.write_error("create whiteout", &hidden_path))?;
                }
                return Ok(());
            }
            Ok(Whiteout::None) => {}
        }

        let is_dir = kind == tar::EntryType::Directory;
        if let Some(stat) =
            Tree::stat_at(parent.as_fd(), &name).map_err(self.write_error("stat", &path))?
        {
            if !(is_dir && tree::file_type(&stat) == SFlag::S_IFDIR) {
                tree::remove_all_at(parent.as_fd(), &name)
                    .map_err(self.write_error("replace", &path))?;
            }
        }
        let dir = parent.as_fd();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                let mut source = ReadFailed {
                    inner: &mut *entry,
                    failed: false,
                };
                let (file, written) = match tree::create_file_at(dir, &name, &mut source) {
                    Ok(created) => created,
                    Err(err) if source.failed => return Err(ExtractError::Stream(err)),
                    Err(err) => return Err(self.write_error("write", &path)(err).into()),
                };
                if kind != tar::EntryType::GNUSparse && written != size {
                    return Err(ExtractError::Stream(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path}: {written} of {size} bytes before the end of the stream"),
                    )));
                }
                self.finish_file(&file, &path, &meta, &xattrs)?;
            }
            tar::EntryType::Directory => {
                match tree::mkdir_at(dir, &name) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(self.write_error("create directory", &path)(err).into()),
                }
                let file =
                    tree::open_dir_at(dir, &name).map_err(self.write_error("open", &path))?;
                self.finish_file(&file, &path, &meta, &xattrs)?;
                self.dirs.push((path, meta.atime, meta.mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ExtractError::Stream)?
                    .ok_or_else(|| self.invalid(&path, "a symlink without a target"))?;
                tree::symlink_at(&target, dir, &name)
                    .map_err(self.write_error("create symlink", &path))?;
                self.finish_at(dir, &name, &path, &meta, &xattrs, true)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(ExtractError::Stream)?
                    .ok_or_else(|| self.invalid(&path, "a hard link without a target"))?
                    .into_owned();
                self.hardlink(dir, &name, &path, &target)?;
                self.finish_at(dir, &name, &path, &meta, &xattrs, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (major, minor) = if kind == tar::EntryType::Fifo {
                    (0, 0)
                } else {
                    device_numbers(entry.header()).map_err(ExtractError::Stream)?
                };
                let node = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let rdev = nix::sys::stat::makedev(major.into(), minor.into());
                tree::mknod_at(dir, &name, node, 0o600, rdev)
                    .map_err(self.write_error("create node", &path))?;
                self.finish_at(dir, &name, &path, &meta, &xattrs, false)?;
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    digest: self.digest,
                    path: path.to_string(),
                    kind: format!("{other:?}"),
                }
                .into())
            }
        }
        Ok(())
    }

    /// Owner, xattrs, mode and (for files) times of an open file or directory.
    fn finish_file(
        &self,
        file: &File,
        path: &InnerPath,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        let fail = |action| self.write_error(action, path);
        nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(meta.uid)),
            Some(nix::unistd::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| fail("chown")(e.into()))?;
        for (name, value) in xattrs {
            tree::ignore_unsupported(file.set_xattr(name, value)).map_err(fail("set xattr"))?;
        }
        nix::sys::stat::fchmod(file, nix::sys::stat::Mode::from_bits_truncate(meta.mode))
            .map_err(|e| fail("chmod")(e.into()))?;
        nix::sys::stat::futimens(file, &meta.atime, &meta.mtime)
            .map_err(|e| fail("set times")(e.into()))
    }

    /// Owner, mode, xattrs and times of `name` in `dir`, not following it.
    fn finish_at(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        path: &InnerPath,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
        symlink: bool,
    ) -> Result<(), UnpackError> {
        tree::chown_chmod_at(dir, name, meta, symlink).map_err(self.write_error("chown", path))?;
        let at = tree::path_at(dir, name);
        for (xattr_name, value) in xattrs {
            tree::ignore_unsupported(xattr::set(&at, xattr_name, value))
                .map_err(self.write_error("set xattr", path))?;
        }
        tree::set_times_at(dir, name, &meta.atime, &meta.mtime)
            .map_err(self.write_error("set times", path))
    }

    /// `name` in `dir` as a hard link to `target` (inside this layer, or copied up from the nearest lower
    /// layer that has it, as overlayfs would).
    fn hardlink(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &OsStr,
        path: &InnerPath,
        raw_target: &Path,
    ) -> Result<(), UnpackError> {
        let target = InnerPath::parse(raw_target).map_err(|problem| UnpackError::UnsafePath {
            digest: self.digest,
            path: raw_target.display().to_string(),
            reason: problem.reason(),
        })?;
        let Some(target_name) = target.file_name() else {
            return Err(self.invalid(path, "a hard link to the root directory"));
        };
        let link = |from: std::os::fd::BorrowedFd<'_>| {
            tree::link_at(from, target_name, dir, name)
                .map_err(self.write_error("create hard link", path))
        };
        let in_layer = self
            .upper
            .existing_dir(&target.parent())
            .map_err(|err| self.parent_error(path, err))?;
        if let Some(target_dir) = &in_layer {
            if let Some(stat) = Tree::stat_at(target_dir.as_fd(), target_name)
                .map_err(self.write_error("stat", &target))?
            {
                if tree::file_type(&stat) == SFlag::S_IFDIR {
                    return Err(self.invalid(path, format!("hard link to the directory {target}")));
                }
                return link(target_dir.as_fd());
            }
        }
        let Some((lower_dir, stat)) = Tree::find_in_lowers(self.lowers, &target)
            .map_err(self.write_error("look up", &target))?
        else {
            return Err(self.invalid(
                path,
                format!("hard link target {target} is neither in the layer nor below it"),
            ));
        };
        if tree::file_type(&stat) == SFlag::S_IFDIR {
            return Err(self.invalid(path, format!("hard link to the directory {target}")));
        }
        let up = self
            .upper
            .make_dirs(&target.parent(), self.lowers)
            .map_err(|err| self.parent_error(path, err))?;
        tree::copy_up(lower_dir.as_fd(), &stat, target_name, up.as_fd())
            .map_err(self.write_error("copy up", &target))?;
        link(up.as_fd())
    }

    /// Directory times, now that nothing more is written inside them.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (path, atime, mtime) in std::mem::take(&mut self.dirs) {
            let Some(name) = path.file_name() else {
                continue;
            };
            // Gone (whited out or replaced later in the layer) is fine.
            let Ok(Some(parent)) = self.upper.existing_dir(&path.parent()) else {
                continue;
            };
            match Tree::stat_at(parent.as_fd(), name) {
                Ok(Some(stat)) if tree::file_type(&stat) == SFlag::S_IFDIR => {
                    tree::set_times_at(parent.as_fd(), name, &atime, &mtime)
                        .map_err(self.write_error("set times", &path))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        use Compression::*;
        for (media_type, expected) in [
            ("application/vnd.oci.image.layer.v1.tar", Some(Uncompressed)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
        ] {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time("1704067200"),
            Some(TimeSpec::new(1_704_067_200, 0))
        );
        assert_eq!(
            parse_pax_time("1704067200.5"),
            Some(TimeSpec::new(1_704_067_200, 500_000_000))
        );
        assert_eq!(
            parse_pax_time("1.1234567891"),
            Some(TimeSpec::new(1, 123_456_789))
        );
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.2x"), None);
    }
}
