//! Pure readers of the lazy layer formats: eStargz and zstd:chunked footers and TOCs, chunk
//! decompression, and the in-memory file tree built from a TOC. Bytes in, typed values out: no files,
//! no network, no async, so everything here is unit-tested and fuzzed directly. It knows nothing of
//! registries, caches or FUSE; the fetch layer decides which bytes to hand it.

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
