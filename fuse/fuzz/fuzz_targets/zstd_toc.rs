//! The zstd:chunked manifest-position annotation and compressed TOC. The first line of the input is
//! the annotation value, the rest the TOC region.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::toc::Limits;
use skiff_fuse::format::tree::FileTree;
use skiff_fuse::format::zstd_chunked::{self, ManifestPosition, MANIFEST_TYPE_CRFS};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_toc_bytes: 4 << 20,
        max_entries: 100_000,
        ..Limits::default()
    };
    let (annotation, region) = match data.iter().position(|&b| b == b'\n') {
        Some(newline) => (&data[..newline], &data[newline + 1..]),
        None => (data, &[][..]),
    };
    let parsed = zstd_chunked::parse_manifest_position(&String::from_utf8_lossy(annotation));
    let position = match parsed {
        Ok(position) => ManifestPosition {
            length: region.len() as u64,
            ..position
        },
        Err(_) => ManifestPosition {
            offset: 8,
            length: region.len() as u64,
            uncompressed_length: (region.len() as u64).saturating_mul(8),
            kind: MANIFEST_TYPE_CRFS,
        },
    };
    if let Ok((toc, _)) = zstd_chunked::parse_toc(region, &position, &limits) {
        if let Ok(tree) = FileTree::build(&toc, Compression::Zstd, position.payload_end(), &limits)
        {
            tree.check_invariants().unwrap();
        }
    }
});
