//! A hyper HTTP/1.1 server on 127.0.0.1 running on its own thread with its own tokio runtime,
//! so tests can start it from sync or async code alike. Its listener can be closed and reopened
//! on the same port ("down" / "up"); dropping it stops the thread.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Handler errors abort the connection without a response.
pub(crate) type HandlerError = anyhow::Error;
/// Body errors abort the connection mid-body.
pub(crate) type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
pub(crate) type HandlerResult = Result<Response<ResponseBody>, HandlerError>;
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> HandlerFuture + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ListenerState {
    Listening,
    Closed,
    Shutdown,
}

pub(crate) struct BackgroundServer {
    addr: SocketAddr,
    control: watch::Sender<ListenerState>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundServer {
    /// Binds a free port on 127.0.0.1 and serves `handler` there until dropped.
    pub(crate) fn start(name: &str, handler: Handler) -> Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (control, state) = watch::channel(ListenerState::Listening);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("build server runtime")?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(serve(listener, addr, handler, state));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .with_context(|| format!("spawn {name} thread"))?;
        Ok(Self {
            addr,
            control,
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes (connection refused) or reopens the listener on the same port.
    pub(crate) fn set_listening(&self, listening: bool) {
        let state = if listening {
            ListenerState::Listening
        } else {
            ListenerState::Closed
        };
        self.control.send_replace(state);
        // Let the server thread act on it before the caller goes on.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let refused = std::net::TcpStream::connect(self.addr).is_err();
            if refused != listening {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        self.control.send_replace(ListenerState::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    handler: Handler,
    mut state: watch::Receiver<ListenerState>,
) {
    let mut listener = TcpListener::from_std(listener).ok();
    loop {
        let current = *state.borrow_and_update();
        match current {
            ListenerState::Shutdown => return,
            ListenerState::Closed => {
                listener = None;
                if state.changed().await.is_err() {
                    return;
                }
            }
            ListenerState::Listening => {
                if listener.is_none() {
                    match TcpListener::bind(addr).await {
                        Ok(l) => listener = Some(l),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let Some(active) = listener.as_ref() else {
                    continue;
                };
                tokio::select! {
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    accepted = active.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve_connection(stream, handler.clone()));
                        }
                    }
                }
            }
        }
    }
}

fn serve_connection(
    stream: tokio::net::TcpStream,
    handler: Handler,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let service = hyper::service::service_fn(move |req| handler(req));
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    Box::pin(async move {
        let _ = connection.await;
    })
}

/// A complete in-memory response body.
pub(crate) fn full_body(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never: std::convert::Infallible| -> std::io::Error { match never {} })
        .boxed()
}

/// A response with a body and content type.
pub(crate) fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> HandlerResult {
    Ok(Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(full_body(body))?)
}
