//! Prometheus metrics: one [`Metrics`] owns its registry and every series graygate exports.
//!
//! Label values come only from configuration names (services, versions, rules, goals) and
//! fixed words, never from request data, so the number of series is bounded by the config.
//!
//! The series a proxied request counts in are found by index, not by label: each rules
//! generation has a [`GenerationSeries`]. Its requests, durations and decisions are counted
//! in the generation's own flat tables ([`requests`]: one record of a cache line or two per
//! group, one counter per rule and version), exported by one collector that keeps the totals
//! of retired generations; its goals by handles of labelled series resolved when the
//! generation is built. `logging` hashes no label value and follows no pointer per series.

mod requests;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use requests::GenerationCounts;
pub use requests::RequestFamilies;

/// One answered request as the metrics see it: configuration names and fixed words only.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// Where its series sit in the generation's [`GenerationSeries`]; `None` for a request
    /// answered before routing (the `unmatched` series).
    pub at: Option<SeriesAt>,
    /// The service, or `unmatched`.
    pub service: &'a str,
    /// The version whose group served (after a fallback, the default's).
    pub served: &'a str,
    /// The decided version, or `unmatched` for a request answered before any decision.
    pub decided: &'a str,
    /// The deciding rule (or `default`).
    pub rule: &'a str,
    /// The status sent, 0 when none was.
    pub status: u16,
    /// From the request's arrival to the end of the response.
    pub elapsed: Duration,
    /// The `kind` of an upstream failure, if one ended the request.
    pub upstream_error: Option<&'static str>,
}

/// The indices of a routed request's series in its generation's [`GenerationSeries`], in
/// the generation's own numbering (the names of [`Answered`] are theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesAt {
    /// The service.
    pub service: usize,
    /// The version whose group served.
    pub served: usize,
    /// The decided version.
    pub decided: usize,
    /// The deciding rule: its index, or past the rules for `default` and `override`.
    pub rule: usize,
}

/// The `service` and `version` label of requests no service matched.
pub const UNMATCHED: &str = "unmatched";

/// Every series graygate exports.
pub struct Metrics {
    registry: Registry,
    /// `graygate_requests_total{service,version,status_class}`,
    /// `graygate_request_duration_seconds{service,version}` and
    /// `graygate_decisions_total{rule,version}`: counted in each generation's tables.
    pub request_families: RequestFamilies,
    /// `graygate_upstream_errors_total{service,version,kind}`
    pub upstream_errors: IntCounterVec,
    /// `graygate_fallbacks_total{service,from,to,reason}`
    pub fallbacks: IntCounterVec,
    /// `graygate_goal_total{goal,version}`: conversions.
    pub goals: IntCounterVec,
    /// `graygate_goal_attempts_total{goal,version}`: requests meeting a goal's conditions.
    pub goal_attempts: IntCounterVec,
    /// `graygate_store_lookups_total{kind,result}`
    pub store_lookups: IntCounterVec,
    /// `graygate_rules_generation`
    pub rules_generation: IntGauge,
    /// `graygate_rules_reload_total{result}`
    pub rules_reloads: IntCounterVec,
    /// `graygate_upstream_peer_healthy{service,version,peer}`
    pub peer_healthy: IntGaugeVec,
    /// `graygate_cookies_rewritten_total{version,action}`: the cookie isolation's work.
    pub cookies_rewritten: IntCounterVec,
    /// `graygate_tls_reload_total{result}`
    pub tls_reloads: IntCounterVec,
    /// `graygate_tls_certificate_expiry_timestamp_seconds{listener,certificate}`: notAfter.
    pub tls_certificate_expiry: IntGaugeVec,
    /// `graygate_tls_handshakes_total{listener,result}`: ok, error, timeout.
    pub tls_handshakes: IntCounterVec,
    /// `graygate_tls_sni_unmatched_total{listener}`: names no certificate covers.
    pub tls_sni_unmatched: IntCounterVec,
    /// `graygate_retries_total{service,version,reason}`: attempts sent again (`connect`: a
    /// refused connection; `reused_connection`: a pooled connection that was dead; `reset`: a
    /// fresh connection reset before any answer).
    pub retries: IntCounterVec,
    /// `graygate_connections_total{listener,result}`: accepted connections, those closed
    /// before HTTP (`proxy_protocol_error`, `proxy_protocol_timeout`, `client_limit`), and
    /// those closed because a request header was too slow (`header_timeout`).
    pub connections: IntCounterVec,
    /// `graygate_rollout_weight{rollout}`: percent of the rollout rule's traffic on its version.
    pub rollout_weight: IntGaugeVec,
    /// `graygate_rollout_state{rollout,state}`: 1 for the rollout's current state.
    pub rollout_state: IntGaugeVec,
    /// `graygate_rollout_checks_total{rollout,result}`: pass, fail, inconclusive.
    pub rollout_checks: IntCounterVec,
    /// `graygate_override{version}`: 1 for the version the emergency override sends every
    /// request to, 0 for the others.
    pub override_version: IntGaugeVec,
    /// `graygate_fleet_instances{state}`: live instances of the fleet as this one last saw
    /// them (`in_sync`, `drifted`: serving rules whose content differs from the most common).
    pub fleet_instances: IntGaugeVec,
    /// `graygate_fleet_judge`: 1 while this instance holds the lease that judges rollouts.
    pub fleet_judge: IntGauge,
}

impl Metrics {
    /// Creates every series in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let request_families = RequestFamilies::new();
        registry
            .register(Box::new(request_families.clone()))
            .expect("unique metric name");
        let upstream_errors = counter(
            "graygate_upstream_errors_total",
            "Upstream failures, per service, version and kind.",
            &["service", "version", "kind"],
        );
        let fallbacks = counter(
            "graygate_fallbacks_total",
            "Requests moved from their decided group to the default version's group.",
            &["service", "from", "to", "reason"],
        );
        let goals = counter(
            "graygate_goal_total",
            "Goal conversions, per goal and version.",
            &["goal", "version"],
        );
        let goal_attempts = counter(
            "graygate_goal_attempts_total",
            "Requests meeting a goal's conditions, whatever their status, per goal and decided version.",
            &["goal", "version"],
        );
        let store_lookups = counter(
            "graygate_store_lookups_total",
            "Assignment store lookups, per kind (assignment, tier, internal) and result.",
            &["kind", "result"],
        );
        let cookies_rewritten = counter(
            "graygate_cookies_rewritten_total",
            "Cookies rewritten for version isolation, per serving version and action (renamed, restored, removed, dropped_too_long, dropped_invalid).",
            &["version", "action"],
        );
        let tls_reloads = counter(
            "graygate_tls_reload_total",
            "Certificate reloads, per result (a rejected pair keeps the old one serving).",
            &["result"],
        );
        let tls_handshakes = counter(
            "graygate_tls_handshakes_total",
            "TLS handshakes, per listener and result (ok, error, timeout).",
            &["listener", "result"],
        );
        let tls_sni_unmatched = counter(
            "graygate_tls_sni_unmatched_total",
            "Handshakes whose server name no certificate covers (they get the listener's first certificate).",
            &["listener"],
        );
        let retries = counter(
            "graygate_retries_total",
            "Upstream attempts sent again, per service, version of the failed attempt and reason (connect, reused_connection, reset).",
            &["service", "version", "reason"],
        );
        let connections = counter(
            "graygate_connections_total",
            "Connections accepted (ok), refused (proxy_protocol_error, proxy_protocol_timeout, client_limit) and closed for a slow request header (header_timeout), per listener.",
            &["listener", "result"],
        );
        let rollout_checks = counter(
            "graygate_rollout_checks_total",
            "Rollout checks, per rollout and result (pass, fail, inconclusive).",
            &["rollout", "result"],
        );
        let rules_reloads = counter(
            "graygate_rules_reload_total",
            "Rules reloads, per result.",
            &["result"],
        );
        let rules_generation = IntGauge::new(
            "graygate_rules_generation",
            "The rules generation serving now.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(rules_generation.clone()))
            .expect("unique metric name");
        let peer_healthy = IntGaugeVec::new(
            Opts::new(
                "graygate_upstream_peer_healthy",
                "1 when the peer is in rotation.",
            ),
            &["service", "version", "peer"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(peer_healthy.clone()))
            .expect("unique metric name");
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "graygate_tls_certificate_expiry_timestamp_seconds",
                "The notAfter of the certificate serving now, as a Unix timestamp.",
            ),
            &["listener", "certificate"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(tls_certificate_expiry.clone()))
            .expect("unique metric name");
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let rollout_weight = gauge(
            "graygate_rollout_weight",
            "Percent of the rollout rule's traffic on the rollout's version.",
            &["rollout"],
        );
        let rollout_state = gauge(
            "graygate_rollout_state",
            "1 for the rollout's current state (progressing, paused, completed, rolled_back).",
            &["rollout", "state"],
        );
        let override_version = gauge(
            "graygate_override",
            "1 for the version the emergency override sends every request to.",
            &["version"],
        );
        let fleet_instances = gauge(
            "graygate_fleet_instances",
            "Live instances of the fleet, in_sync or drifted (other rules content).",
            &["state"],
        );
        for state in ["in_sync", "drifted"] {
            fleet_instances.with_label_values(&[state]);
        }
        let fleet_judge = IntGauge::new(
            "graygate_fleet_judge",
            "1 while this instance holds the lease that judges the fleet's rollouts.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(fleet_judge.clone()))
            .expect("unique metric name");
        for result in ["ok", "error"] {
            rules_reloads.with_label_values(&[result]);
        }
        for kind in ["assignment", "tier", "internal"] {
            for result in ["cache_hit", "hit", "miss", "error", "timeout"] {
                store_lookups.with_label_values(&[kind, result]);
            }
        }
        Metrics {
            registry,
            request_families,
            upstream_errors,
            fallbacks,
            goals,
            goal_attempts,
            store_lookups,
            rules_generation,
            rules_reloads,
            peer_healthy,
            cookies_rewritten,
            tls_reloads,
            tls_certificate_expiry,
            tls_handshakes,
            tls_sni_unmatched,
            retries,
            connections,
            rollout_weight,
            rollout_state,
            rollout_checks,
            override_version,
            fleet_instances,
            fleet_judge,
        }
    }

    /// Creates at 0 the connection series of one listener, and its handshake series if it
    /// speaks TLS.
    pub fn prepare_listener(&self, listener: &str, tls: bool) {
        for result in [
            "ok",
            "proxy_protocol_error",
            "proxy_protocol_timeout",
            "client_limit",
            "header_timeout",
        ] {
            self.connections.with_label_values(&[listener, result]);
        }
        if tls {
            for result in ["ok", "error", "timeout"] {
                self.tls_handshakes.with_label_values(&[listener, result]);
            }
            self.tls_sni_unmatched.with_label_values(&[listener]);
            for result in ["ok", "error"] {
                self.tls_reloads.with_label_values(&[result]);
            }
        }
    }

    /// Creates at 0 the cookie-isolation series of one version for `actions`.
    pub fn prepare_cookies(&self, version: &str, actions: &[&str]) {
        for action in actions {
            self.cookies_rewritten.with_label_values(&[version, action]);
        }
    }

    /// Counts `n` cookies of `version` handled by `action` (a fixed word).
    pub fn record_cookies(&self, version: &str, action: &str, n: u64) {
        self.cookies_rewritten
            .with_label_values(&[version, action])
            .inc_by(n);
    }

    /// Counts an upstream failure of `kind` (a refused connection, a timeout, a reset...).
    pub fn record_upstream_error(&self, service: &str, version: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[service, version, kind])
            .inc();
    }

    /// Counts an upstream attempt of `version` sent again, for `reason` (a fixed word).
    pub fn record_retry(&self, service: &str, version: &str, reason: &str) {
        self.retries
            .with_label_values(&[service, version, reason])
            .inc();
    }

    /// Counts a request moved to another group than its decided version's.
    pub fn record_fallback(&self, service: &str, from: &str, to: &str, reason: &str) {
        self.fallbacks
            .with_label_values(&[service, from, to, reason])
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The status classes, in the order of [`class_index`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The retry reasons a group's series are created with.
const RETRY_REASONS: [&str; 3] = ["connect", "reused_connection", "reset"];

/// The index in [`STATUS_CLASSES`] of a status code's class.
fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// `2xx`, `4xx`... for a status code.
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

/// The handles of one goal's series for one version: attempts, then conversions.
type GoalSeries = OnceLock<(IntCounter, IntCounter)>;

/// The request series of one rules generation, by index: what `logging` counts in. Requests,
/// durations and decisions go to the generation's own tables ([`GenerationCounts`], exported
/// by [`RequestFamilies`] and folded into its totals when the generation is dropped); a goal
/// slot holds the handle of one labelled series, found in its family when the generation is
/// built. Generations built from the same [`Metrics`] share the series themselves.
pub struct GenerationSeries {
    metrics: Arc<Metrics>,
    /// The number of versions: the row length of `goals`.
    versions: usize,
    /// Requests, durations and decisions.
    counts: Arc<GenerationCounts>,
    /// `[goal * versions + decided]`.
    goals: Box<[GoalSeries]>,
}

/// The shape of a generation, for its [`GenerationSeries`]: names by index.
pub struct SeriesLayout<'a> {
    /// The versions' names.
    pub versions: &'a [&'a str],
    /// Per service: its name and the versions it has a group for.
    pub services: &'a [(&'a str, Vec<usize>)],
    /// The rule slots' names: the rules, then `default` and `override`.
    pub rules: &'a [&'a str],
    /// The goals' names.
    pub goals: &'a [&'a str],
}

impl std::fmt::Debug for GenerationSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationSeries")
            .field("versions", &self.versions)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl GenerationSeries {
    /// The table of a generation of `layout`'s shape, counting in `metrics`. The series
    /// a dashboard needs before the first event exist at 0 from here on: every group's
    /// request classes and retries, every goal's attempts and conversions per version.
    pub fn new(metrics: Arc<Metrics>, layout: &SeriesLayout<'_>) -> GenerationSeries {
        let versions = layout.versions.len();
        let counts = metrics.request_families.generation(layout);
        let series = GenerationSeries {
            counts,
            goals: (0..layout.goals.len() * versions)
                .map(|_| OnceLock::new())
                .collect(),
            versions,
            metrics,
        };
        for (service, with_group) in layout.services {
            for &v in with_group {
                let version = layout.versions[v];
                for reason in RETRY_REASONS {
                    series
                        .metrics
                        .retries
                        .with_label_values(&[service, version, reason]);
                }
            }
        }
        for (g, goal) in layout.goals.iter().enumerate() {
            for (v, version) in layout.versions.iter().enumerate() {
                series.goal_counters(g * versions + v, goal, version);
            }
        }
        series
    }

    fn goal_counters(&self, slot: usize, goal: &str, version: &str) -> &(IntCounter, IntCounter) {
        self.goals[slot].get_or_init(|| {
            let labels = [goal, version];
            (
                self.metrics.goal_attempts.with_label_values(&labels),
                self.metrics.goals.with_label_values(&labels),
            )
        })
    }

    /// Counts one answered request: its status class, its duration, its decision and its
    /// upstream failure, if any.
    pub fn record(&self, a: &Answered) {
        let class = (a.status > 0).then(|| class_index(a.status));
        let Some(at) = a.at else {
            if let Some(class) = class {
                self.metrics.request_families.record_unmatched(class);
            }
            return;
        };
        if let Some(group) = self.counts.group(at.service, at.served) {
            group.record(class, a.elapsed);
        }
        if let Some(decision) = self.counts.decision(at.rule, at.decided) {
            decision.fetch_add(1, Relaxed);
        }
        if let Some(kind) = a.upstream_error {
            self.metrics
                .record_upstream_error(a.service, a.served, kind);
        }
    }

    /// Counts an attempt of goal `goal` (named `name`) by a request decided for `version`
    /// (index `at`), and its conversion.
    pub fn record_goal(&self, goal: usize, name: &str, at: usize, version: &str, converted: bool) {
        let (attempts, conversions) = self.goal_counters(goal * self.versions + at, name, version);
        attempts.inc();
        if converted {
            conversions.inc();
        }
    }
}

impl Drop for GenerationSeries {
    /// No request holds the generation any more: its counts join the series' totals.
    fn drop(&mut self) {
        self.metrics.request_families.retire(&self.counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two versions, a service with both groups and one with only the first, two rules
    /// (with `default` and `override`, four slots), one goal.
    fn series() -> GenerationSeries {
        GenerationSeries::new(
            Arc::new(Metrics::new()),
            &SeriesLayout {
                versions: &["stable", "canary"],
                services: &[("web", vec![0, 1]), ("api", vec![0])],
                rules: &["r1", "r2", "default", "override"],
                goals: &["signup"],
            },
        )
    }

    fn exposition(series: &GenerationSeries) -> String {
        String::from_utf8(series.metrics.render()).unwrap()
    }

    #[test]
    fn a_generation_prepares_its_groups_and_goals_at_zero() {
        let text = exposition(&series());
        for line in [
            r#"graygate_requests_total{service="web",status_class="5xx",version="canary"} 0"#,
            r#"graygate_requests_total{service="api",status_class="2xx",version="stable"} 0"#,
            r#"graygate_retries_total{reason="reset",service="api",version="stable"} 0"#,
            r#"graygate_goal_attempts_total{goal="signup",version="canary"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"service="api",status_class="2xx",version="canary""#));
        assert!(!text.contains("status_class=\"1xx\""), "1xx only once seen");
        assert!(
            !text.contains("graygate_decisions_total{"),
            "decisions once made"
        );
    }

    #[test]
    fn requests_count_in_the_series_their_indices_name() {
        let series = series();
        let answered = |at, status| Answered {
            at,
            service: "web",
            served: "stable",
            decided: "canary",
            rule: "r2",
            status,
            elapsed: Duration::from_millis(3),
            upstream_error: None,
        };
        let at = SeriesAt {
            service: 0,
            served: 0,
            decided: 1,
            rule: 1,
        };
        for status in [200, 204, 503] {
            series.record(&answered(Some(at), status));
        }
        series.record(&answered(None, 404));
        series.record_goal(0, "signup", 1, "canary", true);
        series.record_goal(0, "signup", 1, "canary", false);
        let text = exposition(&series);
        for line in [
            r#"graygate_requests_total{service="web",status_class="2xx",version="stable"} 2"#,
            r#"graygate_requests_total{service="web",status_class="5xx",version="stable"} 1"#,
            r#"graygate_decisions_total{rule="r2",version="canary"} 3"#,
            r#"graygate_request_duration_seconds_count{service="web",version="stable"} 3"#,
            r#"graygate_requests_total{service="unmatched",status_class="4xx",version="unmatched"} 1"#,
            r#"graygate_goal_attempts_total{goal="signup",version="canary"} 2"#,
            r#"graygate_goal_total{goal="signup",version="canary"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"graygate_request_duration_seconds_count{service="unmatched""#),
            "a request answered before routing has no duration series"
        );
    }

    #[test]
    fn a_retired_generations_counts_stay_in_their_series() {
        let metrics = Arc::new(Metrics::new());
        let services = [("web", vec![0, 1])];
        let layout = |rules| SeriesLayout {
            versions: &["stable", "canary"],
            services: &services,
            rules,
            goals: &[],
        };
        let answered = |rule, elapsed_ms| Answered {
            at: Some(SeriesAt {
                service: 0,
                served: 1,
                decided: 1,
                rule: 0,
            }),
            service: "web",
            served: "canary",
            decided: "canary",
            rule,
            status: 200,
            elapsed: Duration::from_millis(elapsed_ms),
            upstream_error: None,
        };
        let first = GenerationSeries::new(
            Arc::clone(&metrics),
            &layout(&["r1", "default", "override"]),
        );
        first.record(&answered("r1", 2));
        // The next generation renames the rule: r1's series keeps its count.
        let second = GenerationSeries::new(
            Arc::clone(&metrics),
            &layout(&["r9", "default", "override"]),
        );
        second.record(&answered("r9", 20));
        let both = String::from_utf8(metrics.render()).unwrap();
        drop(first);
        let after = String::from_utf8(metrics.render()).unwrap();
        for text in [&both, &after] {
            for line in [
                r#"graygate_requests_total{service="web",status_class="2xx",version="canary"} 2"#,
                r#"graygate_requests_total{service="web",status_class="2xx",version="stable"} 0"#,
                r#"graygate_decisions_total{rule="r1",version="canary"} 1"#,
                r#"graygate_decisions_total{rule="r9",version="canary"} 1"#,
                r#"graygate_request_duration_seconds_bucket{service="web",version="canary",le="0.0025"} 1"#,
                r#"graygate_request_duration_seconds_bucket{service="web",version="canary",le="0.025"} 2"#,
                r#"graygate_request_duration_seconds_sum{service="web",version="canary"} 0.022"#,
                r#"graygate_request_duration_seconds_count{service="web",version="canary"} 2"#,
            ] {
                assert!(text.contains(line), "{line} missing from\n{text}");
            }
        }
        assert_eq!(both, after, "retiring a generation changes no series");
        drop(second);
        assert_eq!(String::from_utf8(metrics.render()).unwrap(), after);
    }
}
