//! Hot reload of the rules: a file watch (debounced), `SIGHUP`, and `POST /-/reload`.
//!
//! Every trigger ends in [`Reloader::reload`]: load, validate, compile, swap atomically
//! (see [`SnapshotStore::reload`]). Requests in flight keep the generation they loaded in
//! `new_ctx`; an invalid rule set leaves the last good one serving, logs every error with
//! file and line, and counts `graygate_rules_reload_total{result="error"}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::diagnostics::Diagnostics;
use crate::metrics::Metrics;
use crate::snapshot::{Reloaded, SnapshotStore};

/// Quiet time after the last file event before a reload: editors write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A burst of events never delays a reload by more than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// Reloads the rules and records the outcome.
pub struct Reloader {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// A reloader of `store`'s rules.
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Self {
        Reloader { store, metrics }
    }

    /// Reloads now; `trigger` names the cause in the log.
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, Diagnostics> {
        match self.store.reload() {
            Ok(reloaded) => {
                self.metrics.rules_reloads.with_label_values(&["ok"]).inc();
                let snapshot = reloaded.snapshot();
                if let Reloaded::Swapped(snapshot) = &reloaded {
                    self.metrics.prepare(snapshot);
                }
                match &reloaded {
                    Reloaded::Swapped(snapshot) => log::info!(
                        "rules reloaded ({trigger}): generation {} with {} rule(s)",
                        snapshot.generation,
                        snapshot.rules.rules.len()
                    ),
                    Reloaded::Unchanged(_) => log::info!(
                        "rules reload ({trigger}): files unchanged, generation {} keeps serving",
                        snapshot.generation
                    ),
                }
                Ok(reloaded)
            }
            Err(diags) => {
                self.metrics
                    .rules_reloads
                    .with_label_values(&["error"])
                    .inc();
                for d in diags.items() {
                    log::error!("rules reload ({trigger}) rejected: {d}");
                }
                log::error!(
                    "rules reload ({trigger}) rejected with {} error(s); generation {} keeps serving",
                    diags.errors().count(),
                    self.store.current().generation
                );
                Err(diags)
            }
        }
    }

    /// The store reloaded.
    pub fn store(&self) -> &Arc<SnapshotStore> {
        &self.store
    }
}

/// The directory to watch for a rules file or directory.
fn watched_dir(rules: &Path) -> PathBuf {
    if rules.is_dir() {
        rules.to_path_buf()
    } else {
        rules
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }
}

/// The background task behind the file watch and `SIGHUP`.
pub struct ReloadTriggers {
    reloader: Arc<Reloader>,
}

impl ReloadTriggers {
    /// Triggers for `reloader`.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        ReloadTriggers { reloader }
    }

    fn reload_in_background(&self, trigger: &'static str) {
        let reloader = Arc::clone(&self.reloader);
        // Compiling reads files and may resolve peer names: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let _ = reloader.reload(trigger);
        });
    }
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut events) = mpsc::unbounded_channel::<()>();
        let dir = watched_dir(self.reloader.store().rules_path());
        // Every event in the directory counts: Kubernetes ConfigMaps swap a `..data` link,
        // editors rename temporary files. Unchanged content is detected by the reload.
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                log::error!(
                    "cannot watch {} for rule changes ({e}); SIGHUP and POST /-/reload still work",
                    dir.display()
                );
                None
            }
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reload_in_background("SIGHUP");
                }
                Some(()) = events.recv() => {
                    let deadline = tokio::time::Instant::now() + MAX_DEBOUNCE;
                    loop {
                        tokio::select! {
                            more = events.recv() => if more.is_none() { break },
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            _ = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                    self.reload_in_background("file change");
                }
            }
        }
    }
}
