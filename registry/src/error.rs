//! The one error type of the registry client, with enough context (URL, digest, host) in every variant
//! to tell an operator what failed without a log.

use std::error::Error as StdError;

/// Boxed cause of a transport or parse failure; keeps HTTP-library types out of the public API.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong talking to an OCI distribution registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: String },
    #[error("unsupported digest {digest}: only sha256 is supported")]
    UnsupportedDigest { digest: String },
    #[error("unexpected status {status} from {url}")]
    Status { url: String, status: u16 },
    #[error("unauthorized: {host} rejected the credentials (or lack of them) for {url}")]
    Unauthorized { host: String, url: String },
    #[error("forbidden: access to {url} denied")]
    Forbidden { url: String },
    #[error("not found: {url}")]
    NotFound { url: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("truncated body for {digest}: expected {expected} bytes, received {received}")]
    Truncated {
        digest: String,
        expected: u64,
        received: u64,
        #[source]
        source: Option<BoxError>,
    },
    #[error("manifest exceeds the size limit of {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    #[error("config blob exceeds the size limit of {limit} bytes")]
    ConfigTooLarge { limit: u64 },
    #[error("unsupported media type {media_type}")]
    UnsupportedMediaType { media_type: String },
    #[error("invalid manifest {digest}: {reason}")]
    InvalidManifest { digest: String, reason: String },
    #[error("no manifest for platform {platform} in {reference}")]
    PlatformNotFound { reference: String, platform: String },
    #[error("invalid range {start}..{end}")]
    InvalidRange { start: u64, end: u64 },
    #[error("range request to {url} not honoured: {reason}")]
    RangeNotHonoured { url: String, reason: String },
    #[error("invalid response from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("too many redirects starting at {url}")]
    TooManyRedirects { url: String },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("timed out talking to {url}")]
    Timeout { url: String },
    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("token request to {realm} failed: {reason}")]
    Token { realm: String, reason: String },
    #[error("invalid hosts configuration {path}: {reason}")]
    HostsConfig { path: String, reason: String },
    #[error("invalid docker config {path}: {reason}")]
    DockerConfig { path: String, reason: String },
    #[error("cannot build http client: {reason}")]
    Client { reason: String },
    #[error("no registry host with the {capability} capability configured for {registry}")]
    NoHosts {
        registry: String,
        capability: &'static str,
    },
}

impl RegistryError {
    pub(crate) fn transport(url: &url::Url, err: reqwest::Error) -> Self {
        let url = url.to_string();
        if err.is_timeout() {
            RegistryError::Timeout { url }
        } else if err.is_connect() {
            RegistryError::Connect {
                url,
                source: Box::new(err),
            }
        } else {
            RegistryError::Transport {
                url,
                source: Box::new(err),
            }
        }
    }

    /// Whether retrying the same request may succeed (transport trouble, not an answer).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Connect { .. }
                | RegistryError::Timeout { .. }
                | RegistryError::Transport { .. }
                | RegistryError::Truncated {
                    source: Some(_),
                    ..
                }
        )
    }
}
