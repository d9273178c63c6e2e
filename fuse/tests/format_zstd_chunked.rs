//! A zstd:chunked blob built by hand the way containers/storage lays it out (a zstd frame per chunk,
//! header frames, the TOC in a skippable frame, tar-split, the footer) read back through the format
//! module: annotations → TOC → tree → every chunk decompressed from the blob bytes and verified.

mod format_common;

use format_common::*;
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::toc::Limits;
use skiff_fuse::format::tree::{FileTree, NodeKind};
use skiff_fuse::format::zstd_chunked::{self, parse_manifest_position};
use skiff_fuse::format::FormatError;

fn open(blob: &[u8], position: &str) -> Result<(FileTree, String), FormatError> {
    let position = parse_manifest_position(position)?;
    let range = position.range();
    let region =
        blob.get(range.start as usize..range.end as usize)
            .ok_or(FormatError::TocRegionSize {
                expected: position.length,
                actual: 0,
            })?;
    let (toc, digest) = zstd_chunked::parse_toc(region, &position, &Limits::default())?;
    let tree = FileTree::build(
        &toc,
        Compression::Zstd,
        position.payload_end(),
        &Limits::default(),
    )?;
    tree.check_invariants().unwrap();
    Ok((tree, digest.to_string()))
}

#[test]
fn the_blob_is_an_ordinary_zstd_tar() {
    let blob = build_zstd_chunked(&sample_items(false), 4096);
    // A plain zstd decoder skips the skippable frames and sees the tar stream.
    let tar = zstd::decode_all(&blob.bytes[..]).unwrap();
    assert_eq!(tar.len() % 512, 0);
    assert!(tar.windows(9).any(|w| w == b"etc/hosts"));
}

#[test]
fn annotations_toc_tree_and_every_chunk() {
    let items = sample_items(false);
    let blob = build_zstd_chunked(&items, 4096);
    let (tree, digest) = open(&blob.bytes, &blob.manifest_position).unwrap();
    assert_eq!(digest, blob.manifest_checksum);

    for item in &items {
        let Item::File(name, mode, data) = item else {
            continue;
        };
        if name.contains(".wh.") {
            continue;
        }
        let ino = resolve(&tree, name).unwrap_or_else(|| panic!("{name} missing"));
        let node = tree.node(ino).unwrap();
        assert_eq!(
            (node.kind, node.mode, node.size),
            (NodeKind::File, *mode, data.len() as u64)
        );
        assert_eq!(node.mtime, (MTIME as i64, 1));
        assert_eq!(&read_file(&tree, &blob.bytes, ino), data, "{name}");
    }
    let big = tree.node(resolve(&tree, "bin/big").unwrap()).unwrap();
    assert_eq!(big.chunks.len(), 3);
    assert_eq!(big.nlink, 2);
    // Each chunk's range is exactly its frame: consecutive chunks touch.
    assert_eq!(big.chunks[0].compressed.end, big.chunks[1].compressed.start);
    let zeros = tree.node(resolve(&tree, "zeros").unwrap()).unwrap();
    assert_eq!(zeros.chunks.len(), 2);
    let old = tree.node(resolve(&tree, "etc/old").unwrap()).unwrap();
    assert_eq!(old.kind, NodeKind::CharDevice);
    let var = tree.node(resolve(&tree, "var").unwrap()).unwrap();
    assert!(var.xattrs.contains_key(&b"trusted.overlay.opaque"[..]));
    assert!(tree.prefetch_inodes().is_empty());
    // No chunk reaches into the TOC's skippable frame.
    let payload_end = parse_manifest_position(&blob.manifest_position)
        .unwrap()
        .payload_end();
    assert!(tree
        .nodes()
        .flat_map(|n| n.chunks.iter())
        .all(|c| c.compressed.end <= payload_end));
}

#[test]
fn single_chunk_files() {
    let blob = build_zstd_chunked(&sample_items(false), 1 << 20);
    let (tree, _) = open(&blob.bytes, &blob.manifest_position).unwrap();
    let ino = resolve(&tree, "bin/big").unwrap();
    let node = tree.node(ino).unwrap();
    assert_eq!(node.chunks.len(), 1);
    assert_eq!(Some(node.chunks[0].digest), node.file_digest);
    assert_eq!(read_file(&tree, &blob.bytes, ino), pseudo_random(10_000, 7));
}

#[test]
fn wrong_annotations_fail_cleanly() {
    let blob = build_zstd_chunked(&sample_items(false), 4096);
    let position = parse_manifest_position(&blob.manifest_position).unwrap();
    let shifted = format!(
        "{}:{}:{}:1",
        position.offset - 8,
        position.length,
        position.uncompressed_length
    );
    // The skippable frame header is not part of the compressed TOC.
    match open(&blob.bytes, &shifted) {
        Err(_) => {}
        Ok((_, digest)) => assert_ne!(digest, blob.manifest_checksum),
    }
    let wrong_size = format!(
        "{}:{}:{}:1",
        position.offset,
        position.length,
        position.uncompressed_length + 1
    );
    assert!(matches!(
        open(&blob.bytes, &wrong_size),
        Err(FormatError::SizeMismatch { .. })
    ));
    let beyond = format!(
        "{}:{}:{}:1",
        blob.bytes.len(),
        position.length,
        position.uncompressed_length
    );
    assert!(open(&blob.bytes, &beyond).is_err());
    assert!(open(&blob.bytes, "garbage").is_err());
    let mut corrupt = blob.bytes.clone();
    corrupt[position.offset as usize + position.length as usize / 2] ^= 0x01;
    match open(&corrupt, &blob.manifest_position) {
        Err(_) => {}
        Ok((_, digest)) => assert_ne!(digest, blob.manifest_checksum),
    }
}
