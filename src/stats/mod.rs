//! Windowed per-version figures: fed once per request by the proxy's `logging` hook, read by
//! rollout verdicts (SPEC section 12) and `GET /-/stats`.
//!
//! [`Metrics`](crate::metrics::Metrics) is write-only (Prometheus scrapes it); this is the read
//! side: requests, 5xx, latency quantiles and goal conversions of one version, in one scope, over
//! the last N seconds.
//!
//! ```text
//! logging ─► Cell::record ─► cumulative counters (relaxed fetch_add, per cell)
//!                                   │ read once a second by
//! StatsTicker ─► Stats::tick ─► delta since the last tick, per cell and counter
//!                                   │ pushed, sparse, as one closed second
//!                               History (the seconds the longest window needs)
//!                                   │
//! Stats::window / all ─► newest closed seconds within the window
//!                        + the live part (cumulative now − cumulative at the last tick) ─► Figures
//! ```
//!
//! - **Keys**: a [`Scope`] (a service, or a rule for rollouts) and a version, by *name*, so a
//!   cell survives reloads (indices change per generation). The caller resolves its cells and its
//!   [`GoalMap`] once per rules generation and keeps the `Arc<Cell>`s: the request path never
//!   looks a cell up. Cells are never removed; their number is bounded by the configuration
//!   names ever loaded, never by request data.
//! - **Request path**: [`Cell::record`] is one `fetch_add` for the latency bucket, one more for a
//!   5xx, one per goal attempt and one per conversion, then a `fetch_or` of the chunks it wrote
//!   into the cell's `moved` mask (a tick reads only the cells whose mask it finds set, and in
//!   them only those chunks: 6,000 idle cells cost it 6,000 loads, a busy cell a few cache
//!   lines). No lock, no allocation, no system call. About 6 ns on one core, 11 ns with two
//!   goal attempts and a conversion (`cargo bench --bench stats`, one core of the 2-core
//!   development machine; a tick of its fixture 1.1 µs). A busy cell's counters are
//!   shared by every worker, so under load their cache lines move between cores and each
//!   `fetch_add` costs more.
//! - **Exact counts**: the counters only grow, and each tick stores how much they grew since the
//!   last one, so every increment lands in exactly one second: the first whose tick reads it.
//!   A request's counters are separate atomics, so a tick may read its latency and miss its 5xx
//!   by a few nanoseconds; that 5xx then lands in the next second. At a window's edges the
//!   figures may therefore disagree by the few requests being recorded during a tick; nothing is
//!   lost or counted twice.
//! - **Time**: a tick closes the open "second" at the instant it runs, so a late tick makes one
//!   longer second and `window_seconds` stays honest. A window takes the live part, then the
//!   newest closed seconds until it reaches back `window` (at most one tick beyond), and never
//!   more than the history holds.
//! - **Latency**: a log-linear sketch with 8 buckets per power of two from 32.8 µs to 137 s; a
//!   quantile is within 1/16 of the exact one (see [`Latency`]).
//! - **Locks**: one mutex, taken by the ticker, by queries and by registration, never by
//!   `record`.
//!
//! **Memory**: a cell holds 186 counters (one 5xx, [`BUCKETS`] latency buckets), 1,496 bytes
//! of atomics, and once the process has goals 128 more (64 goal slots × 2, 1 KiB) made apart.
//! Its values at the last tick take as much again from its first record on (an idle cell has
//! none): 1.5 KiB for a cell without traffic, 3 to 5 KiB for one with. A second of history
//! costs 32 bytes, plus 16 bytes per counter that moved in it: per cell with traffic, one per
//! latency bucket hit, one for 5xx, two per goal counted; at most 314 × 16 bytes (5 KiB) per
//! cell, typically 10 to 40 entries (160 to 640 bytes). Ten busy cells over the default 10
//! minutes: about 2 to 4 MiB. A cell without traffic costs no history.
//! The seconds kept are those the longest window needs, and never more than `history` + 2.

mod cell;
mod clock;
mod figures;
mod goals;
mod history;
mod latency;
mod shared;
mod ticker;

pub use cell::{Cell, GOAL_SLOTS};
pub use clock::{unix_ms, Clock, ManualClock, MonotonicClock};
pub use figures::{Figures, GoalFigures};
pub use goals::GoalMap;
pub use latency::{Latency, BUCKETS};
pub use shared::{Fields, Tally};
pub use ticker::StatsTicker;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use cell::{CHUNK, COUNTERS};
use goals::GoalNames;
use history::{Entry, History};

/// The longest window kept when the configuration says nothing.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(600);

/// What a cell counts for: a service's traffic, or the traffic one rule decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    /// Every request a service answered, per served version.
    Service(#[serde(serialize_with = "as_str")] Arc<str>),
    /// The requests one rule decided (a rollout's arms), per decided version.
    Rule(#[serde(serialize_with = "as_str")] Arc<str>),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Service(name) => write!(f, "service {name}"),
            Scope::Rule(name) => write!(f, "rule {name}"),
        }
    }
}

/// One cell's figures, as `GET /-/stats` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellFigures {
    /// The cell's scope.
    pub scope: Scope,
    /// The cell's version.
    #[serde(serialize_with = "as_str")]
    pub version: Arc<str>,
    /// Its figures over the window asked.
    pub figures: Figures,
}

/// Every cell, its history and the goal slots; shared as `Arc<Stats>`.
pub struct Stats {
    history: Duration,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

/// What the mutex guards: everything but the cells' counters.
struct Inner {
    /// By registration index.
    cells: Vec<Registered>,
    /// Scope, then version name, to the registration index.
    index: HashMap<Scope, HashMap<Arc<str>, usize>>,
    goals: GoalNames,
    history: History,
}

/// A cell, its key, and its counters as the last tick read them.
struct Registered {
    scope: Scope,
    version: Arc<str>,
    cell: Arc<Cell>,
    /// The first counters of the cell as the last tick read them: none before its first
    /// record, then as many as the cell holds ([`Cell::len`]); a counter beyond was 0.
    at_tick: Vec<u64>,
}

impl Stats {
    /// Keeps enough seconds for windows up to `history`, on the monotonic clock.
    pub fn new(history: Duration) -> Stats {
        Stats::with_clock(history, Arc::new(MonotonicClock))
    }

    /// As [`Stats::new`], reading the time from `clock` (a [`ManualClock`] in tests).
    pub fn with_clock(history: Duration, clock: Arc<dyn Clock>) -> Stats {
        let now = clock.now();
        Stats {
            history,
            clock,
            inner: Mutex::new(Inner {
                cells: Vec::new(),
                index: HashMap::new(),
                goals: GoalNames::default(),
                history: History::new(history, now),
            }),
        }
    }

    /// The longest window that can be queried.
    pub fn history(&self) -> Duration {
        self.history
    }

    /// The cell of `version` in `scope`, registered on first use; the same cell on every call.
    ///
    /// It takes the stats mutex: look cells up once per rules generation, not per request.
    pub fn cell(&self, scope: &Scope, version: &str) -> Arc<Cell> {
        let mut inner = self.lock();
        if let Some(id) = inner.find(scope, version) {
            return inner.cells[id].cell.clone();
        }
        let id = inner.cells.len();
        let version: Arc<str> = version.into();
        let cell = Arc::new(Cell::new());
        if !inner.goals.names().is_empty() {
            cell.count_goals();
        }
        inner
            .index
            .entry(scope.clone())
            .or_default()
            .insert(version.clone(), id);
        inner.cells.push(Registered {
            scope: scope.clone(),
            version,
            cell: cell.clone(),
            at_tick: Vec::new(),
        });
        cell
    }

    /// Maps a generation's goals (names by goal index) to stats slots, giving new names a slot.
    ///
    /// A name keeps its slot for the process's lifetime; past 64 distinct names a new goal is
    /// not counted (logged once). From the first goal on, every cell has goal counters.
    pub fn goal_map<S: AsRef<str>>(&self, goals: impl IntoIterator<Item = S>) -> GoalMap {
        let mut inner = self.lock();
        let map = inner.goals.map(goals);
        if !inner.goals.names().is_empty() {
            for registered in &inner.cells {
                registered.cell.count_goals();
            }
        }
        map
    }

    /// The goal names by stats slot.
    pub fn goal_names(&self) -> Vec<Arc<str>> {
        self.lock().goals.names().to_vec()
    }

    /// Closes the open second: stores how much every counter grew since the last tick. Called
    /// once a second by [`StatsTicker`] (by hand in tests).
    pub fn tick(&self) {
        let mut inner = self.lock();
        // Read under the lock, so ticks and queries see the time in the order they run.
        let now = self.clock.now();
        let Inner { cells, history, .. } = &mut *inner;
        let mut entries = Vec::new();
        for (id, registered) in cells.iter_mut().enumerate() {
            let mut chunks = registered.cell.take_moved();
            if chunks == 0 {
                continue;
            }
            registered.at_tick.resize(registered.cell.len(), 0);
            // Chunk by chunk, in order: the entries stay sorted by counter.
            while chunks != 0 {
                let first = chunks.trailing_zeros() as usize * CHUNK;
                chunks &= chunks - 1;
                let last = (first + CHUNK).min(registered.at_tick.len());
                for counter in first..last {
                    let value = registered.cell.load(counter);
                    let at_tick = &mut registered.at_tick[counter];
                    if value != *at_tick {
                        entries.push(Entry {
                            // Each cell holds 1.5 KiB at least: fewer than 2^32 of them fit
                            // in memory.
                            cell: id as u32,
                            counter: counter as u32,
                            delta: value.wrapping_sub(*at_tick),
                        });
                        *at_tick = value;
                    }
                }
            }
        }
        history.close(now, entries);
    }

    /// The figures of `version` in `scope` over the last `window`, live part included; `None`
    /// for a cell never registered.
    pub fn window(&self, scope: &Scope, version: &str, window: Duration) -> Option<Figures> {
        let inner = self.lock();
        let now = self.clock.now();
        let id = inner.find(scope, version)?;
        Some(inner.figures(id, window, now))
    }

    /// Every registered cell's figures over the last `window`, by scope then version.
    pub fn all(&self, window: Duration) -> Vec<CellFigures> {
        let inner = self.lock();
        let now = self.clock.now();
        let mut all: Vec<CellFigures> = (0..inner.cells.len())
            .map(|id| CellFigures {
                scope: inner.cells[id].scope.clone(),
                version: inner.cells[id].version.clone(),
                figures: inner.figures(id, window, now),
            })
            .collect();
        all.sort_by(|a, b| (&a.scope, &a.version).cmp(&(&b.scope, &b.version)));
        all
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The guarded state is consistent between statements: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Stats {
    /// [`Stats::new`] with [`DEFAULT_HISTORY`].
    fn default() -> Stats {
        Stats::new(DEFAULT_HISTORY)
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        let (seconds, entries) = inner.history.size();
        f.debug_struct("Stats")
            .field("history", &self.history)
            .field("cells", &inner.cells.len())
            .field("goals", &inner.goals.names().len())
            .field("seconds", &seconds)
            .field("entries", &entries)
            .finish()
    }
}

impl Inner {
    fn find(&self, scope: &Scope, version: &str) -> Option<usize> {
        self.index.get(scope)?.get(version).copied()
    }

    /// Cell `id`'s figures: its live part plus its closed seconds within `window` of `now`.
    fn figures(&self, id: usize, window: Duration, now: Instant) -> Figures {
        let registered = &self.cells[id];
        let mut counters = [0; COUNTERS];
        for (counter, sum) in counters.iter_mut().enumerate() {
            let at_tick = registered.at_tick.get(counter).copied().unwrap_or(0);
            *sum = registered.cell.load(counter).wrapping_sub(at_tick);
        }
        let covered = self
            .history
            .add_window(id as u32, window, now, &mut counters);
        Figures::new(&counters, covered, self.goals.names())
    }
}

/// Serializes a shared name as a string (serde's `rc` feature is off).
fn as_str<S: Serializer>(name: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name)
}

#[cfg(test)]
mod tests;
