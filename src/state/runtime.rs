//! Runtime state: what graygate is told while it runs, beside what the rules files say.
//!
//! A [`RuntimeState`] holds names (rollout weights, withdrawn versions, an emergency
//! override), never indices, because a rules reload renumbers versions and rules. When a
//! snapshot is built the state is resolved against that generation's names into an
//! [`AppliedState`], the form a request reads; a name the generation does not know is left
//! unapplied (and listed in [`AppliedState::ignored`]) but kept, so it applies again once the
//! rules know it. The rollouts, the override API and the fleet write the state through
//! `SnapshotStore::update_runtime`; persistence (a state directory, Redis) stores this value.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::rules::model::RuleSet;

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
    /// The current weight (percent on the rollout's version) of each rollout, by name.
    #[serde(default)]
    pub rollout_weights: BTreeMap<String, u8>,
    /// Versions withdrawn after a rollback: their users are served by the baseline.
    #[serde(default)]
    pub withdrawn: BTreeSet<String>,
    /// The emergency override, when one is set.
    #[serde(default)]
    pub override_version: Option<Override>,
}

/// The runtime state resolved against one generation: what a request reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// `withdrawn[v]`: version `v` is withdrawn (indexed by [`VersionId`]).
    withdrawn: Vec<bool>,
    /// The override's version, when one is set and the generation knows it.
    pub override_version: Option<VersionId>,
    /// The override's reason.
    pub override_reason: Option<String>,
    /// Rollout weights by rollout name (rollouts are matched by name when they compile).
    pub rollout_weights: BTreeMap<String, u8>,
    /// What could not be applied to this generation, in words.
    pub ignored: Vec<String>,
}

impl RuntimeState {
    /// Resolves the state against `rules`' names.
    pub fn apply(&self, rules: &RuleSet) -> AppliedState {
        let mut applied = AppliedState {
            withdrawn: vec![false; rules.versions.len()],
            rollout_weights: self.rollout_weights.clone(),
            ..AppliedState::default()
        };
        for name in &self.withdrawn {
            match rules.version_id(name) {
                Some(id) => applied.withdrawn[id.index()] = true,
                None => applied
                    .ignored
                    .push(format!("withdrawn version \"{name}\" is not in the rules")),
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
    /// Whether `version` is withdrawn.
    pub fn is_withdrawn(&self, version: VersionId) -> bool {
        self.withdrawn
            .get(version.index())
            .copied()
            .unwrap_or(false)
    }

    /// The withdrawn versions.
    pub fn withdrawn(&self) -> impl Iterator<Item = VersionId> + '_ {
        self.withdrawn
            .iter()
            .enumerate()
            .filter(|(_, w)| **w)
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
        state.rollout_weights.insert("checkout-v2".into(), 25);
        state.withdrawn.insert("canary".into());
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
