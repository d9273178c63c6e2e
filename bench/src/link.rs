//! A shaped network link in user space: a TCP relay that delays every byte by half the round-trip time in
//! each direction and paces each direction to the profile's rate, shared by all connections through it.
//!
//! The kernels this runs on have no `netem` qdisc, so latency cannot be added with `tc`; a relay gives both
//! rate and delay on loopback, and it is also where the bytes a registry sends are counted. A new
//! connection costs one round trip before its first byte moves (TCP's handshake on a real link).
//!
//! Per connection and direction, a reader task stamps each chunk it reads with the time it may leave
//! (`now + rtt/2`) and queues it (bounded, like a socket buffer); a writer task sends each chunk no earlier
//! than its stamp and no faster than the direction's `Pacer` allows. Half-closes are passed on.
//!
//! | [`Profile`] | rate, each direction | round trip |
//! | --- | --- | --- |
//! | `lan` | 1 Gbit/s | 1 ms |
//! | `wan` | 100 Mbit/s | 20 ms |
//! | `slow` | 25 Mbit/s | 40 ms |
//! | `none` | unshaped | 0 |
//!
//! [`ShapedLink::stats`] counts bytes in each direction and connections ([`LinkStats`]);
//! [`ShapedLink::downstream_bytes_at`] gives the downstream count at a past instant, which is how a
//! start's bytes up to its ready line are measured.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest chunk moved at once; small enough that pacing is smooth at 25 Mbit/s (≈ 20 ms a chunk).
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction and connection before the reader stops reading (a socket buffer).
const QUEUED_CHUNKS: usize = 32;

/// A network profile: rate (each direction) and round-trip time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    /// Bytes per second in each direction; `None` is unlimited.
    pub rate: Option<u64>,
    pub rtt: Duration,
}

impl Profile {
    pub const LAN: Profile = Profile {
        name: "lan",
        rate: Some(1_000_000_000 / 8),
        rtt: Duration::from_millis(1),
    };
    pub const WAN: Profile = Profile {
        name: "wan",
        rate: Some(100_000_000 / 8),
        rtt: Duration::from_millis(20),
    };
    pub const SLOW: Profile = Profile {
        name: "slow",
        rate: Some(25_000_000 / 8),
        rtt: Duration::from_millis(40),
    };
    pub const NONE: Profile = Profile {
        name: "none",
        rate: None,
        rtt: Duration::ZERO,
    };
    pub const ALL: [Profile; 4] = [Profile::LAN, Profile::WAN, Profile::SLOW, Profile::NONE];

    /// How long `bytes` take to cross the link once the connection is up: one round trip for the request
    /// and the first byte back, plus the transfer at the profile's rate.
    pub fn predicted_transfer(&self, bytes: u64) -> Duration {
        let transfer = match self.rate {
            Some(rate) => Duration::from_secs_f64(bytes as f64 / rate as f64),
            None => Duration::ZERO,
        };
        self.rtt + transfer
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rate {
            Some(rate) => write!(
                f,
                "{} ({} Mbit/s, {} ms RTT)",
                self.name,
                rate * 8 / 1_000_000,
                self.rtt.as_millis()
            ),
            None => write!(f, "{} (loopback, unshaped)", self.name),
        }
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name == s)
            .ok_or_else(|| format!("unknown network profile {s:?} (lan, wan, slow or none)"))
    }
}

/// Paces one direction of the link: every chunk, of every connection, takes its share of the rate.
#[derive(Debug)]
struct Pacer {
    rate: Option<u64>,
    /// When the link is free to start sending the next chunk.
    next_free: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: Option<u64>) -> Self {
        Pacer {
            rate,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// The instant by which `bytes`, ready at `ready`, have been sent; reserves the link until then.
    fn reserve(&self, ready: Instant, bytes: usize) -> Instant {
        let Some(rate) = self.rate else {
            return ready;
        };
        let mut next_free = self
            .next_free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let start = (*next_free).max(ready);
        let done = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        *next_free = done;
        done
    }
}

/// Bytes and connections seen by a link.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Bytes from the upstream (the registry) to clients.
    pub downstream_bytes: AtomicU64,
    /// Bytes from clients to the upstream.
    pub upstream_bytes: AtomicU64,
    pub connections: AtomicU64,
}

/// A snapshot of [`LinkCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub downstream_bytes: u64,
    pub upstream_bytes: u64,
    pub connections: u64,
}

impl std::ops::Sub for LinkStats {
    type Output = LinkStats;

    fn sub(self, earlier: LinkStats) -> LinkStats {
        LinkStats {
            downstream_bytes: self.downstream_bytes - earlier.downstream_bytes,
            upstream_bytes: self.upstream_bytes - earlier.upstream_bytes,
            connections: self.connections - earlier.connections,
        }
    }
}

struct Shared {
    profile: Profile,
    upstream: SocketAddr,
    down: Pacer,
    up: Pacer,
    counters: LinkCounters,
    /// (when, downstream bytes so far) after each write to a client, oldest first.
    downstream_timeline: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
}

/// A running shaped link: connect to [`ShapedLink::addr`] to reach the upstream through it. Dropping it
/// stops accepting and ends every connection through it.
pub struct ShapedLink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl ShapedLink {
    /// Listens on a free 127.0.0.1 port and relays every connection to `upstream` through `profile`.
    pub async fn start(upstream: SocketAddr, profile: Profile) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the shaped link's listener")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            profile,
            upstream,
            down: Pacer::new(profile.rate),
            up: Pacer::new(profile.rate),
            counters: LinkCounters::default(),
            downstream_timeline: Default::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(ShapedLink {
            addr,
            shared,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn profile(&self) -> Profile {
        self.shared.profile
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.shared.counters;
        LinkStats {
            downstream_bytes: c.downstream_bytes.load(Ordering::Relaxed),
            upstream_bytes: c.upstream_bytes.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
        }
    }
}

impl ShapedLink {
    /// The downstream byte count as it was at `at` (bytes delivered to clients up to then); `at` must not
    /// be earlier than the last [`ShapedLink::forget_before`].
    pub fn downstream_bytes_at(&self, at: std::time::Instant) -> u64 {
        let timeline = lock(&self.shared.downstream_timeline);
        match timeline.partition_point(|(when, _)| *when <= at) {
            0 => 0,
            n => timeline[n - 1].1,
        }
    }

    /// Drops the timeline before `at` (what [`ShapedLink::downstream_bytes_at`] needs no more).
    pub fn forget_before(&self, at: std::time::Instant) {
        let mut timeline = lock(&self.shared.downstream_timeline);
        // Keep the last point before `at`: it is the count at `at` if nothing came since.
        while timeline.len() > 1 && timeline[1].0 <= at {
            timeline.pop_front();
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        // Connection tasks are children of the accept task's JoinSet and end with it.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(relay(client, Arc::clone(&shared)));
                }
                Err(err) => tracing::warn!(error = %err, "shaped link: accept failed"),
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: a round trip for the handshake, then both directions until each side closes.
async fn relay(client: TcpStream, shared: Arc<Shared>) {
    tokio::time::sleep(shared.profile.rtt).await;
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(err) => {
            tracing::warn!(error = %err, upstream = %shared.upstream, "shaped link: cannot reach upstream");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let to_upstream = direction(
        client_read,
        upstream_write,
        Arc::clone(&shared),
        Direction::Up,
    );
    let to_client = direction(upstream_read, client_write, shared, Direction::Down);
    tokio::join!(to_upstream, to_client);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Moves bytes from `from` to `to`, each chunk delayed by rtt/2 and paced; shuts `to` down at EOF.
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    direction: Direction,
) {
    let (sender, mut receiver) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let one_way = shared.profile.rtt / 2;
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if sender.send((Instant::now() + one_way, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping the sender tells the writer the stream ended.
    };
    let writer = async {
        let (pacer, counter) = match direction {
            Direction::Up => (&shared.up, &shared.counters.upstream_bytes),
            Direction::Down => (&shared.down, &shared.counters.downstream_bytes),
        };
        while let Some((ready, chunk)) = receiver.recv().await {
            let done = pacer.reserve(ready, chunk.len());
            tokio::time::sleep_until(done).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            if direction == Direction::Down {
                // Under the lock, so the timeline's totals grow in time order.
                let mut timeline = lock(&shared.downstream_timeline);
                let total = counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                timeline.push_back((std::time::Instant::now(), total + chunk.len() as u64));
            } else {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_predict() {
        assert_eq!("wan".parse::<Profile>().unwrap(), Profile::WAN);
        assert!("fast".parse::<Profile>().unwrap_err().contains("lan, wan"));
        // 100 MiB at 100 Mbit/s: 8.39 s, plus one round trip.
        let predicted = Profile::WAN.predicted_transfer(100 << 20);
        assert!(
            (predicted.as_secs_f64() - 8.4086).abs() < 0.001,
            "{predicted:?}"
        );
        assert_eq!(Profile::NONE.predicted_transfer(1 << 30), Duration::ZERO);
        assert_eq!(Profile::WAN.to_string(), "wan (100 Mbit/s, 20 ms RTT)");
    }

    #[test]
    fn the_pacer_shares_the_rate_and_never_starts_before_ready() {
        let pacer = Pacer::new(Some(1000));
        let t0 = Instant::now();
        // 500 bytes at 1000 B/s: half a second, back to back.
        let first = pacer.reserve(t0, 500);
        let second = pacer.reserve(t0, 500);
        assert_eq!(first - t0, Duration::from_millis(500));
        assert_eq!(second - t0, Duration::from_millis(1000));
        // A chunk ready later than the link is free starts when it is ready.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            pacer.reserve(later, 100) - later,
            Duration::from_millis(100)
        );
        let unlimited = Pacer::new(None);
        assert_eq!(unlimited.reserve(later, 1 << 30), later);
    }
}
