//! [`Digest`]: the sha256 of some bytes, skiff's only digest type. Blobs, manifests, configs, diff ids
//! and chunks are all named by one; skiff verifies everything it reads, so it accepts only the algorithm
//! it can verify.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The one algorithm, as spelled before the `:` of an OCI digest.
pub const ALGORITHM: &str = "sha256";
const PREFIX: &str = "sha256:";

/// A sha256 digest. Displays and parses as `sha256:<64 lowercase hex>` (the canonical OCI form);
/// `Debug` is shortened to the first 12 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// A string that is not a digest skiff accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The rejected input (at most 100 characters of it).
    pub input: String,
    pub reason: &'static str,
}

impl DigestError {
    fn new(input: &str, reason: &'static str) -> Self {
        DigestError {
            input: input.chars().take(100).collect(),
            reason,
        }
    }
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest a finished hasher computed.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest(hasher.finalize().into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Always `sha256`.
    pub fn algorithm(&self) -> &'static str {
        ALGORITHM
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix (file names in the stores).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase hex digits without a prefix (the form of file names).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::new(hex, "expected 64 lowercase hex digits"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes)
            .map_err(|_| DigestError::new(hex, "expected 64 lowercase hex digits"))?;
        Ok(Digest(bytes))
    }

    /// Parses the looser spellings some layer producers write in TOCs: the prefix may be missing and the
    /// hex digits may be uppercase. Everything else is as strict as [`FromStr`].
    pub fn parse_lenient(input: &str) -> Result<Self, DigestError> {
        let hex = input.strip_prefix(PREFIX).unwrap_or(input);
        if hex.len() != 64 {
            return Err(DigestError::new(input, "expected 64 hex digits"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes)
            .map_err(|_| DigestError::new(input, "expected 64 hex digits"))?;
        Ok(Digest(bytes))
    }

    /// This digest in oci-spec's form (the field type of its descriptors).
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        oci_spec::image::Sha256Digest::from_str(&self.hex())
            .map(oci_spec::image::Digest::from)
            .unwrap_or_else(|_| unreachable!("64 lowercase hex digits are a sha256 digest"))
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    /// Parses exactly `sha256:<64 lowercase hex>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| DigestError::new(s, "only sha256 digests are supported"))?;
        Digest::from_hex(hex).map_err(|err| DigestError::new(s, err.reason))
    }
}

impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;

    fn try_from(digest: &oci_spec::image::Digest) -> Result<Self, Self::Error> {
        digest.as_ref().parse()
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(digest: Digest) -> Self {
        digest.to_oci()
    }
}

impl PartialEq<oci_spec::image::Digest> for Digest {
    fn eq(&self, other: &oci_spec::image::Digest) -> bool {
        Digest::try_from(other).is_ok_and(|other| other == *self)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({PREFIX}{}…)", hex::encode(&self.0[..6]))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
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
        assert_eq!(Digest::of(b"").hex(), EMPTY);
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut hasher = Sha256::new();
        hasher.update(b"ab");
        hasher.update(b"c");
        assert_eq!(Digest::from_hasher(hasher), Digest::of(b"abc"));
    }

    #[test]
    fn display_and_parse_round_trip() {
        let digest = Digest::of(b"chunk");
        let text = digest.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(text.parse::<Digest>().unwrap(), digest);
        assert_eq!(Digest::from_hex(&digest.hex()).unwrap(), digest);
        assert_eq!(digest.algorithm(), "sha256");
    }

    #[test]
    fn debug_is_short() {
        assert_eq!(
            format!("{:?}", Digest::of(b"")),
            "Digest(sha256:e3b0c44298fc…)"
        );
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
            format!("SHA256:{EMPTY}"),
        ];
        for input in bad {
            let err = input.parse::<Digest>().unwrap_err();
            assert!(err.to_string().contains("invalid digest"), "{err}");
        }
        assert!(Digest::from_hex(&EMPTY.to_uppercase()).is_err());
    }

    #[test]
    fn lenient_parse_takes_what_toc_producers_write() {
        let digest = Digest::from_hex(EMPTY).unwrap();
        assert_eq!(Digest::parse_lenient(EMPTY).unwrap(), digest);
        assert_eq!(
            Digest::parse_lenient(&format!("sha256:{}", EMPTY.to_uppercase())).unwrap(),
            digest
        );
        for bad in ["", "sha256:00", "md5:00", &format!("sha512:{EMPTY}")] {
            assert!(Digest::parse_lenient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn converts_to_and_from_oci_spec() {
        let digest = Digest::of(b"x");
        let oci = digest.to_oci();
        assert_eq!(oci.to_string(), digest.to_string());
        assert_eq!(Digest::try_from(&oci).unwrap(), digest);
        assert_eq!(digest, oci);
        let sha512: oci_spec::image::Digest =
            format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        assert!(Digest::try_from(&sha512).is_err());
        assert_ne!(digest, sha512);
    }

    #[test]
    fn serde_uses_the_string_form() {
        let digest = Digest::of(b"x");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
    }
}
