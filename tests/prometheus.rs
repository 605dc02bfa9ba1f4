//! The shipped Grafana queries and alert rules (deploy/) against a real Prometheus scraping a
//! real graygate: the metric and label names they use are the ones graygate exports (SPEC 7).
//!
//! graygate runs in-process with a stable and a canary group; a real `prometheus` (from PATH)
//! scrapes its admin listener every second and loads `deploy/prometheus/alerts.yml`. Traffic
//! reaches both versions while Prometheus scrapes, with a stretch of 500s from the canary, then
//! every query of `deploy/grafana/queries.txt` runs through Prometheus's HTTP API.
//!
//! The test is skipped (with a message) only when no `prometheus` binary is on PATH;
//! `make test` installs it (scripts/install-deps.sh test).

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use support::graygate::Graygate;
use support::{get, http_request, Backend, Response};

/// Every wait of this test is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The first executable called `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A `prometheus` server on a loopback port the kernel chose, with its storage in a temporary
/// directory. Killed on drop.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `bin` scraping `target` every second, with `rules` loaded, and waits until it is
    /// ready.
    ///
    /// Prometheus binds its port itself and cannot be handed a listener (it has no option to
    /// take an inherited socket), but it accepts `--web.listen-address=127.0.0.1:0` and logs
    /// the address it bound (see [`listening_on`]), so the kernel chooses the port.
    fn start(bin: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("graygate-prometheus-")
            .tempdir()
            .expect("prometheus: temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: graygate\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus: write config");
        let log = File::create(dir.path().join("prometheus.log")).expect("prometheus: log");
        let log2 = log.try_clone().expect("prometheus: log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            // The "Listening on" line, with the port, is logged at info.
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut prom = Prometheus {
            // Known once Prometheus logs it; nothing is sent before.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            dir,
        };
        let started = Instant::now();
        let mut bound = None;
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited early ({status}); log:\n{}", prom.log());
            }
            if bound.is_none() {
                bound = listening_on(&prom.log());
            }
            if let Some(addr) = bound {
                if http(addr, "/-/ready").is_some_and(|r| r.status == 200) {
                    prom.addr = addr;
                    return prom;
                }
            }
            if started.elapsed() > DEADLINE {
                let state = match bound {
                    Some(addr) => format!("not ready on {addr}"),
                    None => "did not log the address it listens on".to_string(),
                };
                panic!(
                    "prometheus {state} within {DEADLINE:?}; log:\n{}",
                    prom.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API; the `data` of a successful JSON answer.
    fn api(&self, path: &str) -> Value {
        let r =
            http(self.addr, path).unwrap_or_else(|| panic!("prometheus did not answer GET {path}"));
        let json: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "GET {path}: not JSON ({e}), status {}: {}",
                r.status,
                r.body_text()
            )
        });
        assert!(
            r.status == 200 && json["status"] == "success",
            "GET {path}: status {}: {json}",
            r.status
        );
        json["data"].clone()
    }

    /// An instant query; the result vector as (labels, value) pairs.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(promql, NON_ALPHANUMERIC)
        );
        let data = self.api(&path);
        assert_eq!(data["resultType"], "vector", "query {promql}: {data}");
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql}: no result array: {data}"))
            .iter()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .expect("sample labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("query {promql}: bad sample {sample}"));
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until `done` accepts its result; panics with the last result after
    /// [`DEADLINE`].
    fn wait_for(
        &self,
        what: &str,
        promql: &str,
        done: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let result = self.query(promql);
            if done(&result) {
                return;
            }
            if started.elapsed() > DEADLINE {
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}: {promql} = {result:?}; log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`, `None` on a connection error.
/// The address in Prometheus's `msg="Listening on" address=127.0.0.1:46711` log line, which
/// its web server logs at info once bound, with the port the kernel chose (checked with
/// Prometheus 2.42; the earlier "Start listening for connections" line still says `:0`).
fn listening_on(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("msg=\"Listening on\""))
        .flat_map(str::split_whitespace)
        .find_map(|field| {
            field
                .strip_prefix("address=")?
                .trim_matches('"')
                .parse()
                .ok()
        })
        .filter(|addr: &SocketAddr| addr.port() != 0)
}

fn http(addr: SocketAddr, path: &str) -> Option<Response> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_request(addr, raw.as_bytes()).ok()
}

/// `{version: value}` of a result with one series per version; panics on anything else.
fn by_version(what: &str, result: &[(BTreeMap<String, String>, f64)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in result {
        let version = labels
            .get("version")
            .unwrap_or_else(|| panic!("{what}: series without a version label: {labels:?}"));
        assert!(
            out.insert(version.clone(), *value).is_none(),
            "{what}: two series for version {version}: {result:?}"
        );
    }
    assert_eq!(
        out.keys().map(String::as_str).collect::<Vec<_>>(),
        ["canary", "stable"],
        "{what}: expected one series per version: {result:?}"
    );
    out
}

fn rules(stable: &Backend, canary: &Backend) -> String {
    let hc = "health_check: { type: http, path: /healthz, interval: 200ms, timeout: 200ms }";
    format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\n\
         identity: {{ uid: [header:X-User-Id] }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n\
         \x20     stable: {{ peers: [\"{}\"], {hc} }}\n\
         \x20     canary: {{ peers: [\"{}\"], {hc} }}\n\
         rules:\n  - name: tail-30pct\n    when: {{ uid_tail: [1, 2, 3] }}\n    version: canary\n\
         goals:\n  - name: signup\n    when: {{ method: [POST], path_prefix: /register }}\n    status: 2xx\n",
        stable.addr(),
        canary.addr()
    )
}

/// Sends rounds of traffic for `duration`: per round `GET /` for uids 1..=10 (tails 1, 2, 3 go
/// to the canary) and `POST /register` for uids 11 (canary) and 14 (stable). Returns the
/// number of requests answered.
fn drive(gg: &Graygate, duration: Duration) -> u64 {
    let mut sent = 0;
    let started = Instant::now();
    while started.elapsed() < duration {
        for uid in 1..=10u32 {
            let r = get(
                gg.proxy,
                "www.example.com",
                "/",
                &[("X-User-Id", uid.to_string().as_bytes())],
            );
            assert!(r.status == 200 || r.status == 500, "GET /: {}", r.status);
            sent += 1;
        }
        for uid in [11, 14] {
            let raw = format!(
                "POST /register HTTP/1.1\r\nHost: www.example.com\r\nX-User-Id: {uid}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let r = http_request(gg.proxy, raw.as_bytes()).expect("POST /register");
            assert!(r.status == 200 || r.status == 500, "POST: {}", r.status);
            sent += 1;
        }
        thread::sleep(Duration::from_millis(40));
    }
    sent
}

#[test]
fn dashboard_queries_and_alerts_work_on_real_metrics() {
    let Some(bin) = on_path("prometheus") else {
        eprintln!(
            "SKIPPED dashboard_queries_and_alerts_work_on_real_metrics: no `prometheus` binary \
             on PATH (make deps-test / scripts/install-deps.sh test installs it)"
        );
        return;
    };
    let queries_text =
        std::fs::read_to_string(repo_file("deploy/grafana/queries.txt")).expect("queries.txt");
    let queries: Vec<&str> = queries_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let find = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        queries
            .iter()
            .find(|q| pred(q))
            .unwrap_or_else(|| panic!("deploy/grafana/queries.txt has no {what} query"))
            .to_string()
    };
    let request_rate = find("request rate by version", &|q| {
        q.starts_with("sum by (version) (rate(graygate_requests_total{") && !q.contains("5xx")
    });
    let error_ratio = find("5xx share by version", &|q| {
        q.contains("status_class=\"5xx\"") && q.contains("sum by (version)")
    });
    let p99 = find("p99 by version", &|q| {
        q.starts_with("histogram_quantile(0.99,") && q.contains("by (le, version)")
    });
    let p50 = find("p50 by version", &|q| {
        q.starts_with("histogram_quantile(0.5,") && q.contains("by (le, version)")
    });
    let conversion = find("goal conversion", &|q| q.contains("graygate_goal_total"));
    let peer_health = find("peer health", &|q| {
        q.contains("graygate_upstream_peer_healthy")
    });

    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&rules(&stable, &canary));
    let prom = Prometheus::start(&bin, gg.admin, &repo_file("deploy/prometheus/alerts.yml"));
    prom.wait_for(
        "a successful scrape of graygate",
        "up{job=\"graygate\"}",
        |r| r.len() == 1 && r[0].1 == 1.0,
    );

    // Traffic across several scrapes, with a stretch of canary 500s in the middle.
    let mut sent = drive(&gg, Duration::from_millis(2500));
    canary.set_status(500);
    sent += drive(&gg, Duration::from_millis(3000));
    canary.set_status(200);
    sent += drive(&gg, Duration::from_millis(2000));
    prom.wait_for(
        "a scrape after the last request",
        "sum(graygate_requests_total)",
        |r| r.len() == 1 && r[0].1 == sent as f64,
    );

    // Every dashboard query is valid PromQL over the real series.
    for q in &queries {
        prom.query(q);
    }

    let rates = by_version("request rate", &prom.query(&request_rate));
    for (version, rate) in &rates {
        assert!(*rate > 0.0, "request rate of {version}: {rates:?}");
    }
    let errors = by_version("error ratio", &prom.query(&error_ratio));
    assert_eq!(errors["stable"], 0.0, "stable 5xx share: {errors:?}");
    assert!(
        errors["canary"] > 0.0 && errors["canary"] < 1.0,
        "canary 5xx share: {errors:?}"
    );
    let p99s = by_version("p99", &prom.query(&p99));
    let p50s = by_version("p50", &prom.query(&p50));
    for (version, p99) in &p99s {
        let p50 = p50s[version];
        assert!(
            p99.is_finite() && *p99 > 0.0 && *p99 <= 10.0 && p50 > 0.0 && p50 <= *p99,
            "latency of {version}: p50 {p50}, p99 {p99}"
        );
    }
    let conversions = by_version("goal conversion", &prom.query(&conversion));
    for (version, ratio) in &conversions {
        assert!(
            *ratio > 0.0 && *ratio < 1.0,
            "signup conversions per request of {version}: {conversions:?}"
        );
    }
    eprintln!(
        "requests/s {rates:?}; 5xx share {errors:?}; p50 {p50s:?}; p99 {p99s:?}; \
         signups/request {conversions:?}"
    );
    let health = by_version("peer health", &prom.query(&peer_health));
    assert!(
        health.values().all(|h| *h == 1.0),
        "peer health: {health:?}"
    );

    // The alert rules load and evaluate cleanly against the real series, and the canary's 5xx
    // share (stable has none) makes the error alert pending on its labels.
    prom.wait_for(
        "GraygateCanaryErrorRateHigh pending for web/canary",
        "ALERTS{alertname=\"GraygateCanaryErrorRateHigh\"}",
        |r| {
            r.iter().any(|(l, _)| {
                l.get("service").map(String::as_str) == Some("web")
                    && l.get("version").map(String::as_str) == Some("canary")
            })
        },
    );
    // Rules report health "unknown" until their first evaluation.
    let started = Instant::now();
    let rules = loop {
        let groups = prom.api("/api/v1/rules");
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .expect("rule groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").clone())
            .collect();
        if rules.iter().all(|r| r["health"] != "unknown") {
            break rules;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "alert rules not evaluated within {DEADLINE:?}: {groups}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rules.len(), 12, "alert rules loaded: {rules:?}");
    for rule in &rules {
        assert_eq!(rule["type"], "alerting", "{rule}");
        assert_eq!(rule["health"], "ok", "rule evaluation failed: {rule}");
    }
}
