//! The Pingora glue: a thin [`ProxyHttp`] over facts, decide, upstream and metrics.
//!
//! `request_filter` gathers the facts, decides the version, and either answers itself (a
//! page, a refusal) or keeps a [`Route`] in the context; `upstream_peer` asks
//! `Service::serving_group` for the group and peer (the fallback policy lives there);
//! `fail_to_connect` marks the peer and asks for a retry, which lands in `upstream_peer`
//! again; `error_while_proxy` asks for one on a fresh connection when a reused one failed
//! before any response byte (`upstream::retry`); `request_filter` and
//! `request_body_filter` hold a body to `max_body_size`; `upstream_request_filter` (once per attempt, on Pingora's fresh copy of the
//! request) and `response_filter` give the serving version the cookies it may see
//! (`cookies`); `logging` hands the outcome to metrics, the windowed stats and the access
//! log. No policy lives here.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, LOCATION, SET_COOKIE,
    STRICT_TRANSPORT_SECURITY,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, OrErr};

use crate::access_log::AccessLog;
use crate::channels::ChannelKey;
use crate::config::{self, AccessLogFormat, Config, Listener, ListenerKind, TlsListener};
use crate::cookies;
use crate::facts::bucket::ip_text;
use crate::facts::client::{client_address, TrustedProxies};
use crate::facts::VersionId;
use crate::facts::{request_host, Arrival, Facts, RequestView, Scheme};
use crate::metrics::{Answered, Metrics, SeriesAt, UNMATCHED};
use crate::pages::{self, Visitor};
use crate::rules::decide::{goal_attempts, Decision, Missing};
use crate::rules::model::RuleSet;
use crate::state::{Snapshot, SnapshotStore};
use crate::store::Lookups;
use crate::throttle::LogThrottle;
use crate::upstream::{self, balance_key, ServiceId};
use crate::web::Reply;

/// Request header carrying upstream the version whose group serves the request.
pub const VERSION_HEADER: &str = "x-graygate-version";
/// Request header carrying the deciding rule upstream.
pub const RULE_HEADER: &str = "x-graygate-rule";
/// Request header telling the upstream the scheme the client used. Written as text: Pingora's
/// `insert_header` parses every name it is given, and an `http::HeaderName` outside `http`'s
/// standard set would first be copied into a heap buffer (`titled_header_name`), where a
/// `&'static str` is borrowed as it is (one allocation fewer per header and request,
/// `tests/decide_allocations.rs`).
const FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The client chain, read from trusted proxies (a parsed name: a map lookup by it hashes no
/// text) and appended to upstream (by its text, as above).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X_FORWARDED_FOR` as text, for `insert_header`.
const X_FORWARDED_FOR_TEXT: &str = "x-forwarded-for";

/// How long an idle downstream keep-alive connection is kept.
const DOWNSTREAM_KEEPALIVE_SECS: u64 = 60;

pub use crate::access_log::ACCESS_TARGET;

/// The proxy service.
pub struct Gateway {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    lookups: Arc<Lookups>,
    channel_key: ChannelKey,
    listeners: Arc<[Listener]>,
    /// Per listener: the `Strict-Transport-Security` value of a TLS listener with `hsts`.
    hsts: Box<[Option<HeaderValue>]>,
    access_log: Arc<AccessLog>,
    trusted_proxies: TrustedProxies,
    /// `limits.max_body_size`, where a service sets none.
    max_body_size: u64,
    fallback_log: LogThrottle,
}

impl Gateway {
    /// A gateway serving whatever snapshot `store` holds on the listeners of `config`, with
    /// store facts from `lookups`; its `trusted_proxies` may say who the client is. Request
    /// lines go to `access_log`.
    pub fn new(
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        lookups: Arc<Lookups>,
        channel_key: ChannelKey,
        config: &Config,
        access_log: Arc<AccessLog>,
    ) -> Self {
        let listeners = &config.listeners;
        let hsts = listeners
            .iter()
            .map(|l| match &l.kind {
                ListenerKind::Tls(TlsListener {
                    hsts: Some(max_age),
                    ..
                }) => HeaderValue::from_str(&format!("max-age={}", max_age.as_secs())).ok(),
                _ => None,
            })
            .collect();
        Gateway {
            store,
            metrics,
            lookups,
            channel_key,
            hsts,
            listeners: listeners.as_slice().into(),
            access_log,
            trusted_proxies: TrustedProxies::new(config.trusted_proxies.iter().copied()),
            max_body_size: config.limits.max_body_size,
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
    /// The baseline serving instead of the decided version, which is withdrawn.
    pub withdrawn_to: Option<VersionId>,
    /// Consistent-hashing key (see `upstream::balance_key`).
    pub balance_key: [u8; 8],
    /// Peers that refused a connection for this request.
    pub failed_peers: Vec<SocketAddr>,
    /// The peer chosen last.
    pub peer: Option<SocketAddr>,
    /// A peer accepted the connection but its TLS handshake failed.
    pub tls_failed: bool,
    /// Bit `i` set: the request meets goal `i`'s conditions (a conversion if the status fits).
    pub goal_attempts: u64,
    /// A channel cookie to set on the response (a sticky split's first decision).
    pub set_cookie: Option<String>,
    /// The largest body accepted (the service's `max_body_size`, or the global one).
    pub body_limit: u64,
    /// Body bytes read from the client so far.
    pub body_read: u64,
    /// Retries of failed reused connections so far, and whether the next attempt must
    /// open a fresh connection (`upstream::retry`).
    pub reuse_retry: upstream::retry::ReuseRetry,
}

/// What a request is for: a page graygate answers itself, or a service it proxies to.
enum Target {
    Page(Page),
    Service(ServiceId),
}

/// A response graygate writes itself.
#[derive(Debug, Clone, Copy)]
enum Page {
    Channel,
    Address,
}

impl Page {
    /// The page served at `path`, if any.
    fn at(snapshot: &Snapshot, path: &str) -> Option<Page> {
        let rules = &snapshot.rules;
        if rules.channel_page && path == &*rules.channels.path {
            Some(Page::Channel)
        } else if rules.address_api.as_ref().is_some_and(|a| path == &*a.path) {
            Some(Page::Address)
        } else {
            None
        }
    }
}

/// Per-request state.
pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    started: Instant,
    /// The listener the request arrived on.
    arrival: Arrival,
    /// The client address (`Gateway::client_ip`), once `request_filter` has run.
    client_ip: Option<IpAddr>,
    route: Option<Route>,
}

impl RequestCtx {
    /// The routing state, once `request_filter` has run.
    pub fn route(&self) -> Option<&Route> {
        self.route.as_ref()
    }
}

/// The address the connection came from: the TCP peer, or the source a PROXY header declared.
fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// What [`forward_headers`] tells the upstream about one attempt of a routed request.
pub struct Forwarding<'a> {
    /// The rules generation of the request.
    pub rules: &'a RuleSet,
    /// The version whose group serves (after a fallback, the default).
    pub serving: VersionId,
    /// The rules' decision.
    pub decision: &'a Decision,
    /// The scheme the client used.
    pub scheme: Scheme,
    /// The attempt must not leave its connection in the pool (`upstream::retry`).
    pub close_connection: bool,
    /// The address the connection came from (`peer_ip`).
    pub peer: Option<IpAddr>,
}

/// Builds the upstream request's headers from Pingora's copy of the client's (`upstream`)
/// and the client's own (`downstream`): a single `Content-Length`, `X-Graygate-Version`,
/// `X-Graygate-Rule`, `X-Forwarded-Proto`, `X-Forwarded-For` and the cookies the serving
/// version may see. The per-request part of `upstream_request_filter`, apart so that a test
/// can count what it allocates (`request_path_allocations` in `tests/decide_allocations.rs`).
pub fn forward_headers(
    f: &Forwarding<'_>,
    downstream: &http::HeaderMap,
    upstream: &mut RequestHeader,
) -> pingora::Result<cookies::Counts> {
    let rules = f.rules;
    // RFC 9110 section 8.6: a repeated or listed Content-Length that Pingora accepted (all
    // values equal) is forwarded as one value, never as received.
    let lengths = upstream.headers.get_all(CONTENT_LENGTH);
    if lengths.iter().count() > 1 || lengths.iter().any(|v| v.as_bytes().contains(&b',')) {
        let Some(length) = declared_length(upstream) else {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "unreadable Content-Length");
        };
        upstream.insert_header(CONTENT_LENGTH, length.to_string())?;
    }
    // Client copies are dropped (insert replaces every value). The values were built
    // with the rules generation: cloning one is a reference count, not a copy.
    // The version of the build that serves: after a fallback, the default one.
    upstream.insert_header(
        VERSION_HEADER,
        rules.version(f.serving).header_value.clone(),
    )?;
    upstream.insert_header(RULE_HEADER, f.decision.rule_header_value(rules).clone())?;
    // A static value: no copy of the scheme's text per request.
    let proto = HeaderValue::from_static(f.scheme.as_str());
    upstream.insert_header(FORWARDED_PROTO, proto)?;
    if f.close_connection {
        upstream.insert_header(CONNECTION, HeaderValue::from_static("close"))?;
    }
    // The cookies the serving version may see (SPEC section 15), from the browser's:
    // after a fallback, the default version's share.
    let counts = cookies::apply_to_request(rules, f.serving, downstream, upstream)?;
    // A proxy appends the address it received the connection from (the peer, never the
    // client it worked out), after every value received: several headers are one list.
    if let Some(ip) = f.peer {
        let mut buf = [0u8; 48];
        let ip = ip_text(ip.to_canonical(), &mut buf);
        let prior = upstream.headers.get_all(X_FORWARDED_FOR);
        let value = if prior.iter().next().is_none() {
            // The usual case: the address alone, copied once into a value of its size.
            HeaderValue::from_bytes(ip)
        } else {
            let mut forwarded =
                Vec::with_capacity(prior.iter().map(|v| v.len() + 2).sum::<usize>() + ip.len());
            for prior in prior {
                forwarded.extend_from_slice(prior.as_bytes());
                forwarded.extend_from_slice(b", ");
            }
            forwarded.extend_from_slice(ip);
            HeaderValue::try_from(forwarded)
        };
        let value = value.or_err(ErrorType::InvalidHTTPHeader, "X-Forwarded-For")?;
        upstream.insert_header(X_FORWARDED_FOR_TEXT, value)?;
    }
    Ok(counts)
}

/// The body length a request declares (its first Content-Length value: Pingora accepts a
/// repeated or listed one only when all values are equal); `None` without a readable one.
fn declared_length(req: &RequestHeader) -> Option<u64> {
    let value = req.headers.get(CONTENT_LENGTH)?.to_str().ok()?;
    value.split(',').next()?.trim().parse().ok()
}

/// The 413 of a body over `max_body_size`.
fn body_too_large() -> Reply {
    Reply::error(413, "the request body is larger than max_body_size")
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without a Host is answered 400.
fn lacks_host(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req.uri.host().is_none()
        && !req.headers.contains_key(HOST)
}

/// The 308 of a `redirect_https` listener: the same host (on `port` unless 443), path and
/// query over HTTPS.
fn https_redirect(req: &RequestHeader, port: u16) -> Reply {
    let host = request_host(req);
    // An IPv6 literal goes back in brackets; a host that could not be a name is refused
    // rather than echoed into a Location.
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !valid {
        return Reply::error(400, "the Host header is not a host name");
    }
    let mut location = String::with_capacity(16 + host.len() + req.uri.path().len());
    location.push_str("https://");
    if host.contains(':') {
        location.push('[');
        location.push_str(host);
        location.push(']');
    } else {
        location.push_str(host);
    }
    if port != 443 {
        location.push(':');
        location.push_str(&port.to_string());
    }
    match req.uri.path_and_query() {
        Some(pq) => location.push_str(pq.as_str()),
        None => location.push('/'),
    }
    Reply::new(308, "text/plain", format!("moved to {location}\n")).with_header(LOCATION, &location)
}

impl Gateway {
    /// The client's address: the peer, or what trusted proxies say (`facts::client`).
    fn client_ip(&self, session: &Session) -> Option<IpAddr> {
        let peer = peer_ip(session)?;
        let forwarded = || {
            let values = session.req_header().headers.get_all(X_FORWARDED_FOR);
            values.into_iter().map(|v| v.as_bytes())
        };
        Some(client_address(peer, forwarded, &self.trusted_proxies))
    }

    fn arrival(&self, session: &Session) -> Arrival {
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        config::arrival(&self.listeners, local)
    }

    /// The HTTPS port a plain listener with `redirect_https` sends its requests to.
    fn redirect_https(&self, arrival: Arrival) -> Option<u16> {
        match self.listeners.get(arrival.listener.index())?.kind {
            ListenerKind::Plain { redirect_https, .. } => redirect_https,
            ListenerKind::Tls(_) => None,
        }
    }

    /// The `Strict-Transport-Security` value of the listener the request arrived on.
    fn hsts_of(&self, arrival: Arrival) -> Option<&HeaderValue> {
        self.hsts.get(arrival.listener.index())?.as_ref()
    }

    /// Writes a response graygate answers itself, with the listener's HSTS.
    async fn reply(
        &self,
        session: &mut Session,
        arrival: Arrival,
        mut reply: Reply,
    ) -> pingora::Result<()> {
        if let Some(hsts) = self.hsts_of(arrival) {
            reply
                .headers
                .push((STRICT_TRANSPORT_SECURITY, hsts.clone()));
        }
        reply.write(session).await
    }

    /// Serves a page to `visitor`.
    async fn page(
        &self,
        session: &mut Session,
        snapshot: &Snapshot,
        page: Page,
        visitor: &Visitor,
    ) -> Reply {
        match (page, &snapshot.rules.address_api) {
            (Page::Address, Some(settings)) => {
                let query = session.req_header().uri.query();
                pages::address_api(snapshot, settings, query, visitor)
            }
            _ => pages::channel_page(session, snapshot, &self.channel_key, visitor).await,
        }
    }

    /// Moves `route` to the group that serves it now, counting and logging a fallback.
    fn note_serving(&self, snapshot: &Snapshot, route: &mut Route, serving: upstream::Serving) {
        let to = serving.group.version;
        if let Some(reason) = serving.fallback.filter(|_| to != route.serving) {
            let service = &snapshot.services.services[route.service].name;
            let from = &snapshot.rules.version(route.decision.version).name;
            let to = &serving.group.version_name;
            self.metrics
                .record_fallback(service, from, to, reason.as_str());
            if let Some(held_back) = self.fallback_log.admit() {
                log::warn!(
                    "service {service}: version {from} falls back to {to} ({}); {held_back} similar line(s) held back",
                    reason.as_str()
                );
            }
        }
        route.serving = to;
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a response compression module (off),
    /// which every request would still build and run; graygate never compresses. (So a
    /// [`Reply`] may be written on the inner HTTP session: there are no modules to run.)
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.store.current(),
            started: Instant::now(),
            arrival: Arrival::default(),
            client_ip: None,
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
        let arrival = self.arrival(session);
        ctx.arrival = arrival;
        let client_ip = self.client_ip(session);
        ctx.client_ip = client_ip;
        if lacks_host(session.req_header()) {
            let reply = Reply::error(400, "an HTTP/1.1 request needs a Host header");
            self.reply(session, arrival, reply).await?;
            return Ok(true);
        }
        if let Some(port) = self.redirect_https(arrival) {
            let reply = https_redirect(session.req_header(), port);
            self.reply(session, arrival, reply).await?;
            return Ok(true);
        }
        let req = session.req_header();
        let host = request_host(req);
        let path = req.uri.path();
        let target = match (
            Page::at(&snapshot, path),
            snapshot.services.find(host, path),
        ) {
            (Some(page), _) => Target::Page(page),
            (None, Some(service)) => Target::Service(service),
            (None, None) => {
                let reply = Reply::error(404, "no service for this host and path");
                self.reply(session, arrival, reply).await?;
                return Ok(true);
            }
        };
        let view = RequestView {
            method: &req.method,
            host,
            path,
            query: req.uri.query(),
            headers: &req.headers,
            client_ip,
            arrival,
        };
        let mut facts = Facts::gather(&rules.identity, view);
        let uid = facts.uid.as_ref().map(|u| &*u.text);
        facts.channel =
            self.channel_key
                .channel_of(rules, view.cookie(&rules.channels.cookie), uid);
        facts.rollouts = &snapshot.runtime.rollouts;
        facts.override_version = snapshot.runtime.override_version;
        let mut decision = self.lookups.decide(rules, &mut facts).await;
        let withdrawn = snapshot.runtime.withdrawal(&decision);
        let withdrawn_to = self
            .lookups
            .withdrawn_to(rules, withdrawn, &mut facts)
            .await;
        match target {
            Target::Service(service) => {
                let uid = facts.uid.as_ref().map(|u| &*u.text);
                let body_limit = snapshot.services.services[service]
                    .max_body_size
                    .unwrap_or(self.max_body_size);
                ctx.route = Some(Route {
                    service,
                    decision,
                    serving: decision.version,
                    withdrawn_to,
                    balance_key: balance_key(uid, client_ip),
                    failed_peers: Vec::new(),
                    peer: None,
                    tls_failed: false,
                    goal_attempts: goal_attempts(rules, &facts),
                    set_cookie: self.channel_key.sticky_cookie(rules, &decision, &facts),
                    body_limit,
                    body_read: 0,
                    reuse_retry: Default::default(),
                });
                if declared_length(session.req_header()).is_some_and(|n| n > body_limit) {
                    // Refused before any upstream connection; the body is not drained.
                    session.set_keepalive(None);
                    self.reply(session, arrival, body_too_large()).await?;
                    return Ok(true);
                }
                session.set_keepalive(Some(DOWNSTREAM_KEEPALIVE_SECS));
                Ok(false)
            }
            Target::Page(page) => {
                if facts.internal_unresolved {
                    // The page offers restricted versions to internal users only.
                    self.lookups
                        .resolve(rules, &mut facts, Missing::Internal)
                        .await;
                }
                // A page (the address API among them) names the version that serves.
                if let Some(baseline) = withdrawn_to {
                    decision.version = baseline;
                }
                let uid = facts.uid.as_ref().map(|u| &*u.text);
                let visitor = Visitor {
                    decision,
                    uid: uid.map(str::to_string),
                    internal: facts.internal,
                    channel: facts.channel,
                    host: host.to_string(),
                    balance_key: balance_key(uid, client_ip),
                    scheme: arrival.scheme,
                };
                let reply = self.page(session, &snapshot, page, &visitor).await;
                self.reply(session, arrival, reply).await?;
                Ok(true)
            }
        }
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
        let serving = service.serving_group(
            route.decision.version,
            route.withdrawn_to,
            snapshot.rules.default,
            &route.balance_key,
            &route.failed_peers,
        );
        let Some(serving) = serving else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("service {}: no group serves it", service.name),
            );
        };
        self.note_serving(&snapshot, route, serving);
        let Some(addr) = serving.peer else {
            // Peers that answered with a TLS handshake that failed are there but wrong (a
            // certificate that does not verify): a bad gateway, not an absent one.
            let status = if route.tls_failed { 502 } else { 503 };
            return Error::e_explain(
                ErrorType::HTTPStatus(status),
                format!("service {}: no healthy upstream left", service.name),
            );
        };
        route.peer = Some(addr);
        let mut peer = serving.group.pool.peer(addr);
        route.reuse_retry.prepare(&mut peer);
        Ok(peer)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(route) = ctx.route.as_mut() else {
            e.set_retry(false);
            return e;
        };
        let req = session.req_header();
        let attempt = upstream::retry::Attempt {
            reused: client_reused,
            idempotent: upstream::retry::is_idempotent(&req.method),
            response_started: session.response_written().is_some(),
            body_replayable: !session.as_ref().retry_buffer_truncated(),
        };
        let retry = route.reuse_retry.decide(&attempt, &e);
        e.set_retry(retry.is_some());
        if let Some(reason) = retry {
            let service = &ctx.snapshot.services.services[route.service].name;
            let version = &ctx.snapshot.rules.version(route.serving).name;
            self.metrics.record_upstream_error(
                service,
                version,
                upstream::error_kind(&e).unwrap_or("other"),
            );
            self.metrics.record_retry(service, version, reason);
        }
        e
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let (Some(route), Some(chunk)) = (ctx.route.as_mut(), body.as_ref()) else {
            return Ok(());
        };
        if session.was_upgraded() {
            // WebSocket frames are not a request body.
            return Ok(());
        }
        route.body_read += chunk.len() as u64;
        if route.body_read > route.body_limit {
            // A body without a Content-Length (chunked, HTTP/2) is cut here: the upstream
            // has seen at most `body_limit` bytes of it; fail_to_proxy answers 413.
            *body = None;
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "the request body is larger than max_body_size",
            );
        }
        Ok(())
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
                let kind = upstream::connect_error_kind(&e);
                route.tls_failed |= kind == "tls";
                self.metrics.record_upstream_error(
                    &ctx.snapshot.services.services[route.service].name,
                    &ctx.snapshot.rules.version(route.serving).name,
                    kind,
                );
            }
            // A refused connection never reached the upstream: safe to retry any method.
            e.set_retry(true);
            self.metrics.record_retry(
                &ctx.snapshot.services.services[route.service].name,
                &ctx.snapshot.rules.version(route.serving).name,
                "connect",
            );
        }
        e
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(hsts) = self.hsts_of(ctx.arrival) {
            response.insert_header(STRICT_TRANSPORT_SECURITY, hsts.clone())?;
        }
        let Some(route) = ctx.route.as_mut() else {
            return Ok(());
        };
        // The upstream's cookies first: graygate's own, appended below, is never renamed.
        let rules = &ctx.snapshot.rules;
        cookies::apply_to_response(rules, route.serving, response)?
            .record(&self.metrics, &rules.version(route.serving).name);
        if let Some(cookie) = route.set_cookie.take() {
            // Appended: the upstream's own cookies stay.
            response.append_header(SET_COOKIE, cookie)?;
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
        let forwarding = Forwarding {
            rules,
            serving: route.serving,
            decision: &route.decision,
            scheme: ctx.arrival.scheme,
            close_connection: route.reuse_retry.close_connection(),
            peer: peer_ip(session),
        };
        forward_headers(&forwarding, &session.req_header().headers, upstream)?
            .record(&self.metrics, &rules.version(route.serving).name);
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let answer = upstream::error_status(e);
        if let Some((status, message)) = answer.filter(|_| session.response_written().is_none()) {
            let reply = Reply::error(status, message);
            if let Err(write_err) = self.reply(session, ctx.arrival, reply).await {
                log::debug!("cannot send the {status} response: {write_err}");
            }
        }
        FailToProxy {
            error_code: answer.map_or(0, |(status, _)| status),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(if e.is_some() { 502 } else { 0 });
        let elapsed = ctx.started.elapsed();
        let snapshot = &ctx.snapshot;
        let rules = &snapshot.rules;
        let route = ctx.route.as_ref();
        let series = &snapshot.series;
        let answered = match route {
            Some(route) => {
                let decided_at = route.decision.version.index();
                let decided = &*rules.version(route.decision.version).name;
                let mut conversions = 0u64;
                for (i, goal) in rules.goals.iter().enumerate() {
                    if route.goal_attempts & (1 << i) != 0 {
                        let converted = goal.status.matches(status);
                        conversions |= u64::from(converted) << i;
                        series.record_goal(i, &goal.name, decided_at, decided, converted);
                    }
                }
                let goals = &snapshot.stats.goals;
                let (attempts, conversions) = (
                    goals.translate(route.goal_attempts),
                    goals.translate(conversions),
                );
                if let Some(cell) = snapshot.stats.cell(route.service, route.serving) {
                    cell.record(status, elapsed, attempts, conversions);
                }
                // A rollout's rule: its arm, by the decided version (what its checks judge).
                // A version whose group could not serve (no healthy peer, refused connections:
                // another group answered) failed the request, whatever the other group said.
                // (The deciding rule was just read by `decide`: asking it costs no miss.)
                let arm = route
                    .decision
                    .rule
                    .and_then(|rule| rules.rules.get(rule)?.rollout())
                    .and_then(|id| snapshot.stats.rollout_arm(id, route.decision.version));
                if let Some(cell) = arm {
                    let fell_back =
                        route.withdrawn_to.is_none() && route.serving != route.decision.version;
                    let status = if fell_back { 502 } else { status };
                    cell.record(status, elapsed, attempts, conversions);
                }
                Answered {
                    at: Some(SeriesAt {
                        service: route.service,
                        served: route.serving.index(),
                        decided: decided_at,
                        rule: route.decision.rule_slot(rules),
                    }),
                    service: &snapshot.services.services[route.service].name,
                    served: &rules.version(route.serving).name,
                    decided,
                    rule: route.decision.rule_name(rules),
                    status,
                    elapsed,
                    upstream_error: e.and_then(upstream::error_kind),
                }
            }
            // Answered before routing (no service for the host and path, a page): fixed labels.
            None => Answered {
                at: None,
                service: UNMATCHED,
                served: UNMATCHED,
                decided: UNMATCHED,
                rule: UNMATCHED,
                status,
                elapsed,
                upstream_error: None,
            },
        };
        series.record(&answered);
        self.access_log(session, ctx, &answered);
    }
}

impl Gateway {
    /// One line per request in the buffered access log (`access_log`), text or JSON.
    fn access_log(&self, session: &Session, ctx: &RequestCtx, answered: &Answered) {
        if !self.access_log.enabled() {
            return;
        }
        let req = session.req_header();
        let Answered {
            at: _,
            service,
            served: version,
            decided,
            rule,
            status,
            elapsed,
            upstream_error: _,
        } = *answered;
        let upstream = ctx
            .route
            .as_ref()
            .and_then(|r| r.peer)
            .map(|p| p.to_string());
        let listener = self
            .listeners
            .get(ctx.arrival.listener.index())
            .map(|l| &*l.name);
        // Known since request_filter; a request Pingora ended before it is looked up here.
        let client = ctx
            .client_ip
            .or_else(|| self.client_ip(session))
            .map(|ip| ip.to_string());
        let millis = elapsed.as_secs_f64() * 1e3;
        match self.access_log.format() {
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
                    "generation": ctx.snapshot.generation,
                    "listener": listener,
                    "scheme": ctx.arrival.scheme.as_str(),
                });
                self.access_log.line(|buf| {
                    let _ = serde_json::to_writer(buf, &line);
                });
            }
            _ => self.access_log.line(|buf| {
                let _ = write!(
                    buf,
                    "{} {} {}{} {status} {millis:.3}ms service={service} version={version} decided={decided} rule={rule} upstream={}",
                    client.as_deref().unwrap_or("-"),
                    req.method,
                    request_host(req),
                    req.uri.path(),
                    upstream.as_deref().unwrap_or("-")
                );
            }),
        }
    }
}
