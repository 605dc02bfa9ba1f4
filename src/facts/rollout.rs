//! Where a rollout stands: the runtime fact a `rollout:` rule's decision reads (its weight),
//! set by the rollouts' state machine and handed to each request through the snapshot.

use serde::{Deserialize, Serialize};

/// The state of a rollout (SPEC section 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// At a step, judged every interval, advancing when a step has lasted and passed.
    Progressing,
    /// At a step, judged, not advancing (an operator's pause, or `on_failure: pause`).
    Paused,
    /// At its last step for good.
    Completed,
    /// At weight 0, its version withdrawn.
    RolledBack,
}

impl Phase {
    /// Every phase, in the order the metrics list them.
    pub const ALL: [Phase; 4] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Completed,
        Phase::RolledBack,
    ];

    /// The `state` label and the word in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled_back",
        }
    }
}

/// Where a rollout stands now: what a decision reads (runtime state, not rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutNow {
    /// Its state.
    pub phase: Phase,
    /// The index of the current step in `steps`.
    pub step: u8,
    /// Percent of the rule's traffic on the version (0 once rolled back).
    pub weight: u8,
    /// The rollout definition this applies to ([`Rollout::fingerprint`]).
    pub fingerprint: u64,
}
