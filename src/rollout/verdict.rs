//! One check: a rollout's version judged against its baseline over the analysis window.
//!
//! The comparison is relative: the version fails a bound when its figure is worse than the
//! baseline's × `ratio` + `margin`, so a slowdown or an error burst of the shared backend,
//! which hits both arms, fails nothing. An arm with fewer than `min_requests` in the window
//! makes the check inconclusive, which never counts as a pass (an idle canary is not judged).

use serde::{Deserialize, Serialize};

use crate::rules::model::Analysis;
use crate::stats::Figures;

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    /// Every bound held on enough requests.
    Pass,
    /// A bound was crossed.
    Fail,
    /// Too few requests in an arm to judge.
    Inconclusive,
}

impl CheckResult {
    /// The `result` label of `graygate_rollout_checks_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Inconclusive => "inconclusive",
        }
    }
}

/// One arm's figures as a check read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmFigures {
    /// Requests in the window.
    pub requests: u64,
    /// 5xx among them.
    pub errors_5xx: u64,
    /// `errors_5xx / requests`.
    pub error_rate: f64,
    /// The 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// The conversion rate of each goal the analysis names, in its order.
    pub goal_rates: Vec<Option<f64>>,
}

/// A check's result, why, and the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Pass, fail or inconclusive.
    pub result: CheckResult,
    /// In words: the bound crossed, the arm short of requests, or "every bound held".
    pub why: String,
    /// The version's figures.
    pub version: ArmFigures,
    /// The baseline's figures.
    pub baseline: ArmFigures,
}

impl ArmFigures {
    /// The figures a check reads from an arm's window (`None`: the arm has no cell yet).
    pub fn of(figures: Option<&Figures>, analysis: &Analysis) -> ArmFigures {
        let Some(figures) = figures else {
            return ArmFigures {
                goal_rates: vec![None; analysis.goals.len()],
                ..ArmFigures::default()
            };
        };
        ArmFigures {
            requests: figures.requests,
            errors_5xx: figures.errors_5xx,
            error_rate: figures.error_rate,
            p99_ms: figures.p99_ms,
            goal_rates: analysis
                .goals
                .iter()
                .map(|bound| figures.goal(&bound.goal).and_then(|g| g.rate))
                .collect(),
        }
    }
}

/// Judges `version` against `baseline` under `analysis`.
pub fn judge(analysis: &Analysis, version: ArmFigures, baseline: ArmFigures) -> Verdict {
    let verdict = |result, why| Verdict {
        result,
        why,
        version: version.clone(),
        baseline: baseline.clone(),
    };
    let min = analysis.min_requests;
    for (arm, figures) in [("version", &version), ("baseline", &baseline)] {
        if figures.requests < min {
            return verdict(
                CheckResult::Inconclusive,
                format!(
                    "the {arm} has {} of the {min} requests a check needs",
                    figures.requests
                ),
            );
        }
    }
    let mut failed = Vec::new();
    let bound = analysis.max_error_rate;
    let limit = baseline.error_rate * bound.ratio + bound.margin;
    if version.error_rate > limit {
        failed.push(format!(
            "5xx rate {:.4} > {limit:.4} (baseline {:.4} × {} + {})",
            version.error_rate, baseline.error_rate, bound.ratio, bound.margin
        ));
    }
    if let Some(bound) = analysis.max_p99_latency {
        if let (Some(v), Some(b)) = (version.p99_ms, baseline.p99_ms) {
            let margin = bound.margin.as_secs_f64() * 1e3;
            let limit = b * bound.ratio + margin;
            if v > limit {
                failed.push(format!(
                    "p99 {v:.1}ms > {limit:.1}ms (baseline {b:.1}ms × {} + {margin}ms)",
                    bound.ratio
                ));
            }
        }
    }
    for (i, bound) in analysis.goals.iter().enumerate() {
        // A goal no request of the baseline attempted has nothing to compare with.
        let (Some(b), v) = (baseline.goal_rates[i], version.goal_rates[i].unwrap_or(0.0)) else {
            continue;
        };
        let floor = b * bound.min_ratio;
        if v < floor {
            failed.push(format!(
                "goal {} rate {v:.4} < {floor:.4} (baseline {b:.4} × {})",
                bound.goal, bound.min_ratio
            ));
        }
    }
    if failed.is_empty() {
        verdict(CheckResult::Pass, "every bound held".into())
    } else {
        verdict(CheckResult::Fail, failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rules::model::{GoalBound, LatencyBound, RateBound};

    fn analysis() -> Analysis {
        Analysis {
            interval: Duration::from_secs(10),
            window: Duration::from_secs(60),
            min_requests: 100,
            max_error_rate: RateBound {
                ratio: 2.0,
                margin: 0.01,
            },
            max_p99_latency: Some(LatencyBound {
                ratio: 1.5,
                margin: Duration::from_millis(50),
            }),
            goals: vec![GoalBound {
                goal: "signup".into(),
                min_ratio: 0.8,
            }],
            failure_limit: 3,
        }
    }

    fn arm(requests: u64, errors: u64, p99_ms: f64, signup: Option<f64>) -> ArmFigures {
        ArmFigures {
            requests,
            errors_5xx: errors,
            error_rate: errors as f64 / requests.max(1) as f64,
            p99_ms: Some(p99_ms),
            goal_rates: vec![signup],
        }
    }

    fn result(version: ArmFigures, baseline: ArmFigures) -> (CheckResult, String) {
        let verdict = judge(&analysis(), version, baseline);
        (verdict.result, verdict.why)
    }

    #[test]
    fn too_few_requests_in_either_arm_is_inconclusive_never_a_pass() {
        let healthy = arm(1000, 0, 10.0, Some(0.5));
        assert_eq!(
            result(arm(99, 99, 900.0, None), healthy.clone()),
            (
                CheckResult::Inconclusive,
                "the version has 99 of the 100 requests a check needs".into()
            )
        );
        assert_eq!(
            result(healthy.clone(), arm(0, 0, 0.0, None)).0,
            CheckResult::Inconclusive
        );
        // Exactly min_requests is enough.
        assert_eq!(
            result(arm(100, 0, 10.0, Some(0.5)), healthy).0,
            CheckResult::Pass
        );
    }

    #[test]
    fn the_error_rate_is_judged_as_ratio_plus_margin_of_the_baseline() {
        let baseline = arm(1000, 10, 10.0, None); // 1%: limit 2% × ... = 0.01 × 2 + 0.01 = 3%
        assert_eq!(
            result(arm(1000, 30, 10.0, None), baseline.clone()).0,
            CheckResult::Pass
        );
        let (verdict, why) = result(arm(1000, 31, 10.0, None), baseline);
        assert_eq!(verdict, CheckResult::Fail);
        assert_eq!(why, "5xx rate 0.0310 > 0.0300 (baseline 0.0100 × 2 + 0.01)");
        // A backend-wide outage hits both arms: no failure.
        assert_eq!(
            result(arm(1000, 500, 10.0, None), arm(1000, 400, 10.0, None)).0,
            CheckResult::Pass
        );
        // Every request failing against a healthy baseline fails.
        assert_eq!(
            result(arm(200, 200, 1.0, None), arm(1000, 0, 10.0, None)).0,
            CheckResult::Fail
        );
    }

    #[test]
    fn latency_and_goals_are_relative_too() {
        let baseline = arm(1000, 0, 100.0, Some(0.5));
        // Limit: 100 × 1.5 + 50 = 200 ms.
        assert_eq!(
            result(arm(1000, 0, 200.0, Some(0.5)), baseline.clone()).0,
            CheckResult::Pass
        );
        let (verdict, why) = result(arm(1000, 0, 201.0, Some(0.5)), baseline.clone());
        assert_eq!(verdict, CheckResult::Fail);
        assert_eq!(why, "p99 201.0ms > 200.0ms (baseline 100.0ms × 1.5 + 50ms)");
        // Both slower by 200 ms: relative, so it passes.
        assert_eq!(
            result(
                arm(1000, 0, 300.0, Some(0.5)),
                arm(1000, 0, 300.0, Some(0.5))
            )
            .0,
            CheckResult::Pass
        );
        // Goal floor: 0.5 × 0.8 = 0.4.
        assert_eq!(
            result(arm(1000, 0, 100.0, Some(0.4)), baseline.clone()).0,
            CheckResult::Pass
        );
        let (verdict, why) = result(arm(1000, 0, 100.0, Some(0.39)), baseline.clone());
        assert_eq!(verdict, CheckResult::Fail);
        assert_eq!(
            why,
            "goal signup rate 0.3900 < 0.4000 (baseline 0.5000 × 0.8)"
        );
        // A version that never converts while the baseline does: fails.
        assert_eq!(
            result(arm(1000, 0, 100.0, None), baseline).0,
            CheckResult::Fail
        );
        // No baseline attempts: the goal is not compared.
        assert_eq!(
            result(arm(1000, 0, 100.0, None), arm(1000, 0, 100.0, None)).0,
            CheckResult::Pass
        );
    }
}
