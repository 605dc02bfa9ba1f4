//! The per-request series: `graygate_requests_total`, `graygate_request_duration_seconds` and
//! `graygate_decisions_total`, counted in flat tables of each rules generation and exported by
//! one [`Collector`].
//!
//! A request adds to its group's [`GroupCounts`] (its status class, the duration's bucket and
//! sum, all in the record's first cache line for any answer within 2.5 ms) and to one counter
//! of its deciding rule: two cache lines, found by index in the generation's tables. The
//! labelled series of the `prometheus` crate cost seven or eight (a handle's slot, the
//! counter behind it, the histogram's header, its bucket bounds and its buckets, each a
//! separate allocation), every one a miss when the request's tenant is one of thousands.
//!
//! A series outlives the generations that counted in it, as a labelled series does: the
//! collector keeps the live generations' tables and, by labels, what the retired ones
//! counted. A generation's tables are folded into those totals when the generation is
//! dropped (no request holds it any more), under the lock a scrape takes, so a scrape sees
//! every count exactly once: in its generation, or in the totals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use super::{SeriesLayout, STATUS_CLASSES, UNMATCHED};

/// The upper bounds of `graygate_request_duration_seconds`'s buckets (SPEC), in seconds.
const DURATION_BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in nanoseconds, what a request's duration is compared with.
const BOUNDS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The buckets counted: one per bound, then one for longer requests (`+Inf` only).
const BUCKETS: usize = BOUNDS_NANOS.len() + 1;

/// The status classes a group's series are exported with at 0 before its first request.
const PREPARED_CLASSES: [usize; 4] = [1, 2, 3, 4];

/// One group's request counts (a service, a serving version) in one generation. Aligned so
/// that the status classes, the sum and the first two buckets share one cache line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct GroupCounts {
    classes: [AtomicU64; 5],
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl GroupCounts {
    /// Counts one answer: its status class (`None`: no status was sent) and its duration.
    pub fn record(&self, class: Option<usize>, elapsed: Duration) {
        if let Some(class) = class {
            self.classes[class].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn add_to(&self, totals: &mut Totals) {
        for (total, count) in totals.classes.iter_mut().zip(&self.classes) {
            *total += count.load(Relaxed);
        }
        for (total, count) in totals.buckets.iter_mut().zip(&self.buckets) {
            *total += count.load(Relaxed);
        }
        totals.sum_nanos += self.sum_nanos.load(Relaxed);
    }
}

/// What one group's series hold, summed over generations.
#[derive(Debug, Clone, Default)]
struct Totals {
    /// Exported at 0 before any request (the group exists in some generation).
    prepared: bool,
    classes: [u64; 5],
    sum_nanos: u64,
    buckets: [u64; BUCKETS],
}

/// One generation's tables. Counted in through [`GenerationCounts::group`] and
/// [`GenerationCounts::decision`]; retired by [`RequestFamilies::retire`].
#[derive(Debug)]
pub struct GenerationCounts {
    versions: Box<[Arc<str>]>,
    services: Box<[Arc<str>]>,
    /// `[service * versions + version]`: whether the service has that version's group.
    prepared: Box<[bool]>,
    /// `[service * versions + served]`.
    groups: Box<[GroupCounts]>,
    rules: Box<[Arc<str>]>,
    /// `[rule * versions + decided]`.
    decisions: Box<[AtomicU64]>,
}

impl GenerationCounts {
    fn new(layout: &SeriesLayout<'_>) -> GenerationCounts {
        let versions = layout.versions.len();
        let mut prepared = vec![false; layout.services.len() * versions];
        for (s, (_, with_group)) in layout.services.iter().enumerate() {
            for &v in with_group {
                prepared[s * versions + v] = true;
            }
        }
        GenerationCounts {
            versions: layout.versions.iter().map(|&v| v.into()).collect(),
            services: layout.services.iter().map(|(s, _)| (*s).into()).collect(),
            prepared: prepared.into(),
            groups: (0..layout.services.len() * versions)
                .map(|_| GroupCounts::default())
                .collect(),
            rules: layout.rules.iter().map(|&r| r.into()).collect(),
            decisions: (0..layout.rules.len() * versions)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The counts of `service`'s group of version `served` (indices of this generation).
    pub fn group(&self, service: usize, served: usize) -> Option<&GroupCounts> {
        self.by_version(&self.groups, service, served)
    }

    /// The counter of rule slot `rule` deciding version `decided`.
    pub fn decision(&self, rule: usize, decided: usize) -> Option<&AtomicU64> {
        self.by_version(&self.decisions, rule, decided)
    }

    /// Entry `[row * versions + version]` of one of the tables.
    fn by_version<'t, T>(&self, table: &'t [T], row: usize, version: usize) -> Option<&'t T> {
        let versions = self.versions.len();
        (version < versions).then(|| table.get(row * versions + version))?
    }

    /// Adds every group's counts (the prepared ones even at 0) to `groups`, every decision
    /// made to `decisions`.
    fn add_to(
        &self,
        groups: &mut HashMap<(Arc<str>, Arc<str>), Totals>,
        decisions: &mut HashMap<(Arc<str>, Arc<str>), u64>,
    ) {
        let versions = self.versions.len();
        for (i, counts) in self.groups.iter().enumerate() {
            let prepared = self.prepared[i];
            let counted = counts.buckets.iter().any(|b| b.load(Relaxed) > 0)
                || counts.classes.iter().any(|c| c.load(Relaxed) > 0);
            if !prepared && !counted {
                continue;
            }
            let key = (
                Arc::clone(&self.services[i / versions]),
                Arc::clone(&self.versions[i % versions]),
            );
            let totals = groups.entry(key).or_default();
            totals.prepared |= prepared;
            counts.add_to(totals);
        }
        for (i, count) in self.decisions.iter().enumerate() {
            let n = count.load(Relaxed);
            if n > 0 {
                let key = (
                    Arc::clone(&self.rules[i / versions]),
                    Arc::clone(&self.versions[i % versions]),
                );
                *decisions.entry(key).or_default() += n;
            }
        }
    }
}

/// The three families' collector: the live generations' tables and the retired ones' totals.
/// Cloned handles share them; one is registered in the registry.
#[derive(Clone)]
pub struct RequestFamilies {
    shared: Arc<Shared>,
}

struct Shared {
    requests: Desc,
    duration: Desc,
    decisions: Desc,
    /// `graygate_requests_total{service="unmatched",version="unmatched"}` by status class:
    /// requests answered before routing, in no generation's tables.
    unmatched: [AtomicU64; 5],
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    live: Vec<Arc<GenerationCounts>>,
    /// What retired generations counted, by (service, version).
    groups: HashMap<(Arc<str>, Arc<str>), Totals>,
    /// What retired generations counted, by (rule, version).
    decisions: HashMap<(Arc<str>, Arc<str>), u64>,
}

impl std::fmt::Debug for RequestFamilies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFamilies")
            .field("live", &self.kept().live.len())
            .finish_non_exhaustive()
    }
}

fn desc(name: &str, help: &str, labels: &[&str]) -> Desc {
    Desc::new(
        name.into(),
        help.into(),
        labels.iter().map(|l| (*l).into()).collect(),
        HashMap::new(),
    )
    .expect("static metric definition")
}

impl RequestFamilies {
    /// The collector, with no generation yet.
    pub fn new() -> RequestFamilies {
        RequestFamilies {
            shared: Arc::new(Shared {
                requests: desc(
                    "graygate_requests_total",
                    "Requests answered, per service, served version and status class.",
                    &["service", "version", "status_class"],
                ),
                duration: desc(
                    "graygate_request_duration_seconds",
                    "Time from request to the end of the response, per service and version.",
                    &["service", "version"],
                ),
                decisions: desc(
                    "graygate_decisions_total",
                    "Routing decisions, per deciding rule and version.",
                    &["rule", "version"],
                ),
                unmatched: Default::default(),
                kept: Mutex::default(),
            }),
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        // A scrape that panicked left consistent maps: every update is one statement.
        self.shared
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The tables of a new generation of `layout`'s shape, exported from now on.
    pub fn generation(&self, layout: &SeriesLayout<'_>) -> Arc<GenerationCounts> {
        let counts = Arc::new(GenerationCounts::new(layout));
        self.kept().live.push(Arc::clone(&counts));
        counts
    }

    /// Folds a generation no request holds any more into the totals.
    pub fn retire(&self, counts: &Arc<GenerationCounts>) {
        let mut kept = self.kept();
        let Some(at) = kept.live.iter().position(|c| Arc::ptr_eq(c, counts)) else {
            return;
        };
        let retired = kept.live.swap_remove(at);
        let Kept {
            groups, decisions, ..
        } = &mut *kept;
        retired.add_to(groups, decisions);
    }

    /// Counts a request answered before routing, by status class.
    pub fn record_unmatched(&self, class: usize) {
        self.shared.unmatched[class].fetch_add(1, Relaxed);
    }
}

impl Default for RequestFamilies {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).into());
            pair.set_value((*value).into());
            pair
        })
        .collect()
}

fn counter(label_pairs: Vec<LabelPair>, value: u64) -> Metric {
    let mut metric = Metric::from_label(label_pairs);
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

fn family(desc: &Desc, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn histogram(totals: &Totals) -> Histogram {
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(DURATION_BOUNDS.len());
    for (bound, count) in DURATION_BOUNDS.iter().zip(totals.buckets) {
        cumulative += count;
        let mut bucket = Bucket::default();
        bucket.set_cumulative_count(cumulative);
        bucket.set_upper_bound(*bound);
        buckets.push(bucket);
    }
    // The count is the buckets' sum (the `+Inf` bucket): never out of step with them.
    histogram.set_sample_count(cumulative + totals.buckets[BUCKETS - 1]);
    histogram.set_sample_sum(totals.sum_nanos as f64 / 1e9);
    histogram.set_bucket(buckets);
    histogram
}

impl Collector for RequestFamilies {
    fn desc(&self) -> Vec<&Desc> {
        let s = &*self.shared;
        vec![&s.requests, &s.duration, &s.decisions]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (mut groups, mut decisions) = {
            let kept = self.kept();
            let (mut groups, mut decisions) = (kept.groups.clone(), kept.decisions.clone());
            for generation in &kept.live {
                generation.add_to(&mut groups, &mut decisions);
            }
            (groups, decisions)
        };
        let unmatched: Arc<str> = UNMATCHED.into();
        let totals = groups
            .entry((Arc::clone(&unmatched), unmatched))
            .or_default();
        for (total, count) in totals.classes.iter_mut().zip(&self.shared.unmatched) {
            *total += count.load(Relaxed);
        }

        let mut requests = Vec::new();
        let mut durations = Vec::new();
        for ((service, version), totals) in &groups {
            for (class, &n) in totals.classes.iter().enumerate() {
                if n > 0 || (totals.prepared && PREPARED_CLASSES.contains(&class)) {
                    let pairs = [
                        ("service", &**service),
                        ("status_class", STATUS_CLASSES[class]),
                        ("version", &**version),
                    ];
                    requests.push(counter(labels(&pairs), n));
                }
            }
            if totals.buckets.iter().any(|&n| n > 0) {
                let pairs = [("service", &**service), ("version", &**version)];
                let mut metric = Metric::from_label(labels(&pairs));
                metric.set_histogram(histogram(totals));
                durations.push(metric);
            }
        }
        let decided = decisions
            .drain()
            .map(|((rule, version), n)| {
                counter(labels(&[("rule", &*rule), ("version", &*version)]), n)
            })
            .collect();
        let s = &*self.shared;
        vec![
            family(&s.requests, MetricType::COUNTER, requests),
            family(&s.duration, MetricType::HISTOGRAM, durations),
            family(&s.decisions, MetricType::COUNTER, decided),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_whose_bound_holds_it() {
        let counts = GroupCounts::default();
        for ms in [0, 1, 2, 3, 10_000, 10_001] {
            counts.record(Some(1), Duration::from_millis(ms));
        }
        let mut totals = Totals::default();
        counts.add_to(&mut totals);
        // 0 and 1 ms: le=0.001; 2 ms: 0.0025; 3 ms: 0.005; 10 s: 10; past it: +Inf only.
        assert_eq!(totals.buckets[..3], [2, 1, 1]);
        assert_eq!(totals.buckets[BUCKETS - 2..], [1, 1]);
        assert_eq!(totals.classes[1], 6);
        assert_eq!(totals.sum_nanos, 20_007_000_000);
        let h = histogram(&totals);
        assert_eq!(h.get_sample_count(), 6);
        assert_eq!(h.get_bucket().last().unwrap().cumulative_count(), 5);
        assert!((h.get_sample_sum() - 20.007).abs() < 1e-9);
    }

    #[test]
    fn the_first_line_holds_the_classes_the_sum_and_the_first_buckets() {
        assert_eq!(std::mem::align_of::<GroupCounts>(), 64);
        let counts = GroupCounts::default();
        let base = &counts as *const GroupCounts as usize;
        assert!(&counts.buckets[1] as *const AtomicU64 as usize + 8 - base <= 64);
    }
}
