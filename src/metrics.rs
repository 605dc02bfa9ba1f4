//! Prometheus metrics: one [`Metrics`] owns its registry and every series graygate exports.
//!
//! Label values come only from configuration names (services, versions, rules, goals) and
//! fixed words, never from request data, so the number of series is bounded by the config.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// One answered request as the metrics see it: configuration names and fixed words only.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The service, or `unmatched`.
    pub service: &'a str,
    /// The version whose group served (after a fallback, the default's).
    pub served: &'a str,
    /// The decided version; `None` for a request answered before any decision.
    pub decided: Option<&'a str>,
    /// The deciding rule (or `default`).
    pub rule: &'a str,
    /// The status sent, 0 when none was.
    pub status: u16,
    /// From the request's arrival to the end of the response.
    pub elapsed: Duration,
    /// The `kind` of an upstream failure, if one ended the request.
    pub upstream_error: Option<&'static str>,
}

/// The `service` and `version` label of requests no service matched.
pub const UNMATCHED: &str = "unmatched";

/// Every series graygate exports.
pub struct Metrics {
    registry: Registry,
    /// `graygate_requests_total{service,version,status_class}`
    pub requests: IntCounterVec,
    /// `graygate_request_duration_seconds{service,version}`
    pub request_duration: HistogramVec,
    /// `graygate_upstream_errors_total{service,version,kind}`
    pub upstream_errors: IntCounterVec,
    /// `graygate_decisions_total{rule,version}`
    pub decisions: IntCounterVec,
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
        let requests = counter(
            "graygate_requests_total",
            "Requests answered, per service, served version and status class.",
            &["service", "version", "status_class"],
        );
        let upstream_errors = counter(
            "graygate_upstream_errors_total",
            "Upstream failures, per service, version and kind.",
            &["service", "version", "kind"],
        );
        let decisions = counter(
            "graygate_decisions_total",
            "Routing decisions, per deciding rule and version.",
            &["rule", "version"],
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
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "graygate_request_duration_seconds",
                "Time from request to the end of the response, per service and version.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["service", "version"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("unique metric name");
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
            requests,
            request_duration,
            upstream_errors,
            decisions,
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

    /// Creates at 0 the request series of one service's group, so that rates and ratios
    /// exist before the first event (a first 5xx).
    pub fn prepare_requests(&self, service: &str, version: &str) {
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            self.requests.with_label_values(&[service, version, class]);
        }
        for reason in ["connect", "reused_connection", "reset"] {
            self.retries.with_label_values(&[service, version, reason]);
        }
    }

    /// Creates at 0 the attempt and conversion series of one goal for one version.
    pub fn prepare_goal(&self, goal: &str, version: &str) {
        let labels = [goal, version];
        self.goals.with_label_values(&labels);
        self.goal_attempts.with_label_values(&labels);
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

    /// Counts one answered request: its status class, its duration, its decision and its
    /// upstream failure, if any.
    pub fn record(&self, a: &Answered) {
        if a.status > 0 {
            self.requests
                .with_label_values(&[a.service, a.served, status_class(a.status)])
                .inc();
        }
        let Some(decided) = a.decided else {
            return;
        };
        self.decisions.with_label_values(&[a.rule, decided]).inc();
        self.request_duration
            .with_label_values(&[a.service, a.served])
            .observe(a.elapsed.as_secs_f64());
        if let Some(kind) = a.upstream_error {
            self.record_upstream_error(a.service, a.served, kind);
        }
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

    /// Counts a goal attempt of `version`, and its conversion.
    pub fn record_goal(&self, goal: &str, version: &str, converted: bool) {
        let labels = [goal, version];
        self.goal_attempts.with_label_values(&labels).inc();
        if converted {
            self.goals.with_label_values(&labels).inc();
        }
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

/// `2xx`, `4xx`... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
