//! The `rollouts` section (SPEC section 12): known versions, steps increasing within 1..=100,
//! analysis settings in range, goals that exist; and, once the rules are compiled, each
//! rollout used by exactly one rule (`rollout: NAME`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use xxhash_rust::xxh64::Xxh64;

use super::{is_rule_name, split_key, At, Compiler};
use crate::rules::model::{
    Analysis, Goal, GoalBound, LatencyBound, OnFailure, RateBound, Rollout, RolloutId, Version,
};
use crate::rules::raw::{RawAnalysis, RawRollout};
use crate::stats::DEFAULT_HISTORY;

/// Defaults of `analysis`, the values of SPEC section 12's example.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
const DEFAULT_MIN_REQUESTS: u64 = 200;
const DEFAULT_FAILURE_LIMIT: u32 = 3;
const DEFAULT_ERROR_RATE: RateBound = RateBound {
    ratio: 2.0,
    margin: 0.01,
};

/// The shortest interval and step: the figures close once a second.
const SHORTEST: Duration = Duration::from_secs(1);

/// A rule that uses a rollout, as the rules section found it.
pub(super) struct RolloutUse {
    pub rollout: RolloutId,
    pub rule: usize,
    pub at: At,
}

impl Compiler {
    /// The rollouts in the order written; their names are then known to `rollout:` actions.
    pub(super) fn rollouts(
        &mut self,
        raw: IndexMap<String, (At, serde_yaml::Value)>,
        versions: &[Version],
        default: Option<crate::facts::VersionId>,
        goals: &[Goal],
    ) -> Vec<Rollout> {
        let mut rollouts = Vec::new();
        for (name, (at, value)) in raw {
            let what = format!("rollout \"{name}\"");
            if !is_rule_name(&name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-', '_' and '.'"),
                );
            }
            let Some(r) = self.parse::<RawRollout>(&at, &what, value) else {
                continue;
            };
            if let Some(rollout) = self.rollout(&at, &what, &name, r, versions, default, goals) {
                self.rollout_names.insert(name, rollouts.len());
                rollouts.push(rollout);
            }
        }
        let mut by_version: HashMap<_, &str> = HashMap::new();
        for rollout in &rollouts {
            if let Some(first) = by_version.insert(rollout.version, &rollout.name) {
                let at = self.rollout_at(&rollout.name);
                let version = &versions[rollout.version.index()].name;
                self.error(
                    &at,
                    format!("rollout \"{}\": version \"{version}\" is already rolled out by rollout \"{first}\"", rollout.name),
                );
            }
        }
        rollouts
    }

    /// Records which rule each rollout serves: exactly one each.
    pub(super) fn link_rollouts(&mut self, rollouts: &mut [Rollout], uses: Vec<RolloutUse>) {
        let mut used: Vec<Option<At>> = vec![None; rollouts.len()];
        for RolloutUse { rollout, rule, at } in uses {
            let name = rollouts[rollout].name.clone();
            if let Some(first) = &used[rollout] {
                let msg = format!(
                    "rollout \"{name}\" is used by a second rule (first at {}): a rollout is judged on its one rule's traffic",
                    self.describe(first)
                );
                self.error(&at, msg);
            } else {
                used[rollout] = Some(at);
                rollouts[rollout].rule = rule;
            }
        }
        for (rollout, used) in rollouts.iter().zip(used) {
            if used.is_none() {
                let at = self.rollout_at(&rollout.name);
                self.error(
                    &at,
                    format!(
                        "rollout \"{}\" is used by no rule (add a rule with `rollout: {}`)",
                        rollout.name, rollout.name
                    ),
                );
            }
        }
    }

    /// Where the rollout `name` was defined (for errors found after it compiled).
    fn rollout_at(&self, name: &str) -> At {
        self.rollout_defined
            .get(name)
            .cloned()
            .unwrap_or_else(|| At::top(0, "rollouts"))
    }

    #[allow(clippy::too_many_arguments)]
    fn rollout(
        &mut self,
        at: &At,
        what: &str,
        name: &str,
        raw: RawRollout,
        versions: &[Version],
        default: Option<crate::facts::VersionId>,
        goals: &[Goal],
    ) -> Option<Rollout> {
        self.rollout_defined.insert(name.to_string(), at.clone());
        let RawRollout {
            version,
            baseline,
            by,
            steps,
            step_duration,
            analysis,
            on_failure,
        } = raw;
        let errors_before = self.diags.errors().count();
        let version_id = self.version_ref(&at.child("version"), what, &version);
        let baseline_id = match &baseline {
            Some(baseline) => self.version_ref(&at.child("baseline"), what, baseline),
            None => default,
        };
        if let (Some(v), Some(b)) = (version_id, baseline_id) {
            if v == b {
                self.error(
                    at,
                    format!("{what}: version and baseline are both \"{version}\""),
                );
            }
            if versions[v.index()].restricted {
                self.error(
                    &at.child("version"),
                    format!("{what}: version \"{version}\" is restricted (internal users only), so the rollout's users could not get it"),
                );
            }
        }
        let by_text = by.as_deref().unwrap_or("uid");
        let by = split_key(by_text);
        if by.is_none() {
            self.error(
                &at.child("by"),
                format!("{what}: by \"{by_text}\" is not uid, client_ip, random, cookie:NAME or header:NAME"),
            );
        }
        let steps = self.steps(&at.child("steps"), what, &steps);
        if step_duration.0 < SHORTEST {
            self.error(
                &at.child("step_duration"),
                format!("{what}: step_duration must be at least 1s"),
            );
        }
        let analysis = self.analysis(&at.child("analysis"), what, analysis, goals);
        let on_failure = match on_failure.as_deref() {
            None | Some("rollback") => Some(OnFailure::Rollback),
            Some("pause") => Some(OnFailure::Pause),
            Some(other) => {
                self.error(
                    &at.child("on_failure"),
                    format!("{what}: on_failure \"{other}\" is neither rollback nor pause"),
                );
                None
            }
        };
        if self.diags.errors().count() != errors_before {
            return None;
        }
        let (version, baseline) = (version_id?, baseline_id?);
        let steps = steps?;
        let mut hash = Xxh64::new(0);
        hash.update(versions[version.index()].name.as_bytes());
        hash.update(&[0]);
        hash.update(&steps);
        Some(Rollout {
            name: Arc::from(name),
            version,
            baseline,
            by: by?,
            salt: name.as_bytes().into(),
            steps,
            step_duration: step_duration.0,
            analysis: analysis?,
            on_failure: on_failure?,
            rule: usize::MAX,
            fingerprint: hash.digest(),
        })
    }

    fn steps(&mut self, at: &At, what: &str, steps: &[i64]) -> Option<Vec<u8>> {
        if steps.is_empty() {
            self.error(at, format!("{what}: steps are empty"));
            return None;
        }
        if let Some(bad) = steps.iter().find(|s| !(1..=100).contains(*s)) {
            self.error(
                at,
                format!("{what}: step {bad} is not a percentage between 1 and 100"),
            );
            return None;
        }
        if let Some(pair) = steps.windows(2).find(|pair| pair[0] >= pair[1]) {
            self.error(
                at,
                format!(
                    "{what}: steps must increase ({} is followed by {})",
                    pair[0], pair[1]
                ),
            );
            return None;
        }
        Some(steps.iter().map(|s| *s as u8).collect())
    }

    fn analysis(
        &mut self,
        at: &At,
        what: &str,
        raw: RawAnalysis,
        goals: &[Goal],
    ) -> Option<Analysis> {
        let RawAnalysis {
            interval,
            window,
            min_requests,
            max_error_rate,
            max_p99_latency,
            goals: goal_bounds,
            failure_limit,
        } = raw;
        let errors_before = self.diags.errors().count();
        let interval = interval.map_or(DEFAULT_INTERVAL, |d| d.0);
        let window = window.map_or(DEFAULT_WINDOW, |d| d.0);
        if interval < SHORTEST {
            self.error(
                &at.child("interval"),
                format!("{what}: analysis interval must be at least 1s"),
            );
        }
        if window < interval || window > DEFAULT_HISTORY {
            self.error(
                &at.child("window"),
                format!(
                    "{what}: analysis window must be between the interval ({}) and {}",
                    humantime::format_duration(interval),
                    humantime::format_duration(DEFAULT_HISTORY)
                ),
            );
        }
        let min_requests = min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
        if !(1..=100_000_000).contains(&min_requests) {
            self.error(
                &at.child("min_requests"),
                format!("{what}: min_requests must be between 1 and 100000000"),
            );
        }
        let failure_limit = failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT);
        if !(1..=1000).contains(&failure_limit) {
            self.error(
                &at.child("failure_limit"),
                format!("{what}: failure_limit must be between 1 and 1000"),
            );
        }
        let max_error_rate = match max_error_rate {
            None => DEFAULT_ERROR_RATE,
            Some(bound) => {
                let at = at.child("max_error_rate");
                self.ratio(&at, what, "max_error_rate", bound.ratio);
                if !(0.0..=1.0).contains(&bound.margin) {
                    self.error(
                        &at,
                        format!("{what}: max_error_rate margin must be a rate between 0 and 1"),
                    );
                }
                RateBound {
                    ratio: bound.ratio,
                    margin: bound.margin,
                }
            }
        };
        let max_p99_latency = max_p99_latency.map(|bound| {
            let at = at.child("max_p99_latency");
            self.ratio(&at, what, "max_p99_latency", bound.ratio);
            let margin = bound.margin.map_or(Duration::ZERO, |d| d.0);
            if margin > Duration::from_secs(3600) {
                self.error(
                    &at,
                    format!("{what}: max_p99_latency margin must be at most 1h"),
                );
            }
            LatencyBound {
                ratio: bound.ratio,
                margin,
            }
        });
        let mut bounds = Vec::new();
        for (goal, bound) in goal_bounds {
            let goal_at = at.child("goals").child(&goal);
            match goals.iter().find(|g| *g.name == *goal) {
                None => self.error(
                    &goal_at,
                    format!("{what}: unknown goal \"{goal}\" (goals are defined in `goals:`)"),
                ),
                Some(known) => {
                    if !(bound.min_ratio > 0.0 && bound.min_ratio <= 10.0) {
                        self.error(
                            &goal_at,
                            format!(
                                "{what}: goal \"{goal}\" min_ratio must be above 0 and at most 10"
                            ),
                        );
                    }
                    bounds.push(GoalBound {
                        goal: known.name.clone(),
                        min_ratio: bound.min_ratio,
                    });
                }
            }
        }
        (self.diags.errors().count() == errors_before).then_some(Analysis {
            interval,
            window,
            min_requests,
            max_error_rate,
            max_p99_latency,
            goals: bounds,
            failure_limit,
        })
    }

    fn ratio(&mut self, at: &At, what: &str, key: &str, ratio: f64) {
        if !(1.0..=100.0).contains(&ratio) {
            self.error(
                at,
                format!("{what}: {key} ratio {ratio} must be between 1 and 100 (the version against the baseline)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::rules::model::{Action, OnFailure};
    use crate::rules::testing::{diagnostics, model, HEAD};

    #[test]
    fn a_rollout_compiles_with_the_defaults() {
        let model = model(&format!(
            "{HEAD}rollouts:\n  ramp: {{ version: canary, steps: [5, 25, 100], step_duration: 2m }}\nrules:\n  - {{ name: r, rollout: ramp }}\n"
        ));
        let rollout = &model.rules.rollouts[0];
        assert_eq!(&*rollout.name, "ramp");
        assert_eq!(rollout.version, model.rules.version_id("canary").unwrap());
        assert_eq!(rollout.baseline, model.rules.default);
        assert_eq!(rollout.steps, vec![5, 25, 100]);
        assert_eq!(rollout.rule, 0);
        assert_eq!(rollout.analysis.interval, Duration::from_secs(10));
        assert_eq!(rollout.analysis.window, Duration::from_secs(60));
        assert_eq!(rollout.analysis.min_requests, 200);
        assert_eq!(rollout.analysis.failure_limit, 3);
        assert_eq!(rollout.on_failure, OnFailure::Rollback);
        assert!(matches!(model.rules.rules[0].action, Action::Rollout(0)));
    }

    #[test]
    fn the_fingerprint_follows_version_and_steps_only() {
        let fingerprint = |rollout: &str| {
            model(&format!(
                "versions: {{ stable: {{}}, canary: {{}}, beta: {{}} }}\ndefault: stable\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: {{ stable: {{ peers: [\"127.0.0.1:1\"] }} }}\nrollouts:\n  ramp: {rollout}\nrules:\n  - {{ name: r, rollout: ramp }}\n"
            ))
            .rules
            .rollouts[0]
                .fingerprint
        };
        let base = fingerprint("{ version: canary, steps: [5, 50], step_duration: 2m }");
        assert_eq!(
            base,
            fingerprint("{ version: canary, steps: [5, 50], step_duration: 9m, analysis: { interval: 2s } }")
        );
        assert_ne!(
            base,
            fingerprint("{ version: canary, steps: [5, 60], step_duration: 2m }")
        );
        assert_ne!(
            base,
            fingerprint("{ version: beta, steps: [5, 50], step_duration: 2m }")
        );
    }

    #[test]
    fn bad_rollouts_are_errors_with_lines() {
        let rules = "rules:\n  - { name: a, rollout: ramp }\n  - { name: b, rollout: ramp }\n  - { name: c, rollout: nope }\n";
        assert_eq!(
            diagnostics(&format!(
                "{HEAD}goals:\n  - {{ name: signup, status: 2xx }}\nrollouts:\n  ramp: {{ version: canary, steps: [5, 50], step_duration: 1m }}\n  idle: {{ version: canary, steps: [10], step_duration: 1m }}\n  bad: {{ version: gamma, baseline: stable, by: device, steps: [50, 20, 0], step_duration: 10ms, on_failure: shrug, analysis: {{ interval: 30s, window: 10s, min_requests: 0, failure_limit: 0, max_error_rate: {{ ratio: 0.5, margin: 2 }}, max_p99_latency: {{ ratio: 1.5, margin: 2h }}, goals: {{ signup: {{ min_ratio: 0 }}, signin: {{ min_ratio: 1 }} }} }} }}\n  self: {{ version: stable, steps: [5], step_duration: 1m }}\n{rules}"
            )),
            vec![
                "rules.yaml:11: error: rollout \"idle\": version \"canary\" is already rolled out by rollout \"ramp\"",
                "rules.yaml:11: error: rollout \"idle\" is used by no rule (add a rule with `rollout: idle`)",
                "rules.yaml:12: error: rollout \"bad\": unknown version \"gamma\"",
                "rules.yaml:12: error: rollout \"bad\": by \"device\" is not uid, client_ip, random, cookie:NAME or header:NAME",
                "rules.yaml:12: error: rollout \"bad\": step 0 is not a percentage between 1 and 100",
                "rules.yaml:12: error: rollout \"bad\": step_duration must be at least 1s",
                "rules.yaml:12: error: rollout \"bad\": analysis window must be between the interval (30s) and 10m",
                "rules.yaml:12: error: rollout \"bad\": min_requests must be between 1 and 100000000",
                "rules.yaml:12: error: rollout \"bad\": failure_limit must be between 1 and 1000",
                "rules.yaml:12: error: rollout \"bad\": max_error_rate ratio 0.5 must be between 1 and 100 (the version against the baseline)",
                "rules.yaml:12: error: rollout \"bad\": max_error_rate margin must be a rate between 0 and 1",
                "rules.yaml:12: error: rollout \"bad\": max_p99_latency margin must be at most 1h",
                "rules.yaml:12: error: rollout \"bad\": goal \"signup\" min_ratio must be above 0 and at most 10",
                "rules.yaml:12: error: rollout \"bad\": unknown goal \"signin\" (goals are defined in `goals:`)",
                "rules.yaml:12: error: rollout \"bad\": on_failure \"shrug\" is neither rollback nor pause",
                "rules.yaml:13: error: rollout \"self\": version and baseline are both \"stable\"",
                "rules.yaml:16: error: rollout \"ramp\" is used by a second rule (first at rules.yaml:15): a rollout is judged on its one rule's traffic",
                "rules.yaml:17: error: rule \"c\": unknown rollout \"nope\"",
            ]
        );
        assert_eq!(
            diagnostics(&format!(
                "{HEAD}rollouts:\n  ramp: {{ version: canary, steps: [5, 5], step_duration: 1m }}\nrules:\n  - {{ name: a, rollout: ramp }}\n"
            )),
            vec!["rules.yaml:8: error: rollout \"ramp\": steps must increase (5 is followed by 5)"]
        );
    }
}
