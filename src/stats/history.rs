//! The closed seconds: per cell and counter, how much it grew in each second, kept sparse.
//!
//! Each tick closes the open second with the deltas of the counters that moved, sorted by cell
//! then counter (the order the ticker walks them), so a window query finds one cell's entries in
//! a second by binary search. Seconds are contiguous: each starts where the one before ended,
//! and the open one (the live part) starts at [`History::opened`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much one counter of one cell grew in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    /// The cell's registration index.
    pub cell: u32,
    /// The counter's index in the cell.
    pub counter: u32,
    /// The growth.
    pub delta: u64,
}

/// A closed second (more than one when a tick came late).
#[derive(Debug)]
struct Second {
    start: Instant,
    /// Sorted by (cell, counter); only the counters that moved.
    entries: Box<[Entry]>,
}

/// The closed seconds a window of up to `keep` needs.
#[derive(Debug)]
pub(super) struct History {
    seconds: VecDeque<Second>,
    /// Where the open second started.
    opened: Instant,
    keep: Duration,
    /// A hard bound on the seconds kept, should ticks come faster than once a second.
    max_seconds: usize,
}

impl History {
    /// An empty history whose first second opens at `now`.
    pub(super) fn new(keep: Duration, now: Instant) -> History {
        let max_seconds = usize::try_from(keep.as_secs())
            .unwrap_or(usize::MAX)
            .saturating_add(2);
        History {
            seconds: VecDeque::new(),
            opened: now,
            keep,
            max_seconds,
        }
    }

    /// Closes the open second at `now` with its deltas (sorted by cell, then counter) and drops
    /// the seconds no window of `keep` needs any more.
    pub(super) fn close(&mut self, now: Instant, entries: Vec<Entry>) {
        debug_assert!(entries
            .windows(2)
            .all(|pair| (pair[0].cell, pair[0].counter) < (pair[1].cell, pair[1].counter)));
        self.seconds.push_back(Second {
            start: self.opened,
            entries: entries.into_boxed_slice(),
        });
        self.opened = now;
        // The oldest second goes once the one after it reaches back `keep` on its own.
        while self.seconds.len() > self.max_seconds
            || (self.seconds.len() >= 2
                && now.saturating_duration_since(self.seconds[1].start) >= self.keep)
        {
            self.seconds.pop_front();
        }
    }

    /// Adds to `counters` the deltas of `cell` in the newest closed seconds, until they reach
    /// back `window` from `now`; returns the time covered, counting the open second from
    /// [`History::opened`] to `now`, whose part the caller adds itself.
    pub(super) fn add_window(
        &self,
        cell: u32,
        window: Duration,
        now: Instant,
        counters: &mut [u64],
    ) -> Duration {
        let mut start = self.opened;
        for second in self.seconds.iter().rev() {
            if now.saturating_duration_since(start) >= window {
                break;
            }
            let entries = &second.entries;
            let first = entries.partition_point(|entry| entry.cell < cell);
            for entry in entries[first..]
                .iter()
                .take_while(|entry| entry.cell == cell)
            {
                counters[entry.counter as usize] += entry.delta;
            }
            start = second.start;
        }
        now.saturating_duration_since(start)
    }

    /// The number of closed seconds kept, and of their entries.
    pub(super) fn size(&self) -> (usize, usize) {
        let entries = self.seconds.iter().map(|second| second.entries.len()).sum();
        (self.seconds.len(), entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cell: u32, counter: u32, delta: u64) -> Entry {
        Entry {
            cell,
            counter,
            delta,
        }
    }

    #[test]
    fn a_window_sums_the_newest_seconds_until_it_is_covered() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut history = History::new(Duration::from_secs(3), t0);
        for i in 1..=5u64 {
            // Second i: cell 0 counter 1 grows by i, cell 1 counter 0 by 10 i.
            history.close(t0 + s * i as u32, vec![entry(0, 1, i), entry(1, 0, 10 * i)]);
        }
        assert_eq!(
            history.size(),
            (3, 6),
            "seconds 3, 4, 5 reach back 3 s from t0 + 5 s"
        );
        let now = t0 + Duration::from_millis(5_250);
        let mut counters = [0; 2];
        assert_eq!(
            history.add_window(0, Duration::ZERO, now, &mut counters),
            Duration::from_millis(250)
        );
        assert_eq!(counters, [0, 0]);
        let covered = history.add_window(0, Duration::from_secs(2), now, &mut counters);
        assert_eq!(covered, Duration::from_millis(2_250));
        assert_eq!(counters, [0, 5 + 4]);
        let mut counters = [0; 2];
        let covered = history.add_window(1, Duration::from_secs(60), now, &mut counters);
        assert_eq!(
            covered,
            Duration::from_millis(3_250),
            "no more than is kept"
        );
        assert_eq!(counters, [50 + 40 + 30, 0]);
        let mut counters = [0; 2];
        history.add_window(7, Duration::from_secs(60), now, &mut counters);
        assert_eq!(counters, [0, 0], "an idle cell");
    }

    #[test]
    fn a_late_tick_makes_a_longer_second() {
        let t0 = Instant::now();
        let mut history = History::new(Duration::from_secs(10), t0);
        history.close(t0 + Duration::from_secs(4), vec![entry(0, 0, 4)]);
        history.close(t0 + Duration::from_secs(5), vec![entry(0, 0, 1)]);
        let mut counters = [0];
        let now = t0 + Duration::from_secs(5);
        let covered = history.add_window(0, Duration::from_secs(2), now, &mut counters);
        assert_eq!(
            covered,
            Duration::from_secs(5),
            "the late second is taken whole"
        );
        assert_eq!(counters, [5]);
    }

    #[test]
    fn ticks_faster_than_a_second_are_bounded() {
        let t0 = Instant::now();
        let mut history = History::new(Duration::from_secs(3), t0);
        for i in 1..=100 {
            history.close(t0 + Duration::from_millis(i), Vec::new());
        }
        assert_eq!(history.size(), (5, 0));
    }
}
