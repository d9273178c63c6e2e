//! Pure readers of the lazy layer formats: eStargz and zstd:chunked footers and TOCs, chunk
//! decompression, and the in-memory file tree built from a TOC. Bytes in, typed values out: no files,
//! no network, no async, so everything here is unit-tested and fuzzed directly (`fuse/tests/format_*.rs`,
//! `fuse/fuzz`). It knows nothing of registries, caches or FUSE; the fetch layer decides which bytes to
//! hand it, and `lazyfs/open.rs` which format a layer is in.
//!
//! - [`estargz`]: the footer (51 bytes, or the legacy 47) and the TOC inside its tar member;
//! - [`zstd_chunked`]: the TOC's position from the layer annotation, and the TOC in its skippable frame;
//! - [`toc`]: the TOC JSON both formats share, parsed within [`Limits`];
//! - [`chunk`]: decompressing exactly one chunk from its offset in the blob;
//! - [`tree`]: [`FileTree`], the layer's inodes built from a TOC (whiteouts, hard links, landmarks);
//! - [`FormatError`]: the one error type, naming what was being parsed.

pub mod chunk;
mod error;
pub mod estargz;
pub mod toc;
pub mod tree;
pub mod zstd_chunked;

pub use chunk::{decompress_chunk, Compression};
pub use error::FormatError;
pub use toc::{Limits, Toc, TocEntry};
pub use tree::{ChunkRef, FileTree, Ino, Node, NodeKind, ROOT_INO};
