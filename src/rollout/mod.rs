//! Rollouts (SPEC section 12): weight steps moved by graygate itself, each step judged against
//! the baseline on graygate's own per-arm figures, a rollback that withdraws the version.
//!
//! ```text
//! proxy `logging` ─► the rollout rule's arm cells (stats, Scope::Rule)
//!                              │ every `interval`, per progressing rollout
//! RolloutTicker ─► Rollouts::tick ─► verdict::judge(version arm, baseline arm) ─► Record::check
//!                              │ a transition (or an operator's action through the admin API)
//!                              ├─► SnapshotStore::update_runtime (weights, withdrawn) ─► requests
//!                              ├─► metrics, one JSON line on target `graygate::rollout`
//!                              └─► state.dir/rollouts.json (atomic; retried while it fails)
//! ```
//!
//! - **One owner**: [`Rollouts`] holds every [`Record`] under one mutex, taken by the ticker
//!   (4 times a second) and by operators, never by a request: requests read the weights from the
//!   snapshot's runtime state, published after every change.
//! - **Reconciling with the rules**: on each tick (and before each action) the records follow
//!   the rules generation serving: a new rollout starts at step 1; one whose `version` or `steps`
//!   changed (its fingerprint) starts again; one edited otherwise keeps its step; one removed is
//!   dropped.
//! - **Surviving restarts**: the records are saved after every check and transition and at
//!   shutdown, with the time the current step has run, so a restart resumes the step where it
//!   was. An unreadable or foreign-format file is logged and every rollout starts paused at step
//!   1 (never at 100%). A write that fails is logged and retried on the next tick; serving goes on.
//! - **A fleet, when Redis is configured** (SPEC section 13, `crate::fleet`): one instance at a
//!   time judges, on the fleet's summed counts ([`ArmSource::Fleet`]), and its documents
//!   (checks, transitions) and every instance's operator actions are shared through Redis
//!   ([`Rollouts::take_share`]); the others take them up ([`Rollouts::adopt`]) and never judge.
//!   A document taken up is saved to the file but not shared again. Redis down: the file
//!   serves, and no check is made on partial figures.

pub mod machine;
pub mod persist;
pub mod verdict;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::rules::model::{Phase, Rollout, RuleSet};
use crate::state::SnapshotStore;
use crate::stats::{unix_ms, Clock, Figures, MonotonicClock, Scope};
use crate::throttle::LogThrottle;
use crate::web::Refused;
pub use machine::{Action, Event, Record};
pub use persist::REDIS_KEY;
use persist::{document, Loaded, StateDir};
use verdict::{judge, ArmFigures, CheckResult, Verdict};

/// The log target of transitions.
pub const LOG_TARGET: &str = "graygate::rollout";

/// How often the ticker looks for due checks (checks run every `interval`, at least 1 s).
pub const TICK: Duration = Duration::from_millis(250);

/// Where a check reads its arms' figures.
pub enum ArmSource<'a> {
    /// This instance's own stats.
    Local,
    /// The fleet's summed window (version, baseline), by rollout name: a rollout absent here
    /// is not checked this tick; an `Err` makes its check inconclusive, and says why.
    Fleet(&'a BTreeMap<String, Result<(Figures, Figures), String>>),
}

/// A check that is due: what the fleet must read for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCheck {
    /// The rollout.
    pub rollout: Arc<str>,
    /// Its fingerprint (the fleet's counts are kept per fingerprint).
    pub fingerprint: u64,
    /// The analysis window.
    pub window: Duration,
    /// The rollout's version.
    pub version: Arc<str>,
    /// Its baseline.
    pub baseline: Arc<str>,
    /// The goals its analysis bounds, in order.
    pub goals: Vec<Arc<str>>,
}

/// Every rollout's record, the clock that moves them, and where they are saved.
pub struct Rollouts {
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    dir: StateDir,
    /// Part of a fleet: this instance's own changes are shared ([`Rollouts::take_share`]).
    fleet: bool,
    inner: Mutex<Inner>,
    /// Held while the file is written, so two writes never interleave.
    writer: Mutex<()>,
}

struct Inner {
    records: BTreeMap<String, Record>,
    /// Records read at start, taken up as their rollouts are reconciled.
    stored: BTreeMap<String, machine::Stored>,
    /// The state file was unreadable at start: rollouts without a record start paused.
    start_paused: bool,
    /// The rules last reconciled with.
    rules: Option<Arc<RuleSet>>,
    /// The records changed since the last document was staged.
    dirty: bool,
    /// The newest document the file has not taken yet.
    file_pending: Option<String>,
    /// When the records held were last saved (or the file read was), Unix milliseconds.
    saved_at: u64,
    /// When the file read at start was saved (0: none), or the fleet's copy taken up was.
    loaded_at: u64,
    /// The newest document of this instance's own changes the fleet has not taken yet.
    share_pending: Option<String>,
    /// When the last document of this instance's own changes was saved (every transition
    /// and action is shared): reading it back from Redis is no news, and the fleet's copy is
    /// taken up only when newer than it and than the file read at start.
    shared_at: u64,
    save_errors: LogThrottle,
}

impl Rollouts {
    /// Reads the records saved in `state_dir`, reconciles them with the rules serving, and
    /// publishes where each rollout stands (call before serving); `fleet`: Redis is
    /// configured, and the fleet judges and shares (SPEC section 13).
    pub fn open(
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        state_dir: &std::path::Path,
        fleet: bool,
    ) -> Rollouts {
        Rollouts::with_clock(store, metrics, state_dir, fleet, Arc::new(MonotonicClock))
    }

    /// As [`Rollouts::open`] with another clock (a manual one in tests).
    pub fn with_clock(
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        state_dir: &std::path::Path,
        fleet: bool,
        clock: Arc<dyn Clock>,
    ) -> Rollouts {
        let dir = StateDir::new(state_dir);
        let (stored, saved_at, start_paused) = match dir.load() {
            Loaded::Missing => (BTreeMap::new(), 0, false),
            Loaded::Records(saved) => (saved.records, saved.at_unix_ms, false),
            Loaded::Unreadable(why) => {
                log::error!(
                    target: LOG_TARGET,
                    "rollout state unreadable ({why}): every rollout starts again paused at step 1"
                );
                (BTreeMap::new(), 0, true)
            }
        };
        let rollouts = Rollouts {
            store,
            metrics,
            clock,
            dir,
            fleet,
            writer: Mutex::new(()),
            inner: Mutex::new(Inner {
                records: BTreeMap::new(),
                stored,
                start_paused,
                rules: None,
                dirty: false,
                file_pending: None,
                saved_at,
                loaded_at: saved_at,
                share_pending: None,
                shared_at: 0,
                save_errors: LogThrottle::new(Duration::from_secs(30)),
            }),
        };
        let now = rollouts.clock.now();
        let mut inner = rollouts.lock();
        let rules = Arc::clone(&rollouts.store.current().rules);
        rollouts.reconcile(&mut inner, &rules, now);
        rollouts.publish(&inner, &rules);
        rollouts.stage(&mut inner, now, false);
        drop(inner);
        rollouts.write_file();
        rollouts
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the checks that are due on this instance's figures, makes their transitions,
    /// publishes and saves.
    pub fn tick(&self) {
        self.check_due(&ArmSource::Local);
        self.write_file();
    }

    /// The checks that are due now, for the fleet to read their figures.
    pub fn due(&self) -> Vec<DueCheck> {
        let now = self.clock.now();
        let rules = Arc::clone(&self.store.current().rules);
        let inner = self.lock();
        rules
            .rollouts
            .iter()
            .filter(|rollout| {
                inner.records.get(&*rollout.name).is_some_and(|record| {
                    record.phase == Phase::Progressing && now >= record.next_check
                })
            })
            .map(|rollout| DueCheck {
                rollout: Arc::clone(&rollout.name),
                fingerprint: rollout.fingerprint,
                window: rollout.analysis.window,
                version: Arc::clone(&rules.version(rollout.version).name),
                baseline: Arc::clone(&rules.version(rollout.baseline).name),
                goals: rollout
                    .analysis
                    .goals
                    .iter()
                    .map(|bound| Arc::clone(&bound.goal))
                    .collect(),
            })
            .collect()
    }

    /// The checks that are due and their transitions, published and staged (no I/O).
    pub fn check_due(&self, source: &ArmSource<'_>) {
        let now = self.clock.now();
        let rules = Arc::clone(&self.store.current().rules);
        let mut inner = self.lock();
        let mut changed = self.reconcile(&mut inner, &rules, now);
        let mut checked = false;
        for rollout in &rules.rollouts {
            let Some(record) = inner.records.get_mut(&*rollout.name) else {
                continue;
            };
            if record.phase != Phase::Progressing || now < record.next_check {
                continue;
            }
            let verdict = match source {
                ArmSource::Local => self.judge(&rules, rollout),
                ArmSource::Fleet(figures) => match figures.get(&*rollout.name) {
                    None => continue,
                    Some(Ok((version, baseline))) => judge(
                        &rollout.analysis,
                        ArmFigures::of(Some(version), &rollout.analysis),
                        ArmFigures::of(Some(baseline), &rollout.analysis),
                    ),
                    Some(Err(why)) => Verdict {
                        result: CheckResult::Inconclusive,
                        why: why.clone(),
                        version: ArmFigures::of(None, &rollout.analysis),
                        baseline: ArmFigures::of(None, &rollout.analysis),
                    },
                },
            };
            checked = true;
            self.metrics
                .rollout_checks
                .with_label_values(&[&rollout.name, verdict.result.as_str()])
                .inc();
            if let Some(event) = record.check(rollout, verdict, now) {
                log_event(rollout, event);
                changed = true;
            }
            inner.dirty = true;
        }
        if changed {
            self.publish(&inner, &rules);
        }
        if inner.dirty {
            // The judge's checks are the fleet's: shared; a reconcile alone is every
            // instance's own and is not.
            self.stage(&mut inner, now, checked);
        }
    }

    /// Saves the records (at shutdown).
    pub fn flush(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        self.stage(&mut inner, now, false);
        drop(inner);
        self.write_file();
    }

    /// Applies an operator's action to the rollout `name`; its status after, or why not.
    pub fn act(&self, name: &str, action: Action) -> Result<Value, Refused> {
        let now = self.clock.now();
        let rules = Arc::clone(&self.store.current().rules);
        let mut inner = self.lock();
        self.reconcile(&mut inner, &rules, now);
        let (Some(rollout), Some(record)) = (
            rules.rollouts.iter().find(|r| *r.name == *name),
            inner.records.get_mut(name),
        ) else {
            return Err(not_found(name));
        };
        match record.act(rollout, action, now) {
            Ok(event) => log_event(rollout, event),
            Err(message) => {
                return Err(Refused {
                    status: 409,
                    message,
                })
            }
        }
        let status = status_of(rollout, record, &rules, now);
        self.publish(&inner, &rules);
        self.stage(&mut inner, now, true);
        drop(inner);
        // Durable before the operator hears it is done.
        self.write_file();
        Ok(status)
    }

    /// `GET /-/rollouts`: every rollout's state, step, weight, since, and its last checks.
    pub fn status(&self) -> Value {
        let now = self.clock.now();
        let rules = Arc::clone(&self.store.current().rules);
        let mut inner = self.lock();
        if self.reconcile(&mut inner, &rules, now) {
            self.publish(&inner, &rules);
        }
        let rollouts: Vec<Value> = rules
            .rollouts
            .iter()
            .filter_map(|rollout| {
                let record = inner.records.get(&*rollout.name)?;
                Some(status_of(rollout, record, &rules, now))
            })
            .collect();
        json!({ "rollouts": rollouts })
    }

    /// `GET /-/rollouts/NAME/events`: the last transitions, oldest first.
    pub fn events(&self, name: &str) -> Result<Value, Refused> {
        let inner = self.lock();
        let record = inner.records.get(name).ok_or_else(|| not_found(name))?;
        Ok(json!({ "rollout": name, "events": record.events }))
    }

    /// The rollout's two arms over its window, judged.
    fn judge(&self, rules: &RuleSet, rollout: &Rollout) -> verdict::Verdict {
        let analysis = &rollout.analysis;
        let scope = Scope::Rule(Arc::clone(&rules.rules[rollout.rule].name));
        let stats = self.store.stats();
        let arm = |version| {
            let figures = stats.window(&scope, &rules.version(version).name, analysis.window);
            ArmFigures::of(figures.as_ref(), analysis)
        };
        judge(analysis, arm(rollout.version), arm(rollout.baseline))
    }

    /// Makes the records follow `rules`; whether any record changed.
    fn reconcile(&self, inner: &mut Inner, rules: &Arc<RuleSet>, now: Instant) -> bool {
        if inner
            .rules
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, rules))
        {
            return false;
        }
        inner.rules = Some(Arc::clone(rules));
        let mut changed = false;
        let mut records = BTreeMap::new();
        for rollout in &rules.rollouts {
            let name = rollout.name.to_string();
            let previous = inner
                .records
                .remove(&name)
                .map(Ok)
                .or_else(|| inner.stored.remove(&name).map(Err));
            let record = match previous {
                Some(Ok(record)) if record.fingerprint == rollout.fingerprint => record,
                Some(Err(stored)) if stored.fingerprint == rollout.fingerprint => {
                    Record::resume(stored, rollout, now)
                }
                Some(_) => {
                    changed = true;
                    let record = Record::start(
                        rollout,
                        Phase::Progressing,
                        "its version or steps changed: starts again",
                        now,
                    );
                    log_event(rollout, record.events.back().expect("a start event"));
                    record
                }
                None => {
                    changed = true;
                    let (phase, reason) = if inner.start_paused {
                        (
                            Phase::Paused,
                            "the saved state was unreadable: starts paused",
                        )
                    } else {
                        (Phase::Progressing, "new rollout")
                    };
                    let record = Record::start(rollout, phase, reason, now);
                    log_event(rollout, record.events.back().expect("a start event"));
                    record
                }
            };
            records.insert(name, record);
        }
        changed |= !inner.records.is_empty();
        for name in inner.records.keys() {
            log::info!(target: LOG_TARGET, "rollout {name} is no longer in the rules: its state is dropped");
        }
        inner.records = records;
        if changed {
            inner.dirty = true;
        }
        // Rollouts never seen before stay unpaused from now on.
        inner.start_paused = false;
        changed
    }

    /// Hands where each rollout stands to the requests, and to the gauges.
    fn publish(&self, inner: &Inner, rules: &RuleSet) {
        let mut positions = BTreeMap::new();
        for rollout in &rules.rollouts {
            let Some(record) = inner.records.get(&*rollout.name) else {
                continue;
            };
            let now = record.now(rollout);
            self.metrics
                .rollout_weight
                .with_label_values(&[&rollout.name])
                .set(i64::from(now.weight));
            for phase in Phase::ALL {
                self.metrics
                    .rollout_state
                    .with_label_values(&[&rollout.name, phase.as_str()])
                    .set(i64::from(phase == now.phase));
            }
            for result in ["pass", "fail", "inconclusive"] {
                self.metrics
                    .rollout_checks
                    .with_label_values(&[&rollout.name, result]);
            }
            positions.insert(rollout.name.to_string(), now);
        }
        self.store
            .update_runtime(move |state| state.rollouts = positions);
    }

    /// Takes up the fleet's document `text` (from Redis) when it was saved after the file read
    /// at start and after this instance's last change (a fresh disk, or another instance saved
    /// since); whether it was taken up. It is saved to the file, not shared again.
    pub fn adopt(&self, text: &str) -> bool {
        let saved = match persist::parse(text) {
            Ok(saved) => saved,
            Err(why) => {
                log::warn!(target: LOG_TARGET, "the rollout state in Redis is unreadable ({why}): the local state stands");
                return false;
            }
        };
        let now = self.clock.now();
        let mut inner = self.lock();
        if saved.at_unix_ms <= inner.loaded_at.max(inner.shared_at) {
            return false;
        }
        inner.loaded_at = saved.at_unix_ms;
        log::debug!(target: LOG_TARGET, "the rollout state in Redis is newer than {}: taken up", self.dir.file().display());
        inner.records.clear();
        inner.stored = saved.records;
        inner.start_paused = false;
        inner.rules = None;
        let rules = Arc::clone(&self.store.current().rules);
        self.reconcile(&mut inner, &rules, now);
        self.publish(&inner, &rules);
        self.stage(&mut inner, now, false);
        // Superseded: this instance's older document is not written over the newer one.
        inner.share_pending = None;
        drop(inner);
        self.write_file();
        true
    }

    /// The newest document of this instance's own changes (its checks as the judge, its
    /// operators' actions) that the fleet has not taken yet; hand it back with
    /// [`Rollouts::unshared`] if it could not be written.
    pub fn take_share(&self) -> Option<String> {
        self.lock().share_pending.take()
    }

    /// `doc` (from [`Rollouts::take_share`]) did not reach Redis: kept for the next try,
    /// unless a newer document superseded it meanwhile.
    pub fn unshared(&self, doc: String) {
        self.lock().share_pending.get_or_insert(doc);
    }

    /// Makes the document of the records as they stand, for the file and, when `share`d, the
    /// fleet (no I/O: the lock is held).
    fn stage(&self, inner: &mut Inner, now: Instant, share: bool) {
        let stored = inner
            .records
            .iter()
            .map(|(name, record)| (name.clone(), record.stored(now)))
            .collect();
        let at = unix_ms().max(inner.saved_at + 1);
        let doc = document(at, stored);
        inner.saved_at = at;
        inner.dirty = false;
        if self.fleet && share {
            inner.share_pending = Some(doc.clone());
            inner.shared_at = at;
        }
        inner.file_pending = Some(doc);
    }

    /// Writes the newest staged document to the file, outside the records' lock (an `fsync`
    /// on a busy disk takes long); kept for the next tick if the disk refuses it.
    pub fn write_file(&self) {
        let _one_writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(doc) = self.lock().file_pending.take() else {
            return;
        };
        if let Err(e) = self.dir.save(&doc) {
            let mut inner = self.lock();
            if let Some(held_back) = inner.save_errors.admit() {
                log::error!(
                    target: LOG_TARGET,
                    "cannot save the rollout state to {}: {e}; serving goes on, retrying ({held_back} similar failure(s) not logged)",
                    self.dir.file().display()
                );
            }
            // A newer document staged meanwhile supersedes this one.
            inner.file_pending.get_or_insert(doc);
        }
    }
}

/// Where each rollout stands as saved in `state_dir`, read without writing (for `graygate
/// explain`); a rollout without a usable record is left out (it would stand at its start).
pub fn saved_positions(
    state_dir: &std::path::Path,
    rules: &RuleSet,
) -> BTreeMap<String, crate::rules::model::RolloutNow> {
    let Loaded::Records(saved) = StateDir::new(state_dir).load() else {
        return BTreeMap::new();
    };
    let stored = saved.records;
    let now = Instant::now();
    rules
        .rollouts
        .iter()
        .filter_map(|rollout| {
            let record = stored.get(&*rollout.name)?;
            (record.fingerprint == rollout.fingerprint).then(|| {
                let record = Record::resume(record.clone(), rollout, now);
                (rollout.name.to_string(), record.now(rollout))
            })
        })
        .collect()
}

fn not_found(name: &str) -> Refused {
    Refused {
        status: 404,
        message: format!("no rollout named \"{name}\" in the rules serving"),
    }
}

/// One rollout's entry in `GET /-/rollouts`.
fn status_of(rollout: &Rollout, record: &Record, rules: &RuleSet, now: Instant) -> Value {
    let position = record.now(rollout);
    json!({
        "name": &*rollout.name,
        "rule": &*rules.rules[rollout.rule].name,
        "version": &*rules.version(rollout.version).name,
        "baseline": &*rules.version(rollout.baseline).name,
        "state": position.phase.as_str(),
        "step": record.step + 1,
        "steps": rollout.steps,
        "weight": position.weight,
        "since": rfc3339(record.since_unix_ms),
        "since_unix_ms": record.since_unix_ms,
        "step_elapsed_seconds": record.step_elapsed(now).as_secs_f64(),
        "step_duration_seconds": rollout.step_duration.as_secs_f64(),
        "consecutive_failures": record.failures,
        "failure_limit": rollout.analysis.failure_limit,
        "last_checks": record.checks,
    })
}

fn rfc3339(unix_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// One JSON line per transition, with the figures of the check behind it.
fn log_event(rollout: &Rollout, event: &Event) {
    let line = json!({
        "rollout": &*rollout.name,
        "from": event.from.as_str(),
        "to": event.to.as_str(),
        "from_step": event.from_step,
        "to_step": event.to_step,
        "weight": event.weight,
        "reason": event.reason,
        "check": event.check,
    });
    log::info!(target: LOG_TARGET, "{line}");
}

/// Runs [`Rollouts::tick`] four times a second until shutdown, then saves (an instance alone;
/// in a fleet `crate::fleet` ticks the rollouts).
pub struct RolloutTicker {
    rollouts: Arc<Rollouts>,
}

impl RolloutTicker {
    /// Ticks `rollouts`.
    pub fn new(rollouts: Arc<Rollouts>) -> RolloutTicker {
        RolloutTicker { rollouts }
    }
}

#[async_trait]
impl BackgroundService for RolloutTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = interval.tick() => {
                    // Checks read the stats, the file is fsynced: off the runtime's workers.
                    let rollouts = Arc::clone(&self.rollouts);
                    let _ = tokio::task::spawn_blocking(move || rollouts.tick()).await;
                }
            }
        }
        self.rollouts.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::model::Listeners;
    use crate::stats::ManualClock;

    const RULES: &str = "versions: { stable: {}, canary: {} }\ndefault: stable\n\
        services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: { peers: [\"127.0.0.1:1\"] }\n      canary: { peers: [\"127.0.0.1:2\"] }\n\
        rollouts:\n  ramp: { version: canary, steps: [10, 50], step_duration: 1m, analysis: { interval: 1s, window: 10s, min_requests: 50, failure_limit: 2 } }\n\
        rules:\n  - { name: ramp-rule, rollout: ramp }\n";

    /// Clock-driven ticks over real stats cells, with a state directory that refuses writes
    /// for a while.
    #[test]
    fn failing_checks_withdraw_the_version_and_a_refused_write_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        let metrics = Arc::new(Metrics::new());
        let store =
            Arc::new(SnapshotStore::load(dir.path(), Listeners::default(), &metrics).unwrap());
        let blocker = dir.path().join("state");
        let clock = Arc::new(ManualClock::new());
        let rollouts =
            Rollouts::with_clock(Arc::clone(&store), metrics, &blocker, false, clock.clone());
        // Saved at open; then a file takes the directory's place and every write fails.
        assert!(blocker.join("rollouts.json").exists());
        std::fs::remove_dir_all(&blocker).unwrap();
        std::fs::write(&blocker, "a file where the directory should be").unwrap();
        let snapshot = store.current();
        let canary = snapshot.rules.version_id("canary").unwrap();
        let stable = snapshot.rules.version_id("stable").unwrap();
        assert_eq!(snapshot.runtime.rollouts[0].weight, 10, "published at open");
        let arm = |v| snapshot.stats.rollout_arm(0, v).expect("the rule's arms");
        for _ in 0..100 {
            arm(stable).record(200, Duration::from_millis(2), 0, 0);
            arm(canary).record(503, Duration::from_millis(2), 0, 0);
        }
        // Not due before the interval.
        rollouts.tick();
        assert_eq!(rollouts.status()["rollouts"][0]["last_checks"], json!([]));
        clock.advance(Duration::from_secs(1));
        rollouts.tick();
        let status = rollouts.status();
        assert_eq!(status["rollouts"][0]["consecutive_failures"], 1, "{status}");
        clock.advance(Duration::from_secs(1));
        rollouts.tick();
        let current = store.current();
        assert_eq!(current.runtime.withdrawn_to(canary), Some(stable));
        assert_eq!(current.runtime.rollouts[0].weight, 0);
        assert!(!blocker.join("rollouts.json").exists());
        // The disk accepts writes again: the next tick saves.
        std::fs::remove_file(&blocker).unwrap();
        rollouts.tick();
        let saved = std::fs::read_to_string(blocker.join("rollouts.json")).unwrap();
        assert!(saved.contains("\"rolled_back\""), "{saved}");
        // An operator's retry starts again and lifts the withdrawal.
        rollouts.act("ramp", Action::Retry).unwrap();
        assert_eq!(store.current().runtime.withdrawn_to(canary), None);
        assert_eq!(
            rollouts.act("ramp", Action::Resume).unwrap_err().status,
            409
        );
        assert_eq!(rollouts.act("nope", Action::Pause).unwrap_err().status, 404);
    }
}
