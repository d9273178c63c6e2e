//! The keeper: one small process per skiffd root that holds a copy of every lazy mount's `/dev/fuse`
//! descriptor, so the kernel keeps each FUSE connection (and the mount, and the overlays of the
//! containers above it) alive while no skiffd runs. Requests made meanwhile wait in the kernel; the next
//! skiffd borrows the descriptors back and serves the same connections ("takeover").
//!
//! It knows nothing of registries, caches or layer formats: it holds descriptors, each under a key (the
//! mountpoint) with an opaque `meta` string the daemon gives it, and forgets one when told to or when
//! its connection ends (the kernel reports `POLLERR` once a FUSE connection is gone: unmounted or
//! aborted). It exits when it holds nothing and no client is connected.
//!
//! Protocol: a `SOCK_SEQPACKET` unix socket (mode 0600); each message is one JSON [`Request`] or
//! [`Reply`], a descriptor travelling beside it as `SCM_RIGHTS`. The daemon keeps one connection open
//! for its lifetime; requests on it are answered in order.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use serde::{Deserialize, Serialize};

/// Largest message either side sends (the meta of one mount is a few hundred bytes; a list of
/// thousands of mounts fits).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Largest `meta` the keeper accepts for one descriptor.
pub const MAX_META: usize = 64 << 10;
/// How long the keeper lingers with nothing held and no client before it exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Hold the descriptor attached to this message under `key` (replacing one held there).
    Keep { key: String, meta: String },
    /// Close the descriptor held under `key`, if any.
    Forget { key: String },
    /// Everything held.
    List,
    /// A copy of the descriptor held under `key`, attached to the reply; the keeper keeps its own.
    Lend { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub meta: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Held {
        entries: Vec<Entry>,
    },
    /// The descriptor is attached.
    Lent {
        meta: String,
    },
    NotHeld,
    Refused {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("keeper protocol: {0}")]
    Protocol(String),
}

impl From<Errno> for KeeperError {
    fn from(errno: Errno) -> Self {
        KeeperError::Io(errno.into())
    }
}

/// Sends `message` as one packet on `sock`, with `fd` attached when given.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    message: &T,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), KeeperError> {
    let body = serde_json::to_vec(message).map_err(|e| KeeperError::Protocol(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(KeeperError::Protocol(format!(
            "message of {} bytes exceeds {MAX_MESSAGE}",
            body.len()
        )));
    }
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    loop {
        match socket::sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// Receives one packet from `sock`: `None` when the peer closed the connection.
pub fn receive<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> Result<Option<(T, Option<OwnedFd>)>, KeeperError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds, truncated) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                break (msg.bytes, fds, truncated);
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated || fds.len() > 1 {
        return Err(KeeperError::Protocol(
            "oversized message or too many descriptors".into(),
        ));
    }
    let message = serde_json::from_slice(&buf[..len])
        .map_err(|e| KeeperError::Protocol(format!("malformed message: {e}")))?;
    Ok(Some((message, fds.into_iter().next())))
}

fn seqpacket() -> Result<OwnedFd, KeeperError> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// One descriptor held, with what the daemon said of it.
struct Held {
    meta: String,
    fd: OwnedFd,
}

/// The keeper's state: what it holds, and how many clients are connected.
#[derive(Default)]
struct State {
    held: Mutex<BTreeMap<String, Held>>,
    clients: AtomicUsize,
}

impl State {
    fn held(&self) -> MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, request: Request, fd: Option<OwnedFd>) -> (Reply, Option<OwnedFd>) {
        match request {
            Request::Keep { key, meta } => {
                let Some(fd) = fd else {
                    return (refused("keep needs a descriptor"), None);
                };
                if meta.len() > MAX_META {
                    return (refused("meta too large"), None);
                }
                self.held().insert(key, Held { meta, fd });
                (Reply::Done, None)
            }
            Request::Forget { key } => {
                self.held().remove(&key);
                (Reply::Done, None)
            }
            Request::List => {
                let entries = self
                    .held()
                    .iter()
                    .map(|(key, held)| Entry {
                        key: key.clone(),
                        meta: held.meta.clone(),
                    })
                    .collect();
                (Reply::Held { entries }, None)
            }
            Request::Lend { key } => match self.held().get(&key) {
                Some(held) => match held.fd.try_clone() {
                    Ok(copy) => (
                        Reply::Lent {
                            meta: held.meta.clone(),
                        },
                        Some(copy),
                    ),
                    Err(err) => (refused(&format!("duplicate descriptor: {err}")), None),
                },
                None => (Reply::NotHeld, None),
            },
        }
    }

    /// Drops every descriptor whose FUSE connection is gone (unmounted or aborted).
    fn drop_dead(&self) {
        let mut held = self.held();
        let dead: Vec<String> = {
            let mut polls: Vec<PollFd<'_>> = held
                .values()
                .map(|h| PollFd::new(h.fd.as_fd(), PollFlags::empty()))
                .collect();
            if nix::poll::poll(&mut polls, PollTimeout::ZERO).is_err() {
                return;
            }
            held.keys()
                .zip(&polls)
                .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in dead {
            held.remove(&key);
            eprintln!("skiff-keeper: connection of {key} ended; descriptor closed");
        }
    }
}

fn refused(reason: &str) -> Reply {
    Reply::Refused {
        reason: reason.to_string(),
    }
}

fn serve_client(state: Arc<State>, sock: OwnedFd) {
    loop {
        let (request, fd) = match receive::<Request>(sock.as_fd()) {
            Ok(Some(received)) => received,
            Ok(None) => break,
            Err(err) => {
                eprintln!("skiff-keeper: {err}; closing the connection");
                break;
            }
        };
        let (reply, lent) = state.answer(request, fd);
        if let Err(err) = send(sock.as_fd(), &reply, lent.as_ref().map(|fd| fd.as_fd())) {
            eprintln!("skiff-keeper: {err}; closing the connection");
            break;
        }
    }
    state.clients.fetch_sub(1, Ordering::SeqCst);
}

/// Serves the keeper at `socket` until it holds nothing and has had no client for [`IDLE_EXIT`].
/// Returns at once when another keeper serves that socket (its lock file `SOCKET.lock` is taken).
pub fn serve(socket_path: &Path) -> Result<(), KeeperError> {
    let lock_path = lock_path(socket_path);
    let lock_file = std::fs::File::create(&lock_path)?;
    let _lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(()),
        Err((_, errno)) => return Err(errno.into()),
    };
    match std::fs::remove_file(socket_path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let listener = seqpacket()?;
    socket::bind(listener.as_raw_fd(), &UnixAddr::new(socket_path)?)?;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))?;
    socket::listen(&listener, Backlog::new(64)?)?;

    let state = Arc::new(State::default());
    let mut idle_since = Some(Instant::now());
    loop {
        let mut polls = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut polls, PollTimeout::from(500u16)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        if polls[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept returned a fresh descriptor that nothing else owns.
                    let client = unsafe { OwnedFd::from_raw_fd(raw) };
                    state.clients.fetch_add(1, Ordering::SeqCst);
                    let state = Arc::clone(&state);
                    std::thread::spawn(move || serve_client(state, client));
                }
                Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        state.drop_dead();
        let idle = state.clients.load(Ordering::SeqCst) == 0 && state.held().is_empty();
        match (idle, idle_since) {
            (false, _) => idle_since = None,
            (true, None) => idle_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() >= IDLE_EXIT => {
                let _ = std::fs::remove_file(socket_path);
                return Ok(());
            }
            (true, Some(_)) => {}
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A connection to the keeper, as skiffd holds it (requests are answered in order).
pub struct KeeperClient {
    sock: Mutex<OwnedFd>,
}

impl KeeperClient {
    /// Connects to the keeper serving `socket`.
    pub fn connect(socket_path: &Path) -> Result<KeeperClient, KeeperError> {
        let sock = seqpacket()?;
        socket::connect(sock.as_raw_fd(), &UnixAddr::new(socket_path)?)?;
        Ok(KeeperClient {
            sock: Mutex::new(sock),
        })
    }

    /// Connects to the keeper serving `socket`, starting `binary --socket SOCKET` (in a process group
    /// of its own, so it outlives this process and its terminal's signals) when none answers.
    pub fn connect_or_spawn(
        socket_path: &Path,
        binary: &Path,
        log: &Path,
    ) -> Result<KeeperClient, KeeperError> {
        if let Ok(client) = Self::connect(socket_path) {
            return Ok(client);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = std::process::Command::new(binary);
        command
            .arg("--socket")
            .arg(socket_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().map_err(|err| {
            KeeperError::Io(std::io::Error::new(
                err.kind(),
                format!("start {}: {err}", binary.display()),
            ))
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::connect(socket_path) {
                Ok(client) => {
                    // Reap it whenever it ends; it is not ours to wait for.
                    std::thread::spawn(move || child.wait());
                    return Ok(client);
                }
                Err(err) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err);
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        // Another keeper may have won the lock: try its socket a little longer.
                        if !status.success() {
                            return Err(KeeperError::Protocol(format!(
                                "{} exited with {status}",
                                binary.display()
                            )));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn call(
        &self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(Reply, Option<OwnedFd>), KeeperError> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        send(sock.as_fd(), request, fd)?;
        match receive::<Reply>(sock.as_fd())? {
            Some((Reply::Refused { reason }, _)) => Err(KeeperError::Protocol(reason)),
            Some(answer) => Ok(answer),
            None => Err(KeeperError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the keeper closed the connection",
            ))),
        }
    }

    /// Has the keeper hold (a copy of) `fd` under `key`.
    pub fn keep(&self, key: &str, meta: &str, fd: BorrowedFd<'_>) -> Result<(), KeeperError> {
        let request = Request::Keep {
            key: key.to_string(),
            meta: meta.to_string(),
        };
        match self.call(&request, Some(fd))? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Has the keeper close what it holds under `key`.
    pub fn forget(&self, key: &str) -> Result<(), KeeperError> {
        match self.call(
            &Request::Forget {
                key: key.to_string(),
            },
            None,
        )? {
            (Reply::Done, _) => Ok(()),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Everything the keeper holds.
    pub fn list(&self) -> Result<Vec<Entry>, KeeperError> {
        match self.call(&Request::List, None)? {
            (Reply::Held { entries }, _) => Ok(entries),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// A copy of the descriptor held under `key`, with its meta.
    pub fn lend(&self, key: &str) -> Result<Option<(String, OwnedFd)>, KeeperError> {
        match self.call(
            &Request::Lend {
                key: key.to_string(),
            },
            None,
        )? {
            (Reply::Lent { meta }, Some(fd)) => Ok(Some((meta, fd))),
            (Reply::NotHeld, _) => Ok(None),
            (other, _) => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> KeeperError {
    KeeperError::Protocol(format!("unexpected reply {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor whose "connection" the test can end: the read end of a pipe reports POLLHUP once
    /// the write end closes, as a FUSE descriptor reports POLLERR once its connection is gone.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    fn start(dir: &Path) -> (PathBuf, std::thread::JoinHandle<Result<(), KeeperError>>) {
        let socket = dir.join("keeper.sock");
        let serving = socket.clone();
        let handle = std::thread::spawn(move || serve(&serving));
        let deadline = Instant::now() + Duration::from_secs(5);
        while KeeperClient::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "keeper did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        (socket, handle)
    }

    #[test]
    fn keeps_lends_lists_and_forgets_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _serving) = start(dir.path());
        let client = KeeperClient::connect(&socket).unwrap();
        let (read, write) = pipe();
        client.keep("/mnt/a", "meta-a", read.as_fd()).unwrap();
        drop(read);
        let entries = client.list().unwrap();
        assert_eq!(
            entries,
            vec![Entry {
                key: "/mnt/a".into(),
                meta: "meta-a".into()
            }]
        );
        // A second client (a restarted daemon) borrows the same pipe back: what is written on the
        // original write end comes out of the lent descriptor.
        let other = KeeperClient::connect(&socket).unwrap();
        let (meta, lent) = other.lend("/mnt/a").unwrap().expect("held");
        assert_eq!(meta, "meta-a");
        nix::unistd::write(&write, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(&lent, &mut byte).unwrap(), 1);
        assert_eq!(&byte, b"x");
        assert!(other.lend("/mnt/missing").unwrap().is_none());
        other.forget("/mnt/a").unwrap();
        assert!(client.list().unwrap().is_empty());
    }

    #[test]
    fn a_descriptor_whose_connection_ends_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _serving) = start(dir.path());
        let client = KeeperClient::connect(&socket).unwrap();
        let (read, write) = pipe();
        client.keep("/mnt/b", "{}", read.as_fd()).unwrap();
        drop(write);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !client.list().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "dead descriptor still held");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn keep_without_a_descriptor_or_with_garbage_is_refused_and_the_keeper_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, _serving) = start(dir.path());
        let client = KeeperClient::connect(&socket).unwrap();
        let request = Request::Keep {
            key: "k".into(),
            meta: String::new(),
        };
        assert!(matches!(
            client.call(&request, None),
            Err(KeeperError::Protocol(_))
        ));
        let raw = KeeperClient::connect(&socket).unwrap();
        let sock = raw.sock.lock().unwrap();
        socket::send(sock.as_raw_fd(), b"not json", MsgFlags::empty()).unwrap();
        // The keeper closes that connection and serves the others.
        assert!(matches!(receive::<Reply>(sock.as_fd()), Ok(None)));
        assert!(client.list().unwrap().is_empty());
    }

    #[test]
    fn exits_when_idle_and_a_second_keeper_on_the_same_socket_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, serving) = start(dir.path());
        assert!(serve(&socket).is_ok(), "second keeper must return at once");
        let client = KeeperClient::connect(&socket).unwrap();
        drop(client);
        serving.join().unwrap().unwrap();
        assert!(!socket.exists());
    }
}
