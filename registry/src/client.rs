//! `RegistryClient`: the network half of the registry module. Host selection and fallback across
//! `hosts.toml` mirrors, the authentication loop (challenge → token or basic → retry once), redirects
//! followed by hand (never leaking `Authorization` to another origin), retries with backoff, and the
//! verified manifest / config / blob / range operations built on them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, LOCATION, RANGE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest as _, Sha256};
use tracing::debug;
use url::Url;

use super::auth::{parse_challenges, parse_token_response, Challenge, DockerAuths};
use super::hosts::{load_hosts, HostSpec, TlsSettings};
use super::manifest::{
    detect_media_type, manifest_kind, require_sha256, verify, ManifestKind, MANIFEST_ACCEPT,
};
use super::{
    BlobStream, Credentials, Descriptor, Digest, ImageIndex, ImageManifest, LayerDescriptor,
    MediaType, Platform, Reference, RegistryConfig, RegistryError, ResolvedImage,
};

const MAX_REDIRECTS: usize = 10;
const MAX_INDEX_DEPTH: usize = 4;
/// Largest image config accepted; real configs are kilobytes.
const MAX_CONFIG_SIZE: u64 = 32 << 20;
/// Largest token endpoint answer accepted.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// `Retry-After` is honoured up to this long.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);
/// Tokens are dropped this long before they expire.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A client for OCI distribution registries. Cheap to clone; clones share HTTP connections, the
/// parsed host configuration and cached tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RegistryConfig,
    docker_auths: DockerAuths,
    /// One HTTP client per distinct TLS setting, built on first use and reused.
    http_clients: Mutex<HashMap<TlsSettings, reqwest::Client>>,
    /// The hosts of each registry, from `hosts.toml`, read once.
    hosts: Mutex<HashMap<String, Arc<[Arc<Endpoint>]>>>,
    /// Bearer tokens by (origin, scope).
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// The last challenge each origin answered with, so later requests authenticate up front.
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Serializes token requests so concurrent misses share one token.
    token_fetch: tokio::sync::Mutex<()>,
}

struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

/// One host of a registry with its HTTP client.
struct Endpoint {
    spec: HostSpec,
    /// `scheme://host:port` that credentials and configured headers are sent to.
    origin: String,
    client: reqwest::Client,
}

#[derive(Clone, Copy, Debug)]
enum Capability {
    Resolve,
    Pull,
}

impl Capability {
    fn name(self) -> &'static str {
        match self {
            Capability::Resolve => "resolve",
            Capability::Pull => "pull",
        }
    }
}

/// How much of a successful response body to read before returning.
#[derive(Clone, Debug)]
enum BodyLimit {
    /// Leave the body as a stream.
    Stream,
    /// Read at most this many bytes of a manifest.
    Manifest(u64),
    /// Read exactly this many bytes of a blob (or blob range) named by `digest`.
    Exact { digest: String, len: u64 },
    /// Read at most this many bytes of a token answer.
    Token(u64),
}

struct Request<'a> {
    url: Url,
    accept: Option<&'a str>,
    range: Option<String>,
    body: BodyLimit,
}

enum Body {
    Bytes(Bytes),
    Stream(reqwest::Response),
}

struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    /// The final URL after redirects.
    url: Url,
    body: Body,
}

impl Fetched {
    fn into_bytes(self) -> Bytes {
        match self.body {
            Body::Bytes(b) => b,
            Body::Stream(_) => Bytes::new(),
        }
    }
}

/// A URL as shown in logs and errors: without its query, which may carry signatures.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

fn origin_of(url: &Url) -> String {
    url.origin().ascii_serialization()
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.to_string(),
    }
}

fn jitter(max: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    max.mul_f64((r % 1000) as f64 / 1000.0)
}

fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    base + jitter(base / 2)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP))
}

fn status_error(status: StatusCode, url: &Url) -> RegistryError {
    let shown_url = shown(url);
    match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
            host: host_of(url),
            url: shown_url,
        },
        StatusCode::FORBIDDEN => RegistryError::Forbidden { url: shown_url },
        StatusCode::NOT_FOUND => RegistryError::NotFound { url: shown_url },
        status => RegistryError::Status {
            url: shown_url,
            status: status.as_u16(),
        },
    }
}

fn truncated(
    digest: &str,
    expected: u64,
    received: u64,
    source: Option<reqwest::Error>,
) -> RegistryError {
    RegistryError::Truncated {
        digest: digest.to_string(),
        expected,
        received,
        source: source.map(|e| Box::new(e) as _),
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`) into (START, END inclusive).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, _total) = rest.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?))
}

impl RegistryClient {
    /// Builds a client; reads the docker config now and each registry's `hosts.toml` on first use.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let docker_auths = DockerAuths::load(config.docker_config.as_deref())?;
        let inner = Inner {
            config,
            docker_auths,
            http_clients: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            token_fetch: tokio::sync::Mutex::new(()),
        };
        // Build the default client now so a broken TLS backend fails here, not on first pull.
        inner.http_client(&TlsSettings::default())?;
        Ok(RegistryClient {
            inner: Arc::new(inner),
        })
    }

    /// tag/digest -> (index | manifest) -> the host platform's manifest -> config; every digest verified.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        self.resolve_platform(reference, &Platform::host()).await
    }

    /// Like [`resolve`](Self::resolve), choosing the manifest for `platform` from an index.
    pub async fn resolve_platform(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let inner = &self.inner;
        let manifest_ref = reference.manifest_ref();
        let expected = reference.digest();
        let (media_type, target_bytes, digest) = inner
            .with_fallback(reference, Capability::Resolve, |ep| {
                inner.fetch_manifest_from(ep, reference, &manifest_ref, expected, None)
            })
            .await?;
        let target = Descriptor::new(
            MediaType::from(media_type.as_str()),
            target_bytes.len() as u64,
            digest.to_oci(),
        );
        debug!(reference = %reference, digest = %digest, media_type = %media_type, "resolved image target");

        let mut manifest = target.clone();
        let mut manifest_bytes = target_bytes.clone();
        let mut kind = manifest_kind(&media_type)?;
        let mut depth = 0;
        while kind == ManifestKind::Index {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(RegistryError::InvalidManifest {
                    digest: manifest.digest().to_string(),
                    reason: "image indexes nested too deeply".to_string(),
                });
            }
            let index: ImageIndex = serde_json::from_slice(&manifest_bytes).map_err(|e| {
                RegistryError::InvalidManifest {
                    digest: manifest.digest().to_string(),
                    reason: e.to_string(),
                }
            })?;
            let chosen = platform
                .select(index.manifests())
                .ok_or_else(|| RegistryError::PlatformNotFound {
                    reference: reference.to_string(),
                    platform: platform.to_string(),
                })?
                .clone();
            let declared = manifest_kind(chosen.media_type().as_ref())?;
            let (fetched_type, bytes) = self.fetch_manifest_typed(reference, &chosen).await?;
            kind = manifest_kind(&fetched_type)?;
            if kind != declared {
                return Err(RegistryError::InvalidManifest {
                    digest: chosen.digest().to_string(),
                    reason: format!(
                        "index declares {} but the content is {fetched_type}",
                        chosen.media_type()
                    ),
                });
            }
            debug!(digest = %chosen.digest(), platform = %platform, "selected platform manifest");
            manifest = chosen;
            manifest_bytes = bytes;
        }

        let image_manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| {
                RegistryError::InvalidManifest {
                    digest: manifest.digest().to_string(),
                    reason: e.to_string(),
                }
            })?;
        let config = image_manifest.config().clone();
        let config_bytes = self.fetch_config(reference, &config).await?;
        let layers = image_manifest
            .layers()
            .iter()
            .map(|layer| {
                require_sha256(layer.digest())?;
                LayerDescriptor::try_from(layer).map_err(|_| RegistryError::UnsupportedDigest {
                    digest: layer.digest().to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedImage {
            reference: reference.with_digest(digest),
            target,
            target_bytes,
            manifest_digest: require_sha256(manifest.digest())?,
            manifest,
            manifest_bytes,
            image_manifest,
            config_digest: require_sha256(config.digest())?,
            config,
            config_bytes,
            target_digest: digest,
            layers,
        })
    }

    /// Whole blob as a stream of chunks; verifies size and sha256 at the end (the last item is an Err on mismatch or truncation).
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
    ) -> Result<BlobStream, RegistryError> {
        let inner = &self.inner;
        let digest = require_sha256(descriptor.digest())?;
        let expected = descriptor.size();
        let digest_ref = &digest;
        let (endpoint, fetched) = inner
            .with_fallback(reference, Capability::Pull, |ep| async move {
                let digest = digest_ref;
                let fetched = inner
                    .get_blob(&ep, reference, digest, None, BodyLimit::Stream)
                    .await?;
                if let Some(len) = content_length(&fetched.headers) {
                    if len != expected {
                        return Err(RegistryError::SizeMismatch {
                            digest: digest.to_string(),
                            expected,
                            actual: len,
                        });
                    }
                }
                Ok((ep, fetched))
            })
            .await?;
        let Body::Stream(response) = fetched.body else {
            unreachable!("BodyLimit::Stream always yields a streaming body");
        };
        let state = BlobRead {
            client: self.clone(),
            endpoint,
            reference: reference.clone(),
            response,
            hasher: Sha256::new(),
            received: 0,
            expected,
            digest,
            url: fetched.url,
            idle_timeout: inner.config.request_timeout,
            resumes_left: inner.config.max_retries,
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(state),
            BlobRead::next,
        )))
    }

    /// Exactly bytes [range.start, range.end) of the blob (HTTP Range GET, expects 206 + matching Content-Range; length checked).
    pub async fn read_range(
        &self,
        reference: &Reference,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<Bytes, RegistryError> {
        if range.start > range.end {
            return Err(RegistryError::InvalidRange {
                start: range.start,
                end: range.end,
            });
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let inner = &self.inner;
        let start = range.start;
        let len = range.end - start;
        let last = range.end - 1;
        inner
            .with_fallback(reference, Capability::Pull, |ep| async move {
                let body = BodyLimit::Exact {
                    digest: digest.to_string(),
                    len,
                };
                let fetched = inner
                    .get_blob(&ep, reference, digest, Some((start, last)), body)
                    .await?;
                let not_honoured = |reason: String| RegistryError::RangeNotHonoured {
                    url: shown(&fetched.url),
                    reason,
                };
                if fetched.status != StatusCode::PARTIAL_CONTENT {
                    return Err(not_honoured(format!(
                        "status {}, expected 206",
                        fetched.status.as_u16()
                    )));
                }
                let content_range = fetched
                    .headers
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| not_honoured("no Content-Range header".to_string()))?;
                if parse_content_range(content_range) != Some((start, last)) {
                    return Err(not_honoured(format!(
                        "Content-Range {content_range:?}, expected bytes {start}-{last}"
                    )));
                }
                Ok(fetched.into_bytes())
            })
            .await
    }

    /// Fetch a manifest/index by digest with size limit + verification (used for other platforms or re-fetch).
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
    ) -> Result<Bytes, RegistryError> {
        self.fetch_manifest_typed(reference, descriptor)
            .await
            .map(|(_, bytes)| bytes)
    }

    /// Fetches a manifest by descriptor; returns the media type detected from the content too.
    async fn fetch_manifest_typed(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
    ) -> Result<(String, Bytes), RegistryError> {
        let inner = &self.inner;
        let digest = &require_sha256(descriptor.digest())?;
        let limit = inner.config.max_manifest_size;
        if descriptor.size() > limit {
            return Err(RegistryError::ManifestTooLarge { limit });
        }
        let manifest_ref = digest.to_string();
        let (media_type, bytes, _) = inner
            .with_fallback(reference, Capability::Pull, |ep| {
                inner.fetch_manifest_from(
                    ep,
                    reference,
                    &manifest_ref,
                    Some(digest),
                    Some(descriptor.size()),
                )
            })
            .await?;
        Ok((media_type, bytes))
    }

    /// Fetches and verifies the image config blob.
    async fn fetch_config(
        &self,
        reference: &Reference,
        descriptor: &Descriptor,
    ) -> Result<Bytes, RegistryError> {
        let inner = &self.inner;
        let digest = &require_sha256(descriptor.digest())?;
        let size = descriptor.size();
        if size > MAX_CONFIG_SIZE {
            return Err(RegistryError::ConfigTooLarge {
                limit: MAX_CONFIG_SIZE,
            });
        }
        inner
            .with_fallback(reference, Capability::Pull, |ep| async move {
                let body = BodyLimit::Exact {
                    digest: digest.to_string(),
                    len: size,
                };
                let fetched = inner.get_blob(&ep, reference, digest, None, body).await?;
                let bytes = fetched.into_bytes();
                verify(&bytes, digest, Some(size))?;
                Ok(bytes)
            })
            .await
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// State of a whole-blob stream: hashes and counts as chunks pass through.
struct BlobRead {
    client: RegistryClient,
    /// The host that served the stream; a resumed read goes back to it.
    endpoint: Arc<Endpoint>,
    reference: Reference,
    response: reqwest::Response,
    hasher: Sha256,
    received: u64,
    expected: u64,
    digest: Digest,
    url: Url,
    idle_timeout: Duration,
    /// How many more times a broken body may be resumed with a Range request.
    resumes_left: u32,
}

impl BlobRead {
    async fn next(
        state: Option<BlobRead>,
    ) -> Option<(Result<Bytes, RegistryError>, Option<BlobRead>)> {
        let mut st = state?;
        loop {
            let chunk = tokio::time::timeout(st.idle_timeout, st.response.chunk()).await;
            let failure = match chunk {
                Err(_) => RegistryError::Timeout {
                    url: shown(&st.url),
                },
                Ok(Err(e)) => truncated(&st.digest.to_string(), st.expected, st.received, Some(e)),
                Ok(Ok(Some(chunk))) => return st.accept(chunk),
                Ok(Ok(None)) => return st.finish(),
            };
            debug!(
                url = %shown(&st.url),
                received = st.received,
                error = %failure,
                resumes_left = st.resumes_left,
                "blob read broke off"
            );
            if st.resumes_left == 0 {
                return Some((Err(failure), None));
            }
            st.resumes_left -= 1;
            if let Err(e) = st.resume().await {
                debug!(url = %shown(&st.url), error = %e, "cannot resume blob read");
                return Some((Err(failure), None));
            }
        }
    }

    fn accept(mut self, chunk: Bytes) -> Option<(Result<Bytes, RegistryError>, Option<BlobRead>)> {
        self.received += chunk.len() as u64;
        if self.received > self.expected {
            let err = RegistryError::SizeMismatch {
                digest: self.digest.to_string(),
                expected: self.expected,
                actual: self.received,
            };
            return Some((Err(err), None));
        }
        self.hasher.update(&chunk);
        Some((Ok(chunk), Some(self)))
    }

    fn finish(self) -> Option<(Result<Bytes, RegistryError>, Option<BlobRead>)> {
        if self.received < self.expected {
            let err = truncated(&self.digest.to_string(), self.expected, self.received, None);
            return Some((Err(err), None));
        }
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.digest {
            let err = RegistryError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            };
            return Some((Err(err), None));
        }
        None
    }

    /// Continues the body from `received` with a Range request to the same host.
    async fn resume(&mut self) -> Result<(), RegistryError> {
        let inner = &self.client.inner;
        tokio::time::sleep(backoff(0)).await;
        let url = self
            .endpoint
            .url(&self.reference, &format!("blobs/{}", self.digest))?;
        let fetched = inner
            .get(
                &self.endpoint,
                &self.reference,
                Request {
                    url,
                    accept: None,
                    range: Some(format!("bytes={}-", self.received)),
                    body: BodyLimit::Stream,
                },
            )
            .await?;
        let content_range = fetched
            .headers
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        if fetched.status != StatusCode::PARTIAL_CONTENT
            || content_range != Some((self.received, self.expected - 1))
        {
            return Err(RegistryError::RangeNotHonoured {
                url: shown(&fetched.url),
                reason: format!(
                    "status {} and Content-Range {content_range:?} when resuming at byte {}",
                    fetched.status.as_u16(),
                    self.received
                ),
            });
        }
        let Body::Stream(response) = fetched.body else {
            unreachable!("BodyLimit::Stream always yields a streaming body");
        };
        debug!(url = %shown(&fetched.url), offset = self.received, "resumed blob read");
        self.response = response;
        self.url = fetched.url;
        Ok(())
    }
}

impl Endpoint {
    /// `api_base/REPO/REST`, plus `?ns=REGISTRY` for mirrors (as containerd sends).
    fn url(&self, reference: &Reference, rest: &str) -> Result<Url, RegistryError> {
        let mut url = self.spec.api_base.clone();
        let path = format!(
            "{}/{}/{rest}",
            self.spec.api_base.path().trim_end_matches('/'),
            reference.repository()
        );
        url.set_path(&path);
        if self.spec.mirror {
            url.query_pairs_mut()
                .append_pair("ns", reference.registry());
        }
        Ok(url)
    }
}

impl Inner {
    fn http_client(&self, tls: &TlsSettings) -> Result<reqwest::Client, RegistryError> {
        let mut clients = self.http_clients.lock().expect("http client map poisoned");
        if let Some(client) = clients.get(tls) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")));
        if tls.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        for path in &tls.ca {
            let pem = std::fs::read(path).map_err(|e| RegistryError::Client {
                reason: format!("cannot read CA {}: {e}", path.display()),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Client {
                    reason: format!("invalid CA {}: {e}", path.display()),
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| RegistryError::Client {
            reason: e.to_string(),
        })?;
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }

    /// The hosts of `reference`'s registry that have `capability`, in the order to try them.
    fn endpoints(
        &self,
        reference: &Reference,
        capability: Capability,
    ) -> Result<Vec<Arc<Endpoint>>, RegistryError> {
        let registry = reference.registry();
        let cached = self
            .hosts
            .lock()
            .expect("hosts map poisoned")
            .get(registry)
            .cloned();
        let all = match cached {
            Some(all) => all,
            None => {
                let specs = load_hosts(
                    self.config.hosts_dir.as_deref(),
                    registry,
                    self.config.plain_http,
                )?;
                let mut endpoints = Vec::with_capacity(specs.len());
                for spec in specs {
                    endpoints.push(Arc::new(Endpoint {
                        origin: origin_of(&spec.api_base),
                        client: self.http_client(&spec.tls)?,
                        spec,
                    }));
                }
                let all: Arc<[Arc<Endpoint>]> = endpoints.into();
                self.hosts
                    .lock()
                    .expect("hosts map poisoned")
                    .insert(registry.to_string(), all.clone());
                all
            }
        };
        let selected: Vec<_> = all
            .iter()
            .filter(|ep| match capability {
                Capability::Resolve => ep.spec.capabilities.resolve,
                Capability::Pull => ep.spec.capabilities.pull,
            })
            .cloned()
            .collect();
        if selected.is_empty() {
            return Err(RegistryError::NoHosts {
                registry: registry.to_string(),
                capability: capability.name(),
            });
        }
        Ok(selected)
    }

    /// Runs `op` against each host in turn until one succeeds; returns the last host's error.
    async fn with_fallback<T, F, Fut>(
        &self,
        reference: &Reference,
        capability: Capability,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let endpoints = self.endpoints(reference, capability)?;
        let count = endpoints.len();
        for (i, ep) in endpoints.into_iter().enumerate() {
            let origin = ep.origin.clone();
            match op(ep).await {
                Ok(value) => return Ok(value),
                Err(e) if i + 1 == count => return Err(e),
                Err(e) => {
                    debug!(host = %origin, error = %e, "registry host failed, trying the next one");
                }
            }
        }
        unreachable!("endpoints() never returns an empty list")
    }

    /// GETs a manifest by tag or digest from one host; verifies limit, digest and header digest.
    async fn fetch_manifest_from(
        &self,
        ep: Arc<Endpoint>,
        reference: &Reference,
        manifest_ref: &str,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(String, Bytes, Digest), RegistryError> {
        let url = ep.url(reference, &format!("manifests/{manifest_ref}"))?;
        let fetched = self
            .get(
                &ep,
                reference,
                Request {
                    url,
                    accept: Some(MANIFEST_ACCEPT),
                    range: None,
                    body: BodyLimit::Manifest(self.config.max_manifest_size),
                },
            )
            .await?;
        let content_type = fetched
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = fetched
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        let bytes = fetched.into_bytes();
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected {
            verify(&bytes, expected, expected_size)?;
        }
        if let Some(header) = header_digest {
            // Only sha256 can be checked; a registry using another algorithm is trusted on the bytes.
            if header.parse::<Digest>().is_ok() && header != actual.to_string() {
                return Err(RegistryError::DigestMismatch {
                    expected: header,
                    actual: actual.to_string(),
                });
            }
        }
        let media_type = detect_media_type(content_type.as_deref(), &bytes, &actual)?;
        Ok((media_type, bytes, actual))
    }

    /// Credentials for a host: explicit or `config.json` ones for the origin, `config.json` ones
    /// for a mirror's own host (explicit credentials are never sent to mirrors).
    fn credentials_for(&self, ep: &Endpoint, reference: &Reference) -> Option<Credentials> {
        if ep.spec.mirror {
            self.docker_auths.get(&host_of(&ep.spec.api_base)).cloned()
        } else {
            self.config
                .credentials
                .clone()
                .or_else(|| self.docker_auths.get(reference.registry()).cloned())
        }
    }

    /// An authenticated GET against one host: sends what is known up front, and on a 401 from that
    /// host learns the challenge, (re)authenticates and retries exactly once.
    /// GETs blob `digest` from one host, whole or bytes `first..=last` of it.
    async fn get_blob(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: BodyLimit,
    ) -> Result<Fetched, RegistryError> {
        let request = Request {
            url: ep.url(reference, &format!("blobs/{digest}"))?,
            accept: None,
            range: range.map(|(first, last)| format!("bytes={first}-{last}")),
            body,
        };
        self.get(ep, reference, request).await
    }

    async fn get(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        request: Request<'_>,
    ) -> Result<Fetched, RegistryError> {
        let scope = format!("repository:{}:pull", reference.repository());
        let creds = self.credentials_for(ep, reference);
        let mut reauthenticated = false;
        loop {
            let auth = self.auth_header(ep, &scope, creds.as_ref()).await?;
            let fetched = self
                .send(
                    &ep.client,
                    &request,
                    auth.as_ref(),
                    &ep.origin,
                    &ep.spec.headers,
                )
                .await?;
            if fetched.status == StatusCode::UNAUTHORIZED
                && !reauthenticated
                && origin_of(&fetched.url) == ep.origin
            {
                if let Some(used) = &auth {
                    self.forget_token(&ep.origin, &scope, used);
                }
                let challenges: Vec<Challenge> = fetched
                    .headers
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                let challenge = challenges
                    .iter()
                    .find(|c| matches!(c, Challenge::Bearer { .. }))
                    .or_else(|| challenges.first())
                    .cloned();
                let usable = match &challenge {
                    Some(Challenge::Bearer { .. }) => true,
                    Some(Challenge::Basic) => creds.is_some(),
                    None => false,
                };
                if usable {
                    debug!(url = %shown(&fetched.url), "registry asked for authentication");
                    self.challenges
                        .lock()
                        .expect("challenge map poisoned")
                        .insert(ep.origin.clone(), challenge.expect("usable implies some"));
                    reauthenticated = true;
                    continue;
                }
            }
            if !fetched.status.is_success() {
                return Err(status_error(fetched.status, &fetched.url));
            }
            return Ok(fetched);
        }
    }

    /// The `Authorization` value to send to `ep` for `scope`, if any is known.
    async fn auth_header(
        &self,
        ep: &Endpoint,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if let Some(header) = self.cached_token(&ep.origin, scope) {
            return Ok(Some(header));
        }
        let challenge = self
            .challenges
            .lock()
            .expect("challenge map poisoned")
            .get(&ep.origin)
            .cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(creds.and_then(|c| {
                let mut v = HeaderValue::from_str(&c.basic_header()).ok()?;
                v.set_sensitive(true);
                Some(v)
            })),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let header = self
                    .fetch_token(
                        ep,
                        scope,
                        &realm,
                        service.as_deref(),
                        challenge_scope.as_deref(),
                        creds,
                    )
                    .await?;
                Ok(Some(header))
            }
        }
    }

    fn cached_token(&self, origin: &str, scope: &str) -> Option<HeaderValue> {
        let mut tokens = self.tokens.lock().expect("token map poisoned");
        let key = (origin.to_string(), scope.to_string());
        match tokens.get(&key) {
            Some(t) if t.expires > Instant::now() => Some(t.header.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Drops the cached token for (origin, scope) if it is the one that was just refused.
    fn forget_token(&self, origin: &str, scope: &str, used: &HeaderValue) {
        let mut tokens = self.tokens.lock().expect("token map poisoned");
        let key = (origin.to_string(), scope.to_string());
        if tokens.get(&key).is_some_and(|t| t.header == *used) {
            tokens.remove(&key);
        }
    }

    /// GETs a bearer token from `realm` (with basic credentials if any) and caches it.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        scope: &str,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<HeaderValue, RegistryError> {
        let _single_flight = self.token_fetch.lock().await;
        if let Some(header) = self.cached_token(&ep.origin, scope) {
            return Ok(header);
        }
        let token_error = |reason: String| RegistryError::Token {
            realm: realm.to_string(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| token_error(format!("invalid realm: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_error("realm is not an http(s) URL".to_string()));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
            if let Some(extra) = challenge_scope.filter(|s| !s.is_empty() && *s != scope) {
                query.append_pair("scope", extra);
            }
        }
        let auth = match creds {
            Some(c) => {
                let mut v = HeaderValue::from_str(&c.basic_header())
                    .map_err(|_| token_error("credentials are not a valid header".to_string()))?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        debug!(realm = %shown(&url), scope, with_credentials = creds.is_some(), "requesting registry token");
        let realm_origin = origin_of(&url);
        let request = Request {
            url: url.clone(),
            accept: Some("application/json"),
            range: None,
            body: BodyLimit::Token(MAX_TOKEN_RESPONSE),
        };
        let fetched = self
            .send(
                &ep.client,
                &request,
                auth.as_ref(),
                &realm_origin,
                &HeaderMap::new(),
            )
            .await?;
        match fetched.status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => {
                return Err(RegistryError::Unauthorized {
                    host: host_of(&ep.spec.api_base),
                    url: shown(&url),
                })
            }
            StatusCode::FORBIDDEN => return Err(RegistryError::Forbidden { url: shown(&url) }),
            s => return Err(token_error(format!("status {}", s.as_u16()))),
        }
        let (token, lifetime) = parse_token_response(&fetched.into_bytes()).map_err(token_error)?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| token_error("token is not a valid header value".to_string()))?;
        header.set_sensitive(true);
        let lifetime = if lifetime > TOKEN_EXPIRY_MARGIN * 2 {
            lifetime - TOKEN_EXPIRY_MARGIN
        } else {
            lifetime
        };
        self.tokens.lock().expect("token map poisoned").insert(
            (ep.origin.clone(), scope.to_string()),
            CachedToken {
                header: header.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        Ok(header)
    }

    /// Sends a GET, following redirects and retrying transient failures with backoff. A successful
    /// answer's body is read here (per `request.body`) so that a failure while reading is retried too.
    async fn send(
        &self,
        client: &reqwest::Client,
        request: &Request<'_>,
        auth: Option<&HeaderValue>,
        auth_origin: &str,
        origin_headers: &HeaderMap,
    ) -> Result<Fetched, RegistryError> {
        let mut attempt = 0u32;
        loop {
            let result = self
                .send_once(client, request, auth, auth_origin, origin_headers)
                .await;
            let delay = match &result {
                Ok(f)
                    if f.status.is_server_error() || f.status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    retry_after(&f.headers).unwrap_or_else(|| backoff(attempt))
                }
                Err(e) if e.is_transient() => backoff(attempt),
                _ => return result,
            };
            if attempt >= self.config.max_retries {
                return result;
            }
            attempt += 1;
            match &result {
                Ok(f) => {
                    debug!(url = %shown(&f.url), status = f.status.as_u16(), attempt, delay_ms = delay.as_millis() as u64, "retrying registry request")
                }
                Err(e) => {
                    debug!(url = %shown(&request.url), error = %e, attempt, delay_ms = delay.as_millis() as u64, "retrying registry request")
                }
            }
            drop(result);
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: GET, following up to ten redirects; `Authorization` and configured headers go
    /// only to `auth_origin`.
    async fn send_once(
        &self,
        client: &reqwest::Client,
        request: &Request<'_>,
        auth: Option<&HeaderValue>,
        auth_origin: &str,
        origin_headers: &HeaderMap,
    ) -> Result<Fetched, RegistryError> {
        let timeout = self.config.request_timeout;
        let mut url = request.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut builder = client.get(url.clone());
            if let Some(accept) = request.accept {
                builder = builder.header(ACCEPT, accept);
            }
            if let Some(range) = &request.range {
                builder = builder.header(RANGE, range);
            }
            if origin_of(&url) == auth_origin {
                for (name, value) in origin_headers {
                    builder = builder.header(name, value);
                }
                if let Some(auth) = auth {
                    builder = builder.header(AUTHORIZATION, auth.clone());
                }
            }
            let streaming = matches!(request.body, BodyLimit::Stream);
            if !streaming {
                builder = builder.timeout(timeout);
            }
            // Streams have no total timeout; only the wait for the response head is bounded here.
            let response = tokio::time::timeout(timeout, builder.send())
                .await
                .map_err(|_| RegistryError::Timeout { url: shown(&url) })?
                .map_err(|e| RegistryError::transport(&url, e))?;
            let status = response.status();
            debug!(url = %shown(&url), status = status.as_u16(), "registry response");
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| RegistryError::InvalidResponse {
                        url: shown(&url),
                        reason: format!("redirect {} without a Location", status.as_u16()),
                    })?;
                let next = url
                    .join(location)
                    .map_err(|e| RegistryError::InvalidResponse {
                        url: shown(&url),
                        reason: format!("invalid redirect location: {e}"),
                    })?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(RegistryError::InvalidResponse {
                        url: shown(&url),
                        reason: "redirect to a non-http(s) URL".to_string(),
                    });
                }
                url = next;
                continue;
            }
            let headers = response.headers().clone();
            // A range request answered with the whole blob is left unread for the caller to reject.
            let whole_for_range = request.range.is_some() && status != StatusCode::PARTIAL_CONTENT;
            let body = if status.is_success() && !whole_for_range {
                read_body(response, &request.body, &url).await?
            } else {
                Body::Stream(response)
            };
            return Ok(Fetched {
                status,
                headers,
                url,
                body,
            });
        }
        Err(RegistryError::TooManyRedirects {
            url: shown(&request.url),
        })
    }
}

/// Reads a successful body according to `limit`, checking `Content-Length` first.
async fn read_body(
    mut response: reqwest::Response,
    limit: &BodyLimit,
    url: &Url,
) -> Result<Body, RegistryError> {
    let (max, exact) = match limit {
        BodyLimit::Stream => return Ok(Body::Stream(response)),
        BodyLimit::Manifest(max) | BodyLimit::Token(max) => (*max, None),
        BodyLimit::Exact { digest, len } => (*len, Some((digest.as_str(), *len))),
    };
    let too_large = |actual: u64| match limit {
        BodyLimit::Manifest(max) => RegistryError::ManifestTooLarge { limit: *max },
        BodyLimit::Exact { digest, len } => RegistryError::SizeMismatch {
            digest: digest.clone(),
            expected: *len,
            actual,
        },
        _ => RegistryError::InvalidResponse {
            url: shown(url),
            reason: format!("body larger than {max} bytes"),
        },
    };
    if let Some(len) = response.content_length() {
        if len > max {
            return Err(too_large(len));
        }
    }
    let capacity = response.content_length().unwrap_or(0).min(max) as usize;
    let mut buf = BytesMut::with_capacity(capacity);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > max {
                    return Err(too_large((buf.len() + chunk.len()) as u64));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(match exact {
                    Some((digest, len)) => truncated(digest, len, buf.len() as u64, Some(e)),
                    None => RegistryError::transport(url, e),
                })
            }
        }
    }
    if let Some((digest, len)) = exact {
        if (buf.len() as u64) < len {
            return Err(truncated(digest, len, buf.len() as u64, None));
        }
    }
    Ok(Body::Bytes(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9)));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5)));
        assert_eq!(parse_content_range(" bytes  10-19/20 "), Some((10, 19)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) >= BACKOFF_BASE && backoff(0) <= BACKOFF_BASE * 3 / 2);
        assert!(backoff(3) >= BACKOFF_BASE * 8);
        assert!(backoff(40) <= BACKOFF_MAX * 3 / 2);
    }

    #[test]
    fn retry_after_is_capped() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), Some(RETRY_AFTER_CAP));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_map_to_errors() {
        let u = Url::parse("http://r.io:5000/v2/a/manifests/t").unwrap();
        match status_error(StatusCode::UNAUTHORIZED, &u) {
            RegistryError::Unauthorized { host, url } => {
                assert_eq!(host, "r.io:5000");
                assert_eq!(url, u.as_str());
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            status_error(StatusCode::FORBIDDEN, &u),
            RegistryError::Forbidden { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::NOT_FOUND, &u),
            RegistryError::NotFound { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_GATEWAY, &u),
            RegistryError::Status { status: 502, .. }
        ));
    }

    #[test]
    fn endpoint_urls() {
        let hosts = crate::hosts::parse_hosts(
            r#"server = "https://r.io"
               [host."http://m:5000/prefix"]
                 override_path = true
               [host."https://m2/v2"]
            "#,
            std::path::Path::new("/x"),
            "r.io",
            false,
        )
        .unwrap();
        let reference: Reference = "r.io/a/b:t".parse().unwrap();
        let urls: Vec<String> = hosts
            .into_iter()
            .map(|spec| {
                let ep = Endpoint {
                    origin: origin_of(&spec.api_base),
                    client: reqwest::Client::new(),
                    spec,
                };
                ep.url(&reference, "manifests/t").unwrap().to_string()
            })
            .collect();
        assert_eq!(
            urls,
            [
                "http://m:5000/prefix/a/b/manifests/t?ns=r.io",
                "https://m2/v2/a/b/manifests/t?ns=r.io",
                "https://r.io/v2/a/b/manifests/t",
            ]
        );
    }

    #[test]
    fn shown_urls_drop_the_query() {
        let u = Url::parse("https://s3.example.com/blob?X-Amz-Signature=secret").unwrap();
        assert_eq!(shown(&u), "https://s3.example.com/blob");
        assert_eq!(origin_of(&u), "https://s3.example.com");
        assert_eq!(
            host_of(&Url::parse("http://127.0.0.1:5000/v2").unwrap()),
            "127.0.0.1:5000"
        );
    }
}
