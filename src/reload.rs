//! Hot reload of the rules: a file watch (debounced), `SIGHUP`, and `POST /-/reload`.
//!
//! Every trigger ends in [`Reloader::reload`] on the one reload thread, in the idle
//! scheduling class: read, compare with the serving generation's files, validate, compile,
//! swap atomically (see [`SnapshotStore::reload`]). Requests in flight keep the generation
//! they loaded in `new_ctx`; an invalid rule set leaves the last good one serving, logs every
//! error with file and line, and counts `graygate_rules_reload_total{result="error"}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::diagnostics::Diagnostics;
use crate::edge::tls::{CertificateError, CertificatesReloaded, TlsEndpoint};
use crate::metrics::Metrics;
use crate::state::{Reloaded, SnapshotStore};

/// Quiet time after the last file event before a reload: editors write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A burst of events never delays a reload by more than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// What one reload did.
#[derive(Debug)]
pub struct ReloadReport {
    /// The rules' outcome: a failure leaves the last good generation serving.
    pub rules: Result<Reloaded, Diagnostics>,
    /// Each TLS listener's certificates, in the config's order.
    pub certificates: Vec<CertificatesReport>,
}

/// What a reload did to one TLS listener's certificates.
#[derive(Debug)]
pub struct CertificatesReport {
    /// The listener.
    pub listener: Arc<str>,
    /// Swapped or unchanged, or every problem (the old pairs keep serving).
    pub outcome: Result<CertificatesReloaded, Vec<CertificateError>>,
}

/// Reloads the rules and the listeners' certificates, and records the outcome.
pub struct Reloader {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    certificates: Vec<Arc<TlsEndpoint>>,
    /// Where every reload runs, one after another.
    thread: IdleThread,
}

impl Reloader {
    /// A reloader of `store`'s rules.
    pub fn new(store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Self {
        Reloader {
            store,
            metrics,
            certificates: Vec::new(),
            thread: IdleThread::new("graygate-reload"),
        }
    }

    /// Also reloads these TLS listeners' certificates on every trigger.
    pub fn with_certificates(mut self, certificates: Vec<Arc<TlsEndpoint>>) -> Self {
        self.certificates = certificates;
        self
    }

    /// [`Reloader::reload`] on the reload thread, a thread in the idle scheduling class
    /// (see [`lower_priority`]) that runs reloads one after another; `done` gets the report
    /// there. Compiling reads files and may resolve peer names, so it stays off the async
    /// workers; and compiling 10,000 rules keeps a core busy for a few hundred milliseconds,
    /// which on a core it shares with a request worker must not delay requests. One thread
    /// for every reload, not one each: its stack and its allocator's pages are reused, where
    /// a new thread's are mapped and unmapped, page-table work that here delayed the wakeup
    /// of the worker on its core (docs/performance.md).
    pub fn spawn(
        self: Arc<Self>,
        trigger: &'static str,
        done: impl FnOnce(ReloadReport) + Send + 'static,
    ) -> std::io::Result<()> {
        let reloader = Arc::clone(&self);
        self.thread
            .run(Box::new(move || done(reloader.reload(trigger))))
    }

    /// [`Reloader::spawn`], awaited; `None` when the thread could not start or ended
    /// without a report (a panic).
    pub async fn reload_in_thread(self: Arc<Self>, trigger: &'static str) -> Option<ReloadReport> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(e) = self.spawn(trigger, move |report| {
            let _ = tx.send(report);
        }) {
            log::error!("{trigger}: no reload: {e}");
            return None;
        }
        rx.await.ok()
    }

    /// Reloads the rules and then the certificates now; `trigger` names the cause in the
    /// log. The result is the rules'; certificate problems are logged and counted (the old
    /// pairs keep serving).
    pub fn reload(&self, trigger: &str) -> ReloadReport {
        ReloadReport {
            rules: self.reload_rules(trigger),
            certificates: self.reload_certificates(trigger),
        }
    }

    /// Re-reads every TLS listener's pairs; a listener whose new pairs are not all good
    /// keeps its old ones.
    fn reload_certificates(&self, trigger: &str) -> Vec<CertificatesReport> {
        let mut reports = Vec::with_capacity(self.certificates.len());
        for endpoint in &self.certificates {
            let outcome = endpoint.reload();
            match &outcome {
                Ok(outcome) => {
                    self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    if *outcome == CertificatesReloaded::Swapped {
                        endpoint.record_expiry(&self.metrics);
                        log::info!(
                            "listener {}: certificates reloaded ({trigger})",
                            endpoint.listener()
                        );
                        for (file, message) in endpoint.expiry_warnings() {
                            log::warn!("{}: {message}", file.display());
                        }
                    }
                }
                Err(problems) => {
                    self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                    for problem in problems {
                        log::error!(
                            "listener {}: certificate reload ({trigger}) rejected: {problem}; the old pairs keep serving",
                            endpoint.listener()
                        );
                    }
                }
            }
            reports.push(CertificatesReport {
                listener: Arc::clone(endpoint.listener()),
                outcome,
            });
        }
        reports
    }

    /// The certificate and key files of every TLS listener (watched for changes).
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        self.certificates.iter().flat_map(|e| e.files()).collect()
    }

    fn reload_rules(&self, trigger: &str) -> Result<Reloaded, Diagnostics> {
        match self.store.reload() {
            Ok(reloaded) => {
                self.metrics.rules_reloads.with_label_values(&["ok"]).inc();
                let snapshot = reloaded.snapshot();
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

/// What the file watch looks at.
struct WatchedPaths {
    /// Every event in it counts: Kubernetes ConfigMaps swap a `..data` link, editors rename
    /// temporary files. Unchanged content is detected by the reload.
    rules_dir: PathBuf,
    /// Only these files (and Kubernetes' `..data` swaps) count in their directories, which
    /// may hold other busy files (logs).
    certificate_files: Vec<PathBuf>,
}

impl WatchedPaths {
    /// The directories to watch, each once.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.rules_dir.clone()];
        for file in &self.certificate_files {
            let dir = watched_dir(file);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Whether an event on `path` may change what is loaded.
    fn concerns(&self, path: &Path) -> bool {
        let in_rules_dir = path.parent().is_some_and(|dir| {
            dir == self.rules_dir
                || (dir.as_os_str().is_empty() && self.rules_dir == Path::new("."))
        });
        in_rules_dir
            || self.certificate_files.iter().any(|f| f == path)
            || path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(".."))
    }
}

/// A job for an [`IdleThread`].
type Job = Box<dyn FnOnce() + Send>;

/// A thread in the idle scheduling class ([`lower_priority`]) that runs jobs one after
/// another, started with the first. A job that panics is logged and the next one runs. It
/// ends when its owner is dropped and the queued jobs have run.
struct IdleThread {
    name: &'static str,
    /// The queue of the running thread, if one was started and has not ended.
    jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
}

impl IdleThread {
    fn new(name: &'static str) -> Self {
        IdleThread {
            name,
            jobs: std::sync::Mutex::default(),
        }
    }

    /// Queues `job`, starting the thread if none runs.
    fn run(&self, job: Job) -> std::io::Result<()> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let job = match jobs.as_ref() {
            Some(queue) => match queue.send(job) {
                Ok(()) => return Ok(()),
                // The thread is gone: the job comes back for a new one.
                Err(std::sync::mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (queue, queued) = std::sync::mpsc::channel::<Job>();
        let name = self.name;
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                lower_priority();
                for job in queued {
                    // What a job locks recovers from a poisoned lock (as reloads do).
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        log::error!("a job of thread {name} panicked; the next one runs");
                    }
                }
            })?;
        // The new thread holds the receiver until this sender and its clones are gone.
        let _ = queue.send(job);
        *jobs = Some(queue);
        Ok(())
    }
}

/// How far below the process's CPU priority a reload thread runs where it cannot be put in
/// the idle class (a nice increment, capped at 19).
pub const RELOAD_NICENESS: i32 = 10;

/// Puts the calling thread in Linux's `SCHED_IDLE` class or, where that is refused, lowers
/// its nice value by [`RELOAD_NICENESS`]; a failure of both leaves it as it was.
///
/// A nice value alone is not enough: a request worker waking on a core where the reload
/// thread ran waited for the end of its time slice (a few milliseconds under EEVDF), and
/// p99 at 5,000 requests/s rose by 2 to 3 ms while 10,000 rules compiled
/// (docs/performance.md). A `SCHED_IDLE` thread is preempted as soon as a thread of the
/// normal class wakes on its core, and runs on the time nobody else wants.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
            NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        // Once the class is set, the call also sets the nice value to 0: the idle class
        // ignores it.
        let set = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        );
        if thread_schedule_policy().ok() == Some(idle) {
            return;
        }
        log::debug!("the reload thread stays in the normal class ({set:?}): a lower nice value");
        let tid = rustix::thread::gettid();
        if let Ok(nice) = rustix::process::getpriority_process(Some(tid)) {
            let lower = (nice + RELOAD_NICENESS).min(19);
            if let Err(e) = rustix::process::setpriority_process(Some(tid), lower) {
                log::debug!("the reload thread keeps its priority: {e}");
            }
        }
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
        if let Err(e) = Arc::clone(&self.reloader).spawn(trigger, |_| {}) {
            log::error!("{trigger}: no reload: {e}");
        }
    }
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, events) = mpsc::unbounded_channel::<()>();
        let watched = WatchedPaths {
            rules_dir: watched_dir(self.reloader.store().rules_path()),
            certificate_files: self.reloader.certificate_files(),
        };
        let dirs = watched.dirs();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event
                .is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| watched.concerns(p)))
            {
                let _ = tx.send(());
            }
        })
        .map(|mut w| {
            for dir in &dirs {
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    log::error!(
                        "cannot watch {} for changes ({e}); SIGHUP and POST /-/reload still work",
                        dir.display()
                    );
                }
            }
            w
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                log::error!(
                    "cannot watch files for changes ({e}); SIGHUP and POST /-/reload still work"
                );
                None
            }
        };
        let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signal) => {
                let (tx, rx) = mpsc::unbounded_channel::<()>();
                tokio::spawn(async move {
                    while signal.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                });
                Some(rx)
            }
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        run_triggers(events, hangups, &mut shutdown, |trigger| {
            self.reload_in_background(trigger)
        })
        .await;
    }
}

/// The trigger loop: a `SIGHUP` reloads at once, whatever the file watch is doing; file
/// events are debounced (a reload [`DEBOUNCE`] after the last event of a burst, and never
/// later than [`MAX_DEBOUNCE`] after its first). A `SIGHUP` during a burst also covers the
/// files changed so far, so the burst's pending reload is dropped.
async fn run_triggers(
    mut events: mpsc::UnboundedReceiver<()>,
    mut hangups: Option<mpsc::UnboundedReceiver<()>>,
    shutdown: &mut ShutdownWatch,
    mut reload: impl FnMut(&'static str),
) {
    use tokio::time::{sleep_until, Instant};
    // (quiet deadline, latest deadline) of the burst of file events being debounced.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let due = pending.map(|(quiet, latest)| quiet.min(latest));
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                pending = None;
                reload("SIGHUP");
            }
            Some(()) = events.recv() => {
                let now = Instant::now();
                let latest = pending.map_or(now + MAX_DEBOUNCE, |(_, latest)| latest);
                pending = Some((now + DEBOUNCE, latest));
            }
            _ = async {
                match due {
                    Some(due) => sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {
                pending = None;
                reload("file change");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reload thread is in the idle class; the thread that started it is not.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_reload_thread_runs_in_the_idle_class() {
        use thread_priority::unix::{
            thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let policy = std::thread::spawn(|| {
            lower_priority();
            thread_schedule_policy().expect("own policy")
        })
        .join()
        .expect("the thread ends");
        assert_eq!(policy, idle);
        assert_ne!(thread_schedule_policy().expect("own policy"), idle);
    }

    /// Jobs run one after another on one thread, not the caller's, and in the idle class;
    /// a job that panics does not stop the ones after it.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_idle_thread_runs_jobs_in_order_and_outlives_a_panic() {
        use thread_priority::unix::{
            thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let thread = IdleThread::new("test-idle");
        let (tx, rx) = std::sync::mpsc::channel();
        for n in 0..4 {
            let tx = tx.clone();
            thread
                .run(Box::new(move || {
                    if n == 2 {
                        panic!("a job that panics (expected in this test)");
                    }
                    let policy = thread_schedule_policy().expect("own policy");
                    tx.send((n, std::thread::current().id(), policy)).unwrap();
                }))
                .unwrap();
        }
        let ran: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a job ran"))
            .collect();
        assert_eq!(ran.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 3]);
        assert!(ran.iter().all(|r| r.1 == ran[0].1), "one thread: {ran:?}");
        assert_ne!(ran[0].1, std::thread::current().id());
        assert!(ran.iter().all(|r| r.2 == idle), "{ran:?}");
    }

    #[test]
    fn certificate_directories_count_only_their_files() {
        let watched = WatchedPaths {
            rules_dir: PathBuf::from("/etc/graygate/rules"),
            certificate_files: vec![
                PathBuf::from("/etc/graygate/tls/site.crt"),
                PathBuf::from("/etc/graygate/tls/site.key"),
            ],
        };
        assert_eq!(
            watched.dirs(),
            [
                PathBuf::from("/etc/graygate/rules"),
                PathBuf::from("/etc/graygate/tls")
            ]
        );
        assert!(watched.concerns(Path::new("/etc/graygate/rules/.web.yaml.swp")));
        assert!(watched.concerns(Path::new("/etc/graygate/tls/site.key")));
        assert!(watched.concerns(Path::new("/etc/graygate/tls/..data")));
        assert!(!watched.concerns(Path::new("/etc/graygate/tls/graygate.log")));
    }
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Drives the trigger loop on paused time: `script` sends events and hangups and says
    /// when; the reloads are returned with the time they happened at.
    async fn reloads_after(
        script: impl FnOnce(
            mpsc::UnboundedSender<()>,
            mpsc::UnboundedSender<()>,
        ) -> tokio::task::JoinHandle<()>,
    ) -> Vec<(&'static str, Duration)> {
        let (event_tx, events) = mpsc::unbounded_channel();
        let (hangup_tx, hangups) = mpsc::unbounded_channel();
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let driver = script(event_tx, hangup_tx);
        let lp = tokio::spawn(async move {
            run_triggers(events, Some(hangups), &mut stop, |trigger| {
                record.lock().unwrap().push((trigger, start.elapsed()));
            })
            .await
        });
        driver.await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop_tx.send(true).unwrap();
        lp.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_hangup_during_a_burst_reloads_at_once() {
        let reloads = reloads_after(|events, hangups| {
            tokio::spawn(async move {
                // A burst of file events every 50 ms for 1.5 s, with a SIGHUP at 300 ms.
                for i in 0..30 {
                    events.send(()).unwrap();
                    if i == 6 {
                        hangups.send(()).unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .await;
        let (first, at) = reloads[0];
        assert_eq!(first, "SIGHUP");
        assert!(at < Duration::from_millis(350), "SIGHUP reloaded at {at:?}");
        // The events after the SIGHUP form a new burst: reloaded at most 2 s after its start
        // (350 ms), or 200 ms after its end (1.5 s).
        assert_eq!(reloads.len(), 2, "{reloads:?}");
        let (second, at) = reloads[1];
        assert_eq!(second, "file change");
        assert!(
            at >= Duration::from_millis(1_650) && at <= Duration::from_millis(1_800),
            "{at:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_burst_reloads_within_the_max_debounce() {
        let reloads = reloads_after(|events, _hangups| {
            tokio::spawn(async move {
                for _ in 0..60 {
                    events.send(()).unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .await;
        // 6 s of events every 100 ms: a reload every 2 s, then one 200 ms after the end.
        let times: Vec<u128> = reloads.iter().map(|(_, at)| at.as_millis()).collect();
        assert_eq!(times.len(), 3, "{times:?}");
        assert!(times[0] >= 2_000 && times[0] < 2_100, "{times:?}");
        assert!(times[1] >= 4_000 && times[1] < 4_200, "{times:?}");
        assert!(times[2] >= 6_000 && times[2] < 6_300, "{times:?}");
    }
}
