//! eStargz: a gzip stream of per-file (and per-chunk) gzip members, then one gzip member holding a tar
//! with the single file `stargz.index.json` (the TOC), then a footer: an empty gzip member whose
//! extra field holds the TOC's offset as `%016xSTARGZ`.
//!
//! The footer is 51 bytes (extra field with subfield `SG`, the eStargz form) or 47 bytes (the extra
//! field is the bare payload, the legacy stargz form). The `containerd.io/snapshot/stargz/toc.digest`
//! annotation pins the sha256 of the TOC JSON bytes (not of the compressed region).

use std::io::Read;

use skiff_types::Digest;

use super::toc::{parse_toc_json, Limits, Toc, TOC_TAR_NAME};
use super::FormatError;

/// Size of the eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Size of the legacy stargz footer.
pub const LEGACY_FOOTER_SIZE: u64 = 47;
/// The layer annotation pinning the TOC JSON's digest.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The layer annotation carrying the uncompressed layer size (for containers/storage).
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

const MAGIC: &[u8; 6] = b"STARGZ";
const PAYLOAD_LEN: usize = 16 + MAGIC.len();
const GZIP_HEADER_LEN: usize = 10;
const FLAG_FHCRC: u8 = 0x02;
const FLAG_FEXTRA: u8 = 0x04;
const FLAG_FNAME: u8 = 0x08;
const FLAG_FCOMMENT: u8 = 0x10;

/// Where the TOC is, as told by the footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the TOC's gzip member in the blob.
    pub toc_offset: u64,
    /// Which footer was found: [`FOOTER_SIZE`] or [`LEGACY_FOOTER_SIZE`].
    pub footer_size: u64,
}

impl Footer {
    /// The TOC region `toc_offset .. blob_size - footer_size`, checked against the blob size.
    pub fn toc_range(&self, blob_size: u64) -> Result<std::ops::Range<u64>, FormatError> {
        let out_of_range = || FormatError::TocOffsetOutOfRange {
            toc_offset: self.toc_offset,
            footer_size: self.footer_size,
            blob_size,
        };
        let end = blob_size
            .checked_sub(self.footer_size)
            .ok_or_else(out_of_range)?;
        if self.toc_offset >= end {
            return Err(out_of_range());
        }
        Ok(self.toc_offset..end)
    }
}

/// Parses the last bytes of the blob (pass at least [`FOOTER_SIZE`] bytes, or the whole tail you
/// have); tries the 51-byte footer, then the legacy 47-byte one.
pub fn parse_footer(tail: &[u8]) -> Result<Footer, FormatError> {
    if (tail.len() as u64) < LEGACY_FOOTER_SIZE {
        return Err(FormatError::FooterTooShort {
            need: LEGACY_FOOTER_SIZE,
            got: tail.len() as u64,
        });
    }
    let estargz_err = match tail.len().checked_sub(FOOTER_SIZE as usize) {
        Some(start) => match parse_estargz_footer(&tail[start..]) {
            Ok(toc_offset) => {
                return Ok(Footer {
                    toc_offset,
                    footer_size: FOOTER_SIZE,
                })
            }
            Err(reason) => reason,
        },
        None => format!("only {} bytes", tail.len()),
    };
    let start = tail.len() - LEGACY_FOOTER_SIZE as usize;
    match parse_legacy_footer(&tail[start..]) {
        Ok(toc_offset) => Ok(Footer {
            toc_offset,
            footer_size: LEGACY_FOOTER_SIZE,
        }),
        Err(legacy_err) => Err(FormatError::InvalidFooter {
            reason: format!(
                "not an estargz footer ({estargz_err}), nor a legacy stargz footer ({legacy_err})"
            ),
        }),
    }
}

/// Returns the gzip header's extra field, requiring exactly one empty stored member after it.
fn footer_extra(footer: &[u8]) -> Result<&[u8], String> {
    if footer[..3] != [0x1f, 0x8b, 0x08] {
        return Err("no gzip header".into());
    }
    let flags = footer[3];
    if flags & FLAG_FEXTRA == 0 {
        return Err("gzip header has no extra field".into());
    }
    if flags & (FLAG_FHCRC | FLAG_FNAME | FLAG_FCOMMENT) != 0 || flags & 0xe0 != 0 {
        return Err(format!("unexpected gzip header flags {flags:#04x}"));
    }
    let xlen = usize::from(u16::from_le_bytes([footer[10], footer[11]]));
    let extra_end = GZIP_HEADER_LEN + 2 + xlen;
    // A stored empty block (5 bytes) and the CRC32 + ISIZE trailer (8 bytes) must fill the rest.
    if extra_end + 13 != footer.len() {
        return Err(format!(
            "extra field of {xlen} bytes does not fit the footer"
        ));
    }
    Ok(&footer[GZIP_HEADER_LEN + 2..extra_end])
}

fn parse_estargz_footer(footer: &[u8]) -> Result<u64, String> {
    let extra = footer_extra(footer)?;
    if extra.len() != 4 + PAYLOAD_LEN {
        return Err(format!(
            "extra field is {} bytes, expected {}",
            extra.len(),
            4 + PAYLOAD_LEN
        ));
    }
    if &extra[..2] != b"SG" {
        return Err(format!(
            "subfield id {:?}, expected \"SG\"",
            String::from_utf8_lossy(&extra[..2])
        ));
    }
    let sublen = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
    if sublen != PAYLOAD_LEN {
        return Err(format!("subfield length {sublen}, expected {PAYLOAD_LEN}"));
    }
    parse_payload(&extra[4..])
}

fn parse_legacy_footer(footer: &[u8]) -> Result<u64, String> {
    let extra = footer_extra(footer)?;
    if extra.len() != PAYLOAD_LEN {
        return Err(format!(
            "extra field is {} bytes, expected {PAYLOAD_LEN}",
            extra.len()
        ));
    }
    parse_payload(extra)
}

/// Parses `%016xSTARGZ`. The offset must fit a signed 64-bit integer, as producers write it.
fn parse_payload(payload: &[u8]) -> Result<u64, String> {
    if &payload[16..] != MAGIC {
        return Err("magic string STARGZ not found".into());
    }
    let hex_digits = std::str::from_utf8(&payload[..16]).map_err(|_| "toc offset is not hex")?;
    let offset = u64::from_str_radix(hex_digits, 16)
        .ok()
        .filter(|_| hex_digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("toc offset {hex_digits:?} is not hex"))?;
    if offset > i64::MAX as u64 {
        return Err(format!("toc offset {offset:#x} is out of range"));
    }
    Ok(offset)
}

/// Builds the 51-byte eStargz footer for `toc_offset` (used by tests and tools that write blobs).
pub fn footer_bytes(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut out = [0u8; FOOTER_SIZE as usize];
    out[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, FLAG_FEXTRA, 0, 0, 0, 0, 0, 0xff]);
    out[10..12].copy_from_slice(&((4 + PAYLOAD_LEN) as u16).to_le_bytes());
    out[12..14].copy_from_slice(b"SG");
    out[14..16].copy_from_slice(&(PAYLOAD_LEN as u16).to_le_bytes());
    out[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    // A final stored block of length 0, then CRC32 = 0 and ISIZE = 0.
    out[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    out
}

/// The TOC region `blob[toc_offset .. blob_size - footer_size]` is a gzip member containing a tar
/// with one file `stargz.index.json`: decompresses it (bounded by `limits`), reads the tar entry and
/// returns the TOC and the digest of the JSON bytes — what the toc.digest annotation pins.
pub fn parse_toc(region: &[u8], limits: &Limits) -> Result<(Toc, Digest), FormatError> {
    let (json, digest) = decompress_toc(region, limits)?;
    let toc = parse_toc_json(&json, limits)?;
    Ok((toc, digest))
}

/// The first half of [`parse_toc`]: the TOC's JSON bytes and their digest, not yet parsed. The JSON may
/// be at most `limits.max_expansion` times the region's size.
pub fn decompress_toc(region: &[u8], limits: &Limits) -> Result<(Vec<u8>, Digest), FormatError> {
    let limits = Limits {
        max_toc_bytes: limits.max_toc_bytes_from(region.len() as u64),
        ..limits.clone()
    };
    // Go's reader stops at the end of the first member; so do we.
    let mut tar = flate2::bufread::GzDecoder::new(region);
    let json = read_toc_tar(&mut tar, &limits)?;
    let digest = Digest::of(&json);
    Ok((json, digest))
}

const BLOCK: usize = 512;
/// Largest PAX or GNU long-name record accepted in front of the TOC entry.
const MAX_META_RECORD: u64 = 64 << 10;

fn tar_err(reason: impl Into<String>) -> FormatError {
    FormatError::InvalidTocTar {
        reason: reason.into(),
    }
}

fn read_block<R: Read>(reader: &mut R, block: &mut [u8; BLOCK]) -> Result<(), FormatError> {
    reader.read_exact(block).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            tar_err("truncated tar header")
        } else {
            FormatError::Decompress {
                what: "estargz toc",
                source,
            }
        }
    })
}

/// Reads the tar stream up to the TOC file and returns its contents.
fn read_toc_tar<R: Read>(reader: &mut R, limits: &Limits) -> Result<Vec<u8>, FormatError> {
    let mut long_name: Option<Vec<u8>> = None;
    let mut block = [0u8; BLOCK];
    // A few metadata headers (PAX, GNU long name) may precede the real one.
    for _ in 0..8 {
        read_block(reader, &mut block)?;
        if block.iter().all(|&b| b == 0) {
            return Err(tar_err("tar ends before the toc entry"));
        }
        verify_checksum(&block)?;
        let size = parse_size(&block[124..136])?;
        let typeflag = block[156];
        match typeflag {
            b'x' | b'g' | b'L' => {
                if size > MAX_META_RECORD {
                    return Err(tar_err(format!("metadata record of {size} bytes")));
                }
                let record = read_payload(reader, size, "tar metadata record")?;
                skip_padding(reader, size)?;
                if typeflag == b'x' {
                    if let Some(path) = pax_path(&record)? {
                        long_name = Some(path);
                    }
                } else if typeflag == b'L' {
                    let end = record.iter().position(|&b| b == 0).unwrap_or(record.len());
                    long_name = Some(record[..end].to_vec());
                }
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().unwrap_or_else(|| ustar_name(&block));
                if name != TOC_TAR_NAME.as_bytes() {
                    return Err(tar_err(format!(
                        "toc tar entry is named {:?}, expected {TOC_TAR_NAME:?}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                if size > limits.max_toc_bytes {
                    return Err(FormatError::TooLarge {
                        what: "toc json",
                        limit: limits.max_toc_bytes,
                    });
                }
                return read_payload(reader, size, "estargz toc");
            }
            other => {
                return Err(tar_err(format!(
                    "toc tar entry has type {:?}, expected a regular file",
                    char::from(other)
                )))
            }
        }
    }
    Err(tar_err("too many metadata headers before the toc entry"))
}

fn read_payload<R: Read>(
    reader: &mut R,
    size: u64,
    what: &'static str,
) -> Result<Vec<u8>, FormatError> {
    super::chunk::read_exact_prefix(reader, size, what)
}

fn skip_padding<R: Read>(reader: &mut R, size: u64) -> Result<(), FormatError> {
    let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    read_payload(reader, pad, "tar padding").map(drop)
}

fn verify_checksum(block: &[u8; BLOCK]) -> Result<(), FormatError> {
    let stored =
        parse_octal(&block[148..156]).ok_or_else(|| tar_err("unreadable header checksum"))?;
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    // Some old writers summed signed bytes.
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                i64::from(b' ')
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(tar_err("header checksum mismatch"))
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let trimmed: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if trimmed.is_empty() {
        return Some(0);
    }
    let text = std::str::from_utf8(&trimmed).ok()?;
    u64::from_str_radix(text, 8).ok()
}

/// The size field: octal text, or base-256 when the top bit of the first byte is set.
fn parse_size(field: &[u8]) -> Result<u64, FormatError> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            return Err(tar_err("negative entry size"));
        }
        let mut value: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| tar_err("entry size overflows"))?;
        }
        return Ok(value);
    }
    parse_octal(field).ok_or_else(|| tar_err("unreadable entry size"))
}

/// `prefix/name` of a ustar header (or just `name` for v7/GNU headers).
fn ustar_name(block: &[u8; BLOCK]) -> Vec<u8> {
    let cstr = |field: &[u8]| -> Vec<u8> {
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        field[..end].to_vec()
    };
    let name = cstr(&block[0..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix;
            full.push(b'/');
            full.extend_from_slice(&name);
            return full;
        }
    }
    name
}

/// The `path` record of a PAX extended header (`"<len> path=<value>\n"` records).
fn pax_path(mut records: &[u8]) -> Result<Option<Vec<u8>>, FormatError> {
    let mut path = None;
    while !records.is_empty() {
        let space = records
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| tar_err("malformed pax record"))?;
        let len: usize = std::str::from_utf8(&records[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&len| len > space + 1 && len <= records.len())
            .ok_or_else(|| tar_err("malformed pax record length"))?;
        let record = &records[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| tar_err("pax record without newline"))?;
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(value.to_vec());
        }
        records = &records[len..];
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A ustar header for a regular file.
    fn tar_header(name: &str, size: u64, typeflag: u8) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn tar_file(out: &mut Vec<u8>, name: &str, data: &[u8], typeflag: u8) {
        out.extend_from_slice(&tar_header(name, data.len() as u64, typeflag));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn toc_region(name: &str, json: &[u8]) -> Vec<u8> {
        let mut tar = Vec::new();
        tar_file(&mut tar, name, json, b'0');
        tar.extend_from_slice(&[0u8; 1024]);
        gzip(&tar)
    }

    const JSON: &[u8] = br#"{"version":1,"entries":[{"name":"a","type":"dir"}]}"#;

    #[test]
    fn footer_round_trip() {
        for offset in [0u64, 1, 0x1234_5678_9abc, i64::MAX as u64] {
            let footer = footer_bytes(offset);
            // The footer is a valid (empty) gzip member.
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&footer[..])
                .read_to_end(&mut out)
                .unwrap();
            assert!(out.is_empty());
            let mut tail = vec![0xaa; 100];
            tail.extend_from_slice(&footer);
            assert_eq!(
                parse_footer(&tail).unwrap(),
                Footer {
                    toc_offset: offset,
                    footer_size: FOOTER_SIZE
                }
            );
            assert_eq!(parse_footer(&footer).unwrap().toc_offset, offset);
        }
    }

    fn legacy_footer(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x1f, 0x8b, 0x08, FLAG_FEXTRA, 0, 0, 0, 0, 0, 0xff];
        f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn legacy_footer_is_accepted() {
        let footer = legacy_footer(b"00000000000004d2STARGZ");
        assert_eq!(footer.len() as u64, LEGACY_FOOTER_SIZE);
        let expected = Footer {
            toc_offset: 1234,
            footer_size: LEGACY_FOOTER_SIZE,
        };
        assert_eq!(parse_footer(&footer).unwrap(), expected);
        let mut tail = vec![0u8; 4];
        tail.extend_from_slice(&footer);
        assert_eq!(parse_footer(&tail).unwrap(), expected);
    }

    #[test]
    fn bad_footers_are_rejected() {
        assert!(matches!(
            parse_footer(&[0u8; 10]),
            Err(FormatError::FooterTooShort { got: 10, .. })
        ));
        assert!(matches!(
            parse_footer(&[0u8; 51]),
            Err(FormatError::InvalidFooter { .. })
        ));
        let good = footer_bytes(99);
        let mut bad_magic = good;
        bad_magic[37] = b'X';
        assert!(parse_footer(&bad_magic).is_err());
        let mut bad_sub = good;
        bad_sub[12] = b'E';
        assert!(parse_footer(&bad_sub).is_err());
        let mut bad_hex = good;
        bad_hex[16] = b'g';
        assert!(parse_footer(&bad_hex).is_err());
        let mut plus = good;
        plus[16] = b'+';
        assert!(parse_footer(&plus).is_err());
        let mut too_big = good;
        too_big[16] = b'f';
        assert!(parse_footer(&too_big).is_err());
        let mut bad_flags = good;
        bad_flags[3] |= FLAG_FNAME;
        assert!(parse_footer(&bad_flags).is_err());
        assert!(parse_footer(&legacy_footer(b"00000000000004d2STARGY")).is_err());
        // A truncated footer is not mistaken for a legacy one.
        assert!(parse_footer(&good[4..]).is_err());
        let err = parse_footer(&[0u8; 60]).unwrap_err().to_string();
        assert!(err.contains("legacy"), "{err}");
    }

    #[test]
    fn toc_range_checks_the_blob_size() {
        let footer = Footer {
            toc_offset: 100,
            footer_size: FOOTER_SIZE,
        };
        assert_eq!(footer.toc_range(200).unwrap(), 100..149);
        assert!(footer.toc_range(151).is_err());
        assert!(footer.toc_range(10).is_err());
    }

    #[test]
    fn toc_is_read_and_digested() {
        let region = toc_region(TOC_TAR_NAME, JSON);
        let (toc, digest) = parse_toc(&region, &Limits::default()).unwrap();
        assert_eq!(toc.entries.len(), 1);
        assert_eq!(digest, Digest::of(JSON));
    }

    #[test]
    fn toc_with_pax_and_gnu_long_names() {
        let mut tar = Vec::new();
        let record = format!("{} path={TOC_TAR_NAME}\n", 6 + TOC_TAR_NAME.len() + 1 + 2);
        tar_file(&mut tar, "PaxHeaders/x", record.as_bytes(), b'x');
        tar_file(&mut tar, "ignored-name", JSON, b'0');
        let (toc, _) = parse_toc(&gzip(&tar), &Limits::default()).unwrap();
        assert_eq!(toc.entries.len(), 1);

        let mut tar = Vec::new();
        tar_file(
            &mut tar,
            "././@LongLink",
            format!("{TOC_TAR_NAME}\0").as_bytes(),
            b'L',
        );
        tar_file(&mut tar, "ignored-name", JSON, b'0');
        assert!(parse_toc(&gzip(&tar), &Limits::default()).is_ok());
    }

    #[test]
    fn a_toc_that_inflates_far_beyond_its_compressed_size_is_refused_before_inflating() {
        // 8 MiB of JSON that gzip packs into a few KiB: a real TOC compresses a few times at most.
        let mut json = b"{\"version\":1,\"entries\":[".to_vec();
        json.resize(8 << 20, b' ');
        json.extend_from_slice(b"]}");
        let region = toc_region(TOC_TAR_NAME, &json);
        let limits = Limits::default();
        assert!((json.len() as u64) > region.len() as u64 * limits.max_expansion);
        match decompress_toc(&region, &limits) {
            Err(FormatError::TooLarge { limit, .. }) => {
                assert_eq!(limit, region.len() as u64 * limits.max_expansion)
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // With room for it, the same TOC parses.
        let generous = Limits {
            max_expansion: u64::MAX,
            ..Limits::default()
        };
        assert!(parse_toc(&region, &generous).is_ok());
    }

    #[test]
    fn bad_tocs_are_rejected() {
        let limits = Limits::default();
        let wrong_name = toc_region("other.json", JSON);
        assert!(matches!(
            parse_toc(&wrong_name, &limits),
            Err(FormatError::InvalidTocTar { .. })
        ));
        let region = toc_region(TOC_TAR_NAME, JSON);
        assert!(parse_toc(&region[..region.len() / 2], &limits).is_err());
        assert!(parse_toc(b"not gzip", &limits).is_err());
        assert!(parse_toc(&gzip(b"short"), &limits).is_err());
        assert!(parse_toc(&gzip(&[0u8; 1024]), &limits).is_err());
        let mut corrupt = Vec::new();
        tar_file(&mut corrupt, TOC_TAR_NAME, JSON, b'0');
        corrupt[0] = b'X';
        assert!(matches!(
            parse_toc(&gzip(&corrupt), &limits),
            Err(FormatError::InvalidTocTar { .. })
        ));
        let mut dir = Vec::new();
        tar_file(&mut dir, TOC_TAR_NAME, b"", b'5');
        assert!(parse_toc(&gzip(&dir), &limits).is_err());
        let small = Limits {
            max_toc_bytes: 8,
            ..Limits::default()
        };
        assert!(matches!(
            parse_toc(&region, &small),
            Err(FormatError::TooLarge { .. })
        ));
        let bad_json = toc_region(TOC_TAR_NAME, b"{not json");
        assert!(matches!(
            parse_toc(&bad_json, &limits),
            Err(FormatError::TocJson { .. })
        ));
    }

    #[test]
    fn base256_sizes() {
        let mut field = [0u8; 12];
        field[0] = 0x80;
        field[11] = 5;
        assert_eq!(parse_size(&field).unwrap(), 5);
        field[0] = 0xc0;
        assert!(parse_size(&field).is_err());
        assert_eq!(parse_size(b"00000000017\0").unwrap(), 15);
    }
}
