//! An eStargz blob built by hand (gzip member per chunk, TOC member, footer) read back through the
//! format module: footer → TOC → tree → every chunk decompressed from the blob bytes and verified.

mod format_common;

use std::io::Read;

use format_common::*;
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::estargz::{self, FOOTER_SIZE};
use skiff_fuse::format::toc::Limits;
use skiff_fuse::format::tree::{FileTree, NodeKind};
use skiff_fuse::format::FormatError;

fn open(blob: &[u8]) -> Result<(FileTree, String), FormatError> {
    let tail = &blob[blob.len().saturating_sub(4096)..];
    let footer = estargz::parse_footer(tail)?;
    let range = footer.toc_range(blob.len() as u64)?;
    let (toc, digest) = estargz::parse_toc(
        &blob[range.start as usize..range.end as usize],
        &Limits::default(),
    )?;
    let tree = FileTree::build(
        &toc,
        Compression::Gzip,
        footer.toc_offset,
        &Limits::default(),
    )?;
    tree.check_invariants().unwrap();
    Ok((tree, digest.to_string()))
}

#[test]
fn the_blob_is_an_ordinary_gzip_tar() {
    let blob = build_estargz(&sample_items(true), 4096);
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob.bytes[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(tar.len() % 512, 0);
    assert!(tar.windows(17).any(|w| w == b"stargz.index.json"));
}

#[test]
fn footer_toc_tree_and_every_chunk() {
    let items = sample_items(true);
    let blob = build_estargz(&items, 4096);
    let (tree, digest) = open(&blob.bytes).unwrap();
    assert_eq!(digest, blob.toc_digest);

    for item in &items {
        let Item::File(name, mode, data) = item else {
            continue;
        };
        if name.contains(".wh.") || *name == ".prefetch.landmark" {
            continue;
        }
        let ino = resolve(&tree, name).unwrap_or_else(|| panic!("{name} missing"));
        let node = tree.node(ino).unwrap();
        assert_eq!(node.kind, NodeKind::File, "{name}");
        assert_eq!(node.mode, *mode, "{name}");
        assert_eq!((node.uid, node.gid), (UID as u32, GID as u32));
        assert_eq!(node.mtime, (MTIME as i64, 0));
        assert_eq!(node.size, data.len() as u64);
        assert_eq!(&read_file(&tree, &blob.bytes, ino), data, "{name}");
    }

    let big = tree.node(resolve(&tree, "bin/big").unwrap()).unwrap();
    assert_eq!(big.chunks.len(), 3);
    assert_eq!(big.chunks[2].size, 10_000 - 8192);
    assert_eq!(big.nlink, 2);
    assert_eq!(resolve(&tree, "bin/big2"), Some(big.ino));
    // Chunk ranges are ordered and the last one of the blob ends at the TOC.
    let last_chunk_end = tree
        .nodes()
        .flat_map(|n| n.chunks.iter())
        .map(|c| c.compressed.end)
        .max()
        .unwrap();
    assert_eq!(last_chunk_end, blob.toc_offset);

    let sh = tree.node(resolve(&tree, "bin/sh").unwrap()).unwrap();
    assert_eq!(sh.link_target.as_deref(), Some(&b"big"[..]));
    let null = tree.node(resolve(&tree, "dev/null").unwrap()).unwrap();
    assert_eq!(
        (null.kind, null.rdev_major, null.rdev_minor),
        (NodeKind::CharDevice, 1, 3)
    );
    assert_eq!(
        tree.node(resolve(&tree, "run/fifo").unwrap()).unwrap().kind,
        NodeKind::Fifo
    );
    let old = tree.node(resolve(&tree, "etc/old").unwrap()).unwrap();
    assert_eq!(
        (old.kind, old.mode, old.rdev_major),
        (NodeKind::CharDevice, 0, 0)
    );
    let var = tree.node(resolve(&tree, "var").unwrap()).unwrap();
    assert_eq!(
        var.xattrs
            .get(&b"trusted.overlay.opaque"[..])
            .map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert!(tree.children(var.ino).is_empty());
    let xattr = tree.node(resolve(&tree, "xattr").unwrap()).unwrap();
    assert_eq!(
        xattr.xattrs.get(&b"user.note"[..]).map(Vec::as_slice),
        Some(&b"hi\0there"[..])
    );
    assert!(resolve(&tree, ".prefetch.landmark").is_none());

    assert_eq!(
        tree.prefetch_inodes(),
        [resolve(&tree, "etc/hosts").unwrap()]
    );
    assert_eq!(tree.total_file_bytes(), 20 + 10_000 + 8192);
    let names: Vec<_> = tree
        .children(1)
        .iter()
        .map(|(n, _)| String::from_utf8(n.clone()).unwrap())
        .collect();
    assert_eq!(
        names,
        ["bin", "dev", "empty", "etc", "run", "var", "xattr", "zeros"]
    );
}

#[test]
fn no_landmark_means_no_prefetch() {
    let blob = build_estargz(&sample_items(false), 4096);
    let (tree, _) = open(&blob.bytes).unwrap();
    assert!(tree.prefetch_inodes().is_empty());
}

#[test]
fn single_chunk_files_with_large_chunk_size() {
    let blob = build_estargz(&sample_items(false), 1 << 20);
    let (tree, _) = open(&blob.bytes).unwrap();
    let ino = resolve(&tree, "bin/big").unwrap();
    assert_eq!(tree.node(ino).unwrap().chunks.len(), 1);
    assert_eq!(read_file(&tree, &blob.bytes, ino), pseudo_random(10_000, 7));
}

#[test]
fn legacy_footer_is_read() {
    let blob = build_estargz(&sample_items(false), 4096);
    let mut bytes = blob.bytes[..blob.bytes.len() - FOOTER_SIZE as usize].to_vec();
    let mut legacy = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
    legacy.extend_from_slice(format!("{:016x}STARGZ", blob.toc_offset).as_bytes());
    legacy.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend(legacy);
    let footer = estargz::parse_footer(&bytes[bytes.len() - 100..]).unwrap();
    assert_eq!(footer.footer_size, 47);
    let (tree, digest) = open(&bytes).unwrap();
    assert_eq!(digest, blob.toc_digest);
    assert!(resolve(&tree, "bin/big").is_some());
}

#[test]
fn damaged_blobs_fail_cleanly() {
    let blob = build_estargz(&sample_items(true), 4096);
    // Truncated: the footer is gone.
    assert!(open(&blob.bytes[..blob.bytes.len() - 10]).is_err());
    // Wrong TOC offset.
    let mut wrong = blob.bytes[..blob.bytes.len() - 51].to_vec();
    wrong.extend(estargz_footer(blob.toc_offset + 3));
    assert!(open(&wrong).is_err());
    let mut beyond = blob.bytes[..blob.bytes.len() - 51].to_vec();
    beyond.extend(estargz_footer(blob.bytes.len() as u64 * 2));
    assert!(matches!(
        open(&beyond),
        Err(FormatError::TocOffsetOutOfRange { .. })
    ));
    // A flipped bit in the TOC: an error, or (if it survives gzip) a different digest. (The TOC
    // member's CRC is not reached once the JSON is read; the digest is what protects it.)
    let toc_middle = (blob.toc_offset as usize + blob.bytes.len() - 51) / 2;
    for at in [blob.toc_offset as usize + 20, toc_middle] {
        let mut corrupt = blob.bytes.clone();
        corrupt[at] ^= 0x10;
        match open(&corrupt) {
            Err(_) => {}
            Ok((_, digest)) => assert_ne!(digest, blob.toc_digest),
        }
    }
    // A corrupt chunk never yields the original bytes undetected.
    let (tree, _) = open(&blob.bytes).unwrap();
    let big = tree.node(resolve(&tree, "bin/big").unwrap()).unwrap();
    let chunk = &big.chunks[1];
    let mut corrupt = blob.bytes.clone();
    corrupt[chunk.compressed.start as usize + 30] ^= 0xff;
    let span = &corrupt[chunk.compressed.start as usize..chunk.compressed.end as usize];
    if let Ok(data) = skiff_fuse::format::decompress_chunk(Compression::Gzip, span, chunk.size) {
        use sha2::Digest;
        assert_ne!(sha2::Sha256::digest(&data)[..], chunk.digest.as_bytes()[..]);
    }
}
