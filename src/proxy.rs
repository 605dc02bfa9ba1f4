//! The Pingora glue: a thin [`ProxyHttp`] over facts, decide and upstream.
//!
//! `request_filter` gathers the facts, decides the version and finds the service (404 when
//! none); `upstream_peer` picks a healthy peer of that version's group, falling back to the
//! default version's group; `fail_to_connect` marks the peer and asks for a retry, which
//! lands in `upstream_peer` again; `logging` records metrics. No policy lives here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use xxhash_rust::xxh64::xxh64;

use crate::channels::ChannelKey;
use crate::config::AccessLogFormat;
use crate::facts::bucket::ip_text;
use crate::facts::{Facts, RequestView};
use crate::metrics::{status_class, FallbackReason, Metrics};
use crate::pages::{self, Visitor};
use crate::rules::decide::holds;
use crate::rules::decide::Decision;
use crate::rules::decide::Missing;
use crate::rules::model::Action;
use crate::rules::model::VersionId;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::store::Lookups;
use crate::throttle::LogThrottle;
use crate::upstream::{Service, ServiceId};

/// Request header carrying upstream the version whose group serves the request.
pub const VERSION_HEADER: &str = "x-graygate-version";
/// Request header carrying the deciding rule upstream.
pub const RULE_HEADER: &str = "x-graygate-rule";

/// How long an idle downstream keep-alive connection is kept.
const DOWNSTREAM_KEEPALIVE_SECS: u64 = 60;

/// The proxy service.
pub struct Gateway {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    lookups: Arc<Lookups>,
    channel_key: ChannelKey,
    access_log: AccessLogFormat,
    fallback_log: LogThrottle,
}

/// The log target of the access log (`RUST_LOG=graygate::access=off` silences it).
pub const ACCESS_TARGET: &str = "graygate::access";

/// The `service` and `version` label of requests no service matched.
const UNMATCHED: &str = "unmatched";

impl Gateway {
    /// A gateway serving whatever generation `store` holds, with store facts from `lookups`.
    pub fn new(
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        lookups: Arc<Lookups>,
        channel_key: ChannelKey,
        access_log: AccessLogFormat,
    ) -> Self {
        Gateway {
            store,
            metrics,
            lookups,
            channel_key,
            access_log,
            fallback_log: LogThrottle::new(Duration::from_secs(1)),
        }
    }
}

/// Where a routed request is going.
#[derive(Debug)]
pub struct Route {
    /// The matched service.
    pub service: ServiceId,
    /// The rules' decision.
    pub decision: Decision,
    /// The version whose group serves now (the decided one, or the default after a fallback).
    pub serving: VersionId,
    /// Consistent-hashing key: XXH64 of the uid, else of the client address.
    pub balance_key: [u8; 8],
    /// Peers that refused a connection for this request.
    pub failed_peers: Vec<SocketAddr>,
    /// The peer chosen last.
    pub peer: Option<SocketAddr>,
    /// Bit `i` set: the request meets goal `i`'s conditions (a conversion if the status fits).
    pub goal_attempts: u64,
    /// A channel cookie to set on the response (a sticky split's first decision).
    pub set_cookie: Option<String>,
}

/// A response graygate writes itself.
enum Page {
    Channel,
    Address,
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    started: Instant,
    route: Option<Route>,
}

impl RequestCtx {
    /// The routing state, once `request_filter` has run.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }
}

/// The host a request is for, without port: the URI authority (HTTP/2, absolute form) or
/// the `Host` header.
pub fn request_host(req: &RequestHeader) -> &str {
    let raw = req
        .uri
        .host()
        .or_else(|| req.headers.get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    strip_port(raw)
}

/// `host` without a `:port` (and without the brackets of an IPv6 literal).
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes a small JSON response: `{"error": message, "status": code}`.
async fn respond_json(session: &mut Session, status: u16, message: &str) -> pingora::Result<()> {
    let body = Bytes::from(serde_json::json!({ "error": message, "status": status }).to_string());
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(CONTENT_TYPE, "application/json")?;
    header.insert_header(CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

impl Gateway {
    /// A healthy peer of `version`'s group in `service`, not yet failed for this request.
    fn pick(service: &Service, version: VersionId, route: &Route) -> Option<SocketAddr> {
        service
            .group(version)?
            .pool
            .select(&route.balance_key, &route.failed_peers)
    }

    fn fall_back(
        &self,
        snapshot: &Snapshot,
        service: &Service,
        route: &mut Route,
        reason: FallbackReason,
    ) -> Option<SocketAddr> {
        let default = snapshot.rules.default;
        if route.serving == default {
            return None;
        }
        let from = &snapshot.rules.version(route.serving).name;
        let to = &snapshot.rules.version(default).name;
        self.metrics
            .fallbacks
            .with_label_values(&[&service.name, from, to, reason.as_str()])
            .inc();
        if let Some(held_back) = self.fallback_log.admit() {
            log::warn!(
                "service {}: version {from} falls back to {to} ({}); {held_back} similar line(s) held back",
                service.name,
                reason.as_str()
            );
        }
        route.serving = default;
        Self::pick(service, default, route)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a response compression module (off),
    /// which every request would still build and run; graygate never compresses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.store.current(),
            started: Instant::now(),
            route: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let rules = &snapshot.rules;
        let req = session.req_header();
        // RFC 9112 section 3.2: an HTTP/1.1 request without a Host is answered 400.
        if req.version == http::Version::HTTP_11
            && req.uri.host().is_none()
            && !req.headers.contains_key(HOST)
        {
            respond_json(session, 400, "an HTTP/1.1 request needs a Host header").await?;
            return Ok(true);
        }
        let host = request_host(req);
        let path = req.uri.path();
        let page = if rules.channel_page && path == &*rules.channels.path {
            Some(Page::Channel)
        } else if rules.address_api.as_ref().is_some_and(|a| path == &*a.path) {
            Some(Page::Address)
        } else {
            None
        };
        let service = snapshot.services.find(host, path);
        if page.is_none() && service.is_none() {
            respond_json(session, 404, "no service for this host and path").await?;
            return Ok(true);
        }
        let view = RequestView {
            method: &req.method,
            host,
            path,
            query: req.uri.query(),
            headers: &req.headers,
            client_ip: client_ip(session),
        };
        let mut facts = Facts::gather(&rules.identity, view);
        let uid = facts.uid.as_ref().map(|u| &*u.text);
        facts.channel =
            self.channel_key
                .channel_of(rules, view.cookie(&rules.channels.cookie), uid);
        let decision = self.lookups.decide(rules, &mut facts).await;
        if let Some(page) = page {
            if facts.internal_unresolved {
                // The page offers restricted versions to internal users only.
                self.lookups
                    .resolve(rules, &mut facts, Missing::Internal)
                    .await;
            }
            let visitor = Visitor {
                decision,
                uid: facts.uid.as_ref().map(|u| u.text.to_string()),
                internal: facts.internal,
                channel: facts.channel,
                host: host.to_string(),
            };
            match page {
                Page::Channel => {
                    pages::channel_page(session, &snapshot, &self.channel_key, &visitor).await?
                }
                Page::Address => {
                    let settings = rules.address_api.as_ref().expect("matched above");
                    pages::address_api(session, &snapshot, settings, &visitor).await?
                }
            }
            return Ok(true);
        }
        let Some(service) = service else {
            return Ok(true);
        };
        let goal_attempts = rules
            .goals
            .iter()
            .enumerate()
            .filter(|(_, goal)| goal.conditions.iter().all(|c| holds(c, &facts)))
            .fold(0u64, |bits, (i, _)| bits | 1 << i);
        let balance_key = match (&facts.uid, facts.req.client_ip) {
            (Some(uid), _) => xxh64(uid.text.as_bytes(), 0),
            (None, Some(ip)) => xxh64(ip_text(ip, &mut [0u8; 48]), 0),
            (None, None) => 0,
        }
        .to_le_bytes();
        // A sticky split's first decision for this user is kept in the channel cookie.
        let set_cookie = match decision.rule.map(|i| &rules.rules[i].action) {
            Some(Action::Split(split))
                if split.sticky && facts.channel != Some(decision.version) =>
            {
                Some(self.channel_key.set_cookie(
                    &rules.channels,
                    Some(&rules.version(decision.version).name),
                    facts.uid.as_ref().map(|u| &*u.text),
                ))
            }
            _ => None,
        };
        ctx.route = Some(Route {
            service,
            decision,
            serving: decision.version,
            balance_key,
            failed_peers: Vec::new(),
            peer: None,
            goal_attempts,
            set_cookie,
        });
        session.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some(route) = ctx.route.as_mut() else {
            return Error::e_explain(ErrorType::InternalError, "no route for the request");
        };
        let service = &snapshot.services.services[route.service];
        let retry = route.peer.is_some();
        let peer = if service.group(route.serving).is_none() {
            self.fall_back(&snapshot, service, route, FallbackReason::NoGroup)
        } else {
            Self::pick(service, route.serving, route).or_else(|| {
                let reason = if retry {
                    FallbackReason::Connect
                } else {
                    FallbackReason::Unhealthy
                };
                self.fall_back(&snapshot, service, route, reason)
            })
        };
        let Some(addr) = peer else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("service {}: no healthy upstream left", service.name),
            );
        };
        route.peer = Some(addr);
        let group = service
            .group(route.serving)
            .expect("a peer was picked from this group");
        let timeouts = group.pool.spec().timeouts;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.total_connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(timeouts.read);
        peer.options.write_timeout = Some(timeouts.write);
        peer.options.idle_timeout = Some(timeouts.idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(route) = ctx.route.as_mut() {
            if let Some(addr) = route.peer {
                route.failed_peers.push(addr);
                let service = &ctx.snapshot.services.services[route.service];
                let kind = match e.etype() {
                    ErrorType::ConnectTimedout => "connect_timeout",
                    _ => "connect",
                };
                self.metrics
                    .upstream_errors
                    .with_label_values(&[
                        &service.name,
                        &ctx.snapshot.rules.version(route.serving).name,
                        kind,
                    ])
                    .inc();
            }
            // A refused connection never reached the upstream: safe to retry any method.
            e.set_retry(true);
        }
        e
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(cookie) = ctx.route.as_mut().and_then(|r| r.set_cookie.take()) {
            // Appended: the upstream's own cookies stay.
            response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        let rules = &ctx.snapshot.rules;
        // RFC 9110 section 8.6: a repeated or listed Content-Length that Pingora accepted (all
        // values equal) is forwarded as one value, never as received.
        let lengths = upstream.headers.get_all(CONTENT_LENGTH);
        if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
            let single = lengths
                .iter()
                .next()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_string());
            match single {
                Some(value) => upstream.insert_header(CONTENT_LENGTH, value)?,
                None => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        "unreadable Content-Length",
                    )
                }
            }
        }
        // Client copies are dropped (insert replaces every value). The values were built
        // with the rules generation: cloning one is a reference count, not a copy.
        // The version of the build that serves: after a fallback, the default one.
        upstream.insert_header(
            VERSION_HEADER,
            rules.version(route.serving).header_value.clone(),
        )?;
        upstream.insert_header(RULE_HEADER, route.decision.rule_header_value(rules).clone())?;
        if let Some(ip) = client_ip(session) {
            let mut buf = [0u8; 48];
            let ip = ip_text(ip, &mut buf);
            let forwarded = match upstream.headers.get("x-forwarded-for") {
                Some(prior) => [prior.as_bytes(), b", ", ip].concat(),
                None => ip.to_vec(),
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
                    | ErrorType::ConnectTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if status > 0 && session.response_written().is_none() {
            let message = match status {
                503 => "no healthy upstream",
                502 => "bad gateway: the upstream failed",
                504 => "gateway timeout: the upstream did not answer in time",
                400 => "bad request",
                _ => "internal error",
            };
            if let Err(write_err) = respond_json(session, status, message).await {
                log::debug!("cannot send the {status} response: {write_err}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(if e.is_some() { 502 } else { 0 });
        let elapsed = ctx.started.elapsed();
        let rules = &ctx.snapshot.rules;
        let Some(route) = ctx.route.as_ref() else {
            // Answered before routing (no service for the host and path): fixed labels.
            if status > 0 {
                self.metrics
                    .requests
                    .with_label_values(&[UNMATCHED, UNMATCHED, status_class(status)])
                    .inc();
            }
            self.access_log(session, status, elapsed, None, &ctx.snapshot);
            return;
        };
        let service = &ctx.snapshot.services.services[route.service];
        let served = &*rules.version(route.serving).name;
        let decided = &*rules.version(route.decision.version).name;
        self.metrics
            .decisions
            .with_label_values(&[route.decision.rule_name(rules), decided])
            .inc();
        for (i, goal) in rules.goals.iter().enumerate() {
            if route.goal_attempts & (1 << i) != 0 {
                let labels = [&*goal.name, decided];
                self.metrics.goal_attempts.with_label_values(&labels).inc();
                if goal.status.matches(status) {
                    self.metrics.goals.with_label_values(&labels).inc();
                }
            }
        }
        if status > 0 {
            self.metrics
                .requests
                .with_label_values(&[&service.name, served, status_class(status)])
                .inc();
        }
        self.metrics
            .request_duration
            .with_label_values(&[&service.name, served])
            .observe(elapsed.as_secs_f64());
        if let Some(e) = e {
            if e.esource() == &ErrorSource::Upstream {
                let kind = match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                    ErrorType::ConnectionClosed => "reset",
                    ErrorType::ReadError | ErrorType::WriteError => "io",
                    ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
                        "protocol"
                    }
                    _ => "other",
                };
                self.metrics
                    .upstream_errors
                    .with_label_values(&[&service.name, served, kind])
                    .inc();
            }
        }
        self.access_log(session, status, elapsed, Some(route), &ctx.snapshot);
    }
}

impl Gateway {
    /// One line per request on the `graygate::access` log target, text or JSON.
    fn access_log(
        &self,
        session: &Session,
        status: u16,
        elapsed: Duration,
        route: Option<&Route>,
        snapshot: &Snapshot,
    ) {
        if self.access_log == AccessLogFormat::Off
            || !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info)
        {
            return;
        }
        let req = session.req_header();
        let rules = &snapshot.rules;
        let (service, version, decided, rule, upstream) = match route {
            Some(r) => (
                &*snapshot.services.services[r.service].name,
                &*rules.version(r.serving).name,
                &*rules.version(r.decision.version).name,
                r.decision.rule_name(rules),
                r.peer.map(|p| p.to_string()),
            ),
            None => (UNMATCHED, UNMATCHED, UNMATCHED, UNMATCHED, None),
        };
        let client = client_ip(session).map(|ip| ip.to_string());
        let millis = elapsed.as_secs_f64() * 1e3;
        match self.access_log {
            AccessLogFormat::Json => {
                let line = serde_json::json!({
                    "client": client,
                    "method": req.method.as_str(),
                    "host": request_host(req),
                    "path": req.uri.path(),
                    "status": status,
                    "duration_ms": (millis * 1000.0).round() / 1000.0,
                    "service": service,
                    "version": version,
                    "decided": decided,
                    "rule": rule,
                    "upstream": upstream,
                    "generation": snapshot.generation,
                });
                log::info!(target: ACCESS_TARGET, "{line}");
            }
            _ => log::info!(
                target: ACCESS_TARGET,
                "{} {} {}{} {status} {millis:.3}ms service={service} version={version} decided={decided} rule={rule} upstream={}",
                client.as_deref().unwrap_or("-"),
                req.method,
                request_host(req),
                req.uri.path(),
                upstream.as_deref().unwrap_or("-")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_without_ports() {
        assert_eq!(strip_port("www.example.com:8080"), "www.example.com");
        assert_eq!(strip_port("www.example.com"), "www.example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("a:b"), "a:b");
        assert_eq!(strip_port(""), "");
    }
}
