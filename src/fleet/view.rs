//! The fleet view: each instance's heartbeat, which ones are live, and which drifted.
//!
//! Heartbeats live in one Redis hash, [`INSTANCES_KEY`], a field per instance id (one key, so
//! a cluster serves it from one node). An instance whose heartbeat is older than [`LIVE_FOR`]
//! is not live; one older than [`FORGET_AFTER`] is removed by whichever instance sees it.
//! Drift: the rules content hash most live instances serve is the fleet's; an instance serving
//! another is `drifted` (a ConfigMap that did not reach it). When two hashes tie for most,
//! there is no fleet's hash and every instance is `drifted`: the fleet disagrees.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The Redis hash of heartbeats.
pub const INSTANCES_KEY: &str = "graygate:fleet:instances";

/// How often an instance heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A heartbeat older than this is not live (three missed).
pub const LIVE_FOR: Duration = Duration::from_secs(15);

/// A heartbeat older than this is removed.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What an instance says of itself every [`HEARTBEAT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The instance id (`hostname:admin port`).
    pub id: String,
    /// Its admin and proxy listeners.
    pub address: String,
    /// The graygate version it runs.
    pub graygate_version: String,
    /// Its rules' content hash (as `/-/rules` shows it).
    pub rules_hash: String,
    /// Its rules generation.
    pub generation: u64,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When it sent this heartbeat, Unix milliseconds.
    pub at_unix_ms: u64,
    /// Whether it held the judge's lease then.
    pub judge: bool,
}

/// Whether a live instance serves the fleet's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Serves the rules most of the fleet serves.
    InSync,
    /// Serves other rules.
    Drifted,
}

impl State {
    /// The `state` label of `graygate_fleet_instances`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::InSync => "in_sync",
            State::Drifted => "drifted",
        }
    }
}

/// A live instance and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Its heartbeat.
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// In sync or drifted.
    pub state: State,
}

/// The heartbeats of the hash read, split into the live ones (by id) and the ids to forget;
/// unreadable entries are forgotten too.
pub fn live(entries: HashMap<String, String>, now_ms: u64) -> (Vec<Heartbeat>, Vec<String>) {
    let mut live = Vec::new();
    let mut forget = Vec::new();
    for (id, text) in entries {
        match serde_json::from_str::<Heartbeat>(&text) {
            Ok(beat) => {
                let age = now_ms.saturating_sub(beat.at_unix_ms);
                if age <= LIVE_FOR.as_millis() as u64 {
                    live.push(beat);
                } else if age > FORGET_AFTER.as_millis() as u64 {
                    forget.push(id);
                }
            }
            Err(_) => forget.push(id),
        }
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    (live, forget)
}

/// Each live instance with its state.
pub fn members(live: &[Heartbeat]) -> Vec<Member> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for beat in live {
        *counts.entry(&beat.rules_hash).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    let mut leaders = counts.iter().filter(|(_, &n)| n == most);
    let fleet_hash = match (leaders.next(), leaders.next()) {
        (Some((hash, _)), None) => Some(*hash),
        _ => None,
    };
    live.iter()
        .map(|beat| Member {
            heartbeat: beat.clone(),
            state: if Some(beat.rules_hash.as_str()) == fleet_hash {
                State::InSync
            } else {
                State::Drifted
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, hash: &str, at: u64) -> (String, String) {
        let beat = Heartbeat {
            id: id.into(),
            rules_hash: hash.into(),
            at_unix_ms: at,
            ..Heartbeat::default()
        };
        (id.to_string(), serde_json::to_string(&beat).unwrap())
    }

    #[test]
    fn the_odd_one_out_is_drifted_and_old_heartbeats_are_not_live() {
        let now = 1_000_000;
        let entries: HashMap<String, String> = [
            beat("a", "h1", now),
            beat("b", "h1", now - 5_000),
            beat("c", "h2", now - 14_000),
            beat("gone", "h2", now - 16_000),
            beat("ancient", "h2", now - 400_000),
            ("junk".to_string(), "{".to_string()),
        ]
        .into_iter()
        .collect();
        let (live, mut forget) = live(entries, now);
        forget.sort();
        assert_eq!(forget, vec!["ancient".to_string(), "junk".to_string()]);
        let states: Vec<(String, State)> = members(&live)
            .into_iter()
            .map(|m| (m.heartbeat.id, m.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("a".to_string(), State::InSync),
                ("b".to_string(), State::InSync),
                ("c".to_string(), State::Drifted)
            ]
        );
        // Two against two: no fleet's hash.
        let tie = [
            Heartbeat {
                rules_hash: "x".into(),
                ..Heartbeat::default()
            },
            Heartbeat {
                rules_hash: "y".into(),
                ..Heartbeat::default()
            },
        ];
        assert!(members(&tie).iter().all(|m| m.state == State::Drifted));
        assert!(members(&tie[..1]).iter().all(|m| m.state == State::InSync));
    }
}
