//! Stable-Rust fuzzing of every format parser: seeded, deterministic mutations of real blobs plus
//! random and structure-aware inputs, asserting that nothing panics, that successes keep their
//! promises (exact chunk sizes, tree invariants) and that each target stays within its time slice.
//! The libFuzzer targets in `fuse/fuzz/` cover the same entry points with coverage guidance.

mod format_common;

use std::time::{Duration, Instant};

use format_common::*;
use serde_json::{json, Value};
use skiff_fuse::format::chunk::{decompress_chunk, Compression};
use skiff_fuse::format::toc::{parse_toc_json, Limits, Toc, TocEntry};
use skiff_fuse::format::tree::FileTree;
use skiff_fuse::format::{estargz, zstd_chunked};

/// Wall-clock budget of one target; the sequence of inputs is fixed, only how far we get varies.
const SLICE: Duration = Duration::from_millis(1500);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const INTERESTING: &[u8] = b"\x00\xff\x7f\x80\x01\x1f\x8b\x08\x04019af:\"{}[],/. Z+-";

/// Applies a few random edits to `seed`.
fn mutate(rng: &mut Rng, seed: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = *rng.pick(INTERESTING);
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let insert = rng.bytes(n);
                data.splice(i..i, insert);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                data.drain(start..end);
            }
            5 => data.truncate(rng.below(len + 1)),
            6 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let copy = data[start..end].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            7 if !others.is_empty() => {
                let other = rng.pick(others);
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(256)).min(other.len());
                    let at = rng.below(len + 1);
                    data.splice(at..at, other[start..end].iter().copied());
                }
            }
            _ => {
                // Rewrite a little-endian or ASCII-decimal number somewhere.
                if len >= 8 {
                    let at = rng.below(len - 7);
                    let random = rng.next();
                    let value = *rng.pick(&[0u64, 1, 51, 47, u32::MAX as u64, u64::MAX, random]);
                    data[at..at + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
        }
    }
    data
}

/// Runs `body` for up to `count` iterations or one time slice; returns the iterations done.
fn run(name: &str, count: usize, mut body: impl FnMut(&mut Rng, usize)) -> usize {
    let mut rng = Rng(0x5eed_0000 ^ name.len() as u64 ^ (name.as_bytes()[0] as u64) << 8);
    let started = Instant::now();
    let mut done = 0;
    while done < count {
        body(&mut rng, done);
        done += 1;
        if done % 64 == 0 && started.elapsed() > SLICE {
            break;
        }
    }
    eprintln!("{name}: {done} inputs in {:?}", started.elapsed());
    done
}

fn small_limits() -> Limits {
    Limits {
        max_toc_bytes: 1 << 20,
        max_entries: 10_000,
        max_name_len: 4096,
        max_file_size: 1 << 30,
        max_chunk_size: 1 << 20,
        max_expansion: 64,
    }
}

/// Builds and checks a tree from a TOC that parsed; never panics.
fn exercise_tree(toc: &Toc, compression: Compression, payload_end: u64, rng: &mut Rng) {
    let Ok(tree) = FileTree::build(toc, compression, payload_end, &small_limits()) else {
        return;
    };
    if let Err(broken) = tree.check_invariants() {
        panic!("tree invariant broken: {broken}\ntoc: {toc:#?}");
    }
    for ino in 1..=tree.len() as u64 {
        let node = tree.node(ino).unwrap();
        for (name, child) in tree.children(ino) {
            assert_eq!(tree.lookup(ino, name), Some(*child));
        }
        let path = tree.path_of(ino);
        assert!(path.starts_with(b"/"));
        let offset = rng.next() % (node.size + 2);
        let len = rng.next() % (node.size + 2);
        for chunk in node.chunks_covering(offset, len) {
            assert!(chunk.file_offset < offset + len && offset < chunk.file_offset + chunk.size);
        }
    }
    assert!(tree.lookup(u64::MAX, b"x").is_none());
    assert!(tree.children(0).is_empty());
}

#[test]
fn fuzz_estargz_footer() {
    let footers: Vec<Vec<u8>> = [0u64, 51, 0x7fff_ffff_ffff_ffff, 123_456]
        .iter()
        .map(|&o| estargz_footer(o))
        .collect();
    let seeds: Vec<&[u8]> = footers.iter().map(Vec::as_slice).collect();
    let done = run("estargz_footer", 500_000, |rng, i| {
        let input = if i % 10 == 0 {
            let n = rng.below(120);
            rng.bytes(n)
        } else {
            let n = rng.below(8);
            let mut tail = rng.bytes(n);
            let seed = rng.pick(&seeds);
            tail.extend(mutate(rng, seed, &seeds));
            tail
        };
        if let Ok(footer) = estargz::parse_footer(&input) {
            assert!(footer.footer_size == 51 || footer.footer_size == 47);
            let _ = footer.toc_range(rng.next() % 1_000_000);
        }
    });
    assert!(done > 1000);
}

#[test]
fn fuzz_estargz_toc() {
    let blob = build_estargz(&sample_items(true), 4096);
    let region = &blob.bytes[blob.toc_offset as usize..blob.bytes.len() - 51];
    let seeds: Vec<&[u8]> = vec![region, &blob.bytes];
    let done = run("estargz_toc", 100_000, |rng, _| {
        let input = mutate(rng, region, &seeds);
        if let Ok((toc, digest)) = estargz::parse_toc(&input, &small_limits()) {
            let digest = digest.to_string();
            assert!(digest.starts_with("sha256:") && digest.len() == 71);
            exercise_tree(&toc, Compression::Gzip, blob.toc_offset, rng);
        }
    });
    assert!(done > 100);
}

#[test]
fn fuzz_zstd_chunked_toc() {
    let blob = build_zstd_chunked(&sample_items(false), 4096);
    let position = zstd_chunked::parse_manifest_position(&blob.manifest_position).unwrap();
    let region = &blob.bytes[position.range().start as usize..position.range().end as usize];
    let seeds: Vec<&[u8]> = vec![region, blob.manifest_position.as_bytes()];
    let done = run("zstd_chunked_toc", 100_000, |rng, i| {
        if i % 4 == 0 {
            let text = mutate(rng, blob.manifest_position.as_bytes(), &seeds);
            if let Ok(p) = zstd_chunked::parse_manifest_position(&String::from_utf8_lossy(&text)) {
                assert_eq!(p.kind, 1);
                assert!(p.range().start <= p.range().end);
            }
            return;
        }
        let input = mutate(rng, region, &seeds);
        let mut p = position;
        p.length = input.len() as u64;
        if rng.below(4) == 0 {
            p.uncompressed_length = rng.next() % (2 * position.uncompressed_length);
        }
        if let Ok((toc, _)) = zstd_chunked::parse_toc(&input, &p, &small_limits()) {
            exercise_tree(&toc, Compression::Zstd, p.payload_end(), rng);
        }
    });
    assert!(done > 100);
}

#[test]
fn fuzz_toc_json_and_tree() {
    let estargz_blob = build_estargz(&sample_items(true), 4096);
    let zstd_blob = build_zstd_chunked(&sample_items(false), 4096);
    let seeds: Vec<&[u8]> = vec![&estargz_blob.toc_json, &zstd_blob.toc_json];
    let done = run("toc_json_tree", 100_000, |rng, _| {
        let seed = rng.pick(&seeds);
        let input = mutate(rng, seed, &seeds);
        if let Ok(toc) = parse_toc_json(&input, &small_limits()) {
            exercise_tree(&toc, Compression::Gzip, estargz_blob.toc_offset, rng);
        }
    });
    assert!(done > 100);
}

/// Random TOCs made of tricky names, kinds and numbers: exercises the tree rules far more than
/// byte mutations of JSON do.
#[test]
fn fuzz_structured_tree() {
    let long = "n".repeat(300);
    let names: Vec<&str> = vec![
        "",
        ".",
        "./",
        "/",
        "a",
        "a/",
        "./a/b",
        "a/b/c",
        "b",
        "a//b",
        "../x",
        "a/../b",
        ".wh.a",
        "a/.wh.b",
        ".wh..wh..opq",
        "a/.wh..wh..opq",
        ".prefetch.landmark",
        ".no.prefetch.landmark",
        "stargz.index.json",
        ".wh..wh.plnk",
        "c/d/e/f",
        "x\u{0}y",
        "a/.wh.",
        &long,
        "a/b",
        "b/c",
        "f",
    ];
    let kinds = [
        "dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk",
    ];
    let good = |b: u8| format!("sha256:{}", hex::encode([b; 32]));
    let digests = [
        good(1),
        good(2),
        String::new(),
        "sha256:zz".into(),
        "md5:00".into(),
        "ab".repeat(32),
    ];
    let numbers = [
        0u64,
        1,
        2,
        4,
        10,
        100,
        999,
        1000,
        4096,
        1 << 32,
        u64::MAX / 2,
        u64::MAX,
    ];
    let times = [
        "",
        "2021-01-02T03:04:05Z",
        "2021-01-02T03:04:05.5-07:00",
        "not a time",
        "1969-12-31T23:59:59Z",
    ];
    let done = run("structured_tree", 150_000, |rng, _| {
        let count = rng.below(12);
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let mut e = json!({
                "name": rng.pick(&names),
                "type": rng.pick(&kinds),
            });
            let obj = e.as_object_mut().unwrap();
            for (key, chance) in [
                ("size", 2),
                ("offset", 2),
                ("endOffset", 4),
                ("chunkOffset", 3),
                ("chunkSize", 3),
                ("uid", 6),
                ("gid", 6),
                ("devMajor", 6),
                ("mode", 3),
                ("innerOffset", 20),
            ] {
                if rng.below(chance) == 0 {
                    obj.insert(key.into(), json!(rng.pick(&numbers)));
                }
            }
            for (key, chance) in [("digest", 2), ("chunkDigest", 2)] {
                if rng.below(chance) == 0 {
                    obj.insert(key.into(), json!(rng.pick(&digests)));
                }
            }
            if rng.below(2) == 0 {
                obj.insert("linkName".into(), json!(rng.pick(&names)));
            }
            if rng.below(3) == 0 {
                obj.insert("modtime".into(), json!(rng.pick(&times)));
            }
            if rng.below(8) == 0 {
                obj.insert(
                    "xattrs".into(),
                    json!({"user.x": *rng.pick(&["YQ==", "YQ", "!!", ""])}),
                );
            }
            entries.push(serde_json::from_value::<TocEntry>(Value::Object(obj.clone())).unwrap());
        }
        let toc = Toc {
            version: 1,
            entries,
        };
        let compression = *rng.pick(&[Compression::Gzip, Compression::Zstd]);
        exercise_tree(
            &toc,
            compression,
            *rng.pick(&[0, 50, 1000, 5000, u64::MAX]),
            rng,
        );
    });
    assert!(done > 1000);
}

/// The chunks of a built blob: where they start and how big they are.
fn chunk_starts(toc_json: &[u8], compression: Compression, payload_end: u64) -> Vec<(usize, u64)> {
    let toc = parse_toc_json(toc_json, &small_limits()).unwrap();
    let tree = FileTree::build(&toc, compression, payload_end, &small_limits()).unwrap();
    tree.nodes()
        .flat_map(|n| n.chunks.iter())
        .map(|c| (c.compressed.start as usize, c.size))
        .collect()
}

#[test]
fn fuzz_decompress_chunk() {
    let estargz_blob = build_estargz(&sample_items(false), 4096);
    let zstd_blob = build_zstd_chunked(&sample_items(false), 4096);
    let zstd_end = zstd_chunked::parse_manifest_position(&zstd_blob.manifest_position)
        .unwrap()
        .payload_end();
    let cases = [
        (
            Compression::Gzip,
            &estargz_blob.bytes,
            chunk_starts(
                &estargz_blob.toc_json,
                Compression::Gzip,
                estargz_blob.toc_offset,
            ),
        ),
        (
            Compression::Zstd,
            &zstd_blob.bytes,
            chunk_starts(&zstd_blob.toc_json, Compression::Zstd, zstd_end),
        ),
    ];
    let done = run("decompress_chunk", 100_000, |rng, _| {
        let (compression, blob, starts) = rng.pick(&cases);
        let (start, size) = if rng.below(4) == 0 {
            (rng.below(blob.len()), rng.next() % 20_000)
        } else {
            let (start, size) = *rng.pick(starts);
            (
                start,
                if rng.below(2) == 0 {
                    size
                } else {
                    rng.next() % (2 * size + 2)
                },
            )
        };
        let end = (start + rng.below(20_000)).min(blob.len());
        let input = if rng.below(2) == 0 {
            blob[start..end].to_vec()
        } else {
            mutate(rng, &blob[start..end], &[])
        };
        if let Ok(data) = decompress_chunk(*compression, &input, size) {
            assert_eq!(data.len() as u64, size);
        }
    });
    assert!(done > 100);
}
