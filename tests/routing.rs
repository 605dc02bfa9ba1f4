//! End-to-end routing: rules decide a version, the service is chosen by host and path, the
//! version's group serves, failures fall back to the default version (SPEC 2.2 and 3).
//!
//! Every test runs the real server in-process against real loopback backends. A backend
//! answers with its own name, so the body tells which group served; it echoes the
//! `X-Graygate-Version` / `X-Graygate-Rule` it received as `X-Seen-Version` / `X-Seen-Rule`,
//! which tell what graygate decided.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, http_request, Backend, KeepAlive, Response};

const HOST: &str = "www.example.com";

/// Request headers as [`get`] takes them.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

const VERSIONS: &str = "versions:\n  stable: {}\n  canary: {}\ndefault: stable\n";

const IDENTITY: &str = "identity:\n  uid: [cookie:uid, header:X-User-Id]\n  tier:\n    sources: [cookie:tier]\n    paid_uids: [10001]\n";

/// shield-paid, then tails 1, 2, 3 to canary; everyone else gets the default (stable).
const TAIL_RULES: &str = "rules:\n  - name: shield-paid\n    when: { tier: paid }\n    version: stable\n  - name: tail-30pct\n    when: { uid_tail: [1, 2, 3] }\n    version: canary\n";

const HEALTH_CHECK: &str =
    "health_check: { type: http, path: /healthz, interval: 200ms, timeout: 200ms }";

/// One group line of a service: `version: { peers: [...] }`, optionally health checked.
fn group(version: &str, peers: &[&Backend], health_check: bool) -> String {
    let peers: Vec<String> = peers.iter().map(|b| format!("\"{}\"", b.addr())).collect();
    let hc = if health_check {
        format!(", {HEALTH_CHECK}")
    } else {
        String::new()
    };
    format!("      {version}: {{ peers: [{}]{hc} }}\n", peers.join(", "))
}

/// One service; `hosts` is a YAML flow list such as `["*"]`.
fn service(name: &str, hosts: &str, path_prefix: &str, groups: &[String]) -> String {
    format!(
        "  {name}:\n    hosts: {hosts}\n    path_prefix: {path_prefix}\n    groups:\n{}",
        groups.concat()
    )
}

/// A complete rules file: stable/canary versions, [`IDENTITY`], the services, then `rules`.
fn rules_yaml(services: &[String], rules: &str) -> String {
    format!(
        "{VERSIONS}{IDENTITY}services:\n{}{rules}",
        services.concat()
    )
}

/// The usual single service `web` for any host, with a stable and a canary group.
fn web_rules(stable: &Backend, canary: &Backend, health_check: bool, rules: &str) -> String {
    rules_yaml(
        &[service(
            "web",
            "[\"*\"]",
            "/",
            &[
                group("stable", &[stable], health_check),
                group("canary", &[canary], health_check),
            ],
        )],
        rules,
    )
}

/// A short description of a response for assertion messages.
fn describe(r: &Response) -> String {
    format!(
        "status {} body {:?} X-Seen-Version {:?} X-Seen-Rule {:?}",
        r.status,
        r.body_text(),
        r.header_all("x-seen-version"),
        r.header_all("x-seen-rule")
    )
}

/// Asserts a 200 from the backend named `version`, decided by `rule`.
fn assert_served(r: &Response, version: &str, rule: &str, what: &str) {
    assert_served_by(r, version, version, rule, what);
}

/// Asserts a 200 from the backend named `body`, with the decided `version` and `rule`.
fn assert_served_by(r: &Response, body: &str, version: &str, rule: &str, what: &str) {
    let ok = r.status == 200
        && r.body_text() == body
        && r.header_all("x-seen-version") == [version]
        && r.header_all("x-seen-rule") == [rule];
    assert!(
        ok,
        "{what}: expected 200 from backend {body:?} with decided version {version:?} by rule \
         {rule:?}, got {}",
        describe(r)
    );
}

/// Asserts a JSON error response with the given status (`{"status": status, ...}`).
fn assert_json_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", describe(r));
    let content_type = r.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: expected Content-Type application/json, got {content_type:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.body_text()));
    assert_eq!(
        body["status"],
        serde_json::json!(status),
        "{what}: JSON body {body} lacks \"status\":{status}"
    );
}

/// Version and rule [`TAIL_RULES`] decide for uid `n` (not a paid uid).
fn tail_decision(n: u64) -> (&'static str, &'static str) {
    if matches!(n % 10, 1..=3) {
        ("canary", "tail-30pct")
    } else {
        ("stable", "default")
    }
}

#[test]
fn uid_tails_1_2_3_reach_canary_others_stable() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&web_rules(&stable, &canary, false, TAIL_RULES));

    for n in 0..=99u64 {
        let uid = n.to_string();
        let cookie = format!("uid={n}");
        // The uid sources are [cookie:uid, header:X-User-Id]: the first present wins, so a
        // header uid with another tail beside the cookie must not change the decision.
        let other = (n + 1).to_string();
        let (source, headers): (&str, Vec<(&str, &[u8])>) = match n % 3 {
            0 => ("cookie", vec![("Cookie", cookie.as_bytes())]),
            1 => ("header", vec![("X-User-Id", uid.as_bytes())]),
            _ => (
                "cookie beside another header uid",
                vec![
                    ("Cookie", cookie.as_bytes()),
                    ("X-User-Id", other.as_bytes()),
                ],
            ),
        };
        let r = get(gg.proxy, HOST, "/", &headers);
        let (version, rule) = tail_decision(n);
        assert_served(&r, version, rule, &format!("uid {n} via {source}"));
    }
    assert_eq!(canary.requests(), 30, "exactly the 30 uids with tail 1/2/3");
    assert_eq!(stable.requests(), 70, "the 70 other uids");

    // 10001 ends in 1 but is in paid_uids; a tier=paid cookie (tier.sources) pays too.
    let cases: [(Headers, &str, &str); 5] = [
        (&[("X-User-Id", b"10001")], "stable", "shield-paid"),
        (&[("Cookie", b"uid=10001")], "stable", "shield-paid"),
        (&[("Cookie", b"uid=13; tier=paid")], "stable", "shield-paid"),
        (
            &[("Cookie", b"tier=paid"), ("X-User-Id", b"21")],
            "stable",
            "shield-paid",
        ),
        (&[("Cookie", b"uid=13; tier=trial")], "canary", "tail-30pct"),
    ];
    for (headers, version, rule) in cases {
        let r = get(gg.proxy, HOST, "/", headers);
        let what: Vec<String> = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect();
        assert_served(&r, version, rule, &what.join(", "));
    }
}

/// `GET /` for `uid` on a keep-alive connection.
fn get_uid(conn: &mut KeepAlive, uid: u64) -> Response {
    conn.send(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-User-Id: {uid}\r\n\r\n").as_bytes())
}

#[test]
fn split_30_70_over_10000_uids_is_within_1_5_points() {
    const USERS: u64 = 10_000;
    const WORKERS: u64 = 8;
    const FIRST_UID: u64 = 100_000;
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let rules =
        "rules:\n  - name: ramp\n    split: { by: uid, weights: { canary: 30, stable: 70 } }\n";
    let gg = Graygate::start(&web_rules(&stable, &canary, false, rules));
    let proxy = gg.proxy;

    let started = Instant::now();
    let mut first: Vec<(u64, Response)> = thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                s.spawn(move || {
                    let mut conn = KeepAlive::new(proxy);
                    (FIRST_UID + w..FIRST_UID + USERS)
                        .step_by(WORKERS as usize)
                        .map(|uid| (uid, get_uid(&mut conn, uid)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().expect("a request worker panicked (see above)"))
            .collect()
    });
    let elapsed = started.elapsed();
    first.sort_by_key(|(uid, _)| *uid);
    assert_eq!(first.len() as u64, USERS);

    for (uid, r) in &first {
        let version = r.body_text();
        assert!(
            version == "canary" || version == "stable",
            "uid {uid}: {}",
            describe(r)
        );
        assert_served(r, &version, "ramp", &format!("uid {uid}"));
    }
    let on_canary = first.iter().filter(|(_, r)| r.body == b"canary").count();
    let share = on_canary as f64 * 100.0 / USERS as f64;
    assert!(
        (28.5..=31.5).contains(&share),
        "split canary:30/stable:70 put {on_canary} of {USERS} uids ({share:.2}%) on canary; \
         expected 30 +- 1.5 points (sent in {elapsed:?})"
    );
    assert_eq!(canary.requests(), on_canary, "canary backend request count");
    assert_eq!(
        stable.requests() as u64,
        USERS - on_canary as u64,
        "stable backend request count"
    );

    // Sticky per user: the same uid decides the same, even from another source (cookie).
    for (uid, r) in first.iter().step_by((USERS / 200) as usize) {
        let cookie = format!("uid={uid}");
        let again = get(gg.proxy, HOST, "/", &[("Cookie", cookie.as_bytes())]);
        let version = r.body_text();
        assert_served(
            &again,
            &version,
            "ramp",
            &format!("uid {uid} sent again (first time it got {version})"),
        );
    }
}

#[test]
fn same_decision_across_web_and_api_services() {
    let web_stable = Backend::start("web-stable");
    let web_canary = Backend::start("web-canary");
    let api_stable = Backend::start("api-stable");
    let api_canary = Backend::start("api-canary");
    let gg = Graygate::start(&rules_yaml(
        &[
            service(
                "web",
                "[\"*\"]",
                "/",
                &[
                    group("stable", &[&web_stable], false),
                    group("canary", &[&web_canary], false),
                ],
            ),
            service(
                "api",
                "[\"*\"]",
                "/api",
                &[
                    group("stable", &[&api_stable], false),
                    group("canary", &[&api_canary], false),
                ],
            ),
        ],
        TAIL_RULES,
    ));

    for n in 0..50u64 {
        let uid = n.to_string();
        let headers = [("X-User-Id", uid.as_bytes())];
        let web = get(gg.proxy, HOST, "/", &headers);
        let api = get(gg.proxy, HOST, "/api/x", &headers);
        let web_version = web.body_text().strip_prefix("web-").map(str::to_owned);
        let api_version = api.body_text().strip_prefix("api-").map(str::to_owned);
        assert!(
            web.status == 200 && web_version.is_some(),
            "uid {n}: / must be served by a web backend, got {}",
            describe(&web)
        );
        assert!(
            api.status == 200 && api_version.is_some(),
            "uid {n}: /api/x must be served by an api backend, got {}",
            describe(&api)
        );
        assert_eq!(
            web_version,
            api_version,
            "uid {n}: web and api must serve the same version (web: {}; api: {})",
            describe(&web),
            describe(&api)
        );
        let expected = tail_decision(n).0;
        assert_eq!(web_version.as_deref(), Some(expected), "uid {n}: version");
        assert_eq!(web.header_all("x-seen-version"), [expected], "uid {n} on /");
        assert_eq!(
            api.header_all("x-seen-version"),
            [expected],
            "uid {n} on /api/x"
        );
    }
    assert_eq!(
        web_stable.requests() + web_canary.requests(),
        50,
        "web requests"
    );
    assert_eq!(
        api_stable.requests() + api_canary.requests(),
        50,
        "api requests"
    );
    assert_eq!(
        web_canary.requests(),
        15,
        "uids 0..50 with tail 1/2/3 on web"
    );
    assert_eq!(
        api_canary.requests(),
        15,
        "uids 0..50 with tail 1/2/3 on api"
    );
}

#[test]
fn canary_killed_goes_to_stable_without_failed_requests() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&web_rules(&stable, &canary, true, TAIL_RULES));
    let uid13: [(&str, &[u8]); 1] = [("X-User-Id", b"13")];
    let uid4: [(&str, &[u8]); 1] = [("X-User-Id", b"4")];
    let fallbacks = |text: &str, reason: &str| {
        metric(
            text,
            "graygate_fallbacks_total",
            &[
                ("service", "web"),
                ("from", "canary"),
                ("to", "stable"),
                ("reason", reason),
            ],
        )
        .unwrap_or(0.0)
    };
    let peer_health = |version: &str, peer: &Backend| {
        let peer = peer.addr().to_string();
        metric(
            &gg.scrape(),
            "graygate_upstream_peer_healthy",
            &[("service", "web"), ("version", version), ("peer", &peer)],
        )
    };

    let r = get(gg.proxy, HOST, "/", &uid13);
    assert_served(&r, "canary", "tail-30pct", "uid 13 before the kill");
    let text = gg.scrape();
    let before = fallbacks(&text, "connect") + fallbacks(&text, "unhealthy");

    canary.stop();
    let started = Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    while started.elapsed() < Duration::from_secs(2) {
        let r = get(gg.proxy, HOST, "/", &uid13);
        sent += 1;
        // The stable build serving it is told it serves stable (the rule still says why).
        let told = r.header("x-seen-version");
        if r.status != 200 || r.body_text() != "stable" || told.as_deref() != Some("stable") {
            failed.push(format!(
                "#{sent} at {:?}: {}",
                started.elapsed(),
                describe(&r)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} requests for uid 13 after the canary was killed were not answered 200 \
         by stable; first ones: {:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(sent >= 10, "only {sent} requests went through in 2 s");

    let text = gg.scrape();
    let after = fallbacks(&text, "connect") + fallbacks(&text, "unhealthy");
    assert!(
        after > before,
        "graygate_fallbacks_total{{service=\"web\",from=\"canary\",to=\"stable\",\
         reason=\"connect\"|\"unhealthy\"}} did not rise ({before} -> {after}); metrics:\n{text}"
    );

    // The health check (every 200 ms) has noticed by now; the group is skipped up front.
    assert_eventually(
        Duration::from_secs(3),
        "graygate_upstream_peer_healthy of the killed canary peer is 0",
        || peer_health("canary", &canary) == Some(0.0),
    );
    let unhealthy_before = fallbacks(&gg.scrape(), "unhealthy");
    let r = get(gg.proxy, HOST, "/", &uid13);
    assert_eq!(
        (r.status, r.body_text()),
        (200, "stable".to_string()),
        "uid 13 once the canary is marked unhealthy: {}",
        describe(&r)
    );
    let unhealthy_after = fallbacks(&gg.scrape(), "unhealthy");
    assert!(
        unhealthy_after > unhealthy_before,
        "a request decided for the unhealthy canary group must count a fallback with \
         reason=\"unhealthy\" ({unhealthy_before} -> {unhealthy_after})"
    );

    // Nothing healthy left: 503 with a JSON body, before and after the health check notices.
    stable.stop();
    let r = get(gg.proxy, HOST, "/", &uid13);
    assert_json_error(&r, 503, "uid 13 (canary) with every peer down");
    let r = get(gg.proxy, HOST, "/", &uid4);
    assert_json_error(&r, 503, "uid 4 (stable) with every peer down");
    assert_eventually(
        Duration::from_secs(3),
        "graygate_upstream_peer_healthy of the killed stable peer is 0",
        || peer_health("stable", &stable) == Some(0.0),
    );
    let r = get(gg.proxy, HOST, "/", &uid13);
    assert_json_error(&r, 503, "uid 13, every peer marked unhealthy");
    let r = get(gg.proxy, HOST, "/", &uid4);
    assert_json_error(&r, 503, "uid 4, every peer marked unhealthy");
}

#[test]
fn peer_retry_within_group() {
    let stable = Backend::start("stable-live");
    let canary = Backend::start("canary-live");
    let dead_stable = Backend::start("stable-dead");
    let dead_canary = Backend::start("canary-dead");
    dead_stable.stop();
    dead_canary.stop();
    // No health check: only the connect failure tells graygate that a peer is down.
    let gg = Graygate::start(&rules_yaml(
        &[service(
            "web",
            "[\"*\"]",
            "/",
            &[
                group("stable", &[&dead_stable, &stable], false),
                group("canary", &[&dead_canary, &canary], false),
            ],
        )],
        TAIL_RULES,
    ));

    for i in 0..20 {
        let r = get(gg.proxy, HOST, "/", &[("X-User-Id", b"4")]);
        assert_served_by(
            &r,
            "stable-live",
            "stable",
            "default",
            &format!("uid 4, #{i}"),
        );
    }
    assert_eq!(
        stable.requests(),
        20,
        "every stable request on the live peer"
    );
    // A canary request is retried on the canary group's other peer before any fallback.
    for i in 0..20 {
        let r = get(gg.proxy, HOST, "/", &[("X-User-Id", b"13")]);
        assert_served_by(
            &r,
            "canary-live",
            "canary",
            "tail-30pct",
            &format!("uid 13, #{i}"),
        );
    }
    assert_eq!(
        canary.requests(),
        20,
        "every canary request on the live canary peer"
    );
    assert_eq!(
        stable.requests(),
        20,
        "no canary request fell back to stable"
    );

    let text = gg.scrape();
    for version in ["stable", "canary"] {
        let errors = metric(
            &text,
            "graygate_upstream_errors_total",
            &[
                ("service", "web"),
                ("version", version),
                ("kind", "connect"),
            ],
        )
        .unwrap_or(0.0);
        assert!(
            errors >= 1.0,
            "the dead {version} peer was never tried (round robin over two peers, 20 \
             requests): upstream_errors_total{{kind=\"connect\"}} = {errors}"
        );
    }
    let fallbacks = metric(&text, "graygate_fallbacks_total", &[]).unwrap_or(0.0);
    assert_eq!(
        fallbacks, 0.0,
        "no fallback while a live canary peer remains"
    );
}

/// A raw GET with the given header lines (arbitrary bytes) and `Connection: close`.
fn raw_get(gg: &Graygate, header_lines: &[&[u8]]) -> Response {
    let mut raw = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").into_bytes();
    for line in header_lines {
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    http_request(gg.proxy, &raw).unwrap_or_else(|e| {
        panic!(
            "request {:?} failed: {e} (did graygate drop the connection?)",
            String::from_utf8_lossy(&raw)
        )
    })
}

#[test]
fn bad_input_is_routed_to_default_without_panic() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&web_rules(&stable, &canary, false, TAIL_RULES));

    let long_uid = format!("X-User-Id: {}1", "9".repeat(10 * 1024 - 1));
    let long_cookie = format!("Cookie: uid={}1", "9".repeat(10 * 1024 - 1));
    let bad: [(&str, &[u8]); 9] = [
        ("separators only", b"Cookie: ;;;=;uid"),
        ("unterminated quote", b"Cookie: uid=\""),
        ("non-UTF-8 cookie", b"Cookie: \xff\xfe=1; uid=\x80"),
        ("empty cookie uid", b"Cookie: uid="),
        ("non-numeric uid", b"X-User-Id: abc"),
        ("10 KB uid ending in 1", long_uid.as_bytes()),
        ("10 KB cookie uid ending in 1", long_cookie.as_bytes()),
        ("non-UTF-8 uid header", b"X-User-Id: \xff\xfe13"),
        ("uid with a space", b"X-User-Id: 1 3"),
    ];
    for (what, line) in bad {
        let r = raw_get(&gg, &[line]);
        assert_served(&r, "stable", "default", what);
    }
    assert_eq!(canary.requests(), 0, "no bad input reached canary");

    // The server is alive and still routes a normal uid.
    let r = get(gg.proxy, HOST, "/", &[("X-User-Id", b"13")]);
    assert_served(&r, "canary", "tail-30pct", "uid 13 after bad input");

    // Client-sent routing headers are replaced by the decided ones (all copies, any case).
    let r = raw_get(
        &gg,
        &[
            b"X-Graygate-Version: canary",
            b"x-graygate-VERSION: beta",
            b"X-Graygate-Rule: forged",
        ],
    );
    assert_served(&r, "stable", "default", "forged headers, no uid");
    let seen = stable.last_request().expect("stable saw the request");
    assert_eq!(seen.header_all("x-graygate-version"), ["stable"]);
    assert_eq!(seen.header_all("x-graygate-rule"), ["default"]);

    let r = raw_get(
        &gg,
        &[
            b"X-User-Id: 13",
            b"X-Graygate-Version: stable",
            b"X-Graygate-Rule: forged",
        ],
    );
    assert_served(&r, "canary", "tail-30pct", "forged headers, uid 13");
    assert_eq!(
        canary.seen_versions().last().cloned(),
        Some(vec!["canary".to_string()]),
        "canary must see exactly one X-Graygate-Version, the decided one"
    );
    let seen = canary.last_request().expect("canary saw the request");
    assert_eq!(seen.header_all("x-graygate-rule"), ["tail-30pct"]);
}

#[test]
fn unknown_host_or_path_gets_json_404() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let gg = Graygate::start(&rules_yaml(
        &[service(
            "app",
            "[www.example.com]",
            "/app",
            &[
                group("stable", &[&stable], false),
                group("canary", &[&canary], false),
            ],
        )],
        TAIL_RULES,
    ));

    let r = get(gg.proxy, "other.example.org", "/app/x", &[]);
    assert_json_error(&r, 404, "Host other.example.org");
    let r = get(
        gg.proxy,
        "other.example.org",
        "/app/x",
        &[("X-User-Id", b"13")],
    );
    assert_json_error(&r, 404, "Host other.example.org, uid 13");
    let r = get(gg.proxy, HOST, "/", &[]);
    assert_json_error(&r, 404, "www.example.com/ outside the /app prefix");
    assert_eq!(stable.requests() + canary.requests(), 0, "nothing proxied");

    let r = get(gg.proxy, HOST, "/app/x", &[]);
    assert_served(&r, "stable", "default", "www.example.com/app/x");
}

#[test]
fn host_and_longest_prefix_select_the_service() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let gg = Graygate::start(&rules_yaml(
        &[
            service(
                "a",
                "[www.example.com]",
                "/",
                &[group("stable", &[&a], false)],
            ),
            service(
                "b",
                "[\"*.example.com\"]",
                "/shop",
                &[group("stable", &[&b], false)],
            ),
            service(
                "c",
                "[\"*\"]",
                "/shop/api",
                &[group("stable", &[&c], false)],
            ),
        ],
        "",
    ));

    let cases = [
        ("www.example.com", "/", "a"),
        ("www.example.com", "/about", "a"),
        ("www.example.com", "/shop/x", "b"),
        ("m.example.com", "/shop", "b"),
        ("www.example.com", "/shop/api/x", "c"),
        ("other.example.org", "/shop/api/x", "c"),
        ("WWW.EXAMPLE.COM:8080", "/", "a"),
        ("Www.Example.Com", "/shop/x", "b"),
    ];
    for (host, path, backend) in cases {
        let r = get(gg.proxy, host, path, &[]);
        assert_served_by(&r, backend, "stable", "default", &format!("{host}{path}"));
    }
    let r = get(gg.proxy, "m.example.com", "/", &[]);
    assert_json_error(&r, 404, "m.example.com/ (no service for / on that host)");
    let r = get(gg.proxy, "example.com", "/shop/x", &[]);
    assert_json_error(
        &r,
        404,
        "example.com/shop/x (*.example.com excludes the bare domain)",
    );
}

/// Rules with one stable group of `peers` balanced by `lb`, with an optional health check.
fn one_group_rules(peers: &[&Backend], lb: &str, health_check: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|b| format!("\"{}\"", b.addr())).collect();
    format!(
        "versions: {{ stable: {{}} }}\ndefault: stable\nidentity: {{ uid: [header:X-User-Id] }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [{}], lb: {lb}{health_check} }}\n",
        peers.join(", ")
    )
}

#[test]
fn consistent_hashing_keeps_a_uid_on_one_peer() {
    let backends = [
        Backend::start("p0"),
        Backend::start("p1"),
        Backend::start("p2"),
    ];
    let gg = Graygate::start(&one_group_rules(
        &backends.iter().collect::<Vec<_>>(),
        "consistent",
        "",
    ));
    let mut used = std::collections::HashSet::new();
    for uid in 0..60u32 {
        let header = uid.to_string();
        let first = get(gg.proxy, HOST, "/", &[("X-User-Id", header.as_bytes())]).body_text();
        for _ in 0..3 {
            let again = get(gg.proxy, HOST, "/", &[("X-User-Id", header.as_bytes())]).body_text();
            assert_eq!(again, first, "uid {uid} moved between peers");
        }
        used.insert(first);
    }
    assert_eq!(
        used.len(),
        3,
        "60 uids should reach all three peers, reached {used:?}"
    );
}

#[test]
fn round_robin_spreads_requests_over_every_peer() {
    let backends = [Backend::start("p0"), Backend::start("p1")];
    let gg = Graygate::start(&one_group_rules(
        &backends.iter().collect::<Vec<_>>(),
        "round_robin",
        "",
    ));
    for _ in 0..20 {
        assert_eq!(get(gg.proxy, HOST, "/", &[]).status, 200);
    }
    assert_eq!((backends[0].requests(), backends[1].requests()), (10, 10));
}

#[test]
fn a_tcp_health_check_takes_a_dead_peer_out_of_rotation() {
    let backends = [Backend::start("p0"), Backend::start("p1")];
    let check = ", health_check: { type: tcp, interval: 100ms, timeout: 100ms }";
    let gg = Graygate::start(&one_group_rules(
        &backends.iter().collect::<Vec<_>>(),
        "round_robin",
        check,
    ));
    backends[1].stop();
    let dead = backends[1].addr().to_string();
    assert_eventually(
        Duration::from_secs(3),
        "the TCP probe marks p1 down",
        || {
            metric(
                &gg.scrape(),
                "graygate_upstream_peer_healthy",
                &[("peer", dead.as_str())],
            ) == Some(0.0)
        },
    );
    let errors_before = metric(&gg.scrape(), "graygate_upstream_errors_total", &[]).unwrap_or(0.0);
    for _ in 0..10 {
        assert_eq!(get(gg.proxy, HOST, "/", &[]).body_text(), "p0");
    }
    let errors_after = metric(&gg.scrape(), "graygate_upstream_errors_total", &[]).unwrap_or(0.0);
    assert_eq!(
        errors_after, errors_before,
        "no connection was tried on the dead peer"
    );
}

#[test]
fn host_less_http11_requests_get_400_and_repeated_lengths_are_normalised() {
    let stable = Backend::start("stable");
    let gg = Graygate::start(&one_group_rules(&[&stable], "round_robin", ""));
    let r = http_request(gg.proxy, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert_eq!(stable.requests(), 0, "the backend never sees it");
    for framing in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
    ] {
        let raw =
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\n{framing}Connection: close\r\n\r\nhello");
        let r = http_request(gg.proxy, raw.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{framing:?}: {}", r.body_text());
        let seen = stable.last_request().expect("forwarded");
        assert_eq!(
            seen.header_all("content-length"),
            vec!["5".to_string()],
            "{framing:?}"
        );
    }
}

/// SPEC 11 "Client address": from a trusted peer the rightmost untrusted `X-Forwarded-For`
/// entry is the client (here 192.0.2.5, so the `client_ip` rule picks canary); from any
/// other peer the header is ignored. Either way the upstream's `X-Forwarded-For` carries
/// every value received, then the peer (127.0.0.1) that graygate received the connection from.
#[test]
fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = web_rules(
        &stable,
        &canary,
        false,
        "rules:\n  - name: lab\n    when: { client_ip: [192.0.2.0/24] }\n    version: canary\n",
    );
    let forwarded: Headers = &[
        ("X-Forwarded-For", b"192.0.2.99, 192.0.2.5"),
        ("X-Forwarded-For", b"127.0.0.1"),
    ];
    let expected = "192.0.2.99, 192.0.2.5, 127.0.0.1, 127.0.0.1";
    let trusting = Graygate::start_with(&rules, None, "trusted_proxies: [127.0.0.0/8]\n");
    let r = get(trusting.proxy, HOST, "/", forwarded);
    assert_eq!(r.body_text(), "canary", "{}", describe(&r));
    let seen = canary.last_request().expect("forwarded");
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec![expected.to_string()]
    );
    drop(trusting);
    let wary = Graygate::start(&rules);
    let r = get(wary.proxy, HOST, "/", forwarded);
    assert_eq!(r.body_text(), "stable", "{}", describe(&r));
    let seen = stable.last_request().expect("forwarded");
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec![expected.to_string()]
    );
}

/// SPEC 11 "Scheme facts": the real server places a request on the listener it reached (the
/// harness's one plain listener, named `http`), so `scheme` and `listener` conditions hold or
/// miss as the config says.
#[test]
fn scheme_and_listener_conditions_read_the_arrival() {
    let (stable, canary) = (Backend::start("stable"), Backend::start("canary"));
    let rules = web_rules(
        &stable,
        &canary,
        false,
        "rules:\n  - name: tls-only\n    when: { scheme: https }\n    version: canary\n  - name: plain-listener\n    when: { listener: [http], scheme: http, path_prefix: /plain }\n    version: canary\n",
    );
    let gg = Graygate::start(&rules);
    let r = get(gg.proxy, HOST, "/", &[]);
    assert_eq!(r.body_text(), "stable", "{}", describe(&r));
    let r = get(gg.proxy, HOST, "/plain", &[]);
    assert_eq!(r.body_text(), "canary", "{}", describe(&r));
    assert_eq!(r.header("x-seen-rule").as_deref(), Some("plain-listener"));
}
