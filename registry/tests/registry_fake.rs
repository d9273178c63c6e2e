//! Drives `RegistryClient` against an honest in-process fake registry: a small HTTP/1.1 server on
//! 127.0.0.1 serving manifests, configs and blobs built in the test, with bearer or basic auth, a token
//! endpoint, Range support, redirects to a separate storage server, and injectable faults.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use skiff_registry::{
    Credentials, Descriptor, Digest, MediaType, Platform, Reference, RegistryClient,
    RegistryConfig, RegistryError, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const REPO: &str = "test/app";

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 server: one request per connection, answered by a handler.

#[derive(Clone, Debug)]
struct Req {
    path: String,
    query: String,
    headers: HashMap<String, String>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes (after announcing the full length), then close.
    truncate_to: Option<usize>,
    /// Leave out Content-Length; the body ends when the connection closes.
    omit_length: bool,
}

impl Resp {
    fn status(status: u16) -> Resp {
        Resp {
            status,
            ..Resp::default()
        }
    }

    fn ok(content_type: &str, body: Vec<u8>) -> Resp {
        Resp {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            ..Resp::default()
        }
    }

    fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    async fn start(handler: Handler) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_connection(sock, handler.clone(), log2.clone()));
            }
        });
        Server { addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, path_part: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(path_part))
            .count()
    }
}

async fn serve_connection(
    mut sock: tokio::net::TcpStream,
    handler: Handler,
    log: Arc<Mutex<Vec<Req>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let req = Req {
        path,
        query,
        headers,
    };
    log.lock().unwrap().push(req.clone());
    let resp = handler(&req);
    let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !resp.omit_length {
        out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let body = match resp.truncate_to {
        Some(n) => &resp.body[..n.min(resp.body.len())],
        None => &resp.body[..],
    };
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.flush().await;
    let _ = sock.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The fake registry.

enum Auth {
    Anonymous,
    /// Bearer tokens from `/token`; the token endpoint wants these basic credentials if set.
    Bearer(Option<(String, String)>),
    Basic(String, String),
}

struct Registry {
    auth: Auth,
    /// `tag or digest` -> (media type, bytes)
    manifests: Mutex<HashMap<String, (String, Vec<u8>)>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    /// What to serve instead of the real bytes for a digest (corruption).
    served_instead: Mutex<HashMap<String, Vec<u8>>>,
    self_url: Mutex<String>,
    valid_tokens: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    token_auth_headers: Mutex<Vec<Option<String>>>,
    /// Answer this many requests with 503 first.
    fail_next: AtomicUsize,
    redirect_blobs_to: Mutex<Option<String>>,
    truncate_blobs: AtomicBool,
    /// Truncate this many blob responses, then serve whole ones.
    truncate_blobs_once: AtomicUsize,
    ignore_range: AtomicBool,
    omit_length: AtomicBool,
    wrong_header_digest: AtomicBool,
}

impl Registry {
    fn new(auth: Auth) -> Arc<Registry> {
        Arc::new(Registry {
            auth,
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            served_instead: Mutex::default(),
            self_url: Mutex::default(),
            valid_tokens: Mutex::default(),
            token_requests: AtomicUsize::new(0),
            token_auth_headers: Mutex::default(),
            fail_next: AtomicUsize::new(0),
            redirect_blobs_to: Mutex::default(),
            truncate_blobs: AtomicBool::new(false),
            truncate_blobs_once: AtomicUsize::new(0),
            ignore_range: AtomicBool::new(false),
            omit_length: AtomicBool::new(false),
            wrong_header_digest: AtomicBool::new(false),
        })
    }

    async fn serve(self: &Arc<Self>) -> Server {
        let me = self.clone();
        let server = Server::start(Arc::new(move |req: &Req| me.handle(req))).await;
        *self.self_url.lock().unwrap() = server.url();
        server
    }

    fn add_blob(&self, bytes: &[u8]) -> String {
        let digest = sha(bytes);
        self.blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), bytes.to_vec());
        digest
    }

    fn add_manifest(&self, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> String {
        let digest = sha(bytes);
        let mut manifests = self.manifests.lock().unwrap();
        manifests.insert(digest.clone(), (media_type.into(), bytes.to_vec()));
        if let Some(tag) = tag {
            manifests.insert(tag.into(), (media_type.into(), bytes.to_vec()));
        }
        digest
    }

    fn revoke_tokens(&self) {
        self.valid_tokens.lock().unwrap().clear();
    }

    fn authorized(&self, req: &Req) -> Result<(), Resp> {
        let auth = req.header("authorization");
        match &self.auth {
            Auth::Anonymous => Ok(()),
            Auth::Bearer(_) => {
                let token = auth.and_then(|a| a.strip_prefix("Bearer "));
                if token.is_some_and(|t| self.valid_tokens.lock().unwrap().contains(t)) {
                    return Ok(());
                }
                let challenge = format!(
                    r#"Bearer realm="{}/token",service="fake-registry",scope="repository:{REPO}:pull""#,
                    self.self_url.lock().unwrap()
                );
                Err(Resp::status(401).header("WWW-Authenticate", &challenge))
            }
            Auth::Basic(user, pass) => {
                if auth == Some(basic(user, pass).as_str()) {
                    return Ok(());
                }
                Err(Resp::status(401).header("WWW-Authenticate", r#"Basic realm="fake""#))
            }
        }
    }

    fn handle(&self, req: &Req) -> Resp {
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Resp::status(503).header("Retry-After", "0");
        }
        if req.path == "/token" {
            return self.token(req);
        }
        if let Some(digest) = req.path.strip_prefix("/storage/") {
            return self.blob(digest, req);
        }
        if req.path == "/v2/" {
            return match self.authorized(req) {
                Ok(()) => Resp::ok("application/json", b"{}".to_vec()),
                Err(r) => r,
            };
        }
        let prefix = format!("/v2/{REPO}/");
        let Some(rest) = req.path.strip_prefix(&prefix) else {
            return Resp::status(404);
        };
        if let Err(resp) = self.authorized(req) {
            return resp;
        }
        if let Some(reference) = rest.strip_prefix("manifests/") {
            let found = self.manifests.lock().unwrap().get(reference).cloned();
            let Some((media_type, bytes)) = found else {
                return Resp::status(404);
            };
            let digest = if self.wrong_header_digest.load(Ordering::SeqCst) {
                sha(b"something else")
            } else {
                sha(&bytes)
            };
            let served = self
                .served_instead
                .lock()
                .unwrap()
                .get(&sha(&bytes))
                .cloned()
                .unwrap_or(bytes);
            return Resp {
                omit_length: self.omit_length.load(Ordering::SeqCst),
                ..Resp::ok(&media_type, served)
            }
            .header("Docker-Content-Digest", &digest);
        }
        if let Some(digest) = rest.strip_prefix("blobs/") {
            if let Some(storage) = self.redirect_blobs_to.lock().unwrap().clone() {
                return Resp::status(307).header(
                    "Location",
                    &format!("{storage}/storage/{digest}?X-Signature=abc"),
                );
            }
            return self.blob(digest, req);
        }
        Resp::status(404)
    }

    fn blob(&self, digest: &str, req: &Req) -> Resp {
        let Some(real) = self.blobs.lock().unwrap().get(digest).cloned() else {
            return Resp::status(404);
        };
        let bytes = self
            .served_instead
            .lock()
            .unwrap()
            .get(digest)
            .cloned()
            .unwrap_or(real);
        let truncate = self.truncate_blobs.load(Ordering::SeqCst);
        let range = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .map(|(a, b)| {
                let start = a.parse::<usize>().unwrap();
                (start, b.parse::<usize>().unwrap_or(usize::MAX))
            });
        let mut resp = match range {
            Some((start, end)) if !self.ignore_range.load(Ordering::SeqCst) => {
                if start >= bytes.len() {
                    return Resp::status(416);
                }
                let end = end.min(bytes.len() - 1);
                Resp {
                    status: 206,
                    body: bytes[start..=end].to_vec(),
                    ..Resp::default()
                }
                .header(
                    "Content-Range",
                    &format!("bytes {start}-{end}/{}", bytes.len()),
                )
            }
            _ => Resp::ok("application/octet-stream", bytes),
        };
        let truncate_once = self
            .truncate_blobs_once
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if truncate || truncate_once {
            resp.truncate_to = Some(resp.body.len() / 2);
        }
        resp
    }

    fn token(&self, req: &Req) -> Resp {
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let auth = req.header("authorization").map(str::to_string);
        self.token_auth_headers.lock().unwrap().push(auth.clone());
        if !req.query.contains("service=fake-registry")
            || !req.query.contains("scope=repository%3Atest%2Fapp%3Apull")
        {
            return Resp::status(400);
        }
        if let Auth::Bearer(Some((user, pass))) = &self.auth {
            if auth.as_deref() != Some(basic(user, pass).as_str()) {
                return Resp::status(401);
            }
        }
        let n = self.token_requests.load(Ordering::SeqCst);
        let token = format!("token-{n}");
        self.valid_tokens.lock().unwrap().insert(token.clone());
        // Alternate the two field names registries use.
        let body = if n % 2 == 1 {
            format!(r#"{{"token":"{token}","expires_in":300}}"#)
        } else {
            format!(r#"{{"access_token":"{token}"}}"#)
        };
        Resp::ok("application/json", body.into_bytes())
    }
}

fn sha(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

// ---------------------------------------------------------------------------------------------
// Images built in the test.

struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: String,
    manifest: Vec<u8>,
    manifest_digest: String,
}

fn push_image(registry: &Registry, tag: Option<&str>, arch: &str, manifest_type: &str) -> Image {
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )
    .into_bytes();
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let config_digest = registry.add_blob(&config);
    let layer_digest = registry.add_blob(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{manifest_type}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let manifest_digest = registry.add_manifest(tag, manifest_type, &manifest);
    Image {
        config,
        layer,
        layer_digest,
        manifest,
        manifest_digest,
    }
}

fn push_index(
    registry: &Registry,
    tag: &str,
    index_type: &str,
    entries: &[(&Image, &str, &str)],
) -> Vec<u8> {
    let manifests: Vec<String> = entries
        .iter()
        .map(|(image, manifest_type, arch)| {
            format!(
                r#"{{"mediaType":"{manifest_type}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                image.manifest_digest,
                image.manifest.len()
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{index_type}","manifests":[{}]}}"#,
        manifests.join(",")
    )
    .into_bytes();
    registry.add_manifest(Some(tag), index_type, &index);
    index
}

fn config() -> RegistryConfig {
    RegistryConfig {
        plain_http: true,
        docker_config: Some(empty_docker_config()),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_retries: 2,
        ..RegistryConfig::default()
    }
}

/// A docker config with no credentials, so the developer's own `~/.docker/config.json` is not used.
fn empty_docker_config() -> std::path::PathBuf {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/empty-docker-config.json"
    )
    .into()
}

fn client(config: RegistryConfig) -> RegistryClient {
    RegistryClient::new(config).unwrap()
}

fn reference(server: &Server, suffix: &str) -> Reference {
    format!("{}/{REPO}{suffix}", server.addr).parse().unwrap()
}

fn layer_descriptor(image: &Image) -> Descriptor {
    Descriptor::new(
        MediaType::ImageLayerGzip,
        image.layer.len() as u64,
        image.layer_digest.parse::<Digest>().unwrap().to_oci(),
    )
}

async fn collect(
    client: &RegistryClient,
    r: &Reference,
    d: &Descriptor,
) -> Result<Vec<u8>, RegistryError> {
    let mut stream = client.fetch_blob(r, d).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn resolve_by_tag_and_by_digest() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());

    let resolved = client.resolve(&reference(&server, ":v1")).await.unwrap();
    assert_eq!(resolved.target.digest().to_string(), image.manifest_digest);
    assert_eq!(resolved.target.size(), image.manifest.len() as u64);
    assert_eq!(resolved.target.media_type(), &MediaType::ImageManifest);
    assert_eq!(resolved.target, resolved.manifest);
    assert_eq!(&resolved.target_bytes[..], &image.manifest[..]);
    assert_eq!(&resolved.manifest_bytes[..], &image.manifest[..]);
    assert_eq!(&resolved.config_bytes[..], &image.config[..]);
    assert_eq!(resolved.config.size(), image.config.len() as u64);
    assert_eq!(resolved.image_manifest.layers().len(), 1);
    assert_eq!(
        resolved.reference.digest().map(ToString::to_string),
        Some(image.manifest_digest.clone())
    );
    let manifest_request = &server.requests()[0];
    assert!(manifest_request
        .header("accept")
        .unwrap()
        .contains(MEDIA_TYPE_OCI_INDEX));

    let by_digest = reference(&server, &format!("@{}", image.manifest_digest));
    let resolved = client.resolve(&by_digest).await.unwrap();
    assert_eq!(
        resolved.manifest.digest().to_string(),
        image.manifest_digest
    );
    assert!(server.requests().iter().any(|r| r
        .path
        .ends_with(&format!("/manifests/{}", image.manifest_digest))));

    // Again with Docker schema2 media types and no Content-Length.
    let docker = push_image(
        &registry,
        Some("docker"),
        "amd64",
        MEDIA_TYPE_DOCKER_MANIFEST,
    );
    registry.omit_length.store(true, Ordering::SeqCst);
    let resolved = client
        .resolve(&reference(&server, ":docker"))
        .await
        .unwrap();
    assert_eq!(
        resolved.target.media_type().to_string(),
        MEDIA_TYPE_DOCKER_MANIFEST
    );
    assert_eq!(resolved.target.digest().to_string(), docker.manifest_digest);
}

#[tokio::test]
async fn index_picks_the_platform() {
    let registry = Registry::new(Auth::Anonymous);
    let amd64 = push_image(&registry, None, "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let arm64 = push_image(&registry, None, "arm64", MEDIA_TYPE_OCI_MANIFEST);
    let index = push_index(
        &registry,
        "multi",
        MEDIA_TYPE_OCI_INDEX,
        &[
            (&amd64, MEDIA_TYPE_OCI_MANIFEST, "amd64"),
            (&arm64, MEDIA_TYPE_OCI_MANIFEST, "arm64"),
        ],
    );
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":multi");

    let arm = client
        .resolve_platform(&r, &"linux/arm64".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(arm.target.media_type(), &MediaType::ImageIndex);
    assert_eq!(&arm.target_bytes[..], &index[..]);
    assert_eq!(arm.target.digest().to_string(), sha(&index));
    assert_eq!(arm.manifest.digest().to_string(), arm64.manifest_digest);
    assert_eq!(&arm.config_bytes[..], &arm64.config[..]);

    let host = client.resolve(&r).await;
    match Platform::host().architecture.as_str() {
        "amd64" => assert_eq!(
            host.unwrap().manifest.digest().to_string(),
            amd64.manifest_digest
        ),
        "arm64" => assert_eq!(
            host.unwrap().manifest.digest().to_string(),
            arm64.manifest_digest
        ),
        _ => assert!(matches!(host, Err(RegistryError::PlatformNotFound { .. }))),
    }

    let missing = client
        .resolve_platform(&r, &"linux/s390x".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(missing, RegistryError::PlatformNotFound { .. }),
        "{missing}"
    );

    // A Docker manifest list works the same way, and fetch_manifest re-fetches a child by descriptor.
    let list = push_index(
        &registry,
        "list",
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        &[(&arm64, MEDIA_TYPE_OCI_MANIFEST, "arm64")],
    );
    let resolved = client
        .resolve_platform(
            &reference(&server, ":list"),
            &"linux/arm64/v8".parse().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(&resolved.target_bytes[..], &list[..]);
    assert_eq!(
        resolved.manifest.digest().to_string(),
        arm64.manifest_digest
    );
    let again = client.fetch_manifest(&r, &resolved.manifest).await.unwrap();
    assert_eq!(&again[..], &arm64.manifest[..]);
}

#[tokio::test]
async fn range_reads_are_exact() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");
    let digest: Digest = image.layer_digest.parse().unwrap();
    let len = image.layer.len() as u64;

    for range in [10..20, 0..1, len - 10..len, 0..len, 4096..70_000] {
        let bytes = client.read_range(&r, &digest, range.clone()).await.unwrap();
        assert_eq!(
            &bytes[..],
            &image.layer[range.start as usize..range.end as usize]
        );
    }
    let requests = server.requests();
    assert_eq!(requests[0].header("range"), Some("bytes=10-19"));
    assert_eq!(requests[1].header("range"), Some("bytes=0-0"));

    let before = server.requests().len();
    assert!(client
        .read_range(&r, &digest, 5..5)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        server.requests().len(),
        before,
        "an empty range needs no request"
    );
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = client.read_range(&r, &digest, 9..5).await.unwrap_err();
    assert!(matches!(backwards, RegistryError::InvalidRange { .. }));

    // Past the end: the registry answers 416.
    let past = client
        .read_range(&r, &digest, len + 1..len + 5)
        .await
        .unwrap_err();
    assert!(
        matches!(past, RegistryError::Status { status: 416, .. }),
        "{past}"
    );

    // A server that ignores Range is detected, not silently mis-sliced.
    registry.ignore_range.store(true, Ordering::SeqCst);
    let ignored = client.read_range(&r, &digest, 10..20).await.unwrap_err();
    assert!(
        matches!(ignored, RegistryError::RangeNotHonoured { .. }),
        "{ignored}"
    );
}

#[tokio::test]
async fn whole_blob_stream_is_verified() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");
    let bytes = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap();
    assert_eq!(bytes, image.layer);
}

#[tokio::test]
async fn bearer_token_flow_and_refresh_after_401() {
    let registry = Registry::new(Auth::Bearer(None));
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");

    client.resolve(&r).await.unwrap();
    assert_eq!(
        registry.token_requests.load(Ordering::SeqCst),
        1,
        "token is cached"
    );
    assert_eq!(
        registry.token_auth_headers.lock().unwrap()[0],
        None,
        "anonymous token"
    );
    let digest: Digest = image.layer_digest.parse().unwrap();
    client.read_range(&r, &digest, 0..10).await.unwrap();
    assert_eq!(registry.token_requests.load(Ordering::SeqCst), 1);

    // The registry forgets its tokens: the client gets a 401, drops its token and fetches a new one.
    registry.revoke_tokens();
    let bytes = client.read_range(&r, &digest, 10..20).await.unwrap();
    assert_eq!(&bytes[..], &image.layer[10..20]);
    assert_eq!(registry.token_requests.load(Ordering::SeqCst), 2);
    let ranged: Vec<Req> = server
        .requests()
        .into_iter()
        .filter(|q| q.header("range") == Some("bytes=10-19"))
        .collect();
    assert_eq!(ranged.len(), 2);
    assert_eq!(ranged[0].header("authorization"), Some("Bearer token-1"));
    assert_eq!(ranged[1].header("authorization"), Some("Bearer token-2"));
}

#[tokio::test]
async fn bearer_token_with_credentials_from_docker_config() {
    let registry = Registry::new(Auth::Bearer(Some(("alice".into(), "pw".into()))));
    push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let r = reference(&server, ":v1");

    // No credentials: the token endpoint refuses.
    let err = client(config()).resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:pw");
    std::fs::write(
        &path,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            server.addr
        ),
    )
    .unwrap();
    let with_config = client(RegistryConfig {
        docker_config: Some(path),
        ..config()
    });
    with_config.resolve(&r).await.unwrap();
    let headers = registry.token_auth_headers.lock().unwrap().clone();
    assert_eq!(
        headers.last().unwrap().as_deref(),
        Some(basic("alice", "pw").as_str())
    );
    // The registry itself only ever saw bearer tokens.
    assert!(server
        .requests()
        .iter()
        .filter(|q| q.path.starts_with("/v2/"))
        .all(|q| !q.header("authorization").unwrap_or("").starts_with("Basic")));
}

#[tokio::test]
async fn basic_auth() {
    let registry = Registry::new(Auth::Basic("bob".into(), "secret".into()));
    push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let r = reference(&server, ":v1");

    let creds = |password: &str| RegistryConfig {
        credentials: Some(Credentials {
            username: "bob".into(),
            password: password.into(),
        }),
        ..config()
    };
    let good = client(creds("secret"));
    good.resolve(&r).await.unwrap();
    // After the first challenge, basic credentials are sent up front.
    let before = server.requests().len();
    good.resolve(&r).await.unwrap();
    let after: Vec<Req> = server.requests()[before..].to_vec();
    assert!(after.iter().all(|q| q.header("authorization").is_some()));

    let err = client(creds("wrong")).resolve(&r).await.unwrap_err();
    match err {
        RegistryError::Unauthorized { host, url } => {
            assert_eq!(host, server.addr.to_string());
            assert!(url.contains("/manifests/v1"), "{url}");
        }
        other => panic!("expected Unauthorized, got {other}"),
    }
    let err = client(config()).resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn retries_after_503() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");

    registry.fail_next.store(1, Ordering::SeqCst);
    let resolved = client.resolve(&r).await.unwrap();
    assert_eq!(
        resolved.manifest.digest().to_string(),
        image.manifest_digest
    );
    assert_eq!(server.count("/manifests/v1"), 2);

    // More failures than retries: the 503 surfaces with its URL.
    registry.fail_next.store(10, Ordering::SeqCst);
    let err = client.resolve(&r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err}"
    );
    assert_eq!(
        server.count("/manifests/v1"),
        2 + 3,
        "one try plus max_retries"
    );
    registry.fail_next.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn redirects_never_leak_authorization() {
    let storage_registry = Registry::new(Auth::Anonymous);
    let registry = Registry::new(Auth::Bearer(None));
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    push_image(&storage_registry, None, "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let storage = storage_registry.serve().await;
    let server = registry.serve().await;
    *registry.redirect_blobs_to.lock().unwrap() = Some(storage.url());
    let client = client(config());
    let r = reference(&server, ":v1");

    let resolved = client.resolve(&r).await.unwrap();
    assert_eq!(&resolved.config_bytes[..], &image.config[..]);
    let bytes = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap();
    assert_eq!(bytes, image.layer);
    let digest: Digest = image.layer_digest.parse().unwrap();
    let range = client.read_range(&r, &digest, 100..200).await.unwrap();
    assert_eq!(&range[..], &image.layer[100..200]);

    let storage_requests = storage.requests();
    assert_eq!(storage_requests.len(), 3);
    for q in &storage_requests {
        assert_eq!(q.header("authorization"), None, "{q:?}");
        assert!(q.query.contains("X-Signature"));
    }
    assert_eq!(storage_requests[2].header("range"), Some("bytes=100-199"));
    // The registry did get the token on the blob requests it redirected.
    assert!(server
        .requests()
        .iter()
        .filter(|q| q.path.contains("/blobs/"))
        .any(|q| q.header("authorization").is_some()));
}

#[tokio::test]
async fn digest_mismatches_are_errors() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");

    // A corrupted layer: same length, different bytes; the stream ends with an error.
    let mut corrupt = image.layer.clone();
    corrupt[500] ^= 0xff;
    registry
        .served_instead
        .lock()
        .unwrap()
        .insert(image.layer_digest.clone(), corrupt);
    let mut stream = client
        .fetch_blob(&r, &layer_descriptor(&image))
        .await
        .unwrap();
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(RegistryError::DigestMismatch { .. }))),
        "{last:?}"
    );

    // A wrong Docker-Content-Digest header on a tag resolve.
    registry.wrong_header_digest.store(true, Ordering::SeqCst);
    let err = client.resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    registry.wrong_header_digest.store(false, Ordering::SeqCst);

    // A manifest fetched by digest whose bytes do not hash to it.
    let mut bad = image.manifest.clone();
    bad.push(b' ');
    registry
        .served_instead
        .lock()
        .unwrap()
        .insert(image.manifest_digest.clone(), bad);
    let err = client
        .resolve(&reference(&server, &format!("@{}", image.manifest_digest)))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");

    // A corrupted config blob.
    registry.served_instead.lock().unwrap().clear();
    let config_digest = sha(&image.config);
    let mut bad_config = image.config.clone();
    bad_config[0] = b'[';
    registry
        .served_instead
        .lock()
        .unwrap()
        .insert(config_digest, bad_config);
    let err = client.resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn truncated_bodies_are_errors() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(RegistryConfig {
        max_retries: 1,
        ..config()
    });
    let r = reference(&server, ":v1");
    registry.truncate_blobs.store(true, Ordering::SeqCst);

    let err = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Truncated { .. }), "{err}");

    let digest: Digest = image.layer_digest.parse().unwrap();
    let err = client.read_range(&r, &digest, 0..1000).await.unwrap_err();
    assert!(matches!(err, RegistryError::Truncated { .. }), "{err}");

    // Without Content-Length the early close looks like a clean end: still caught by the length check.
    registry.omit_length.store(true, Ordering::SeqCst);
    registry.truncate_blobs.store(false, Ordering::SeqCst);
    let short = Descriptor::new(
        MediaType::ImageLayerGzip,
        image.layer.len() as u64 + 10,
        digest,
    );
    let err = collect(&client, &r, &short).await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Truncated { .. } | RegistryError::SizeMismatch { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn broken_blob_stream_resumes_with_a_range_request() {
    let registry = Registry::new(Auth::Bearer(None));
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let client = client(config());
    let r = reference(&server, ":v1");

    registry.truncate_blobs_once.store(1, Ordering::SeqCst);
    let bytes = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap();
    assert_eq!(bytes, image.layer);
    let blob_requests: Vec<Req> = server
        .requests()
        .into_iter()
        .filter(|q| q.path.ends_with(&image.layer_digest))
        .collect();
    let ranges: Vec<Option<&str>> = blob_requests.iter().map(|q| q.header("range")).collect();
    assert_eq!(ranges.first(), Some(&None));
    let resumed = ranges.last().unwrap().expect("resumed with a range");
    let offset: usize = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!(offset > 0 && offset <= image.layer.len() / 2, "{resumed}");
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let server = registry.serve().await;
    let limit = image.manifest.len() as u64 - 1;
    let client = client(RegistryConfig {
        max_manifest_size: limit,
        ..config()
    });
    let r = reference(&server, ":v1");
    let err = client.resolve(&r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestTooLarge { limit: l } if l == limit),
        "{err}"
    );

    // Also when the size is only discovered while reading.
    registry.omit_length.store(true, Ordering::SeqCst);
    let err = client.resolve(&r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestTooLarge { .. }),
        "{err}"
    );

    // And from the descriptor, without a request.
    let descriptor = Descriptor::new(
        MediaType::ImageManifest,
        limit + 1,
        image.manifest_digest.parse::<Digest>().unwrap().to_oci(),
    );
    let err = client.fetch_manifest(&r, &descriptor).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestTooLarge { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn not_found_and_unsupported_media_types() {
    let registry = Registry::new(Auth::Anonymous);
    let schema1 = br#"{"schemaVersion":1,"name":"test/app","tag":"old","fsLayers":[]}"#;
    registry.add_manifest(
        Some("old"),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        schema1,
    );
    let server = registry.serve().await;
    let client = client(config());

    let err = client
        .resolve(&reference(&server, ":missing"))
        .await
        .unwrap_err();
    match &err {
        RegistryError::NotFound { url } => assert!(url.contains("/manifests/missing"), "{url}"),
        other => panic!("expected NotFound, got {other}"),
    }
    let err = client
        .resolve(&reference(&server, ":old"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::UnsupportedMediaType { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("schema1"), "{err}");
}

fn write_hosts(dir: &Path, registry: &str, text: &str) {
    let host_dir = dir.join(registry);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
}

#[tokio::test]
async fn mirror_down_falls_back_to_origin() {
    let registry = Registry::new(Auth::Anonymous);
    let image = push_image(&registry, Some("v1"), "amd64", MEDIA_TYPE_OCI_MANIFEST);
    let origin = registry.serve().await;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A mirror that is up but does not have the image.
    let empty_mirror = Registry::new(Auth::Anonymous).serve().await;

    let dir = tempfile::tempdir().unwrap();
    write_hosts(
        dir.path(),
        &origin.addr.to_string(),
        &format!(
            r#"server = "{}"
               [host."http://{dead}"]
                 capabilities = ["pull", "resolve"]
               [host."{}"]
                 capabilities = ["pull", "resolve"]
            "#,
            origin.url(),
            empty_mirror.url()
        ),
    );
    let client = client(RegistryConfig {
        hosts_dir: Some(dir.path().to_path_buf()),
        plain_http: false,
        max_retries: 0,
        ..config()
    });
    let r = reference(&origin, ":v1");
    let resolved = client.resolve(&r).await.unwrap();
    assert_eq!(
        resolved.manifest.digest().to_string(),
        image.manifest_digest
    );
    let bytes = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap();
    assert_eq!(bytes, image.layer);
    // The mirror was asked first, with containerd's ns parameter.
    let mirror_requests = empty_mirror.requests();
    assert!(!mirror_requests.is_empty());
    assert!(mirror_requests[0].path.ends_with("/manifests/v1"));
    assert_eq!(
        mirror_requests[0].query,
        format!("ns={}", origin.addr).replace(':', "%3A")
    );
}

#[tokio::test]
async fn working_mirror_is_used_and_capabilities_are_respected() {
    let origin_registry = Registry::new(Auth::Anonymous);
    let mirror_registry = Registry::new(Auth::Anonymous);
    let image = push_image(
        &origin_registry,
        Some("v1"),
        "amd64",
        MEDIA_TYPE_OCI_MANIFEST,
    );
    push_image(
        &mirror_registry,
        Some("v1"),
        "amd64",
        MEDIA_TYPE_OCI_MANIFEST,
    );
    let origin = origin_registry.serve().await;
    let mirror = mirror_registry.serve().await;

    // The mirror may serve blobs but not resolve tags; it wants a header.
    let dir = tempfile::tempdir().unwrap();
    write_hosts(
        dir.path(),
        &origin.addr.to_string(),
        &format!(
            r#"server = "{}"
               [host."{}"]
                 capabilities = ["pull"]
                 [host."{}".header]
                   x-mirror-key = "k1"
            "#,
            origin.url(),
            mirror.url(),
            mirror.url()
        ),
    );
    let client = client(RegistryConfig {
        hosts_dir: Some(dir.path().to_path_buf()),
        ..config()
    });
    let r = reference(&origin, ":v1");
    let resolved = client.resolve(&r).await.unwrap();
    assert_eq!(
        resolved.manifest.digest().to_string(),
        image.manifest_digest
    );
    assert_eq!(
        origin.count("/manifests/v1"),
        1,
        "tag resolved at the origin"
    );
    assert_eq!(mirror.count("/manifests/v1"), 0, "mirror lacks resolve");
    assert_eq!(origin.count("/blobs/"), 0, "config fetched from the mirror");
    let bytes = collect(&client, &r, &layer_descriptor(&image))
        .await
        .unwrap();
    assert_eq!(bytes, image.layer);
    assert_eq!(origin.count("/blobs/"), 0);
    assert!(mirror
        .requests()
        .iter()
        .all(|q| q.header("x-mirror-key") == Some("k1")));
    assert!(origin
        .requests()
        .iter()
        .all(|q| q.header("x-mirror-key").is_none()));
}
