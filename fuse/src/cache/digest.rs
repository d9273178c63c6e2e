//! [`ChunkDigest`]: the sha256 of a chunk's (or a whole file's) uncompressed bytes, the cache's only key.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The only algorithm the cache keys by, as spelled in OCI digests and TOC `chunkDigest` fields.
const PREFIX: &str = "sha256:";

/// sha256 of uncompressed bytes: a chunk's `chunkDigest`, or a whole regular file's `digest` in a TOC.
///
/// Displays and parses as `sha256:<64 lowercase hex>`; `Debug` is shortened to the first 12 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkDigest(pub [u8; 32]);

impl ChunkDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkDigest(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix (the on-disk file name).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex digits (no prefix), the form used in file names.
    pub(crate) fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).ok()?;
        Some(ChunkDigest(bytes))
    }
}

/// A string that is not `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk digest {input:?}: {reason}")]
pub struct ParseDigestError {
    /// The rejected input (truncated to 100 characters).
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for ChunkDigest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDigestError {
            input: s.chars().take(100).collect(),
            reason,
        };
        let hex = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| fail("only sha256 digests are supported"))?;
        ChunkDigest::from_hex(hex).ok_or_else(|| fail("expected 64 lowercase hex digits"))
    }
}

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.to_hex())
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({PREFIX}{}…)", hex::encode(&self.0[..6]))
    }
}

impl serde::Serialize for ChunkDigest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChunkDigest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256 of the empty string.
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn of_matches_the_known_sha256() {
        assert_eq!(ChunkDigest::of(b"").to_hex(), EMPTY);
        assert_eq!(
            ChunkDigest::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        let digest = ChunkDigest::of(b"chunk");
        let text = digest.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.parse::<ChunkDigest>().unwrap(), digest);
    }

    #[test]
    fn debug_is_short() {
        let debug = format!("{:?}", ChunkDigest::of(b""));
        assert_eq!(debug, "ChunkDigest(sha256:e3b0c44298fc…)");
    }

    #[test]
    fn parse_rejects_malformed_input() {
        let bad = [
            String::new(),
            EMPTY.to_string(),
            format!("sha512:{EMPTY}"),
            format!("sha256:{}", &EMPTY[1..]),
            format!("sha256:{EMPTY}0"),
            format!("sha256:{}", EMPTY.to_uppercase()),
            format!("sha256:{}g", &EMPTY[1..]),
            format!(" sha256:{EMPTY}"),
        ];
        for input in bad {
            let err = input.parse::<ChunkDigest>().unwrap_err();
            assert!(err.to_string().contains("invalid chunk digest"), "{err}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        let digest = ChunkDigest::of(b"x");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<ChunkDigest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<ChunkDigest>("\"sha256:00\"").is_err());
    }
}
