//! Hot reload and the admin API against the real server: edits of the rules file take
//! effect live, broken rules never replace good ones, reloads under load fail no request.

mod support;

use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, http_request, Backend, Response};

const TOKEN: &str = "test-admin-token";

/// Rules with a uid split between canary and stable.
fn split_rules(stable: &Backend, canary: &Backend, canary_weight: u32, extra: &str) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:X-User-Id] }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary: {{ peers: [\"{}\"] }}\n\
         rules:\n  - {{ name: ramp, split: {{ by: uid, weights: {{ canary: {canary_weight}, stable: {} }} }} }}\n{extra}",
        stable.addr(),
        canary.addr(),
        100 - canary_weight
    )
}

fn uid_get(gg: &Graygate, uid: u32) -> Response {
    get(
        gg.proxy,
        "www.example.com",
        "/",
        &[("X-User-Id", uid.to_string().as_bytes())],
    )
}

/// Writes the rules file the way editors do: a new file renamed over the old one.
fn write_rules(gg: &Graygate, text: &str) {
    let tmp = gg.rules_file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &gg.rules_file).unwrap();
}

fn admin(gg: &Graygate, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
    http_request(gg.admin, raw.as_bytes()).expect("admin request")
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_text()))
}

/// Failures seen by a background load, split by kind.
#[derive(Default, Debug)]
struct LoadFailures {
    sent: usize,
    refused: Vec<String>,
    other: Vec<String>,
}

/// Sequential requests (a new connection each) over many uids until `stop` is set.
fn start_load(gg: &Graygate, stop: Arc<AtomicBool>) -> thread::JoinHandle<LoadFailures> {
    let proxy = gg.proxy;
    thread::spawn(move || {
        let mut failures = LoadFailures::default();
        let started = Instant::now();
        let mut uid = 0u32;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
            uid = uid.wrapping_add(7919);
            let raw = format!("GET / HTTP/1.1\r\nHost: www.example.com\r\nX-User-Id: {uid}\r\nConnection: close\r\n\r\n");
            failures.sent += 1;
            match http_request(proxy, raw.as_bytes()) {
                Ok(r) if r.status == 200 => {}
                Ok(r) => {
                    failures
                        .other
                        .push(format!("uid {uid}: status {} {}", r.status, r.body_text()))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    failures.refused.push(format!("uid {uid}: {e}"))
                }
                Err(e) => failures.other.push(format!("uid {uid}: {e}")),
            }
        }
        failures
    })
}

fn assert_no_failures(f: &LoadFailures) {
    assert!(f.sent > 0, "the load sent nothing");
    assert!(
        f.refused.is_empty() && f.other.is_empty(),
        "{} refused and {} other failures out of {} requests: {:?} {:?}",
        f.refused.len(),
        f.other.len(),
        f.sent,
        &f.refused[..f.refused.len().min(3)],
        &f.other[..f.other.len().min(3)]
    );
}

#[test]
fn a_split_edited_from_0_to_100_percent_is_followed_within_2_seconds() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start(&split_rules(&stable, &canary, 0, ""));
    for uid in 0..20 {
        assert_eq!(uid_get(&gg, uid).body_text(), "stable", "uid {uid} at 0%");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&gg, Arc::clone(&stop));
    thread::sleep(Duration::from_millis(200));

    write_rules(&gg, &split_rules(&stable, &canary, 100, ""));
    let edited = Instant::now();
    assert_eventually(
        Duration::from_secs(2),
        "every uid on canary after the edit",
        || (0..20).all(|uid| uid_get(&gg, uid).body_text() == "canary"),
    );
    let took = edited.elapsed();
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    assert_no_failures(&load.join().unwrap());
    assert_eq!(
        gg.store.current().generation,
        2,
        "one edit, one new generation"
    );
    eprintln!("routing followed the edit after {took:?}");
}

#[test]
fn broken_rules_keep_the_last_good_generation_serving() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start(&split_rules(&stable, &canary, 100, ""));
    assert_eq!(uid_get(&gg, 1).body_text(), "canary");
    let errors = |gg: &Graygate| {
        metric(
            &gg.scrape(),
            "graygate_rules_reload_total",
            &[("result", "error")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(errors(&gg), 0.0);

    // A YAML syntax error, then a rule naming an unknown version.
    write_rules(&gg, "versions: { stable: {}\n");
    assert_eventually(
        Duration::from_secs(3),
        "the broken file counted as a reload error",
        || errors(&gg) >= 1.0,
    );
    write_rules(
        &gg,
        &split_rules(
            &stable,
            &canary,
            100,
            "  - { name: bad, version: nightly }\n",
        ),
    );
    assert_eventually(
        Duration::from_secs(3),
        "the unknown version counted as a reload error",
        || errors(&gg) >= 2.0,
    );
    assert_eq!(
        gg.store.current().generation,
        1,
        "no new generation from broken rules"
    );
    assert_eq!(
        metric(&gg.scrape(), "graygate_rules_generation", &[]),
        Some(1.0)
    );
    for uid in 0..20 {
        assert_eq!(
            uid_get(&gg, uid).body_text(),
            "canary",
            "the last good rules still serve uid {uid}"
        );
    }

    write_rules(&gg, &split_rules(&stable, &canary, 0, ""));
    assert_eventually(
        Duration::from_secs(3),
        "the fixed file becomes generation 2",
        || gg.store.current().generation == 2,
    );
    assert_eq!(uid_get(&gg, 1).body_text(), "stable");
    let text = gg.scrape();
    assert_eq!(metric(&text, "graygate_rules_generation", &[]), Some(2.0));
    assert!(
        metric(&text, "graygate_rules_reload_total", &[("result", "ok")]).unwrap_or(0.0) >= 1.0
    );
}

#[test]
fn fifty_reloads_under_load_fail_no_request() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(&split_rules(&stable, &canary, 50, ""), Some(TOKEN));
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2).map(|_| start_load(&gg, Arc::clone(&stop))).collect();
    let generations = Mutex::new(Vec::new());
    for i in 0..50u32 {
        // Each reload changes the weights, so each is a real new generation.
        write_rules(&gg, &split_rules(&stable, &canary, i * 2 % 100, ""));
        let r = admin(&gg, "POST", "/-/reload", Some(TOKEN));
        assert_eq!(r.status, 200, "reload {i}: {}", r.body_text());
        generations
            .lock()
            .unwrap()
            .push(json(&r)["generation"].as_u64().unwrap_or(0));
        thread::sleep(Duration::from_millis(60));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for load in loads {
        let failures = load.join().unwrap();
        total += failures.sent;
        assert_no_failures(&failures);
    }
    // The file watch may also have reloaded some edits first ("unchanged" for the admin
    // call then); either way the generation only ever grows.
    let generations = generations.into_inner().unwrap();
    assert!(
        generations.windows(2).all(|w| w[0] <= w[1]),
        "{generations:?}"
    );
    assert!(
        gg.store.current().generation >= 50,
        "generation {}",
        gg.store.current().generation
    );
    eprintln!("{total} requests during 50 reloads, none failed");
}

#[test]
fn requests_in_flight_finish_on_the_generation_they_started_with() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    stable.set_delay(Duration::from_millis(800));
    let gg = Graygate::start_with_token(&split_rules(&stable, &canary, 0, ""), Some(TOKEN));
    let proxy = gg.proxy;
    let in_flight =
        thread::spawn(move || get(proxy, "www.example.com", "/", &[("X-User-Id", b"5")]));
    thread::sleep(Duration::from_millis(200));
    write_rules(&gg, &split_rules(&stable, &canary, 100, ""));
    let r = admin(&gg, "POST", "/-/reload", Some(TOKEN));
    assert_eq!(r.status, 200);
    assert_eq!(
        uid_get(&gg, 5).body_text(),
        "canary",
        "new requests use the new generation"
    );
    let r = in_flight.join().unwrap();
    assert_eq!((r.status, r.body_text()), (200, "stable".to_string()));
    assert_eq!(r.header("x-seen-rule").as_deref(), Some("ramp"));
}

#[test]
fn unchanged_groups_keep_their_health_state_across_a_reload() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = |rule_name: &str| {
        format!(
            "versions: {{ stable: {{}}, canary: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:X-User-Id] }}\n\
             services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"], health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 100ms }} }}\n      \
             canary: {{ peers: [\"{}\"], health_check: {{ type: http, path: /healthz, interval: 30s, timeout: 100ms }} }}\n\
             rules:\n  - {{ name: {rule_name}, version: canary }}\n",
            stable.addr(),
            canary.addr()
        )
    };
    canary.set_healthy(false);
    let gg = Graygate::start_with_token(&rules("all-canary"), Some(TOKEN));
    let peers_healthy = |gg: &Graygate| -> Vec<bool> {
        let r = admin(gg, "GET", "/-/rules", Some(TOKEN));
        json(&r)["services"][0]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["peers"][0]["healthy"].as_bool().unwrap())
            .collect()
    };
    assert_eventually(
        Duration::from_secs(3),
        "the canary peer probed unhealthy",
        || peers_healthy(&gg) == vec![true, false],
    );
    assert_eq!(
        uid_get(&gg, 1).body_text(),
        "stable",
        "falls back while canary is down"
    );
    // A reload that changes only a rule name reuses both groups: the canary stays out.
    let pools = |gg: &Graygate| {
        let snapshot = gg.store.current();
        let web = &snapshot.services.services[0];
        web.groups()
            .map(|g| Arc::clone(&g.pool))
            .collect::<Vec<_>>()
    };
    let before = pools(&gg);
    write_rules(&gg, &rules("renamed"));
    let r = admin(&gg, "POST", "/-/reload", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let after = pools(&gg);
    assert!(
        before.iter().zip(&after).all(|(a, b)| Arc::ptr_eq(a, b)),
        "the reload rebuilt a group whose peers and settings did not change"
    );
    assert_eq!(
        peers_healthy(&gg),
        vec![true, false],
        "health state survived the reload"
    );
    assert_eq!(
        uid_get(&gg, 1).header("x-seen-rule").as_deref(),
        Some("renamed")
    );
    assert_eq!(uid_get(&gg, 1).body_text(), "stable");
}

#[test]
fn the_admin_api_needs_the_token() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(&split_rules(&stable, &canary, 100, ""), Some(TOKEN));
    for (method, path) in [
        ("GET", "/-/rules"),
        ("POST", "/-/reload"),
        ("GET", "/-/explain?uid=13"),
        ("GET", "/-/assignments/13"),
    ] {
        for token in [None, Some("wrong"), Some("test-admin-token-but-longer")] {
            let r = admin(&gg, method, path, token);
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
        }
    }
    assert_eq!(admin(&gg, "GET", "/metrics", None).status, 200);
    assert_eq!(admin(&gg, "GET", "/-/healthz", None).body_text(), "ok\n");

    let rules = json(&admin(&gg, "GET", "/-/rules", Some(TOKEN)));
    assert_eq!(rules["generation"], 1);
    assert_eq!(rules["default"], "stable");
    assert_eq!(rules["rules"], serde_json::json!(["ramp"]));
    assert_eq!(rules["content_hash"].as_str().map(str::len), Some(16));

    let reload = admin(&gg, "POST", "/-/reload", Some(TOKEN));
    assert_eq!(json(&reload)["result"], "unchanged");

    let explained = json(&admin(
        &gg,
        "GET",
        "/-/explain?uid=13&host=www.example.com&path=%2F",
        Some(TOKEN),
    ));
    assert_eq!(explained["version"], "canary");
    assert_eq!(explained["rule"], "ramp");
    assert_eq!(explained["steps"][0]["outcome"], "decided");
    // `listener=` names the listener the described request arrives on.
    let on = |listener: &str| {
        admin(
            &gg,
            "GET",
            &format!("/-/explain?uid=13&listener={listener}"),
            Some(TOKEN),
        )
    };
    assert_eq!(json(&on("http"))["version"], "canary");
    let unknown = on("lobby");
    assert_eq!(unknown.status, 400);
    assert!(
        unknown
            .body_text()
            .contains(r#"no listener is named \"lobby\"; the listeners are http"#),
        "{}",
        unknown.body_text()
    );

    let disabled = Graygate::start(&split_rules(&stable, &canary, 100, ""));
    let r = admin(&disabled, "GET", "/-/rules", Some(TOKEN));
    assert_eq!(
        r.status, 403,
        "no token configured: the API is disabled, not open"
    );
    assert!(
        r.body_text().contains("GRAYGATE_ADMIN_TOKEN"),
        "{}",
        r.body_text()
    );
}
