//! The in-memory file tree of one layer, built once from its TOC and immutable afterwards: inodes,
//! sorted directory listings, and for every regular file the chunks (blob range + sha256) that hold
//! its bytes. It is what the FUSE layer answers metadata from, so it never touches the network.
//!
//! Rules, matching what a tar extraction and stargz-snapshotter show:
//! - paths are normalized (`./`, `/`, `//`, trailing `/` dropped); `..` is rejected;
//! - duplicate entries: the last one wins; missing parents are implicit `0755 root:root` directories;
//! - hardlinks share one inode (nlink counted), a dangling hardlink is an error;
//! - `chunk` entries continue the preceding `reg` entry of the same name;
//! - `.prefetch.landmark`, `.no.prefetch.landmark` and `stargz.index.json` at the root are hidden;
//! - OCI whiteouts become what overlayfs expects from a lower layer: `.wh.NAME` a `0000 root:root`
//!   character device 0/0 named `NAME` (unless the layer also has a real `NAME`), `.wh..wh..opq` the
//!   xattr `trusted.overlay.opaque=y` on its directory; other `.wh..wh.*` entries are hidden.
//!
//! Inode numbers are dense, from [`ROOT_INO`], and stable for a given TOC. A file's [`ChunkRef`]s give each
//! chunk's place in the file, its compressed range in the blob (which may run past the chunk: eStargz has
//! no end offsets, so decompressing `size` bytes from the start is what counts) and its sha256, the chunk
//! cache's key; a file's own digest, when the TOC has one, keys its whole-file copy. The files before
//! `.prefetch.landmark` are remembered in TOC order ([`FileTree::prefetch_inodes`]) for prefetching.
//! Building is bounded by the TOC's [`Limits`] and refuses what a kernel could not show (names over 255
//! bytes, hard links to directories or in loops).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use skiff_types::Digest;

use super::chunk::Compression;
use super::toc::{
    parse_rfc3339, EntryKind, Limits, Toc, TocEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK,
    TOC_TAR_NAME,
};
use super::FormatError;

/// An inode number. Numbers are dense, from [`ROOT_INO`] to `len()`, and stable for a given TOC.
pub type Ino = u64;
/// The inode of the layer's root directory.
pub const ROOT_INO: Ino = 1;

/// Prefix of an OCI whiteout.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of AUFS metadata entries, never shown.
pub const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The opaque-directory marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to know a lower directory is opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Permissions of directories the TOC implies but does not list.
const IMPLICIT_DIR_MODE: u32 = 0o755;
/// Longest path component Linux accepts.
const NAME_MAX: usize = 255;
/// Longest hardlink chain followed before calling it a loop.
const MAX_LINK_HOPS: usize = 64;

/// A file's chunk: where its compressed bytes lie in the blob and what they hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Offset of the chunk in the file.
    pub file_offset: u64,
    /// Uncompressed size of the chunk.
    pub size: u64,
    /// Blob range starting at the chunk's compressed bytes. It may run past them (eStargz has no
    /// end offsets); decompressing the first `size` bytes from its start is always right.
    pub compressed: Range<u64>,
    /// sha256 of the uncompressed chunk.
    pub digest: Digest,
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One inode with everything `getattr`, `readlink`, `getxattr` and `read` need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ino: Ino,
    pub kind: NodeKind,
    /// Permission bits plus setuid/setgid/sticky; no file type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File size for regular files, target length for symlinks, 0 otherwise.
    pub size: u64,
    /// Modification time: seconds since the epoch and nanoseconds.
    pub mtime: (i64, u32),
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// Symlink target.
    pub link_target: Option<Vec<u8>>,
    /// Extended attributes, values decoded from the TOC's base64.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Names referring to this inode (for directories: 2 + subdirectories).
    pub nlink: u32,
    /// Whole-file sha256 from the TOC `digest`, when it has one.
    pub file_digest: Option<Digest>,
    /// Sorted by `file_offset`, contiguous, covering `size`; empty for empty files and non-files.
    pub chunks: Vec<ChunkRef>,
}

impl Node {
    /// The chunks holding bytes `offset .. offset + len` of the file (clamped to its size).
    pub fn chunks_covering(&self, offset: u64, len: u64) -> &[ChunkRef] {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return &[];
        }
        let first = self
            .chunks
            .partition_point(|c| c.file_offset + c.size <= offset);
        let last = self.chunks.partition_point(|c| c.file_offset < end);
        &self.chunks[first..last.max(first)]
    }
}

/// The file tree of one layer. Immutable once built; `Send + Sync`.
#[derive(Debug)]
pub struct FileTree {
    /// `nodes[ino - 1]`.
    nodes: Vec<Node>,
    /// Directory listings by inode index, sorted by name; empty for non-directories.
    children: Vec<Vec<(Vec<u8>, Ino)>>,
    /// Parent inode by inode index (of the first name, for hardlinked files); 0 for the root.
    parents: Vec<Ino>,
    /// The (first) name of each inode in its parent.
    names: Vec<Vec<u8>>,
    prefetch: Vec<Ino>,
    total_file_bytes: u64,
    compression: Compression,
}

/// A visible path and the TOC entries that define it.
struct Slot {
    entry: usize,
    chunks: Vec<usize>,
}

#[derive(Clone, Copy)]
enum Source {
    Slot,
    Implicit,
    Whiteout(usize),
}

impl FileTree {
    /// Builds the tree. `blob_toc_offset` is where the blob's payload ends (the TOC's offset): no
    /// chunk may reach past it, and the last chunk's compressed range ends there when nothing else
    /// bounds it.
    pub fn build(
        toc: &Toc,
        compression: Compression,
        blob_toc_offset: u64,
        limits: &Limits,
    ) -> Result<FileTree, FormatError> {
        let entries = &toc.entries;
        if entries.len() > limits.max_entries {
            return Err(FormatError::TooManyEntries {
                limit: limits.max_entries,
            });
        }

        // Pass 1: normalize names, attach chunks, sort out markers; the last entry of a path wins.
        let mut slots: HashMap<String, Slot> = HashMap::new();
        let mut whiteouts: HashMap<String, usize> = HashMap::new();
        let mut opaque: HashSet<String> = HashSet::new();
        let mut root_entry: Option<usize> = None;
        let mut current_reg: Option<String> = None;
        let mut before_landmark: Vec<String> = Vec::new();
        let mut landmark = false;
        let mut no_prefetch = false;
        for (index, entry) in entries.iter().enumerate() {
            if entry.r#type == EntryKind::Chunk {
                let Some(path) = &current_reg else {
                    return Err(FormatError::OrphanChunk {
                        path: entry.name.clone(),
                    });
                };
                if !entry.name.is_empty() && normalize_path(&entry.name, limits)? != *path {
                    return Err(FormatError::OrphanChunk {
                        path: entry.name.clone(),
                    });
                }
                if let Some(slot) = slots.get_mut(path) {
                    slot.chunks.push(index);
                }
                continue;
            }
            current_reg = None;
            let path = normalize_path(&entry.name, limits)?;
            if path.is_empty() {
                if entry.r#type != EntryKind::Dir {
                    return Err(FormatError::InvalidEntry {
                        path: entry.name.clone(),
                        reason: "the layer root must be a directory".into(),
                    });
                }
                root_entry = Some(index);
                continue;
            }
            let (parent, base) = split_path(&path);
            if parent.split('/').any(|c| c.starts_with(WHITEOUT_PREFIX)) {
                return Err(FormatError::InvalidPath {
                    path: entry.name.clone(),
                    reason: "a whiteout cannot be a directory",
                });
            }
            if parent.is_empty() {
                match base {
                    PREFETCH_LANDMARK => {
                        landmark = true;
                        continue;
                    }
                    NO_PREFETCH_LANDMARK => {
                        no_prefetch = true;
                        continue;
                    }
                    TOC_TAR_NAME => continue,
                    _ => {}
                }
            }
            if base == OPAQUE_WHITEOUT {
                opaque.insert(parent.to_string());
                continue;
            }
            if base.starts_with(WHITEOUT_META_PREFIX) {
                continue;
            }
            if let Some(target) = base.strip_prefix(WHITEOUT_PREFIX) {
                if target.is_empty() {
                    return Err(FormatError::InvalidPath {
                        path: entry.name.clone(),
                        reason: "whiteout of an empty name",
                    });
                }
                whiteouts.insert(join_path(parent, target), index);
                continue;
            }
            if entry.r#type == EntryKind::Reg {
                current_reg = Some(path.clone());
                if !landmark {
                    before_landmark.push(path.clone());
                }
            }
            slots.insert(
                path,
                Slot {
                    entry: index,
                    chunks: Vec::new(),
                },
            );
        }
        let mut paths: Vec<&String> = slots.keys().collect();
        paths.sort_unstable();

        // Pass 2: resolve hardlinks to the path owning the inode.
        let mut link_target: HashMap<&str, String> = HashMap::new();
        for &path in &paths {
            let entry = &entries[slots[path].entry];
            if entry.r#type == EntryKind::Hardlink {
                let target = resolve_hardlink(path, entry, &slots, entries, limits)?;
                link_target.insert(path.as_str(), target);
            }
        }

        // Pass 3: every parent must be a directory; missing ones become implicit directories.
        let mut implicit: HashSet<String> = HashSet::new();
        let mut known_dirs: HashSet<String> = HashSet::new();
        let mut ensure_dir = |dir: &str, child: &str| -> Result<(), FormatError> {
            let mut current = dir;
            while !current.is_empty() && !known_dirs.contains(current) {
                match slots.get(current) {
                    Some(slot) if entries[slot.entry].r#type != EntryKind::Dir => {
                        return Err(FormatError::NotADirectory {
                            path: child.to_string(),
                            parent: current.to_string(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        implicit.insert(current.to_string());
                    }
                }
                known_dirs.insert(current.to_string());
                current = split_path(current).0;
            }
            Ok(())
        };
        for &path in &paths {
            ensure_dir(split_path(path).0, path)?;
        }
        let mut whiteout_paths: Vec<(&String, usize)> =
            whiteouts.iter().map(|(p, &i)| (p, i)).collect();
        whiteout_paths.sort_unstable();
        for &(path, _) in &whiteout_paths {
            ensure_dir(split_path(path).0, path)?;
        }
        let mut opaque_dirs: Vec<&String> = opaque.iter().collect();
        opaque_dirs.sort_unstable();
        for &dir in &opaque_dirs {
            ensure_dir(dir, dir)?;
        }

        // Pass 4: directory listings by parent path, sorted by name. A real entry (or an implied
        // directory) hides a whiteout of the same name.
        let mut visible: Vec<(&str, Source)> =
            paths.iter().map(|p| (p.as_str(), Source::Slot)).collect();
        visible.extend(implicit.iter().map(|d| (d.as_str(), Source::Implicit)));
        for &(path, index) in &whiteout_paths {
            if !slots.contains_key(path) && !implicit.contains(path) {
                visible.push((path.as_str(), Source::Whiteout(index)));
            }
        }
        let mut by_parent: HashMap<&str, Vec<(&str, &str, Source)>> = HashMap::new();
        for (path, source) in visible {
            let (parent, base) = split_path(path);
            by_parent
                .entry(parent)
                .or_default()
                .push((base, path, source));
        }
        for list in by_parent.values_mut() {
            list.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }

        // Where each chunk's compressed bytes can end: the next chunk start in the blob.
        let mut boundaries: Vec<u64> = entries
            .iter()
            .filter(|e| matches!(e.r#type, EntryKind::Reg | EntryKind::Chunk) && e.offset > 0)
            .map(|e| e.offset)
            .collect();
        boundaries.sort_unstable();
        boundaries.dedup();
        let layout = BlobLayout {
            boundaries,
            payload_end: blob_toc_offset,
            limits,
        };

        // Pass 5: inodes, breadth first from the root in name order.
        let root = match root_entry {
            Some(index) => node_from_entry(ROOT_INO, "", &entries[index], &[], entries, &layout)?,
            None => implicit_dir(ROOT_INO),
        };
        let mut tree = FileTree {
            nodes: vec![root],
            children: vec![Vec::new()],
            parents: vec![0],
            names: vec![Vec::new()],
            prefetch: Vec::new(),
            total_file_bytes: 0,
            compression,
        };
        if opaque.contains("") {
            tree.nodes[0]
                .xattrs
                .insert(OPAQUE_XATTR.into(), b"y".to_vec());
        }
        let mut ino_of_path: HashMap<&str, Ino> = HashMap::new();
        let mut queue: VecDeque<(Ino, &str)> = VecDeque::from([(ROOT_INO, "")]);
        while let Some((dir_ino, dir_path)) = queue.pop_front() {
            let Some(kids) = by_parent.get(dir_path) else {
                continue;
            };
            let mut listing = Vec::with_capacity(kids.len());
            for &(base, path, source) in kids {
                let next_ino = tree.nodes.len() as Ino + 1;
                let ino = match source {
                    Source::Implicit => {
                        tree.push(implicit_dir(next_ino), dir_ino, base);
                        next_ino
                    }
                    Source::Whiteout(index) => {
                        let node = whiteout_node(next_ino, path, &entries[index])?;
                        tree.push(node, dir_ino, base);
                        next_ino
                    }
                    Source::Slot => {
                        let owner = link_target.get(path).map_or(path, String::as_str);
                        if let Some(&ino) = ino_of_path.get(owner) {
                            let node = &mut tree.nodes[(ino - 1) as usize];
                            node.nlink = node.nlink.saturating_add(1);
                            ino
                        } else {
                            let slot = &slots[owner];
                            let node = node_from_entry(
                                next_ino,
                                owner,
                                &entries[slot.entry],
                                &slot.chunks,
                                entries,
                                &layout,
                            )?;
                            tree.push(node, dir_ino, base);
                            ino_of_path.insert(owner, next_ino);
                            next_ino
                        }
                    }
                };
                let node = &mut tree.nodes[(ino - 1) as usize];
                if node.kind == NodeKind::Dir
                    && node.ino == ino
                    && matches!(source, Source::Slot | Source::Implicit)
                {
                    if opaque.contains(path) {
                        node.xattrs.insert(OPAQUE_XATTR.into(), b"y".to_vec());
                    }
                    queue.push_back((ino, path));
                }
                listing.push((base.as_bytes().to_vec(), ino));
            }
            tree.children[(dir_ino - 1) as usize] = listing;
        }

        // Directory link counts, total bytes, prefetch list.
        for index in 0..tree.nodes.len() {
            if tree.nodes[index].kind == NodeKind::Dir {
                let subdirs = tree.children[index]
                    .iter()
                    .filter(|(_, ino)| tree.nodes[(*ino - 1) as usize].kind == NodeKind::Dir)
                    .count();
                tree.nodes[index].nlink =
                    u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
            }
        }
        tree.total_file_bytes = tree
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::File)
            .fold(0u64, |sum, n| sum.saturating_add(n.size));
        if landmark && !no_prefetch {
            let mut seen = HashSet::new();
            for path in &before_landmark {
                let owner = link_target
                    .get(path.as_str())
                    .map_or(path.as_str(), String::as_str);
                if let Some(&ino) = ino_of_path.get(owner) {
                    let node = &tree.nodes[(ino - 1) as usize];
                    if node.kind == NodeKind::File && node.size > 0 && seen.insert(ino) {
                        tree.prefetch.push(ino);
                    }
                }
            }
        }
        Ok(tree)
    }

    fn push(&mut self, node: Node, parent: Ino, name: &str) {
        self.nodes.push(node);
        self.children.push(Vec::new());
        self.parents.push(parent);
        self.names.push(name.as_bytes().to_vec());
    }

    /// The inode `ino`, if it exists.
    pub fn node(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        let listing = self.children(parent);
        listing
            .binary_search_by(|(child, _)| child.as_slice().cmp(name))
            .ok()
            .map(|i| listing[i].1)
    }

    /// The listing of `dir`, sorted by name (stable, so indexes serve as readdir offsets); empty for
    /// non-directories and unknown inodes.
    pub fn children(&self, dir: Ino) -> &[(Vec<u8>, Ino)] {
        dir.checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.children.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// The directory holding `ino` (its first name's, for hardlinked files); `None` for the root
    /// and unknown inodes.
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.parents.get(index).copied().filter(|&p| p != 0)
    }

    /// Number of inodes (the root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the root always exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Sum of the sizes of all regular files (hardlinked files counted once).
    pub fn total_file_bytes(&self) -> u64 {
        self.total_file_bytes
    }

    /// eStargz: regular files before `.prefetch.landmark` in TOC order; empty when
    /// `.no.prefetch.landmark` is present or there is no landmark.
    pub fn prefetch_inodes(&self) -> Vec<Ino> {
        self.prefetch.clone()
    }

    /// Absolute path of `ino`'s first name (`/` for the root), for logs and tests.
    pub fn path_of(&self, ino: Ino) -> Vec<u8> {
        let mut components = Vec::new();
        let mut current = ino;
        while let Some(parent) = self.parent(current) {
            components.push(&self.names[(current - 1) as usize]);
            current = parent;
            if components.len() > self.nodes.len() {
                break;
            }
        }
        if components.is_empty() {
            return b"/".to_vec();
        }
        let mut path = Vec::new();
        for component in components.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(component);
        }
        path
    }

    /// All inodes, in inode order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// How this layer's chunks are compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Checks the structural promises of this type (dense inodes, sorted listings, contiguous
    /// chunks, link counts). For tests and fuzzers; a built tree always passes.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let count = self.nodes.len() as Ino;
        for (index, node) in self.nodes.iter().enumerate() {
            let ino = index as Ino + 1;
            if node.ino != ino {
                return Err(format!("node {index} has ino {}", node.ino));
            }
            if ino != ROOT_INO && !(1..=count).contains(&self.parents[index]) {
                return Err(format!("inode {ino} has no parent"));
            }
            let listing = &self.children[index];
            if node.kind != NodeKind::Dir && !listing.is_empty() {
                return Err(format!("non-directory {ino} has children"));
            }
            for pair in listing.windows(2) {
                if pair[0].0 >= pair[1].0 {
                    return Err(format!("listing of {ino} is not strictly sorted"));
                }
            }
            let mut subdirs = 0u32;
            for (name, child) in listing {
                if name.is_empty()
                    || name.contains(&b'/')
                    || name.contains(&0)
                    || name == b"."
                    || name == b".."
                {
                    return Err(format!("bad name {name:?} in {ino}"));
                }
                let child_node = self
                    .node(*child)
                    .ok_or_else(|| format!("dangling child {child}"))?;
                if child_node.kind == NodeKind::Dir {
                    subdirs += 1;
                    if self.parents[(*child - 1) as usize] != ino {
                        return Err(format!(
                            "directory {child} listed in {ino} has another parent"
                        ));
                    }
                }
            }
            if node.kind == NodeKind::Dir && node.nlink != subdirs + 2 {
                return Err(format!(
                    "directory {ino} has nlink {} for {subdirs} subdirectories",
                    node.nlink
                ));
            }
            if node.mode & !0o7777 != 0 {
                return Err(format!("inode {ino} has type bits in its mode"));
            }
            let mut covered = 0u64;
            for chunk in &node.chunks {
                if chunk.file_offset != covered || chunk.size == 0 || chunk.compressed.is_empty() {
                    return Err(format!("inode {ino} has a bad chunk {chunk:?}"));
                }
                covered += chunk.size;
            }
            if node.kind == NodeKind::File && covered != node.size {
                return Err(format!(
                    "chunks of {ino} cover {covered} of {} bytes",
                    node.size
                ));
            }
            if node.kind != NodeKind::File && !node.chunks.is_empty() {
                return Err(format!("non-file {ino} has chunks"));
            }
        }
        if self.nodes.first().map(|n| n.kind) != Some(NodeKind::Dir) {
            return Err("the root is not a directory".into());
        }
        for &ino in &self.prefetch {
            if self.node(ino).map(|n| n.kind) != Some(NodeKind::File) {
                return Err(format!("prefetch inode {ino} is not a file"));
            }
        }
        Ok(())
    }
}

/// Normalizes a TOC path: no leading `./` or `/`, no empty or `.` components, no trailing `/`.
/// `..` components are rejected whether or not they would escape, like a NUL byte or an over-long
/// name.
pub fn normalize_path(raw: &str, limits: &Limits) -> Result<String, FormatError> {
    let invalid = |reason| FormatError::InvalidPath {
        path: raw.chars().take(1024).collect(),
        reason,
    };
    if raw.contains('\0') {
        return Err(invalid("contains a nul byte"));
    }
    let mut out = String::with_capacity(raw.len());
    for component in raw.split('/') {
        match component {
            "" | "." => continue,
            ".." => {
                return Err(FormatError::PathEscape {
                    path: raw.chars().take(1024).collect(),
                })
            }
            name => {
                if name.len() > NAME_MAX {
                    return Err(invalid("has a component longer than 255 bytes"));
                }
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(name);
                if out.len() > limits.max_name_len {
                    return Err(invalid("is longer than the path length limit"));
                }
            }
        }
    }
    Ok(out)
}

/// `(parent, base)` of a normalized path; the parent of a top-level name is `""`.
fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn resolve_hardlink(
    path: &str,
    entry: &TocEntry,
    slots: &HashMap<String, Slot>,
    entries: &[TocEntry],
    limits: &Limits,
) -> Result<String, FormatError> {
    let missing = || FormatError::HardlinkTargetMissing {
        path: path.to_string(),
        target: entry.link_name.clone(),
    };
    let mut target = normalize_path(&entry.link_name, limits)?;
    for _ in 0..MAX_LINK_HOPS {
        let slot = slots.get(&target).ok_or_else(missing)?;
        let target_entry = &entries[slot.entry];
        match target_entry.r#type {
            EntryKind::Hardlink => target = normalize_path(&target_entry.link_name, limits)?,
            EntryKind::Dir => {
                return Err(FormatError::InvalidEntry {
                    path: path.to_string(),
                    reason: format!("hardlink to the directory {:?}", entry.link_name),
                })
            }
            _ => return Ok(target),
        }
    }
    Err(missing())
}

fn implicit_dir(ino: Ino) -> Node {
    Node {
        ino,
        kind: NodeKind::Dir,
        mode: IMPLICIT_DIR_MODE,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: (0, 0),
        rdev_major: 0,
        rdev_minor: 0,
        link_target: None,
        xattrs: BTreeMap::new(),
        nlink: 2,
        file_digest: None,
        chunks: Vec::new(),
    }
}

fn whiteout_node(ino: Ino, path: &str, entry: &TocEntry) -> Result<Node, FormatError> {
    Ok(Node {
        kind: NodeKind::CharDevice,
        mode: 0,
        mtime: parse_mtime(path, entry)?,
        nlink: 1,
        ..implicit_dir(ino)
    })
}

fn parse_mtime(path: &str, entry: &TocEntry) -> Result<(i64, u32), FormatError> {
    match entry.mod_time.as_deref() {
        None | Some("") => Ok((0, 0)),
        Some(text) => parse_rfc3339(text).ok_or_else(|| FormatError::InvalidEntry {
            path: path.to_string(),
            reason: format!("invalid modtime {text:?}"),
        }),
    }
}

fn to_u32(path: &str, what: &str, value: u64) -> Result<u32, FormatError> {
    u32::try_from(value).map_err(|_| FormatError::InvalidEntry {
        path: path.to_string(),
        reason: format!("{what} {value} is out of range"),
    })
}

/// Base64 as Go writes it, but also accepting missing padding.
const XATTR_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_xattrs(path: &str, entry: &TocEntry) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, FormatError> {
    let mut xattrs = BTreeMap::new();
    for (name, value) in &entry.xattrs {
        if name.is_empty() || name.contains('\0') {
            return Err(FormatError::InvalidEntry {
                path: path.to_string(),
                reason: format!("invalid xattr name {name:?}"),
            });
        }
        let decoded = XATTR_BASE64
            .decode(value)
            .map_err(|_| FormatError::InvalidEntry {
                path: path.to_string(),
                reason: format!("xattr {name:?} is not valid base64"),
            })?;
        xattrs.insert(name.as_bytes().to_vec(), decoded);
    }
    Ok(xattrs)
}

/// What bounds chunk ranges in the blob.
struct BlobLayout<'a> {
    /// Sorted, distinct start offsets of every data entry in the TOC.
    boundaries: Vec<u64>,
    /// Where the payload ends (the TOC's offset).
    payload_end: u64,
    limits: &'a Limits,
}

impl BlobLayout<'_> {
    fn next_boundary_after(&self, offset: u64) -> u64 {
        let i = self.boundaries.partition_point(|&b| b <= offset);
        self.boundaries.get(i).copied().unwrap_or(self.payload_end)
    }
}

fn node_from_entry(
    ino: Ino,
    path: &str,
    entry: &TocEntry,
    chunk_entries: &[usize],
    entries: &[TocEntry],
    layout: &BlobLayout,
) -> Result<Node, FormatError> {
    let kind = match entry.r#type {
        EntryKind::Dir => NodeKind::Dir,
        EntryKind::Reg => NodeKind::File,
        EntryKind::Symlink => NodeKind::Symlink,
        EntryKind::Char => NodeKind::CharDevice,
        EntryKind::Block => NodeKind::BlockDevice,
        EntryKind::Fifo => NodeKind::Fifo,
        EntryKind::Hardlink | EntryKind::Chunk => {
            unreachable!("hardlinks are resolved and chunks attached before nodes are made")
        }
    };
    let is_device = matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice);
    let (size, link_target, file_digest, chunks) = match kind {
        NodeKind::File => {
            if entry.size > layout.limits.max_file_size {
                return Err(FormatError::InvalidEntry {
                    path: path.to_string(),
                    reason: format!(
                        "size {} exceeds the limit of {} bytes",
                        entry.size, layout.limits.max_file_size
                    ),
                });
            }
            let file_digest = if entry.digest.is_empty() {
                None
            } else {
                Some(parse_digest(path, &entry.digest)?)
            };
            let parts: Vec<&TocEntry> = std::iter::once(entry)
                .chain(chunk_entries.iter().map(|&i| &entries[i]))
                .collect();
            let chunks = build_chunks(path, &parts, layout)?;
            (entry.size, None, file_digest, chunks)
        }
        NodeKind::Symlink => {
            let target = entry.link_name.as_bytes().to_vec();
            (target.len() as u64, Some(target), None, Vec::new())
        }
        _ => (0, None, None, Vec::new()),
    };
    Ok(Node {
        ino,
        kind,
        mode: (entry.mode & 0o7777) as u32,
        uid: to_u32(path, "uid", entry.uid)?,
        gid: to_u32(path, "gid", entry.gid)?,
        size,
        mtime: parse_mtime(path, entry)?,
        rdev_major: if is_device {
            to_u32(path, "devMajor", entry.dev_major)?
        } else {
            0
        },
        rdev_minor: if is_device {
            to_u32(path, "devMinor", entry.dev_minor)?
        } else {
            0
        },
        link_target,
        xattrs: decode_xattrs(path, entry)?,
        nlink: 1,
        file_digest,
        chunks,
    })
}

fn parse_digest(path: &str, digest: &str) -> Result<Digest, FormatError> {
    Digest::parse_lenient(digest).map_err(|_| FormatError::InvalidDigest {
        path: path.to_string(),
        digest: digest.chars().take(100).collect(),
    })
}

/// The chunks of a regular file from its `reg` entry and its `chunk` entries (`parts[0]` is the
/// `reg` entry).
fn build_chunks(
    path: &str,
    parts: &[&TocEntry],
    layout: &BlobLayout,
) -> Result<Vec<ChunkRef>, FormatError> {
    let reg = parts[0];
    let size = reg.size;
    let invalid = |reason: String| FormatError::InvalidChunks {
        path: path.to_string(),
        reason,
    };
    if size == 0 {
        if parts.len() > 1 {
            return Err(invalid("an empty file has chunk entries".into()));
        }
        return Ok(Vec::new());
    }
    let mut chunks = Vec::with_capacity(parts.len());
    let mut covered: u64 = 0;
    for (k, part) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        if part.inner_offset != 0 {
            return Err(FormatError::Unsupported {
                path: path.to_string(),
                feature: "innerOffset (several chunks in one compressed stream)",
            });
        }
        if part.chunk_offset != covered || covered >= size {
            return Err(invalid(format!(
                "chunk at file offset {} where {covered} of {size} bytes were covered",
                part.chunk_offset
            )));
        }
        let chunk_size = if part.chunk_size == 0 {
            size - covered
        } else {
            part.chunk_size
        };
        if chunk_size > size - covered {
            return Err(invalid(format!(
                "chunk of {chunk_size} bytes at {covered} runs past the end of the {size}-byte file"
            )));
        }
        if chunk_size > layout.limits.max_chunk_size {
            return Err(invalid(format!(
                "chunk of {chunk_size} bytes exceeds the limit of {} bytes",
                layout.limits.max_chunk_size
            )));
        }
        let digest = if !part.chunk_digest.is_empty() {
            parse_digest(path, &part.chunk_digest)?
        } else if parts.len() == 1 && chunk_size == size && !reg.digest.is_empty() {
            parse_digest(path, &reg.digest)?
        } else {
            return Err(FormatError::Unverifiable {
                path: path.to_string(),
            });
        };
        let start = part.offset;
        if start == 0 {
            return Err(invalid(format!(
                "chunk at file offset {covered} has no blob offset"
            )));
        }
        let end = if part.end_offset != 0 && (k > 0 || parts.len() == 1) {
            part.end_offset
        } else if last && reg.end_offset != 0 {
            reg.end_offset
        } else {
            layout.next_boundary_after(start)
        };
        if start >= end || end > layout.payload_end {
            return Err(invalid(format!(
                "compressed range {start}..{end} is not inside the blob payload 0..{}",
                layout.payload_end
            )));
        }
        chunks.push(ChunkRef {
            file_offset: covered,
            size: chunk_size,
            compressed: start..end,
            digest,
        });
        covered += chunk_size;
    }
    if covered != size {
        return Err(invalid(format!("chunks cover {covered} of {size} bytes")));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::toc::parse_toc_json;
    use super::*;

    fn d(byte: u8) -> String {
        format!("sha256:{}", hex::encode([byte; 32]))
    }

    fn toc(entries: Value) -> Toc {
        let json = json!({ "version": 1, "entries": entries });
        parse_toc_json(json.to_string().as_bytes(), &Limits::default()).unwrap()
    }

    fn build(entries: Value) -> Result<FileTree, FormatError> {
        let tree = FileTree::build(
            &toc(entries),
            Compression::Gzip,
            1_000_000,
            &Limits::default(),
        )?;
        tree.check_invariants().unwrap();
        Ok(tree)
    }

    fn resolve(tree: &FileTree, path: &str) -> Option<Ino> {
        let mut ino = ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            ino = tree.lookup(ino, name.as_bytes())?;
        }
        Some(ino)
    }

    fn node<'a>(tree: &'a FileTree, path: &str) -> &'a Node {
        tree.node(resolve(tree, path).unwrap_or_else(|| panic!("{path} missing")))
            .unwrap()
    }

    fn names(tree: &FileTree, dir: &str) -> Vec<String> {
        tree.children(resolve(tree, dir).unwrap())
            .iter()
            .map(|(n, _)| String::from_utf8(n.clone()).unwrap())
            .collect()
    }

    #[test]
    fn every_entry_type_and_attribute() {
        let tree = build(json!([
            {"name": "./", "type": "dir", "mode": 0o40711, "uid": 5, "modtime": "2020-01-01T00:00:00Z"},
            {"name": "bin/", "type": "dir", "mode": 0o1777, "uid": 1, "gid": 2, "modtime": "2021-01-02T03:04:05Z",
             "xattrs": {"user.k": "dmFsdWU=", "security.capability": ""}},
            {"name": "bin/su", "type": "reg", "size": 3, "mode": 0o104755, "offset": 100,
             "digest": d(1), "modtime": "2021-01-02T03:04:05.25Z"},
            {"name": "bin/sh", "type": "symlink", "linkName": "busybox", "mode": 0o777},
            {"name": "dev/null", "type": "char", "devMajor": 1, "devMinor": 3, "mode": 0o666},
            {"name": "dev/sda", "type": "block", "devMajor": 8, "devMinor": 0, "mode": 0o660, "gid": 6},
            {"name": "run/fifo", "type": "fifo", "mode": 0o2644},
            {"name": "empty", "type": "reg", "mode": 0o644}
        ]))
        .unwrap();
        assert_eq!(tree.len(), 10);
        let root = tree.node(ROOT_INO).unwrap();
        assert_eq!((root.kind, root.mode, root.uid), (NodeKind::Dir, 0o711, 5));
        assert_eq!(root.mtime, (1_577_836_800, 0));
        assert_eq!(names(&tree, "/"), ["bin", "dev", "empty", "run"]);
        assert_eq!(root.nlink, 5);

        let bin = node(&tree, "bin");
        assert_eq!((bin.mode, bin.uid, bin.gid), (0o1777, 1, 2));
        assert_eq!(bin.mtime, (1_609_556_645, 0));
        assert_eq!(bin.xattrs.get(&b"user.k"[..]).unwrap(), b"value");
        assert_eq!(bin.xattrs.get(&b"security.capability"[..]).unwrap(), b"");
        assert_eq!(names(&tree, "bin"), ["sh", "su"]);

        let su = node(&tree, "bin/su");
        assert_eq!(
            (su.kind, su.mode, su.size, su.nlink),
            (NodeKind::File, 0o4755, 3, 1)
        );
        assert_eq!(su.mtime, (1_609_556_645, 250_000_000));
        assert_eq!(su.file_digest, Some(Digest::from_bytes([1; 32])));
        assert_eq!(
            su.chunks,
            [ChunkRef {
                file_offset: 0,
                size: 3,
                compressed: 100..1_000_000,
                digest: Digest::from_bytes([1; 32])
            }]
        );
        let sh = node(&tree, "bin/sh");
        assert_eq!(sh.kind, NodeKind::Symlink);
        assert_eq!(sh.link_target.as_deref(), Some(&b"busybox"[..]));
        assert_eq!(sh.size, 7);
        let null = node(&tree, "dev/null");
        assert_eq!(
            (null.kind, null.rdev_major, null.rdev_minor, null.mode),
            (NodeKind::CharDevice, 1, 3, 0o666)
        );
        let sda = node(&tree, "dev/sda");
        assert_eq!(
            (sda.kind, sda.rdev_major, sda.gid),
            (NodeKind::BlockDevice, 8, 6)
        );
        let fifo = node(&tree, "run/fifo");
        assert_eq!((fifo.kind, fifo.mode), (NodeKind::Fifo, 0o2644));
        let empty = node(&tree, "empty");
        assert!(empty.chunks.is_empty());
        assert_eq!(tree.total_file_bytes(), 3);

        let su_ino = resolve(&tree, "bin/su").unwrap();
        assert_eq!(tree.path_of(su_ino), b"/bin/su");
        assert_eq!(tree.path_of(ROOT_INO), b"/");
        assert_eq!(tree.parent(su_ino), resolve(&tree, "bin"));
        assert_eq!(tree.parent(ROOT_INO), None);
        assert!(tree.node(0).is_none());
        assert!(tree.node(999).is_none());
        assert!(tree.children(su_ino).is_empty());
        assert!(tree.lookup(ROOT_INO, b"missing").is_none());
    }

    #[test]
    fn inode_numbers_are_dense_and_stable() {
        let entries = json!([
            {"name": "b/x", "type": "dir"}, {"name": "a", "type": "dir"}, {"name": "c", "type": "fifo"}
        ]);
        let one = build(entries.clone()).unwrap();
        let two = build(entries).unwrap();
        for ino in 1..=one.len() as Ino {
            assert_eq!(one.node(ino).unwrap().ino, ino);
            assert_eq!(one.path_of(ino), two.path_of(ino));
        }
    }

    #[test]
    fn implicit_parents() {
        let tree = build(json!([{"name": "a/b/c", "type": "reg", "uid": 7}])).unwrap();
        for dir in ["a", "a/b"] {
            let n = node(&tree, dir);
            assert_eq!(
                (n.kind, n.mode, n.uid, n.gid, n.mtime),
                (NodeKind::Dir, 0o755, 0, 0, (0, 0))
            );
        }
        assert_eq!(node(&tree, "a").nlink, 3);
        assert_eq!(node(&tree, "a/b").nlink, 2);
        assert_eq!(node(&tree, "a/b/c").uid, 7);
        // The root exists with defaults even without an entry.
        assert_eq!(tree.node(ROOT_INO).unwrap().mode, 0o755);
    }

    #[test]
    fn duplicates_last_wins() {
        let tree = build(json!([
            {"name": "d", "type": "dir", "mode": 0o700},
            {"name": "d/x", "type": "fifo"},
            {"name": "f", "type": "reg", "size": 2, "offset": 10, "digest": d(1)},
            {"name": "d/", "type": "dir", "mode": 0o750},
            {"name": "./f", "type": "symlink", "linkName": "d"}
        ]))
        .unwrap();
        assert_eq!(node(&tree, "d").mode, 0o750);
        assert_eq!(names(&tree, "d"), ["x"]);
        assert_eq!(node(&tree, "f").kind, NodeKind::Symlink);
        assert_eq!(tree.total_file_bytes(), 0);
    }

    #[test]
    fn paths_are_normalized_and_escapes_rejected() {
        let tree = build(json!([
            {"name": "./a//b/", "type": "dir"},
            {"name": "/c", "type": "fifo"},
            {"name": "a/./b/d", "type": "fifo"}
        ]))
        .unwrap();
        assert_eq!(names(&tree, "/"), ["a", "c"]);
        assert_eq!(names(&tree, "a/b"), ["d"]);
        for bad in ["../etc/passwd", "a/../../b", "a/../b", "/.."] {
            let err = build(json!([{"name": bad, "type": "reg"}])).unwrap_err();
            assert!(
                matches!(&err, FormatError::PathEscape { path } if path == bad),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(bad));
        }
        let err = build(json!([{"name": "a\u{0}b", "type": "reg"}])).unwrap_err();
        assert!(matches!(err, FormatError::InvalidPath { .. }));
        let long = "x".repeat(256);
        assert!(matches!(
            build(json!([{"name": long, "type": "reg"}])),
            Err(FormatError::InvalidPath { .. })
        ));
        // Symlink targets are data, not paths: `..` is fine there.
        assert!(build(json!([{"name": "l", "type": "symlink", "linkName": "../../x"}])).is_ok());
        // Hardlink targets are paths.
        assert!(matches!(
            build(json!([{"name": "l", "type": "hardlink", "linkName": "../x"}])),
            Err(FormatError::PathEscape { .. })
        ));
    }

    #[test]
    fn hardlinks_share_one_inode() {
        let tree = build(json!([
            {"name": "f", "type": "reg", "size": 4, "offset": 10, "digest": d(1), "mode": 0o600},
            {"name": "sub/g", "type": "hardlink", "linkName": "./f"},
            {"name": "h", "type": "hardlink", "linkName": "sub/g"}
        ]))
        .unwrap();
        let f = resolve(&tree, "f").unwrap();
        assert_eq!(resolve(&tree, "sub/g"), Some(f));
        assert_eq!(resolve(&tree, "h"), Some(f));
        let node = tree.node(f).unwrap();
        assert_eq!((node.nlink, node.mode, node.size), (3, 0o600, 4));
        assert_eq!(tree.total_file_bytes(), 4);
        assert_eq!(tree.len(), 3);

        let err =
            build(json!([{"name": "h", "type": "hardlink", "linkName": "nope"}])).unwrap_err();
        assert!(
            matches!(&err, FormatError::HardlinkTargetMissing { path, target } if path == "h" && target == "nope")
        );
        assert!(build(json!([
            {"name": "a", "type": "hardlink", "linkName": "b"},
            {"name": "b", "type": "hardlink", "linkName": "a"}
        ]))
        .is_err());
        assert!(build(json!([
            {"name": "d", "type": "dir"},
            {"name": "h", "type": "hardlink", "linkName": "d"}
        ]))
        .is_err());
    }

    #[test]
    fn parents_must_be_directories() {
        let err = build(json!([
            {"name": "f", "type": "fifo"},
            {"name": "f/g", "type": "fifo"}
        ]))
        .unwrap_err();
        assert!(
            matches!(&err, FormatError::NotADirectory { path, parent } if path == "f/g" && parent == "f")
        );
        assert!(build(json!([{"name": "./", "type": "reg"}])).is_err());
    }

    #[test]
    fn multi_chunk_estargz_file() {
        let tree = build(json!([
            {"name": "big", "type": "reg", "size": 10, "offset": 100, "chunkSize": 4,
             "chunkDigest": d(1), "digest": d(9)},
            {"name": "big", "type": "chunk", "offset": 200, "chunkOffset": 4, "chunkSize": 4, "chunkDigest": d(2)},
            {"name": "big", "type": "chunk", "offset": 300, "chunkOffset": 8, "chunkDigest": d(3)},
            {"name": "next", "type": "reg", "size": 1, "offset": 400, "digest": d(4)}
        ]))
        .unwrap();
        let big = node(&tree, "big");
        assert_eq!(big.file_digest, Some(Digest::from_bytes([9; 32])));
        assert_eq!(
            big.chunks,
            [
                ChunkRef {
                    file_offset: 0,
                    size: 4,
                    compressed: 100..200,
                    digest: Digest::from_bytes([1; 32])
                },
                ChunkRef {
                    file_offset: 4,
                    size: 4,
                    compressed: 200..300,
                    digest: Digest::from_bytes([2; 32])
                },
                ChunkRef {
                    file_offset: 8,
                    size: 2,
                    compressed: 300..400,
                    digest: Digest::from_bytes([3; 32])
                },
            ]
        );
        assert_eq!(big.chunks_covering(0, 1).len(), 1);
        assert_eq!(big.chunks_covering(3, 2).len(), 2);
        assert_eq!(big.chunks_covering(5, 100)[0].file_offset, 4);
        assert_eq!(big.chunks_covering(5, 100).len(), 2);
        assert!(big.chunks_covering(10, 5).is_empty());
        assert!(big.chunks_covering(2, 0).is_empty());
        assert_eq!(node(&tree, "next").chunks[0].compressed, 400..1_000_000);
    }

    #[test]
    fn zstd_chunked_end_offsets() {
        let toc = toc(json!([
            {"name": "big", "type": "reg", "size": 6, "offset": 100, "endOffset": 160, "chunkSize": 3,
             "chunkDigest": d(1), "digest": d(9)},
            {"name": "big", "type": "chunk", "offset": 130, "chunkOffset": 3, "chunkSize": 3,
             "chunkDigest": d(2), "chunkType": "zeros"},
            {"name": "one", "type": "reg", "size": 1, "offset": 200, "endOffset": 220, "digest": d(3)}
        ]));
        let tree = FileTree::build(&toc, Compression::Zstd, 500, &Limits::default()).unwrap();
        assert_eq!(tree.compression(), Compression::Zstd);
        let big = node(&tree, "big");
        assert_eq!(big.chunks[0].compressed, 100..130);
        assert_eq!(big.chunks[1].compressed, 130..160);
        assert_eq!(node(&tree, "one").chunks[0].compressed, 200..220);
    }

    #[test]
    fn bad_chunks_are_rejected() {
        let cases = [
            // No digest at all.
            json!([{"name": "f", "type": "reg", "size": 3, "offset": 10}]),
            // Multi-chunk without chunk digests: the file digest cannot verify a chunk.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "digest": d(1)},
                   {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 2, "chunkDigest": d(2)}]),
            // Gap.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 1, "chunkDigest": d(1)},
                   {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 2, "chunkDigest": d(2)}]),
            // Does not cover the file.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "chunkDigest": d(1)}]),
            // Runs past the end.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "chunkDigest": d(1)},
                   {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 2, "chunkSize": 5, "chunkDigest": d(2)}]),
            // No blob offset.
            json!([{"name": "f", "type": "reg", "size": 4, "digest": d(1)}]),
            // Past the TOC.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 1_000_000, "digest": d(1)}]),
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "endOffset": 2_000_000, "digest": d(1)}]),
            // Bad digest.
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "digest": "sha256:xyz"}]),
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "digest": d(1), "chunkDigest": "md5:00"}]),
            // Orphan chunks.
            json!([{"name": "f", "type": "chunk", "offset": 10, "chunkDigest": d(1)}]),
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "chunkDigest": d(1)},
                   {"name": "g", "type": "chunk", "offset": 20, "chunkOffset": 2, "chunkDigest": d(2)}]),
            json!([{"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "chunkDigest": d(1)},
                   {"name": "d", "type": "dir"},
                   {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 2, "chunkDigest": d(2)}]),
            // Chunks of an empty file.
            json!([{"name": "f", "type": "reg"}, {"name": "f", "type": "chunk", "offset": 20, "chunkDigest": d(2)}]),
            // Bad metadata.
            json!([{"name": "f", "type": "fifo", "uid": 4_294_967_296u64}]),
            json!([{"name": "f", "type": "fifo", "modtime": "yesterday"}]),
            json!([{"name": "f", "type": "fifo", "xattrs": {"user.x": "!!!"}}]),
            json!([{"name": "f", "type": "fifo", "xattrs": {"": "YQ=="}}]),
        ];
        for case in cases {
            assert!(build(case.clone()).is_err(), "{case}");
        }
        let inner = build(json!([
            {"name": "f", "type": "reg", "size": 4, "offset": 10, "innerOffset": 5, "digest": d(1)}
        ]));
        assert!(matches!(inner, Err(FormatError::Unsupported { .. })));
        let err =
            build(json!([{"name": "f", "type": "reg", "size": 3, "offset": 10}])).unwrap_err();
        assert!(matches!(&err, FormatError::Unverifiable { path } if path == "f"));
    }

    #[test]
    fn chunk_with_empty_name_continues_the_file() {
        let tree = build(json!([
            {"name": "f", "type": "reg", "size": 4, "offset": 10, "chunkSize": 2, "chunkDigest": d(1)},
            {"type": "chunk", "offset": 20, "chunkOffset": 2, "chunkDigest": d(2)}
        ]))
        .unwrap();
        assert_eq!(node(&tree, "f").chunks.len(), 2);
    }

    fn landmark(name: &str, offset: u64) -> Value {
        json!({"name": name, "type": "reg", "size": 1, "offset": offset, "digest": d(0xf)})
    }

    fn file(name: &str, offset: u64) -> Value {
        json!({"name": name, "type": "reg", "size": 1, "offset": offset, "digest": d(1)})
    }

    #[test]
    fn prefetch_landmarks() {
        let tree = build(json!([
            file("b", 10), file("a", 20), {"name": "e", "type": "reg"}, {"name": "h", "type": "hardlink", "linkName": "a"},
            landmark(".prefetch.landmark", 30), file("c", 40)
        ]))
        .unwrap();
        let expected: Vec<Ino> = ["b", "a"]
            .iter()
            .map(|p| resolve(&tree, p).unwrap())
            .collect();
        assert_eq!(tree.prefetch_inodes(), expected);
        assert_eq!(names(&tree, "/"), ["a", "b", "c", "e", "h"]);

        let none = build(json!([
            file("a", 10),
            landmark(".no.prefetch.landmark", 20),
            file("c", 40)
        ]))
        .unwrap();
        assert!(none.prefetch_inodes().is_empty());
        assert_eq!(names(&none, "/"), ["a", "c"]);
        let absent = build(json!([file("a", 10)])).unwrap();
        assert!(absent.prefetch_inodes().is_empty());
        // Only root landmarks are markers; stargz.index.json at the root is hidden too.
        let nested = build(json!([
            landmark("d/.prefetch.landmark", 10),
            landmark("stargz.index.json", 20)
        ]))
        .unwrap();
        assert_eq!(names(&nested, "/"), ["d"]);
        assert_eq!(names(&nested, "d"), [".prefetch.landmark"]);
        assert!(nested.prefetch_inodes().is_empty());
    }

    #[test]
    fn whiteouts_for_overlayfs() {
        let tree = build(json!([
            {"name": "etc/.wh.passwd", "type": "reg", "modtime": "2021-01-02T03:04:05Z", "uid": 3, "mode": 0o644},
            {"name": "etc/.wh.kept", "type": "reg"},
            {"name": "etc/kept", "type": "fifo"},
            {"name": "var/.wh..wh..opq", "type": "reg"},
            {"name": "var/x", "type": "fifo"},
            {"name": "opt/.wh..wh..opq", "type": "reg"},
            {"name": ".wh..wh.plnk", "type": "dir"},
            {"name": ".wh.gone", "type": "reg"},
            {"name": ".wh.sub", "type": "reg"},
            {"name": "sub/y", "type": "fifo"}
        ]))
        .unwrap();
        assert_eq!(names(&tree, "/"), ["etc", "gone", "opt", "sub", "var"]);
        assert_eq!(names(&tree, "etc"), ["kept", "passwd"]);
        let passwd = node(&tree, "etc/passwd");
        assert_eq!(
            (
                passwd.kind,
                passwd.mode,
                passwd.uid,
                passwd.gid,
                passwd.rdev_major,
                passwd.rdev_minor,
                passwd.size
            ),
            (NodeKind::CharDevice, 0, 0, 0, 0, 0, 0)
        );
        assert_eq!(passwd.mtime, (1_609_556_645, 0));
        assert_eq!(node(&tree, "etc/kept").kind, NodeKind::Fifo);
        assert_eq!(node(&tree, "gone").kind, NodeKind::CharDevice);
        assert_eq!(node(&tree, "sub").kind, NodeKind::Dir);
        for dir in ["var", "opt"] {
            assert_eq!(
                node(&tree, dir)
                    .xattrs
                    .get(OPAQUE_XATTR.as_bytes())
                    .unwrap(),
                b"y"
            );
        }
        assert_eq!(names(&tree, "var"), ["x"]);
        assert!(node(&tree, "etc").xattrs.is_empty());

        assert!(build(json!([{"name": ".wh.d/x", "type": "reg"}])).is_err());
        assert!(build(json!([{"name": "a/.wh.", "type": "reg"}])).is_err());
        assert!(matches!(
            build(
                json!([{"name": "f", "type": "fifo"}, {"name": "f/.wh..wh..opq", "type": "reg"}])
            ),
            Err(FormatError::NotADirectory { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let entries =
            toc(json!([{"name": "a/b", "type": "reg", "size": 100, "offset": 10, "digest": d(1)}]));
        let build_with =
            |limits: Limits| FileTree::build(&entries, Compression::Gzip, 1000, &limits);
        assert!(build_with(Limits::default()).is_ok());
        assert!(matches!(
            build_with(Limits {
                max_entries: 0,
                ..Limits::default()
            }),
            Err(FormatError::TooManyEntries { .. })
        ));
        assert!(build_with(Limits {
            max_file_size: 99,
            ..Limits::default()
        })
        .is_err());
        assert!(build_with(Limits {
            max_chunk_size: 99,
            ..Limits::default()
        })
        .is_err());
        assert!(build_with(Limits {
            max_name_len: 2,
            ..Limits::default()
        })
        .is_err());
        assert!(build_with(Limits {
            max_name_len: 3,
            ..Limits::default()
        })
        .is_ok());
    }

    #[test]
    fn tree_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FileTree>();
    }
}
