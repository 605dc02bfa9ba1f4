//! The Prometheus series on the admin listener's `/metrics` (SPEC 7): exact counts per
//! version, latency buckets, decisions, goals, unmatched requests, peer health, and a bounded
//! number of series whatever the requests carry.
//!
//! Every test runs the real server in-process against real loopback backends and reads the
//! metrics the way Prometheus does, by scraping the text exposition. `logging` records a
//! request after its response went out, so each test first waits until the counters reached
//! the number of requests sent, then asserts exact values on one scrape.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, http_request, Backend, KeepAlive, Response};

const HOST: &str = "www.example.com";

/// How long a test waits for `logging` to record the requests it sent.
const SETTLE: Duration = Duration::from_secs(5);

/// Serializes the latency-sensitive test and the 10,000-request one, so that the latency
/// buckets do not depend on the load of a test running beside them.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy_lock() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rules for one service `web` on `hosts` (a YAML flow list) with a stable and a canary
/// group; uid tail 1 goes to the canary (rule `r`), everyone else to the default (stable).
/// `group_extra` is appended inside each group's mapping (`, health_check: {...}`), `extra`
/// to the file (`goals:`).
fn rules(
    stable: &Backend,
    canary: &Backend,
    hosts: &str,
    uid_sources: &str,
    group_extra: &str,
    extra: &str,
) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\n\
         identity: {{ uid: [{uid_sources}] }}\n\
         services:\n  web:\n    hosts: {hosts}\n    groups:\n\
         \x20     stable: {{ peers: [\"{}\"]{group_extra} }}\n\
         \x20     canary: {{ peers: [\"{}\"]{group_extra} }}\n\
         rules:\n  - name: r\n    when: {{ uid_tail: [1] }}\n    version: canary\n{extra}",
        stable.addr(),
        canary.addr()
    )
}

const SIGNUP_GOAL: &str = "goals:\n  - name: signup\n    when: { method: [POST], path_prefix: /register }\n    status: 2xx\n";

/// The value of the series `name{labels}`, which must exist.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels)
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in the metrics:\n{text}"))
}

/// Scrapes until `done` accepts the text (the last responses' `logging` has run), then
/// returns that scrape; panics with the last scrape after [`SETTLE`].
fn scrape_when(gg: &Graygate, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = gg.scrape();
        if done(&text) {
            return text;
        }
        if started.elapsed() > SETTLE {
            panic!("timed out after {SETTLE:?} waiting for {what}; metrics:\n{text}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The series of a scrape (name and labels, without the value).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metrics line {l:?}"))
                .0
                .to_string()
        })
        .collect()
}

/// `POST path` with `X-User-Id: uid` and an empty body.
fn post(gg: &Graygate, path: &str, uid: u64) -> Response {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nX-User-Id: {uid}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    http_request(gg.proxy, raw.as_bytes())
        .unwrap_or_else(|e| panic!("POST {path} for uid {uid} failed: {e}"))
}

fn get_uid(gg: &Graygate, path: &str, uid: u64) -> Response {
    get(
        gg.proxy,
        HOST,
        path,
        &[("X-User-Id", uid.to_string().as_bytes())],
    )
}

fn assert_answer(r: &Response, status: u16, body: &str, what: &str) {
    assert_eq!(
        (r.status, r.body_text()),
        (status, body.to_string()),
        "{what}: unexpected answer"
    );
}

#[test]
fn counters_and_histograms_per_version() {
    const N: u64 = 20;
    const M: u64 = 10;
    let _serial = heavy_lock();
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    canary.set_status(500);
    canary.set_delay(Duration::from_millis(60));
    let gg = Graygate::start(&rules(
        &stable,
        &canary,
        "[\"*\"]",
        "header:X-User-Id",
        "",
        "",
    ));

    // Stable: uids whose last digit is not 1; canary: uids ending in 1.
    let stable_uids: Vec<u64> = (100..).filter(|n| n % 10 != 1).take(N as usize).collect();
    for &uid in &stable_uids {
        assert_answer(
            &get_uid(&gg, "/", uid),
            200,
            "stable",
            &format!("uid {uid}"),
        );
    }
    for uid in (0..M).map(|i| 200 + 10 * i + 1) {
        assert_answer(
            &get_uid(&gg, "/", uid),
            500,
            "canary",
            &format!("uid {uid}"),
        );
    }
    assert_eq!((stable.requests(), canary.requests()), (20, 10));

    let text = scrape_when(&gg, "30 requests in the latency histogram", |t| {
        metric(t, "graygate_request_duration_seconds_count", &[]) == Some((N + M) as f64)
    });
    let requests = |version: &str, class: &str| {
        value(
            &text,
            "graygate_requests_total",
            &[
                ("service", "web"),
                ("version", version),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(requests("stable", "2xx"), N as f64, "stable 2xx");
    assert_eq!(requests("canary", "5xx"), M as f64, "canary 5xx");
    // Created at 0 when the rules loaded, although no canary request succeeded.
    assert_eq!(requests("canary", "2xx"), 0.0, "canary 2xx");
    assert_eq!(requests("stable", "5xx"), 0.0, "stable 5xx");
    for class in ["3xx", "4xx"] {
        assert_eq!(requests("stable", class), 0.0, "stable {class}");
        assert_eq!(requests("canary", class), 0.0, "canary {class}");
    }
    assert_eq!(
        metric(&text, "graygate_requests_total", &[]),
        Some((N + M) as f64),
        "every request counted once in graygate_requests_total; metrics:\n{text}"
    );

    let duration = |suffix: &str, version: &str, le: Option<&str>| {
        let name = format!("graygate_request_duration_seconds_{suffix}");
        let mut labels = vec![("service", "web"), ("version", version)];
        labels.extend(le.map(|le| ("le", le)));
        value(&text, &name, &labels)
    };
    assert_eq!(duration("count", "stable", None), N as f64, "stable count");
    assert_eq!(duration("count", "canary", None), M as f64, "canary count");
    // The canary takes 60 ms: above the 0.05 bucket, within the next one (0.1).
    assert_eq!(
        duration("bucket", "canary", Some("0.05")),
        0.0,
        "canary requests faster than 50 ms; metrics:\n{text}"
    );
    assert_eq!(
        duration("bucket", "canary", Some("0.1")),
        M as f64,
        "canary requests within 100 ms; metrics:\n{text}"
    );
    assert_eq!(duration("bucket", "canary", Some("+Inf")), M as f64);
    let canary_sum = duration("sum", "canary", None);
    assert!(
        (0.06 * M as f64..0.1 * M as f64).contains(&canary_sum),
        "canary duration sum {canary_sum} s for {M} requests of 60 ms"
    );
    assert_eq!(
        duration("bucket", "stable", Some("0.05")),
        N as f64,
        "stable requests within 50 ms; metrics:\n{text}"
    );
    assert_eq!(duration("bucket", "stable", Some("+Inf")), N as f64);

    let decisions = |rule: &str, version: &str| {
        metric(
            &text,
            "graygate_decisions_total",
            &[("rule", rule), ("version", version)],
        )
    };
    assert_eq!(decisions("r", "canary"), Some(M as f64), "rule r -> canary");
    assert_eq!(
        decisions("default", "stable"),
        Some(N as f64),
        "default -> stable"
    );
    assert_eq!(
        metric(&text, "graygate_decisions_total", &[]),
        Some((N + M) as f64),
        "no other decision counted; metrics:\n{text}"
    );
    // A 500 answered by the upstream is not an upstream error, and nothing fell back.
    assert_eq!(
        metric(&text, "graygate_upstream_errors_total", &[]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&text, "graygate_fallbacks_total", &[]).unwrap_or(0.0),
        0.0
    );
}

#[test]
fn goals_count_only_their_version_and_status() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    canary.set_status(500);
    let gg = Graygate::start(&rules(
        &stable,
        &canary,
        "[\"*\"]",
        "header:X-User-Id",
        "",
        SIGNUP_GOAL,
    ));

    for _ in 0..3 {
        assert_answer(&post(&gg, "/register", 14), 200, "stable", "POST, uid 14");
    }
    for _ in 0..2 {
        assert_answer(&post(&gg, "/register", 11), 500, "canary", "POST, uid 11");
    }
    // Neither GETs nor other paths meet the goal's conditions.
    assert_answer(&get_uid(&gg, "/register", 14), 200, "stable", "GET, uid 14");
    assert_answer(&get_uid(&gg, "/register", 11), 500, "canary", "GET, uid 11");
    assert_answer(&post(&gg, "/other", 14), 200, "stable", "POST /other");
    assert_answer(&post(&gg, "/other", 11), 500, "canary", "POST /other");

    let text = scrape_when(&gg, "9 requests in the latency histogram", |t| {
        metric(t, "graygate_request_duration_seconds_count", &[]) == Some(9.0)
    });
    let goal =
        |name: &str, version: &str| value(&text, name, &[("goal", "signup"), ("version", version)]);
    assert_eq!(goal("graygate_goal_total", "stable"), 3.0, "stable signups");
    assert_eq!(
        goal("graygate_goal_total", "canary"),
        0.0,
        "canary signups (every canary POST answered 500)"
    );
    assert_eq!(
        goal("graygate_goal_attempts_total", "stable"),
        3.0,
        "stable attempts (POSTs only)"
    );
    assert_eq!(
        goal("graygate_goal_attempts_total", "canary"),
        2.0,
        "canary attempts (POSTs only, whatever the status)"
    );
    assert_eq!(
        metric(&text, "graygate_goal_attempts_total", &[]),
        Some(5.0),
        "no other attempt series; metrics:\n{text}"
    );
    assert_eq!(metric(&text, "graygate_goal_total", &[]), Some(3.0));
}

/// `len` random characters from `alphabet`.
fn random_text(rng: &mut fastrand::Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Cookie values may hold any visible ASCII but `"`, `,`, `;` and `\`.
const COOKIE_CHARS: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()*+-./:<=>?@[]^_`{|}~";

/// A random request: `(raw, routed)`; `routed` is false for a host no service has.
fn random_request(rng: &mut fastrand::Rng) -> (Vec<u8>, bool) {
    let routed = rng.u8(..10) < 7;
    let host = if routed {
        match rng.u8(..3) {
            0 => format!("{HOST}:{}", rng.u16(1..)),
            _ => HOST.to_string(),
        }
    } else {
        format!(
            "h{}.example.net",
            random_text(rng, ALNUM, 12).to_lowercase()
        )
    };
    let path = match rng.u8(..4) {
        0 => "/register".to_string(),
        1 => format!("/register/{}", random_text(rng, ALNUM, 8)),
        _ => {
            let segments: Vec<String> = (0..rng.usize(1..4))
                .map(|_| {
                    let len = rng.usize(1..16);
                    random_text(rng, ALNUM, len)
                })
                .collect();
            format!(
                "/{}?{}={}",
                segments.join("/"),
                random_text(rng, ALNUM, 4),
                random_text(rng, ALNUM, 10)
            )
        }
    };
    let method = if rng.bool() { "POST" } else { "GET" };
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    let uid = match rng.u8(..3) {
        0 => rng.u64(..).to_string(),
        1 => {
            let len = rng.usize(1..40);
            random_text(rng, ALNUM, len)
        }
        _ => rng.u32(..).to_string(),
    };
    match rng.u8(..4) {
        0 => raw += &format!("X-User-Id: {uid}\r\n"),
        1 => raw += &format!("Cookie: uid={uid}\r\n"),
        2 => {
            raw += &format!(
                "Cookie: {}={}; uid={uid}; session={}\r\n",
                random_text(rng, ALNUM, 6),
                random_text(rng, COOKIE_CHARS, 30),
                random_text(rng, COOKIE_CHARS, 20)
            )
        }
        _ => {
            raw += &format!(
                "Cookie: {}={}\r\nX-{}: {}\r\n",
                random_text(rng, ALNUM, 6),
                random_text(rng, COOKIE_CHARS, 30),
                random_text(rng, ALNUM, 8),
                random_text(rng, ALNUM, 8)
            )
        }
    }
    if method == "POST" {
        raw += "Content-Length: 0\r\n";
    }
    raw += "\r\n";
    (raw.into_bytes(), routed)
}

#[test]
fn random_cookie_values_do_not_grow_the_series() {
    const REQUESTS: u64 = 10_000;
    const WORKERS: u64 = 8;
    let _serial = heavy_lock();
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&rules(
        &stable,
        &canary,
        &format!("[{HOST}]"),
        "cookie:uid, header:X-User-Id",
        "",
        SIGNUP_GOAL,
    ));

    // The peer health gauges are exported by a background task, once it first ticks.
    let fresh = scrape_when(&gg, "the peer health gauges", |t| {
        metric(t, "graygate_upstream_peer_healthy", &[]) == Some(2.0)
    });
    let fresh_series = series(&fresh);

    // One request of each kind the random traffic makes creates its series.
    assert_answer(&get_uid(&gg, "/", 4), 200, "stable", "uid 4");
    assert_answer(&get_uid(&gg, "/", 11), 200, "canary", "uid 11");
    let r = get(gg.proxy, "unknown.example.net", "/", &[]);
    assert_eq!(r.status, 404, "unknown host: {}", r.body_text());
    let warm = scrape_when(&gg, "the first 3 requests", |t| {
        metric(t, "graygate_request_duration_seconds_count", &[]) == Some(2.0)
            && metric(t, "graygate_requests_total", &[]) == Some(3.0)
    });
    let warm_series = series(&warm);
    let removed: Vec<_> = fresh_series.difference(&warm_series).collect();
    assert!(removed.is_empty(), "series vanished: {removed:#?}");
    // Exactly these label sets appear with the first requests (every other series was
    // created when the rules loaded).
    let mut expected: BTreeSet<String> = [
        "graygate_decisions_total{rule=\"default\",version=\"stable\"}".to_string(),
        "graygate_decisions_total{rule=\"r\",version=\"canary\"}".to_string(),
        "graygate_requests_total{service=\"unmatched\",status_class=\"4xx\",version=\"unmatched\"}"
            .to_string(),
    ]
    .into();
    for version in ["stable", "canary"] {
        let labels = format!("service=\"web\",version=\"{version}\"");
        for le in [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "+Inf",
        ] {
            expected.insert(format!(
                "graygate_request_duration_seconds_bucket{{{labels},le=\"{le}\"}}"
            ));
        }
        expected.insert(format!("graygate_request_duration_seconds_sum{{{labels}}}"));
        expected.insert(format!(
            "graygate_request_duration_seconds_count{{{labels}}}"
        ));
    }
    let added: BTreeSet<String> = warm_series.difference(&fresh_series).cloned().collect();
    let unexpected: Vec<_> = added.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&added).collect();
    assert!(
        unexpected.is_empty() && missing.is_empty(),
        "the first stable, canary and unmatched requests created unexpected series \
         {unexpected:#?} (series created when the rules loaded must exist before any \
         request) and did not create {missing:#?}"
    );

    let proxy = gg.proxy;
    let started = Instant::now();
    let routed: u64 = thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(0x6772_6179 + w);
                    let mut conn = KeepAlive::new(proxy);
                    let mut routed = 0;
                    for _ in (w..REQUESTS).step_by(WORKERS as usize) {
                        let (raw, is_routed) = random_request(&mut rng);
                        let r = conn.send(&raw);
                        let what = String::from_utf8_lossy(&raw);
                        if is_routed {
                            routed += 1;
                            let body = r.body_text();
                            assert!(
                                r.status == 200 && (body == "stable" || body == "canary"),
                                "status {} body {body:?} for {what:?}",
                                r.status
                            );
                        } else {
                            assert_eq!(r.status, 404, "for {what:?}");
                        }
                    }
                    routed
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("a request worker panicked (see above)"))
            .sum()
    });
    let elapsed = started.elapsed();
    assert!(routed > 0 && routed < REQUESTS, "{routed} routed");

    let after = scrape_when(&gg, "the 10,000 random requests", |t| {
        metric(t, "graygate_requests_total", &[]) == Some((3 + REQUESTS) as f64)
            && metric(t, "graygate_request_duration_seconds_count", &[])
                == Some((2 + routed) as f64)
    });
    let after_series = series(&after);
    let added: Vec<_> = after_series.difference(&warm_series).collect();
    let removed: Vec<_> = warm_series.difference(&after_series).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "{REQUESTS} random requests (sent in {elapsed:?}) changed the series: added \
         {added:#?}, removed {removed:#?}"
    );
    assert_eq!(
        value(
            &after,
            "graygate_requests_total",
            &[("service", "unmatched"), ("version", "unmatched")]
        ),
        (1 + REQUESTS - routed) as f64,
        "unmatched requests"
    );
    assert_eq!(
        metric(&after, "graygate_decisions_total", &[]),
        Some((2 + routed) as f64),
        "one decision per routed request"
    );
    eprintln!("{REQUESTS} random requests ({routed} routed) in {elapsed:?}");
}

#[test]
fn unmatched_requests_are_counted() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&rules(
        &stable,
        &canary,
        &format!("[{HOST}]"),
        "header:X-User-Id",
        "",
        "",
    ));
    let before = gg.scrape();
    assert_eq!(
        metric(
            &before,
            "graygate_requests_total",
            &[("service", "unmatched")]
        ),
        None,
        "no unmatched series before an unmatched request"
    );

    let r = get(gg.proxy, "other.example.org", "/", &[("X-User-Id", b"11")]);
    assert_eq!(r.status, 404, "other host: {}", r.body_text());
    assert_eq!(stable.requests() + canary.requests(), 0, "nothing proxied");

    let labels = [
        ("service", "unmatched"),
        ("version", "unmatched"),
        ("status_class", "4xx"),
    ];
    let text = scrape_when(&gg, "the unmatched request", |t| {
        metric(t, "graygate_requests_total", &labels).is_some()
    });
    assert_eq!(
        metric(&text, "graygate_requests_total", &labels),
        Some(1.0),
        "metrics:\n{text}"
    );
    assert_eq!(
        metric(&text, "graygate_requests_total", &[]),
        Some(1.0),
        "nothing counted for service web; metrics:\n{text}"
    );
    assert_eq!(
        metric(&text, "graygate_decisions_total", &[]),
        None,
        "no decision for an unmatched request"
    );
    assert_eq!(
        metric(&text, "graygate_request_duration_seconds_count", &[]),
        None
    );
}

#[test]
fn peer_health_gauge_follows_the_health_check() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let check = ", health_check: { type: http, path: /healthz, interval: 100ms, timeout: 500ms }";
    let gg = Graygate::start(&rules(
        &stable,
        &canary,
        "[\"*\"]",
        "header:X-User-Id",
        check,
        "",
    ));
    let health = |version: &str, peer: &Backend| {
        let peer = peer.addr().to_string();
        metric(
            &gg.scrape(),
            "graygate_upstream_peer_healthy",
            &[("service", "web"), ("version", version), ("peer", &peer)],
        )
    };
    assert_eventually(
        Duration::from_secs(3),
        "both peers probed and exported healthy",
        || {
            canary.healthz_requests() > 0
                && stable.healthz_requests() > 0
                && health("canary", &canary) == Some(1.0)
                && health("stable", &stable) == Some(1.0)
        },
    );

    canary.set_healthy(false);
    let started = Instant::now();
    assert_eventually(
        Duration::from_secs(3),
        "the canary peer's gauge falls to 0",
        || health("canary", &canary) == Some(0.0),
    );
    let down_after = started.elapsed();
    assert_eq!(health("stable", &stable), Some(1.0), "stable stays healthy");
    // Out of rotation: uid 11 falls back to stable.
    assert_answer(&get_uid(&gg, "/", 11), 200, "stable", "uid 11, canary down");

    canary.set_healthy(true);
    assert_eventually(
        Duration::from_secs(3),
        "the canary peer's gauge is 1 again",
        || health("canary", &canary) == Some(1.0),
    );
    assert_answer(&get_uid(&gg, "/", 11), 200, "canary", "uid 11, canary up");
    let text = gg.scrape();
    assert_eq!(
        metric(&text, "graygate_upstream_peer_healthy", &[]),
        Some(2.0),
        "one series per peer; metrics:\n{text}"
    );
    eprintln!("the gauge fell to 0 after {down_after:?}");
}
