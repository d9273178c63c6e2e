//! Decompressing one chunk of a file from its compressed bytes in the blob.
//!
//! eStargz starts a new gzip member at every chunk, but the member holding a file's last chunk goes on
//! with the tar padding and the next entries' headers; zstd:chunked ends a frame at every chunk. Either
//! way the chunk is the first `uncompressed_size` bytes of the first member / frame at its offset, so we
//! decode exactly that much from one member or frame and never read into the next one.

use std::io::Read;

use super::FormatError;

/// How a chunk's compressed bytes decompress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// Output buffers start at most this big and grow as data really arrives, so a lying size cannot
/// make us allocate up front.
const INITIAL_CAPACITY_CAP: u64 = 1 << 20;

/// Decompresses one chunk: `compressed` starts at the chunk's offset in the blob and may run past its
/// end (eStargz gives no end offset: the span runs to the next chunk's offset and may include the next
/// tar header's member); returns exactly `uncompressed_size` bytes or an error (never fewer). The
/// caller still verifies the chunk digest: a gzip member's CRC is not reached when we stop early.
pub fn decompress_chunk(
    compression: Compression,
    compressed: &[u8],
    uncompressed_size: u64,
) -> Result<Vec<u8>, FormatError> {
    if uncompressed_size == 0 {
        return Ok(Vec::new());
    }
    match compression {
        Compression::Gzip => read_exact_prefix(
            flate2::bufread::GzDecoder::new(compressed),
            uncompressed_size,
            "gzip chunk",
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(|source| FormatError::Decompress {
                    what: "zstd chunk",
                    source,
                })?
                .single_frame();
            read_exact_prefix(decoder, uncompressed_size, "zstd chunk")
        }
    }
}

/// Reads exactly `size` bytes from `reader`, failing on a decoder error or an early end.
pub(crate) fn read_exact_prefix<R: Read>(
    reader: R,
    size: u64,
    what: &'static str,
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(size.min(INITIAL_CAPACITY_CAP) as usize);
    reader
        .take(size)
        .read_to_end(&mut out)
        .map_err(|source| FormatError::Decompress { what, source })?;
    if out.len() as u64 != size {
        return Err(FormatError::SizeMismatch {
            what,
            expected: size,
            actual: out.len() as u64,
        });
    }
    // The buffer grew by doubling: up to twice its length is allocated, and a chunk kept in the memory
    // cache (which counts lengths) would hold the difference too.
    out.shrink_to_fit();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_chunk_followed_by_other_members() {
        let mut blob = gzip(b"hello world");
        blob.extend(gzip(b"next member"));
        assert_eq!(
            decompress_chunk(Compression::Gzip, &blob, 11).unwrap(),
            b"hello world"
        );
        // The chunk is a prefix of a member that continues (tar padding, next header).
        assert_eq!(
            decompress_chunk(Compression::Gzip, &blob, 5).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn gzip_never_reads_into_the_next_member() {
        let mut blob = gzip(b"short");
        blob.extend(gzip(b"other"));
        assert!(matches!(
            decompress_chunk(Compression::Gzip, &blob, 10),
            Err(FormatError::SizeMismatch {
                expected: 10,
                actual: 5,
                ..
            })
        ));
    }

    #[test]
    fn gzip_truncated_and_garbage() {
        let blob = gzip(&[7u8; 100_000]);
        assert!(decompress_chunk(Compression::Gzip, &blob[..blob.len() / 2], 100_000).is_err());
        assert!(decompress_chunk(Compression::Gzip, b"not gzip at all", 3).is_err());
        assert!(decompress_chunk(Compression::Gzip, b"", 3).is_err());
    }

    #[test]
    fn zstd_single_frame() {
        let mut blob = zstd::encode_all(&b"zstd chunk data"[..], 3).unwrap();
        blob.extend(zstd::encode_all(&b"next frame"[..], 3).unwrap());
        assert_eq!(
            decompress_chunk(Compression::Zstd, &blob, 15).unwrap(),
            b"zstd chunk data"
        );
        assert!(matches!(
            decompress_chunk(Compression::Zstd, &blob, 25),
            Err(FormatError::SizeMismatch { actual: 15, .. })
        ));
        assert!(decompress_chunk(Compression::Zstd, &blob[..blob.len() / 3], 15).is_err());
        assert!(decompress_chunk(Compression::Zstd, b"garbage!", 3).is_err());
    }

    #[test]
    fn empty_chunk_is_empty() {
        assert!(decompress_chunk(Compression::Zstd, b"", 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn huge_claimed_size_does_not_preallocate() {
        let blob = gzip(b"tiny");
        assert!(matches!(
            decompress_chunk(Compression::Gzip, &blob, u64::MAX),
            Err(FormatError::SizeMismatch { actual: 4, .. })
        ));
    }
}
