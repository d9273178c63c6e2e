//! The fetch policies as plain functions over a layer's tree (built from a hand-made eStargz blob) and a
//! `missing` function standing in for the cache: no kernel, no network, no store.

mod format_common;

use std::collections::HashSet;

use format_common::*;
use skiff_fuse::fetch::policy::{
    background_batches, blob_order, compressed_bytes, neighbours, prefetch, DirectoryFetch,
    Readahead,
};
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::estargz;
use skiff_fuse::format::toc::Limits;
use skiff_fuse::format::tree::{ChunkRef, FileTree, Node};
use skiff_types::Digest;

fn tree_of(items: &[Item], chunk_size: usize) -> FileTree {
    let blob = build_estargz(items, chunk_size);
    let bytes = &blob.bytes;
    let footer = estargz::parse_footer(&bytes[bytes.len() - 51..]).unwrap();
    let range = footer.toc_range(bytes.len() as u64).unwrap();
    let (toc, _) = estargz::parse_toc(
        &bytes[range.start as usize..range.end as usize],
        &Limits::default(),
    )
    .unwrap();
    FileTree::build(
        &toc,
        Compression::Gzip,
        footer.toc_offset,
        &Limits::default(),
    )
    .unwrap()
}

fn node<'a>(tree: &'a FileTree, path: &str) -> &'a Node {
    tree.node(resolve(tree, path).unwrap()).unwrap()
}

/// Nothing is cached.
fn all_missing(chunks: &[ChunkRef]) -> Vec<ChunkRef> {
    chunks.to_vec()
}

fn digests(chunks: &[ChunkRef]) -> HashSet<Digest> {
    chunks.iter().map(|c| c.digest).collect()
}

#[test]
fn readahead_grows_on_sequential_reads_and_resets_otherwise() {
    let tree = tree_of(
        &[Item::File("big", 0o644, pseudo_random(64 << 10, 1))],
        4096,
    );
    let big = node(&tree, "big");
    let mut readahead = Readahead::default();
    // The first read sets the position; nothing is read ahead yet.
    assert!(readahead
        .plan(big, 0, 4096, 1 << 20, all_missing)
        .is_empty());
    // A sequential read: twice its size ahead.
    let ahead = readahead.plan(big, 4096, 8192, 1 << 20, all_missing);
    assert_eq!(ahead, big.chunks_covering(8192, 8192));
    // The next one doubles the window, capped by the maximum.
    let ahead = readahead.plan(big, 8192, 12288, 12288, all_missing);
    assert_eq!(ahead, big.chunks_covering(12288, 12288));
    // A jump resets it; a disabled readahead plans nothing.
    assert!(readahead
        .plan(big, 40960, 45056, 1 << 20, all_missing)
        .is_empty());
    assert!(Readahead::default()
        .plan(big, 0, 4096, 0, all_missing)
        .is_empty());
    // Cached chunks are not fetched again.
    readahead.plan(big, 0, 4096, 1 << 20, all_missing);
    assert!(readahead
        .plan(big, 4096, 8192, 1 << 20, |_| Vec::new())
        .is_empty());
}

#[test]
fn neighbours_are_whole_following_chunks_within_the_budget() {
    let items: Vec<Item> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, name)| Item::File(name, 0o644, pseudo_random(3000, i as u64)))
        .collect();
    let tree = tree_of(&items, 4096);
    let order = blob_order(&tree);
    let a = node(&tree, "a");
    let last = a.chunks.last().unwrap().compressed.end;
    let one = order
        .iter()
        .find(|c| c.compressed.start >= last)
        .unwrap()
        .clone();
    let size = one.compressed.end - one.compressed.start;
    // A budget of exactly the next chunk takes it, and no part of the one after.
    assert_eq!(
        neighbours(&order, last, size, all_missing),
        std::slice::from_ref(&one)
    );
    assert!(neighbours(&order, last, size - 1, all_missing).is_empty());
    let all = neighbours(&order, last, u64::MAX, all_missing);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|c| c.compressed.start >= last));
    // Only what is missing.
    let without_first =
        |chunks: &[ChunkRef]| chunks.iter().filter(|c| **c != one).cloned().collect();
    assert_eq!(neighbours(&order, last, u64::MAX, without_first).len(), 2);
}

#[test]
fn a_directory_fetch_comes_once_after_misses_on_an_eighth_of_its_small_files() {
    let mut items = vec![Item::Dir("pkg/", 0o755)];
    let names: Vec<&'static str> = (0..24)
        .map(|i| &*Box::leak(format!("pkg/m{i:02}.py").into_boxed_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        items.push(Item::File(name, 0o644, pseudo_random(500, i as u64)));
    }
    items.push(Item::File(
        "pkg/large.so",
        0o644,
        pseudo_random(600 << 10, 99),
    ));
    items.push(Item::File("other/x.py", 0o644, pseudo_random(500, 77)));
    let tree = tree_of(&items, 1 << 20);
    let mut fetch = DirectoryFetch::default();
    // 24 small files: the third distinct miss (24 / 8 = 3) triggers; a repeat miss does not count.
    assert!(fetch
        .plan(&tree, node(&tree, names[0]), 1 << 20, all_missing)
        .is_empty());
    assert!(fetch
        .plan(&tree, node(&tree, names[0]), 1 << 20, all_missing)
        .is_empty());
    // A large file's miss says nothing about its directory.
    assert!(fetch
        .plan(&tree, node(&tree, "pkg/large.so"), 1 << 20, all_missing)
        .is_empty());
    assert!(fetch
        .plan(&tree, node(&tree, names[1]), 1 << 20, all_missing)
        .is_empty());
    let wanted = fetch.plan(&tree, node(&tree, names[2]), 1 << 20, all_missing);
    // The other small files of the directory, nothing else.
    let expected: HashSet<Digest> = names
        .iter()
        .filter(|name| **name != names[2])
        .flat_map(|name| node(&tree, name).chunks.clone())
        .map(|c| c.digest)
        .collect();
    assert_eq!(digests(&wanted), expected);
    // Once per directory.
    assert!(fetch
        .plan(&tree, node(&tree, names[3]), 1 << 20, all_missing)
        .is_empty());

    // Whole files in blob order within the budget.
    let mut fetch = DirectoryFetch::default();
    let one_file = compressed_bytes(&node(&tree, names[5]).chunks);
    for name in &names[..2] {
        fetch.plan(&tree, node(&tree, name), one_file * 2, all_missing);
    }
    let wanted = fetch.plan(&tree, node(&tree, names[2]), one_file * 2, all_missing);
    assert!(compressed_bytes(&wanted) <= one_file * 2, "{wanted:?}");
    assert!(!wanted.is_empty());
}

#[test]
fn prefetch_takes_the_files_before_the_landmark_and_background_batches_the_rest() {
    let tree = tree_of(&sample_items(true), 4096);
    let hosts = node(&tree, "etc/hosts");
    assert_eq!(prefetch(&tree), hosts.chunks);
    assert!(prefetch(&tree_of(&sample_items(false), 4096)).is_empty());

    let order = blob_order(&tree);
    let largest = order
        .iter()
        .map(|c| c.compressed.end - c.compressed.start)
        .max()
        .unwrap();
    let batches = background_batches(&tree, largest, all_missing);
    let all: Vec<ChunkRef> = batches.iter().flatten().cloned().collect();
    // Every distinct chunk once, in blob order, each batch within the limit.
    assert_eq!(digests(&all), digests(&order));
    assert_eq!(all.len(), digests(&all).len());
    assert!(all
        .windows(2)
        .all(|w| w[0].compressed.start < w[1].compressed.start));
    assert!(batches
        .iter()
        .all(|b| !b.is_empty() && compressed_bytes(b) <= largest));
    // A limit below one chunk still makes progress: one chunk a batch.
    let tiny = background_batches(&tree, 1, all_missing);
    assert!(tiny.iter().all(|b| b.len() == 1));
    // Nothing missing, nothing to do.
    assert!(background_batches(&tree, largest, |_| Vec::new()).is_empty());
}
