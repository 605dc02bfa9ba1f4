//! The figures of one cell over one window, as a rollout verdict and `GET /-/stats` read them.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::cell::{ATTEMPTS, CONVERSIONS, COUNTERS, ERRORS, LATENCY};
use super::latency::Latency;

/// One version's figures in one scope over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// The time the figures cover: the window asked, up to a second more (a tick's worth), or
    /// less right after the start or when the history is shorter.
    pub window_seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Requests answered with a 5xx status.
    pub errors_5xx: u64,
    /// `errors_5xx / requests`, 0 when there was no request.
    pub error_rate: f64,
    /// The median latency in milliseconds; `None` when there was no request.
    pub p50_ms: Option<f64>,
    /// The 90th percentile latency in milliseconds.
    pub p90_ms: Option<f64>,
    /// The 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
    /// The goals counted in the window (an attempt or a conversion), by slot.
    pub goals: Vec<GoalFigures>,
    /// The window's latency sketch, for other quantiles and comparisons.
    #[serde(skip)]
    pub latency: Latency,
}

/// One goal's figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoalFigures {
    /// The goal's name.
    #[serde(serialize_with = "super::as_str")]
    pub name: Arc<str>,
    /// Requests that met the goal's conditions.
    pub attempts: u64,
    /// Attempts whose response status converted.
    pub conversions: u64,
    /// `conversions / attempts`; `None` without attempts.
    pub rate: Option<f64>,
}

impl Figures {
    /// The figures of summed cell counters over `covered`; `goal_names[slot]` names a slot.
    pub(super) fn new(
        counters: &[u64; COUNTERS],
        covered: Duration,
        goal_names: &[Arc<str>],
    ) -> Figures {
        let latency = Latency::from_counts(&counters[LATENCY..ATTEMPTS]);
        let requests = latency.count();
        let errors_5xx = counters[ERRORS];
        let ms = |q: f64| latency.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        let goals = goal_names
            .iter()
            .enumerate()
            .map(|(slot, name)| {
                (
                    name,
                    counters[ATTEMPTS + slot],
                    counters[CONVERSIONS + slot],
                )
            })
            .filter(|(_, attempts, conversions)| attempts + conversions > 0)
            .map(|(name, attempts, conversions)| GoalFigures {
                name: name.clone(),
                attempts,
                conversions,
                rate: (attempts > 0).then(|| ratio(conversions, attempts)),
            })
            .collect();
        Figures {
            window_seconds: covered.as_secs_f64(),
            requests,
            errors_5xx,
            error_rate: if requests == 0 {
                0.0
            } else {
                ratio(errors_5xx, requests)
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            goals,
            latency,
        }
    }

    /// The `q`-quantile of the window's latency (within 1/16, see [`Latency::quantile`]).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.latency.quantile(q)
    }

    /// The figures of the goal called `name`, if it was counted in the window.
    pub fn goal(&self, name: &str) -> Option<&GoalFigures> {
        self.goals.iter().find(|goal| &*goal.name == name)
    }
}

/// `part / whole` for `whole > 0`, at most 1: at a window's older edge, a request recorded
/// while a tick read its cell may have its latency (or attempt) in the second before the window
/// and its 5xx (or conversion) inside it.
fn ratio(part: u64, whole: u64) -> f64 {
    (part as f64 / whole as f64).min(1.0)
}
