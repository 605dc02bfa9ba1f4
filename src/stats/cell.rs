//! A cell: the cumulative counters of one (scope, version), written by the request path.
//!
//! A cell is a flat array of monotonic counters, so the ticker and the window query treat every
//! figure alike (counter index, value): 5xx responses, one counter per latency bucket, and per
//! goal slot its attempts and its conversions. There is no request counter: the requests are the
//! sum of the latency buckets, so the count and the latency sketch always agree.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use super::latency::{bucket, BUCKETS};

/// Goal slots per cell: one bit of a `u64` mask each.
pub const GOAL_SLOTS: usize = u64::BITS as usize;

/// Counter index: responses with a 5xx status.
pub(super) const ERRORS: usize = 0;
/// Counter index of latency bucket 0; the buckets follow.
pub(super) const LATENCY: usize = 1;
/// Counter index of goal slot 0's attempts; the slots follow.
pub(super) const ATTEMPTS: usize = LATENCY + BUCKETS;
/// Counter index of goal slot 0's conversions; the slots follow.
pub(super) const CONVERSIONS: usize = ATTEMPTS + GOAL_SLOTS;
/// Counters in a cell.
pub(super) const COUNTERS: usize = CONVERSIONS + GOAL_SLOTS;

/// The goal counters of a cell: attempts then conversions, per slot.
type GoalCounters = [AtomicU64; COUNTERS - ATTEMPTS];

/// Counters per chunk of the `moved` mask: one cache line of them.
pub(super) const CHUNK: usize = 8;
const _: () = assert!(COUNTERS.div_ceil(CHUNK) <= u64::BITS as usize);

/// The `moved` bit of counter `index`'s chunk.
#[inline]
fn chunk_bit(index: usize) -> u64 {
    1 << (index / CHUNK)
}

/// The counters of one version in one scope, shared by every worker that serves it.
///
/// Every request writes the `moved` mask and one latency bucket, so they lead the cell (with
/// the 5xx counter, on the first cache line). The 128 goal counters are
/// held apart, made only once the process has goals ([`Cell::count_goals`]): without them a
/// cell is 1.5 KiB instead of 2.5 KiB, and 2,000 tenant services of three versions hold 6,000.
#[repr(C)]
pub struct Cell {
    /// Which chunks of [`CHUNK`] counters moved: set by every record after its counts, taken
    /// by the ticker. A tick reads only the cells that counted something since the last, and
    /// in them only the chunks that moved, so its cost follows the traffic, not the number of
    /// cells (6,000 for 2,000 services of three versions) nor their size: a cell with a few
    /// requests in a second costs it a few cache lines, not the 24 to 40 it holds (reading
    /// every counter of 4,000 busy cells a second was half the cache misses of graygate with
    /// 2,000 tenant services, docs/performance.md).
    moved: AtomicU64,
    /// The 5xx counter, then the latency buckets (indices below [`ATTEMPTS`]).
    requests: [AtomicU64; ATTEMPTS],
    /// The goal counters (indices from [`ATTEMPTS`]), once [`Cell::count_goals`] made them.
    goals: OnceLock<Box<GoalCounters>>,
}

impl Cell {
    pub(super) fn new() -> Cell {
        Cell {
            moved: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            goals: OnceLock::new(),
        }
    }

    /// Makes the goal counters, if not made yet: [`Stats`](super::Stats) calls it for every
    /// cell once a generation has goals, so that `record` never allocates.
    pub(super) fn count_goals(&self) {
        self.goals
            .get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
    }

    /// The chunks recorded in since the last call (bit `c`: counters `c * CHUNK ..`), 0 when
    /// none; their counts are visible once taken (release by the record, acquire here).
    pub(super) fn take_moved(&self) -> u64 {
        if self.moved.load(Relaxed) == 0 {
            return 0;
        }
        self.moved.swap(0, Ordering::Acquire)
    }

    /// Counts one answered request: a few relaxed `fetch_add`s, no lock, no allocation.
    ///
    /// `status` 0 (no response was written) counts as a request, not as a 5xx. The goal masks
    /// are stats slots (from [`GoalMap::translate`](super::GoalMap::translate)); a conversion
    /// counts only when its attempt bit is set too. Goal bits reach a cell only once the
    /// process has goals, so its goal counters exist by then.
    #[inline]
    pub fn record(
        &self,
        status: u16,
        elapsed: Duration,
        goal_attempts: u64,
        goal_conversions: u64,
    ) {
        let requests = &self.requests;
        let latency = LATENCY + bucket(elapsed);
        requests[latency].fetch_add(1, Relaxed);
        let mut moved = chunk_bit(latency);
        if (500..600).contains(&status) {
            requests[ERRORS].fetch_add(1, Relaxed);
            moved |= chunk_bit(ERRORS);
        }
        if goal_attempts != 0 {
            if let Some(goals) = self.goals.get() {
                let (attempts, conversions) = goals.split_at(GOAL_SLOTS);
                moved |= add_bits(attempts, ATTEMPTS, goal_attempts);
                moved |= add_bits(conversions, CONVERSIONS, goal_conversions & goal_attempts);
            }
        }
        self.moved.fetch_or(moved, Ordering::Release);
    }

    /// How many counters the cell holds: [`COUNTERS`] with goal counters, else [`ATTEMPTS`]
    /// (every index beyond reads 0).
    pub(super) fn len(&self) -> usize {
        if self.goals.get().is_some() {
            COUNTERS
        } else {
            ATTEMPTS
        }
    }

    /// The cumulative value of counter `index` (0 for a goal counter not made).
    pub(super) fn load(&self, index: usize) -> u64 {
        match index.checked_sub(ATTEMPTS) {
            None => self.requests[index].load(Relaxed),
            Some(goal) => self
                .goals
                .get()
                .map_or(0, |goals| goals[goal].load(Relaxed)),
        }
    }
}

/// Adds one to `slots[i]` for every bit `i` set in `bits` (`slots` has 64 entries, the
/// counters from index `first`); the `moved` bits of the chunks it added to.
#[inline]
fn add_bits(slots: &[AtomicU64], first: usize, mut bits: u64) -> u64 {
    let mut moved = 0;
    while bits != 0 {
        let slot = bits.trailing_zeros() as usize;
        slots[slot].fetch_add(1, Relaxed);
        moved |= chunk_bit(first + slot);
        bits &= bits - 1;
    }
    moved
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requests: u64 = (LATENCY..ATTEMPTS).map(|i| self.load(i)).sum();
        f.debug_struct("Cell")
            .field("requests", &requests)
            .field("errors_5xx", &self.load(ERRORS))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_adds_to_the_right_counters() {
        let cell = Cell::new();
        cell.count_goals();
        cell.record(200, Duration::from_millis(1), 0b101, 0b111);
        cell.record(503, Duration::from_millis(1), 0b100, 0);
        cell.record(0, Duration::from_secs(500), 0, 0);
        assert_eq!(cell.load(ERRORS), 1);
        assert_eq!(cell.load(LATENCY + bucket(Duration::from_millis(1))), 2);
        assert_eq!(cell.load(LATENCY + BUCKETS - 1), 1, "500 s overflows");
        assert_eq!(cell.load(ATTEMPTS), 1);
        assert_eq!(cell.load(ATTEMPTS + 1), 0);
        assert_eq!(cell.load(ATTEMPTS + 2), 2);
        assert_eq!(cell.load(CONVERSIONS), 1);
        // Bit 1 converted without an attempt: not counted.
        assert_eq!(cell.load(CONVERSIONS + 1), 0);
        assert_eq!(cell.load(CONVERSIONS + 2), 1);
        cell.record(599, Duration::ZERO, 1 << 63, 1 << 63);
        cell.record(600, Duration::ZERO, 0, 0);
        cell.record(499, Duration::ZERO, 0, 0);
        assert_eq!(cell.load(ERRORS), 2);
        assert_eq!(cell.load(CONVERSIONS + 63), 1);
        assert_eq!(COUNTERS, 1 + 185 + 128);
        assert_eq!(cell.len(), COUNTERS);
    }

    #[test]
    fn the_moved_mask_names_the_chunks_recorded_in() {
        let cell = Cell::new();
        cell.count_goals();
        assert_eq!(cell.take_moved(), 0);
        let fast = Duration::from_micros(10);
        let latency = LATENCY + bucket(fast);
        cell.record(200, fast, 0, 0);
        assert_eq!(cell.take_moved(), 1 << (latency / CHUNK));
        assert_eq!(cell.take_moved(), 0, "taken");
        cell.record(503, Duration::from_secs(500), 1 << 63, 1 << 63);
        let expected = [
            ERRORS,
            LATENCY + BUCKETS - 1,
            ATTEMPTS + 63,
            CONVERSIONS + 63,
        ]
        .iter()
        .fold(0, |mask, &index| mask | 1 << (index / CHUNK));
        assert_eq!(cell.take_moved(), expected);
        assert_eq!(COUNTERS.div_ceil(CHUNK), 40);
    }

    #[test]
    fn a_cell_without_goal_counters_counts_requests_and_reads_goals_as_zero() {
        let cell = Cell::new();
        assert_eq!(cell.len(), ATTEMPTS);
        cell.record(503, Duration::from_millis(1), 0b1, 0b1);
        assert_eq!(cell.load(ERRORS), 1);
        assert_eq!(cell.load(LATENCY + bucket(Duration::from_millis(1))), 1);
        assert_eq!((cell.load(ATTEMPTS), cell.load(CONVERSIONS)), (0, 0));
        assert_ne!(cell.take_moved(), 0);
        // Made later (a reload brought goals): counted from then on.
        cell.count_goals();
        cell.record(200, Duration::from_millis(1), 0b1, 0b1);
        assert_eq!((cell.load(ATTEMPTS), cell.load(CONVERSIONS)), (1, 1));
        assert_eq!(cell.len(), COUNTERS);
    }

    #[test]
    fn the_mask_and_the_5xx_counter_share_the_first_cache_line() {
        let cell = Cell::new();
        let base = &cell as *const Cell as usize;
        let flag = &cell.moved as *const AtomicU64 as usize;
        let errors = &cell.requests[ERRORS] as *const AtomicU64 as usize;
        assert_eq!(flag - base, 0);
        assert!(errors - base < 64);
        assert!(
            std::mem::size_of::<Cell>() < 1_520,
            "no goal counters inline"
        );
    }
}
