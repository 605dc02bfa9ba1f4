//! The background task that probes the peers of the groups serving now.
//!
//! Services cannot be added to a running Pingora server, so one task of graygate's own walks
//! whatever [`ServiceTable`] the current generation holds (asked of a [`TableSource`] at every
//! tick), starts the probes that are due, and exports each peer's health in place.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::ServiceTable;
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

impl HealthChecker {
    /// Probes the groups of whatever table `source` answers.
    pub fn new(source: TableSource, metrics: Arc<Metrics>) -> Self {
        HealthChecker {
            source,
            metrics,
            tick: Duration::from_millis(100),
        }
    }

    /// Sets `graygate_upstream_peer_healthy` in place for every peer of the current
    /// generation, then drops the series of peers it no longer has (never a reset: a scrape
    /// must not see the series vanish and come back).
    fn export_health(&self, table: &ServiceTable, exported: &mut HashSet<[String; 3]>) {
        let gauge = &self.metrics.peer_healthy;
        let mut current = HashSet::new();
        for service in &table.services {
            for group in service.groups() {
                for peer in &group.pool.spec().peers {
                    let labels = [
                        service.name.to_string(),
                        group.version_name.to_string(),
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
            let table = (self.source)();
            if exported.elapsed() >= Duration::from_secs(1) {
                self.export_health(&table, &mut exported_series);
                exported = Instant::now();
            }
            for pool in table.pools() {
                if pool.spec().health_check.is_some() {
                    // A slow peer must not hold back the other groups' probes.
                    tokio::spawn(async move { pool.probe_if_due().await });
                }
            }
        }
    }
}
