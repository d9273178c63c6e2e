//! The eStargz TOC region (gzip member → tar → JSON), then the tree built from what parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::estargz;
use skiff_fuse::format::toc::Limits;
use skiff_fuse::format::tree::FileTree;

fuzz_target!(|region: &[u8]| {
    let limits = Limits {
        max_toc_bytes: 4 << 20,
        max_entries: 100_000,
        ..Limits::default()
    };
    if let Ok((toc, digest)) = estargz::parse_toc(region, &limits) {
        assert!(digest.starts_with("sha256:"));
        if let Ok(tree) = FileTree::build(&toc, Compression::Gzip, 1 << 30, &limits) {
            tree.check_invariants().unwrap();
        }
    }
});
