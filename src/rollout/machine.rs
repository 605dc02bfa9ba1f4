//! A rollout's state machine: where it stands, how long its step has run, and what a check or
//! an operator's action moves it to.
//!
//! ```text
//!              check passed and step lasted          last step (or a 100 step) entered
//!   progressing(i) ───────────────────────► progressing(i+1) ─────────────────► completed
//!      │  ▲    │ failure_limit failed checks
//!      │  │    ├─ on_failure: rollback ─► rolled_back (weight 0, version withdrawn)
//!  pause  resume └─ on_failure: pause ───► paused
//!      ▼  │
//!     paused            rollback: any state but rolled_back ─► rolled_back
//!                       retry: rolled_back or paused ─► progressing(0)
//!                       promote: progressing or paused ─► next step (or completed)
//! ```
//!
//! Durations run on the monotonic clock (an `Instant` the caller passes), so a wall-clock jump
//! neither skips nor repeats a step; wall time is only recorded for display (`since`, events).
//! The step's clock runs only while `progressing`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::verdict::{CheckResult, Verdict};
use crate::rules::model::{OnFailure, Phase, Rollout, RolloutNow};
use crate::stats::unix_ms;

/// Transitions kept per rollout (`GET /-/rollouts/NAME/events`).
pub const EVENTS_KEPT: usize = 100;
/// Checks kept per rollout (`GET /-/rollouts`).
pub const CHECKS_KEPT: usize = 10;

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop advancing.
    Pause,
    /// Advance again.
    Resume,
    /// The next step now.
    Promote,
    /// Weight 0 and the version withdrawn.
    Rollback,
    /// Start again from step 1.
    Retry,
}

impl Action {
    /// The action named by the API's path segment.
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "rollback" => Action::Rollback,
            "retry" => Action::Retry,
            _ => return None,
        })
    }

    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Retry => "retry",
        }
    }
}

/// One transition, as logged and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall time, Unix milliseconds.
    pub at_unix_ms: u64,
    /// The state before.
    pub from: Phase,
    /// The state after.
    pub to: Phase,
    /// The step before (1-based).
    pub from_step: usize,
    /// The step after (1-based).
    pub to_step: usize,
    /// The weight after.
    pub weight: u8,
    /// Why: a check, an operator's action, a start.
    pub reason: String,
    /// The check behind it, when a check caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Verdict>,
}

/// A check as kept for `GET /-/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// Wall time, Unix milliseconds.
    pub at_unix_ms: u64,
    /// The step judged (1-based).
    pub step: usize,
    /// The verdict and its figures.
    pub verdict: Verdict,
}

/// Where one rollout stands, with the clocks that move it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its state.
    pub phase: Phase,
    /// The index of the current step.
    pub step: usize,
    /// The definition this record follows ([`Rollout::fingerprint`]).
    pub fingerprint: u64,
    /// Time the current step ran before `running_since`.
    elapsed: Duration,
    /// When the step's clock last started; `None` while it is stopped.
    running_since: Option<Instant>,
    /// Consecutive failed checks.
    pub failures: u32,
    /// The last check of the current step passed.
    pub last_passed: bool,
    /// When the next check is due.
    pub next_check: Instant,
    /// Wall time of the last transition, Unix milliseconds.
    pub since_unix_ms: u64,
    /// The last checks, newest last.
    pub checks: VecDeque<CheckRecord>,
    /// The last transitions, newest last.
    pub events: VecDeque<Event>,
}

/// A record as stored in `state.dir` (or Redis): durations, not instants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub phase: Phase,
    pub step: usize,
    pub fingerprint: u64,
    /// Time the current step has run, in milliseconds.
    pub step_elapsed_ms: u64,
    pub failures: u32,
    pub last_passed: bool,
    pub since_unix_ms: u64,
    #[serde(default)]
    pub checks: VecDeque<CheckRecord>,
    #[serde(default)]
    pub events: VecDeque<Event>,
}

impl Record {
    /// A rollout starting (or starting again) at step 1 in `phase`, for `reason`.
    pub fn start(rollout: &Rollout, phase: Phase, reason: &str, now: Instant) -> Record {
        let mut record = Record {
            phase,
            step: 0,
            fingerprint: rollout.fingerprint,
            elapsed: Duration::ZERO,
            running_since: (phase == Phase::Progressing).then_some(now),
            failures: 0,
            last_passed: false,
            next_check: now + rollout.analysis.interval,
            since_unix_ms: unix_ms(),
            checks: VecDeque::new(),
            events: VecDeque::new(),
        };
        record.push_event(rollout, phase, 0, reason.into(), None);
        record
    }

    /// A stored record resumed at `now`: the step keeps the time it had run.
    pub fn resume(stored: Stored, rollout: &Rollout, now: Instant) -> Record {
        let step = stored.step.min(rollout.steps.len() - 1);
        Record {
            phase: stored.phase,
            step,
            fingerprint: stored.fingerprint,
            elapsed: Duration::from_millis(stored.step_elapsed_ms),
            running_since: (stored.phase == Phase::Progressing).then_some(now),
            failures: stored.failures,
            last_passed: stored.last_passed,
            next_check: now + rollout.analysis.interval,
            since_unix_ms: stored.since_unix_ms,
            checks: stored.checks,
            events: stored.events,
        }
    }

    /// The record as stored, its step's time measured at `now`.
    pub fn stored(&self, now: Instant) -> Stored {
        Stored {
            phase: self.phase,
            step: self.step,
            fingerprint: self.fingerprint,
            step_elapsed_ms: self.step_elapsed(now).as_millis() as u64,
            failures: self.failures,
            last_passed: self.last_passed,
            since_unix_ms: self.since_unix_ms,
            checks: self.checks.clone(),
            events: self.events.clone(),
        }
    }

    /// How long the current step has run (progressing time only).
    pub fn step_elapsed(&self, now: Instant) -> Duration {
        self.elapsed
            + self
                .running_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// The weight the rule serves now.
    pub fn weight(&self, rollout: &Rollout) -> u8 {
        match self.phase {
            Phase::RolledBack => 0,
            _ => rollout.steps[self.step.min(rollout.steps.len() - 1)],
        }
    }

    /// What a decision reads.
    pub fn now(&self, rollout: &Rollout) -> RolloutNow {
        RolloutNow {
            phase: self.phase,
            step: self.step as u8,
            weight: self.weight(rollout),
            fingerprint: self.fingerprint,
        }
    }

    /// Records one check's verdict (of a progressing rollout) and makes the transition it
    /// calls for, if any.
    pub fn check(&mut self, rollout: &Rollout, verdict: Verdict, now: Instant) -> Option<&Event> {
        self.next_check = now + rollout.analysis.interval;
        self.checks.push_back(CheckRecord {
            at_unix_ms: unix_ms(),
            step: self.step + 1,
            verdict: verdict.clone(),
        });
        while self.checks.len() > CHECKS_KEPT {
            self.checks.pop_front();
        }
        if self.phase != Phase::Progressing {
            return None;
        }
        match verdict.result {
            CheckResult::Pass => {
                self.failures = 0;
                self.last_passed = true;
            }
            CheckResult::Inconclusive => self.last_passed = false,
            CheckResult::Fail => {
                self.failures += 1;
                self.last_passed = false;
                if self.failures >= rollout.analysis.failure_limit {
                    let reason = format!(
                        "{} consecutive failed checks: {}",
                        self.failures, verdict.why
                    );
                    let to = match rollout.on_failure {
                        OnFailure::Rollback => Phase::RolledBack,
                        OnFailure::Pause => Phase::Paused,
                    };
                    self.enter(rollout, to, self.step, false, now, reason, Some(verdict));
                    return self.events.back();
                }
                return None;
            }
        }
        if self.last_passed && self.step_elapsed(now) >= rollout.step_duration {
            let reason = format!(
                "step {} lasted {} and its last check passed",
                self.step + 1,
                humantime::format_duration(rollout.step_duration)
            );
            self.advance(rollout, now, reason, Some(verdict));
            return self.events.back();
        }
        None
    }

    /// Applies an operator's action; an action the state does not allow is an error in words.
    pub fn act(
        &mut self,
        rollout: &Rollout,
        action: Action,
        now: Instant,
    ) -> Result<&Event, String> {
        let reason = format!("operator: {}", action.as_str());
        let refused = |phase: Phase| {
            Err(format!(
                "cannot {} a rollout that is {}",
                action.as_str(),
                phase.as_str()
            ))
        };
        match (action, self.phase) {
            (Action::Pause, Phase::Progressing) => {
                self.enter(rollout, Phase::Paused, self.step, false, now, reason, None)
            }
            (Action::Resume, Phase::Paused) => self.enter(
                rollout,
                Phase::Progressing,
                self.step,
                false,
                now,
                reason,
                None,
            ),
            (Action::Promote, Phase::Progressing | Phase::Paused) => {
                self.advance(rollout, now, reason, None)
            }
            (Action::Rollback, Phase::Progressing | Phase::Paused | Phase::Completed) => self
                .enter(
                    rollout,
                    Phase::RolledBack,
                    self.step,
                    false,
                    now,
                    reason,
                    None,
                ),
            (Action::Retry, Phase::RolledBack | Phase::Paused) => {
                self.enter(rollout, Phase::Progressing, 0, true, now, reason, None)
            }
            (_, phase) => return refused(phase),
        }
        Ok(self.events.back().expect("a transition was recorded"))
    }

    /// The next step: `completed` when it is the last one, or a 100 step (no baseline traffic
    /// is left to judge against), or when the last step is already reached.
    fn advance(&mut self, rollout: &Rollout, now: Instant, reason: String, check: Option<Verdict>) {
        let last = rollout.steps.len() - 1;
        let next = (self.step + 1).min(last);
        let phase = if self.step == last || rollout.steps[next] == 100 {
            Phase::Completed
        } else {
            // Promoting a paused rollout moves its step, not its state.
            self.phase
        };
        self.enter(rollout, phase, next, true, now, reason, check);
    }

    /// Moves to `phase` at `step` and records the event; `restart` (a new step, a new run)
    /// resets the step's clock and its failures.
    #[allow(clippy::too_many_arguments)]
    fn enter(
        &mut self,
        rollout: &Rollout,
        phase: Phase,
        step: usize,
        restart: bool,
        now: Instant,
        reason: String,
        check: Option<Verdict>,
    ) {
        let from = (self.phase, self.step);
        // Freeze the clock, then restart it on a new step or a new run.
        self.elapsed = self.step_elapsed(now);
        if restart {
            self.elapsed = Duration::ZERO;
            self.failures = 0;
            self.last_passed = false;
        }
        if phase == Phase::Progressing && from.0 != Phase::Progressing {
            self.failures = 0;
        }
        self.running_since = (phase == Phase::Progressing).then_some(now);
        self.phase = phase;
        self.step = step;
        self.since_unix_ms = unix_ms();
        self.next_check = now + rollout.analysis.interval;
        self.push_event(rollout, from.0, from.1, reason, check);
    }

    fn push_event(
        &mut self,
        rollout: &Rollout,
        from: Phase,
        from_step: usize,
        reason: String,
        check: Option<Verdict>,
    ) {
        self.events.push_back(Event {
            at_unix_ms: self.since_unix_ms,
            from,
            to: self.phase,
            from_step: from_step + 1,
            to_step: self.step + 1,
            weight: self.weight(rollout),
            reason,
            check,
        });
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::verdict::ArmFigures;
    use crate::rules::testing::{model, HEAD};

    fn rollout(steps: &str, on_failure: &str) -> Rollout {
        model(&format!(
            "{HEAD}rollouts:\n  ramp: {{ version: canary, steps: {steps}, step_duration: 2m, on_failure: {on_failure}, analysis: {{ interval: 10s, failure_limit: 2 }} }}\nrules:\n  - {{ name: r, rollout: ramp }}\n"
        ))
        .rules
        .rollouts
        .remove(0)
    }

    fn verdict(result: CheckResult) -> Verdict {
        Verdict {
            result,
            why: result.as_str().into(),
            version: ArmFigures::default(),
            baseline: ArmFigures::default(),
        }
    }

    /// A fake clock: `t(s)` is the start plus `s` seconds.
    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |s| start + Duration::from_secs(s)
    }

    #[test]
    fn a_healthy_rollout_walks_every_step_to_completed() {
        let rollout = rollout("[5, 25, 50, 100]", "rollback");
        let t = clock();
        let mut record = Record::start(&rollout, Phase::Progressing, "start", t(0));
        assert_eq!(record.weight(&rollout), 5);
        // Passing checks before the step has lasted 2 minutes do not advance it.
        for s in (10..120).step_by(10) {
            assert!(record
                .check(&rollout, verdict(CheckResult::Pass), t(s))
                .is_none());
        }
        let event = record
            .check(&rollout, verdict(CheckResult::Pass), t(120))
            .cloned()
            .expect("advances at 2 minutes");
        assert_eq!((event.from_step, event.to_step, event.weight), (1, 2, 25));
        // Lasted, but the last check was inconclusive: no advance until a pass.
        assert!(record
            .check(&rollout, verdict(CheckResult::Inconclusive), t(240))
            .is_none());
        assert_eq!(record.step, 1);
        assert!(record
            .check(&rollout, verdict(CheckResult::Pass), t(250))
            .is_some());
        assert_eq!(record.weight(&rollout), 50);
        // Passing step 3 enters the 100 step: completed at once.
        let event = record
            .check(&rollout, verdict(CheckResult::Pass), t(370))
            .cloned()
            .unwrap();
        assert_eq!((event.to, event.weight), (Phase::Completed, 100));
        assert!(record
            .check(&rollout, verdict(CheckResult::Fail), t(380))
            .is_none());
        assert_eq!(record.phase, Phase::Completed);
    }

    #[test]
    fn a_last_step_below_100_completes_after_its_duration() {
        let rollout = rollout("[10, 40]", "rollback");
        let t = clock();
        let mut record = Record::start(&rollout, Phase::Progressing, "start", t(0));
        record.check(&rollout, verdict(CheckResult::Pass), t(120));
        assert_eq!(
            (record.phase, record.weight(&rollout)),
            (Phase::Progressing, 40)
        );
        record.check(&rollout, verdict(CheckResult::Pass), t(200));
        assert_eq!(record.phase, Phase::Progressing);
        record.check(&rollout, verdict(CheckResult::Pass), t(240));
        assert_eq!(
            (record.phase, record.weight(&rollout)),
            (Phase::Completed, 40)
        );
    }

    #[test]
    fn consecutive_failures_roll_back_or_pause() {
        let rollout_back = rollout("[5, 50]", "rollback");
        let t = clock();
        let mut record = Record::start(&rollout_back, Phase::Progressing, "start", t(0));
        // A pass in between resets the count; inconclusive neither counts nor resets.
        record.check(&rollout_back, verdict(CheckResult::Fail), t(10));
        record.check(&rollout_back, verdict(CheckResult::Pass), t(20));
        record.check(&rollout_back, verdict(CheckResult::Fail), t(30));
        record.check(&rollout_back, verdict(CheckResult::Inconclusive), t(40));
        let event = record
            .check(&rollout_back, verdict(CheckResult::Fail), t(50))
            .cloned()
            .expect("the second consecutive failure");
        assert_eq!((event.to, event.weight), (Phase::RolledBack, 0));
        assert!(event.check.is_some());
        assert_eq!(record.weight(&rollout_back), 0);

        let rollout_pause = rollout("[5, 50]", "pause");
        let mut record = Record::start(&rollout_pause, Phase::Progressing, "start", t(0));
        record.check(&rollout_pause, verdict(CheckResult::Fail), t(10));
        record.check(&rollout_pause, verdict(CheckResult::Fail), t(20));
        assert_eq!(
            (record.phase, record.weight(&rollout_pause)),
            (Phase::Paused, 5)
        );
    }

    #[test]
    fn operators_pause_resume_promote_roll_back_and_retry() {
        let rollout = rollout("[5, 25, 100]", "rollback");
        let t = clock();
        let mut record = Record::start(&rollout, Phase::Progressing, "start", t(0));
        assert!(record.act(&rollout, Action::Pause, t(60)).is_ok());
        // Paused time does not count towards the step.
        assert_eq!(record.step_elapsed(t(600)), Duration::from_secs(60));
        assert_eq!(
            record.act(&rollout, Action::Pause, t(600)).unwrap_err(),
            "cannot pause a rollout that is paused"
        );
        record.act(&rollout, Action::Resume, t(600)).unwrap();
        assert_eq!(record.step_elapsed(t(660)), Duration::from_secs(120));
        record.act(&rollout, Action::Promote, t(660)).unwrap();
        assert_eq!((record.step, record.weight(&rollout)), (1, 25));
        assert_eq!(record.step_elapsed(t(660)), Duration::ZERO);
        record.act(&rollout, Action::Rollback, t(700)).unwrap();
        assert_eq!(
            (record.phase, record.weight(&rollout)),
            (Phase::RolledBack, 0)
        );
        assert!(record.act(&rollout, Action::Promote, t(710)).is_err());
        record.act(&rollout, Action::Retry, t(720)).unwrap();
        assert_eq!(
            (record.phase, record.step, record.weight(&rollout)),
            (Phase::Progressing, 0, 5)
        );
        record.act(&rollout, Action::Promote, t(730)).unwrap();
        let event = record.act(&rollout, Action::Promote, t(740)).unwrap();
        assert_eq!((event.to, event.weight), (Phase::Completed, 100));
        assert_eq!(record.events.len(), 8, "a start and seven actions");
    }

    #[test]
    fn a_stored_record_resumes_its_step_with_its_elapsed_time() {
        let rollout = rollout("[5, 25, 100]", "rollback");
        let t = clock();
        let mut record = Record::start(&rollout, Phase::Progressing, "start", t(0));
        record.act(&rollout, Action::Promote, t(10)).unwrap();
        let stored = record.stored(t(70));
        assert_eq!(stored.step_elapsed_ms, 60_000);
        let text = serde_json::to_string(&stored).unwrap();
        let back: Stored = serde_json::from_str(&text).unwrap();
        // Resumed at a later instant (another process): 60 s of step 2 already run.
        let later = Instant::now() + Duration::from_secs(3600);
        let resumed = Record::resume(back, &rollout, later);
        assert_eq!(resumed.step, 1);
        assert_eq!(
            resumed.step_elapsed(later + Duration::from_secs(5)),
            Duration::from_secs(65)
        );
        assert_eq!(resumed.events, record.events);
    }
}
