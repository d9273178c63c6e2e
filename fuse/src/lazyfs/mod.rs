//! `LazyLayer`: one lazily served layer — the file tree its TOC describes and the fetcher of its chunks —
//! with plain filesystem methods returning `Result<_, FsError>`, so it is tested without a kernel.
//! It serves what is cached and fetches what is not; which other chunks a read brings along is the fetch
//! policy's answer (`fetch::policy`). `adapter.rs` is the only place that speaks fuser.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use skiff_types::{Digest, LayerDescriptor};
use tracing::{debug, info, warn};

mod open;

pub use open::announces_lazy_format;

use crate::cache::{CacheError, PinGuard};
use crate::fetch::policy::{self, DirectoryFetch, Readahead};
use crate::fetch::{
    BlobSource, ChunkFetcher, FetchConfig, FetchError, LayerStats, LayerTasks, Priority,
    SharedStore,
};
use crate::format::toc::Limits;
use crate::format::tree::{ChunkRef, FileTree, Ino, Node, NodeKind, ROOT_INO};
use crate::format::FormatError;

/// How lazy layers are opened and fetched; a section of skiffd's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayerConfig {
    /// Refuse an eStargz layer whose manifest does not pin its TOC digest (otherwise: warn and trust
    /// the TOC, whose chunk digests still protect every byte served).
    pub require_toc_digest: bool,
    /// Memory all TOCs being parsed at once may take (estimated per TOC by [`crate::fetch::TocBudget::cost`]:
    /// about 1.3 KB per entry while it is parsed); a TOC that alone needs more is refused, and its layer
    /// unpacked.
    pub toc_memory_bytes: u64,
    pub fetch: FetchConfig,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            require_toc_digest: true,
            toc_memory_bytes: crate::fetch::DEFAULT_TOC_MEMORY_BYTES,
            fetch: FetchConfig::default(),
        }
    }
}

/// Which lazy format a layer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    Estargz,
    ZstdChunked,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not a lazy layer; the caller unpacks it the ordinary way.
    #[error("layer {digest} is not lazily readable: {reason}")]
    NotLazy { digest: Digest, reason: String },
    #[error("reading the TOC of layer {digest}")]
    Fetch {
        digest: Digest,
        #[source]
        source: FetchError,
    },
    #[error("layer {digest} has an invalid TOC")]
    Format {
        digest: Digest,
        #[source]
        source: FormatError,
    },
    #[error("the TOC of layer {digest} ({start}..{end}) does not fit the blob ({size} bytes) or the size limit")]
    TocOutOfBounds {
        digest: Digest,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("parsing the TOC of layer {digest} would take about {cost} bytes of memory, more than [lazy] toc_memory_bytes ({budget})")]
    TocBudget {
        digest: Digest,
        cost: u64,
        budget: u64,
    },
    #[error("the TOC of layer {digest} is {actual}, but the manifest pins {expected}")]
    TocDigestMismatch {
        digest: Digest,
        expected: String,
        actual: String,
    },
    #[error("layer {digest} has no {annotation} annotation; refusing an unverifiable TOC (set require_toc_digest = false to allow)")]
    TocDigestMissing {
        digest: Digest,
        annotation: &'static str,
    },
}

/// Filesystem errors, mapped to errno in exactly one place (`FsError::errno`).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("not a symlink")]
    NotASymlink,
    #[error("not a regular file")]
    NotAFile,
    #[error("no such attribute")]
    NoAttribute,
    #[error("reading file bytes")]
    Fetch(#[source] FetchError),
    #[error("the registry did not deliver the bytes within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("chunk cache")]
    Cache(#[source] CacheError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        use nix::errno::Errno;
        let errno = match self {
            FsError::NotFound => Errno::ENOENT,
            FsError::NotADirectory => Errno::ENOTDIR,
            FsError::IsADirectory => Errno::EISDIR,
            FsError::NotASymlink | FsError::NotAFile => Errno::EINVAL,
            FsError::NoAttribute => Errno::ENODATA,
            FsError::Fetch(_) | FsError::Cache(_) | FsError::TimedOut(_) => Errno::EIO,
        };
        errno as i32
    }
}

/// Attributes of one inode, in project types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: NodeKind,
    pub size: u64,
    pub blocks: u64,
    pub mtime: SystemTime,
    /// Permission bits including setuid/setgid/sticky, no file type.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number in the kernel's 32-bit encoding.
    pub rdev: u32,
}

/// One directory entry; `offset` is what a later readdir passes to continue after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub offset: u64,
    pub kind: NodeKind,
    pub name: Vec<u8>,
}

pub struct LazyLayer {
    /// Where readahead runs, also when it is triggered from a FUSE thread.
    runtime: tokio::runtime::Handle,
    descriptor: LayerDescriptor,
    format: LayerFormat,
    tree: FileTree,
    fetcher: Arc<ChunkFetcher>,
    /// Sequential-read detection (the readahead policy's state).
    readahead: Mutex<Readahead>,
    /// Every distinct chunk of the layer in blob order (for neighbour fetches).
    blob_order: Vec<ChunkRef>,
    /// Each directory's progress towards its directory fetch.
    directory_fetch: Mutex<DirectoryFetch>,
}

/// The kernel's 32-bit device encoding (`new_encode_dev`).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

impl LazyLayer {
    /// Reads the footer and TOC (two or three Range requests; again after a transient fault), verifies
    /// the TOC against the manifest's annotation and builds the tree. No file bytes are fetched.
    pub async fn open(
        source: Arc<dyn BlobSource>,
        descriptor: &LayerDescriptor,
        store: impl Into<SharedStore>,
        config: &LayerConfig,
    ) -> Result<Arc<LazyLayer>, OpenError> {
        let limits = Limits::default();
        let store: SharedStore = store.into();
        let found = open::find_toc_retrying(
            source.as_ref(),
            descriptor,
            &limits,
            config,
            store.toc_budget(),
            store.toc_cache(),
        )
        .await?;
        let digest = descriptor.digest;
        let tree = FileTree::build(&found.toc, found.compression, found.toc_end, &limits)
            .map_err(|source| OpenError::Format { digest, source })?;
        info!(layer = %digest, format = ?found.format, inodes = tree.len(), bytes = tree.total_file_bytes(), "layer opened lazily");
        let stats = Arc::new(LayerStats::default());
        let fetcher = ChunkFetcher::new(
            source,
            store,
            found.compression,
            config.fetch.clone(),
            stats,
        );
        let blob_order = policy::blob_order(&tree);
        Ok(Arc::new(LazyLayer {
            runtime: tokio::runtime::Handle::current(),
            descriptor: descriptor.clone(),
            format: found.format,
            tree,
            fetcher,
            readahead: Mutex::new(Readahead::default()),
            blob_order,
            directory_fetch: Mutex::new(DirectoryFetch::default()),
        }))
    }

    pub fn descriptor(&self) -> &LayerDescriptor {
        &self.descriptor
    }

    pub fn format(&self) -> LayerFormat {
        self.format
    }

    pub fn tree(&self) -> &FileTree {
        &self.tree
    }

    pub fn stats(&self) -> &Arc<LayerStats> {
        self.fetcher.stats()
    }

    /// Where the tasks serving this layer are tracked.
    pub fn tasks(&self) -> &LayerTasks {
        self.fetcher.tasks()
    }

    /// The layer's distinct chunks (by digest, as the chunk store keys them) and how many of those are
    /// in the chunk store now. Walks the tree; the store answers from its index, without IO.
    pub fn chunk_counts(&self) -> ChunkCounts {
        let digests: HashSet<Digest> = self
            .tree
            .nodes()
            .flat_map(|node| node.chunks.iter().map(|c| c.digest))
            .collect();
        let store = self.fetcher.store();
        ChunkCounts {
            total: digests.len() as u64,
            cached: digests.iter().filter(|d| store.contains(d)).count() as u64,
        }
    }

    fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.tree.node(ino).ok_or(FsError::NotFound)
    }

    fn attr_of(node: &Node) -> Attr {
        let mtime = if node.mtime.0 >= 0 {
            UNIX_EPOCH + Duration::new(node.mtime.0 as u64, node.mtime.1)
        } else {
            UNIX_EPOCH - Duration::new(node.mtime.0.unsigned_abs(), 0)
        };
        Attr {
            ino: node.ino,
            kind: node.kind,
            size: node.size,
            blocks: node.size.div_ceil(512),
            mtime,
            perm: (node.mode & 0o7777) as u16,
            nlink: node.nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: encode_dev(node.rdev_major, node.rdev_minor),
        }
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, FsError> {
        self.node(ino).map(Self::attr_of)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, FsError> {
        let dir = self.node(parent)?;
        if dir.kind != NodeKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let ino = self.tree.lookup(parent, name).ok_or(FsError::NotFound)?;
        self.getattr(ino)
    }

    /// Entries after `offset` (0 starts at the beginning): `.`, `..`, then the children by name.
    pub fn readdir(&self, ino: Ino, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let dir = self.node(ino)?;
        if dir.kind != NodeKind::Dir {
            return Err(FsError::NotADirectory);
        }
        let parent = self.tree.parent(ino).unwrap_or(ROOT_INO);
        let dots = [(b".".to_vec(), ino), (b"..".to_vec(), parent)];
        let children = self.tree.children(ino).iter().cloned();
        Ok(dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset as usize)
            .filter_map(|(i, (name, child))| {
                let kind = self.tree.node(child)?.kind;
                Some(DirEntry {
                    ino: child,
                    offset: i as u64 + 1,
                    kind,
                    name,
                })
            })
            .collect())
    }

    pub fn readlink(&self, ino: Ino) -> Result<&[u8], FsError> {
        self.node(ino)?
            .link_target
            .as_deref()
            .ok_or(FsError::NotASymlink)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<&[u8], FsError> {
        self.node(ino)?
            .xattrs
            .get(name)
            .map(Vec::as_slice)
            .ok_or(FsError::NoAttribute)
    }

    /// Attribute names, each followed by a NUL byte (the listxattr(2) format).
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>, FsError> {
        let mut list = Vec::new();
        for name in self.node(ino)?.xattrs.keys() {
            list.extend_from_slice(name);
            list.push(0);
        }
        Ok(list)
    }

    fn file(&self, ino: Ino) -> Result<&Node, FsError> {
        let node = self.node(ino)?;
        match node.kind {
            NodeKind::File => Ok(node),
            NodeKind::Dir => Err(FsError::IsADirectory),
            _ => Err(FsError::NotAFile),
        }
    }

    /// The chunks covering bytes `[offset, offset+len)` of a file, and that range clamped to the file.
    fn chunks_for(node: &Node, offset: u64, len: u64) -> (&[ChunkRef], u64, u64) {
        let start = offset.min(node.size);
        let end = offset.saturating_add(len).min(node.size);
        (node.chunks_covering(start, end - start), start, end)
    }

    fn assemble(chunks: &[ChunkRef], data: &[Bytes], start: u64, end: u64) -> Bytes {
        if let ([chunk], [bytes]) = (chunks, data) {
            let from = (start - chunk.file_offset) as usize;
            let to = (end - chunk.file_offset) as usize;
            return bytes.slice(from..to);
        }
        let mut out = BytesMut::with_capacity((end - start) as usize);
        for (chunk, bytes) in chunks.iter().zip(data) {
            let from = start.max(chunk.file_offset) - chunk.file_offset;
            let to = end.min(chunk.file_offset + chunk.size) - chunk.file_offset;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        out.freeze()
    }

    /// The bytes, if every chunk is already cached: the FUSE thread answers these inline. `None` means a
    /// fetch is needed (use `read`).
    pub fn read_cached(&self, ino: Ino, offset: u64, len: u32) -> Result<Option<Bytes>, FsError> {
        let node = self.file(ino)?;
        let (chunks, start, end) = Self::chunks_for(node, offset, len as u64);
        if chunks.is_empty() {
            return Ok(Some(Bytes::new()));
        }
        let store = self.fetcher.store();
        let mut data = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            match store.get(&chunk.digest).map_err(FsError::Cache)? {
                Some(bytes) => data.push(bytes),
                None => return Ok(None),
            }
        }
        LayerStats::add(&self.stats().chunk_hits, chunks.len() as u64);
        // Cache hits drive readahead too, or a sequential reader would stall at every window's end.
        if let Some(ahead) = self.readahead(node, start, end) {
            self.fetch_ahead(ahead);
        }
        let bytes = Self::assemble(chunks, &data, start, end);
        LayerStats::add(&self.stats().bytes_read, bytes.len() as u64);
        Ok(Some(bytes))
    }

    /// The bytes `[offset, offset+len)` of a file (fewer at end of file), fetching what is missing.
    pub async fn read(self: &Arc<Self>, ino: Ino, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let node = self.file(ino)?;
        let (chunks, start, end) = Self::chunks_for(node, offset, len as u64);
        if chunks.is_empty() {
            return Ok(Bytes::new());
        }
        let readahead = self.readahead(node, start, end);
        if let Some(last_missing) = self.fetcher.missing(chunks).last() {
            if let Some(neighbours) = self.neighbours(last_missing.compressed.end) {
                self.fetch_ahead(neighbours);
            }
            if let Some(siblings) = self.directory_fetch(node) {
                self.fetch_ahead(siblings);
            }
        }
        let bound = std::time::Duration::from_secs(self.fetcher.config().read_timeout_secs);
        let data = tokio::time::timeout(bound, self.fetcher.get(chunks, Priority::Demand))
            .await
            .map_err(|_| FsError::TimedOut(bound))?
            .map_err(FsError::Fetch)?;
        if let Some(ahead) = readahead {
            self.fetch_ahead(ahead);
        }
        let bytes = Self::assemble(chunks, &data, start, end);
        LayerStats::add(&self.stats().bytes_read, bytes.len() as u64);
        Ok(bytes)
    }

    /// For a read that misses up to blob offset `last`: [`policy::neighbours`].
    fn neighbours(&self, last: u64) -> Option<Vec<ChunkRef>> {
        let budget = self.fetcher.config().neighbour_bytes?;
        let wanted = policy::neighbours(&self.blob_order, last, budget, |chunks| {
            self.fetcher.missing(chunks)
        });
        (!wanted.is_empty()).then_some(wanted)
    }

    /// For a read that misses in `node`: [`DirectoryFetch::plan`].
    fn directory_fetch(&self, node: &Node) -> Option<Vec<ChunkRef>> {
        let budget = self.fetcher.config().directory_bytes?;
        let wanted = self
            .directory_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan(&self.tree, node, budget, |chunks| {
                self.fetcher.missing(chunks)
            });
        (!wanted.is_empty()).then_some(wanted)
    }

    /// Fetches readahead chunks without anyone waiting for them.
    fn fetch_ahead(&self, ahead: Vec<ChunkRef>) {
        let fetcher = Arc::clone(&self.fetcher);
        self.fetcher
            .tasks()
            .spawn_cancellable(&self.runtime, async move {
                if let Err(err) = fetcher.get(&ahead, Priority::Prefetch).await {
                    debug!(error = %err, "readahead failed");
                }
            });
    }

    /// The uncached chunks of the readahead window after a read of `[start, end)`: [`Readahead::plan`].
    fn readahead(&self, node: &Node, start: u64, end: u64) -> Option<Vec<ChunkRef>> {
        let max = self.fetcher.config().max_readahead_bytes;
        let wanted = self
            .readahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan(node, start, end, max, |chunks| self.fetcher.missing(chunks));
        (!wanted.is_empty()).then_some(wanted)
    }

    /// If the whole file is cached, its path in the chunk store (held against eviction by the guard), for
    /// FUSE passthrough. A multi-chunk file is assembled once into a whole-file entry.
    pub fn cached_file(&self, ino: Ino) -> Result<Option<(PathBuf, PinGuard)>, FsError> {
        let node = self.file(ino)?;
        let store = self.fetcher.store();
        let whole = match (node.chunks.as_slice(), node.file_digest) {
            ([], _) => return Ok(None),
            ([only], _) => only.digest,
            (_, Some(file_digest)) => file_digest,
            (_, None) => return Ok(None),
        };
        let pin = store.pin(&whole);
        if store.contains(&whole) {
            return Ok(Some((store.path(&whole), pin)));
        }
        if !self.fetcher.missing(&node.chunks).is_empty() {
            return Ok(None);
        }
        let mut assembled = Vec::with_capacity(node.size as usize);
        for chunk in &node.chunks {
            match store.get(&chunk.digest).map_err(FsError::Cache)? {
                Some(bytes) => assembled.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
        store.insert(&whole, &assembled).map_err(FsError::Cache)?;
        Ok(Some((store.path(&whole), pin)))
    }

    /// Prefetches the prioritized files, then (if configured) every remaining chunk of the layer in blob
    /// order, at low priority. Runs until done; abort the task to stop it.
    pub async fn fetch_in_background(self: Arc<Self>) {
        let config = self.fetcher.config().clone();
        if config.prefetch {
            let chunks = policy::prefetch(&self.tree);
            if !chunks.is_empty() {
                let count = chunks.len();
                match self.fetcher.get(&chunks, Priority::Prefetch).await {
                    Ok(_) => {
                        debug!(layer = %self.descriptor.digest, chunks = count, "prefetched prioritized files")
                    }
                    Err(err) => {
                        warn!(layer = %self.descriptor.digest, error = %err, "prefetch failed")
                    }
                }
            }
        }
        let Some(background) = config.background else {
            return;
        };
        let max_batch_bytes = config.max_request_bytes.min(background.max_request_bytes);
        let batches = policy::background_batches(&self.tree, max_batch_bytes, |chunks| {
            self.fetcher.missing(chunks)
        });
        let fetcher = &self.fetcher;
        futures::stream::iter(batches)
            .for_each_concurrent(background.parallel_requests.max(1), |batch| async move {
                if let Err(err) = fetcher.get(&batch, Priority::Background).await {
                    debug!(error = %err, "background fetch failed; readers will fetch on demand");
                }
            })
            .await;
        let stats = self.stats().snapshot();
        info!(layer = %self.descriptor.digest, bytes = stats.bytes_fetched, requests = stats.requests,
              "layer fully cached");
    }

    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.tree.total_file_bytes().div_ceil(4096),
            files: self.tree.len() as u64,
            block_size: 4096,
            name_max: 255,
        }
    }
}

/// How much of a layer's chunks the chunk store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    /// Distinct chunks of the layer's TOC.
    pub total: u64,
    /// Of those, the ones in the chunk store.
    pub cached: u64,
}

/// What statfs reports for a read-only layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max: u32,
}
