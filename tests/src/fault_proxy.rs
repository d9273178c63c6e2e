//! An HTTP/1.1 reverse proxy in front of a registry that injects faults on chosen paths:
//! corrupted, truncated or replaced bodies, error statuses, delays, or being down altogether.
//! It counts requests per path so tests can tell which upstream was used.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

use crate::server::{full_body, BackgroundServer, HandlerFuture, HandlerResult};

/// What to do to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward, then invert one byte of the response body (at `offset`, or the middle).
    FlipByte { offset: Option<usize> },
    /// Forward, announce the full Content-Length but send only `keep` bytes, then close.
    Truncate { keep: usize },
    /// Forward, then replace the body (and Content-Type when given); a `Docker-Content-Digest` header
    /// then names the new body, as if the registry served it.
    ReplaceBody {
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// Answer this status with an empty body, without contacting the upstream.
    Status(u16),
    /// Wait this long, then forward normally.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

impl Fault {
    /// Flip the byte in the middle of the body.
    pub fn flip_byte() -> Self {
        Self::FlipByte { offset: None }
    }
}

/// One request seen by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status sent (0 when the connection was dropped).
    pub status: u16,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// Body bytes the upstream answered with (before any fault changed them); 0 when not forwarded.
    pub bytes: u64,
}

struct FaultRule {
    path_contains: String,
    fault: Fault,
    /// `None`: every time.
    remaining: Option<u32>,
}

struct ProxyState {
    upstream: String,
    own_base: String,
    client: reqwest::Client,
    rules: Mutex<Vec<FaultRule>>,
    log: Mutex<Vec<ProxiedRequest>>,
    down: std::sync::atomic::AtomicBool,
}

/// A running fault-injecting proxy; dropping it stops it.
pub struct FaultProxy {
    server: BackgroundServer,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .context("build proxy client")?;
        // The handler needs the proxy's own address (to rewrite Location headers), known only
        // once the server is bound; requests wait for it through this cell.
        let cell: Arc<std::sync::OnceLock<Arc<ProxyState>>> = Arc::new(std::sync::OnceLock::new());
        let handler_cell = cell.clone();
        let server = BackgroundServer::start(
            "skiff-fault-proxy",
            Arc::new(move |req| -> HandlerFuture {
                let state = handler_cell.get().cloned();
                Box::pin(async move {
                    match state {
                        Some(state) => state.handle(req).await,
                        None => Err(anyhow::anyhow!("fault proxy not ready")),
                    }
                })
            }),
        )?;
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            own_base: format!("http://{}", server.addr()),
            client,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = cell.set(state.clone());
        Ok(Self { server, state })
    }

    /// A proxy in front of `registry`.
    pub fn in_front_of(registry: &crate::registry::Registry) -> Result<Self> {
        Self::start(&registry.url())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `127.0.0.1:PORT`, usable as a registry host in references.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Applies `fault` to every request whose path (with query) contains `path_contains`.
    pub fn inject(&self, path_contains: &str, fault: Fault) {
        self.add_rule(path_contains, fault, None);
    }

    /// Applies `fault` to the next `times` matching requests, then lets them pass.
    pub fn inject_times(&self, path_contains: &str, fault: Fault, times: u32) {
        self.add_rule(path_contains, fault, Some(times));
    }

    fn add_rule(&self, path_contains: &str, fault: Fault, remaining: Option<u32>) {
        self.state
            .rules
            .lock()
            .expect("rules lock")
            .push(FaultRule {
                path_contains: path_contains.to_string(),
                fault,
                remaining,
            });
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.state.rules.lock().expect("rules lock").clear();
    }

    /// Down: the listener is closed (connection refused) and requests on open connections are
    /// dropped. Up: listening again on the same port.
    pub fn set_down(&self, down: bool) {
        self.state
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
        self.server.set_listening(!down);
    }

    /// Body bytes served for requests whose path contains `path_contains`.
    pub fn bytes_matching(&self, path_contains: &str) -> u64 {
        self.request_log()
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .map(|r| r.bytes)
            .sum()
    }

    /// Requests whose path contains `path_contains` (all requests for "").
    pub fn requests_matching(&self, path_contains: &str) -> usize {
        self.state
            .log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|r| r.path.contains(path_contains))
            .count()
    }

    /// Every request seen, oldest first.
    pub fn request_log(&self) -> Vec<ProxiedRequest> {
        self.state.log.lock().expect("log lock").clone()
    }

    /// Forgets the request log.
    pub fn reset_counts(&self) {
        self.state.log.lock().expect("log lock").clear();
    }
}

impl ProxyState {
    /// The first matching rule's fault, consuming one use of it.
    fn take_fault(&self, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("rules lock");
        let index = rules.iter().position(|r| path.contains(&r.path_contains))?;
        let rule = &mut rules[index];
        let fault = rule.fault.clone();
        if let Some(remaining) = &mut rule.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                rules.remove(index);
            }
        }
        Some(fault)
    }

    fn record(&self, method: &str, path: &str, status: u16, fault: Option<Fault>, bytes: u64) {
        self.log.lock().expect("log lock").push(ProxiedRequest {
            method: method.to_string(),
            path: path.to_string(),
            status,
            fault,
            bytes,
        });
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string());
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            self.record(method.as_str(), &path, 0, None, 0);
            return Err(anyhow::anyhow!("fault proxy is down"));
        }
        let fault = self.take_fault(&path);
        match &fault {
            Some(Fault::Status(code)) => {
                self.record(method.as_str(), &path, *code, fault.clone(), 0);
                let mut response = Response::builder().status(*code);
                if *code == 401 {
                    response = response.header("WWW-Authenticate", r#"Basic realm="fault-proxy""#);
                }
                return Ok(response.body(full_body(Bytes::new()))?);
            }
            Some(Fault::Drop) => {
                self.record(method.as_str(), &path, 0, fault.clone(), 0);
                return Err(anyhow::anyhow!("fault proxy dropped the connection"));
            }
            Some(Fault::Delay(delay)) => tokio::time::sleep(*delay).await,
            _ => {}
        }

        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let mut upstream = self
            .client
            .request(parts.method.clone(), format!("{}{path}", self.upstream))
            .body(body);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name.as_str()) && name != http::header::HOST {
                upstream = upstream.header(name, value);
            }
        }
        let upstream_response = upstream.send().await?;
        let status = upstream_response.status();
        let headers = upstream_response.headers().clone();
        let mut body = upstream_response.bytes().await?.to_vec();
        let full_length = body.len();

        let mut response = Response::builder().status(status);
        for (name, value) in &headers {
            let keep_length = parts.method == http::Method::HEAD;
            if is_hop_by_hop(name.as_str())
                || (name == http::header::CONTENT_LENGTH && !keep_length)
            {
                continue;
            }
            if name == http::header::LOCATION {
                let rewritten = value
                    .to_str()
                    .unwrap_or_default()
                    .replace(&self.upstream, &self.own_base);
                response = response.header(name, rewritten);
                continue;
            }
            if name == http::header::CONTENT_TYPE
                && matches!(
                    fault,
                    Some(Fault::ReplaceBody {
                        content_type: Some(_),
                        ..
                    })
                )
            {
                continue;
            }
            // A replaced body is what the registry serves now: its digest header names the new body.
            if name.as_str().eq_ignore_ascii_case("docker-content-digest") {
                if let Some(Fault::ReplaceBody { body, .. }) = &fault {
                    response = response.header(name, crate::image::sha256_digest(body));
                    continue;
                }
            }
            response = response.header(name, value);
        }
        self.record(
            method.as_str(),
            &path,
            status.as_u16(),
            fault.clone(),
            full_length as u64,
        );

        match fault {
            Some(Fault::FlipByte { offset }) if !body.is_empty() => {
                let at = offset.unwrap_or(body.len() / 2).min(body.len() - 1);
                body[at] ^= 0xff;
                Ok(response.body(full_body(body))?)
            }
            Some(Fault::Truncate { keep }) => {
                let partial = Bytes::from(body).slice(..keep.min(full_length));
                // Pause before failing so hyper flushes the head and the partial body first.
                let failure = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("fault proxy truncated the body"))
                });
                let frames = futures::stream::iter([Ok(Frame::data(partial))]).chain(failure);
                let stream = StreamBody::new(frames);
                Ok(response
                    .header(http::header::CONTENT_LENGTH, full_length)
                    .body(BodyExt::boxed(stream))?)
            }
            Some(Fault::ReplaceBody { content_type, body }) => {
                if let Some(content_type) = content_type {
                    response = response.header(http::header::CONTENT_TYPE, content_type);
                }
                Ok(response.body(full_body(body))?)
            }
            _ => Ok(response.body(full_body(body))?),
        }
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}
