//! One serving policy: the proxy, the mobile address API and `/-/explain` name the same group
//! (and the same fallback reason) for the same user, because all three ask
//! `Service::serving_group`. Also the admin API's small defects found in review: the token is
//! checked before the body is read, a reload compiles off the admin's worker, and a form
//! that cannot be read is called what it is.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, http_request, Backend, Response};

const TOKEN: &str = "serving-test-token";
const HOST: &str = "www.example.com";

fn rules(stable: &Backend, canary: &Backend) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}}, beta: {{}} }}\n\
         default: stable\n\
         address_api: {{ path: /.graygate/address, ttl: 60s }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"], public_addresses: [\"https://s.example.com\"] }}\n      canary:\n        peers: [\"{}\"]\n        public_addresses: [\"https://c.example.com\"]\n        health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 500ms }}\n\
         rules:\n  - {{ name: tail, when: {{ uid_tail: [3] }}, version: canary }}\n  - {{ name: betas, when: {{ uid_tail: [7] }}, version: beta }}\n",
        stable.addr(),
        canary.addr()
    )
}

fn admin(gg: &Graygate, method: &str, path: &str) -> Response {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    http_request(gg.admin, raw.as_bytes()).expect("admin request")
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body_text()))
}

/// What each of the three answers for `uid`: (proxy's serving version, address API's
/// version and reason, explain's group and reason).
struct Answers {
    proxy: String,
    address: (String, serde_json::Value),
    explain: (String, serde_json::Value),
}

fn answers(gg: &Graygate, uid: &str) -> Answers {
    let proxied = get(gg.proxy, HOST, "/", &[("X-User-Id", uid.as_bytes())]);
    assert_eq!(proxied.status, 200, "{}", proxied.body_text());
    let address = json(&get(
        gg.proxy,
        HOST,
        &format!("/.graygate/address?service=web&uid={uid}"),
        &[],
    ));
    let explained = json(&admin(
        gg,
        "GET",
        &format!("/-/explain?uid={uid}&host={HOST}&path=%2F"),
    ));
    Answers {
        proxy: proxied.header("x-seen-version").unwrap_or_default(),
        address: (
            address["version"].as_str().unwrap_or_default().to_string(),
            address["fallback_reason"].clone(),
        ),
        explain: (
            explained["group"].as_str().unwrap_or_default().to_string(),
            explained["fallback"].clone(),
        ),
    }
}

#[test]
fn proxy_address_api_and_explain_name_the_same_group() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(&rules(&stable, &canary), Some(TOKEN));
    let null = serde_json::Value::Null;

    // A healthy canary serves its users: nobody falls back.
    let a = answers(&gg, "13");
    assert_eq!(a.proxy, "canary");
    assert_eq!(a.address, ("canary".to_string(), null.clone()));
    assert_eq!(a.explain, ("canary".to_string(), null.clone()));

    // A version without a group in the service: all three say stable, no_group.
    let a = answers(&gg, "17");
    let no_group = serde_json::json!("no_group");
    assert_eq!(a.proxy, "stable");
    assert_eq!(a.address, ("stable".to_string(), no_group.clone()));
    assert_eq!(a.explain, ("stable".to_string(), no_group));

    // The canary group unhealthy: all three say stable, unhealthy.
    canary.set_healthy(false);
    assert_eventually(
        Duration::from_secs(5),
        "the canary peer is seen unhealthy",
        || {
            metric(
                &gg.scrape(),
                "graygate_upstream_peer_healthy",
                &[("version", "canary")],
            ) == Some(0.0)
        },
    );
    let unhealthy = serde_json::json!("unhealthy");
    let a = answers(&gg, "13");
    assert_eq!(a.proxy, "stable");
    assert_eq!(a.address, ("stable".to_string(), unhealthy.clone()));
    assert_eq!(a.explain, ("stable".to_string(), unhealthy));
    let fallbacks = metric(
        &gg.scrape(),
        "graygate_fallbacks_total",
        &[
            ("from", "canary"),
            ("to", "stable"),
            ("reason", "unhealthy"),
        ],
    );
    assert_eq!(fallbacks, Some(1.0), "the proxied request counted once");

    // Healthy again: back to canary everywhere.
    canary.set_healthy(true);
    assert_eventually(Duration::from_secs(5), "the canary serves again", || {
        let a = answers(&gg, "13");
        a.proxy == "canary" && a.address.0 == "canary" && a.explain.0 == "canary"
    });
}

#[test]
fn the_admin_token_is_checked_before_the_body_is_read() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(&rules(&stable, &canary), Some(TOKEN));
    // A large body announced and never sent: a server that read it first would wait.
    let mut stream = TcpStream::connect(gg.admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"PUT /-/assignments/13 HTTP/1.1\r\nHost: admin\r\nContent-Length: 10000000\r\n\r\n",
        )
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "no answer without the body after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

#[test]
fn a_form_that_cannot_be_read_is_not_called_too_large() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(
        &format!(
            "{}channels: {{ path: /.canary-deployment }}\n",
            rules(&stable, &canary)
        ),
        Some(TOKEN),
    );
    // The body stops half-way: the client closed its side.
    let mut stream = TcpStream::connect(gg.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"POST /.canary-deployment HTTP/1.1\r\nHost: www.example.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\n\r\nversion=be")
        .unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("could not be read"), "{text}");

    // Too large is still 413.
    let big = "x".repeat(9_000);
    let raw = format!(
        "POST /.canary-deployment HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\nversion=beta&pad={big}",
        big.len() + 17
    );
    let r = http_request(gg.proxy, raw.as_bytes()).unwrap();
    assert_eq!(r.status, 413, "{}", r.body_text());
}

#[test]
fn a_reload_does_not_hold_up_the_admin_listener() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let gg = Graygate::start_with_token(&rules(&stable, &canary), Some(TOKEN));
    // A rule set that takes a while to compile (tens of thousands of regexes).
    let mut big = rules(&stable, &canary);
    for i in 0..2_000 {
        big.push_str(&format!(
            "  - {{ name: r{i}, when: {{ path_regex: \"^/r{i}/[a-z]+[0-9]*$\" }}, version: canary }}\n"
        ));
    }
    std::fs::write(&gg.rules_file, big).unwrap();
    // The file watch may start the same reload: both compile off the admin's worker. The
    // compile takes seconds on a loaded machine: the reload request may wait up to a minute.
    let admin_addr = gg.admin;
    let reload = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(admin_addr).expect("connect to admin");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "POST /-/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (answer, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(50));
    let health = get(gg.admin, "admin", "/-/healthz", &[]);
    let answered = Instant::now();
    assert_eq!(health.body_text(), "ok\n");
    let (reloaded, reload_done) = reload.join().unwrap();
    assert!(reloaded.starts_with("HTTP/1.1 200"), "{reloaded}");
    assert!(
        answered < reload_done,
        "/-/healthz waited for the reload to finish"
    );
}

#[test]
fn stats_show_each_versions_window_figures() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = format!(
        "{}goals:\n  - {{ name: signup, when: {{ method: [POST], path_prefix: /register }}, status: 2xx }}\n",
        rules(&stable, &canary)
    );
    let gg = Graygate::start_with_token(&rules, Some(TOKEN));
    // uid 13 -> canary, 14 -> stable (uid_tail 3).
    for _ in 0..6 {
        get(gg.proxy, HOST, "/", &[("X-User-Id", b"13")]);
    }
    canary.set_status(503);
    for _ in 0..4 {
        get(gg.proxy, HOST, "/", &[("X-User-Id", b"13")]);
    }
    for _ in 0..3 {
        let raw = "POST /register HTTP/1.1\r\nHost: www.example.com\r\nX-User-Id: 14\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(http_request(gg.proxy, raw.as_bytes()).unwrap().status, 200);
    }
    for _ in 0..7 {
        get(gg.proxy, HOST, "/", &[("X-User-Id", b"14")]);
    }

    // `logging` runs after the response reached the client: the last request may be counted
    // a moment after its answer arrived.
    let requests_of = |stats: &serde_json::Value, version: &str| {
        stats["cells"]
            .as_array()
            .and_then(|cells| cells.iter().find(|c| c["version"] == version))
            .map(|c| c["figures"]["requests"].clone())
    };
    assert_eventually(Duration::from_secs(5), "every request is counted", || {
        let stats = json(&admin(&gg, "GET", "/-/stats?window=5m"));
        requests_of(&stats, "canary") == Some(10.into())
            && requests_of(&stats, "stable") == Some(10.into())
    });
    let stats = json(&admin(&gg, "GET", "/-/stats?window=5m"));
    assert_eq!(stats["window_seconds"], 300.0);
    let cell = |version: &str| -> serde_json::Value {
        stats["cells"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["scope"]["kind"] == "service"
                    && c["scope"]["name"] == "web"
                    && c["version"] == version
            })
            .unwrap_or_else(|| panic!("no cell for web/{version}: {stats}"))["figures"]
            .clone()
    };
    let canary_figures = cell("canary");
    assert_eq!(canary_figures["requests"], 10, "{canary_figures}");
    assert_eq!(canary_figures["errors_5xx"], 4);
    assert_eq!(canary_figures["error_rate"], 0.4);
    let p99 = canary_figures["p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 5_000.0, "{p99}");
    let stable_figures = cell("stable");
    assert_eq!(stable_figures["requests"], 10, "{stable_figures}");
    assert_eq!(stable_figures["errors_5xx"], 0);
    let signup = &stable_figures["goals"][0];
    assert_eq!(signup["name"], "signup");
    assert_eq!(signup["attempts"], 3);
    assert_eq!(signup["conversions"], 3);
    assert_eq!(signup["rate"], 1.0);

    // A reload keeps the figures: cells are kept by service and version name.
    let reloaded = std::fs::read_to_string(&gg.rules_file)
        .unwrap()
        .replace("uid_tail: [7]", "uid_tail: [7, 9]");
    std::fs::write(&gg.rules_file, reloaded).unwrap();
    assert_eq!(json(&admin(&gg, "POST", "/-/reload"))["result"], "reloaded");
    let stats = json(&admin(&gg, "GET", "/-/stats"));
    assert_eq!(stats["window_seconds"], 60.0);
    let canary_again = stats["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["version"] == "canary")
        .unwrap()["figures"]
        .clone();
    assert_eq!(canary_again["requests"], 10);

    for bad in ["0s", "soon", "1000d"] {
        let r = admin(&gg, "GET", &format!("/-/stats?window={bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body_text());
    }
    let raw = "GET /-/stats HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    assert_eq!(http_request(gg.admin, raw.as_bytes()).unwrap().status, 401);
}
