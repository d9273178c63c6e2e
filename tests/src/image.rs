//! OCI image layouts built from a declarative list of entries, without the files existing on the
//! host: every tar entry type, modes, owners, xattrs, whiteouts, a busybox base layer, and
//! multi-platform indexes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Modification time of every entry unless set otherwise (2024-01-01T00:00:00Z): layers are
/// byte-for-byte reproducible.
pub const DEFAULT_MTIME: u64 = 1_704_067_200;

/// Busybox applets linked in `/bin` by the busybox layer.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "echo",
    "cat",
    "ls",
    "sha256sum",
    "md5sum",
    "true",
    "false",
    "sleep",
    "env",
    "id",
    "stat",
    "head",
    "tail",
    "wc",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "ln",
    "readlink",
    "find",
    "grep",
    "sed",
    "test",
    "[",
    "printf",
    "date",
    "uname",
    "hostname",
    "ps",
    "kill",
    "dd",
    "chmod",
    "chown",
    "du",
    "df",
    "mount",
    "xargs",
    "sort",
    "uniq",
    "cmp",
    "diff",
    "tr",
    "cut",
    "od",
    "hexdump",
    "yes",
    "seq",
    "pwd",
    "whoami",
    "nc",
    "wget",
    "vi",
    "tar",
    "gzip",
];

/// A layer with every entry type the kit writes — regular, empty and `big_file_len`-byte files, dirs
/// with special modes and owners, a symlink, a hardlink, a fifo, char and block devices,
/// setuid/setgid/sticky bits, an xattr — and an upper layer that whites out `/data/gone` and makes
/// `/data/opaque` opaque.
pub fn every_entry_type_layers(big_file_len: usize) -> (LayerSpec, LayerSpec) {
    let lower = LayerSpec::new()
        .file("/data/hello.txt", "hello\n")
        .generated_file("/data/big.bin", big_file_len, 42)
        .empty_file("/data/empty")
        .dir("/data/private")
        .mode(0o700)
        .owner(1000, 1000)
        .symlink("/data/link", "hello.txt")
        .hardlink("/data/hard", "/data/hello.txt")
        .fifo("/data/fifo")
        .char_device("/data/null", 1, 3)
        .block_device("/data/loop0", 7, 0)
        .file("/data/setuid", "#!/bin/sh\n")
        .mode(0o4755)
        .file("/data/setgid", "#!/bin/sh\n")
        .mode(0o2755)
        .dir("/data/sticky")
        .mode(0o1777)
        .file("/data/xattr", "x")
        .xattr("user.skiff", "value")
        .file("/data/gone", "to be deleted")
        .dir("/data/opaque")
        .file("/data/opaque/old", "old");
    let upper = LayerSpec::new()
        .whiteout("/data/gone")
        .opaque_dir("/data/opaque")
        .file("/data/opaque/new", "new");
    (lower, upper)
}

/// Deterministic pseudo-random bytes (SplitMix64): what `FileContents::Generated` holds, so tests
/// can compute expected contents or digests.
pub fn generated_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The contents of a regular file entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContents {
    Bytes(Vec<u8>),
    /// `generated_bytes(seed, len)`.
    Generated {
        seed: u64,
        len: usize,
    },
    /// Read from the host when the layer is built.
    HostFile(PathBuf),
}

impl FileContents {
    /// The bytes this file will contain.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            Self::Bytes(b) => Ok(b.clone()),
            Self::Generated { seed, len } => Ok(generated_bytes(*seed, *len)),
            Self::HostFile(path) => {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))
            }
        }
    }
}

/// What kind of tar entry an `Entry` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(FileContents),
    Dir,
    Symlink {
        target: String,
    },
    /// A hard link to another path of the same layer (image-relative, e.g. `/bin/busybox`).
    Hardlink {
        target: String,
    },
    Fifo,
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    /// Deletes the path from lower layers: written as an empty `DIR/.wh.NAME`.
    Whiteout,
    /// Hides the lower layers' contents of this directory: the dir plus `DIR/.wh..wh..opq`.
    OpaqueDir,
}

/// One path in a layer with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Image path, absolute or relative to the root (`/etc/hosts` and `etc/hosts` are the same).
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub mtime: u64,
}

impl Entry {
    pub fn new(path: &str, kind: EntryKind) -> Self {
        let mode = match kind {
            EntryKind::Dir | EntryKind::OpaqueDir => 0o755,
            EntryKind::Symlink { .. } => 0o777,
            _ => 0o644,
        };
        Self {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
            mtime: DEFAULT_MTIME,
        }
    }

    /// A regular file with the given contents.
    pub fn file(path: &str, contents: impl Into<Vec<u8>>) -> Self {
        Self::new(path, EntryKind::File(FileContents::Bytes(contents.into())))
    }

    /// A regular file of `len` deterministic pseudo-random bytes (`generated_bytes(seed, len)`).
    pub fn generated_file(path: &str, len: usize, seed: u64) -> Self {
        Self::new(path, EntryKind::File(FileContents::Generated { seed, len }))
    }

    pub fn dir(path: &str) -> Self {
        Self::new(path, EntryKind::Dir)
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(
            path,
            EntryKind::Symlink {
                target: target.to_string(),
            },
        )
    }

    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn with_owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn with_xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.to_string(), value.into()));
        self
    }

    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    /// The path relative to the root, without leading or trailing '/'.
    fn relative_path(&self) -> &str {
        self.path.trim_matches('/')
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    #[default]
    Gzip,
    Uncompressed,
}

/// A layer: an ordered list of entries. Modifier methods (`mode`, `owner`, `xattr`, `mtime`)
/// apply to the entry added last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerSpec {
    entries: Vec<Entry>,
    compression: LayerCompression,
    no_implicit_parents: bool,
}

impl LayerSpec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fully specified entry.
    pub fn entry(mut self, entry: Entry) -> Self {
        self.entries.push(entry);
        self
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// A regular file (mode 0644).
    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.entry(Entry::file(path, contents))
    }

    /// A regular file of `len` pseudo-random bytes from `seed` (see `generated_bytes`).
    pub fn generated_file(self, path: &str, len: usize, seed: u64) -> Self {
        self.entry(Entry::generated_file(path, len, seed))
    }

    pub fn empty_file(self, path: &str) -> Self {
        self.file(path, Vec::new())
    }

    /// A regular file copied from the host when the layer is built.
    pub fn host_file(self, path: &str, host_path: &Path, mode: u32) -> Self {
        self.entry(
            Entry::new(
                path,
                EntryKind::File(FileContents::HostFile(host_path.to_path_buf())),
            )
            .with_mode(mode),
        )
    }

    /// A directory (mode 0755).
    pub fn dir(self, path: &str) -> Self {
        self.entry(Entry::dir(path))
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry::symlink(path, target))
    }

    /// A hard link at `path` to `target`, which must come earlier in the same layer.
    pub fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(Entry::new(
            path,
            EntryKind::Hardlink {
                target: target.to_string(),
            },
        ))
    }

    pub fn fifo(self, path: &str) -> Self {
        self.entry(Entry::new(path, EntryKind::Fifo))
    }

    pub fn char_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(Entry::new(path, EntryKind::CharDevice { major, minor }).with_mode(0o666))
    }

    pub fn block_device(self, path: &str, major: u32, minor: u32) -> Self {
        self.entry(Entry::new(path, EntryKind::BlockDevice { major, minor }).with_mode(0o660))
    }

    /// Removes `path` of lower layers (an empty `.wh.NAME` next to it).
    pub fn whiteout(self, path: &str) -> Self {
        self.entry(Entry::new(path, EntryKind::Whiteout))
    }

    /// Makes directory `path` opaque: lower layers' contents of it are hidden.
    pub fn opaque_dir(self, path: &str) -> Self {
        self.entry(Entry::new(path, EntryKind::OpaqueDir))
    }

    /// Sets the mode of the last entry (e.g. 0o4755 for setuid).
    pub fn mode(mut self, mode: u32) -> Self {
        self.last_entry().mode = mode;
        self
    }

    /// Sets the owner of the last entry.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        let entry = self.last_entry();
        entry.uid = uid;
        entry.gid = gid;
        self
    }

    /// Adds an extended attribute to the last entry.
    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.last_entry()
            .xattrs
            .push((name.to_string(), value.into()));
        self
    }

    /// Sets the modification time of the last entry.
    pub fn mtime(mut self, mtime: u64) -> Self {
        self.last_entry().mtime = mtime;
        self
    }

    pub fn compression(mut self, compression: LayerCompression) -> Self {
        self.compression = compression;
        self
    }

    /// An uncompressed (`tar`) layer instead of gzip.
    pub fn uncompressed(self) -> Self {
        self.compression(LayerCompression::Uncompressed)
    }

    /// Do not add entries for parent directories that are not listed (default: they are added,
    /// mode 0755, right before their first child).
    pub fn without_implicit_parents(mut self) -> Self {
        self.no_implicit_parents = true;
        self
    }

    fn last_entry(&mut self) -> &mut Entry {
        self.entries
            .last_mut()
            .expect("LayerSpec modifier called before any entry was added")
    }

    /// The base layer with a static busybox in `/bin` plus applet symlinks (`BUSYBOX_APPLETS`),
    /// `/etc/passwd`, `/etc/group`, and the usual empty directories.
    pub fn busybox() -> Self {
        let mut layer = Self::new()
            .dir("/bin")
            .host_file(
                "/bin/busybox",
                Path::new(crate::prereq::BUSYBOX_PATH),
                0o755,
            )
            .dir("/dev")
            .dir("/etc")
            .file(
                "/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            )
            .file("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
            .file("/etc/hostname", "skiff-test\n")
            .dir("/proc")
            .dir("/root")
            .mode(0o700)
            .dir("/sys")
            .dir("/tmp")
            .mode(0o1777)
            .dir("/usr")
            .dir("/usr/bin")
            .dir("/var");
        for applet in BUSYBOX_APPLETS {
            layer = layer.symlink(&format!("/bin/{applet}"), "busybox");
        }
        layer
    }

    /// The uncompressed tar stream of this layer.
    pub fn tar_bytes(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let explicit_dirs: BTreeSet<&str> = self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir | EntryKind::OpaqueDir))
            .map(Entry::relative_path)
            .collect();
        let mut emitted_dirs: BTreeSet<String> = BTreeSet::new();
        for entry in &self.entries {
            let path = entry.relative_path();
            if path.is_empty() {
                bail!("entry {:?} names the root directory", entry.path);
            }
            if !self.no_implicit_parents {
                let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
                for parent in parents {
                    if !explicit_dirs.contains(parent) && emitted_dirs.insert(parent.to_string()) {
                        append_entry(&mut builder, &Entry::dir(parent))?;
                    }
                }
            }
            if matches!(entry.kind, EntryKind::Dir | EntryKind::OpaqueDir) {
                emitted_dirs.insert(path.to_string());
            }
            append_entry(&mut builder, entry)
                .with_context(|| format!("add {} to layer", entry.path))?;
        }
        builder.into_inner().context("finish tar")
    }

    /// Builds the layer blob: (blob bytes, media type, diff id of the uncompressed tar).
    pub fn build(&self) -> Result<BuiltLayerBlob> {
        let tar = self.tar_bytes()?;
        let diff_id = sha256_digest(&tar);
        let (blob, media_type) = match self.compression {
            LayerCompression::Uncompressed => (tar, MEDIA_TYPE_LAYER_TAR),
            LayerCompression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(&tar)?;
                (encoder.finish()?, MEDIA_TYPE_LAYER_GZIP)
            }
        };
        Ok(BuiltLayerBlob {
            blob,
            media_type: media_type.to_string(),
            diff_id,
        })
    }
}

/// A layer blob ready to be written.
#[derive(Debug, Clone)]
pub struct BuiltLayerBlob {
    pub blob: Vec<u8>,
    pub media_type: String,
    pub diff_id: String,
}

fn append_entry(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) -> Result<()> {
    let path = entry.relative_path();
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode & 0o7777);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(0);
    if !entry.xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = entry
            .xattrs
            .iter()
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
            .collect();
        builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    match &entry.kind {
        EntryKind::File(contents) => {
            let data = contents.bytes()?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())?;
        }
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
        }
        EntryKind::OpaqueDir => {
            header.set_entry_type(tar::EntryType::Directory);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            let mut marker = tar::Header::new_gnu();
            marker.set_entry_type(tar::EntryType::Regular);
            marker.set_mode(0o644);
            marker.set_mtime(entry.mtime);
            marker.set_size(0);
            builder.append_data(
                &mut marker,
                format!("{path}/.wh..wh..opq"),
                std::io::empty(),
            )?;
        }
        EntryKind::Whiteout => {
            let (dir, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (format!("{dir}/"), name),
                None => (String::new(), path),
            };
            header.set_entry_type(tar::EntryType::Regular);
            builder.append_data(&mut header, format!("{dir}.wh.{name}"), std::io::empty())?;
        }
        EntryKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            builder.append_link(&mut header, path, target)?;
        }
        EntryKind::Hardlink { target } => {
            header.set_entry_type(tar::EntryType::Link);
            builder.append_link(&mut header, path, target.trim_start_matches('/'))?;
        }
        EntryKind::Fifo => {
            header.set_entry_type(tar::EntryType::Fifo);
            builder.append_data(&mut header, path, std::io::empty())?;
        }
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            header.set_entry_type(if matches!(entry.kind, EntryKind::CharDevice { .. }) {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            header.set_device_major(*major)?;
            header.set_device_minor(*minor)?;
            builder.append_data(&mut header, path, std::io::empty())?;
        }
    }
    Ok(())
}

/// An OS/architecture pair (and optional variant) as in OCI configs and indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str) -> Self {
        Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    pub fn with_variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_string());
        self
    }

    /// linux + the host's GOARCH-style architecture (amd64, arm64, …).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self::new("linux", arch)
    }

    /// A linux platform that is not the host's (arm64 on amd64 hosts, amd64 elsewhere).
    pub fn foreign() -> Self {
        if Self::host().architecture == "amd64" {
            Self::new("linux", "arm64").with_variant("v8")
        } else {
            Self::new("linux", "amd64")
        }
    }

    /// `os/arch[/variant]`, as `--platform` flags take it.
    pub fn spec(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"os": self.os, "architecture": self.architecture});
        if let Some(variant) = &self.variant {
            v["variant"] = json!(variant);
        }
        v
    }
}

/// A layer blob already written to a file (e.g. a tar of a directory tree, compressed while it was
/// written), added to an image as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlobFile {
    pub path: PathBuf,
    /// `sha256:HEX` of the file.
    pub digest: String,
    /// `sha256:HEX` of the uncompressed tar.
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// One layer of an `ImageSpec`: built from entries, or a blob file made elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLayer {
    Spec(LayerSpec),
    BlobFile(LayerBlobFile),
}

/// An image: layers (bottom first), platform and runtime config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    layers: Vec<ImageLayer>,
    platform: Platform,
    cmd: Vec<String>,
    entrypoint: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: Vec<(String, String)>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageSpec {
    /// An empty image for the host platform with a default PATH.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            platform: Platform::host(),
            cmd: Vec::new(),
            entrypoint: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: None,
            user: None,
            labels: Vec::new(),
        }
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: LayerSpec) -> Self {
        self.layers.push(ImageLayer::Spec(layer));
        self
    }

    /// Adds a prebuilt layer blob on top; its file is copied (or hard-linked) into the layout.
    pub fn blob_layer(mut self, blob: LayerBlobFile) -> Self {
        self.layers.push(ImageLayer::BlobFile(blob));
        self
    }

    /// Adds `LayerSpec::busybox()` on top (usually as the first layer) and `/bin/sh` as Cmd if
    /// none is set.
    pub fn busybox(mut self) -> Self {
        self.layers.push(ImageLayer::Spec(LayerSpec::busybox()));
        if self.cmd.is_empty() {
            self.cmd = vec!["/bin/sh".into()];
        }
        self
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = entrypoint.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds `KEY=VALUE` to the environment.
    pub fn env(mut self, key_value: &str) -> Self {
        self.env.push(key_value.to_string());
        self
    }

    pub fn working_dir(mut self, dir: &str) -> Self {
        self.working_dir = Some(dir.to_string());
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn layers(&self) -> &[ImageLayer] {
        &self.layers
    }

    pub fn get_platform(&self) -> &Platform {
        &self.platform
    }

    /// Writes this image into a new temporary OCI layout tagged `latest`.
    pub fn build_layout(&self) -> Result<OciLayout> {
        let dir = new_layout_dir()?;
        let image = self.write_layout(dir.path(), "latest")?;
        Ok(OciLayout {
            digest: image.manifest_digest.clone(),
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            images: vec![image],
            tag: "latest".to_string(),
            dir,
        })
    }

    /// Writes blobs, manifest and config into the OCI layout `dir` (created if needed) and
    /// tags the manifest `tag` in its index.json (replacing an older entry with that tag).
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<BuiltImage> {
        init_layout(dir)?;
        let image = self.write_blobs(dir)?;
        add_to_index(
            dir,
            tag,
            MEDIA_TYPE_OCI_MANIFEST,
            &image.manifest_digest,
            image.manifest.len(),
        )?;
        Ok(image)
    }

    fn write_blobs(&self, dir: &Path) -> Result<BuiltImage> {
        let mut layers = Vec::new();
        for layer in &self.layers {
            layers.push(match layer {
                ImageLayer::Spec(spec) => {
                    let built = spec.build()?;
                    let digest = write_blob(dir, &built.blob)?;
                    BuiltLayer {
                        digest,
                        diff_id: built.diff_id,
                        size: built.blob.len() as u64,
                        media_type: built.media_type,
                    }
                }
                ImageLayer::BlobFile(blob) => {
                    write_blob_file(dir, blob)?;
                    BuiltLayer {
                        digest: blob.digest.clone(),
                        diff_id: blob.diff_id.clone(),
                        size: blob.size,
                        media_type: blob.media_type.clone(),
                    }
                }
            });
        }
        let mut container_config = json!({"Env": self.env});
        if !self.cmd.is_empty() {
            container_config["Cmd"] = json!(self.cmd);
        }
        if !self.entrypoint.is_empty() {
            container_config["Entrypoint"] = json!(self.entrypoint);
        }
        if let Some(dir) = &self.working_dir {
            container_config["WorkingDir"] = json!(dir);
        }
        if let Some(user) = &self.user {
            container_config["User"] = json!(user);
        }
        if !self.labels.is_empty() {
            let labels: serde_json::Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            container_config["Labels"] = Value::Object(labels);
        }
        let mut config = self.platform.to_json();
        config["created"] = json!("2024-01-01T00:00:00Z");
        config["config"] = container_config;
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        });
        config["history"] = json!(layers
            .iter()
            .map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "skiff-tests"}))
            .collect::<Vec<_>>());
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = write_blob(dir, &config_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_OCI_CONFIG,
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let manifest_digest = write_blob(dir, &manifest_bytes)?;
        Ok(BuiltImage {
            manifest_digest,
            manifest: manifest_bytes,
            config_digest,
            config: config_bytes,
            layers,
            platform: self.platform.clone(),
        })
    }
}

/// Several images, one per platform, under one OCI image index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiPlatformSpec {
    images: Vec<ImageSpec>,
}

impl MultiPlatformSpec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an image; its `platform` goes into the index.
    pub fn image(mut self, image: ImageSpec) -> Self {
        self.images.push(image);
        self
    }

    /// A ready-made two-platform index: the host platform with `marker` in `/platform.txt`
    /// reading "host", and `Platform::foreign()` with a different layer reading "foreign".
    pub fn host_and_foreign() -> Self {
        let host = Platform::host();
        let foreign = Platform::foreign();
        Self::new()
            .image(
                ImageSpec::new().platform(host.clone()).layer(
                    LayerSpec::new().file("/platform.txt", format!("host {}\n", host.spec())),
                ),
            )
            .image(ImageSpec::new().platform(foreign.clone()).layer(
                LayerSpec::new().file("/platform.txt", format!("foreign {}\n", foreign.spec())),
            ))
    }

    /// Writes all images and the index into a new temporary OCI layout tagged `latest`.
    pub fn build_layout(&self) -> Result<OciLayout> {
        let dir = new_layout_dir()?;
        let (digest, images) = self.write_layout(dir.path(), "latest")?;
        Ok(OciLayout {
            dir,
            tag: "latest".to_string(),
            digest,
            media_type: MEDIA_TYPE_OCI_INDEX.to_string(),
            images,
        })
    }

    /// Writes into `dir`, tagging the index `tag`; returns (index digest, images).
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(String, Vec<BuiltImage>)> {
        if self.images.is_empty() {
            bail!("a multi-platform image needs at least one image");
        }
        init_layout(dir)?;
        let mut images = Vec::new();
        for spec in &self.images {
            images.push(spec.write_blobs(dir)?);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": images.iter().map(|image| json!({
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "platform": image.platform.to_json(),
            })).collect::<Vec<_>>(),
        });
        let index_bytes = serde_json::to_vec(&index)?;
        let digest = write_blob(dir, &index_bytes)?;
        add_to_index(dir, tag, MEDIA_TYPE_OCI_INDEX, &digest, index_bytes.len())?;
        Ok((digest, images))
    }
}

/// What was written for one image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub config: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<BuiltLayer>,
    pub platform: Platform,
}

/// One layer blob as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    pub digest: String,
    /// sha256 of the uncompressed tar (config `rootfs.diff_ids`).
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// A temporary OCI image layout directory holding one tagged image or index; removed on drop.
pub struct OciLayout {
    dir: TempDir,
    tag: String,
    digest: String,
    media_type: String,
    images: Vec<BuiltImage>,
}

impl OciLayout {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The tag (`org.opencontainers.image.ref.name`) in index.json.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Digest of the tagged manifest, or of the index for multi-platform layouts.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Media type of what `digest` names.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_TYPE_OCI_INDEX
    }

    /// The images written (one, or one per platform).
    pub fn images(&self) -> &[BuiltImage] {
        &self.images
    }

    /// `oci:DIR:TAG`, the skopeo source reference.
    pub fn skopeo_reference(&self) -> String {
        format!("oci:{}:{}", self.dir.path().display(), self.tag)
    }

    /// The path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(self.dir.path(), digest)
    }
}

fn new_layout_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("skiff-oci-")
        .tempdir()
        .context("create OCI layout temp dir")
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dir.join("blobs").join("sha256").join(hex)
}

fn init_layout(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("blobs").join("sha256"))
        .with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    if !dir.join("index.json").exists() {
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": []}))?,
        )?;
    }
    Ok(())
}

fn write_blob(dir: &Path, bytes: &[u8]) -> Result<String> {
    let digest = sha256_digest(bytes);
    let path = blob_path(dir, &digest);
    if !path.exists() {
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(digest)
}

/// Puts `blob`'s file into the layout under its digest: a hard link when both are on one
/// filesystem, else a copy. The file's size must match (its digest is the caller's word).
fn write_blob_file(dir: &Path, blob: &LayerBlobFile) -> Result<()> {
    let len = std::fs::metadata(&blob.path)
        .with_context(|| format!("layer blob {}", blob.path.display()))?
        .len();
    if len != blob.size {
        bail!(
            "layer blob {} is {len} bytes, not the {} its descriptor says",
            blob.path.display(),
            blob.size
        );
    }
    let path = blob_path(dir, &blob.digest);
    if path.exists() {
        return Ok(());
    }
    if std::fs::hard_link(&blob.path, &path).is_err() {
        std::fs::copy(&blob.path, &path)
            .with_context(|| format!("copy {} to {}", blob.path.display(), path.display()))?;
    }
    Ok(())
}

fn add_to_index(dir: &Path, tag: &str, media_type: &str, digest: &str, size: usize) -> Result<()> {
    let path = dir.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("parse {}", path.display()))?;
    let manifests = index["manifests"]
        .as_array_mut()
        .context("index.json has no manifests array")?;
    manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != json!(tag));
    let descriptor = json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": {"org.opencontainers.image.ref.name": tag},
    });
    manifests.push(descriptor);
    std::fs::write(&path, serde_json::to_vec(&index)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries_of(tar: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn generated_bytes_are_deterministic() {
        assert_eq!(generated_bytes(7, 100), generated_bytes(7, 100));
        assert_ne!(generated_bytes(7, 100), generated_bytes(8, 100));
        assert_eq!(generated_bytes(7, 13), generated_bytes(7, 100)[..13]);
    }

    #[test]
    fn writes_every_entry_type_with_implicit_parents() {
        let layer = LayerSpec::new()
            .file("/a/b/file", "x")
            .mode(0o4755)
            .owner(1000, 1001)
            .xattr("user.k", "v")
            .symlink("/a/link", "b/file")
            .hardlink("/a/hard", "/a/b/file")
            .fifo("/a/fifo")
            .char_device("/a/null", 1, 3)
            .block_device("/a/blk", 7, 0)
            .whiteout("/a/gone")
            .opaque_dir("/c");
        let names = entries_of(&layer.tar_bytes().unwrap());
        let paths: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a/",
                "a/b/",
                "a/b/file",
                "a/link",
                "a/hard",
                "a/fifo",
                "a/null",
                "a/blk",
                "a/.wh.gone",
                "c/",
                "c/.wh..wh..opq"
            ]
        );
        let mut archive = tar::Archive::new(std::io::Cursor::new(layer.tar_bytes().unwrap()));
        let mut file = archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| e.path().unwrap().ends_with("a/b/file"))
            .unwrap();
        assert_eq!(file.header().mode().unwrap(), 0o4755);
        assert_eq!(file.header().uid().unwrap(), 1000);
        let pax: Vec<(String, Vec<u8>)> = file
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.key().unwrap().to_string(), e.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(pax, [("SCHILY.xattr.user.k".to_string(), b"v".to_vec())]);
    }

    #[test]
    fn layout_has_manifest_config_and_diff_ids() {
        let layout = ImageSpec::new()
            .layer(LayerSpec::new().file("/hello", "hi"))
            .layer(LayerSpec::new().file("/raw", "raw").uncompressed())
            .cmd(&["/hello"])
            .build_layout()
            .unwrap();
        let image = &layout.images()[0];
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.layers[1].media_type, MEDIA_TYPE_LAYER_TAR);
        assert_eq!(image.layers[1].digest, image.layers[1].diff_id);
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["architecture"], json!(Platform::host().architecture));
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            json!(image.layers[0].diff_id)
        );
        let index: Value =
            serde_json::from_slice(&std::fs::read(layout.path().join("index.json")).unwrap())
                .unwrap();
        assert_eq!(index["manifests"][0]["digest"], json!(layout.digest()));
        assert!(layout.blob_path(&image.config_digest).exists());
    }

    #[test]
    fn blob_file_layers_go_into_the_layout_as_they_are() {
        let built = LayerSpec::new().file("/prebuilt", "p").build().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("layer.tar.gz");
        std::fs::write(&path, &built.blob).unwrap();
        let blob = LayerBlobFile {
            path: path.clone(),
            digest: sha256_digest(&built.blob),
            diff_id: built.diff_id.clone(),
            size: built.blob.len() as u64,
            media_type: built.media_type.clone(),
        };
        let layout = ImageSpec::new()
            .blob_layer(blob.clone())
            .layer(LayerSpec::new().file("/top", "t"))
            .build_layout()
            .unwrap();
        let image = &layout.images()[0];
        assert_eq!(image.layers[0].digest, blob.digest);
        assert_eq!(image.layers[0].diff_id, blob.diff_id);
        assert_eq!(
            std::fs::read(layout.blob_path(&blob.digest)).unwrap(),
            built.blob
        );
        let config: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], json!(built.diff_id));

        let wrong_size = LayerBlobFile { size: 1, ..blob };
        let Err(err) = ImageSpec::new().blob_layer(wrong_size).build_layout() else {
            panic!("a blob file of the wrong size was accepted");
        };
        assert!(err.to_string().contains("not the 1"), "{err}");
    }
}
