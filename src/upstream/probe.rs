//! The health probes of the groups' peers, every group of a server sharing one connector.
//!
//! Pingora's `TcpHealthCheck` and `HttpHealthCheck` each own a connector, and building a
//! connector builds OpenSSL client contexts that load the system's CA roots (an HTTP check
//! builds two, for HTTP/1 and HTTP/2): milliseconds per group, paid again for every group a
//! reload rebuilds (a reload of 2,000 changed groups spent seconds there). A [`Probe`] does what
//! those checks do, through the [`Connectors`] the first [`ServiceTable`](super::ServiceTable)
//! built and every later generation inherits; they are built on the first probe, so a table
//! without health checks never builds them.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::upstreams::peer::{BasicPeer, HttpPeer};

use crate::rules::model::{HealthCheckKind, HealthCheckSpec};

/// The connectors every probe of one server's groups uses, built on first use.
#[derive(Default)]
pub struct Connectors {
    http: OnceLock<HttpConnector>,
    tcp: OnceLock<TransportConnector>,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectors").finish_non_exhaustive()
    }
}

impl Connectors {
    fn http(&self) -> &HttpConnector {
        self.http.get_or_init(|| HttpConnector::new(None))
    }

    fn tcp(&self) -> &TransportConnector {
        self.tcp.get_or_init(|| TransportConnector::new(None))
    }
}

/// What a probe does to one peer.
enum Kind {
    /// Opens a TCP connection (never TLS, as Pingora's default TCP check).
    Tcp(Box<BasicPeer>),
    /// Sends `request` with the group's protocol and TLS (`peer`); a status below 400 passes.
    Http {
        peer: Box<HttpPeer>,
        request: Box<RequestHeader>,
    },
}

/// One group's health check: Pingora's TCP or HTTP check over shared connectors.
pub struct Probe {
    kind: Kind,
    connectors: Arc<Connectors>,
    /// Consecutive passes that bring a peer back.
    rise: usize,
    /// Consecutive failures that take a peer out.
    fall: usize,
}

impl Probe {
    /// The probe of `spec`; an HTTP probe speaks the group's protocol and TLS (`template`).
    pub fn new(spec: &HealthCheckSpec, template: &HttpPeer, connectors: Arc<Connectors>) -> Probe {
        let kind = match &spec.kind {
            HealthCheckKind::Tcp => {
                let mut peer = BasicPeer::new("0.0.0.0:1");
                peer.options.connection_timeout = Some(spec.timeout);
                peer.options.total_connection_timeout = Some(spec.timeout);
                Kind::Tcp(Box::new(peer))
            }
            HealthCheckKind::Http { path, host } => {
                let mut peer = Box::new(template.clone());
                let options = &mut peer.options;
                options.connection_timeout = Some(spec.timeout);
                options.total_connection_timeout = Some(spec.timeout);
                options.read_timeout = Some(spec.timeout);
                options.write_timeout = Some(spec.timeout);
                options.idle_timeout = None;
                Kind::Http {
                    peer,
                    request: Box::new(probe_request(path, host)),
                }
            }
        };
        Probe {
            kind,
            connectors,
            rise: spec.rise,
            fall: spec.fall,
        }
    }
}

/// `GET path` with `Host: host`. Compile validated the path (it starts with '/'); a request
/// line that still fails to build is `GET /`, as Pingora's check defaults to.
fn probe_request(path: &str, host: &str) -> RequestHeader {
    let build = |path: &[u8]| {
        let mut req = RequestHeader::build("GET", path, None).ok()?;
        req.insert_header("Host", host).ok()?;
        Some(req)
    };
    build(path.as_bytes())
        .or_else(|| build(b"/"))
        .unwrap_or_else(|| {
            RequestHeader::build("GET", b"/", None).expect("a constant request line builds")
        })
}

/// A status from 200 to 399 passes.
fn check_status(resp: &ResponseHeader) -> pingora::Result<()> {
    let status = resp.status.as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        pingora::Error::e_explain(
            pingora::ErrorType::CustomCode("unhealthy status", status),
            "during http health check",
        )
    }
}

#[async_trait]
impl HealthCheck for Probe {
    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.rise
        } else {
            self.fall
        }
    }

    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        match &self.kind {
            Kind::Tcp(template) => {
                let mut peer = (**template).clone();
                peer._address = target.addr.clone();
                self.connectors.tcp().get_stream(&peer).await.map(|_| ())
            }
            Kind::Http { peer, request } => {
                let mut peer = (**peer).clone();
                peer._address = target.addr.clone();
                // Never released: every probe goes through the TCP (and TLS) handshakes, as
                // Pingora's HTTP check does by default.
                let (mut session, _) = self.connectors.http().get_http_session(&peer).await?;
                session.set_write_timeout(peer.options.write_timeout);
                session.write_request_header(request.clone()).await?;
                session.finish_request_body().await?;
                session.set_read_timeout(peer.options.read_timeout);
                session.read_response_header().await?;
                match session.response_header() {
                    Some(resp) => check_status(resp)?,
                    None => {
                        return pingora::Error::e_explain(
                            pingora::ErrorType::InvalidHTTPHeader,
                            "no response header during http health check",
                        )
                    }
                }
                while session.read_response_body().await?.is_some() {}
                Ok(())
            }
        }
    }
}
