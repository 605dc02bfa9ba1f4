//! One group's live peers: a Pingora `LoadBalancer` with its health state and probe schedule.
//!
//! A [`Pool`] is built from a [`GroupSpec`] and shared by every generation whose group has
//! the same spec, so a reload that leaves a group alone keeps its health state and its
//! round-robin position. It also holds the group's peer template, built once with the
//! group's protocol, TLS and timeouts: a request's peer is a copy with its address set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use xxhash_rust::xxh64::xxh64;

use super::probe::{Connectors, Probe};
use crate::rules::model::{GroupSpec, LbPolicy, UpstreamProtocol};

/// How many selection steps a pick may take before giving up on a group.
const MAX_SELECT_STEPS: usize = 256;

/// Concurrent streams one HTTP/2 connection to a peer carries before another is opened
/// (Pingora's default is 1: a connection per concurrent request).
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The address of a template peer; every use replaces it.
const TEMPLATE_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// The peer every connection of the group starts from: protocol (ALPN, or HTTP/2 with prior
/// knowledge on plain TCP), TLS (SNI, verification, roots) and the group's timeouts.
fn peer_template(spec: &GroupSpec) -> HttpPeer {
    let tls = spec.tls.as_ref();
    let sni = tls.map(|t| t.sni.to_string()).unwrap_or_default();
    let mut peer = HttpPeer::new(TEMPLATE_ADDRESS, tls.is_some(), sni);
    peer.group_key = connection_group(spec);
    let options = &mut peer.options;
    let timeouts = spec.timeouts;
    options.connection_timeout = Some(timeouts.connect);
    options.total_connection_timeout = Some(timeouts.connect);
    options.read_timeout = Some(timeouts.read);
    options.write_timeout = Some(timeouts.write);
    options.idle_timeout = Some(timeouts.idle);
    if let Some(tls) = tls {
        options.verify_cert = tls.verify;
        options.verify_hostname = tls.verify;
        options.ca = tls.ca.as_ref().map(|ca| Arc::clone(&ca.certs));
    }
    match spec.protocol {
        UpstreamProtocol::Http1 => options.set_http_version(1, 1),
        // HTTP/2 only: over TLS ALPN offers h2 alone; on plain TCP a minimum version of 2 is
        // what makes Pingora's connector speak h2c (connectors/http/v2.rs).
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => {
            options.set_http_version(2, 2);
            options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
    }
    peer
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

/// The live peers of one group: a load balancer with health state.
pub struct Pool {
    spec: GroupSpec,
    balancer: Balancer,
    peer: HttpPeer,
    /// Milliseconds since [`Pool::epoch`] when the next probe is due.
    next_probe_ms: AtomicU64,
    probing: AtomicBool,
    /// Probe rounds completed: the peers' health changes only when this moves.
    probe_rounds: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peers", &self.spec.peers)
            .finish()
    }
}

/// The key that keeps apart pooled connections Pingora would otherwise share: its reuse
/// hash covers the address, SNI and verification flags but neither the roots nor the ALPN,
/// so a connection verified against one group's CA (or a CA since replaced by a reload)
/// could serve a group that trusts another.
fn connection_group(spec: &GroupSpec) -> u64 {
    let ca = spec.tls.as_ref().and_then(|t| t.ca.as_ref());
    let mut input = Vec::with_capacity(64);
    input.extend_from_slice(spec.protocol.as_str().as_bytes());
    input.push(0);
    if let Some(ca) = ca {
        input.extend_from_slice(ca.path.to_string_lossy().as_bytes());
        input.push(0);
        input.extend_from_slice(&ca.content_hash.to_le_bytes());
    }
    xxh64(&input, 0)
}

impl Pool {
    /// Builds the load balancer for `spec`; every peer starts healthy. Its probes connect
    /// through `connectors`, which every group of the server shares (`probe.rs`).
    pub fn new(spec: GroupSpec, connectors: &Arc<Connectors>) -> std::io::Result<Pool> {
        let peer = peer_template(&spec);
        let hc = spec
            .health_check
            .as_ref()
            .map(|h| Box::new(Probe::new(h, &peer, Arc::clone(connectors))));
        let balancer = match spec.lb {
            LbPolicy::RoundRobin => {
                let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(spec.peers.iter().copied())?;
                if let Some(hc) = hc {
                    lb.set_health_check(hc);
                }
                Balancer::RoundRobin(lb)
            }
            LbPolicy::Consistent => {
                let mut lb = LoadBalancer::<Consistent>::try_from_iter(spec.peers.iter().copied())?;
                if let Some(hc) = hc {
                    lb.set_health_check(hc);
                }
                Balancer::Consistent(lb)
            }
        };
        Ok(Pool {
            spec,
            balancer,
            peer,
            next_probe_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            probe_rounds: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The configuration this pool was built from.
    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    /// The peer to connect to `addr` with: the group's template with that address (a copy
    /// of its SNI text and a reference to its roots; nothing else is built per request).
    pub fn peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let mut peer = Box::new(self.peer.clone());
        peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
        peer
    }

    /// A healthy peer not in `exclude`; `key` places the request for consistent hashing.
    /// A group of one peer (often a virtual address in front of many) has nothing to
    /// balance: its peer is asked for its health alone, without the selector's iterator.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        if let [only] = self.spec.peers[..] {
            return (!exclude.contains(&only) && self.is_healthy(only)).then_some(only);
        }
        let accept = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !exclude.contains(a))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// Whether `peer` is currently in rotation.
    pub fn is_healthy(&self, peer: SocketAddr) -> bool {
        let backend = Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(peer),
            weight: 1,
            ext: Default::default(),
        };
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().ready(&backend),
            Balancer::Consistent(lb) => lb.backends().ready(&backend),
        }
    }

    /// Whether at least one peer is in rotation.
    pub fn has_healthy_peer(&self) -> bool {
        self.spec.peers.iter().any(|p| self.is_healthy(*p))
    }

    /// Whether a probe is due and none is running (what [`Pool::probe_if_due`] checks again
    /// before it probes): the health checker spawns a probe only then.
    pub(super) fn probe_due(&self) -> bool {
        self.spec.health_check.is_some()
            && !self.probing.load(Ordering::Acquire)
            && self.epoch.elapsed().as_millis() as u64 >= self.next_probe_ms.load(Ordering::Relaxed)
    }

    /// Runs one probe of every peer if one is due and none is running.
    pub(super) async fn probe_if_due(&self) {
        let Some(hc) = &self.spec.health_check else {
            return;
        };
        let now = self.epoch.elapsed().as_millis() as u64;
        if now < self.next_probe_ms.load(Ordering::Relaxed)
            || self.probing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
            Balancer::Consistent(lb) => lb.backends().run_health_check(true).await,
        }
        let done = self.epoch.elapsed().as_millis() as u64;
        self.next_probe_ms
            .store(done + hc.interval.as_millis() as u64, Ordering::Relaxed);
        self.probe_rounds.fetch_add(1, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// How many probe rounds have completed: [`Pool::is_healthy`] can answer differently
    /// only after this moved (a pool without a health check never changes).
    pub(super) fn probe_rounds(&self) -> u64 {
        self.probe_rounds.load(Ordering::Acquire)
    }
}
