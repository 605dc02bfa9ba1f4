//! The connection stage in front of HTTP: which listener a connection reached, the PROXY
//! protocol header of a trusted load balancer, the per-client connection cap, the TLS
//! handshake, which HTTP application (HTTP/1.1 only, or also h2c) then serves it, and the
//! request-header deadline it gets ([`crate::edge::limits`]).
//!
//! Pingora accepts every listener as plain TCP; [`EdgeApp`] does the rest, so one place
//! owns the per-connection policy, its timeouts and its counters. It costs one boxed future
//! per connection, nothing per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::server::handshake;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

use crate::config::{self, Limits, Listener, ListenerKind, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::edge::limits::{client_of, ClientLimit, Guarded};
use crate::edge::proxy_protocol::{declare_peer, read_proxy_header, ProxyHeader, ProxyHeaderError};
use crate::edge::tls::TlsEndpoint;
use crate::facts::client::TrustedProxies;
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;

/// What one listener does with a new connection.
struct EdgeListener {
    tls: Option<TlsStage>,
    h2c: bool,
    accepted: IntCounter,
    proxy_header_error: IntCounter,
    proxy_header_timeout: IntCounter,
    client_limit: IntCounter,
    header_timeout: IntCounter,
}

/// A trusted peer's PROXY header must be complete by then.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// On an h2c listener, the first bytes must arrive by then (Pingora's keep-alive idle time).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// How an HTTP/2 connection preface starts; no HTTP/1 request line does.
const H2_PREFACE_START: &[u8; 3] = b"PRI";

/// A TLS listener's endpoint and handshake counters.
struct TlsStage {
    endpoint: Arc<TlsEndpoint>,
    deadline: Duration,
    ok: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
}

/// The connection stage over an HTTP application `A` (graygate's proxy).
pub struct EdgeApp<A> {
    listeners: Arc<[Listener]>,
    stages: Vec<EdgeListener>,
    /// Serves plain listeners without h2c and every TLS listener (ALPN picks h2 there).
    http: Arc<A>,
    /// Serves plain listeners with `h2c: true`.
    h2c: Arc<A>,
    /// Peers whose PROXY header is believed.
    trusted: TrustedProxies,
    /// Open connections per client address, capped by `limits.max_connections_per_client`.
    clients: Arc<ClientLimit>,
    /// `limits.header_timeout`.
    header_timeout: Duration,
    handshake_log: LogThrottle,
}

impl<A> EdgeApp<A> {
    /// The stage for `listeners` (in config order), with `tls[i]` the endpoint of listener
    /// `i` when it speaks TLS, applying the connection `limits`.
    pub fn new(
        listeners: &[Listener],
        tls: &[Option<Arc<TlsEndpoint>>],
        trusted: TrustedProxies,
        limits: &Limits,
        http: A,
        h2c: A,
        metrics: &Metrics,
    ) -> Self {
        let stages = listeners
            .iter()
            .zip(tls)
            .map(|(listener, tls)| {
                let name = &*listener.name;
                let connections = |result: &str| {
                    metrics
                        .connections
                        .with_label_values(&[name, result])
                        .clone()
                };
                let handshakes = |result: &str| {
                    metrics
                        .tls_handshakes
                        .with_label_values(&[name, result])
                        .clone()
                };
                EdgeListener {
                    tls: tls.as_ref().map(|endpoint| TlsStage {
                        endpoint: Arc::clone(endpoint),
                        deadline: match &listener.kind {
                            ListenerKind::Tls(settings) => settings.handshake_timeout,
                            ListenerKind::Plain { .. } => DEFAULT_HANDSHAKE_TIMEOUT,
                        },
                        ok: handshakes("ok"),
                        error: handshakes("error"),
                        timeout: handshakes("timeout"),
                    }),
                    h2c: matches!(listener.kind, ListenerKind::Plain { h2c: true, .. }),
                    accepted: connections("ok"),
                    proxy_header_error: connections("proxy_protocol_error"),
                    proxy_header_timeout: connections("proxy_protocol_timeout"),
                    client_limit: connections("client_limit"),
                    header_timeout: connections("header_timeout"),
                }
            })
            .collect();
        EdgeApp {
            listeners: listeners.into(),
            stages,
            http: Arc::new(http),
            h2c: Arc::new(h2c),
            trusted,
            clients: ClientLimit::new(limits.max_connections_per_client),
            header_timeout: limits.header_timeout,
            handshake_log: LogThrottle::new(Duration::from_secs(10)),
        }
    }
}

/// Whether a connection on an h2c listener starts an HTTP/2 preface; `None` when it sends
/// nothing in time (closed). Pingora's own h2c check waits for all 24 preface bytes, so a
/// shorter HTTP/1 request (`GET / HTTP/1.0` and its blank line) would wait for ever; three
/// bytes tell the two apart, and the HTTP/1 ones go to the app without h2c.
async fn speaks_h2c(stream: &mut Stream) -> Option<bool> {
    let mut start = [0u8; 3];
    match tokio::time::timeout(FIRST_BYTES_TIMEOUT, stream.try_peek(&mut start)).await {
        Ok(Ok(true)) => Some(&start == H2_PREFACE_START),
        // A stream that cannot peek: let Pingora's own check decide.
        Ok(Ok(false)) => Some(true),
        Ok(Err(_)) | Err(_) => None,
    }
}

fn local_addr(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.local_addr().and_then(|a| a.as_inet()).copied()
}

fn peer_addr(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr().and_then(|a| a.as_inet()).copied()
}

impl<A> EdgeApp<A> {
    /// Reads the PROXY header a trusted peer may start `stream` with and makes its declared
    /// source the connection's peer; `false` when the header is refused (counted, logged).
    async fn proxy_header(&self, stage: &EdgeListener, stream: &mut Stream) -> bool {
        if self.trusted.is_empty() {
            return true;
        }
        let Some(peer) = peer_addr(stream).filter(|p| self.trusted.contains(p.ip())) else {
            // Anyone else's PROXY line is not read: it reaches TLS or HTTP as garbage.
            return true;
        };
        match read_proxy_header(&mut **stream, PROXY_HEADER_TIMEOUT).await {
            Ok(ProxyHeader::Source(source)) => {
                declare_peer(stream, source);
                true
            }
            Ok(ProxyHeader::Absent | ProxyHeader::KeepPeer) => true,
            Err(e) => {
                match e {
                    ProxyHeaderError::Timeout(_) => stage.proxy_header_timeout.inc(),
                    _ => stage.proxy_header_error.inc(),
                }
                if let Some(held_back) = self.handshake_log.admit() {
                    log::info!(
                        "connection from {peer}: {e}; {held_back} similar line(s) held back"
                    );
                }
                false
            }
        }
    }

    /// Terminates TLS on `stream`; `None` when the handshake failed or stalled (counted).
    async fn handshake(&self, tls: &TlsStage, stream: Stream) -> Option<Stream> {
        let endpoint = &tls.endpoint;
        let peer = peer_addr(&stream);
        // Pingora accepts every listener as TCP, so the stream is its L4 stream.
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                log::error!("listener {}: not a TCP stream", endpoint.listener());
                return None;
            }
        };
        match tokio::time::timeout(tls.deadline, handshake(endpoint.acceptor(), l4)).await {
            Ok(Ok(stream)) => {
                tls.ok.inc();
                Some(Box::new(stream))
            }
            Ok(Err(e)) => {
                tls.error.inc();
                if let Some(held_back) = self.handshake_log.admit() {
                    log::info!(
                        "listener {}: TLS handshake with {} failed: {e}; {held_back} similar line(s) held back",
                        endpoint.listener(),
                        peer.map_or("?".into(), |p| p.to_string())
                    );
                }
                None
            }
            Err(_) => {
                tls.timeout.inc();
                None
            }
        }
    }
}

#[async_trait]
impl<A> ServerApp for EdgeApp<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let arrival = config::arrival(&self.listeners, local_addr(&stream));
        let stage = &self.stages[usize::from(arrival.listener.0)];
        let mut stream = stream;
        if !self.proxy_header(stage, &mut stream).await {
            return None;
        }
        // Counted under the client the PROXY header declared, before any TLS work.
        let slot = match client_of(&stream) {
            Some(ip) => match self.clients.admit(ip) {
                Some(slot) => Some(slot),
                None => {
                    stage.client_limit.inc();
                    if let Some(held_back) = self.handshake_log.admit() {
                        log::info!(
                            "connection from {ip} refused: it holds limits.max_connections_per_client already; {held_back} similar line(s) held back"
                        );
                    }
                    return None;
                }
            },
            None => None,
        };
        stage.accepted.inc();
        let mut stream = match &stage.tls {
            Some(tls) => self.handshake(tls, stream).await?,
            None => stream,
        };
        let h2c = stage.h2c && speaks_h2c(&mut stream).await?;
        let http1 = !h2c && stream.selected_alpn_proto() != Some(ALPN::H2);
        let stream: Stream = Box::new(Guarded::new(
            stream,
            self.header_timeout,
            http1,
            slot,
            stage.header_timeout.clone(),
        ));
        let app = if h2c { &self.h2c } else { &self.http };
        app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.http.cleanup().await;
        self.h2c.cleanup().await;
    }
}
