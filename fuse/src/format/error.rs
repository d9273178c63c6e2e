//! The one error type of the format readers. Every variant names what was being parsed (the footer, the
//! TOC, an entry's path) so a failed mount explains itself without a debugger.

/// Everything that can be wrong with a footer, a TOC, a chunk or the tree built from a TOC.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("blob tail of {got} bytes is shorter than the {need}-byte footer")]
    FooterTooShort { need: u64, got: u64 },
    #[error("invalid estargz footer: {reason}")]
    InvalidFooter { reason: String },
    #[error(
        "toc offset {toc_offset} does not fit a blob of {blob_size} bytes with a {footer_size}-byte footer"
    )]
    TocOffsetOutOfRange {
        toc_offset: u64,
        footer_size: u64,
        blob_size: u64,
    },
    #[error("invalid zstd:chunked manifest position {value:?}: {reason}")]
    InvalidManifestPosition { value: String, reason: String },
    #[error("toc region is {actual} bytes, expected {expected}")]
    TocRegionSize { expected: u64, actual: u64 },
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("cannot decompress {what}")]
    Decompress {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} decompressed to {actual} bytes, expected {expected}")]
    SizeMismatch {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("invalid toc tar: {reason}")]
    InvalidTocTar { reason: String },
    #[error("invalid toc json")]
    TocJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported toc version {version}, only version 1 is known")]
    UnsupportedTocVersion { version: u64 },
    #[error("toc has more than the limit of {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("path {path:?} escapes the layer root")]
    PathEscape { path: String },
    #[error("invalid toc entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },
    #[error("{path:?} needs {parent:?} to be a directory, but the toc makes it something else")]
    NotADirectory { path: String, parent: String },
    #[error("hardlink {path:?} points to {target:?}, which is not a file in the layer")]
    HardlinkTargetMissing { path: String, target: String },
    #[error("chunk entry {path:?} does not follow a regular file of that name")]
    OrphanChunk { path: String },
    #[error("invalid digest {digest:?} for {path:?}: only sha256:<64 hex digits> is accepted")]
    InvalidDigest { path: String, digest: String },
    #[error(
        "regular file {path:?} has data without a chunk digest, so its bytes cannot be verified"
    )]
    Unverifiable { path: String },
    #[error("chunks of {path:?} are inconsistent: {reason}")]
    InvalidChunks { path: String, reason: String },
    #[error("unsupported {feature} in {path:?}")]
    Unsupported { path: String, feature: &'static str },
}
