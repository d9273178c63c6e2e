//! Layers applied by skiff itself, from tars built here with the `tar` crate: every entry type and its
//! metadata, whiteouts and opaque directories over a parent, hard links inside the layer and into a
//! parent, malicious names that must not reach outside the snapshot, corrupt and truncated streams,
//! digest mismatches, `Snapshotter::unpack_layer`'s all-or-nothing commit, and a real overlayfs mount of
//! the unpacked chain. Needs root (device nodes, chown, `trusted.*` xattrs, mounts).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use skiff_snapshotter::meta::{Labels, MetaStore};
use skiff_snapshotter::snapshots::{
    AnyFilter, LayerSnapshot, SnapshotError, SnapshotKind, Snapshotter,
};
use skiff_snapshotter::unpack::{apply_layer, LayerBlob, UnpackError};
use skiff_types::{ChainId, Digest};
use tar::{EntryType, Header};

const MTIME: u64 = 1_704_067_200;
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the unpack tests need root (device nodes, chown, trusted.* xattrs, overlay mounts)"
    );
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(bytes)
}

/// A tar built entry by entry; names are written raw, so malicious ones can be made.
struct TarLayer {
    builder: tar::Builder<Vec<u8>>,
}

#[derive(Clone)]
struct Attrs {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(&'static str, &'static [u8])>,
}

impl Default for Attrs {
    fn default() -> Self {
        Attrs {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            xattrs: Vec::new(),
        }
    }
}

fn attrs(mode: u32) -> Attrs {
    Attrs {
        mode,
        ..Attrs::default()
    }
}

impl TarLayer {
    fn new() -> Self {
        TarLayer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(
        mut self,
        kind: EntryType,
        name: &[u8],
        link: Option<&[u8]>,
        data: &[u8],
        attrs: Attrs,
    ) -> Self {
        if !attrs.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = attrs
                .xattrs
                .iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), *value))
                .collect();
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            header.set_link_name_literal(link).unwrap();
        }
        header.set_mode(attrs.mode);
        header.set_uid(attrs.uid);
        header.set_gid(attrs.gid);
        header.set_mtime(attrs.mtime);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &str) -> Self {
        self.file_with(name, data, attrs(0o644))
    }

    fn file_with(self, name: &str, data: &str, attrs: Attrs) -> Self {
        self.raw(
            EntryType::Regular,
            name.as_bytes(),
            None,
            data.as_bytes(),
            attrs,
        )
    }

    fn dir(self, name: &str, attrs: Attrs) -> Self {
        self.raw(EntryType::Directory, name.as_bytes(), None, b"", attrs)
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(
            EntryType::Symlink,
            name.as_bytes(),
            Some(target.as_bytes()),
            b"",
            attrs(0o777),
        )
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(
            EntryType::Link,
            name.as_bytes(),
            Some(target.as_bytes()),
            b"",
            attrs(0o644),
        )
    }

    fn node(mut self, name: &str, kind: EntryType, major: u32, minor: u32, mode: u32) -> Self {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_path(name).unwrap();
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_cksum();
        self.builder.append(&header, &[][..]).unwrap();
        self
    }

    fn whiteout(self, dir: &str, name: &str) -> Self {
        self.file_with(&format!("{dir}/.wh.{name}"), "", attrs(0o644))
    }

    fn opaque(self, dir: &str) -> Self {
        self.file_with(&format!("{dir}/.wh..wh..opq"), "", attrs(0o644))
    }

    fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

fn compress(tar: &[u8], media_type: &str) -> Vec<u8> {
    match media_type {
        TAR => tar.to_vec(),
        ZSTD => zstd::encode_all(tar, 3).unwrap(),
        _ => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(tar).unwrap();
            encoder.finish().unwrap()
        }
    }
}

/// A layer blob and the descriptor that names it honestly.
fn blob(tar: &[u8], media_type: &str) -> (Vec<u8>, LayerBlob) {
    let blob = compress(tar, media_type);
    let layer = LayerBlob {
        media_type: media_type.to_owned(),
        digest: sha256(&blob),
        diff_id: sha256(tar),
    };
    (blob, layer)
}

struct Bed {
    dir: tempfile::TempDir,
    snapshotter: Snapshotter,
}

impl Bed {
    fn new() -> Self {
        need_root();
        let dir = tempfile::tempdir().unwrap();
        let snapshotter =
            Snapshotter::open(&dir.path().join("snapshots"), MetaStore::in_memory()).unwrap();
        Bed { dir, snapshotter }
    }

    /// Unpacks `tar` as the next layer on `parent`, under its chain id; returns the chain id.
    fn unpack(
        &self,
        parent: Option<&ChainId>,
        tar: &[u8],
        media_type: &str,
    ) -> Result<ChainId, SnapshotError> {
        let (blob, layer) = blob(tar, media_type);
        let chain = ChainId::next(parent, &layer.diff_id);
        self.snapshotter.unpack_layer(
            &chain.to_string(),
            parent.map(ToString::to_string).as_deref(),
            &layer,
            blob.as_slice(),
            Labels::new(),
        )?;
        Ok(chain)
    }

    /// The `fs` dir of a committed snapshot.
    fn fs(&self, key: &str) -> PathBuf {
        let view = format!(
            "view-{}",
            self.snapshotter.list(&AnyFilter::default()).unwrap().len()
        );
        let mounts = self
            .snapshotter
            .view(&view, Some(key), Labels::new())
            .unwrap();
        self.snapshotter.remove(&view).unwrap();
        let m = &mounts[0];
        if m.fs_type == "bind" {
            return PathBuf::from(&m.source);
        }
        let lower = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .unwrap();
        PathBuf::from(lower.split(':').next().unwrap())
    }

    fn snapshots(&self) -> Vec<(String, SnapshotKind)> {
        self.snapshotter
            .list(&AnyFilter::default())
            .unwrap()
            .into_iter()
            .map(|info| (info.key, info.kind))
            .collect()
    }
}

fn meta(path: &Path) -> std::fs::Metadata {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn every_entry_type() -> Vec<u8> {
    let hello = Attrs {
        uid: 1000,
        gid: 1001,
        mtime: MTIME + 5,
        ..attrs(0o640)
    };
    TarLayer::new()
        .dir("data/", attrs(0o755))
        .file_with("data/hello.txt", "hello\n", hello.clone())
        .file("data/empty", "")
        .dir(
            "data/private/",
            Attrs {
                uid: 1000,
                gid: 1000,
                ..attrs(0o700)
            },
        )
        .symlink("data/link", "hello.txt")
        // A link entry carries its target's metadata, as tar writers make them (and it is applied).
        .raw(
            EntryType::Link,
            b"data/hard",
            Some(b"data/hello.txt"),
            b"",
            hello,
        )
        .node("data/fifo", EntryType::Fifo, 0, 0, 0o644)
        .node("data/null", EntryType::Char, 1, 3, 0o666)
        .node("data/loop0", EntryType::Block, 7, 0, 0o660)
        .file_with("data/setuid", "#!/bin/sh\n", attrs(0o4755))
        .file_with("data/setgid", "#!/bin/sh\n", attrs(0o2755))
        .dir("data/sticky/", attrs(0o1777))
        .file_with(
            "data/xattr",
            "x",
            Attrs {
                xattrs: vec![("user.skiff", b"value"), ("trusted.skiff", b"t")],
                ..attrs(0o644)
            },
        )
        .file("implicit/parent/file", "deep")
        .file("./dotted", "d")
        .file("/absolute", "a")
        .file("data/gone-in-layer", "x")
        .whiteout("data", "gone-in-layer")
        .tar()
}

fn check_every_entry_type(fs: &Path) {
    let hello = meta(&fs.join("data/hello.txt"));
    assert_eq!(
        std::fs::read(fs.join("data/hello.txt")).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        (hello.mode() & 0o7777, hello.uid(), hello.gid()),
        (0o640, 1000, 1001)
    );
    assert_eq!(hello.mtime(), (MTIME + 5) as i64);
    assert_eq!(meta(&fs.join("data/empty")).len(), 0);
    let private = meta(&fs.join("data/private"));
    assert!(private.is_dir());
    assert_eq!((private.mode() & 0o7777, private.uid()), (0o700, 1000));
    assert_eq!(
        std::fs::read_link(fs.join("data/link")).unwrap(),
        Path::new("hello.txt")
    );
    let hard = meta(&fs.join("data/hard"));
    assert_eq!(hard.ino(), hello.ino(), "a hard link shares the inode");
    assert_eq!(hello.nlink(), 2);
    assert!(meta(&fs.join("data/fifo")).file_type().is_fifo());
    let null = meta(&fs.join("data/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            nix::sys::stat::major(null.rdev()),
            nix::sys::stat::minor(null.rdev())
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    let loop0 = meta(&fs.join("data/loop0"));
    assert!(loop0.file_type().is_block_device());
    assert_eq!(nix::sys::stat::major(loop0.rdev()), 7);
    assert_eq!(meta(&fs.join("data/setuid")).mode() & 0o7777, 0o4755);
    assert_eq!(meta(&fs.join("data/setgid")).mode() & 0o7777, 0o2755);
    assert_eq!(meta(&fs.join("data/sticky")).mode() & 0o7777, 0o1777);
    assert_eq!(
        xattr::get(fs.join("data/xattr"), "user.skiff")
            .unwrap()
            .unwrap(),
        b"value"
    );
    assert_eq!(
        xattr::get(fs.join("data/xattr"), "trusted.skiff")
            .unwrap()
            .unwrap(),
        b"t"
    );
    assert_eq!(
        std::fs::read(fs.join("implicit/parent/file")).unwrap(),
        b"deep"
    );
    assert_eq!(meta(&fs.join("implicit/parent")).mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(fs.join("dotted")).unwrap(), b"d");
    assert_eq!(std::fs::read(fs.join("absolute")).unwrap(), b"a");
    // A bottom layer's whiteout deletes what the layer itself wrote, and leaves no device behind.
    assert!(
        !fs.join("data/gone-in-layer").exists()
            && std::fs::symlink_metadata(fs.join("data/gone-in-layer")).is_err()
    );
    // Directory times are set after their contents are written.
    assert_eq!(meta(&fs.join("data")).mtime(), MTIME as i64);
    assert_eq!(meta(&fs.join("data/private")).mtime(), MTIME as i64);
}

#[test]
fn every_entry_type_in_each_compression() {
    for media_type in [TAR, GZIP, ZSTD, DOCKER_GZIP] {
        let bed = Bed::new();
        let chain = bed.unpack(None, &every_entry_type(), media_type).unwrap();
        check_every_entry_type(&bed.fs(&chain.to_string()));
        assert_eq!(
            bed.snapshots(),
            [(chain.to_string(), SnapshotKind::Committed)],
            "{media_type}"
        );
    }
}

#[test]
fn whiteouts_opaque_dirs_and_parents_over_a_lower_layer() {
    let bed = Bed::new();
    let lower = TarLayer::new()
        .dir(
            "data/",
            Attrs {
                uid: 7,
                gid: 8,
                mtime: MTIME - 100,
                ..attrs(0o750)
            },
        )
        .file("data/gone", "to be deleted")
        .dir("data/opaque/", attrs(0o755))
        .file("data/opaque/old", "old")
        .file("data/kept", "kept")
        .tar();
    let upper = TarLayer::new()
        .whiteout("data", "gone")
        .opaque("data/opaque")
        .file("data/opaque/new", "new")
        .file("data/added", "added")
        .tar();
    let l0 = bed.unpack(None, &lower, GZIP).unwrap();
    let l1 = bed.unpack(Some(&l0), &upper, GZIP).unwrap();
    let fs = bed.fs(&l1.to_string());
    let gone = meta(&fs.join("data/gone"));
    assert!(gone.file_type().is_char_device());
    assert_eq!(
        (gone.rdev(), gone.mode() & 0o7777),
        (0, 0),
        "an overlayfs whiteout"
    );
    assert_eq!(
        xattr::get(fs.join("data/opaque"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!fs.join("data/opaque/.wh..wh..opq").exists());
    assert!(
        !fs.join("data/kept").exists(),
        "the upper dir holds only the changes"
    );
    // `data` had no entry in the upper layer: made like the lower one.
    let data = meta(&fs.join("data"));
    assert_eq!(
        (data.mode() & 0o7777, data.uid(), data.gid()),
        (0o750, 7, 8)
    );
    assert_eq!(
        xattr::get(fs.join("data"), "trusted.overlay.opaque").unwrap(),
        None
    );
    // The chain's parent is the lower layer.
    let info = bed.snapshotter.stat(&l1.to_string()).unwrap();
    assert_eq!(info.parent.as_deref(), Some(l0.to_string().as_str()));
}

#[test]
fn hard_links_into_a_lower_layer_copy_the_target_up() {
    let bed = Bed::new();
    let lower = TarLayer::new()
        .file_with(
            "data/hello",
            "hello",
            Attrs {
                uid: 5,
                ..attrs(0o600)
            },
        )
        .tar();
    let upper = TarLayer::new().hardlink("data/hard", "/data/hello").tar();
    let l0 = bed.unpack(None, &lower, TAR).unwrap();
    let l1 = bed.unpack(Some(&l0), &upper, TAR).unwrap();
    let fs = bed.fs(&l1.to_string());
    assert_eq!(std::fs::read(fs.join("data/hard")).unwrap(), b"hello");
    assert_eq!(
        meta(&fs.join("data/hard")).ino(),
        meta(&fs.join("data/hello")).ino()
    );
    // As containerd does, the link entry's own owner and mode apply to the (copied-up) inode.
    let hello = meta(&fs.join("data/hello"));
    assert_eq!((hello.uid(), hello.mode() & 0o7777), (0, 0o644));
    // The lower layer is untouched.
    assert_eq!(meta(&bed.fs(&l0.to_string()).join("data/hello")).nlink(), 1);

    // A hard link to something no layer has fails, and commits nothing.
    let dangling = TarLayer::new().hardlink("x", "nowhere").tar();
    let err = bed.unpack(Some(&l1), &dangling, TAR).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Unpack(UnpackError::InvalidEntry { .. })),
        "{err}"
    );
    assert_eq!(bed.snapshots().len(), 2);
}

/// A tree outside every snapshot that a malicious layer aims at.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim"), "original").unwrap();
        Outside { dir }
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["victim"], "nothing new outside the snapshot");
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("victim")).unwrap(),
            "original"
        );
    }
}

#[test]
fn malicious_names_never_reach_outside_the_snapshot() {
    let bed = Bed::new();
    let outside = Outside::new();
    let target = outside.dir.path().to_str().unwrap().to_owned();
    let passwd_links = meta(Path::new("/etc/passwd")).nlink();

    // `..` anywhere is refused.
    for name in ["../x", "a/../../x", "./../x", "/../x"] {
        let tar = TarLayer::new()
            .raw(
                EntryType::Regular,
                name.as_bytes(),
                None,
                b"x",
                attrs(0o644),
            )
            .tar();
        let err = bed.unpack(None, &tar, TAR).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Unpack(UnpackError::UnsafePath { .. })),
            "{name}: {err}"
        );
    }
    let tar = TarLayer::new().hardlink("x", "../../etc/passwd").tar();
    let err = bed.unpack(None, &tar, TAR).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Unpack(UnpackError::UnsafePath { .. })),
        "{err}"
    );
    // A hard link to /etc/passwd means the snapshot's own /etc/passwd, which does not exist.
    let tar = TarLayer::new().hardlink("x", "/etc/passwd").tar();
    let err = bed.unpack(None, &tar, TAR).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Unpack(UnpackError::InvalidEntry { .. })),
        "{err}"
    );
    assert!(
        bed.snapshots().is_empty(),
        "failed unpacks leave nothing: {:?}",
        bed.snapshots()
    );

    // Symlinks, absolute or climbing, then a write through them: it lands inside the snapshot.
    let tar = TarLayer::new()
        .symlink("up", "../../../../../../..")
        .file(&format!("up{target}/new2"), "new2")
        .symlink("abs", &target)
        .file("abs/victim", "overwritten")
        .file("abs/new", "new")
        .symlink("passwd", "/etc/passwd")
        .hardlink("passwd-link", "passwd")
        .symlink("replaced", &format!("{target}/victim"))
        .file("replaced", "a file, not written through")
        .tar();
    let chain = bed.unpack(None, &tar, GZIP).unwrap();
    outside.assert_untouched();
    assert_eq!(meta(Path::new("/etc/passwd")).nlink(), passwd_links);
    let fs = bed.fs(&chain.to_string());
    let inner = fs.join(target.trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(inner.join("victim")).unwrap(),
        "overwritten"
    );
    assert_eq!(std::fs::read_to_string(inner.join("new")).unwrap(), "new");
    assert_eq!(std::fs::read_to_string(inner.join("new2")).unwrap(), "new2");
    assert!(meta(&fs.join("abs")).file_type().is_symlink());
    // The hard link is to the symlink itself, never to what it points at.
    assert!(meta(&fs.join("passwd-link")).file_type().is_symlink());
    assert!(meta(&fs.join("replaced")).is_file());
    assert_eq!(
        std::fs::read_to_string(fs.join("replaced")).unwrap(),
        "a file, not written through"
    );

    // A file in place of a directory a later entry needs as parent.
    let tar = TarLayer::new().file("f", "x").file("f/g", "y").tar();
    let err = bed.unpack(None, &tar, TAR).unwrap_err();
    assert!(
        matches!(err, SnapshotError::Unpack(UnpackError::InvalidEntry { .. })),
        "{err}"
    );
    // A dangling symlink as a parent.
    let tar = TarLayer::new()
        .symlink("d", "/nowhere")
        .file("d/x", "x")
        .tar();
    assert!(bed.unpack(None, &tar, TAR).is_err());
    // A whiteout naming nothing.
    let tar = TarLayer::new().file(".wh.", "").tar();
    assert!(matches!(
        bed.unpack(None, &tar, TAR).unwrap_err(),
        SnapshotError::Unpack(UnpackError::InvalidEntry { .. })
    ));
    outside.assert_untouched();
    assert_eq!(bed.snapshots().len(), 1);
}

fn apply_to_temp(blob: &[u8], layer: &LayerBlob) -> Result<(), UnpackError> {
    let dir = tempfile::tempdir().unwrap();
    apply_layer(blob, layer, dir.path(), &[]).map(|_| ())
}

#[test]
fn corrupt_and_truncated_streams_are_typed_errors() {
    need_root();
    let tar = TarLayer::new()
        .file("big", &"x".repeat(100_000))
        .file("after", "y")
        .tar();

    // Gzip with a damaged middle: the digest is the damaged blob's own, so the stream is what fails.
    let (mut gz, _) = blob(&tar, GZIP);
    let middle = gz.len() / 2;
    for byte in &mut gz[middle..middle + 16] {
        *byte ^= 0x55;
    }
    let layer = LayerBlob {
        media_type: GZIP.into(),
        digest: sha256(&gz),
        diff_id: sha256(&tar),
    };
    let err = apply_to_temp(&gz, &layer).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Decompress {
                compression: "gzip",
                ..
            }
        ),
        "{err}"
    );

    // Not gzip at all.
    let layer = LayerBlob {
        media_type: GZIP.into(),
        digest: sha256(&tar),
        diff_id: sha256(&tar),
    };
    assert!(matches!(
        apply_to_temp(&tar, &layer).unwrap_err(),
        UnpackError::Decompress { .. }
    ));

    // Truncated gzip and zstd.
    for media_type in [GZIP, ZSTD] {
        let (full, _) = blob(&tar, media_type);
        let cut = &full[..full.len() / 2];
        let layer = LayerBlob {
            media_type: media_type.into(),
            digest: sha256(cut),
            diff_id: sha256(&tar),
        };
        let err = apply_to_temp(cut, &layer).unwrap_err();
        assert!(
            matches!(err, UnpackError::Decompress { .. }),
            "{media_type}: {err}"
        );
    }

    // A tar cut inside a file's data.
    let cut = &tar[..50_000];
    let layer = LayerBlob {
        media_type: TAR.into(),
        digest: sha256(cut),
        diff_id: sha256(cut),
    };
    let err = apply_to_temp(cut, &layer).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");
    // A header that is garbage.
    let mut garbage = tar.clone();
    garbage[100..150].fill(b'z');
    let layer = LayerBlob {
        media_type: TAR.into(),
        digest: sha256(&garbage),
        diff_id: sha256(&garbage),
    };
    let err = apply_to_temp(&garbage, &layer).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");

    // Unknown media types and malformed digests are refused before reading.
    let layer = LayerBlob {
        media_type: "application/x-rar".into(),
        digest: sha256(&tar),
        diff_id: sha256(&tar),
    };
    assert!(matches!(
        apply_to_temp(&tar, &layer).unwrap_err(),
        UnpackError::UnsupportedMediaType { .. }
    ));
    // A layer blob names its digests as skiff's sha256 `Digest`: another algorithm is refused where
    // the text is parsed, before any layer reads it.
    assert!("md5:00".parse::<Digest>().is_err());
}

#[test]
fn digest_mismatches_fail_and_commit_nothing() {
    let bed = Bed::new();
    let tar = TarLayer::new().file("a", "a").tar();
    let (gz, layer) = blob(&tar, GZIP);
    let other = sha256(b"other");
    let s = &bed.snapshotter;

    let wrong_blob = LayerBlob {
        digest: other,
        ..layer.clone()
    };
    let err = s
        .unpack_layer("c1", None, &wrong_blob, gz.as_slice(), Labels::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Unpack(UnpackError::DigestMismatch { .. })
        ),
        "{err}"
    );
    let wrong_diff = LayerBlob {
        diff_id: other,
        ..layer.clone()
    };
    let err = s
        .unpack_layer("c1", None, &wrong_diff, gz.as_slice(), Labels::new())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotError::Unpack(UnpackError::DiffIdMismatch { .. })
        ),
        "{err}"
    );
    assert!(bed.snapshots().is_empty());
    let dirs: Vec<_> = std::fs::read_dir(bed.dir.path().join("snapshots"))
        .unwrap()
        .collect();
    assert!(dirs.is_empty(), "no snapshot dir left: {dirs:?}");

    // The honest descriptor commits; a second unpack of the same name does nothing.
    let labels: Labels = [("k".to_owned(), "v".to_owned())].into();
    let done = s
        .unpack_layer("c1", None, &layer, gz.as_slice(), labels.clone())
        .unwrap();
    assert!(
        matches!(done, LayerSnapshot::Unpacked(applied) if applied.tar_bytes == tar.len() as u64)
    );
    assert_eq!(s.stat("c1").unwrap().labels, labels);
    let again = s
        .unpack_layer("c1", None, &layer, &b"not even read"[..], Labels::new())
        .unwrap();
    assert_eq!(again, LayerSnapshot::Existed);
    assert_eq!(
        bed.snapshots(),
        [("c1".to_owned(), SnapshotKind::Committed)]
    );
}

#[test]
fn an_unfinished_unpack_is_removed_at_open() {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let root = dir.path().join("snapshots");
    {
        let s = Snapshotter::open(&root, MetaStore::open_rocks(&db).unwrap()).unwrap();
        s.prepare("skiff.unpack/1-0/sha256:x", None, Labels::new())
            .unwrap();
        s.prepare("other", None, Labels::new()).unwrap();
    }
    let s = Snapshotter::open(&root, MetaStore::open_rocks(&db).unwrap()).unwrap();
    let keys: Vec<_> = s
        .list(&AnyFilter::default())
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, ["other"]);
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn the_unpacked_chain_composes_with_overlayfs() {
    let bed = Bed::new();
    let base = TarLayer::new()
        .dir("data/", attrs(0o755))
        .file("data/gone", "to be deleted")
        .dir("data/opaque/", attrs(0o755))
        .file("data/opaque/old", "old")
        .file("data/kept", "kept")
        .file("data/changed", "v1")
        .tar();
    let middle = TarLayer::new()
        .whiteout("data", "gone")
        .opaque("data/opaque")
        .file("data/opaque/new", "new")
        .file("data/changed", "v2")
        .hardlink("data/kept-link", "data/kept")
        .tar();
    let top = TarLayer::new().file("data/gone", "back again").tar();
    let l0 = bed.unpack(None, &base, GZIP).unwrap();
    let l1 = bed.unpack(Some(&l0), &middle, ZSTD).unwrap();
    let l2 = bed.unpack(Some(&l1), &top, TAR).unwrap();

    let mounts = bed
        .snapshotter
        .prepare("rootfs", Some(&l2.to_string()), Labels::new())
        .unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    let target = bed.dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(mounts[0].options.join(",").as_str()),
    )
    .unwrap();
    let _mounted = Mounted(target.clone());
    let read = |p: &str| std::fs::read_to_string(target.join(p)).ok();
    assert_eq!(read("data/gone").as_deref(), Some("back again"));
    assert_eq!(read("data/opaque/old"), None, "hidden by the opaque dir");
    assert_eq!(read("data/opaque/new").as_deref(), Some("new"));
    assert_eq!(read("data/kept").as_deref(), Some("kept"));
    assert_eq!(read("data/kept-link").as_deref(), Some("kept"));
    assert_eq!(read("data/changed").as_deref(), Some("v2"));
    let mut names: Vec<_> = std::fs::read_dir(target.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["changed", "gone", "kept", "kept-link", "opaque"]);
    assert_eq!(
        meta(&target.join("data")).permissions().mode() & 0o7777,
        0o755
    );
}

#[test]
fn blank_numeric_header_fields_read_as_zero() {
    let bed = Bed::new();
    // Fields left all NUL, as some writers leave those they do not use (Go's archive/tar reads 0).
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind) in [
        ("fifo", EntryType::Fifo),
        ("dir/.wh.gone", EntryType::Regular),
    ] {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_path(name).unwrap();
        header.set_size(0);
        header.set_cksum();
        builder.append(&header, &[][..]).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let chain = bed.unpack(None, &tar, TAR).unwrap();
    let fifo = meta(&bed.fs(&chain.to_string()).join("fifo"));
    assert!(fifo.file_type().is_fifo());
    assert_eq!((fifo.uid(), fifo.mode() & 0o7777, fifo.mtime()), (0, 0, 0));
}
