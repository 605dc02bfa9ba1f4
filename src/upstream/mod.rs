//! Upstream groups: services by host and path, one group of peers per version, health.
//!
//! A [`ServiceTable`] is built from the compiled [`ServiceSpec`]s of one rules generation.
//! Each version's group wraps a [`Pool`]: a Pingora `LoadBalancer` with its health state.
//! Pools are keyed by their [`GroupSpec`], so a reload that leaves a group's peers and
//! settings alone hands the very same pool (health state, round-robin position) to the new
//! generation. Health probes run in one background task ([`HealthChecker`]) over whatever
//! pools the current snapshot holds; Pingora logs each peer's change of health.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::rules::model::{
    HealthCheckKind, HealthCheckSpec, HostPattern, LbPolicy, ServiceSpec, VersionId,
};
use crate::snapshot::SnapshotStore;

/// How many selection steps a pick may take before giving up on a group.
const MAX_SELECT_STEPS: usize = 256;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

/// The live peers of one group: a load balancer with health state.
pub struct Pool {
    spec: crate::rules::model::GroupSpec,
    balancer: Balancer,
    /// Milliseconds since [`Pool::epoch`] when the next probe is due.
    next_probe_ms: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peers", &self.spec.peers)
            .finish()
    }
}

fn health_check(spec: &HealthCheckSpec) -> Box<dyn HealthCheck + Send + Sync> {
    match &spec.kind {
        HealthCheckKind::Tcp => {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = Some(spec.timeout);
            hc.peer_template.options.total_connection_timeout = Some(spec.timeout);
            hc.consecutive_success = spec.rise;
            hc.consecutive_failure = spec.fall;
            hc
        }
        HealthCheckKind::Http { path, host } => {
            let mut hc = HttpHealthCheck::new(host, false);
            // Compile validated the path (it starts with '/'); a request line that still
            // fails to build leaves Pingora's default `GET /`.
            if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                if req.insert_header("Host", host.as_str()).is_ok() {
                    hc.req = req;
                }
            }
            let options = &mut hc.peer_template.options;
            options.connection_timeout = Some(spec.timeout);
            options.total_connection_timeout = Some(spec.timeout);
            options.read_timeout = Some(spec.timeout);
            options.write_timeout = Some(spec.timeout);
            hc.consecutive_success = spec.rise;
            hc.consecutive_failure = spec.fall;
            hc.validator = Some(Box::new(|resp: &ResponseHeader| {
                let status = resp.status.as_u16();
                if (200..400).contains(&status) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("unhealthy status", status),
                        "during http health check",
                    )
                }
            }));
            Box::new(hc)
        }
    }
}

impl Pool {
    /// Builds the load balancer for `spec`; every peer starts healthy.
    pub fn new(spec: crate::rules::model::GroupSpec) -> std::io::Result<Pool> {
        let hc = spec.health_check.as_ref().map(health_check);
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
            next_probe_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    /// The configuration this pool was built from.
    pub fn spec(&self) -> &crate::rules::model::GroupSpec {
        &self.spec
    }

    /// A healthy peer not in `exclude`; `key` places the request for consistent hashing.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
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

    /// Runs one probe of every peer if one is due and none is running.
    async fn probe_if_due(&self) {
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
        self.probing.store(false, Ordering::Release);
    }
}

/// One version's group inside a service.
#[derive(Debug, Clone)]
pub struct Group {
    /// The version it serves.
    pub version: VersionId,
    /// Its live peers.
    pub pool: Arc<Pool>,
    /// What the address API hands out.
    pub public_addresses: Arc<[String]>,
}

/// A service: hosts, a path prefix and a group per version.
#[derive(Debug)]
pub struct Service {
    /// Its name.
    pub name: Arc<str>,
    /// Hosts it serves.
    pub hosts: Vec<HostPattern>,
    /// Its path prefix.
    pub path_prefix: Box<str>,
    groups: Vec<Option<Group>>,
}

impl Service {
    /// The group of `version`, if the service has one.
    pub fn group(&self, version: VersionId) -> Option<&Group> {
        self.groups.get(version.index()).and_then(Option::as_ref)
    }

    /// Every group.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().flatten()
    }
}

/// An index of [`ServiceTable::services`].
pub type ServiceId = usize;

/// Every service, and the order they are matched in.
#[derive(Debug, Default)]
pub struct ServiceTable {
    /// The services, in the order written.
    pub services: Vec<Service>,
    /// (host, prefix, service): longest prefix first, then the most specific host.
    routes: Vec<(HostPattern, Box<str>, ServiceId)>,
}

impl ServiceTable {
    /// Builds live services, reusing the pools of `previous` whose spec is unchanged.
    pub fn build(
        specs: &[ServiceSpec],
        previous: Option<&ServiceTable>,
    ) -> std::io::Result<ServiceTable> {
        let mut reusable: HashMap<&crate::rules::model::GroupSpec, &Arc<Pool>> = HashMap::new();
        for service in previous.map(|p| &p.services[..]).unwrap_or_default() {
            for group in service.groups() {
                reusable.insert(group.pool.spec(), &group.pool);
            }
        }
        let mut built: HashMap<crate::rules::model::GroupSpec, Arc<Pool>> = HashMap::new();
        let mut services = Vec::with_capacity(specs.len());
        let mut routes = Vec::new();
        for (id, spec) in specs.iter().enumerate() {
            let mut groups: Vec<Option<Group>> = Vec::new();
            for group in &spec.groups {
                let pool = match reusable
                    .get(&group.spec)
                    .or(built.get(&group.spec).as_ref())
                {
                    Some(pool) => Arc::clone(pool),
                    None => {
                        let pool = Arc::new(Pool::new(group.spec.clone())?);
                        built.insert(group.spec.clone(), Arc::clone(&pool));
                        pool
                    }
                };
                let index = group.version.index();
                if groups.len() <= index {
                    groups.resize(index + 1, None);
                }
                groups[index] = Some(Group {
                    version: group.version,
                    pool,
                    public_addresses: group.public_addresses.clone().into(),
                });
            }
            for host in &spec.hosts {
                routes.push((host.clone(), spec.path_prefix.clone(), id));
            }
            services.push(Service {
                name: Arc::clone(&spec.name),
                hosts: spec.hosts.clone(),
                path_prefix: spec.path_prefix.clone(),
                groups,
            });
        }
        routes.sort_by(|a, b| {
            b.1.len()
                .cmp(&a.1.len())
                .then(b.0.specificity().cmp(&a.0.specificity()))
        });
        Ok(ServiceTable { services, routes })
    }

    /// The service for a host (without port) and path: among the services whose hosts
    /// match, the longest path prefix wins; on a tie, the most specific host.
    pub fn find(&self, host: &str, path: &str) -> Option<ServiceId> {
        self.routes
            .iter()
            .find(|(pattern, prefix, _)| path.starts_with(&**prefix) && pattern.matches(host))
            .map(|(_, _, id)| *id)
    }

    /// Every distinct pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        for group in self.services.iter().flat_map(Service::groups) {
            if !pools.iter().any(|p| Arc::ptr_eq(p, &group.pool)) {
                pools.push(Arc::clone(&group.pool));
            }
        }
        pools
    }
}

/// The background task that probes the peers of the current snapshot's groups.
pub struct HealthChecker {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    tick: Duration,
}

impl HealthChecker {
    /// Probes the groups of whatever generation `store` holds.
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Self {
        HealthChecker {
            store,
            metrics,
            tick: Duration::from_millis(100),
        }
    }

    /// Sets `graygate_upstream_peer_healthy` in place for every peer of the current
    /// generation, then drops the series of peers it no longer has (never a reset: a scrape
    /// must not see the series vanish and come back).
    fn export_health(
        &self,
        snapshot: &crate::snapshot::Snapshot,
        exported: &mut HashSet<[String; 3]>,
    ) {
        let gauge = &self.metrics.peer_healthy;
        let mut current = HashSet::new();
        for service in &snapshot.services.services {
            for group in service.groups() {
                let version = &snapshot.rules.version(group.version).name;
                for peer in &group.pool.spec().peers {
                    let labels = [
                        service.name.to_string(),
                        version.to_string(),
                        peer.to_string(),
                    ];
                    let healthy = group.pool.is_healthy(*peer) as i64;
                    gauge.with_label_values(&labels).set(healthy);
                    current.insert(labels);
                }
            }
        }
        for gone in exported.difference(&current) {
            let _ = gauge.remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
        }
        *exported = current;
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.tick);
        let mut exported = Instant::now() - Duration::from_secs(1);
        let mut exported_series = HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            let snapshot = self.store.current();
            if exported.elapsed() >= Duration::from_secs(1) {
                self.export_health(&snapshot, &mut exported_series);
                exported = Instant::now();
            }
            for pool in snapshot.services.pools() {
                if pool.spec().health_check.is_some() {
                    // A slow peer must not hold back the other groups' probes.
                    tokio::spawn(async move { pool.probe_if_due().await });
                }
            }
        }
    }
}
