//! Runtime state: what graygate is told while it runs, beside what the rules files say.
//!
//! A [`RuntimeState`] holds names (where each rollout stands, an emergency override), never
//! indices, because a rules reload renumbers versions and rules. When a
//! snapshot is built the state is resolved against that generation's names into an
//! [`AppliedState`], the form a request reads; a name the generation does not know is left
//! unapplied (and listed in [`AppliedState::ignored`]) but kept, so it applies again once the
//! rules know it. The rollouts, the override API and the fleet write the state through
//! `SnapshotStore::update_runtime`; persistence (a state directory, Redis) stores this value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rules::decide::{Decision, Reason};
use crate::rules::model::{Phase, RolloutNow, RuleSet};

use crate::facts::VersionId;

/// An emergency override: every request goes to one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The version every request goes to.
    pub version: String,
    /// Why, as the operator wrote it.
    pub reason: String,
}

/// The runtime state, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    /// Where each rollout stands, by rollout name. A rolled-back rollout withdraws its
    /// version; an entry whose fingerprint is not the compiled rollout's (its version or steps
    /// were edited) does not apply: that rollout stands at its start.
    #[serde(default)]
    pub rollouts: BTreeMap<String, RolloutNow>,
    /// The emergency override, when one is set.
    #[serde(default)]
    pub override_version: Option<Override>,
}

/// The runtime state resolved against one generation: what a request reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// `withdrawn[v]`: the baseline that serves version `v`'s users, when `v` is withdrawn
    /// (indexed by [`VersionId`]).
    withdrawn: Vec<Option<VersionId>>,
    /// The override's version, when one is set and the generation knows it.
    pub override_version: Option<VersionId>,
    /// The override's reason.
    pub override_reason: Option<String>,
    /// Where each rollout stands, by rollout index (what `Facts::rollouts` reads).
    pub rollouts: Vec<RolloutNow>,
    /// What could not be applied to this generation, in words.
    pub ignored: Vec<String>,
}

impl RuntimeState {
    /// Resolves the state against `rules`' names.
    pub fn apply(&self, rules: &RuleSet) -> AppliedState {
        let mut applied = AppliedState {
            withdrawn: vec![None; rules.versions.len()],
            ..AppliedState::default()
        };
        for rollout in &rules.rollouts {
            let now = match self.rollouts.get(&*rollout.name) {
                Some(now) if now.fingerprint == rollout.fingerprint => *now,
                Some(_) => {
                    applied.ignored.push(format!(
                        "rollout \"{}\" changed its version or steps: it starts again",
                        rollout.name
                    ));
                    rollout.start()
                }
                None => rollout.start(),
            };
            if now.phase == Phase::RolledBack {
                applied.withdrawn[rollout.version.index()] = Some(rollout.baseline);
            }
            applied.rollouts.push(now);
        }
        for name in self.rollouts.keys() {
            if !rules.rollouts.iter().any(|r| *r.name == **name) {
                applied
                    .ignored
                    .push(format!("rollout \"{name}\" is not in the rules"));
            }
        }
        if let Some(o) = &self.override_version {
            match rules.version_id(&o.version) {
                Some(id) => {
                    applied.override_version = Some(id);
                    applied.override_reason = Some(o.reason.clone());
                }
                None => applied.ignored.push(format!(
                    "override version \"{}\" is not in the rules",
                    o.version
                )),
            }
        }
        applied
    }
}

impl AppliedState {
    /// The baseline serving `version`'s users when `version` is withdrawn (rolled back).
    pub fn withdrawn_to(&self, version: VersionId) -> Option<VersionId> {
        self.withdrawn.get(version.index()).copied().flatten()
    }

    /// The baseline that serves `decision`'s users instead of its version, when that version
    /// is withdrawn; never for the emergency override, which an operator aimed on purpose.
    pub fn withdrawal(&self, decision: &Decision) -> Option<VersionId> {
        match decision.reason {
            Reason::Override => None,
            _ => self.withdrawn_to(decision.version),
        }
    }

    /// The withdrawn versions.
    pub fn withdrawn(&self) -> impl Iterator<Item = VersionId> + '_ {
        self.withdrawn
            .iter()
            .enumerate()
            .filter(|(_, w)| w.is_some())
            .map(|(i, _)| VersionId(i as u16))
    }

    /// Logs what could not be applied (once per snapshot built).
    pub fn log_ignored(&self) {
        for why in &self.ignored {
            log::warn!("runtime state: {why}; kept for a later rules generation");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_as_json_and_rejects_unknown_keys() {
        let mut state = RuntimeState::default();
        state.rollouts.insert(
            "checkout-v2".into(),
            RolloutNow {
                phase: Phase::RolledBack,
                step: 1,
                weight: 0,
                fingerprint: 7,
            },
        );
        state.override_version = Some(Override {
            version: "stable".into(),
            reason: "incident".into(),
        });
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<RuntimeState>(&text).unwrap(), state);
        assert_eq!(
            serde_json::from_str::<RuntimeState>("{}").unwrap(),
            RuntimeState::default()
        );
        assert!(serde_json::from_str::<RuntimeState>("{\"withdrawn_typo\": []}").is_err());
    }
}
