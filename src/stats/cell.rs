//! A cell: the cumulative counters of one (scope, version), written by the request path.
//!
//! A cell is a flat array of monotonic counters, so the ticker and the window query treat every
//! figure alike (counter index, value): 5xx responses, one counter per latency bucket, and per
//! goal slot its attempts and its conversions. There is no request counter: the requests are the
//! sum of the latency buckets, so the count and the latency sketch always agree.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, Ordering::Relaxed};
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

/// The counters of one version in one scope, shared by every worker that serves it.
pub struct Cell {
    counters: [AtomicU64; COUNTERS],
    /// Set by every record after its counts, taken by the ticker: a tick reads only the
    /// cells that counted something since the last, so its cost follows the traffic, not the
    /// number of cells (6,000 for 2,000 services of three versions: 1.9 million counters).
    moved: AtomicBool,
}

impl Cell {
    pub(super) fn new() -> Cell {
        Cell {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            moved: AtomicBool::new(false),
        }
    }

    /// Whether a record happened since the last call; its counts are visible once this
    /// answers true (release by the record, acquire here).
    pub(super) fn take_moved(&self) -> bool {
        self.moved.load(Relaxed) && self.moved.swap(false, Ordering::Acquire)
    }

    /// Counts one answered request: a few relaxed `fetch_add`s, no lock, no allocation.
    ///
    /// `status` 0 (no response was written) counts as a request, not as a 5xx. The goal masks
    /// are stats slots (from [`GoalMap::translate`](super::GoalMap::translate)); a conversion
    /// counts only when its attempt bit is set too.
    #[inline]
    pub fn record(
        &self,
        status: u16,
        elapsed: Duration,
        goal_attempts: u64,
        goal_conversions: u64,
    ) {
        let counters = &self.counters;
        counters[LATENCY + bucket(elapsed)].fetch_add(1, Relaxed);
        if (500..600).contains(&status) {
            counters[ERRORS].fetch_add(1, Relaxed);
        }
        add_bits(&counters[ATTEMPTS..CONVERSIONS], goal_attempts);
        add_bits(&counters[CONVERSIONS..], goal_conversions & goal_attempts);
        self.moved.store(true, Ordering::Release);
    }

    /// The cumulative value of counter `index`.
    pub(super) fn load(&self, index: usize) -> u64 {
        self.counters[index].load(Relaxed)
    }
}

/// Adds one to `slots[i]` for every bit `i` set in `bits` (`slots` has 64 entries).
#[inline]
fn add_bits(slots: &[AtomicU64], mut bits: u64) {
    while bits != 0 {
        slots[bits.trailing_zeros() as usize].fetch_add(1, Relaxed);
        bits &= bits - 1;
    }
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
    }
}
