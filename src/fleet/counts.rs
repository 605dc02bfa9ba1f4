//! The fleet's rollout counts: every instance adds its arms' growth to Redis each second; the
//! judge sums the window over every instance.
//!
//! - **Keys**: one hash per rollout, fingerprint and Unix second,
//!   `graygate:fleet:counts:<rollout>:<fingerprint>:<second>`, with fields `<version>|<field>`
//!   (the field names of [`crate::stats::Tally::growth_since`]) and `@<instance>` (the
//!   instance reported that second, even with nothing to add). Each expires a minute after the
//!   rollout's window has passed it, so the keys are bounded by rollouts × window.
//! - **Exactly once**: an instance sends each growth once; a push that fails is dropped,
//!   never resent into a later second (the seconds it missed show as its absence).
//! - **Partial data**: a window in which a live instance (by its heartbeat, up for more than
//!   [`PRESENCE_SECONDS`] + 2 s) did not report in the last [`PRESENCE_SECONDS`] closed seconds
//!   is partial, and the check on it is inconclusive: no transition on partial data.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::rollout::DueCheck;
use crate::state::Snapshot;
use crate::stats::{Fields, Figures, Stats, Tally};

use super::view::Heartbeat;

/// Closed seconds in which every live instance must have reported.
pub const PRESENCE_SECONDS: u64 = 3;

/// How long a second's counts outlive the window that reads them.
const KEEP_AFTER_WINDOW: Duration = Duration::from_secs(60);

/// The key of one rollout's counts in one second.
pub fn bucket_key(rollout: &str, fingerprint: u64, second: u64) -> String {
    format!("graygate:fleet:counts:{rollout}:{fingerprint:016x}:{second}")
}

/// The presence field of `instance`.
pub fn presence_field(instance: &str) -> String {
    format!("@{instance}")
}

/// One bucket's increments: key, fields, expiry.
pub type Bucket = (String, Vec<(String, u64)>, Duration);

/// What this instance has sent of each arm, by (rollout, fingerprint, version).
#[derive(Default)]
pub struct Pusher {
    sent: HashMap<(Arc<str>, u64, Arc<str>), Tally>,
}

impl Pusher {
    /// The growth of every rollout arm since the last call, as buckets of `second`. An arm
    /// seen for the first time sends nothing yet (what it counted before this instance knew
    /// the rollout is not the rollout's).
    pub fn collect(&mut self, snapshot: &Snapshot, stats: &Stats, second: u64) -> Vec<Bucket> {
        let rules = &snapshot.rules;
        let mut buckets = Vec::with_capacity(rules.rollouts.len());
        let mut seen = BTreeSet::new();
        for (id, rollout) in rules.rollouts.iter().enumerate() {
            let mut fields = Vec::new();
            for version in [rollout.version, rollout.baseline] {
                let Some(cell) = snapshot.stats.rollout_arm(id, version) else {
                    continue;
                };
                let name = Arc::clone(&rules.version(version).name);
                let key = (Arc::clone(&rollout.name), rollout.fingerprint, name);
                let now = Tally::of(cell);
                if let Some(before) = self.sent.get(&key) {
                    fields.extend(
                        now.growth_since(before, stats)
                            .into_iter()
                            .map(|(field, value)| (format!("{}|{field}", key.2), value)),
                    );
                }
                seen.insert(key.clone());
                self.sent.insert(key, now);
            }
            buckets.push((
                bucket_key(&rollout.name, rollout.fingerprint, second),
                fields,
                rollout.analysis.window + KEEP_AFTER_WINDOW,
            ));
        }
        // Rollouts no longer in the rules: forgotten.
        self.sent.retain(|key, _| seen.contains(key));
        buckets
    }
}

/// The keys of `due`'s window ending with `second` (the open second included), oldest first.
pub fn window_keys(due: &DueCheck, second: u64) -> Vec<String> {
    let seconds = due.window.as_secs().max(1);
    (second.saturating_sub(seconds - 1)..=second)
        .map(|s| bucket_key(&due.rollout, due.fingerprint, s))
        .collect()
}

/// Sums the buckets of `due`'s window (from [`window_keys`], oldest first) into the version's
/// and the baseline's figures; `Err` when a live instance is missing from the last closed
/// seconds (`live`: the fleet's heartbeats; `now_ms`: Unix milliseconds).
pub fn sum(
    due: &DueCheck,
    buckets: &[HashMap<String, u64>],
    live: &[Heartbeat],
    now_ms: u64,
) -> Result<(Figures, Figures), String> {
    let closed = buckets.len().saturating_sub(1);
    let recent = &buckets[closed.saturating_sub(PRESENCE_SECONDS as usize)..closed];
    let settled = (PRESENCE_SECONDS + 2) * 1_000;
    for instance in live {
        if now_ms.saturating_sub(instance.started_unix_ms) < settled {
            continue;
        }
        let field = presence_field(&instance.id);
        if !recent.iter().any(|bucket| bucket.contains_key(&field)) {
            return Err(format!(
                "instance {} has not reported its counts for {PRESENCE_SECONDS} s: the fleet's figures are partial",
                instance.id
            ));
        }
    }
    let mut version = Fields::new(&due.goals);
    let mut baseline = Fields::new(&due.goals);
    for bucket in buckets {
        for (field, value) in bucket {
            let Some((arm, name)) = field.split_once('|') else {
                continue;
            };
            if arm == &*due.version {
                version.add(name, *value);
            } else if arm == &*due.baseline {
                baseline.add(name, *value);
            }
        }
    }
    let covered = Duration::from_secs(buckets.len() as u64);
    Ok((version.figures(covered), baseline.figures(covered)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due() -> DueCheck {
        DueCheck {
            rollout: "ramp".into(),
            fingerprint: 7,
            window: Duration::from_secs(5),
            version: "canary".into(),
            baseline: "stable".into(),
            goals: vec![],
        }
    }

    fn heartbeat(id: &str, started_unix_ms: u64) -> Heartbeat {
        Heartbeat {
            id: id.into(),
            started_unix_ms,
            ..Heartbeat::default()
        }
    }

    #[test]
    fn the_window_sums_every_instance_and_a_silent_one_makes_it_partial() {
        let keys = window_keys(&due(), 100);
        assert_eq!(keys.len(), 5);
        assert_eq!(keys[0], "graygate:fleet:counts:ramp:0000000000000007:96");
        assert_eq!(keys[4], "graygate:fleet:counts:ramp:0000000000000007:100");
        let bucket = |pairs: &[(&str, u64)]| -> HashMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let buckets = vec![
            bucket(&[("canary|l40", 10), ("stable|l40", 10), ("@a", 1)]),
            bucket(&[("canary|l40", 10), ("canary|e", 5), ("@a", 1), ("@b", 1)]),
            bucket(&[("stable|l40", 30), ("@a", 1), ("@b", 1)]),
            bucket(&[("canary|l41", 1), ("@a", 1)]),
            bucket(&[("other|l40", 99), ("junk", 1)]),
        ];
        let now = 100_000;
        let live = [heartbeat("a", 0), heartbeat("b", 0)];
        let (canary, stable) = sum(&due(), &buckets, &live, now).unwrap();
        assert_eq!((canary.requests, canary.errors_5xx), (21, 5));
        assert_eq!((stable.requests, stable.errors_5xx), (40, 0));
        // c is live and long up, and reported in none of the last 3 closed seconds.
        let live = [heartbeat("a", 0), heartbeat("c", 0)];
        let why = sum(&due(), &buckets, &live, now).unwrap_err();
        assert!(why.contains("instance c"), "{why}");
        // Just started: not expected yet.
        let live = [heartbeat("a", 0), heartbeat("c", now - 1_000)];
        assert!(sum(&due(), &buckets, &live, now).is_ok());
    }
}
