//! `LazyLayer` and `ChunkFetcher` without a kernel: real eStargz and zstd:chunked blobs built in code
//! (`format_common`), served by an in-memory source that counts every request and byte and can be told
//! to corrupt, fail or delay ranges, and a real `ChunkStore` in a temporary directory.

mod format_common;

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use format_common::*;
use futures::future::BoxFuture;
use futures::FutureExt;
use nix::errno::Errno;
use skiff_fuse::cache::{CacheConfig, ChunkStore, TocCache};
use skiff_fuse::fetch::{
    BackgroundConfig, BlobSource, ChunkFetcher, FetchConfig, FetchError, LayerStats, MemoryBlob,
    Priority, SharedStore, SourceError, TocBudget,
};
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::tree::{ChunkRef, Ino, NodeKind, OPAQUE_XATTR, ROOT_INO};
use skiff_fuse::format::{estargz, zstd_chunked, FormatError};
use skiff_fuse::lazyfs::{FsError, LayerConfig, LayerFormat, LazyLayer, OpenError};
use skiff_types::Digest;
use skiff_types::LayerDescriptor;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------------
// The source: an honest in-memory blob that counts and misbehaves on request.
// ---------------------------------------------------------------------------------------------------

/// What the source is told to do wrong.
#[derive(Default)]
struct Faults {
    /// Blob offsets whose byte is flipped in every answer that covers them.
    corrupt: Vec<u64>,
    /// Blob offsets whose byte is flipped in the next `n` answers that cover them.
    corrupt_next: Vec<(u64, u32)>,
    /// Ranges whose next `n` overlapping requests fail.
    fail: Vec<(Range<u64>, u32)>,
    /// Every request waits this long before answering.
    delay: Duration,
    /// While set, every request waits for a permit of this semaphore before answering (opening the
    /// gate adds permits): a test decides when fetched bytes land, without timing.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

/// A `MemoryBlob` that records every request (its range, and the bytes it answered) and can corrupt,
/// fail or delay answers. Every `BlobSource` method is implemented for real.
struct CountingBlob {
    inner: MemoryBlob,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Range<u64>>>,
    bytes_served: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl CountingBlob {
    fn new(name: &str, bytes: impl Into<Bytes>) -> Arc<Self> {
        Arc::new(CountingBlob {
            inner: MemoryBlob::new(name, bytes),
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            bytes_served: AtomicU64::new(0),
        })
    }

    /// Every request so far, in arrival order (failed ones included).
    fn requests(&self) -> Vec<Range<u64>> {
        lock(&self.log).clone()
    }

    fn request_count(&self) -> usize {
        lock(&self.log).len()
    }

    fn requests_overlapping(&self, range: &Range<u64>) -> usize {
        lock(&self.log)
            .iter()
            .filter(|r| overlaps(r, range))
            .count()
    }

    /// Bytes of all successful answers.
    fn bytes_served(&self) -> u64 {
        self.bytes_served.load(Ordering::SeqCst)
    }

    fn corrupt_byte(&self, at: u64) {
        lock(&self.faults).corrupt.push(at);
    }

    fn corrupt_next(&self, at: u64, times: u32) {
        lock(&self.faults).corrupt_next.push((at, times));
    }

    fn fail_next(&self, range: Range<u64>, times: u32) {
        lock(&self.faults).fail.push((range, times));
    }

    fn set_delay(&self, delay: Duration) {
        lock(&self.faults).delay = delay;
    }

    /// Requests from now on wait until `open_gate`.
    fn close_gate(&self) {
        lock(&self.faults).gate = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets the oldest waiting request through (the semaphore is fair).
    fn release_one(&self) {
        if let Some(gate) = &lock(&self.faults).gate {
            gate.add_permits(1);
        }
    }

    fn open_gate(&self) {
        if let Some(gate) = lock(&self.faults).gate.take() {
            gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Back to a healthy source (counters are kept).
    fn heal(&self) {
        *lock(&self.faults) = Faults::default();
    }
}

impl BlobSource for CountingBlob {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, SourceError>> {
        async move {
            lock(&self.log).push(range.clone());
            let (delay, fail, gate) = {
                let mut faults = lock(&self.faults);
                let fail = faults
                    .fail
                    .iter_mut()
                    .find(|(r, n)| *n > 0 && overlaps(r, &range))
                    .map(|(_, n)| *n -= 1)
                    .is_some();
                (faults.delay, fail, faults.gate.clone())
            };
            if let Some(gate) = gate {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                return Err(SourceError::Io {
                    path: PathBuf::from(self.describe()),
                    source: Arc::new(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "injected failure",
                    )),
                });
            }
            let bytes = self.inner.read_range(range.clone()).await?;
            let flips: Vec<u64> = {
                let mut faults = lock(&self.faults);
                let mut flips: Vec<u64> = faults
                    .corrupt
                    .iter()
                    .copied()
                    .filter(|at| range.contains(at))
                    .collect();
                for (at, n) in faults.corrupt_next.iter_mut() {
                    if *n > 0 && range.contains(at) {
                        *n -= 1;
                        flips.push(*at);
                    }
                }
                flips
            };
            let bytes = if flips.is_empty() {
                bytes
            } else {
                let mut damaged = bytes.to_vec();
                for at in flips {
                    damaged[(at - range.start) as usize] ^= 0xff;
                }
                Bytes::from(damaged)
            };
            self.bytes_served
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            Ok(bytes)
        }
        .boxed()
    }

    fn describe(&self) -> String {
        format!("counting:{}", self.inner.describe())
    }
}

// ---------------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------------

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// No prefetch, no background fetching, no readahead: only what a test asks for is fetched.
fn quiet() -> LayerConfig {
    LayerConfig {
        require_toc_digest: true,
        fetch: FetchConfig {
            prefetch: false,
            background: None,
            max_readahead_bytes: 0,
            neighbour_bytes: None,
            directory_bytes: None,
            ..FetchConfig::default()
        },
        ..LayerConfig::default()
    }
}

/// `fetch` with no readahead, neighbour or directory fetches: readers get only what they read.
fn reads_only(fetch: FetchConfig) -> LayerConfig {
    with_fetch(FetchConfig {
        max_readahead_bytes: 0,
        neighbour_bytes: None,
        directory_bytes: None,
        ..fetch
    })
}

fn with_fetch(fetch: FetchConfig) -> LayerConfig {
    LayerConfig {
        require_toc_digest: true,
        fetch,
        ..LayerConfig::default()
    }
}

fn estargz_descriptor(blob: &EstargzBlob) -> LayerDescriptor {
    LayerDescriptor {
        digest: Digest::of(&blob.bytes),
        size: blob.bytes.len() as u64,
        media_type: GZIP_LAYER.into(),
        annotations: BTreeMap::from([(
            estargz::TOC_DIGEST_ANNOTATION.to_string(),
            blob.toc_digest.clone(),
        )]),
    }
}

fn zstd_descriptor(blob: &ZstdChunkedBlob) -> LayerDescriptor {
    LayerDescriptor {
        digest: Digest::of(&blob.bytes),
        size: blob.bytes.len() as u64,
        media_type: ZSTD_LAYER.into(),
        annotations: BTreeMap::from([
            (
                zstd_chunked::MANIFEST_POSITION_ANNOTATION.to_string(),
                blob.manifest_position.clone(),
            ),
            (
                zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION.to_string(),
                blob.manifest_checksum.clone(),
            ),
        ]),
    }
}

fn new_store() -> (TempDir, ChunkStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path(), CacheConfig::default()).unwrap();
    (dir, store)
}

/// One opened layer over a counting source, with its own chunk store (shared with the layer's readers,
/// so a second layer opened on it yields to them).
struct Fixture {
    source: Arc<CountingBlob>,
    layer: Arc<LazyLayer>,
    store: SharedStore,
    blob_len: u64,
    _dir: TempDir,
}

impl Fixture {
    async fn estargz(items: &[Item], chunk_size: usize, config: LayerConfig) -> Fixture {
        let (dir, store) = new_store();
        let store = SharedStore::new(store);
        let blob = build_estargz(items, chunk_size);
        let source = CountingBlob::new("estargz", blob.bytes.clone());
        let layer = LazyLayer::open(
            source.clone(),
            &estargz_descriptor(&blob),
            store.clone(),
            &config,
        )
        .await
        .unwrap();
        Fixture {
            source,
            layer,
            store,
            blob_len: blob.bytes.len() as u64,
            _dir: dir,
        }
    }

    async fn zstd_chunked(items: &[Item], chunk_size: usize, config: LayerConfig) -> Fixture {
        let (dir, store) = new_store();
        let store = SharedStore::new(store);
        let blob = build_zstd_chunked(items, chunk_size);
        let source = CountingBlob::new("zstd", blob.bytes.clone());
        let layer = LazyLayer::open(
            source.clone(),
            &zstd_descriptor(&blob),
            store.clone(),
            &config,
        )
        .await
        .unwrap();
        Fixture {
            source,
            layer,
            store,
            blob_len: blob.bytes.len() as u64,
            _dir: dir,
        }
    }

    fn ino(&self, path: &str) -> Ino {
        resolve(self.layer.tree(), path).unwrap_or_else(|| panic!("{path} missing"))
    }

    fn chunks(&self, path: &str) -> Vec<ChunkRef> {
        self.layer
            .tree()
            .node(self.ino(path))
            .unwrap()
            .chunks
            .clone()
    }

    fn cached(&self, chunk: &ChunkRef) -> bool {
        self.store.contains(&chunk.digest)
    }

    async fn read_all(&self, path: &str) -> Bytes {
        let ino = self.ino(path);
        let size = self.layer.getattr(ino).unwrap().size;
        self.layer.read(ino, 0, size as u32).await.unwrap()
    }
}

fn data_of(items: &[Item], path: &str) -> Vec<u8> {
    items
        .iter()
        .find_map(|item| match item {
            Item::File(name, _, data) if *name == path => Some(data.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{path} is not a file of the layer"))
}

/// Waits (bounded) until `done` holds, for work a test started but does not await.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn errno(err: &FsError) -> Errno {
    Errno::from_raw(err.errno())
}

/// `sample_items` plus a large file, so that "a small part of the blob" means something.
fn sample_with_large() -> Vec<Item> {
    let mut items = sample_items(true);
    items.push(Item::File(
        "opt/large",
        0o644,
        pseudo_random(256 * 1024, 11),
    ));
    items
}

// ---------------------------------------------------------------------------------------------------
// 1. Open and metadata
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn open_reads_only_footer_and_toc() {
    let fx = Fixture::estargz(&sample_with_large(), 4096, quiet()).await;
    let requests = fx.source.requests();
    assert!(requests.len() <= 3, "open made {requests:?}");
    // The footer, then the TOC region that ends where the footer starts.
    assert_eq!(
        requests.first(),
        Some(&(fx.blob_len - estargz::FOOTER_SIZE..fx.blob_len))
    );
    assert!(requests
        .iter()
        .all(|r| r.end <= fx.blob_len && r.start < r.end));
    let opened = fx.source.bytes_served();
    assert!(
        opened * 10 < fx.blob_len,
        "open read {opened} of {} bytes",
        fx.blob_len
    );
    // No file bytes were touched: nothing is cached and the layer's own counters are zero.
    assert_eq!(fx.store.stats().disk_entries, 0);
    assert_eq!(fx.layer.stats().snapshot().requests, 0);
    assert_eq!(fx.layer.format(), LayerFormat::Estargz);
    assert_eq!(fx.layer.descriptor().media_type, GZIP_LAYER);
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_match_what_was_built() {
    let fx = Fixture::estargz(&sample_items(true), 4096, quiet()).await;
    let layer = &fx.layer;
    let mtime = UNIX_EPOCH + Duration::from_secs(MTIME);

    let root = layer.getattr(ROOT_INO).unwrap();
    assert_eq!((root.ino, root.kind), (ROOT_INO, NodeKind::Dir));

    let etc = layer.lookup(ROOT_INO, b"etc").unwrap();
    assert_eq!(
        (etc.kind, etc.perm, etc.uid, etc.gid, etc.mtime),
        (NodeKind::Dir, 0o755, UID as u32, GID as u32, mtime)
    );

    let hosts = layer.lookup(etc.ino, b"hosts").unwrap();
    assert_eq!(
        (hosts.kind, hosts.perm, hosts.size, hosts.nlink, hosts.mtime),
        (NodeKind::File, 0o644, 20, 1, mtime)
    );
    assert_eq!(hosts.blocks, 1);

    let bin = layer.lookup(ROOT_INO, b"bin").unwrap();
    let big = layer.lookup(bin.ino, b"big").unwrap();
    assert_eq!(
        (big.kind, big.perm, big.size, big.nlink, big.blocks),
        (NodeKind::File, 0o4755, 10_000, 2, 20)
    );
    assert_eq!((big.uid, big.gid), (UID as u32, GID as u32));
    // The hardlink is the same inode.
    assert_eq!(layer.lookup(bin.ino, b"big2").unwrap(), big);

    let sh = layer.lookup(bin.ino, b"sh").unwrap();
    assert_eq!((sh.kind, sh.size, sh.perm), (NodeKind::Symlink, 3, 0o777));
    assert_eq!(layer.readlink(sh.ino).unwrap(), b"big");

    let dev = layer.lookup(ROOT_INO, b"dev").unwrap();
    // An implicit directory: root-owned 0755 with the epoch as mtime.
    assert_eq!(
        (dev.kind, dev.perm, dev.uid, dev.gid, dev.mtime),
        (NodeKind::Dir, 0o755, 0, 0, UNIX_EPOCH)
    );
    let null = layer.lookup(dev.ino, b"null").unwrap();
    assert_eq!(
        (null.kind, null.perm, null.rdev),
        (NodeKind::CharDevice, 0o666, (1 << 8) | 3)
    );

    let run = layer.lookup(ROOT_INO, b"run").unwrap();
    assert_eq!(layer.lookup(run.ino, b"fifo").unwrap().kind, NodeKind::Fifo);
    let empty = layer.lookup(ROOT_INO, b"empty").unwrap();
    assert_eq!(
        (empty.kind, empty.size, empty.perm, empty.blocks),
        (NodeKind::File, 0, 0o600, 0)
    );
    assert_eq!(
        layer.lookup(ROOT_INO, b"zeros").unwrap().size,
        8192,
        "zeros"
    );

    // The landmark and the TOC are not part of the tree.
    for hidden in [&b".prefetch.landmark"[..], b"stargz.index.json"] {
        assert!(matches!(
            layer.lookup(ROOT_INO, hidden),
            Err(FsError::NotFound)
        ));
    }

    let statfs = layer.statfs();
    assert_eq!(statfs.files, layer.tree().len() as u64);
    assert_eq!(statfs.blocks, (20u64 + 10_000 + 8192).div_ceil(4096));
    assert_eq!((statfs.block_size, statfs.name_max), (4096, 255));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_map_to_errno() {
    let fx = Fixture::estargz(&sample_items(false), 4096, quiet()).await;
    let layer = &fx.layer;
    let hosts = fx.ino("etc/hosts");
    let sh = fx.ino("bin/sh");

    let missing = layer.lookup(ROOT_INO, b"nope").unwrap_err();
    assert!(matches!(missing, FsError::NotFound));
    assert_eq!(errno(&missing), Errno::ENOENT);
    // Case matters, and a path is not a name.
    assert!(matches!(
        layer.lookup(ROOT_INO, b"ETC"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        layer.lookup(ROOT_INO, b"etc/hosts"),
        Err(FsError::NotFound)
    ));

    let not_dir = layer.lookup(hosts, b"x").unwrap_err();
    assert!(matches!(not_dir, FsError::NotADirectory));
    assert_eq!(errno(&not_dir), Errno::ENOTDIR);
    assert!(matches!(
        layer.readdir(hosts, 0),
        Err(FsError::NotADirectory)
    ));

    let bad_ino = layer.tree().len() as Ino + 1;
    for ino in [0, bad_ino, Ino::MAX] {
        assert!(
            matches!(layer.getattr(ino), Err(FsError::NotFound)),
            "{ino}"
        );
        assert!(matches!(layer.readdir(ino, 0), Err(FsError::NotFound)));
        assert!(matches!(
            layer.read(ino, 0, 1).await,
            Err(FsError::NotFound)
        ));
    }

    let not_link = layer.readlink(hosts).unwrap_err();
    assert!(matches!(not_link, FsError::NotASymlink));
    assert_eq!(errno(&not_link), Errno::EINVAL);

    let is_dir = layer.read(ROOT_INO, 0, 10).await.unwrap_err();
    assert!(matches!(is_dir, FsError::IsADirectory));
    assert_eq!(errno(&is_dir), Errno::EISDIR);
    assert!(matches!(
        layer.read_cached(ROOT_INO, 0, 10),
        Err(FsError::IsADirectory)
    ));
    // A symlink's bytes are not readable as a file.
    assert!(layer.read(sh, 0, 10).await.is_err());

    let no_attr = layer.getxattr(hosts, b"user.nope").unwrap_err();
    assert!(matches!(no_attr, FsError::NoAttribute));
    assert_eq!(errno(&no_attr), Errno::ENODATA);
    assert_eq!(layer.listxattr(hosts).unwrap(), b"");
    // Nothing above fetched anything.
    assert_eq!(fx.source.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn readdir_offsets_continue_where_they_left_off() {
    let fx = Fixture::estargz(&sample_items(true), 4096, quiet()).await;
    let layer = &fx.layer;
    let all = layer.readdir(ROOT_INO, 0).unwrap();
    let names: Vec<String> = all
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect();
    assert_eq!(
        names,
        [".", "..", "bin", "dev", "empty", "etc", "run", "var", "xattr", "zeros"]
    );
    assert_eq!(
        all.iter().map(|e| e.offset).collect::<Vec<_>>(),
        (1..=all.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!((all[0].ino, all[1].ino), (ROOT_INO, ROOT_INO));
    for entry in &all[2..] {
        let attr = layer.lookup(ROOT_INO, &entry.name).unwrap();
        assert_eq!((entry.ino, entry.kind), (attr.ino, attr.kind));
    }
    // Continuing from any entry's offset yields exactly the entries after it.
    for (i, entry) in all.iter().enumerate() {
        assert_eq!(layer.readdir(ROOT_INO, entry.offset).unwrap(), all[i + 1..]);
    }
    assert!(layer
        .readdir(ROOT_INO, all.len() as u64 + 5)
        .unwrap()
        .is_empty());
    assert!(layer.readdir(ROOT_INO, u64::MAX).unwrap().is_empty());

    // A subdirectory: `..` is its parent.
    let bin = fx.ino("bin");
    let listing = layer.readdir(bin, 0).unwrap();
    let names: Vec<&[u8]> = listing.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [&b"."[..], b"..", b"big", b"big2", b"sh"]);
    assert_eq!((listing[0].ino, listing[1].ino), (bin, ROOT_INO));
    assert_eq!(listing[2].ino, listing[3].ino, "hardlinks share an inode");
    assert_eq!(listing[4].kind, NodeKind::Symlink);
}

#[tokio::test(flavor = "multi_thread")]
async fn xattrs_whiteouts_and_opaque_directories() {
    let fx = Fixture::estargz(&sample_items(false), 4096, quiet()).await;
    let layer = &fx.layer;
    let xattr = fx.ino("xattr");
    assert_eq!(layer.getxattr(xattr, b"user.note").unwrap(), b"hi\0there");
    assert_eq!(
        layer.getxattr(xattr, b"security.capability").unwrap(),
        b"\x01\x02"
    );
    // NUL-separated, each name NUL-terminated, in name order.
    assert_eq!(
        layer.listxattr(xattr).unwrap(),
        b"security.capability\0user.note\0"
    );

    // `.wh.old` in etc is a 0/0 character device `old`, and the `.wh.` name itself is gone.
    let etc = fx.ino("etc");
    let old = layer.lookup(etc, b"old").unwrap();
    assert_eq!(
        (old.kind, old.rdev, old.perm, old.uid, old.gid),
        (NodeKind::CharDevice, 0, 0, 0, 0)
    );
    assert!(matches!(
        layer.lookup(etc, b".wh.old"),
        Err(FsError::NotFound)
    ));
    let etc_names: Vec<Vec<u8>> = layer
        .readdir(etc, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(etc_names, [b"hosts".to_vec(), b"old".to_vec()]);

    // `.wh..wh..opq` is the opaque xattr on var, which is otherwise empty.
    let var = fx.ino("var");
    assert_eq!(layer.getxattr(var, OPAQUE_XATTR.as_bytes()).unwrap(), b"y");
    assert_eq!(
        layer.listxattr(var).unwrap(),
        format!("{OPAQUE_XATTR}\0").as_bytes()
    );
    assert_eq!(layer.readdir(var, 0).unwrap().len(), 2);
    assert!(matches!(
        layer.getxattr(etc, OPAQUE_XATTR.as_bytes()),
        Err(FsError::NoAttribute)
    ));
}

// ---------------------------------------------------------------------------------------------------
// 2. Reads
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reads_return_exact_bytes_across_chunks_and_at_eof() {
    let items = sample_items(false);
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let layer = &fx.layer;
    let big = fx.ino("bin/big");
    let data = data_of(&items, "bin/big");
    assert_eq!(fx.chunks("bin/big").len(), 3);

    // Nothing is cached yet.
    assert_eq!(layer.read_cached(big, 4000, 200).unwrap(), None);

    let cases: [(u64, u32); 8] = [
        (4000, 200),      // across the first chunk boundary
        (0, 10_000),      // the whole file
        (4095, 4098),     // across both boundaries
        (8192, 1),        // the first byte of the last chunk
        (0, 1),           // the first byte
        (9990, 100),      // short at end of file
        (1234, 0),        // nothing asked
        (4096, u32::MAX), // to end of file
    ];
    for (offset, len) in cases {
        let end = (offset + u64::from(len)).min(data.len() as u64) as usize;
        let want = &data[offset as usize..end];
        let got = layer.read(big, offset, len).await.unwrap();
        assert_eq!(&got[..], want, "read({offset}, {len})");
        // Every chunk of that range is now cached: read_cached answers the same.
        let cached = layer.read_cached(big, offset, len).unwrap();
        assert_eq!(
            cached.as_deref(),
            Some(want),
            "read_cached({offset}, {len})"
        );
    }
    assert_eq!(layer.read(big, 9990, 100).await.unwrap().len(), 10);
    // At and past end of file: empty, and without fetching anything.
    let before = fx.source.request_count();
    for offset in [10_000, 10_001, 1 << 40, u64::MAX] {
        assert!(layer.read(big, offset, 4096).await.unwrap().is_empty());
        assert_eq!(
            layer.read_cached(big, offset, 4096).unwrap().as_deref(),
            Some(&b""[..])
        );
    }
    assert_eq!(fx.source.request_count(), before);

    // Repeated chunks (a file of zeros: both chunks have one digest) and an empty file.
    let zeros = fx.ino("zeros");
    assert_eq!(layer.read(zeros, 100, 8000).await.unwrap(), vec![0u8; 8000]);
    let empty = fx.ino("empty");
    assert!(layer.read(empty, 0, 4096).await.unwrap().is_empty());
    assert_eq!(
        layer.read_cached(empty, 0, 4096).unwrap().as_deref(),
        Some(&b""[..])
    );
    // The hardlink reads the same bytes.
    assert_eq!(
        layer.read(fx.ino("bin/big2"), 0, 10_000).await.unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_cached_is_none_until_read_then_hits() {
    let items = sample_items(false);
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let hosts = fx.ino("etc/hosts");
    assert_eq!(fx.layer.read_cached(hosts, 0, 4096).unwrap(), None);
    let requests = fx.source.request_count();
    assert_eq!(
        fx.layer.read(hosts, 0, 4096).await.unwrap(),
        &b"127.0.0.1 localhost\n"[..]
    );
    assert_eq!(fx.source.request_count(), requests + 1);
    let hits = fx.layer.stats().snapshot().chunk_hits;
    assert_eq!(
        fx.layer.read_cached(hosts, 0, 4096).unwrap().as_deref(),
        Some(&b"127.0.0.1 localhost\n"[..])
    );
    assert_eq!(
        fx.layer.read_cached(hosts, 10, 5).unwrap().as_deref(),
        Some(&b"local"[..])
    );
    assert_eq!(fx.layer.stats().snapshot().chunk_hits, hits + 2);
    // A second read() is answered from the cache too.
    assert_eq!(fx.layer.read(hosts, 0, 9).await.unwrap(), &b"127.0.0.1"[..]);
    assert_eq!(fx.source.request_count(), requests + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_file_fetches_about_its_own_chunk() {
    let fx = Fixture::estargz(&sample_with_large(), 4096, quiet()).await;
    let chunk = &fx.chunks("etc/hosts")[0];
    let before_requests = fx.source.request_count();
    let before_bytes = fx.source.bytes_served();

    fx.read_all("etc/hosts").await;

    let requests = fx.source.requests()[before_requests..].to_vec();
    assert_eq!(requests, std::slice::from_ref(&chunk.compressed));
    let fetched = fx.source.bytes_served() - before_bytes;
    assert_eq!(fetched, chunk.compressed.end - chunk.compressed.start);
    // The chunk's member also carries the next tar headers, but stays a tiny part of the blob.
    assert!(fetched < 2048, "fetched {fetched} bytes for a 20-byte file");
    assert!(fetched * 100 < fx.blob_len);
    let stats = fx.layer.stats().snapshot();
    assert_eq!(
        (stats.requests, stats.bytes_fetched, stats.chunk_misses),
        (1, fetched, 1)
    );
    assert_eq!(stats.background_bytes, 0);
    assert_eq!(fx.store.stats().inserts, 1);
}

// ---------------------------------------------------------------------------------------------------
// 3. Single-flight
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_readers_of_one_chunk_share_one_request() {
    let items = sample_with_large();
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let large = fx.ino("opt/large");
    let chunk = fx.chunks("opt/large")[5].clone();
    let want = data_of(&items, "opt/large")[5 * 4096..6 * 4096].to_vec();
    fx.source.set_delay(Duration::from_millis(300));

    let readers: Vec<_> = (0..16)
        .map(|i| {
            let layer = Arc::clone(&fx.layer);
            // Different slices of the same chunk.
            let offset = 5 * 4096 + i * 100;
            tokio::spawn(async move { (offset, layer.read(large, offset, 100).await) })
        })
        .collect();
    for reader in readers {
        let (offset, got) = reader.await.unwrap();
        let from = (offset - 5 * 4096) as usize;
        assert_eq!(got.unwrap(), want[from..from + 100], "offset {offset}");
    }

    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 1);
    let stats = fx.layer.stats().snapshot();
    assert_eq!((stats.requests, stats.chunk_misses), (1, 1));
    assert_eq!(stats.chunk_hits, 15);
    assert!(stats.wait_nanos >= Duration::from_millis(250).as_nanos() as u64);
    assert_eq!(fx.store.stats().inserts, 1);
}

/// The one file of [`one_file_layer`].
fn one_file() -> [Item; 1] {
    [Item::File("f", 0o644, pseudo_random(8 * 1024, 5))]
}

/// A layer of one 8 KiB file `f` in 1 KiB chunks (eStargz), opened with fetching quiet, over a fresh store.
async fn one_file_layer(name: &str) -> (Arc<LazyLayer>, Arc<CountingBlob>, TempDir, ChunkStore) {
    let blob = build_estargz(&one_file(), 1024);
    let source = CountingBlob::new(name, blob.bytes.clone());
    let (dir, store) = new_store();
    let layer = LazyLayer::open(
        source.clone(),
        &estargz_descriptor(&blob),
        store.clone(),
        &quiet(),
    )
    .await
    .unwrap();
    (layer, source, dir, store)
}

#[tokio::test(flavor = "multi_thread")]
async fn fetcher_single_flight_and_merged_spans() {
    // The fetcher on its own: neighbouring chunks asked together travel in one request; a second
    // caller asking for an overlapping set while the first is in flight fetches only what is new.
    let (layer, source, _dir, store) = one_file_layer("fetcher").await;
    let chunks = layer
        .tree()
        .node(resolve(layer.tree(), "f").unwrap())
        .unwrap()
        .chunks
        .clone();
    assert_eq!(chunks.len(), 8);
    let opened = source.request_count();

    let stats = Arc::new(LayerStats::default());
    let fetcher = ChunkFetcher::new(
        source.clone(),
        store.clone(),
        Compression::Gzip,
        quiet().fetch,
        Arc::clone(&stats),
    );
    assert_eq!(fetcher.missing(&chunks).len(), 8);
    source.set_delay(Duration::from_millis(200));
    let first = {
        let fetcher = Arc::clone(&fetcher);
        let wanted = chunks[..4].to_vec();
        tokio::spawn(async move { fetcher.get(&wanted, Priority::Demand).await })
    };
    eventually("the first request", || source.request_count() > opened).await;
    let second = fetcher.get(&chunks[2..], Priority::Demand).await.unwrap();
    let first = first.await.unwrap().unwrap();

    let data = data_of(&one_file(), "f");
    let all: Vec<u8> = first
        .iter()
        .chain(&second[2..])
        .flatten()
        .copied()
        .collect();
    assert_eq!(all, data);
    let new: Vec<Range<u64>> = source.requests()[opened..].to_vec();
    assert_eq!(
        new,
        [
            chunks[0].compressed.start..chunks[3].compressed.end,
            chunks[4].compressed.start..chunks[7].compressed.end,
        ]
    );
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.chunk_misses, snapshot.chunk_hits), (8, 2));
    assert!(fetcher.missing(&chunks).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_gets_of_the_same_chunks_fetch_each_once() {
    // Eight callers (eight containers starting at once) ask for the same chunks; every one is fetched
    // by one request and lands once: no duplicate fetches.
    let items = sample_with_large();
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let chunks = fx.chunks("opt/large");
    let opened = fx.source.request_count();
    fx.source.close_gate();
    let getters: Vec<_> = (0..8)
        .map(|_| {
            let layer = Arc::clone(&fx.layer);
            let large = fx.ino("opt/large");
            tokio::spawn(async move { layer.read(large, 0, 256 * 1024).await })
        })
        .collect();
    // Seven callers joined the first one's fetches (hits) before any byte lands.
    let n = chunks.len() as u64;
    eventually("every caller to join", || {
        fx.layer.stats().snapshot().chunk_hits == 7 * n
    })
    .await;
    fx.source.open_gate();
    let want = data_of(&items, "opt/large");
    for getter in getters {
        assert_eq!(getter.await.unwrap().unwrap(), want);
    }
    let stats = fx.layer.stats().snapshot();
    assert_eq!(stats.duplicate_fetches, 0);
    assert_eq!(stats.chunk_misses, n);
    for chunk in &chunks {
        assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 1);
    }
    assert_eq!(fx.store.stats().inserts, n);
    assert!(fx.source.request_count() > opened);
    assert_eq!(stats.bytes_read, 8 * want.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_cached_while_its_fetch_was_in_flight_is_a_duplicate_fetch() {
    // Two fetchers over one store (two layers with identical content) cannot share a fetch: the
    // chunks one of them brings in are already cached when its bytes land, and are counted.
    let (layer, source, _dir, store) = one_file_layer("dup").await;
    let chunks = all_chunks(&layer);
    assert_eq!(chunks.len(), 8);
    let fetcher = |stats: &Arc<LayerStats>| {
        ChunkFetcher::new(
            source.clone(),
            store.clone(),
            Compression::Gzip,
            quiet().fetch,
            Arc::clone(stats),
        )
    };
    let (first_stats, second_stats) = (Arc::default(), Arc::default());
    let (first, second) = (fetcher(&first_stats), fetcher(&second_stats));
    source.close_gate();
    let opened = source.request_count();
    let in_flight = {
        let wanted = chunks.clone();
        tokio::spawn(async move { first.get(&wanted, Priority::Demand).await })
    };
    eventually("the first request", || source.request_count() > opened).await;
    // The second fetcher's request for half of them waits at the gate too.
    let late = {
        let wanted = chunks[..4].to_vec();
        tokio::spawn(async move { second.get(&wanted, Priority::Demand).await })
    };
    eventually("the second request", || source.request_count() > opened + 1).await;
    // The first request lands (all eight chunks cached), then the second.
    source.release_one();
    in_flight.await.unwrap().unwrap();
    source.open_gate();
    late.await.unwrap().unwrap();
    assert_eq!(first_stats.snapshot().duplicate_fetches, 0);
    assert_eq!(second_stats.snapshot().duplicate_fetches, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_count_bytes_read_and_chunk_counts_follow_the_cache() {
    let items = sample_with_large();
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let distinct: std::collections::HashSet<Digest> =
        all_chunks(&fx.layer).iter().map(|c| c.digest).collect();
    let counts = fx.layer.chunk_counts();
    assert_eq!((counts.total, counts.cached), (distinct.len() as u64, 0));

    let hosts = fx.ino("etc/hosts");
    assert_eq!(fx.layer.read(hosts, 0, 4096).await.unwrap().len(), 20);
    assert_eq!(fx.layer.stats().snapshot().bytes_read, 20);
    // A cache hit answered inline counts too; a read past the end returns (and counts) nothing.
    assert_eq!(
        fx.layer.read_cached(hosts, 10, 5).unwrap().unwrap().len(),
        5
    );
    assert_eq!(fx.layer.read(hosts, 100, 10).await.unwrap().len(), 0);
    assert_eq!(fx.layer.stats().snapshot().bytes_read, 25);
    assert_eq!(fx.layer.chunk_counts().cached, 1);

    let large = fx.read_all("opt/large").await;
    assert_eq!(
        fx.layer.stats().snapshot().bytes_read,
        25 + large.len() as u64
    );
    let cached = fx.layer.chunk_counts().cached;
    assert_eq!(cached, 1 + fx.chunks("opt/large").len() as u64);
    // Background fetching would bring in the rest; with it off, nothing else is cached.
    assert!(cached < distinct.len() as u64);
    assert_eq!(fx.layer.stats().snapshot().duplicate_fetches, 0);
}

// ---------------------------------------------------------------------------------------------------
// 4. Dedup across layers
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn identical_content_in_two_layers_is_fetched_once() {
    let shared = pseudo_random(10_000, 99);
    let layer_a = build_estargz(
        &[
            Item::Dir("a/", 0o755),
            Item::File("a/shared", 0o644, shared.clone()),
            Item::File("a/only", 0o644, pseudo_random(3000, 1)),
        ],
        4096,
    );
    let layer_b = build_estargz(
        &[
            Item::File("b/first", 0o644, pseudo_random(7000, 2)),
            Item::File("b/sub/copy", 0o600, shared.clone()),
        ],
        4096,
    );
    assert_ne!(layer_a.bytes, layer_b.bytes);
    let (_dir, store) = new_store();
    let source_a = CountingBlob::new("a", layer_a.bytes.clone());
    let source_b = CountingBlob::new("b", layer_b.bytes.clone());
    let a = LazyLayer::open(
        source_a.clone(),
        &estargz_descriptor(&layer_a),
        store.clone(),
        &quiet(),
    )
    .await
    .unwrap();
    let b = LazyLayer::open(
        source_b.clone(),
        &estargz_descriptor(&layer_b),
        store.clone(),
        &quiet(),
    )
    .await
    .unwrap();
    let in_a = resolve(a.tree(), "a/shared").unwrap();
    let in_b = resolve(b.tree(), "b/sub/copy").unwrap();
    let digests = |layer: &LazyLayer, ino| -> Vec<Digest> {
        let node = layer.tree().node(ino).unwrap();
        node.chunks.iter().map(|c| c.digest).collect()
    };
    assert_eq!(digests(&a, in_a), digests(&b, in_b));
    assert_eq!(digests(&a, in_a).len(), 3);
    // Different places in different blobs.
    assert_ne!(
        a.tree().node(in_a).unwrap().chunks[0].compressed,
        b.tree().node(in_b).unwrap().chunks[0].compressed
    );

    assert_eq!(a.read(in_a, 0, 10_000).await.unwrap(), shared);
    let b_requests = source_b.request_count();
    let inserts = store.stats().inserts;
    assert_eq!(
        b.read_cached(in_b, 0, 10_000).unwrap().as_deref(),
        Some(&shared[..])
    );
    assert_eq!(b.read(in_b, 0, 10_000).await.unwrap(), shared);
    assert_eq!(b.read(in_b, 4000, 500).await.unwrap(), shared[4000..4500]);
    assert_eq!(source_b.request_count(), b_requests, "layer b was asked");
    assert_eq!(store.stats().inserts, inserts);
    let stats = b.stats().snapshot();
    assert_eq!(
        (stats.requests, stats.bytes_fetched, stats.chunk_misses),
        (0, 0, 0)
    );
    assert!(stats.chunk_hits >= 3);
}

// ---------------------------------------------------------------------------------------------------
// 5. Corrupt and failing sources
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_chunks_are_never_served_nor_cached() {
    let items = sample_with_large();
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let big = fx.ino("bin/big");
    let chunk = fx.chunks("bin/big")[1].clone();
    let digest = chunk.digest;
    assert!(chunk.compressed.end - chunk.compressed.start > 100);
    // A byte inside the deflate data of the middle chunk.
    fx.source.corrupt_byte(chunk.compressed.start + 40);

    let err = fx.layer.read(big, 4096, 4096).await.unwrap_err();
    assert_eq!(errno(&err), Errno::EIO);
    match &err {
        FsError::Fetch(FetchError::Corrupt {
            digest: bad,
            attempts,
            ..
        }) => {
            assert_eq!((*bad, *attempts), (digest, 3));
        }
        other => panic!("expected a corrupt-chunk error, got {other:?}"),
    }
    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 3);
    assert!(!fx.store.contains(&digest));
    assert_eq!(fx.store.stats().inserts, 0);
    assert_eq!(fx.store.stats().disk_entries, 0);
    assert_eq!(fx.layer.read_cached(big, 4096, 4096).unwrap(), None);
    assert_eq!(fx.layer.stats().snapshot().retries, 2);
    assert!(fx.layer.cached_file(big).unwrap().is_none());

    // A read that includes good chunks besides the bad one fails whole, never returns partial bytes.
    assert!(fx.layer.read(big, 0, 10_000).await.is_err());
    assert!(!fx.store.contains(&digest));

    fx.source.heal();
    let data = data_of(&items, "bin/big");
    assert_eq!(
        fx.layer.read(big, 4096, 4096).await.unwrap(),
        data[4096..8192]
    );
    assert!(fx.store.contains(&digest));
    assert_eq!(fx.layer.read(big, 0, 10_000).await.unwrap(), data);
    assert_eq!(fx.store.stats().corrupt_dropped, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn corruption_with_one_attempt_fails_at_once() {
    let config = LayerConfig {
        fetch: FetchConfig {
            attempts: 1,
            ..quiet().fetch
        },
        ..quiet()
    };
    let fx = Fixture::estargz(&sample_items(false), 4096, config).await;
    let hosts = fx.ino("etc/hosts");
    let chunk = fx.chunks("etc/hosts")[0].clone();
    // The gzip header's first byte: the member cannot even be opened.
    fx.source.corrupt_byte(chunk.compressed.start);
    let err = fx.layer.read(hosts, 0, 100).await.unwrap_err();
    assert!(
        matches!(err, FsError::Fetch(FetchError::Corrupt { attempts: 1, .. })),
        "{err:?}"
    );
    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 1);
    assert_eq!(fx.layer.stats().snapshot().retries, 0);
    assert!(!fx.cached(&chunk));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_source_failure_is_retried() {
    let items = sample_items(false);
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let big = fx.ino("bin/big");
    let chunk = fx.chunks("bin/big")[0].clone();
    fx.source.fail_next(chunk.compressed.clone(), 1);

    let got = fx.layer.read(big, 0, 4096).await.unwrap();
    assert_eq!(got, data_of(&items, "bin/big")[..4096]);
    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 2);
    let stats = fx.layer.stats().snapshot();
    assert_eq!(stats.retries, 1);
    assert!(fx.cached(&chunk));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_keeps_failing_is_eio() {
    let fx = Fixture::estargz(&sample_items(false), 4096, quiet()).await;
    let hosts = fx.ino("etc/hosts");
    let chunk = fx.chunks("etc/hosts")[0].clone();
    fx.source.fail_next(0..fx.blob_len, 100);
    let err = fx.layer.read(hosts, 0, 100).await.unwrap_err();
    assert_eq!(errno(&err), Errno::EIO);
    assert!(
        matches!(
            &err,
            FsError::Fetch(FetchError::Source { start, end, .. })
                if *start == chunk.compressed.start && *end == chunk.compressed.end
        ),
        "{err:?}"
    );
    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 3);
    assert_eq!(fx.layer.stats().snapshot().retries, 2);
    fx.source.heal();
    assert_eq!(
        fx.layer.read(hosts, 0, 100).await.unwrap(),
        &b"127.0.0.1 localhost\n"[..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stops_answering_fails_a_read_within_the_bound_and_a_later_read_retries() {
    let mut config = quiet();
    config.fetch.read_timeout_secs = 1;
    let items = sample_items(false);
    let fx = Fixture::estargz(&items, 4096, config).await;
    let hosts = fx.ino("etc/hosts");
    fx.source.close_gate();
    let started = std::time::Instant::now();
    let err = fx.layer.read(hosts, 0, 100).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(errno(&err), Errno::EIO);
    assert!(matches!(err, FsError::TimedOut(_)), "{err:?}");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
    fx.source.open_gate();
    assert_eq!(
        fx.layer.read(hosts, 0, 100).await.unwrap(),
        &b"127.0.0.1 localhost\n"[..]
    );
}

// ---------------------------------------------------------------------------------------------------
// 6. Opening: TOC digests and damaged blobs
// ---------------------------------------------------------------------------------------------------

async fn try_open(
    bytes: Vec<u8>,
    descriptor: &LayerDescriptor,
    config: &LayerConfig,
) -> Result<Arc<LazyLayer>, OpenError> {
    let (_dir, store) = new_store();
    LazyLayer::open(CountingBlob::new("open", bytes), descriptor, store, config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_toc_that_needs_more_than_the_budget_is_refused_and_smaller_ones_share_it() {
    let blob = build_estargz(&sample_items(false), 4096);
    let descriptor = estargz_descriptor(&blob);
    let (_dir, store) = new_store();
    let tiny = SharedStore::new(store.clone()).with_toc_budget(TocBudget::new(1024));
    match LazyLayer::open(
        CountingBlob::new("budget", blob.bytes.clone()),
        &descriptor,
        tiny,
        &quiet(),
    )
    .await
    {
        Err(OpenError::TocBudget { cost, budget, .. }) => {
            assert!(cost > budget, "{cost} <= {budget}");
            assert_eq!(budget, 1024);
        }
        Err(other) => panic!("expected TocBudget, got {other:?}"),
        Ok(_) => panic!("expected TocBudget, got a layer"),
    }
    // A budget with room for one TOC at a time: many opens at once all succeed, one after another.
    let one_at_a_time =
        SharedStore::new(store).with_toc_budget(TocBudget::new(TocBudget::cost(&blob.toc_json)));
    let opens = (0..8).map(|i| {
        let shared = one_at_a_time.clone();
        let bytes = blob.bytes.clone();
        let descriptor = descriptor.clone();
        async move {
            LazyLayer::open(
                CountingBlob::new(&format!("budget{i}"), bytes),
                &descriptor,
                shared,
                &quiet(),
            )
            .await
        }
    });
    for opened in futures::future::join_all(opens).await {
        opened.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_opened_before_opens_again_from_its_kept_toc_without_the_registry() {
    let blob = build_estargz(&sample_items(false), 4096);
    let descriptor = estargz_descriptor(&blob);
    let (dir, store) = new_store();
    let tocs = TocCache::open(&dir.path().join("tocs")).unwrap();
    let shared = SharedStore::new(store).with_toc_cache(tocs.clone());
    let first = CountingBlob::new("first", blob.bytes.clone());
    let layer = LazyLayer::open(first.clone(), &descriptor, shared.clone(), &quiet())
        .await
        .unwrap();
    assert!(first.request_count() > 0);
    assert!(tocs.holds(&descriptor.digest));

    // The registry is gone: the same layer opens from what was kept, with the same inodes.
    let gone = CountingBlob::new("gone", blob.bytes.clone());
    gone.fail_next(0..blob.bytes.len() as u64, 1000);
    let again = LazyLayer::open(gone.clone(), &descriptor, shared.clone(), &quiet())
        .await
        .unwrap();
    assert_eq!(gone.request_count(), 0);
    let hosts = |l: &LazyLayer| {
        l.lookup(l.lookup(ROOT_INO, b"etc").unwrap().ino, b"hosts")
            .unwrap()
    };
    assert_eq!(hosts(&layer), hosts(&again));

    // Kept bytes that no longer check out are dropped and read from the registry again.
    for entry in std::fs::read_dir(dir.path().join("tocs").join(descriptor.digest.hex())).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let healthy = CountingBlob::new("healthy", blob.bytes.clone());
    LazyLayer::open(healthy.clone(), &descriptor, shared, &quiet())
        .await
        .unwrap();
    assert!(healthy.request_count() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn toc_digest_is_checked_against_the_annotation() {
    let blob = build_estargz(&sample_items(false), 4096);
    let good = estargz_descriptor(&blob);

    let mut wrong = good.clone();
    let other = sha256_digest(b"another toc");
    wrong
        .annotations
        .insert(estargz::TOC_DIGEST_ANNOTATION.into(), other.clone());
    match try_open(blob.bytes.clone(), &wrong, &quiet()).await {
        Err(OpenError::TocDigestMismatch {
            digest,
            expected,
            actual,
        }) => {
            assert_eq!(
                (digest, expected, actual),
                (good.digest, other, blob.toc_digest.clone())
            );
        }
        other => panic!("expected a TOC digest mismatch, got {:?}", other.err()),
    }

    let mut unpinned = good.clone();
    unpinned.annotations.clear();
    match try_open(blob.bytes.clone(), &unpinned, &quiet()).await {
        Err(err @ OpenError::TocDigestMissing { .. }) => {
            let OpenError::TocDigestMissing { annotation, .. } = &err else {
                unreachable!()
            };
            assert_eq!(*annotation, estargz::TOC_DIGEST_ANNOTATION);
            assert!(err.to_string().contains("require_toc_digest"), "{err}");
        }
        other => panic!("expected a missing TOC digest, got {:?}", other.err()),
    }
    assert!(LayerConfig::default().require_toc_digest);

    let lenient = LayerConfig {
        require_toc_digest: false,
        ..quiet()
    };
    let layer = try_open(blob.bytes.clone(), &unpinned, &lenient)
        .await
        .unwrap();
    assert!(resolve(layer.tree(), "bin/big").is_some());
    // Lenient or not, a pinned digest that does not match is refused.
    assert!(matches!(
        try_open(blob.bytes.clone(), &wrong, &lenient).await,
        Err(OpenError::TocDigestMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_chunked_manifest_checksum_is_checked() {
    let blob = build_zstd_chunked(&sample_items(false), 4096);
    let good = zstd_descriptor(&blob);
    let mut wrong = good.clone();
    wrong.annotations.insert(
        zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION.into(),
        sha256_digest(b"x"),
    );
    assert!(matches!(
        try_open(blob.bytes.clone(), &wrong, &quiet()).await,
        Err(OpenError::TocDigestMismatch { actual, .. }) if actual == blob.manifest_checksum
    ));
    let mut unpinned = good.clone();
    unpinned
        .annotations
        .remove(zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION);
    assert!(matches!(
        try_open(blob.bytes.clone(), &unpinned, &quiet()).await,
        Err(OpenError::TocDigestMissing { annotation, .. })
            if annotation == zstd_chunked::MANIFEST_CHECKSUM_ANNOTATION
    ));
    let lenient = LayerConfig {
        require_toc_digest: false,
        ..quiet()
    };
    assert!(try_open(blob.bytes.clone(), &unpinned, &lenient)
        .await
        .is_ok());
}

/// A transient fault while the footer or TOC is read (a failed read, a flipped byte) is tried again like a
/// chunk read: the layer still opens lazily. A fault that stays fails after `attempts` tries; a layer with
/// no lazy format and no annotation announcing one is not tried again.
#[tokio::test(flavor = "multi_thread")]
async fn transient_faults_while_the_toc_is_read_are_tried_again() {
    let blob = build_estargz(&sample_items(false), 4096);
    let descriptor = estargz_descriptor(&blob);
    let len = blob.bytes.len() as u64;
    let footer = len - estargz::FOOTER_SIZE..len;
    let toc = blob.toc_offset..footer.start;
    let open = |source: Arc<CountingBlob>| {
        let descriptor = descriptor.clone();
        async move {
            let (_dir, store) = new_store();
            LazyLayer::open(source, &descriptor, store, &quiet()).await
        }
    };

    // The footer read fails once.
    let source = CountingBlob::new("flaky", blob.bytes.clone());
    source.fail_next(footer.clone(), 1);
    let layer = open(source.clone()).await.unwrap();
    assert!(resolve(layer.tree(), "bin/big").is_some());
    assert_eq!(source.requests_overlapping(&footer), 2);

    // A byte of the footer, then one of the TOC, flipped once each.
    let source = CountingBlob::new("flipped", blob.bytes.clone());
    source.corrupt_next(footer.start + 20, 1);
    source.corrupt_next(toc.start + (toc.end - toc.start) / 2, 1);
    let layer = open(source.clone()).await.unwrap();
    assert!(resolve(layer.tree(), "etc/hosts").is_some());
    assert_eq!(source.requests_overlapping(&toc), 2);

    // A fault that stays: the open fails after `attempts` tries.
    let source = CountingBlob::new("broken", blob.bytes.clone());
    source.fail_next(footer.clone(), 100);
    assert!(matches!(
        open(source.clone()).await,
        Err(OpenError::Fetch { .. })
    ));
    assert_eq!(
        source.requests_overlapping(&footer),
        quiet().fetch.attempts as usize
    );

    // No footer and nothing announcing one: a plain layer, asked once.
    let plain = build_plain_gzip_tar(&sample_items(false));
    let plain_descriptor = LayerDescriptor {
        digest: Digest::of(&plain),
        size: plain.len() as u64,
        media_type: GZIP_LAYER.into(),
        annotations: BTreeMap::new(),
    };
    let source = CountingBlob::new("plain", plain);
    let (_dir, store) = new_store();
    assert!(matches!(
        LazyLayer::open(source.clone(), &plain_descriptor, store, &quiet()).await,
        Err(OpenError::NotLazy { .. })
    ));
    assert_eq!(source.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_gzip_layer_is_not_lazy() {
    let plain = build_plain_gzip_tar(&sample_items(false));
    let descriptor = LayerDescriptor {
        digest: Digest::of(&plain),
        size: plain.len() as u64,
        media_type: GZIP_LAYER.into(),
        annotations: BTreeMap::new(),
    };
    // It is a real gzip tar.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&plain[..]), &mut tar).unwrap();
    assert!(tar.windows(9).any(|w| w == b"etc/hosts"));

    for config in [
        quiet(),
        LayerConfig {
            require_toc_digest: false,
            ..quiet()
        },
    ] {
        match try_open(plain.clone(), &descriptor, &config).await {
            Err(err @ OpenError::NotLazy { .. }) => {
                assert!(
                    err.to_string().contains(&descriptor.digest.to_string()),
                    "{err}"
                );
            }
            other => panic!("expected NotLazy, got {:?}", other.err()),
        }
    }
    // Too small for any footer.
    assert!(matches!(
        try_open(b"\x1f\x8b tiny".to_vec(), &descriptor, &quiet()).await,
        Err(OpenError::NotLazy { .. })
    ));
    assert!(matches!(
        try_open(Vec::new(), &descriptor, &quiet()).await,
        Err(OpenError::NotLazy { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_stargz_footer_opens_and_reads() {
    let items = sample_items(false);
    let blob = build_estargz(&items, 4096);
    let mut bytes = blob.bytes[..blob.bytes.len() - estargz::FOOTER_SIZE as usize].to_vec();
    // The 47-byte footer: gzip header with a bare 22-byte extra field, an empty stored block.
    bytes.extend_from_slice(&[0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    bytes.extend_from_slice(format!("{:016x}STARGZ", blob.toc_offset).as_bytes());
    bytes.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let source = CountingBlob::new("legacy", bytes);
    let (_dir, store) = new_store();
    let layer = LazyLayer::open(source.clone(), &estargz_descriptor(&blob), store, &quiet())
        .await
        .unwrap();
    assert!(source.request_count() <= 3);
    let big = resolve(layer.tree(), "bin/big").unwrap();
    assert_eq!(
        layer.read(big, 0, 10_000).await.unwrap(),
        data_of(&items, "bin/big")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_footers_and_tocs_fail_with_clear_errors() {
    let blob = build_estargz(&sample_items(false), 4096);
    let descriptor = estargz_descriptor(&blob);
    let len = blob.bytes.len();
    let body = &blob.bytes[..len - estargz::FOOTER_SIZE as usize];
    let with_footer = |body: &[u8], toc_offset: u64| {
        let mut bytes = body.to_vec();
        bytes.extend(estargz_footer(toc_offset));
        bytes
    };

    // Truncated blob: the footer is cut.
    let err = try_open(blob.bytes[..len - 10].to_vec(), &descriptor, &quiet())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::NotLazy { .. }), "{err:?}");

    // Truncated TOC region: half of the TOC member is gone, the footer is intact.
    let toc_len = body.len() - blob.toc_offset as usize;
    let cut = &body[..blob.toc_offset as usize + toc_len / 2];
    let err = try_open(with_footer(cut, blob.toc_offset), &descriptor, &quiet())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Format { .. }), "{err:?}");

    // Absurd TOC offsets: past the blob, at the footer, the largest the footer can hold.
    for toc_offset in [
        len as u64 * 2,
        (len - estargz::FOOTER_SIZE as usize) as u64,
        i64::MAX as u64,
    ] {
        let err = try_open(with_footer(body, toc_offset), &descriptor, &quiet())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                OpenError::Format {
                    source: FormatError::TocOffsetOutOfRange { .. },
                    ..
                }
            ),
            "{toc_offset}: {err:?}"
        );
    }

    // A TOC offset pointing at file data or into the middle of the TOC member.
    for toc_offset in [0, 1, blob.toc_offset + 3] {
        let err = try_open(with_footer(body, toc_offset), &descriptor, &quiet())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, OpenError::Format { .. }),
            "{toc_offset}: {err:?}"
        );
    }

    // A flipped byte in the TOC: an error either way (bad gzip / JSON, or a different digest).
    let mut flipped = blob.bytes.clone();
    flipped[blob.toc_offset as usize + 200] ^= 0x01;
    assert!(try_open(flipped, &descriptor, &quiet()).await.is_err());

    // Every error names the layer.
    let err = try_open(blob.bytes[..len - 10].to_vec(), &descriptor, &quiet())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains(&descriptor.digest.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_zstd_chunked_positions_fail_with_clear_errors() {
    let blob = build_zstd_chunked(&sample_items(false), 4096);
    let good = zstd_descriptor(&blob);
    let size = blob.bytes.len() as u64;
    let with_position = |position: String| {
        let mut descriptor = good.clone();
        descriptor
            .annotations
            .insert(zstd_chunked::MANIFEST_POSITION_ANNOTATION.into(), position);
        descriptor
    };
    // Past the end of the blob, or larger than any TOC may be: refused before reading it.
    for position in [
        format!("{}:100:200:1", size - 50),
        format!("{size}:1:1:1"),
        format!("100:{}:1000:1", 1u64 << 40),
    ] {
        let source = CountingBlob::new("zstd", blob.bytes.clone());
        let (_dir, store) = new_store();
        let err = LazyLayer::open(
            source.clone(),
            &with_position(position.clone()),
            store,
            &quiet(),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(err, OpenError::TocOutOfBounds { .. }),
            "{position}: {err:?}"
        );
        assert_eq!(source.request_count(), 0, "{position}");
    }
    // Not a position at all, or overflowing.
    for position in [
        "garbage",
        "1:2:3",
        "1:2:3:4",
        "18446744073709551615:10:10:1",
    ] {
        let err = try_open(
            blob.bytes.clone(),
            &with_position(position.into()),
            &quiet(),
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(
                err,
                OpenError::Format {
                    source: FormatError::InvalidManifestPosition { .. },
                    ..
                }
            ),
            "{position}: {err:?}"
        );
    }
    // A position that points at the wrong bytes.
    let (offset, rest) = blob.manifest_position.split_once(':').unwrap();
    let shifted = format!("{}:{rest}", offset.parse::<u64>().unwrap() - 8);
    assert!(matches!(
        try_open(blob.bytes.clone(), &with_position(shifted), &quiet()).await,
        Err(OpenError::Format { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------
// 7. Prefetch
// ---------------------------------------------------------------------------------------------------

fn prefetch_items(landmarks: &[&'static str]) -> Vec<Item> {
    let mut items = Vec::new();
    if landmarks.contains(&".no.prefetch.landmark") {
        items.push(Item::File(".no.prefetch.landmark", 0o644, vec![0xf]));
    }
    items.extend([
        Item::Dir("app/", 0o755),
        Item::File("app/main", 0o755, pseudo_random(6000, 1)),
        Item::File("app/config", 0o644, b"key=value\n".to_vec()),
    ]);
    if landmarks.contains(&".prefetch.landmark") {
        items.push(Item::File(".prefetch.landmark", 0o644, vec![0xf]));
    }
    items.extend([
        Item::File("lib/unused", 0o644, pseudo_random(5000, 2)),
        Item::File("lib/other", 0o644, pseudo_random(3000, 3)),
    ]);
    items
}

fn prefetch_only() -> LayerConfig {
    with_fetch(FetchConfig {
        prefetch: true,
        background: None,
        max_readahead_bytes: 0,
        neighbour_bytes: None,
        directory_bytes: None,
        ..FetchConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_fetches_exactly_the_prioritized_files() {
    let items = prefetch_items(&[".prefetch.landmark"]);
    let fx = Fixture::estargz(&items, 4096, prefetch_only()).await;
    let opened = fx.source.request_count();
    let prioritized: Vec<ChunkRef> = ["app/main", "app/config"]
        .iter()
        .flat_map(|p| fx.chunks(p))
        .collect();
    let others: Vec<ChunkRef> = ["lib/unused", "lib/other"]
        .iter()
        .flat_map(|p| fx.chunks(p))
        .collect();
    assert_eq!((prioritized.len(), others.len()), (3, 3));

    tokio::time::timeout(
        Duration::from_secs(10),
        Arc::clone(&fx.layer).fetch_in_background(),
    )
    .await
    .expect("prefetch finishes");

    for chunk in &prioritized {
        assert!(fx.cached(chunk), "prioritized chunk {chunk:?} not cached");
    }
    for chunk in &others {
        assert!(!fx.cached(chunk), "{chunk:?} was fetched");
    }
    assert_eq!(fx.store.stats().disk_entries, 3);
    // The prioritized files sit together: one Range request.
    let new = fx.source.requests()[opened..].to_vec();
    let together = prioritized[0].compressed.start..prioritized[2].compressed.end;
    assert_eq!(new, std::slice::from_ref(&together));
    let stats = fx.layer.stats().snapshot();
    assert_eq!(stats.background_bytes, stats.bytes_fetched);
    // Reading a prefetched file now is a cache hit.
    assert_eq!(
        fx.layer
            .read_cached(fx.ino("app/main"), 0, 6000)
            .unwrap()
            .as_deref(),
        Some(&data_of(&items, "app/main")[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_prefetch_landmark_prefetches_nothing() {
    for landmarks in [
        &[".no.prefetch.landmark"][..],
        &[".no.prefetch.landmark", ".prefetch.landmark"],
        &[],
    ] {
        let fx = Fixture::estargz(&prefetch_items(landmarks), 4096, prefetch_only()).await;
        let opened = fx.source.request_count();
        assert!(
            fx.layer.tree().prefetch_inodes().is_empty(),
            "{landmarks:?}"
        );
        tokio::time::timeout(
            Duration::from_secs(10),
            Arc::clone(&fx.layer).fetch_in_background(),
        )
        .await
        .expect("prefetch finishes");
        assert_eq!(fx.source.request_count(), opened, "{landmarks:?}");
        assert_eq!(fx.store.stats().disk_entries, 0, "{landmarks:?}");
        // The landmarks are not files of the layer.
        for name in [&b".no.prefetch.landmark"[..], b".prefetch.landmark"] {
            assert!(fx.layer.lookup(ROOT_INO, name).is_err());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_off_ignores_the_landmark() {
    let items = prefetch_items(&[".prefetch.landmark"]);
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    assert_eq!(fx.layer.tree().prefetch_inodes().len(), 2);
    let opened = fx.source.request_count();
    Arc::clone(&fx.layer).fetch_in_background().await;
    assert_eq!(fx.source.request_count(), opened);
}

// ---------------------------------------------------------------------------------------------------
// 8. Background fetching
// ---------------------------------------------------------------------------------------------------

const MANY: [&str; 16] = [
    "d/f00", "d/f01", "d/f02", "d/f03", "d/f04", "d/f05", "d/f06", "d/f07", "d/f08", "d/f09",
    "d/f10", "d/f11", "d/f12", "d/f13", "d/f14", "d/f15",
];

fn many_items() -> Vec<Item> {
    let mut items: Vec<Item> = MANY
        .iter()
        .enumerate()
        .map(|(i, name)| Item::File(name, 0o644, pseudo_random(3000, 100 + i as u64)))
        .collect();
    items.push(Item::Symlink("link", "d/f00"));
    items.push(Item::File("same", 0o644, pseudo_random(3000, 100)));
    items
}

fn all_chunks(layer: &LazyLayer) -> Vec<ChunkRef> {
    layer
        .tree()
        .nodes()
        .flat_map(|n| n.chunks.iter().cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn background_fetch_caches_the_whole_layer_in_few_requests() {
    let items = many_items();
    let config = with_fetch(FetchConfig {
        background: Some(BackgroundConfig::default()),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let chunks = all_chunks(&fx.layer);
    assert_eq!(chunks.len(), 17 * 3);
    let opened = fx.source.request_count();

    tokio::time::timeout(
        Duration::from_secs(20),
        Arc::clone(&fx.layer).fetch_in_background(),
    )
    .await
    .expect("background fetch finishes");

    for chunk in &chunks {
        assert!(fx.cached(chunk), "{chunk:?} not cached");
    }
    let requests = fx.source.request_count() - opened;
    assert_eq!(requests, 1, "{:?}", &fx.source.requests()[opened..]);
    let stats = fx.layer.stats().snapshot();
    assert_eq!(stats.background_bytes, stats.bytes_fetched);
    // "same" has the content of d/f00: stored once.
    assert_eq!(fx.store.stats().disk_entries, 16 * 3);

    // Every read is now answered inline, with no request.
    for item in &items {
        let Item::File(name, _, data) = item else {
            continue;
        };
        let got = fx.layer.read_cached(fx.ino(name), 0, 1 << 20).unwrap();
        assert_eq!(got.as_deref(), Some(&data[..]), "{name}");
        assert_eq!(
            fx.layer.read(fx.ino(name), 100, 2000).await.unwrap(),
            data[100..2100]
        );
    }
    assert_eq!(fx.source.request_count() - opened, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_requests_respect_the_request_size_bound() {
    let items = many_items();
    let max_request_bytes = 8 * 1024;
    let config = with_fetch(FetchConfig {
        max_request_bytes,
        background: Some(BackgroundConfig {
            parallel_requests: 3,
            ..BackgroundConfig::default()
        }),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let chunks = all_chunks(&fx.layer);
    let opened = fx.source.request_count();
    Arc::clone(&fx.layer).fetch_in_background().await;
    assert!(chunks.iter().all(|c| fx.cached(c)));
    let requests = fx.source.requests()[opened..].to_vec();
    let payload = chunks.iter().map(|c| c.compressed.end).max().unwrap()
        - chunks.iter().map(|c| c.compressed.start).min().unwrap();
    assert!(requests.len() as u64 >= payload.div_ceil(max_request_bytes));
    assert!(
        requests.len() * 4 <= chunks.len(),
        "{} requests for {} chunks",
        requests.len(),
        chunks.len()
    );
    for range in &requests {
        assert!(range.end - range.start <= max_request_bytes, "{range:?}");
    }
    // No byte of the blob is fetched twice.
    let mut sorted = requests.clone();
    sorted.sort_by_key(|r| r.start);
    assert!(
        sorted.windows(2).all(|w| w[0].end <= w[1].start),
        "{sorted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn background_fetch_skips_what_readers_already_fetched() {
    let items = many_items();
    // No gap bridging, so that "not fetched again" is exact.
    let config = reads_only(FetchConfig {
        background: Some(BackgroundConfig::default()),
        max_gap_bytes: 0,
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let read_first = fx.chunks("d/f07");
    fx.read_all("d/f07").await;
    let opened_and_read = fx.source.request_count();
    Arc::clone(&fx.layer).fetch_in_background().await;
    let background = fx.source.requests()[opened_and_read..].to_vec();
    let first = &read_first[0].compressed.start..&read_first[2].compressed.end;
    for range in &background {
        assert!(
            range.end <= *first.start || range.start >= *first.end,
            "{range:?} fetched d/f07 again"
        );
    }
    assert_eq!(background.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_fetching_does_not_delay_readers() {
    let items = many_items();
    let config = reads_only(FetchConfig {
        max_request_bytes: 2048,
        background: Some(BackgroundConfig {
            parallel_requests: 1,
            ..BackgroundConfig::default()
        }),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let opened = fx.source.request_count();
    let delay = Duration::from_millis(100);
    fx.source.set_delay(delay);
    let background = tokio::spawn(Arc::clone(&fx.layer).fetch_in_background());
    eventually("background fetching to start", || {
        fx.source.request_count() > opened
    })
    .await;

    // The last file of the blob: the background fetch, one 2 KiB request at a time, is far from it.
    let last = fx.chunks("same");
    assert!(!fx.cached(&last[0]));
    let started = Instant::now();
    let got = fx.read_all("same").await;
    let waited = started.elapsed();
    assert_eq!(got, data_of(&items, "same"));
    assert!(
        waited < delay * 6,
        "a reader waited {waited:?} behind background fetching"
    );
    assert!(
        !background.is_finished(),
        "background fetching was too quick to compete"
    );
    background.abort();
}

/// Background fetching holds back until readers have left the network alone for `quiet_ms` (the mount
/// counts as a wait): a starting container reads in bursts, and each background request on the link
/// would delay its next read.
#[tokio::test(flavor = "multi_thread")]
async fn background_fetching_waits_for_readers_to_be_quiet() {
    let items = many_items();
    let config = reads_only(FetchConfig {
        background: Some(BackgroundConfig {
            quiet_ms: 60_000,
            ..BackgroundConfig::default()
        }),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let opened = fx.source.request_count();
    // The read comes first: a reader joining a span the background work planned makes the whole span
    // urgent, and one span may hold every chunk of this small layer.
    assert_eq!(fx.read_all("d/f03").await, data_of(&items, "d/f03"));
    let read = fx.source.request_count();
    assert_eq!(read, opened + 1);
    let background = tokio::spawn(Arc::clone(&fx.layer).fetch_in_background());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fx.source.request_count(),
        read,
        "background fetching went while readers were not yet quiet"
    );
    assert!(!background.is_finished());
    // A reader needing what the held-back work planned is not held back with it.
    assert_eq!(fx.read_all("d/f09").await, data_of(&items, "d/f09"));
    background.abort();
}

/// The layers of an image share the link: one layer's background fetching holds back while a reader of
/// another layer using the same chunk store waits on the network, and goes once readers are quiet.
#[tokio::test(flavor = "multi_thread")]
async fn background_fetching_holds_back_for_readers_of_other_layers() {
    let items = many_items();
    let config = reads_only(FetchConfig {
        background: Some(BackgroundConfig {
            quiet_ms: 300,
            ..BackgroundConfig::default()
        }),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config.clone()).await;
    let top_items = vec![Item::File("top", 0o644, pseudo_random(3000, 77))];
    let top_blob = build_estargz(&top_items, 1024);
    let top_source = CountingBlob::new("top", top_blob.bytes.clone());
    let top = LazyLayer::open(
        top_source.clone(),
        &estargz_descriptor(&top_blob),
        fx.store.clone(),
        &config,
    )
    .await
    .unwrap();
    // Both mounts are past their quiet spell before anyone reads.
    tokio::time::sleep(Duration::from_millis(400)).await;
    top_source.set_delay(Duration::from_millis(1500));
    let ino = resolve(top.tree(), "top").unwrap();
    let reader = tokio::spawn({
        let top = Arc::clone(&top);
        async move { top.read(ino, 0, 3000).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let opened = fx.source.request_count();
    let background = tokio::spawn(Arc::clone(&fx.layer).fetch_in_background());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        fx.source.request_count(),
        opened,
        "the base layer fetched in the background while a reader of the top layer waited"
    );
    assert_eq!(reader.await.unwrap(), data_of(&top_items, "top"));
    eventually("background fetching once readers are quiet", || {
        fx.source.request_count() > opened
    })
    .await;
    background.abort();
}

/// A reader that needs a chunk the background fetch has planned but not yet requested (it holds back
/// while readers wait) must not wait forever: the reader's wait promotes the span. Reading every file in
/// order while the background fetch runs ahead of the reader is how a workload hit this.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_joining_a_held_back_background_span_is_not_stuck() {
    let items = many_items();
    let config = reads_only(FetchConfig {
        max_request_bytes: 2048,
        max_gap_bytes: 0,
        background: Some(BackgroundConfig {
            parallel_requests: 2,
            ..BackgroundConfig::default()
        }),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let opened = fx.source.request_count();
    fx.source.set_delay(Duration::from_millis(30));
    let background = tokio::spawn(Arc::clone(&fx.layer).fetch_in_background());
    eventually("background fetching to start", || {
        fx.source.request_count() > opened
    })
    .await;
    for name in MANY {
        let got = tokio::time::timeout(Duration::from_secs(10), fx.read_all(name))
            .await
            .unwrap_or_else(|_| panic!("reading {name} is stuck behind held-back background work"));
        assert_eq!(got, data_of(&items, name), "{name}");
    }
    tokio::time::timeout(Duration::from_secs(10), background)
        .await
        .expect("background fetching finishes")
        .unwrap();
    let stats = fx.layer.stats().snapshot();
    assert!(stats.background_bytes < stats.bytes_fetched, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_reader_still_lands_its_chunk() {
    let items = many_items();
    let config = reads_only(FetchConfig {
        prefetch: false,
        background: Some(BackgroundConfig::default()),
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let chunk = fx.chunks("d/f03")[0].clone();
    fx.source.set_delay(Duration::from_millis(200));
    let reader = {
        let layer = Arc::clone(&fx.layer);
        let ino = fx.ino("d/f03");
        tokio::spawn(async move { layer.read(ino, 0, 100).await })
    };
    eventually("the reader's request", || {
        fx.source.requests_overlapping(&chunk.compressed) == 1
    })
    .await;
    reader.abort();
    assert!(reader.await.unwrap_err().is_cancelled());
    // The fetch outlives its reader and is cached; nobody asks the source for it again.
    eventually("the abandoned chunk to land", || fx.cached(&chunk)).await;
    fx.source.set_delay(Duration::ZERO);
    assert_eq!(
        fx.layer.read(fx.ino("d/f03"), 0, 100).await.unwrap(),
        data_of(&items, "d/f03")[..100]
    );
    assert_eq!(fx.source.requests_overlapping(&chunk.compressed), 1);
    // The cancelled reader no longer counts as waiting: background fetching is not held back forever.
    tokio::time::timeout(
        Duration::from_secs(10),
        Arc::clone(&fx.layer).fetch_in_background(),
    )
    .await
    .expect("background fetch finishes");
    assert!(all_chunks(&fx.layer).iter().all(|c| fx.cached(c)));
}

// ---------------------------------------------------------------------------------------------------
// 9. Readahead
// ---------------------------------------------------------------------------------------------------

/// A read that misses also fetches, unawaited, the chunks that follow it in the blob (up to
/// `neighbour_bytes`): the next small file a starting program opens is often right there.
#[tokio::test(flavor = "multi_thread")]
async fn a_miss_fetches_its_neighbours_in_the_blob() {
    let items = many_items();
    let config = with_fetch(FetchConfig {
        prefetch: false,
        background: None,
        max_readahead_bytes: 0,
        neighbour_bytes: Some(4096),
        directory_bytes: None,
        ..FetchConfig::default()
    });
    let fx = Fixture::estargz(&items, 1024, config).await;
    let next = fx.chunks("d/f04")[0].clone();
    let far = fx.chunks("d/f09")[0].clone();
    assert!(!fx.cached(&next));
    assert_eq!(fx.read_all("d/f03").await, data_of(&items, "d/f03"));
    eventually("the next file's first chunk to land", || fx.cached(&next)).await;
    let requests = fx.source.request_count();
    assert_eq!(fx.read_all("d/f04").await, data_of(&items, "d/f04")[..]);
    // Beyond the budget nothing was fetched; a cache hit fetches no neighbours.
    assert!(!fx.cached(&far));
    let first_of_f04_was_enough = fx.source.request_count() - requests;
    assert!(
        first_of_f04_was_enough <= 2,
        "{first_of_f04_was_enough} requests"
    );
}

fn directory_config(directory_bytes: u64) -> LayerConfig {
    with_fetch(FetchConfig {
        prefetch: false,
        background: None,
        max_readahead_bytes: 0,
        neighbour_bytes: None,
        directory_bytes: Some(directory_bytes),
        ..FetchConfig::default()
    })
}

/// The second read miss in a directory fetches, unawaited, the directory's other small files (a program
/// going through it, like an interpreter importing a package's modules): whole files within
/// `directory_bytes`, none larger than 256 KiB, nothing of other directories; a large file's misses do
/// not count.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_miss_in_a_directory_fetches_its_small_files() {
    let mut items = many_items();
    items.push(Item::File("d/large", 0o644, pseudo_random(300 << 10, 7)));
    items.push(Item::File("e/other", 0o644, pseudo_random(3000, 8)));
    let fx = Fixture::estargz(&items, 1024, directory_config(1 << 20)).await;
    let others: Vec<&str> = MANY
        .iter()
        .copied()
        .filter(|p| *p != "d/f03" && *p != "d/f11")
        .collect();
    let all_cached = |paths: &[&str]| {
        paths
            .iter()
            .all(|p| fx.chunks(p).iter().all(|c| fx.cached(c)))
    };
    let none_cached = |paths: &[&str]| {
        paths
            .iter()
            .all(|p| fx.chunks(p).iter().all(|c| !fx.cached(c)))
    };

    // One miss is a lone file: nothing else comes.
    assert_eq!(fx.read_all("d/f11").await, data_of(&items, "d/f11"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(none_cached(&others));

    // Misses in a large file say nothing about its directory.
    assert_eq!(fx.read_all("d/large").await.len(), 300 << 10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(none_cached(&others));

    // A second small file fetches the rest of the directory's small files.
    assert_eq!(fx.read_all("d/f03").await, data_of(&items, "d/f03"));
    eventually("the directory's small files to land", || {
        all_cached(&others)
    })
    .await;
    assert!(none_cached(&["e/other"]));
    let requests = fx.source.request_count();
    for path in &others {
        assert_eq!(fx.read_all(path).await, data_of(&items, path));
    }
    assert_eq!(
        fx.source.request_count(),
        requests,
        "reads of fetched files went out"
    );
}

/// A directory fetch takes whole files in blob order while they fit in `directory_bytes`.
#[tokio::test(flavor = "multi_thread")]
async fn a_directory_fetch_takes_whole_files_within_its_budget() {
    let items = many_items();
    let fx = Fixture::estargz(&items, 1024, directory_config(1)).await;
    let _ = fx.read_all("d/f00").await;
    let _ = fx.read_all("d/f01").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fx.cached(&fx.chunks("d/f02")[0]),
        "a budget of 1 byte fetched a file"
    );

    let one_file: u64 = fx
        .chunks("d/f02")
        .iter()
        .map(|c| c.compressed.end - c.compressed.start)
        .sum();
    let fx = Fixture::estargz(&items, 1024, directory_config(one_file * 2 + one_file / 2)).await;
    let _ = fx.read_all("d/f00").await;
    let _ = fx.read_all("d/f01").await;
    let whole = |p: &str| fx.chunks(p).iter().all(|c| fx.cached(c));
    eventually("two files to land", || whole("d/f02") && whole("d/f03")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !fx.chunks("d/f04").iter().any(|c| fx.cached(c)),
        "beyond the budget"
    );
}

fn readahead_config(max_readahead_bytes: u64) -> LayerConfig {
    with_fetch(FetchConfig {
        prefetch: false,
        background: None,
        max_readahead_bytes,
        neighbour_bytes: None,
        directory_bytes: None,
        ..FetchConfig::default()
    })
}

fn sequential_items() -> Vec<Item> {
    vec![
        Item::File("seq", 0o644, pseudo_random(16 * 4096, 21)),
        Item::File("after", 0o644, pseudo_random(4096, 22)),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn sequential_reads_fetch_ahead() {
    let items = sequential_items();
    let data = data_of(&items, "seq");
    let fx = Fixture::estargz(&items, 4096, readahead_config(1 << 20)).await;
    let seq = fx.ino("seq");
    let chunks = fx.chunks("seq");
    assert_eq!(chunks.len(), 16);

    assert_eq!(fx.layer.read(seq, 0, 4096).await.unwrap(), data[..4096]);
    // One read is not a pattern: nothing ahead.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fx.cached(&chunks[1]));
    assert_eq!(
        fx.layer.read(seq, 4096, 4096).await.unwrap(),
        data[4096..8192]
    );
    // The second sequential read starts a window of two reads' worth.
    eventually("readahead of chunks 2 and 3", || {
        fx.cached(&chunks[2]) && fx.cached(&chunks[3])
    })
    .await;
    // The next read is served from what readahead brought, and (still sequential) doubles the
    // window: chunks 3..7 are wanted, 3 is already there.
    assert_eq!(
        fx.layer.read(seq, 8192, 4096).await.unwrap(),
        data[8192..12288]
    );
    eventually("readahead of chunks 4..7", || {
        chunks[4..7].iter().all(|c| fx.cached(c))
    })
    .await;
    assert_eq!(fx.source.requests_overlapping(&chunks[2].compressed), 1);
    assert_eq!(
        fx.layer
            .read_cached(seq, 12288, 4 * 4096)
            .unwrap()
            .as_deref(),
        Some(&data[12288..28672])
    );
    // Readahead never runs past the file.
    assert!(!fx.cached(&fx.chunks("after")[0]));
    assert!(fx.layer.stats().snapshot().background_bytes > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_readahead_when_disabled_or_random() {
    let items = sequential_items();
    // Disabled.
    let fx = Fixture::estargz(&items, 4096, readahead_config(0)).await;
    let seq = fx.ino("seq");
    let chunks = fx.chunks("seq");
    for k in 0..3 {
        fx.layer.read(seq, k * 4096, 4096).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!fx.cached(&chunks[3]));
    assert_eq!(fx.store.stats().disk_entries, 3);

    // Enabled, but the reads jump around.
    let fx = Fixture::estargz(&items, 4096, readahead_config(1 << 20)).await;
    for k in [9, 2, 14, 5] {
        fx.layer.read(seq, k * 4096, 4096).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fx.store.stats().disk_entries, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn readahead_keeps_ahead_of_a_reader_served_from_the_cache() {
    // The adapter's pattern: read_cached inline, read() only on a miss.
    let items = sequential_items();
    let data = data_of(&items, "seq");
    let fx = Fixture::estargz(&items, 4096, readahead_config(1 << 20)).await;
    let seq = fx.ino("seq");
    let mut stalls = Vec::new();
    for k in 0..16u64 {
        let offset = k * 4096;
        let got = match fx.layer.read_cached(seq, offset, 4096).unwrap() {
            Some(bytes) => bytes,
            None => {
                stalls.push(k);
                fx.layer.read(seq, offset, 4096).await.unwrap()
            }
        };
        assert_eq!(got, data[offset as usize..offset as usize + 4096]);
        // The reader works on what it got; readahead has time to land.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stalls,
        [0, 1],
        "sequential reads that waited on the network"
    );
}

// ---------------------------------------------------------------------------------------------------
// 10. cached_file (passthrough)
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn cached_file_only_once_the_whole_file_is_cached() {
    let items = sample_items(false);
    let fx = Fixture::estargz(&items, 4096, quiet()).await;
    let big = fx.ino("bin/big");
    let data = data_of(&items, "bin/big");

    assert!(fx.layer.cached_file(big).unwrap().is_none());
    fx.layer.read(big, 0, 5000).await.unwrap();
    assert!(
        fx.layer.cached_file(big).unwrap().is_none(),
        "a chunk is missing"
    );
    fx.layer.read(big, 5000, 5000).await.unwrap();
    let (path, pin) = fx.layer.cached_file(big).unwrap().expect("wholly cached");
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(pin.digest(), &Digest::of(&data));
    assert!(path.starts_with(fx.store.dir()));
    // Asked again: the same assembled file, not a second copy.
    let entries = fx.store.stats().disk_entries;
    let (again, _pin) = fx.layer.cached_file(big).unwrap().unwrap();
    assert_eq!(again, path);
    assert_eq!(fx.store.stats().disk_entries, entries);

    // A single-chunk file is its chunk.
    let hosts = fx.ino("etc/hosts");
    assert!(fx.layer.cached_file(hosts).unwrap().is_none());
    fx.read_all("etc/hosts").await;
    let (path, _pin) = fx.layer.cached_file(hosts).unwrap().unwrap();
    assert_eq!(path, fx.store.path(&fx.chunks("etc/hosts")[0].digest));
    assert_eq!(std::fs::read(&path).unwrap(), b"127.0.0.1 localhost\n");

    // Repeated chunks assemble correctly.
    let zeros = fx.ino("zeros");
    fx.read_all("zeros").await;
    let (path, _pin) = fx.layer.cached_file(zeros).unwrap().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![0u8; 8192]);

    // Not for directories; nothing for an empty file.
    assert!(matches!(
        fx.layer.cached_file(ROOT_INO),
        Err(FsError::IsADirectory)
    ));
    assert!(fx.layer.cached_file(fx.ino("empty")).unwrap().is_none());
}

// ---------------------------------------------------------------------------------------------------
// 11. zstd:chunked
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn zstd_chunked_layer_opens_and_reads_exact_bytes() {
    let mut items = sample_items(false);
    items.push(Item::File("opt/large", 0o644, pseudo_random(64 * 1024, 31)));
    let fx = Fixture::zstd_chunked(&items, 4096, quiet()).await;
    assert_eq!(fx.layer.format(), LayerFormat::ZstdChunked);
    // One request: the manifest, located by the annotation.
    assert_eq!(fx.source.request_count(), 1);
    assert!(fx.source.bytes_served() * 5 < fx.blob_len);

    let big = fx.ino("bin/big");
    let data = data_of(&items, "bin/big");
    assert_eq!(fx.layer.getattr(big).unwrap().perm, 0o4755);
    assert_eq!(
        fx.layer.read(big, 4000, 200).await.unwrap(),
        data[4000..4200]
    );
    assert_eq!(fx.layer.read(big, 0, 10_000).await.unwrap(), data);
    assert_eq!(fx.layer.read(big, 9990, 100).await.unwrap(), data[9990..]);
    assert!(fx.layer.read(big, 10_000, 100).await.unwrap().is_empty());
    assert_eq!(
        fx.read_all("etc/hosts").await,
        &b"127.0.0.1 localhost\n"[..]
    );
    assert_eq!(fx.read_all("zeros").await, vec![0u8; 8192]);
    let large = data_of(&items, "opt/large");
    assert_eq!(
        fx.layer
            .read(fx.ino("opt/large"), 12_345, 30_000)
            .await
            .unwrap(),
        large[12_345..42_345]
    );
    // Each zstd chunk has an exact end: a one-chunk read fetches just its frame.
    let chunk = fx.chunks("opt/large")[15].clone();
    let before = fx.source.bytes_served();
    fx.layer
        .read(fx.ino("opt/large"), 15 * 4096, 10)
        .await
        .unwrap();
    assert_eq!(
        fx.source.bytes_served() - before,
        chunk.compressed.end - chunk.compressed.start
    );

    let (path, _pin) = fx.layer.cached_file(big).unwrap().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(
        fx.layer.getxattr(fx.ino("xattr"), b"user.note").unwrap(),
        b"hi\0there"
    );
    assert_eq!(
        fx.layer
            .getxattr(fx.ino("var"), OPAQUE_XATTR.as_bytes())
            .unwrap(),
        b"y"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_chunked_corruption_is_eio_then_recovers() {
    let items = sample_items(false);
    let fx = Fixture::zstd_chunked(&items, 4096, quiet()).await;
    let big = fx.ino("bin/big");
    let chunk = fx.chunks("bin/big")[2].clone();
    fx.source
        .corrupt_byte((chunk.compressed.start + chunk.compressed.end) / 2);
    let err = fx.layer.read(big, 9000, 100).await.unwrap_err();
    assert_eq!(errno(&err), Errno::EIO);
    assert!(!fx.cached(&chunk));
    fx.source.heal();
    assert_eq!(
        fx.layer.read(big, 9000, 100).await.unwrap(),
        data_of(&items, "bin/big")[9000..9100]
    );
}
