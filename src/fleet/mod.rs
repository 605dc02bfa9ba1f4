//! The fleet (SPEC section 13): many instances, one release, through the Redis of `redis:`.
//!
//! ```text
//! every instance, each second ─► counts::Pusher ─► HINCRBY graygate:fleet:counts:<rollout>:..:<s>
//!                                lease: SET graygate:fleet:judge <id> NX PX 3000 (renewed)
//! the judge, per due check ────► sum of the window's buckets over every instance
//!                                ─► Rollouts::check_due(Fleet) ─► its document ─► SET + PUBLISH
//! operators (any instance) ────► Rollouts::act / Emergency::set ─► SET + PUBLISH
//! every instance ──────────────► on a message (or every 5 s) GET ─► Rollouts::adopt / Emergency::adopt
//!                                every 5 s HSET graygate:fleet:instances <id> <heartbeat>
//! ```
//!
//! - **One judge**: the lease holder alone judges rollouts, on the fleet's summed counts, and
//!   writes the state; a fleet of N instances makes one transition, not N. The lease lasts
//!   [`LEASE`] and is renewed every second, so when its holder dies another instance takes it
//!   within [`LEASE`] + 1 s; it is released at shutdown, so a restart hands it over at once.
//! - **Within a second**: a change is published on [`CHANNEL`] as it is written; every
//!   instance reads the key it names and takes the document up. Every 5 s each instance reads
//!   both documents anyway, which covers a subscription that was down.
//! - **Redis down or partitioned**: nothing here is on the request path, and every command is
//!   bounded by [`link::TIMEOUT`]. Instances keep serving the state they last applied; the judge
//!   cannot read the counts, so its checks are inconclusive; an instance that cannot write its
//!   counts is missing from the window, so checks stay inconclusive until its heartbeat expires
//!   (15 s) and it no longer counts as part of the fleet. On reconnect each instance reads the
//!   documents again, and writes what its operators changed meanwhile unless a newer document
//!   is there.

pub mod counts;
pub mod link;
pub mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::emergency::{self, Emergency};
use crate::metrics::Metrics;
use crate::rollout::{self, ArmSource, DueCheck, Rollouts};
use crate::state::SnapshotStore;
use crate::stats::{unix_ms, Figures};
use crate::throttle::LogThrottle;
use link::Link;
use view::{Heartbeat, Member};

/// The channel changes are published on; the message names what changed.
pub const CHANNEL: &str = "graygate:fleet:changes";

/// The judge's lease key.
pub const LEASE_KEY: &str = "graygate:fleet:judge";

/// How long the judge's lease lasts unless renewed.
pub const LEASE: Duration = Duration::from_secs(3);

/// How often the documents are read even without a message.
const POLL: Duration = Duration::from_secs(5);

/// The log target.
pub const LOG_TARGET: &str = "graygate::fleet";

/// This instance's part in the fleet.
pub struct Fleet {
    id: String,
    address: String,
    started_unix_ms: u64,
    link: Link,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    rollouts: Arc<Rollouts>,
    emergency: Arc<Emergency>,
    /// Both documents were read from Redis once: until then nothing is shared and no lease is
    /// taken, so an instance on a fresh disk resumes the fleet's state before acting on it.
    synced: AtomicBool,
    /// Until when the lease is surely this instance's.
    lease_until: Mutex<Option<Instant>>,
    /// The live instances as last read.
    live: Mutex<Vec<Heartbeat>>,
    pusher: Mutex<counts::Pusher>,
    errors: Mutex<LogThrottle>,
}

impl Fleet {
    /// This instance (`id`, reachable at `address`) in the fleet of the Redis at `url`.
    pub fn new(
        url: &str,
        id: String,
        address: String,
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        rollouts: Arc<Rollouts>,
        emergency: Arc<Emergency>,
    ) -> Result<Fleet, String> {
        Ok(Fleet {
            link: Link::new(url)?,
            id,
            address,
            started_unix_ms: unix_ms(),
            store,
            metrics,
            rollouts,
            emergency,
            synced: AtomicBool::new(false),
            lease_until: Mutex::new(None),
            live: Mutex::new(Vec::new()),
            pusher: Mutex::new(counts::Pusher::default()),
            errors: Mutex::new(LogThrottle::new(Duration::from_secs(30))),
        })
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Does this instance judge the fleet's rollouts now?
    pub fn is_judge(&self) -> bool {
        lock(&self.lease_until).is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, what: &str, e: &str) {
        if let Some(held_back) = lock(&self.errors).admit() {
            log::warn!(target: LOG_TARGET, "{what}: {e}; serving goes on with the state last known ({held_back} similar failure(s) not logged)");
        }
    }

    /// Reads both documents and takes up the newer ones; writes the override held when Redis
    /// has none (a Redis that lost its data).
    async fn sync(&self) {
        let rollouts = self.sync_rollouts().await;
        let override_ok = self.sync_override().await;
        if rollouts && override_ok && !self.synced.swap(true, Ordering::AcqRel) {
            log::info!(target: LOG_TARGET, "instance {} joined the fleet's state", self.id);
        }
    }

    async fn sync_rollouts(&self) -> bool {
        match self.link.get(rollout::REDIS_KEY).await {
            Ok(Some(text)) => {
                let rollouts = Arc::clone(&self.rollouts);
                let _ = tokio::task::spawn_blocking(move || rollouts.adopt(&text)).await;
                true
            }
            Ok(None) => true,
            Err(e) => {
                self.failed("cannot read the rollouts' state from Redis", &e);
                false
            }
        }
    }

    async fn sync_override(&self) -> bool {
        match self.link.get(emergency::REDIS_KEY).await {
            Ok(Some(text)) => {
                let emergency = Arc::clone(&self.emergency);
                let _ = tokio::task::spawn_blocking(move || emergency.adopt(&text)).await;
                true
            }
            Ok(None) => {
                // Redis lost it (or never had it): what this instance holds is written back.
                if let Some(text) = self.emergency.document() {
                    if let Err(e) = self.link.set_new(emergency::REDIS_KEY, &text).await {
                        self.failed("cannot write the override to Redis", &e);
                    }
                }
                true
            }
            Err(e) => {
                self.failed("cannot read the override from Redis", &e);
                false
            }
        }
    }

    /// Writes an operator's override to Redis and publishes it, unless Redis holds a newer
    /// one (taken up instead); call right after `Emergency::set`/`clear`. `false` when Redis
    /// could not be reached (it is retried every second).
    pub async fn share_override(&self) -> bool {
        let Some((text, at)) = self.emergency.pending_share() else {
            return true;
        };
        match self.link.get(emergency::REDIS_KEY).await {
            Ok(Some(remote))
                if emergency::Document::parse(&remote).is_ok_and(|d| d.at_unix_ms >= at) =>
            {
                self.emergency.adopt(&remote);
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                self.failed("cannot write the override to Redis", &e);
                return false;
            }
        }
        if let Err(e) = self.link.set(emergency::REDIS_KEY, &text).await {
            self.failed("cannot write the override to Redis", &e);
            return false;
        }
        self.emergency.shared(&text);
        if let Err(e) = self.link.publish(CHANNEL, "override").await {
            self.failed("cannot publish the override (the others poll)", &e);
        }
        true
    }

    /// Writes this instance's own rollout document (a judge's checks, an operator's action)
    /// and publishes it.
    async fn share_rollouts(&self) {
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let Some(doc) = self.rollouts.take_share() else {
            return;
        };
        if let Err(e) = self.link.set(rollout::REDIS_KEY, &doc).await {
            self.failed("cannot write the rollouts' state to Redis", &e);
            self.rollouts.unshared(doc);
            return;
        }
        if let Err(e) = self.link.publish(CHANNEL, "rollouts").await {
            self.failed("cannot publish the rollouts' state (the others poll)", &e);
        }
    }

    /// Adds this instance's arm counts of the last second to Redis.
    async fn push_counts(&self) {
        let snapshot = self.store.current();
        let second = unix_ms() / 1_000;
        let buckets = lock(&self.pusher).collect(&snapshot, self.store.stats(), second);
        let presence = counts::presence_field(&self.id);
        if let Err(e) = self.link.add_counts(&buckets, &presence).await {
            self.failed("cannot add this instance's rollout counts to Redis", &e);
        }
    }

    /// Takes or renews the judge's lease.
    async fn lease(&self) {
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let sent = Instant::now();
        let holding = lock(&self.lease_until).is_some();
        let result = if holding {
            self.link.renew(LEASE_KEY, &self.id, LEASE).await
        } else {
            self.link.acquire(LEASE_KEY, &self.id, LEASE).await
        };
        let mut until = lock(&self.lease_until);
        match result {
            Ok(true) => {
                if until.is_none() {
                    log::info!(target: LOG_TARGET, "instance {} judges the fleet's rollouts", self.id);
                }
                // A margin for the clocks of Redis and of this host.
                *until = Some(sent + LEASE - Duration::from_millis(500));
            }
            Ok(false) => {
                if until.take().is_some() {
                    log::warn!(target: LOG_TARGET, "instance {} lost the judge's lease", self.id);
                }
            }
            // Unknown: the lease runs out by itself unless renewed.
            Err(e) => {
                if until.is_some_and(|t| Instant::now() >= t) {
                    *until = None;
                }
                drop(until);
                self.failed("cannot renew the judge's lease", &e);
                return self.metrics.fleet_judge.set(i64::from(self.is_judge()));
            }
        }
        drop(until);
        self.metrics.fleet_judge.set(i64::from(self.is_judge()));
    }

    /// The judge's rollout checks that are due, on the fleet's window.
    async fn judge(&self) {
        if !self.is_judge() {
            return;
        }
        let due = self.rollouts.due();
        if due.is_empty() {
            return;
        }
        // An operator's action on another instance is taken up before judging over it.
        self.sync_rollouts().await;
        let figures = self.window(&due).await;
        let rollouts = Arc::clone(&self.rollouts);
        let _ = tokio::task::spawn_blocking(move || {
            rollouts.check_due(&ArmSource::Fleet(&figures));
        })
        .await;
    }

    /// The fleet's figures of each due check's window.
    async fn window(
        &self,
        due: &[DueCheck],
    ) -> BTreeMap<String, Result<(Figures, Figures), String>> {
        let now = unix_ms();
        let live = lock(&self.live).clone();
        let mut figures = BTreeMap::new();
        for check in due {
            let keys = counts::window_keys(check, now / 1_000);
            let result = match self.link.hgetall_many(&keys).await {
                Ok(buckets) => counts::sum(check, &buckets, &live, now),
                Err(e) => Err(format!("cannot read the fleet's counts from Redis: {e}")),
            };
            figures.insert(check.rollout.to_string(), result);
        }
        figures
    }

    /// Sends this instance's heartbeat and reads everyone's.
    async fn heartbeat(&self) {
        let snapshot = self.store.current();
        let beat = Heartbeat {
            id: self.id.clone(),
            address: self.address.clone(),
            graygate_version: env!("CARGO_PKG_VERSION").to_string(),
            rules_hash: format!("{:016x}", snapshot.origin.content_hash),
            generation: snapshot.generation,
            started_unix_ms: self.started_unix_ms,
            at_unix_ms: unix_ms(),
            judge: self.is_judge(),
        };
        let text = serde_json::to_string(&beat).unwrap_or_default();
        if let Err(e) = self.link.hset(view::INSTANCES_KEY, &self.id, &text).await {
            self.failed("cannot send this instance's heartbeat", &e);
        }
        if let Err(e) = self.read_view().await {
            self.failed("cannot read the fleet's heartbeats", &e);
        }
    }

    /// Reads the heartbeats, forgets the long dead, and counts the live by state.
    async fn read_view(&self) -> Result<Vec<Member>, String> {
        let entries = self.link.hgetall(view::INSTANCES_KEY).await?;
        let (live, forget) = view::live(entries, unix_ms());
        self.link.hdel(view::INSTANCES_KEY, forget).await?;
        let members = view::members(&live);
        for state in [view::State::InSync, view::State::Drifted] {
            let n = members.iter().filter(|m| m.state == state).count();
            self.metrics
                .fleet_instances
                .with_label_values(&[state.as_str()])
                .set(n as i64);
        }
        *lock(&self.live) = live;
        Ok(members)
    }

    /// `GET /-/fleet`: the live instances, each `in_sync` or `drifted`, the judge, and this
    /// instance; `Err` when Redis cannot be read.
    pub async fn status(&self) -> Result<Value, String> {
        let members = self.read_view().await?;
        let judge = self.link.get(LEASE_KEY).await?;
        Ok(json!({
            "instance": self.id,
            "judge": judge,
            "subscribed": self.link.subscribed(),
            "synced": self.synced.load(Ordering::Acquire),
            "instances": members,
        }))
    }

    /// At shutdown: the lease handed back, the heartbeat removed, the last documents shared.
    async fn leave(&self) {
        self.rollouts.flush();
        self.share_rollouts().await;
        if lock(&self.lease_until).take().is_some() {
            let _ = self.link.release(LEASE_KEY, &self.id).await;
        }
        let _ = self
            .link
            .hdel(view::INSTANCES_KEY, vec![self.id.clone()])
            .await;
        self.link.quit().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the fleet until shutdown: the rollouts' ticks (in place of `RolloutTicker`), the counts,
/// the lease, the heartbeats, the published changes and the poll.
pub struct FleetService {
    fleet: Arc<Fleet>,
}

impl FleetService {
    /// Runs `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> FleetService {
        FleetService { fleet }
    }
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let fleet = &self.fleet;
        let mut messages = fleet.link.messages();
        fleet.link.connect(CHANNEL);
        log::info!(target: LOG_TARGET, "instance {} joins the fleet", fleet.id);
        let mut tick = tokio::time::interval(rollout::TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll: Option<Instant> = None;
        let mut last_beat: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                message = messages.recv() => match message {
                    Ok(message) => match message.value.as_str().as_deref() {
                        Some("override") => { fleet.sync_override().await; }
                        Some("rollouts") => { fleet.sync_rollouts().await; }
                        _ => {}
                    },
                    // Missed some: read both.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => fleet.sync().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        messages = fleet.link.messages();
                    }
                },
                _ = tick.tick() => {
                    fleet.judge().await;
                    fleet.share_rollouts().await;
                    let rollouts = Arc::clone(&fleet.rollouts);
                    let _ = tokio::task::spawn_blocking(move || rollouts.write_file()).await;
                }
                _ = second.tick() => {
                    let due = |last: Option<Instant>, every: Duration| {
                        last.is_none_or(|at| at.elapsed() >= every)
                    };
                    if !fleet.synced.load(Ordering::Acquire) || due(last_poll, POLL) {
                        fleet.sync().await;
                        last_poll = Some(Instant::now());
                    }
                    fleet.push_counts().await;
                    fleet.lease().await;
                    fleet.share_override().await;
                    if due(last_beat, view::HEARTBEAT) {
                        fleet.heartbeat().await;
                        last_beat = Some(Instant::now());
                    }
                }
            }
        }
        fleet.leave().await;
    }
}
