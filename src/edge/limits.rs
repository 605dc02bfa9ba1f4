//! Per-connection limits: a total deadline for each request header, and a cap on the
//! connections one client address holds (SPEC section 14).
//!
//! Pingora 0.9 only times each read of a request header (cloudflare/pingora#447), so a
//! client sending one byte a second holds its connection for ever. graygate hands every
//! connection to Pingora from [`crate::edge::app::EdgeApp`]; there the stream is wrapped in
//! a [`Guarded`] stream that watches the bytes going by:
//!
//! ```text
//!             read: end of header (an empty line)          write: a final status
//!   ┌────────┐ ───────────────────────────────► ┌──────┐ ──────────────────► ┌───────────┐
//!   │ Header │                                  │ Open │                     │ Responded │
//!   └────────┘ ◄─────────────────────────────── └──────┘                     └───────────┘
//!    deadline      read: the next request's first bytes (keep-alive)  ◄──────────┘
//!    armed         write: `101` ──► Tunnel (stands aside for good)
//! ```
//!
//! The deadline is armed when the connection is handed over (the first request) and again
//! by the first bytes read after a response started (the next keep-alive request); reading
//! the empty line that ends a header disarms it. Arming it for a keep-alive request only
//! notes when it is due: the timer itself, set for an earlier request, is moved to that
//! time when it fires (at most once per `header_timeout`), so that a request costs no
//! update of the runtime's timer wheel. Interim `1xx` answers (`100 Continue`)
//! leave it disarmed, so a body sent after one is not taken for a header; a `101` switches
//! the connection to a tunnel (WebSocket) and the wrapper stands aside. When the deadline
//! passes, the pending read fails with `TimedOut`: Pingora closes the connection and
//! `graygate_connections_total{result="header_timeout"}` counts it.
//!
//! HTTP/2 connections (h2c, ALPN `h2`) are multiplexed frames, not header text: they get no
//! header deadline (Pingora's HTTP/2 server bounds their headers by size), only the
//! per-client cap.
//!
//! Known limit of a byte-level view: a request body that is still arriving after its
//! response started (the upstream answered early) is taken for the next request's header,
//! so such an upload is cut after `header_timeout` unless its bytes contain an empty line.
//! Keep-alive connections that go idle that way are closed after `header_timeout` instead of
//! Pingora's keep-alive time; clients open a new one.
//!
//! The per-client cap ([`ClientLimit`]) counts open connections per client address (the
//! PROXY header's source when the peer is a trusted proxy); the [`ClientSlot`] a connection
//! holds lives inside its [`Guarded`] stream, so it is given back whenever Pingora drops the
//! stream. A connection over the cap is closed before TLS or HTTP and counted
//! `result="client_limit"`. The counts are kept in 16 mutex-guarded shards: one lock per
//! connection opened and one per connection closed, nothing per request.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PingoraSocketAddr;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Shards of the per-client counts (a power of two).
const SHARDS: usize = 16;

/// How many connections each client address holds open, capped.
pub struct ClientLimit {
    max: u32,
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
}

impl fmt::Debug for ClientLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimit")
            .field("max", &self.max)
            .finish()
    }
}

impl ClientLimit {
    /// A cap of `max` open connections per client address.
    pub fn new(max: u32) -> Arc<ClientLimit> {
        Arc::new(ClientLimit {
            max,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut hasher);
        &self.shards[hasher.finish() as usize & (SHARDS - 1)]
    }

    /// A slot for one more connection of `ip`; `None` when it holds `max` already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical();
        // A poisoned lock only means another connection panicked mid-update: the map is
        // still a map.
        let mut counts = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            limit: Arc::clone(self),
            ip,
        })
    }

    /// The connections `ip` holds open now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let ip = ip.to_canonical();
        let counts = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

/// One open connection of a client; dropping it gives the slot back.
pub struct ClientSlot {
    limit: Arc<ClientLimit>,
    ip: IpAddr,
}

impl fmt::Debug for ClientSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSlot({})", self.ip)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limit
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Where a connection is in its request/response cycle, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header: the deadline runs.
    Header,
    /// The header is complete; no final response has started.
    Open,
    /// A final response started; the next bytes read start the next request.
    Responded,
    /// Upgraded (101) or HTTP/2: no header deadline any more.
    Tunnel,
    /// The deadline passed: every read fails.
    Expired,
}

/// A stream whose request headers must each arrive within a deadline, holding its client's
/// connection slot (see the module doc).
pub struct Guarded {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// The last byte read was a line feed ending a non-empty line (CRs are ignored).
    at_line_start: bool,
    /// When the header being read must be complete.
    due: Instant,
    /// A timer at `due` or before it (see the module doc).
    deadline: Pin<Box<Sleep>>,
    expired: IntCounter,
    _slot: Option<ClientSlot>,
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    /// Wraps `inner`, whose first request header must arrive within `timeout` from now;
    /// `http1: false` (HTTP/2) keeps only the slot. Expiries count on `expired`.
    pub fn new(
        inner: Stream,
        timeout: Duration,
        http1: bool,
        slot: Option<ClientSlot>,
        expired: IntCounter,
    ) -> Guarded {
        let due = Instant::now() + timeout;
        Guarded {
            inner,
            timeout,
            phase: if http1 { Phase::Header } else { Phase::Tunnel },
            at_line_start: false,
            due,
            deadline: Box::pin(tokio::time::sleep_until(due)),
            expired,
            _slot: slot,
        }
    }

    /// Follows the bytes just read; `true` when they complete the header being read.
    fn scan_header(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if self.at_line_start => return true,
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => self.at_line_start = false,
            }
        }
        false
    }

    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Responded {
            // The next request on a keep-alive connection.
            self.phase = Phase::Header;
            self.at_line_start = false;
            self.due = Instant::now() + self.timeout;
        }
        if self.phase == Phase::Header && self.scan_header(bytes) {
            self.phase = Phase::Open;
        }
    }

    /// Whether the header being read is overdue; otherwise the timer wakes `cx` when it
    /// may be, first moved to `due` if it was set earlier.
    fn header_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        while self.deadline.as_mut().poll(cx).is_ready() {
            if self.deadline.deadline() >= self.due {
                return true;
            }
            let due = self.due;
            self.deadline.as_mut().reset(due);
        }
        false
    }

    fn on_write(&mut self, bytes: &[u8]) {
        if self.phase != Phase::Open {
            return;
        }
        // Pingora writes a response header in one buffer: its status line comes first.
        match response_status(bytes) {
            Some(101) => self.phase = Phase::Tunnel,
            Some(100..=199) => {}
            Some(_) => self.phase = Phase::Responded,
            // Not a status line: body bytes of an interim answer, nothing to follow.
            None => {}
        }
    }
}

/// The status of the HTTP/1 status line `bytes` start with.
fn response_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(code.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Expired {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase == Phase::Header && this.header_overdue(cx) {
                    this.phase = Phase::Expired;
                    this.expired.inc();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request header did not arrive within limits.header_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.on_write(&buf[..n.min(buf.len())]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&written, bufs.iter().find(|b| !b.is_empty())) {
            this.on_write(&first[..(*n).min(first.len())]);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The client address a connection's slot is counted under: the peer (after a trusted
/// PROXY header).
pub fn client_of(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    match digest.peer_addr()? {
        PingoraSocketAddr::Inet(addr) => Some(addr.ip()),
        PingoraSocketAddr::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[test]
    fn client_slots_are_capped_and_given_back() {
        let limit = ClientLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none(), "a third connection of one client");
        assert!(limit.admit(b).is_some(), "another client is not affected");
        drop(first);
        assert_eq!(limit.open(a), 1);
        let _third = limit.admit(a).unwrap();
        // An IPv4-mapped IPv6 address is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limit.open(mapped), 2);
    }

    #[test]
    fn status_lines() {
        assert_eq!(response_status(b"HTTP/1.1 101 Switching"), Some(101));
        assert_eq!(response_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(response_status(b"HTTP/1.1 1"), None);
        assert_eq!(response_status(b"hello"), None);
        assert_eq!(response_status(b"HTTP/1.1 2x0 OK"), None);
    }

    fn guarded(mock: tokio_test::io::Mock, timeout: Duration) -> (Guarded, IntCounter) {
        let expired = counter();
        let g = Guarded::new(Box::new(mock), timeout, true, None, expired.clone());
        (g, expired)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_header_expires() {
        let mock = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\n")
            .wait(Duration::from_secs(4))
            .read(b"Host: a\r\n")
            .wait(Duration::from_secs(4))
            .read(b"X-Slow: 1\r\n")
            .wait(Duration::from_secs(4))
            .build();
        let (mut g, expired) = guarded(mock, Duration::from_secs(10));
        let mut buf = vec![0; 64];
        let started = Instant::now();
        let mut reads = 0;
        let err = loop {
            match g.read(&mut buf).await {
                Ok(_) => reads += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(reads, 3);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(expired.get(), 1);
        assert!(g.read(&mut buf).await.is_err(), "it stays expired");
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_rearms_and_a_complete_header_disarms() {
        let mock = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            // Idle for longer than the deadline between requests: not armed.
            .wait(Duration::from_secs(30))
            .read(b"GET /2 HTTP/1.1\r\n")
            .wait(Duration::from_secs(9))
            .read(b"Host: a\n\n")
            .write(b"HTTP/1.1 100 Continue\r\n\r\n")
            // A body after an interim answer is not a header.
            .wait(Duration::from_secs(30))
            .read(b"body")
            .build();
        let (mut g, expired) = guarded(mock, Duration::from_secs(10));
        let mut buf = vec![0; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Open);
        g.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(g.phase, Phase::Responded);
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Header);
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Open, "bare line feeds end a header too");
        g.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        assert_eq!(g.phase, Phase::Open);
        assert_eq!(g.read(&mut buf).await.unwrap(), 4);
        assert_eq!(expired.get(), 0);
    }

    /// The timer set for the first request fires before the second request is due: it is
    /// moved, and the second request gets its whole `header_timeout` from its first byte.
    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_deadline_counts_from_the_next_request() {
        let mock = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .write(b"HTTP/1.1 204 No Content\r\n\r\n")
            .wait(Duration::from_secs(5))
            .read(b"GET /2 HTTP/1.1\r\n")
            .wait(Duration::from_secs(20))
            .build();
        let (mut g, expired) = guarded(mock, Duration::from_secs(10));
        let mut buf = vec![0; 64];
        let started = Instant::now();
        assert!(g.read(&mut buf).await.unwrap() > 0);
        g.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Header);
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(15),
            "5 s idle, then 10 s"
        );
        assert_eq!(expired.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgrade_stands_aside() {
        let mock = tokio_test::io::Builder::new()
            .read(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
            .write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .wait(Duration::from_secs(60))
            .read(b"\x81\x01a")
            .wait(Duration::from_secs(60))
            .read(b"\x81\x01b")
            .build();
        let (mut g, _) = guarded(mock, Duration::from_secs(10));
        let mut buf = vec![0; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        g.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(g.phase, Phase::Tunnel);
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert!(g.read(&mut buf).await.unwrap() > 0);
        assert_eq!(g.phase, Phase::Tunnel);
    }
}
