//! The background task that probes the peers of the groups serving now.
//!
//! Services cannot be added to a running Pingora server, so one task of graygate's own walks
//! whatever [`ServiceTable`] the current generation holds (asked of a [`TableSource`] at every
//! tick), starts the probes that are due, and exports each peer's health in place: every
//! second, the peers of the pools probed since the last export (a table of 6,000 peers
//! whose probes are 10 s apart exports about 600 a second, not 6,000). A peer without a
//! health check is healthy for its table's lifetime: its gauge is set once, when the table
//! is resolved, and the export never reads its pool again (6,000 cold cache lines a second
//! for 2,000 tenant services without probes).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use prometheus::IntGauge;

use super::{Pool, ServiceTable};
use crate::metrics::Metrics;

/// Where the health checker finds the services serving now (the state layer's current
/// snapshot, in the server).
pub type TableSource = Box<dyn Fn() -> Arc<ServiceTable> + Send + Sync>;

/// The background task that probes the peers of the current generation's groups.
pub struct HealthChecker {
    source: TableSource,
    metrics: Arc<Metrics>,
    tick: Duration,
}

/// The health series of one generation: each peer's gauge, resolved once per table so that
/// the export every second is a store per peer probed since, not a label lookup.
struct Exported {
    /// The table they were resolved for.
    table: Arc<ServiceTable>,
    /// The peers of pools with a health check (the others' gauges are set at resolve).
    gauges: Vec<PeerGauge>,
    /// Their label values, to drop the series of peers a later table no longer has.
    labels: HashSet<[String; 3]>,
}

/// One peer's health gauge, and the probe round of its pool it last showed.
struct PeerGauge {
    gauge: IntGauge,
    pool: Arc<Pool>,
    peer: SocketAddr,
    /// `None` before the first export.
    shown: Option<u64>,
}

impl HealthChecker {
    /// Probes the groups of whatever table `source` answers.
    pub fn new(source: TableSource, metrics: Arc<Metrics>) -> Self {
        HealthChecker {
            source,
            metrics,
            tick: Duration::from_millis(100),
        }
    }

    /// Resolves the gauges of `table`'s peers, and drops the series of the peers the table
    /// before (`previous`) had and this one has not (never a reset: a scrape must not see a
    /// series vanish and come back).
    fn resolve(&self, table: Arc<ServiceTable>, previous: Option<Exported>) -> Exported {
        let gauge = &self.metrics.peer_healthy;
        let mut gauges = Vec::new();
        let mut labels = HashSet::new();
        for service in &table.services {
            for group in service.groups() {
                for peer in &group.pool.spec().peers {
                    let values = [
                        service.name.to_string(),
                        group.version_name.to_string(),
                        peer.to_string(),
                    ];
                    if !labels.insert(values.clone()) {
                        continue;
                    }
                    let peer_gauge = gauge.with_label_values(&values);
                    if group.pool.spec().health_check.is_none() {
                        peer_gauge.set(group.pool.is_healthy(*peer) as i64);
                        continue;
                    }
                    gauges.push(PeerGauge {
                        gauge: peer_gauge,
                        pool: Arc::clone(&group.pool),
                        peer: *peer,
                        shown: None,
                    });
                }
            }
        }
        if let Some(previous) = previous {
            for gone in previous.labels.difference(&labels) {
                let _ = gauge.remove_label_values(&[&gone[0], &gone[1], &gone[2]]);
            }
        }
        Exported {
            table,
            gauges,
            labels,
        }
    }

    /// Sets `graygate_upstream_peer_healthy` in place for every peer of `table`'s generation
    /// whose pool was probed since it was last set (every peer, for a new generation: a
    /// reused pool's gauge may have been another generation's).
    fn export_health(&self, table: &Arc<ServiceTable>, exported: &mut Option<Exported>) {
        let mut current = match exported.take() {
            Some(e) if Arc::ptr_eq(&e.table, table) => e,
            previous => self.resolve(Arc::clone(table), previous),
        };
        for peer in &mut current.gauges {
            // Read before the health: a probe finishing in between is shown next time.
            let round = peer.pool.probe_rounds();
            if peer.shown != Some(round) {
                peer.gauge.set(peer.pool.is_healthy(peer.peer) as i64);
                peer.shown = Some(round);
            }
        }
        *exported = Some(current);
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.tick);
        let mut exported_at = Instant::now() - Duration::from_secs(1);
        let mut exported = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            let table = (self.source)();
            if exported_at.elapsed() >= Duration::from_secs(1) {
                self.export_health(&table, &mut exported);
                exported_at = Instant::now();
            }
            for pool in table.probed_pools() {
                if pool.probe_due() {
                    // A slow peer must not hold back the other groups' probes.
                    let pool = Arc::clone(pool);
                    tokio::spawn(async move { pool.probe_if_due().await });
                }
            }
        }
    }
}
