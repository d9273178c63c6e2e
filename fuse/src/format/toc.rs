//! The TOC JSON shared by eStargz (`stargz.index.json`) and zstd:chunked (the "manifest"): one entry
//! per tar entry, plus `chunk` entries that continue a large regular file. Parsing is bounded by
//! [`Limits`]: the byte size is checked before parsing, and the entry count while parsing, so a
//! hostile TOC cannot make us allocate more than it is allowed to.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::FormatError;

/// Name of the JSON file inside the eStargz TOC tar (and a name reserved at the layer root).
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// A root entry marking the end of the files to prefetch (eStargz).
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// A root entry saying that nothing should be prefetched (eStargz).
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

/// The only TOC version either format has defined.
pub const TOC_VERSION: u32 = 1;

/// Bounds applied to untrusted footers and TOCs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest TOC JSON accepted (uncompressed bytes).
    pub max_toc_bytes: u64,
    /// Most TOC entries accepted (including `chunk` entries).
    pub max_entries: usize,
    /// Longest normalized path accepted, in bytes. Each component is also capped at 255 bytes (NAME_MAX).
    pub max_name_len: usize,
    /// Largest regular file accepted.
    pub max_file_size: u64,
    /// Largest single chunk (uncompressed) accepted: bounds what one read may have to decompress.
    pub max_chunk_size: u64,
    /// Largest ratio of a TOC's JSON to its compressed bytes. A real TOC compresses a few times (its
    /// chunk digests do not compress at all); a few hundred KB that inflate to hundreds of MB are an
    /// attack on the daemon's memory, refused before they are inflated.
    pub max_expansion: u64,
}

impl Limits {
    /// The largest TOC JSON accepted from `compressed` bytes.
    pub fn max_toc_bytes_from(&self, compressed: u64) -> u64 {
        self.max_toc_bytes
            .min(compressed.saturating_mul(self.max_expansion))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_toc_bytes: 150 << 20,
            max_entries: 10_000_000,
            max_name_len: 4096,
            max_file_size: 1 << 40,
            max_chunk_size: 256 << 20,
            max_expansion: 64,
        }
    }
}

/// The kind of a TOC entry. `Chunk` continues the preceding `Reg` entry of the same name.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Chunk,
}

/// One TOC entry as in the JSON (eStargz and zstd:chunked share the shape). Absent and `null` fields
/// read as zero / empty, matching the producers' `omitempty`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// The tar path as stored (not normalized).
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(rename = "type")]
    pub r#type: EntryKind,
    /// Logical size of a regular file.
    #[serde(default, deserialize_with = "null_as_default")]
    pub size: u64,
    /// Modification time, RFC 3339 (eStargz: seconds in UTC; zstd:chunked: with nanoseconds).
    #[serde(default, rename = "modtime")]
    pub mod_time: Option<String>,
    /// Target of a symlink or hardlink.
    #[serde(default, rename = "linkName", deserialize_with = "null_as_default")]
    pub link_name: String,
    /// The tar mode: permission bits, setuid/setgid/sticky and possibly file type bits.
    #[serde(default, deserialize_with = "null_as_default")]
    pub mode: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub uid: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub gid: u64,
    #[serde(default, rename = "userName", deserialize_with = "null_as_default")]
    pub uname: String,
    #[serde(default, rename = "groupName", deserialize_with = "null_as_default")]
    pub gname: String,
    #[serde(default, rename = "devMajor", deserialize_with = "null_as_default")]
    pub dev_major: u64,
    #[serde(default, rename = "devMinor", deserialize_with = "null_as_default")]
    pub dev_minor: u64,
    /// Extended attributes, values base64-encoded.
    #[serde(default, deserialize_with = "null_as_default")]
    pub xattrs: BTreeMap<String, String>,
    /// `sha256:<hex>` of the whole file's contents (regular files).
    #[serde(default, deserialize_with = "null_as_default")]
    pub digest: String,
    /// Where the compressed bytes of this entry's (first) chunk start in the blob.
    #[serde(default, deserialize_with = "null_as_default")]
    pub offset: u64,
    /// zstd:chunked: where the compressed bytes of the file end in the blob.
    #[serde(default, rename = "endOffset", deserialize_with = "null_as_default")]
    pub end_offset: u64,
    /// eStargz: uncompressed offset of this payload inside the compressed stream at `offset`.
    #[serde(default, rename = "innerOffset", deserialize_with = "null_as_default")]
    pub inner_offset: u64,
    /// Offset of this chunk inside the file.
    #[serde(default, rename = "chunkOffset", deserialize_with = "null_as_default")]
    pub chunk_offset: u64,
    /// Size of this chunk; 0 means "to the end of the file".
    #[serde(default, rename = "chunkSize", deserialize_with = "null_as_default")]
    pub chunk_size: u64,
    /// `sha256:<hex>` of this chunk's uncompressed bytes.
    #[serde(default, rename = "chunkDigest", deserialize_with = "null_as_default")]
    pub chunk_digest: String,
    /// zstd:chunked: `""` for data, `"zeros"` for a run of zeros (still stored as a frame).
    #[serde(default, rename = "chunkType", deserialize_with = "null_as_default")]
    pub chunk_type: String,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A parsed TOC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toc {
    pub version: u32,
    pub entries: Vec<TocEntry>,
}

/// Parses TOC JSON bytes, rejecting oversized input, too many entries and unknown versions.
pub fn parse_toc_json(bytes: &[u8], limits: &Limits) -> Result<Toc, FormatError> {
    if bytes.len() as u64 > limits.max_toc_bytes {
        return Err(FormatError::TooLarge {
            what: "toc json",
            limit: limits.max_toc_bytes,
        });
    }
    let exceeded = Cell::new(false);
    let seed = TocSeed {
        max_entries: limits.max_entries,
        exceeded: &exceeded,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|toc| deserializer.end().map(|()| toc));
    let (version, entries) = match parsed {
        Ok(parsed) => parsed,
        Err(_) if exceeded.get() => {
            return Err(FormatError::TooManyEntries {
                limit: limits.max_entries,
            })
        }
        Err(source) => return Err(FormatError::TocJson { source }),
    };
    let version = version.unwrap_or(0);
    if version != u64::from(TOC_VERSION) {
        return Err(FormatError::UnsupportedTocVersion { version });
    }
    Ok(Toc {
        version: TOC_VERSION,
        entries: entries.unwrap_or_default(),
    })
}

/// Deserializes the top-level TOC object, counting entries as they stream in.
struct TocSeed<'a> {
    max_entries: usize,
    exceeded: &'a Cell<bool>,
}

type RawToc = (Option<u64>, Option<Vec<TocEntry>>);

impl<'de> DeserializeSeed<'de> for TocSeed<'_> {
    type Value = RawToc;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawToc, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TocSeed<'_> {
    type Value = RawToc;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a toc object with version and entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawToc, A::Error> {
        let mut version = None;
        let mut entries = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "version" => {
                    if version.is_some() {
                        return Err(de::Error::duplicate_field("version"));
                    }
                    version = Some(map.next_value::<u64>()?);
                }
                "entries" => {
                    if entries.is_some() {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    entries = Some(map.next_value_seed(EntriesSeed {
                        max_entries: self.max_entries,
                        exceeded: self.exceeded,
                    })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((version, entries))
    }
}

struct EntriesSeed<'a> {
    max_entries: usize,
    exceeded: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<TocEntry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<TocEntry>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<TocEntry>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of toc entries")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<TocEntry>, E> {
        Ok(Vec::new())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<TocEntry>, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(entry) = seq.next_element::<TocEntry>()? {
            if entries.len() >= self.max_entries {
                self.exceeded.set(true);
                return Err(de::Error::custom("too many toc entries"));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// Parses an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into seconds and nanoseconds
/// since the Unix epoch. Returns `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        let mut v = 0i64;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(d - b'0');
        }
        Some(v)
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let second = num(17..19)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut pos = 19;
    let mut nanos: u32 = 0;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 9 {
                nanos = nanos * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(pos..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |c: u8| c.is_ascii_digit().then(|| i64::from(c - b'0'));
            let hours = digit(*h1)? * 10 + digit(*h2)?;
            let minutes = digit(*m1)? * 10 + digit(*m2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let secs = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Some((secs, nanos))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn parses_estargz_shaped_entries() {
        let json = br#"{"version":1,"entries":[
            {"name":"bin/","type":"dir","modtime":"2021-01-02T03:04:05Z","mode":16877,"NumLink":0},
            {"name":"bin/sh","type":"reg","size":10,"mode":2541,"uid":1,"gid":2,"userName":"u",
             "groupName":"g","offset":123,"chunkSize":4,"chunkDigest":"sha256:00","digest":"sha256:11",
             "xattrs":{"user.a":"YQ=="}},
            {"name":"bin/sh","type":"chunk","offset":200,"chunkOffset":4,"chunkDigest":"sha256:22"},
            {"name":"dev/null","type":"char","devMajor":1,"devMinor":3},
            {"name":"l","type":"symlink","linkName":"bin/sh","xattrs":null}
        ],"extra":{"ignored":[1,2,3]}}"#;
        let toc = parse_toc_json(json, &limits()).unwrap();
        assert_eq!(toc.version, 1);
        assert_eq!(toc.entries.len(), 5);
        let sh = &toc.entries[1];
        assert_eq!(sh.r#type, EntryKind::Reg);
        assert_eq!((sh.size, sh.mode, sh.uid, sh.gid), (10, 2541, 1, 2));
        assert_eq!((sh.uname.as_str(), sh.gname.as_str()), ("u", "g"));
        assert_eq!((sh.offset, sh.chunk_size), (123, 4));
        assert_eq!(sh.xattrs.get("user.a").map(String::as_str), Some("YQ=="));
        assert_eq!(toc.entries[2].r#type, EntryKind::Chunk);
        assert_eq!(toc.entries[2].chunk_offset, 4);
        assert_eq!((toc.entries[3].dev_major, toc.entries[3].dev_minor), (1, 3));
        assert_eq!(toc.entries[4].link_name, "bin/sh");
        assert_eq!(
            toc.entries[0].mod_time.as_deref(),
            Some("2021-01-02T03:04:05Z")
        );
    }

    #[test]
    fn parses_zstd_chunked_shaped_entries() {
        let json = br#"{"version":1,"entries":[
            {"type":"reg","name":"f","mode":420,"size":3,"modtime":"2022-05-06T07:08:09.123456789+02:00",
             "accesstime":"2022-05-06T07:08:09Z","digest":"sha256:aa","offset":40,"endOffset":80}
        ],"tarSplitDigest":"sha256:bb"}"#;
        let toc = parse_toc_json(json, &limits()).unwrap();
        assert_eq!(toc.entries[0].end_offset, 80);
    }

    #[test]
    fn rejects_bad_json_unknown_type_and_versions() {
        assert!(matches!(
            parse_toc_json(b"{", &limits()),
            Err(FormatError::TocJson { .. })
        ));
        assert!(matches!(
            parse_toc_json(
                br#"{"version":1,"entries":[{"name":"a","type":"socket"}]}"#,
                &limits()
            ),
            Err(FormatError::TocJson { .. })
        ));
        assert!(matches!(
            parse_toc_json(
                br#"{"version":1,"entries":[{"name":"a","type":"reg","size":-1}]}"#,
                &limits()
            ),
            Err(FormatError::TocJson { .. })
        ));
        assert!(matches!(
            parse_toc_json(br#"{"version":2,"entries":[]}"#, &limits()),
            Err(FormatError::UnsupportedTocVersion { version: 2 })
        ));
        assert!(matches!(
            parse_toc_json(br#"{"entries":[]}"#, &limits()),
            Err(FormatError::UnsupportedTocVersion { version: 0 })
        ));
        assert!(matches!(
            parse_toc_json(br#"{"version":1,"entries":[]} trailing"#, &limits()),
            Err(FormatError::TocJson { .. })
        ));
        assert!(matches!(
            parse_toc_json(br#"{"version":1,"version":1}"#, &limits()),
            Err(FormatError::TocJson { .. })
        ));
        let empty = parse_toc_json(br#"{"version":1,"entries":null}"#, &limits()).unwrap();
        assert!(empty.entries.is_empty());
    }

    #[test]
    fn enforces_size_and_entry_limits() {
        let json =
            br#"{"version":1,"entries":[{"name":"a","type":"dir"},{"name":"b","type":"dir"}]}"#;
        let tight = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        assert!(matches!(
            parse_toc_json(json, &tight),
            Err(FormatError::TooManyEntries { limit: 1 })
        ));
        let small = Limits {
            max_toc_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_toc_json(json, &small),
            Err(FormatError::TooLarge { .. })
        ));
        let exact = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        assert_eq!(parse_toc_json(json, &exact).unwrap().entries.len(), 2);
    }

    #[test]
    fn default_limits_are_pinned() {
        let l = Limits::default();
        assert_eq!(l.max_toc_bytes, 150 << 20);
        assert_eq!(l.max_entries, 10_000_000);
        assert_eq!(l.max_name_len, 4096);
        assert_eq!(l.max_file_size, 1 << 40);
        assert_eq!(l.max_chunk_size, 256 << 20);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2021-01-02T03:04:05Z"),
            Some((1_609_556_645, 0))
        );
        assert_eq!(
            parse_rfc3339("2021-01-02T05:04:05.5+02:00"),
            Some((1_609_556_645, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2021-01-02T03:04:05.123456789123Z"),
            Some((1_609_556_645, 123_456_789))
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some((951_782_400, 0))
        );
        assert_eq!(parse_rfc3339("2001-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2021-01-02 03:04:05"), None);
        assert_eq!(parse_rfc3339("2021-13-02T03:04:05Z"), None);
        assert_eq!(parse_rfc3339("2021-01-02T03:04:05.Z"), None);
        assert_eq!(parse_rfc3339("2021-01-02T03:04:05+0200"), None);
        assert_eq!(parse_rfc3339(""), None);
    }
}
