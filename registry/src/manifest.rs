//! Manifest media types and content checks: which manifest kinds the client accepts, telling an index
//! from a manifest (by header, by the `mediaType` field, or by shape), and sha256 verification.

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{Digest, RegistryError};

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_TYPE_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: the four supported kinds, preferring OCI.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Whether a manifest document lists per-platform manifests or describes one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ManifestKind {
    Index,
    Manifest,
}

/// Classifies a manifest media type; schema1 and anything unknown is refused.
pub(crate) fn manifest_kind(media_type: &str) -> Result<ManifestKind, RegistryError> {
    match media_type {
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Ok(ManifestKind::Manifest),
        MEDIA_TYPE_DOCKER_SCHEMA1 | MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED => {
            Err(RegistryError::UnsupportedMediaType {
                media_type: format!("{media_type} (docker schema1 manifests are not supported)"),
            })
        }
        other => Err(RegistryError::UnsupportedMediaType {
            media_type: other.to_string(),
        }),
    }
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
}

/// The media type of manifest bytes: the document's own `mediaType` (covered by its digest), else a
/// specific `Content-Type`, else its shape (`manifests` → OCI index, `config` → OCI manifest).
pub(crate) fn detect_media_type(
    content_type: Option<&str>,
    body: &[u8],
    digest: &Digest,
) -> Result<String, RegistryError> {
    let probe: Probe =
        serde_json::from_slice(body).map_err(|e| RegistryError::InvalidManifest {
            digest: digest.to_string(),
            reason: e.to_string(),
        })?;
    if probe.schema_version == Some(1) {
        return Err(RegistryError::UnsupportedMediaType {
            media_type: format!(
                "{MEDIA_TYPE_DOCKER_SCHEMA1} (docker schema1 manifests are not supported)"
            ),
        });
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| c.starts_with("application/vnd."));
    let media_type = match (probe.media_type, content_type) {
        (Some(mt), _) if !mt.is_empty() => mt,
        (_, Some(ct)) => ct.to_string(),
        _ if probe.manifests.is_some() => MEDIA_TYPE_OCI_INDEX.to_string(),
        _ if probe.config.is_some() => MEDIA_TYPE_OCI_MANIFEST.to_string(),
        _ => {
            return Err(RegistryError::InvalidManifest {
                digest: digest.to_string(),
                reason: "neither an index nor a manifest".to_string(),
            })
        }
    };
    manifest_kind(&media_type)?;
    Ok(media_type)
}

/// The digest of a descriptor (or of anything oci-spec parsed), refused unless it is one this client can
/// verify: the one place the registry module turns oci-spec's digests into skiff's.
pub(crate) fn require_sha256(digest: &oci_spec::image::Digest) -> Result<Digest, RegistryError> {
    Digest::try_from(digest).map_err(|_| RegistryError::UnsupportedDigest {
        digest: digest.to_string(),
    })
}

/// Checks `bytes` against an expected digest and (if known) size.
pub(crate) fn verify(
    bytes: &Bytes,
    digest: &Digest,
    size: Option<u64>,
) -> Result<(), RegistryError> {
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(RegistryError::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
    }
    let actual = Digest::of(bytes);
    if &actual != digest {
        return Err(RegistryError::DigestMismatch {
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Digest {
        Digest::of(b"x")
    }

    #[test]
    fn kinds() {
        assert_eq!(
            manifest_kind(MEDIA_TYPE_OCI_INDEX).unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            manifest_kind(MEDIA_TYPE_DOCKER_MANIFEST_LIST).unwrap(),
            ManifestKind::Index
        );
        assert_eq!(
            manifest_kind(MEDIA_TYPE_OCI_MANIFEST).unwrap(),
            ManifestKind::Manifest
        );
        assert_eq!(
            manifest_kind(MEDIA_TYPE_DOCKER_MANIFEST).unwrap(),
            ManifestKind::Manifest
        );
        let err = manifest_kind(MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED).unwrap_err();
        assert!(err.to_string().contains("schema1"), "{err}");
        assert!(manifest_kind("text/plain").is_err());
    }

    #[test]
    fn detection() {
        let doc = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#;
        assert_eq!(
            detect_media_type(Some("application/json"), doc, &d()).unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            detect_media_type(None, bare_index, &d()).unwrap(),
            MEDIA_TYPE_OCI_INDEX
        );
        assert_eq!(
            detect_media_type(
                Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
                bare_index,
                &d()
            )
            .unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST_LIST
        );
        let bare_manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            detect_media_type(None, bare_manifest, &d()).unwrap(),
            MEDIA_TYPE_OCI_MANIFEST
        );
        let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(matches!(
            detect_media_type(None, schema1, &d()),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        let artifact = br#"{"schemaVersion":2,"mediaType":"application/vnd.example+json"}"#;
        assert!(matches!(
            detect_media_type(None, artifact, &d()),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            detect_media_type(None, b"{oops", &d()),
            Err(RegistryError::InvalidManifest { .. })
        ));
    }

    #[test]
    fn verification() {
        let bytes = Bytes::from_static(b"hello");
        let digest = Digest::of(&bytes);
        assert_eq!(
            digest.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        verify(&bytes, &digest, Some(5)).unwrap();
        assert!(matches!(
            verify(&bytes, &digest, Some(6)),
            Err(RegistryError::SizeMismatch { .. })
        ));
        assert!(matches!(
            verify(&Bytes::from_static(b"hellO"), &digest, None),
            Err(RegistryError::DigestMismatch { .. })
        ));
        let sha512: oci_spec::image::Digest =
            format!("sha512:{}", "a".repeat(128)).parse().unwrap();
        assert!(matches!(
            require_sha256(&sha512),
            Err(RegistryError::UnsupportedDigest { .. })
        ));
    }
}
