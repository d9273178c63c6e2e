//! Fetch policy: which chunks to bring in besides the ones a reader waits for. Pure planning over the
//! layer's [`FileTree`] and the read at hand; the only view of the cache is a `missing` function (the
//! chunks of a list that are not cached), so every policy is unit-tested without a kernel, a network or a
//! store. [`LazyLayer`](crate::lazyfs::LazyLayer) asks the plans and hands the chunks to the fetcher.
//!
//! - [`Readahead`]: sequential reads of a file grow a window (one read, doubling up to a maximum) and
//!   the chunks in the window ahead are fetched.
//! - [`neighbours`]: a read miss also takes the uncached whole chunks that follow it in the blob, within
//!   a budget: the next small file a starting program opens often lies right there.
//! - [`DirectoryFetch`]: once reads miss on an eighth of a directory's small files (two at least), the
//!   rest of them, once per directory: an interpreter importing a package pays one round trip for it.
//! - [`prefetch`] and [`background_batches`]: what a mounted layer fetches on its own, the prioritized
//!   files first (before `.prefetch.landmark`), then everything else in blob order, in bounded requests.

use std::collections::{HashMap, HashSet};

use crate::format::tree::{ChunkRef, FileTree, Ino, Node, NodeKind};

/// A directory fetch starts once the reads have missed on this share of the directory's small files
/// (and on two at least): the first may be a lone file, a program going through the directory keeps
/// coming back.
pub const DIRECTORY_FETCH_SHARE: usize = 8;

/// A directory fetch takes the files of at most this many compressed bytes each (the many small files
/// an interpreter imports, not a library next to them).
pub const DIRECTORY_FETCH_FILE_BYTES: u64 = 256 << 10;

/// The compressed bytes of `chunks` in the blob.
pub fn compressed_bytes(chunks: &[ChunkRef]) -> u64 {
    chunks
        .iter()
        .map(|c| c.compressed.end - c.compressed.start)
        .sum()
}

/// Sequential-read detection, per file.
#[derive(Debug, Default)]
pub struct Readahead {
    files: HashMap<Ino, Sequential>,
}

#[derive(Debug, Clone, Copy)]
struct Sequential {
    next_offset: u64,
    window: u64,
}

impl Readahead {
    /// Records the read of `[start, end)` of `node` and returns the uncached chunks of the readahead
    /// window after it: a read that starts where the last one ended doubles the window (from the read's
    /// size, up to `max` bytes); any other read resets it.
    pub fn plan(
        &mut self,
        node: &Node,
        start: u64,
        end: u64,
        max: u64,
        missing: impl FnOnce(&[ChunkRef]) -> Vec<ChunkRef>,
    ) -> Vec<ChunkRef> {
        if max == 0 {
            return Vec::new();
        }
        let state = self.files.entry(node.ino).or_insert(Sequential {
            next_offset: u64::MAX,
            window: 0,
        });
        let window = if state.next_offset == start {
            (state.window.max(end - start) * 2).min(max)
        } else {
            0
        };
        *state = Sequential {
            next_offset: end,
            window,
        };
        if window == 0 || end >= node.size {
            return Vec::new();
        }
        let ahead_end = end.saturating_add(window).min(node.size);
        missing(node.chunks_covering(end, ahead_end - end))
    }
}

/// For a read that misses up to blob offset `last`: the uncached chunks that follow it in `blob_order`
/// (every distinct chunk of the layer, by blob offset), as many whole chunks as fit in `budget`
/// compressed bytes.
pub fn neighbours(
    blob_order: &[ChunkRef],
    last: u64,
    budget: u64,
    missing: impl FnOnce(&[ChunkRef]) -> Vec<ChunkRef>,
) -> Vec<ChunkRef> {
    let first = blob_order.partition_point(|c| c.compressed.start < last);
    let mut taken = 0;
    let following: Vec<ChunkRef> = blob_order[first..]
        .iter()
        .take_while(|c| {
            // Whole chunks within the budget: one large chunk next door is not worth a wait.
            taken += c.compressed.end - c.compressed.start;
            taken <= budget
        })
        .cloned()
        .collect();
    missing(&following)
}

/// Every distinct chunk of `tree`, in blob order.
pub fn blob_order(tree: &FileTree) -> Vec<ChunkRef> {
    let mut chunks: Vec<ChunkRef> = tree
        .nodes()
        .flat_map(|node| node.chunks.iter().cloned())
        .collect();
    chunks.sort_by_key(|c| c.compressed.start);
    chunks.dedup_by_key(|c| c.compressed.start);
    chunks
}

/// Each directory's progress towards its one directory fetch.
#[derive(Debug, Default)]
pub struct DirectoryFetch {
    dirs: HashMap<Ino, DirectoryMisses>,
}

/// A directory's progress towards its one directory fetch.
#[derive(Debug)]
enum DirectoryMisses {
    /// The small files reads missed on so far, and how many make the fetch.
    Counting {
        files: HashSet<Ino>,
        trigger: usize,
    },
    Fetched,
}

/// A regular file small enough for a directory fetch.
fn is_small_file(node: &Node) -> bool {
    node.kind == NodeKind::File
        && !node.chunks.is_empty()
        && compressed_bytes(&node.chunks) <= DIRECTORY_FETCH_FILE_BYTES
}

impl DirectoryFetch {
    /// Records a read miss in `node`. Once the reads have missed on a [`DIRECTORY_FETCH_SHARE`]th of
    /// its directory's small regular files (at most [`DIRECTORY_FETCH_FILE_BYTES`] compressed each; two
    /// at least), and once per directory: the uncached chunks of the directory's other small files,
    /// whole files in blob order within `budget` compressed bytes. Empty otherwise.
    pub fn plan(
        &mut self,
        tree: &FileTree,
        node: &Node,
        budget: u64,
        missing: impl Fn(&[ChunkRef]) -> Vec<ChunkRef>,
    ) -> Vec<ChunkRef> {
        if !is_small_file(node) {
            // A large file's reads say nothing about its directory.
            return Vec::new();
        }
        let Some(dir) = tree.parent(node.ino) else {
            return Vec::new();
        };
        let siblings = || {
            tree.children(dir)
                .iter()
                .filter_map(|(_, ino)| tree.node(*ino))
                .filter(|n| is_small_file(n))
        };
        let state = self
            .dirs
            .entry(dir)
            .or_insert_with(|| DirectoryMisses::Counting {
                files: HashSet::new(),
                trigger: (siblings().count() / DIRECTORY_FETCH_SHARE).max(2),
            });
        let DirectoryMisses::Counting { files, trigger } = state else {
            return Vec::new();
        };
        files.insert(node.ino);
        if files.len() < *trigger {
            return Vec::new();
        }
        *state = DirectoryMisses::Fetched;
        let mut files: Vec<&Node> = siblings().filter(|n| n.ino != node.ino).collect();
        files.sort_by_key(|sibling| sibling.chunks[0].compressed.start);
        let mut taken = 0;
        let mut wanted = Vec::new();
        for sibling in files {
            let uncached = missing(&sibling.chunks);
            let size = compressed_bytes(&uncached);
            if size == 0 {
                continue;
            }
            if taken + size > budget {
                break;
            }
            taken += size;
            wanted.extend(uncached);
        }
        wanted
    }
}

/// The chunks of the prioritized files (those before `.prefetch.landmark`), in the TOC's order.
pub fn prefetch(tree: &FileTree) -> Vec<ChunkRef> {
    tree.prefetch_inodes()
        .into_iter()
        .filter_map(|ino| tree.node(ino))
        .flat_map(|node| node.chunks.iter().cloned())
        .collect()
}

/// Every uncached chunk of `tree`, in blob order, cut into batches of at most `max_batch_bytes`
/// compressed bytes (a batch holds one chunk at least): the requests of background fetching.
pub fn background_batches(
    tree: &FileTree,
    max_batch_bytes: u64,
    missing: impl FnOnce(&[ChunkRef]) -> Vec<ChunkRef>,
) -> Vec<Vec<ChunkRef>> {
    let mut all: Vec<ChunkRef> = tree
        .nodes()
        .flat_map(|node| node.chunks.iter().cloned())
        .collect();
    all.sort_by_key(|c| c.compressed.start);
    all.dedup_by_key(|c| c.digest);
    let mut batches: Vec<Vec<ChunkRef>> = Vec::new();
    let mut batch_bytes = 0;
    for chunk in missing(&all) {
        let len = chunk.compressed.end - chunk.compressed.start;
        match batches.last_mut() {
            Some(batch) if batch_bytes + len <= max_batch_bytes => batch.push(chunk),
            _ => {
                batch_bytes = 0;
                batches.push(vec![chunk]);
            }
        }
        batch_bytes += len;
    }
    batches
}
