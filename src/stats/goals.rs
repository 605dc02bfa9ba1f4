//! Goal slots: a goal keeps its stats slot by name across rules generations.
//!
//! A generation numbers its goals 0..64 in file order, and a request carries them as a bitmask.
//! Reordering or removing goals renumbers them, so the cells count per *slot* instead: a slot
//! is given to a goal name the first time a generation names it, and kept for the process's
//! lifetime (append-only, at most [`GOAL_SLOTS`]). A [`GoalMap`], built once per generation,
//! turns a request's generation bits into slot bits.

use std::collections::HashSet;
use std::sync::Arc;

use super::cell::GOAL_SLOTS;

/// Marks a generation goal that has no slot.
const NO_SLOT: u8 = u8::MAX;

/// One generation's goal indices mapped to stats slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalMap {
    /// `slots[i]`: the slot of the generation's goal `i`, or [`NO_SLOT`].
    slots: [u8; GOAL_SLOTS],
}

impl GoalMap {
    /// The slot bits for a request's goal bits (bit `i` = the generation's goal `i`); goals
    /// without a slot are dropped.
    #[inline]
    pub fn translate(&self, mut generation_bits: u64) -> u64 {
        let mut slot_bits = 0;
        while generation_bits != 0 {
            let slot = self.slots[generation_bits.trailing_zeros() as usize];
            if slot != NO_SLOT {
                slot_bits |= 1 << slot;
            }
            generation_bits &= generation_bits - 1;
        }
        slot_bits
    }
}

impl Default for GoalMap {
    /// Maps no goal: every request's goal bits translate to 0.
    fn default() -> GoalMap {
        GoalMap {
            slots: [NO_SLOT; GOAL_SLOTS],
        }
    }
}

/// The goal names that hold a slot (slot = position), append-only.
#[derive(Debug, Default)]
pub(super) struct GoalNames {
    names: Vec<Arc<str>>,
    /// Names refused a slot, each logged once.
    refused: HashSet<Arc<str>>,
}

impl GoalNames {
    /// The name holding each slot, by slot.
    pub(super) fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// Maps `goals` (a generation's goal names, by index) to slots, giving new names a slot.
    pub(super) fn map<S: AsRef<str>>(&mut self, goals: impl IntoIterator<Item = S>) -> GoalMap {
        let mut map = GoalMap::default();
        for (index, goal) in goals.into_iter().enumerate() {
            let name = goal.as_ref();
            if index >= GOAL_SLOTS {
                // A request carries 64 goal bits: rules::compile refuses more.
                log::warn!(
                    "stats: goal \"{name}\" is beyond the 64th of its generation: not counted"
                );
                continue;
            }
            let slot = match self.names.iter().position(|held| &**held == name) {
                Some(slot) => slot,
                None if self.names.len() < GOAL_SLOTS => {
                    self.names.push(name.into());
                    self.names.len() - 1
                }
                None => {
                    if self.refused.insert(name.into()) {
                        log::warn!(
                            "stats: goal \"{name}\" is not counted: {GOAL_SLOTS} goal names \
                             were counted since the start; restart to count it"
                        );
                    }
                    continue;
                }
            };
            // slot < GOAL_SLOTS = 64 fits a u8.
            map.slots[index] = slot as u8;
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_keeps_its_slot_when_a_reload_reorders_goals() {
        let mut names = GoalNames::default();
        let first = names.map(["signup", "checkout"]);
        assert_eq!(first.translate(0b01), 0b01);
        assert_eq!(first.translate(0b10), 0b10);
        // Reordered, one removed, one added: signup keeps slot 0, checkout slot 1.
        let second = names.map(["newsletter", "checkout", "signup"]);
        assert_eq!(second.translate(0b001), 0b100, "newsletter takes slot 2");
        assert_eq!(second.translate(0b010), 0b010);
        assert_eq!(second.translate(0b100), 0b001);
        assert_eq!(second.translate(0b111), 0b111);
        assert_eq!(second.translate(0), 0);
        assert_eq!(
            second.translate(1 << 40),
            0,
            "no goal 40 in this generation"
        );
        let names: Vec<&str> = names.names().iter().map(|n| &**n).collect();
        assert_eq!(names, ["signup", "checkout", "newsletter"]);
    }

    #[test]
    fn names_beyond_64_get_no_slot() {
        let mut names = GoalNames::default();
        let many: Vec<String> = (0..64).map(|i| format!("g{i}")).collect();
        let full = names.map(&many);
        assert_eq!(full.translate(u64::MAX), u64::MAX);
        let later = names.map(["late", "g63", "g0"]);
        assert_eq!(later.translate(0b001), 0, "no slot is left for `late`");
        assert_eq!(later.translate(0b110), (1 << 63) | 1);
        assert_eq!(names.names().len(), 64);
        assert_eq!(names.refused.len(), 1);
        names.map(["late"]);
        assert_eq!(names.refused.len(), 1, "refused once, logged once");
        assert_eq!(GoalMap::default().translate(u64::MAX), 0);
    }
}
