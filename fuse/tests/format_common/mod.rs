//! Builders of real eStargz and zstd:chunked blobs, written by hand from the formats' descriptions
//! (not with the code under test), shared by the `format_*` tests.
#![allow(dead_code)]

use std::io::Write;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use skiff_fuse::format::chunk::decompress_chunk;
use skiff_fuse::format::tree::{FileTree, Ino};

/// One tar entry of a test layer.
#[derive(Clone, Debug)]
pub enum Item {
    Dir(&'static str, u32),
    File(&'static str, u32, Vec<u8>),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Fifo(&'static str),
    /// A regular file carrying xattrs in the TOC.
    WithXattrs(&'static str, Vec<(&'static str, &'static [u8])>),
}

impl Item {
    fn name(&self) -> &'static str {
        match self {
            Item::Dir(n, _)
            | Item::File(n, _, _)
            | Item::Symlink(n, _)
            | Item::Hardlink(n, _)
            | Item::Char(n, _, _)
            | Item::Fifo(n)
            | Item::WithXattrs(n, _) => n,
        }
    }
}

pub const MTIME: u64 = 1_609_556_645; // 2021-01-02T03:04:05Z
pub const MTIME_RFC3339: &str = "2021-01-02T03:04:05Z";
pub const UID: u64 = 1000;
pub const GID: u64 = 100;

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (splitmix64).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// A ustar header.
fn tar_header(
    name: &str,
    typeflag: u8,
    size: u64,
    mode: u32,
    link: &str,
    dev: (u32, u32),
) -> [u8; 512] {
    fn put(h: &mut [u8], at: usize, text: &str) {
        h[at..at + text.len()].copy_from_slice(text.as_bytes());
    }
    assert!(name.len() <= 100 && link.len() <= 100);
    let mut h = [0u8; 512];
    put(&mut h, 0, name);
    put(&mut h, 100, &format!("{mode:07o}"));
    put(&mut h, 108, &format!("{UID:07o}"));
    put(&mut h, 116, &format!("{GID:07o}"));
    put(&mut h, 124, &format!("{size:011o}"));
    put(&mut h, 136, &format!("{MTIME:011o}"));
    h[156] = typeflag;
    put(&mut h, 157, link);
    put(&mut h, 257, "ustar\0");
    put(&mut h, 263, "00");
    put(&mut h, 329, &format!("{:07o}", dev.0));
    put(&mut h, 337, &format!("{:07o}", dev.1));
    put(&mut h, 148, "        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put(&mut h, 148, &format!("{sum:06o}\0 "));
    h
}

fn padding(size: usize) -> Vec<u8> {
    vec![0u8; (512 - size % 512) % 512]
}

/// The TOC entry fields and tar header of a non-regular item.
fn describe(item: &Item) -> (Map<String, Value>, [u8; 512]) {
    let mut e = Map::new();
    e.insert("name".into(), json!(item.name()));
    e.insert("modtime".into(), json!(MTIME_RFC3339));
    e.insert("uid".into(), json!(UID));
    e.insert("gid".into(), json!(GID));
    let header = match item {
        Item::Dir(n, mode) => {
            e.insert("type".into(), json!("dir"));
            e.insert("mode".into(), json!(mode));
            tar_header(n, b'5', 0, *mode, "", (0, 0))
        }
        Item::Symlink(n, target) => {
            e.insert("type".into(), json!("symlink"));
            e.insert("linkName".into(), json!(target));
            e.insert("mode".into(), json!(0o777));
            tar_header(n, b'2', 0, 0o777, target, (0, 0))
        }
        Item::Hardlink(n, target) => {
            e.insert("type".into(), json!("hardlink"));
            e.insert("linkName".into(), json!(target));
            e.insert("mode".into(), json!(0o644));
            tar_header(n, b'1', 0, 0o644, target, (0, 0))
        }
        Item::Char(n, major, minor) => {
            e.insert("type".into(), json!("char"));
            e.insert("mode".into(), json!(0o666));
            e.insert("devMajor".into(), json!(major));
            e.insert("devMinor".into(), json!(minor));
            tar_header(n, b'3', 0, 0o666, "", (*major, *minor))
        }
        Item::Fifo(n) => {
            e.insert("type".into(), json!("fifo"));
            e.insert("mode".into(), json!(0o644));
            tar_header(n, b'6', 0, 0o644, "", (0, 0))
        }
        Item::WithXattrs(n, xattrs) => {
            e.insert("type".into(), json!("reg"));
            e.insert("mode".into(), json!(0o644));
            let map: Map<String, Value> = xattrs
                .iter()
                .map(|(k, v)| {
                    use base64::Engine;
                    (
                        k.to_string(),
                        json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    )
                })
                .collect();
            e.insert("xattrs".into(), Value::Object(map));
            e.insert("digest".into(), json!(sha256_digest(b"")));
            tar_header(n, b'0', 0, 0o644, "", (0, 0))
        }
        Item::File(..) => unreachable!("regular files are written by the builders"),
    };
    (e, header)
}

/// An eStargz blob: gzip members per chunk, the TOC member, the 51-byte footer.
pub struct EstargzBlob {
    pub bytes: Vec<u8>,
    pub toc_offset: u64,
    pub toc_json: Vec<u8>,
    /// The value of the `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: String,
}

/// Writes gzip members, closing the current one on demand (like the eStargz writer).
struct GzipStream {
    out: Vec<u8>,
    member: Option<flate2::write::GzEncoder<Vec<u8>>>,
}

impl GzipStream {
    fn write(&mut self, data: &[u8]) {
        self.member
            .get_or_insert_with(|| {
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best())
            })
            .write_all(data)
            .unwrap();
    }

    fn close(&mut self) -> u64 {
        if let Some(member) = self.member.take() {
            self.out.extend(member.finish().unwrap());
        }
        self.out.len() as u64
    }
}

pub fn estargz_footer(toc_offset: u64) -> Vec<u8> {
    // gzip header with FEXTRA, XLEN 26, subfield "SG" of 22 bytes, an empty stored block, trailer.
    let mut f = vec![
        0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f.extend_from_slice(&[0u8; 8]);
    assert_eq!(f.len(), 51);
    f
}

pub fn build_estargz(items: &[Item], chunk_size: usize) -> EstargzBlob {
    let mut stream = GzipStream {
        out: Vec::new(),
        member: None,
    };
    let mut entries = Vec::new();
    for item in items {
        let Item::File(name, mode, data) = item else {
            let (entry, header) = describe(item);
            stream.write(&header);
            entries.push(Value::Object(entry));
            continue;
        };
        stream.write(&tar_header(
            name,
            b'0',
            data.len() as u64,
            *mode,
            "",
            (0, 0),
        ));
        let mut reg = Map::new();
        reg.insert("name".into(), json!(name));
        reg.insert("type".into(), json!("reg"));
        reg.insert("size".into(), json!(data.len()));
        reg.insert("modtime".into(), json!(MTIME_RFC3339));
        reg.insert("mode".into(), json!(mode));
        reg.insert("uid".into(), json!(UID));
        reg.insert("gid".into(), json!(GID));
        reg.insert("digest".into(), json!(sha256_digest(data)));
        if data.is_empty() {
            entries.push(Value::Object(reg));
            continue;
        }
        let mut entry = reg;
        for (i, chunk) in data.chunks(chunk_size).enumerate() {
            let offset = stream.close();
            if i > 0 {
                entry = Map::new();
                entry.insert("name".into(), json!(name));
                entry.insert("type".into(), json!("chunk"));
                entry.insert("chunkOffset".into(), json!(i * chunk_size));
            }
            entry.insert("offset".into(), json!(offset));
            if chunk.len() == chunk_size {
                entry.insert("chunkSize".into(), json!(chunk_size));
            }
            entry.insert("chunkDigest".into(), json!(sha256_digest(chunk)));
            stream.write(chunk);
            entries.push(Value::Object(std::mem::take(&mut entry)));
        }
        // The padding (and the next headers) share the last chunk's member.
        stream.write(&padding(data.len()));
    }
    let toc_offset = stream.close();
    let toc_json = serde_json::to_vec_pretty(&json!({"version": 1, "entries": entries})).unwrap();
    let mut tar = tar_header(
        "stargz.index.json",
        b'0',
        toc_json.len() as u64,
        0o644,
        "",
        (0, 0),
    )
    .to_vec();
    tar.extend_from_slice(&toc_json);
    tar.extend(padding(toc_json.len()));
    tar.extend_from_slice(&[0u8; 1024]);
    stream.write(&tar);
    stream.close();
    let mut bytes = stream.out;
    bytes.extend(estargz_footer(toc_offset));
    EstargzBlob {
        bytes,
        toc_offset,
        toc_digest: sha256_digest(&toc_json),
        toc_json,
    }
}

/// An ordinary `tar+gzip` layer (one gzip stream, no TOC, no footer): what a lazy reader must refuse
/// as not lazily readable.
pub fn build_plain_gzip_tar(items: &[Item]) -> Vec<u8> {
    let mut tar = Vec::new();
    for item in items {
        let Item::File(name, mode, data) = item else {
            let (_, header) = describe(item);
            tar.extend_from_slice(&header);
            continue;
        };
        tar.extend_from_slice(&tar_header(
            name,
            b'0',
            data.len() as u64,
            *mode,
            "",
            (0, 0),
        ));
        tar.extend_from_slice(data);
        tar.extend(padding(data.len()));
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).unwrap();
    gzip.finish().unwrap()
}

/// A zstd:chunked blob as containers/storage lays it out, with its annotations.
pub struct ZstdChunkedBlob {
    pub bytes: Vec<u8>,
    pub manifest_position: String,
    pub manifest_checksum: String,
    pub toc_json: Vec<u8>,
}

/// Collects bytes into one zstd frame until closed.
struct ZstdStream {
    out: Vec<u8>,
    frame: Vec<u8>,
}

impl ZstdStream {
    fn write(&mut self, data: &[u8]) {
        self.frame.extend_from_slice(data);
    }

    fn close(&mut self) -> u64 {
        if !self.frame.is_empty() {
            self.out
                .extend(zstd::encode_all(&self.frame[..], 10).unwrap());
            self.frame.clear();
        }
        self.out.len() as u64
    }

    fn skippable(&mut self, data: &[u8]) -> u64 {
        self.out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
        self.out
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        let at = self.out.len() as u64;
        self.out.extend_from_slice(data);
        at
    }
}

pub fn build_zstd_chunked(items: &[Item], chunk_size: usize) -> ZstdChunkedBlob {
    let mut stream = ZstdStream {
        out: Vec::new(),
        frame: Vec::new(),
    };
    let mut entries = Vec::new();
    for item in items {
        let Item::File(name, mode, data) = item else {
            let (entry, header) = describe(item);
            stream.write(&header);
            entries.push(Value::Object(entry));
            continue;
        };
        stream.write(&tar_header(
            name,
            b'0',
            data.len() as u64,
            *mode,
            "",
            (0, 0),
        ));
        let mut reg = Map::new();
        reg.insert("type".into(), json!("reg"));
        reg.insert("name".into(), json!(name));
        reg.insert("mode".into(), json!(mode));
        reg.insert("size".into(), json!(data.len()));
        reg.insert("uid".into(), json!(UID));
        reg.insert("gid".into(), json!(GID));
        reg.insert("modtime".into(), json!("2021-01-02T03:04:05.000000001Z"));
        if data.is_empty() {
            entries.push(Value::Object(reg));
            continue;
        }
        let start = stream.close();
        let mut chunks = Vec::new();
        for (i, chunk) in data.chunks(chunk_size).enumerate() {
            let offset = stream.out.len() as u64;
            stream.write(chunk);
            stream.close();
            let kind = if chunk.iter().all(|&b| b == 0) {
                "zeros"
            } else {
                ""
            };
            chunks.push((
                i * chunk_size,
                chunk.len(),
                offset,
                sha256_digest(chunk),
                kind,
            ));
        }
        let end = stream.out.len() as u64;
        reg.insert("digest".into(), json!(sha256_digest(data)));
        reg.insert("offset".into(), json!(start));
        reg.insert("endOffset".into(), json!(end));
        if chunks.len() == 1 {
            entries.push(Value::Object(reg));
        } else {
            for (i, (chunk_offset, size, offset, digest, kind)) in chunks.into_iter().enumerate() {
                let mut entry = if i == 0 {
                    std::mem::take(&mut reg)
                } else {
                    let mut e = Map::new();
                    e.insert("type".into(), json!("chunk"));
                    e.insert("name".into(), json!(name));
                    e.insert("chunkOffset".into(), json!(chunk_offset));
                    e
                };
                entry.insert("chunkSize".into(), json!(size));
                entry.insert("offset".into(), json!(offset));
                entry.insert("chunkDigest".into(), json!(digest));
                if !kind.is_empty() {
                    entry.insert("chunkType".into(), json!(kind));
                }
                entries.push(Value::Object(entry));
            }
        }
        stream.write(&padding(data.len()));
    }
    stream.write(&[0u8; 1024]);
    stream.close();
    let toc_json = serde_json::to_vec(&json!({
        "version": 1, "entries": entries, "tarSplitDigest": sha256_digest(b"tar-split")
    }))
    .unwrap();
    let compressed = zstd::encode_all(&toc_json[..], 10).unwrap();
    let manifest_offset = stream.skippable(&compressed);
    let tar_split = zstd::encode_all(&b"{\"type\":1}\n"[..], 3).unwrap();
    let tar_split_offset = stream.skippable(&tar_split);
    let mut footer = Vec::new();
    for value in [
        manifest_offset,
        compressed.len() as u64,
        toc_json.len() as u64,
        1,
        tar_split_offset,
        tar_split.len() as u64,
        11,
    ] {
        footer.extend_from_slice(&value.to_le_bytes());
    }
    footer.extend_from_slice(b"GNUlInUx");
    stream.skippable(&footer);
    ZstdChunkedBlob {
        bytes: stream.out,
        manifest_position: format!(
            "{manifest_offset}:{}:{}:1",
            compressed.len(),
            toc_json.len()
        ),
        manifest_checksum: sha256_digest(&compressed),
        toc_json,
    }
}

/// Reads a whole file through its chunks, verifying each chunk's digest like the cache will.
pub fn read_file(tree: &FileTree, blob: &[u8], ino: Ino) -> Vec<u8> {
    let node = tree.node(ino).unwrap();
    let mut out = Vec::new();
    for chunk in &node.chunks {
        let span = &blob[chunk.compressed.start as usize..chunk.compressed.end as usize];
        let data = decompress_chunk(tree.compression(), span, chunk.size).unwrap();
        assert_eq!(
            Sha256::digest(&data)[..],
            chunk.digest.as_bytes()[..],
            "chunk digest of {ino}"
        );
        out.extend(data);
    }
    if let Some(digest) = node.file_digest {
        assert_eq!(
            Sha256::digest(&out)[..],
            digest.as_bytes()[..],
            "file digest of {ino}"
        );
    }
    out
}

/// Resolves a slash-separated path from the root.
pub fn resolve(tree: &FileTree, path: &str) -> Option<Ino> {
    let mut ino = skiff_fuse::format::tree::ROOT_INO;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        ino = tree.lookup(ino, name.as_bytes())?;
    }
    Some(ino)
}

/// The layer most tests use: every entry kind, a multi-chunk file, a hardlink, a whiteout, an opaque
/// directory, a run of zeros and an empty file.
pub fn sample_items(with_landmark: bool) -> Vec<Item> {
    let mut items = vec![
        Item::Dir("etc/", 0o755),
        Item::File("etc/hosts", 0o644, b"127.0.0.1 localhost\n".to_vec()),
    ];
    if with_landmark {
        items.push(Item::File(".prefetch.landmark", 0o644, vec![0xf]));
    }
    items.extend([
        Item::Dir("bin/", 0o755),
        Item::File("bin/big", 0o4755, pseudo_random(10_000, 7)),
        Item::Symlink("bin/sh", "big"),
        Item::Hardlink("bin/big2", "bin/big"),
        Item::File("etc/.wh.old", 0o644, Vec::new()),
        Item::File("var/.wh..wh..opq", 0o644, Vec::new()),
        Item::Char("dev/null", 1, 3),
        Item::Fifo("run/fifo"),
        Item::File("empty", 0o600, Vec::new()),
        Item::File("zeros", 0o644, vec![0u8; 8192]),
        Item::WithXattrs(
            "xattr",
            vec![
                ("user.note", b"hi\0there"),
                ("security.capability", b"\x01\x02"),
            ],
        ),
    ]);
    items
}
