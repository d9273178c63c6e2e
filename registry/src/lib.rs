//! skiff's OCI distribution registry client: turns an image reference into verified manifest and config
//! bytes, and serves whole blobs (streamed, sha256-verified) and exact byte ranges of blobs (what the
//! daemon's lazy layers read through). It owns authentication (anonymous, bearer token, basic; docker `config.json`
//! credentials), containerd `hosts.toml` mirrors, redirects, retries and timeouts. It knows nothing of
//! layer formats, caches, containerd or FUSE.

mod auth;
mod client;
mod error;
mod hosts;
mod manifest;
mod platform;
mod reference;

use std::path::PathBuf;
use std::time::Duration;

pub use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
pub use skiff_types::{Digest, LayerDescriptor};

pub use auth::Credentials;
pub use client::RegistryClient;
pub use error::{BoxError, RegistryError};
pub use manifest::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
pub use platform::Platform;
pub use reference::Reference;

/// A whole blob as a stream of chunks. The stream verifies size and sha256 as it goes; on a mismatch
/// or truncation its last item is an `Err`, so a consumer must not trust the bytes until the stream
/// has ended without one.
pub type BlobStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, RegistryError>> + Send>>;

/// How the registry client reaches registries.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// containerd certs.d `config_path`: a directory of `HOST[:PORT]/hosts.toml` (and `_default/`).
    /// Each registry's file is read once per client.
    pub hosts_dir: Option<PathBuf>,
    /// A docker `config.json` with `auths`; `None` means `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json` if it exists. Credential helpers (`credsStore`) are not consulted.
    pub docker_config: Option<PathBuf>,
    /// Speak plain HTTP to the origin (like `ctr --plain-http`); mirrors use their own URL's scheme.
    pub plain_http: bool,
    /// Explicit credentials for the origin registry; they take precedence over `config.json`.
    pub credentials: Option<Credentials>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Total timeout for manifest, config, token and range requests; for whole-blob streams, the
    /// longest wait for the response head and then for each chunk of the body.
    pub request_timeout: Duration,
    /// Retries (with exponential backoff and jitter) after 5xx, 429 and transport errors.
    pub max_retries: u32,
    /// Largest manifest or index accepted, in bytes.
    pub max_manifest_size: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            hosts_dir: None,
            docker_config: None,
            plain_http: false,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            max_manifest_size: 4 << 20,
        }
    }
}

/// The result of resolving a reference: everything needed to start pulling the image, all verified.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference that was resolved, pinned to `target`'s digest (its tag kept, if any).
    pub reference: Reference,
    /// What the tag or digest names: an index / manifest list, or a manifest (containerd's image
    /// target). Its digest is the sha256 of `target_bytes`.
    pub target: Descriptor,
    pub target_bytes: bytes::Bytes,
    /// The manifest chosen for the platform (equal to `target` when the target is a manifest).
    pub manifest: Descriptor,
    pub manifest_bytes: bytes::Bytes,
    pub image_manifest: ImageManifest,
    /// The image config descriptor (from the manifest) and its verified bytes.
    pub config: Descriptor,
    pub config_bytes: bytes::Bytes,
    /// The digests of `target`, `manifest` and `config`, checked.
    pub target_digest: Digest,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    /// The manifest's layers, bottom first, their digests checked.
    pub layers: Vec<LayerDescriptor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_pinned() {
        let c = RegistryConfig::default();
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.max_manifest_size, 4 * 1024 * 1024);
        assert!(!c.plain_http);
        assert!(c.credentials.is_none() && c.hosts_dir.is_none() && c.docker_config.is_none());
    }

    #[test]
    fn config_debug_redacts_credentials() {
        let c = RegistryConfig {
            credentials: Some(Credentials {
                username: "u".into(),
                password: "s3cr3t".into(),
            }),
            ..RegistryConfig::default()
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn client_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<RegistryClient>();
        fn stream_is_send(_: &BlobStream) {}
        let _ = stream_is_send;
    }
}
