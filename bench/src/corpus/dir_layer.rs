//! A directory tree → an OCI layer blob (gzip tar), hashed while it is written: the diff id (sha256 of
//! the tar) and the blob digest come out of one pass, and no layer is held in memory.
//!
//! Two kinds of tree: a plain root filesystem (debootstrap's output), and an overlayfs upper directory
//! (what one build step changed), whose overlay markers become OCI whiteouts — a character device
//! 0/0 becomes an empty `.wh.NAME`, a directory with `trusted.overlay.opaque=y` is written with a
//! `.wh..wh..opq` inside. Entries are written in name order with the tree's own metadata (mode, owner,
//! mtime, xattrs, hard links), so the same tree always makes the same blob; mtimes are kept because
//! Python checks a `.pyc` against its source's mtime.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use skiff_tests::LayerBlobFile;

const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How to read the tree.
#[derive(Debug, Clone, Default)]
pub struct TreeOptions {
    /// The tree is an overlayfs upper directory: translate whiteouts and opaque directories.
    pub overlay_upper: bool,
    /// Directories (relative, e.g. `dev`) written without their contents.
    pub skip_contents_of: Vec<PathBuf>,
}

/// Writes the tree under `root` as a gzip layer to `blob_path`.
pub fn write_layer(root: &Path, options: &TreeOptions, blob_path: &Path) -> Result<LayerBlobFile> {
    let file =
        File::create(blob_path).with_context(|| format!("create {}", blob_path.display()))?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let gzip = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
    let mut writer = TreeWriter {
        root,
        options,
        builder: tar::Builder::new(HashingWriter::new(gzip)),
        hard_links: HashMap::new(),
    };
    writer
        .add_children(Path::new(""))
        .with_context(|| format!("write {} as a layer", root.display()))?;
    let (diff_id, _, gzip) = writer
        .builder
        .into_inner()
        .context("finish the layer tar")?
        .finish();
    let (digest, size, mut file) = gzip.finish().context("finish gzip")?.finish();
    file.flush()
        .with_context(|| format!("write {}", blob_path.display()))?;
    Ok(LayerBlobFile {
        path: blob_path.to_path_buf(),
        digest,
        diff_id,
        size,
        media_type: MEDIA_TYPE_LAYER_GZIP.to_string(),
    })
}

/// A writer that hashes (sha256) and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// (`sha256:HEX`, bytes written, the inner writer).
    fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct TreeWriter<'a, W: Write> {
    root: &'a Path,
    options: &'a TreeOptions,
    builder: tar::Builder<W>,
    /// (device, inode) of files with more than one link → the path written first.
    hard_links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> TreeWriter<'_, W> {
    /// Adds the entries of directory `rel` (relative to the root), in name order.
    fn add_children(&mut self, rel: &Path) -> Result<()> {
        if self.options.skip_contents_of.iter().any(|p| p == rel) {
            return Ok(());
        }
        let dir = self.root.join(rel);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            names.push(
                entry
                    .with_context(|| format!("read {}", dir.display()))?
                    .file_name(),
            );
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = rel.join(&name);
            self.add(&path)
                .with_context(|| format!("add /{}", path.display()))?;
        }
        Ok(())
    }

    fn add(&mut self, rel: &Path) -> Result<()> {
        let host = self.root.join(rel);
        let meta = std::fs::symlink_metadata(&host)?;
        let kind = meta.file_type();
        if self.options.overlay_upper && kind.is_char_device() && meta.rdev() == 0 {
            return self.add_whiteout(rel, &meta);
        }
        let xattrs = read_xattrs(&host)?;
        let opaque = self.options.overlay_upper
            && kind.is_dir()
            && xattrs
                .iter()
                .any(|(name, value)| name == OPAQUE_XATTR && value == b"y");
        if let Some((name, _)) = xattrs.iter().find(|(name, _)| {
            name.starts_with(OVERLAY_XATTR_PREFIX)
                && (name.ends_with(".redirect") || name.ends_with(".metacopy"))
        }) {
            bail!("overlay attribute {name} cannot be written as a layer (mount without redirect_dir and metacopy)");
        }
        let kept: Vec<(String, Vec<u8>)> = xattrs
            .into_iter()
            .filter(|(name, _)| {
                !name.starts_with(OVERLAY_XATTR_PREFIX) && name != "security.selinux"
            })
            .collect();
        let mut header = header_from(&meta);
        if !kind.is_dir() && !kind.is_symlink() && meta.nlink() > 1 {
            if let Some(first) = self.hard_links.get(&(meta.dev(), meta.ino())) {
                // The link shares the first path's inode, xattrs included.
                header.set_entry_type(tar::EntryType::Link);
                let first = first.clone();
                self.builder.append_link(&mut header, rel, first)?;
                return Ok(());
            }
            self.hard_links
                .insert((meta.dev(), meta.ino()), rel.to_path_buf());
        }
        if !kept.is_empty() {
            let records: Vec<(String, &[u8])> = kept
                .iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            // Directories are named with a trailing '/', as tar and docker write them.
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            self.builder
                .append_data(&mut header, PathBuf::from(name), std::io::empty())?;
            if opaque {
                let mut marker = empty_file_header(&meta);
                self.builder.append_data(
                    &mut marker,
                    rel.join(".wh..wh..opq"),
                    std::io::empty(),
                )?;
            }
            return self.add_children(rel);
        }
        if kind.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(&host).with_context(|| format!("open {}", host.display()))?;
            self.builder.append_data(&mut header, rel, file)?;
        } else if kind.is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(&host)?;
            self.builder.append_link(&mut header, rel, target)?;
        } else if kind.is_fifo() {
            header.set_entry_type(tar::EntryType::Fifo);
            self.builder
                .append_data(&mut header, rel, std::io::empty())?;
        } else if kind.is_char_device() || kind.is_block_device() {
            header.set_entry_type(if kind.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let rdev = meta.rdev();
            header.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            header.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            self.builder
                .append_data(&mut header, rel, std::io::empty())?;
        } else {
            // A socket: tar has no such entry, and a socket in an image is never meant to be there.
            tracing::warn!(path = %rel.display(), "skipping a socket");
        }
        Ok(())
    }

    /// `DIR/.wh.NAME` for an overlay whiteout at `DIR/NAME`.
    fn add_whiteout(&mut self, rel: &Path, meta: &Metadata) -> Result<()> {
        let name = rel
            .file_name()
            .context("a whiteout without a name")?
            .to_owned();
        let mut marker_name = std::ffi::OsString::from(".wh.");
        marker_name.push(&name);
        let marker = rel.with_file_name(marker_name);
        let mut header = empty_file_header(meta);
        self.builder
            .append_data(&mut header, marker, std::io::empty())?;
        Ok(())
    }
}

/// A header with the entry's mode, owner and mtime; type and size are set by the caller.
fn header_from(meta: &Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(meta.mtime().max(0) as u64);
    header.set_size(0);
    header
}

/// An empty regular file owned by root, mode 0644, with `meta`'s mtime (whiteout markers).
fn empty_file_header(meta: &Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(meta.mtime().max(0) as u64);
    header.set_size(0);
    header
}

/// Every extended attribute of `path` (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        // A filesystem without xattr support has none to copy.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("list xattrs of {}", path.display())),
    };
    for name in names {
        let value = xattr::get(path, &name)
            .with_context(|| format!("read xattr {name:?} of {}", path.display()))?
            .unwrap_or_default();
        out.push((name.to_string_lossy().into_owned(), value));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// (path, type, size, link name) of every entry of a gzip layer.
    fn entries(blob: &Path) -> Vec<(String, tar::EntryType, u64, Option<String>)> {
        let gzip = flate2::read::GzDecoder::new(File::open(blob).unwrap());
        let mut archive = tar::Archive::new(gzip);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    e.header().size().unwrap(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn upper_dir_whiteouts_and_opaque_dirs_become_oci_markers() {
        if !nix::unistd::geteuid().is_root() {
            // mknod and trusted.* xattrs need root; the bench's tests run as root (tests/run.sh).
            panic!("this test makes a 0/0 character device and a trusted.* xattr: run it as root");
        }
        let scratch = tempfile::tempdir().unwrap();
        let upper = scratch.path().join("upper");
        std::fs::create_dir_all(upper.join("etc/opaque")).unwrap();
        std::fs::create_dir_all(upper.join("usr/bin")).unwrap();
        std::fs::write(upper.join("etc/opaque/new"), "new").unwrap();
        std::fs::write(upper.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::hard_link(upper.join("usr/bin/tool"), upper.join("usr/bin/tool2")).unwrap();
        std::os::unix::fs::symlink("tool", upper.join("usr/bin/link")).unwrap();
        xattr::set(upper.join("etc/opaque"), "trusted.overlay.opaque", b"y").unwrap();
        xattr::set(upper.join("usr/bin/tool"), "user.skiff", b"kept").unwrap();
        xattr::set(upper.join("usr"), "trusted.overlay.origin", b"dropped").unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o000),
            0,
        )
        .unwrap();
        let blob_path = scratch.path().join("layer.tar.gz");
        let options = TreeOptions {
            overlay_upper: true,
            ..TreeOptions::default()
        };
        let blob = write_layer(&upper, &options, &blob_path).unwrap();

        let found = entries(&blob_path);
        let names: Vec<&str> = found.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/.wh.gone",
                "etc/opaque/",
                "etc/opaque/.wh..wh..opq",
                "etc/opaque/new",
                "usr/",
                "usr/bin/",
                "usr/bin/link",
                "usr/bin/tool",
                "usr/bin/tool2",
            ]
        );
        assert_eq!(found[1].1, tar::EntryType::Regular);
        assert_eq!(found[1].2, 0);
        assert_eq!(found[7].1, tar::EntryType::Symlink);
        assert_eq!(found[7].3.as_deref(), Some("tool"));
        assert_eq!(found[9].1, tar::EntryType::Link);
        assert_eq!(found[9].3.as_deref(), Some("usr/bin/tool"));

        // xattrs: user.* kept, overlay's own dropped.
        let gzip = flate2::read::GzDecoder::new(File::open(&blob_path).unwrap());
        let mut archive = tar::Archive::new(gzip);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let pax: Vec<String> = entry
                .pax_extensions()
                .unwrap()
                .map(|exts| {
                    exts.map(|e| e.unwrap().key().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            match path.as_str() {
                "usr/bin/tool" => assert_eq!(pax, ["SCHILY.xattr.user.skiff"]),
                _ => assert!(pax.is_empty(), "{path}: {pax:?}"),
            }
        }

        // Digests: the blob's sha256 and the uncompressed tar's.
        let bytes = std::fs::read(&blob_path).unwrap();
        assert_eq!(blob.size, bytes.len() as u64);
        assert_eq!(blob.digest, skiff_tests::sha256_digest(&bytes));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(blob.diff_id, skiff_tests::sha256_digest(&tar));

        // The same tree makes the same blob.
        let again = write_layer(&upper, &options, &scratch.path().join("again.tar.gz")).unwrap();
        assert_eq!(again.digest, blob.digest);
    }

    #[test]
    fn plain_tree_keeps_devices_and_skips_listed_contents() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/apt/lists")).unwrap();
        std::fs::write(root.join("dev/stale"), "x").unwrap();
        std::fs::write(root.join("var/lib/apt/lists/Packages"), "x").unwrap();
        std::fs::write(root.join("var/keep"), "x").unwrap();
        let options = TreeOptions {
            overlay_upper: false,
            skip_contents_of: vec![PathBuf::from("dev"), PathBuf::from("var/lib/apt/lists")],
        };
        let blob_path = scratch.path().join("layer.tar.gz");
        write_layer(&root, &options, &blob_path).unwrap();
        let names: Vec<String> = entries(&blob_path).into_iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            [
                "dev/",
                "var/",
                "var/keep",
                "var/lib/",
                "var/lib/apt/",
                "var/lib/apt/lists/"
            ]
        );
    }

    #[test]
    fn missing_tree_is_an_error_naming_it() {
        let scratch = tempfile::tempdir().unwrap();
        let err = write_layer(
            &scratch.path().join("nope"),
            &TreeOptions::default(),
            &scratch.path().join("layer.tar.gz"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
    }
}
