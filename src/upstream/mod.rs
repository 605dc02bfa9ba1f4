//! Upstream groups: services by host and path, one group of peers per version, and the one
//! answer to "which group serves this request".
//!
//! A [`ServiceTable`] is built from the compiled [`ServiceSpec`]s of one rules generation.
//! Each version's group wraps a [`Pool`] (`pool.rs`): a Pingora `LoadBalancer` with its health
//! state. Pools are keyed by their [`GroupSpec`], so a reload that leaves a group's peers and
//! settings alone hands the very same pool (health state, round-robin position) to the new
//! generation. Health probes run in one background task ([`HealthChecker`], `health.rs`).
//!
//! [`Service::serving_group`] is the serving policy: the decided version's group when it has a
//! usable peer, else the fallback version's group with a [`FallbackReason`]. The proxy, the
//! address API and `explain` all ask it, so they never disagree. `failure.rs` classifies
//! upstream errors (metric labels, the status sent to the client); `retry.rs` decides when a
//! request whose reused connection failed is sent again.

mod failure;
mod health;
mod pool;
mod probe;
pub mod retry;
mod routes;

pub use failure::{connect_error_kind, error_kind, error_status};
pub use health::{HealthChecker, TableSource};
pub use pool::Pool;
pub use probe::Connectors;
pub use routes::{Routes, ServiceId};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::facts::bucket::ip_text;
use crate::facts::VersionId;
use crate::rules::model::{GroupSpec, HostPattern, ServiceSpec, Version};

/// Why a request is served by another group than its decided version's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The service has no group for the decided version.
    NoGroup,
    /// The decided group has no healthy peer.
    Unhealthy,
    /// Connecting to the decided group failed on every healthy peer tried.
    Connect,
    /// The decided version is withdrawn (its rollout rolled back): its baseline serves.
    Withdrawn,
}

impl FallbackReason {
    /// The `reason` label of `graygate_fallbacks_total`, and the word in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::NoGroup => "no_group",
            FallbackReason::Unhealthy => "unhealthy",
            FallbackReason::Connect => "connect",
            FallbackReason::Withdrawn => "withdrawn",
        }
    }
}

/// The group that serves a request, the peer it would use, and why it is not the decided
/// version's group (when it is not).
#[derive(Debug, Clone, Copy)]
pub struct Serving<'a> {
    /// The serving group.
    pub group: &'a Group,
    /// A healthy peer of that group not yet failed for this request, chosen by the balance
    /// key; `None` when the group has none left (the proxy answers 503).
    pub peer: Option<SocketAddr>,
    /// Set when the group is not the decided version's.
    pub fallback: Option<FallbackReason>,
}

/// The consistent-hashing key of a request: XXH64 of the uid, else of the client address
/// in its standard text form, else 0.
pub fn balance_key(uid: Option<&str>, client_ip: Option<IpAddr>) -> [u8; 8] {
    match (uid, client_ip) {
        (Some(uid), _) => xxh64(uid.as_bytes(), 0),
        (None, Some(ip)) => xxh64(ip_text(ip, &mut [0u8; 48]), 0),
        (None, None) => 0,
    }
    .to_le_bytes()
}

/// One version's group inside a service.
#[derive(Debug, Clone)]
pub struct Group {
    /// The version it serves.
    pub version: VersionId,
    /// That version's name (a metric label).
    pub version_name: Arc<str>,
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
    /// Overrides `limits.max_body_size`.
    pub max_body_size: Option<u64>,
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

    /// Which group serves a request decided for `decided`, and with which peer.
    ///
    /// A withdrawn version (`withdrawn_to`: its rollout rolled back, the user not internal) is
    /// served by that baseline's group, with the reason `withdrawn`. Otherwise the decided
    /// version's group serves when it has a healthy peer not in `failed` (the
    /// peers that refused this request's connection). Otherwise `fallback` (the default
    /// version) serves, and the reason says why: the service has no group for the version
    /// (`no_group`), the group has no healthy peer (`unhealthy`), or every healthy peer was
    /// tried and refused (`connect`). When the decided version is the fallback version its
    /// group serves with no reason, with `peer: None` if nothing is left. `None` only for a
    /// service with neither group (compile rejects a service without the default's group).
    pub fn serving_group(
        &self,
        decided: VersionId,
        withdrawn_to: Option<VersionId>,
        fallback: VersionId,
        key: &[u8],
        failed: &[SocketAddr],
    ) -> Option<Serving<'_>> {
        let mut serving =
            self.healthy_group(withdrawn_to.unwrap_or(decided), fallback, key, failed)?;
        if withdrawn_to.is_some() && serving.fallback.is_none() {
            serving.fallback = Some(FallbackReason::Withdrawn);
        }
        Some(serving)
    }

    /// `decided`'s group if it can serve, else `fallback`'s, with the reason.
    fn healthy_group(
        &self,
        decided: VersionId,
        fallback: VersionId,
        key: &[u8],
        failed: &[SocketAddr],
    ) -> Option<Serving<'_>> {
        let reason = match self.group(decided) {
            Some(group) => {
                let peer = group.pool.select(key, failed);
                if peer.is_some() || decided == fallback {
                    return Some(Serving {
                        group,
                        peer,
                        fallback: None,
                    });
                }
                if failed.is_empty() || !group.pool.has_healthy_peer() {
                    FallbackReason::Unhealthy
                } else {
                    FallbackReason::Connect
                }
            }
            None => FallbackReason::NoGroup,
        };
        let group = self.group(fallback)?;
        Some(Serving {
            group,
            peer: group.pool.select(key, failed),
            fallback: Some(reason),
        })
    }
}

/// Every service, and the order they are matched in.
#[derive(Debug, Default)]
pub struct ServiceTable {
    /// The services, in the order written.
    pub services: Vec<Service>,
    /// Which service serves a host and path (`routes.rs`).
    routes: Routes,
    /// Every distinct pool, in the order first used.
    pools: Vec<Arc<Pool>>,
    /// The distinct pools that have a health check: what the health checker walks.
    probed: Vec<Arc<Pool>>,
    /// The probes' connectors, handed on from generation to generation.
    connectors: Arc<Connectors>,
}

impl ServiceTable {
    /// Builds live services, reusing the pools of `previous` whose spec is unchanged.
    /// `versions` names the groups' versions (the generation's version table).
    pub fn build(
        specs: &[ServiceSpec],
        versions: &[Version],
        previous: Option<&ServiceTable>,
    ) -> std::io::Result<ServiceTable> {
        let reusable: HashMap<&GroupSpec, &Arc<Pool>> = previous
            .map(|p| &p.pools[..])
            .unwrap_or_default()
            .iter()
            .map(|pool| (pool.spec(), pool))
            .collect();
        let connectors = previous
            .map(|p| Arc::clone(&p.connectors))
            .unwrap_or_default();
        // The pools of this generation, reused or new, by spec; `pools` in first-use order.
        let mut built: HashMap<GroupSpec, Arc<Pool>> = HashMap::new();
        let mut pools = Vec::new();
        let mut services = Vec::with_capacity(specs.len());
        let mut routes = Vec::new();
        for (id, spec) in specs.iter().enumerate() {
            let mut groups: Vec<Option<Group>> = Vec::new();
            for group in &spec.groups {
                let pool = match built.get(&group.spec) {
                    Some(pool) => Arc::clone(pool),
                    None => {
                        let pool = match reusable.get(&group.spec) {
                            Some(pool) => Arc::clone(pool),
                            None => Arc::new(Pool::new(group.spec.clone(), &connectors)?),
                        };
                        built.insert(group.spec.clone(), Arc::clone(&pool));
                        pools.push(Arc::clone(&pool));
                        pool
                    }
                };
                let index = group.version.index();
                if groups.len() <= index {
                    groups.resize(index + 1, None);
                }
                groups[index] = Some(Group {
                    version: group.version,
                    version_name: Arc::clone(&versions[index].name),
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
                max_body_size: spec.max_body_size,
                groups,
            });
        }
        let routes = Routes::new(routes).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::OutOfMemory, "too many service hosts")
        })?;
        let probed = pools
            .iter()
            .filter(|p| p.spec().health_check.is_some())
            .cloned()
            .collect();
        Ok(ServiceTable {
            services,
            routes,
            pools,
            probed,
            connectors,
        })
    }

    /// The service for a host (without port) and path: among the services whose hosts
    /// match, the longest path prefix wins; on a tie, the most specific host.
    /// A few hash lookups whatever the number of services (`routes.rs`).
    pub fn find(&self, host: &str, path: &str) -> Option<ServiceId> {
        self.routes.find(host, path)
    }

    /// Every distinct pool, in the order first used.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// The distinct pools that have a health check.
    pub fn probed_pools(&self) -> &[Arc<Pool>] {
        &self.probed
    }
}
