//! TOC JSON → file tree, walking every listing and chunk lookup of what builds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_fuse::format::chunk::Compression;
use skiff_fuse::format::toc::{parse_toc_json, Limits};
use skiff_fuse::format::tree::FileTree;

fuzz_target!(|json: &[u8]| {
    let limits = Limits {
        max_toc_bytes: 4 << 20,
        max_entries: 100_000,
        ..Limits::default()
    };
    let Ok(toc) = parse_toc_json(json, &limits) else {
        return;
    };
    for compression in [Compression::Gzip, Compression::Zstd] {
        let Ok(tree) = FileTree::build(&toc, compression, 1 << 20, &limits) else {
            return;
        };
        tree.check_invariants().unwrap();
        for ino in 1..=tree.len() as u64 {
            for (name, child) in tree.children(ino) {
                assert_eq!(tree.lookup(ino, name), Some(*child));
            }
            let _ = tree.path_of(ino);
            let node = tree.node(ino).unwrap();
            let _ = node.chunks_covering(node.size / 3, node.size / 2 + 1);
        }
    }
});
