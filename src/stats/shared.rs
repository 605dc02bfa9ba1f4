//! A cell's growth as named fields, so instances of a fleet can add theirs up (SPEC section 13).
//!
//! Counter indices are this process's (goal slots are given out in the order goals are first
//! seen), so growth leaves the process by *name*: `e` for 5xx responses, `l<i>` for latency
//! bucket `i` (the sketch is the same in every build), `a:<goal>` and `c:<goal>` for a goal's
//! attempts and conversions. [`Fields::figures`] turns summed fields back into [`Figures`], so a
//! fleet-wide window is judged by the same code as a local one.

use std::sync::Arc;
use std::time::Duration;

use super::cell::{Cell, ATTEMPTS, CONVERSIONS, COUNTERS, ERRORS, LATENCY};
use super::{Figures, Stats, GOAL_SLOTS};

/// A cell's cumulative counters at one instant.
#[derive(Clone)]
pub struct Tally(Box<[u64; COUNTERS]>);

impl Tally {
    /// Nothing counted yet: what a cell's first tally is compared with.
    pub fn zero() -> Tally {
        Tally(Box::new([0; COUNTERS]))
    }

    /// `cell`'s counters now.
    pub fn of(cell: &Cell) -> Tally {
        let mut counters = Box::new([0; COUNTERS]);
        for (index, value) in counters.iter_mut().enumerate() {
            *value = cell.load(index);
        }
        Tally(counters)
    }

    /// How much each counter grew since `before`, as named fields (only those that moved);
    /// goal slots are named by `stats`.
    pub fn growth_since(&self, before: &Tally, stats: &Stats) -> Vec<(String, u64)> {
        let goals = stats.goal_names();
        let mut fields = Vec::new();
        for (index, (now, then)) in self.0.iter().zip(before.0.iter()).enumerate() {
            let delta = now.wrapping_sub(*then);
            if delta == 0 {
                continue;
            }
            let name = match index {
                ERRORS => "e".to_string(),
                i if i < ATTEMPTS => format!("l{}", i - LATENCY),
                i if i < CONVERSIONS => match goals.get(i - ATTEMPTS) {
                    Some(goal) => format!("a:{goal}"),
                    None => continue,
                },
                i => match goals.get(i - CONVERSIONS) {
                    Some(goal) => format!("c:{goal}"),
                    None => continue,
                },
            };
            fields.push((name, delta));
        }
        fields
    }
}

/// Named fields summed over instances and seconds, read back into counters.
pub struct Fields {
    counters: Box<[u64; COUNTERS]>,
    goals: Vec<Arc<str>>,
}

impl Fields {
    /// Empty; goal fields count for the goals named in `goals` (at most 64), in that order.
    pub fn new(goals: &[Arc<str>]) -> Fields {
        Fields {
            counters: Box::new([0; COUNTERS]),
            goals: goals.iter().take(GOAL_SLOTS).cloned().collect(),
        }
    }

    /// Adds `value` to the counter `name` names; an unknown name is ignored.
    pub fn add(&mut self, name: &str, value: u64) {
        let index = match name.split_once(':') {
            Some(("a", goal)) => self.slot(goal).map(|slot| ATTEMPTS + slot),
            Some(("c", goal)) => self.slot(goal).map(|slot| CONVERSIONS + slot),
            Some(_) => None,
            None if name == "e" => Some(ERRORS),
            None => name
                .strip_prefix('l')
                .and_then(|i| i.parse::<usize>().ok())
                .map(|i| LATENCY + i)
                .filter(|&index| index < ATTEMPTS),
        };
        if let Some(index) = index {
            self.counters[index] = self.counters[index].saturating_add(value);
        }
    }

    fn slot(&self, goal: &str) -> Option<usize> {
        self.goals.iter().position(|g| &**g == goal)
    }

    /// The figures of the summed fields, covering `covered`.
    pub fn figures(&self, covered: Duration) -> Figures {
        Figures::new(&self.counters, covered, &self.goals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Scope;

    #[test]
    fn growth_read_back_by_name_gives_the_same_figures() {
        let stats = Stats::default();
        let scope = Scope::Rule("r".into());
        // The reading side names its goals in another order than the writing side's slots.
        let _ = stats.goal_map(["signup", "checkout"]);
        let cell = stats.cell(&scope, "canary");
        let before = Tally::of(&cell);
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 503 } else { 200 };
            cell.record(status, Duration::from_millis(i), 0b11, 0b10);
        }
        let fields = Tally::of(&cell).growth_since(&before, &stats);
        assert!(fields.iter().any(|(n, v)| n == "e" && *v == 10));
        assert!(fields.iter().any(|(n, v)| n == "a:checkout" && *v == 100));
        let goals: Vec<Arc<str>> = vec!["checkout".into(), "other".into()];
        let mut summed = Fields::new(&goals);
        for (name, value) in &fields {
            summed.add(name, *value);
        }
        summed.add("l99999", 5);
        summed.add("x:y", 5);
        let local = stats
            .window(&scope, "canary", Duration::from_secs(60))
            .unwrap();
        let shared = summed.figures(Duration::from_secs(60));
        assert_eq!(shared.requests, 100);
        assert_eq!(shared.errors_5xx, local.errors_5xx);
        assert_eq!(shared.p99_ms, local.p99_ms);
        let checkout = shared.goal("checkout").unwrap();
        assert_eq!((checkout.attempts, checkout.conversions), (100, 100));
        assert!(shared.goal("signup").is_none(), "not asked for");
    }
}
