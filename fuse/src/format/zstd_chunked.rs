//! zstd:chunked (containers/storage): every file, and every chunk of a large file, is its own zstd
//! frame; tar headers travel in frames of their own. After the payload come zstd skippable frames
//! (magic `0x184D2A50`, little-endian u32 length, data) holding the zstd-compressed TOC (the
//! "manifest"), then the tar-split data, then a 64-byte footer.
//!
//! The layer annotation `io.github.containers.zstd-chunked.manifest-position` is
//! `offset:length:uncompressedLength:type`, where `offset` is the first byte of the compressed TOC
//! *inside* its skippable frame (just past the 8-byte frame header), `length` its compressed size and
//! `type` 1 (the CRFS-compatible TOC). `...manifest-checksum` is the sha256 of those `length`
//! compressed bytes (not of the JSON). The blob's own footer only duplicates the annotations and is
//! not what we trust, so it is not read here.

use std::io::Read;

use skiff_types::Digest;

use super::toc::{parse_toc_json, Limits, Toc};
use super::FormatError;

/// Layer annotation locating the TOC.
pub const MANIFEST_POSITION_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.manifest-position";
/// Layer annotation pinning the sha256 of the compressed TOC.
pub const MANIFEST_CHECKSUM_ANNOTATION: &str =
    "io.github.containers.zstd-chunked.manifest-checksum";
/// The same annotations under their earlier names (older containers/storage, stargz-snapshotter's
/// zstdchunked package). Same value formats.
pub const LEGACY_MANIFEST_POSITION_ANNOTATION: &str =
    "io.containers.zstd-chunked.manifest-position";
pub const LEGACY_MANIFEST_CHECKSUM_ANNOTATION: &str =
    "io.containers.zstd-chunked.manifest-checksum";

/// The only manifest type defined: a TOC in the CRFS / eStargz JSON shape.
pub const MANIFEST_TYPE_CRFS: u64 = 1;

/// Magic number of a zstd skippable frame (first of the 16 allowed values), little-endian.
pub const SKIPPABLE_FRAME_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// Bytes of a skippable frame's header (magic + u32 length) before its data.
pub const SKIPPABLE_FRAME_HEADER_SIZE: u64 = 8;

/// The parsed manifest-position annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestPosition {
    /// Offset of the compressed TOC in the blob.
    pub offset: u64,
    /// Compressed size of the TOC.
    pub length: u64,
    /// Size of the TOC JSON.
    pub uncompressed_length: u64,
    /// Manifest type; always [`MANIFEST_TYPE_CRFS`] once parsed.
    pub kind: u64,
}

impl ManifestPosition {
    /// The blob range holding the compressed TOC.
    pub fn range(&self) -> std::ops::Range<u64> {
        // parse_manifest_position guarantees this does not overflow.
        self.offset..self.offset + self.length
    }

    /// Where the blob's payload ends: the start of the skippable frame holding the TOC. This is the
    /// `blob_toc_offset` to build the file tree with.
    pub fn payload_end(&self) -> u64 {
        self.offset.saturating_sub(SKIPPABLE_FRAME_HEADER_SIZE)
    }
}

/// Parses `offset:length:uncompressedLength:type` (four decimal integers).
pub fn parse_manifest_position(value: &str) -> Result<ManifestPosition, FormatError> {
    let invalid = |reason: &str| FormatError::InvalidManifestPosition {
        value: value.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    let fields: Vec<&str> = value.split(':').collect();
    if fields.len() != 4 {
        return Err(invalid("expected offset:length:uncompressedLength:type"));
    }
    let mut numbers = [0u64; 4];
    for (slot, field) in numbers.iter_mut().zip(&fields) {
        if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("fields must be decimal integers"));
        }
        *slot = field.parse().map_err(|_| invalid("field out of range"))?;
    }
    let [offset, length, uncompressed_length, kind] = numbers;
    if kind != MANIFEST_TYPE_CRFS {
        return Err(invalid("unsupported manifest type, only 1 (crfs) is known"));
    }
    if length == 0 || uncompressed_length == 0 {
        return Err(invalid("empty manifest"));
    }
    if offset
        .checked_add(length)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(invalid("manifest range overflows"));
    }
    Ok(ManifestPosition {
        offset,
        length,
        uncompressed_length,
        kind,
    })
}

/// The blob bytes `[offset, offset+length)` are the zstd-compressed TOC (the data of a skippable
/// frame whose header sits just before `offset`). Returns the TOC and `sha256:<hex>` of `region` —
/// the value to compare with the manifest-checksum annotation.
pub fn parse_toc(
    region: &[u8],
    position: &ManifestPosition,
    limits: &Limits,
) -> Result<(Toc, Digest), FormatError> {
    let (json, digest) = decompress_toc(region, position, limits)?;
    let toc = parse_toc_json(&json, limits)?;
    Ok((toc, digest))
}

/// The first half of [`parse_toc`]: the TOC's JSON bytes (at most `limits.max_expansion` times the
/// region's size) and the region's digest, not yet parsed.
pub fn decompress_toc(
    region: &[u8],
    position: &ManifestPosition,
    limits: &Limits,
) -> Result<(Vec<u8>, Digest), FormatError> {
    if region.len() as u64 != position.length {
        return Err(FormatError::TocRegionSize {
            expected: position.length,
            actual: region.len() as u64,
        });
    }
    if position.kind != MANIFEST_TYPE_CRFS {
        return Err(FormatError::InvalidManifestPosition {
            value: format!(
                "{}:{}:{}:{}",
                position.offset, position.length, position.uncompressed_length, position.kind
            ),
            reason: "unsupported manifest type, only 1 (crfs) is known".into(),
        });
    }
    let limit = limits.max_toc_bytes_from(region.len() as u64);
    if position.uncompressed_length > limit {
        return Err(FormatError::TooLarge {
            what: "zstd:chunked toc",
            limit,
        });
    }
    let digest = Digest::of(region);
    let json = decode_exact(region, position.uncompressed_length)?;
    Ok((json, digest))
}

/// Decodes the zstd stream in `region`, requiring exactly `expected` bytes: one byte more than
/// announced is read so a TOC longer than its annotation is noticed.
fn decode_exact(region: &[u8], expected: u64) -> Result<Vec<u8>, FormatError> {
    const WHAT: &str = "zstd:chunked toc";
    let decoder = zstd::stream::read::Decoder::with_buffer(region)
        .map_err(|source| FormatError::Decompress { what: WHAT, source })?;
    let mut json = Vec::with_capacity(expected.min(1 << 20) as usize);
    decoder
        .take(expected + 1)
        .read_to_end(&mut json)
        .map_err(|source| FormatError::Decompress { what: WHAT, source })?;
    if json.len() as u64 != expected {
        return Err(FormatError::SizeMismatch {
            what: WHAT,
            expected,
            actual: json.len() as u64,
        });
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] = br#"{"version":1,"entries":[{"name":"a","type":"dir"}]}"#;

    fn position(region: &[u8], json_len: usize) -> ManifestPosition {
        parse_manifest_position(&format!("8:{}:{json_len}:1", region.len())).unwrap()
    }

    #[test]
    fn position_parsing() {
        let p = parse_manifest_position("1234:56:789:1").unwrap();
        assert_eq!(
            p,
            ManifestPosition {
                offset: 1234,
                length: 56,
                uncompressed_length: 789,
                kind: 1
            }
        );
        assert_eq!(p.range(), 1234..1290);
        for bad in [
            "",
            "1:2:3",
            "1:2:3:4:5",
            "1:2:3:2",
            "a:2:3:1",
            "-1:2:3:1",
            "+1:2:3:1",
            " 1:2:3:1",
            "1:0:3:1",
            "1:2:0:1",
            "18446744073709551615:2:3:1",
            "99999999999999999999:2:3:1",
        ] {
            let err = parse_manifest_position(bad).unwrap_err();
            assert!(
                matches!(err, FormatError::InvalidManifestPosition { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn toc_is_decoded_and_checksummed_over_the_compressed_bytes() {
        let region = zstd::encode_all(JSON, 10).unwrap();
        let (toc, digest) =
            parse_toc(&region, &position(&region, JSON.len()), &Limits::default()).unwrap();
        assert_eq!(toc.entries.len(), 1);
        assert_eq!(digest, Digest::of(&region));
    }

    #[test]
    fn bad_tocs_are_rejected() {
        let limits = Limits::default();
        let region = zstd::encode_all(JSON, 10).unwrap();
        let pos = position(&region, JSON.len());
        assert!(matches!(
            parse_toc(&region[1..], &pos, &limits),
            Err(FormatError::TocRegionSize { .. })
        ));
        let short = position(&region, JSON.len() - 1);
        assert!(matches!(
            parse_toc(&region, &short, &limits),
            Err(FormatError::SizeMismatch { .. })
        ));
        let long = position(&region, JSON.len() + 1);
        assert!(matches!(
            parse_toc(&region, &long, &limits),
            Err(FormatError::SizeMismatch { .. })
        ));
        let small = Limits {
            max_toc_bytes: 4,
            ..Limits::default()
        };
        assert!(matches!(
            parse_toc(&region, &pos, &small),
            Err(FormatError::TooLarge { .. })
        ));
        // A region that claims to inflate far beyond what a TOC does is refused before inflating.
        let inflating = position(&region, region.len() * 64 + 1);
        assert!(matches!(
            parse_toc(&region, &inflating, &limits),
            Err(FormatError::TooLarge { .. })
        ));
        let mut corrupt = region.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        corrupt.truncate(corrupt.len() - 2);
        let pos = position(&corrupt, JSON.len());
        assert!(parse_toc(&corrupt, &pos, &limits).is_err());
        let garbage = b"definitely not zstd";
        assert!(parse_toc(garbage, &position(garbage, 5), &limits).is_err());
        let other_kind = ManifestPosition { kind: 2, ..pos };
        assert!(parse_toc(&corrupt, &other_kind, &limits).is_err());
    }
}
