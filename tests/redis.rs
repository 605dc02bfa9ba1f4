//! The Redis assignment store against a real `redis-server` started by the test on its own
//! port: assignments route, changes are seen through invalidation (not TTL expiry), and a
//! dead or silent Redis never fails or holds a request (fail-open).

mod support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::graygate::{metric, Graygate};
use support::{assert_eventually, get, Backend, RedisServer, Response};

const TOKEN: &str = "redis-test-token";
/// Long enough that only an invalidation can explain a change being seen quickly.
const CACHE_TTL: &str = "1h";

fn rules(stable: &Backend, canary: &Backend, beta: &Backend) -> String {
    format!(
        "versions: {{ stable: {{}}, canary: {{}}, beta: {{}} }}\ndefault: stable\n\
         identity:\n  uid: [header:X-User-Id]\n  tier: {{ redis_set: \"gray:paid\" }}\n\
         assignments: {{ key: \"gray:version:{{uid}}\" }}\n\
         services:\n  web:\n    hosts: [\"*\"]\n    groups:\n      stable: {{ peers: [\"{}\"] }}\n      canary: {{ peers: [\"{}\"] }}\n      beta: {{ peers: [\"{}\"] }}\n\
         rules:\n  - {{ name: shield-paid, when: {{ tier: paid }}, version: stable }}\n  - {{ name: assigned, version: $assigned }}\n",
        stable.addr(),
        canary.addr(),
        beta.addr()
    )
}

fn redis_conf(url: &str, lookup_timeout: &str) -> String {
    format!(
        "redis:\n  url: \"{url}\"\n  lookup_timeout: {lookup_timeout}\n  cache_ttl: {CACHE_TTL}\n"
    )
}

struct Setup {
    stable: Backend,
    canary: Backend,
    beta: Backend,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            stable: Backend::start("stable"),
            canary: Backend::start("canary"),
            beta: Backend::start("beta"),
        }
    }

    fn start(&self, url: &str, lookup_timeout: &str) -> Graygate {
        Graygate::start_with(
            &rules(&self.stable, &self.canary, &self.beta),
            Some(TOKEN),
            &redis_conf(url, lookup_timeout),
        )
    }
}

fn as_uid(gg: &Graygate, uid: &str) -> Response {
    get(
        gg.proxy,
        "www.example.com",
        "/",
        &[("X-User-Id", uid.as_bytes())],
    )
}

fn served(gg: &Graygate, uid: &str) -> String {
    as_uid(gg, uid).body_text()
}

fn lookups(gg: &Graygate, kind: &str, result: &str) -> f64 {
    metric(
        &gg.scrape(),
        "graygate_store_lookups_total",
        &[("kind", kind), ("result", result)],
    )
    .unwrap_or(0.0)
}

fn start_redis() -> Option<RedisServer> {
    if !RedisServer::available() {
        // `make test` installs redis-server; a bare `cargo test` elsewhere may not have it.
        eprintln!("redis-server is not installed: skipping (make test installs it)");
        return None;
    }
    Some(RedisServer::start())
}

#[test]
fn assignments_route_and_changes_are_seen_through_invalidation() {
    let Some(redis) = start_redis() else { return };
    let setup = Setup::new();
    let gg = setup.start(&redis.url(), "200ms");
    assert_eventually(
        Duration::from_secs(5),
        "graygate connected to redis",
        || as_uid(&gg, "41").status == 200 && lookups(&gg, "assignment", "miss") >= 1.0,
    );
    assert_eq!(served(&gg, "41"), "stable", "no assignment: default");

    redis.cli(&["SET", "gray:version:42", "canary"]);
    assert_eq!(served(&gg, "42"), "canary");
    assert_eq!(
        as_uid(&gg, "42").header("x-seen-rule").as_deref(),
        Some("assigned")
    );
    // Served from the local cache now: no round trip.
    let cached_before = lookups(&gg, "assignment", "cache_hit");
    assert_eq!(served(&gg, "42"), "canary");
    assert!(
        lookups(&gg, "assignment", "cache_hit") > cached_before,
        "second lookup is a cache hit"
    );

    // A change in Redis is seen within 200 ms, far below the 1 h cache TTL.
    redis.cli(&["SET", "gray:version:42", "beta"]);
    let changed = Instant::now();
    assert_eventually(
        Duration::from_millis(200),
        "uid 42 moves to beta after the SET",
        || served(&gg, "42") == "beta",
    );
    eprintln!("the change was seen after {:?}", changed.elapsed());

    // A uid read while absent (a cached miss) is invalidated too.
    assert_eq!(served(&gg, "43"), "stable");
    assert_eq!(served(&gg, "43"), "stable");
    redis.cli(&["SET", "gray:version:43", "canary"]);
    assert_eventually(Duration::from_millis(200), "uid 43 moves to canary", || {
        served(&gg, "43") == "canary"
    });

    // An unknown version value routes by the next rules (here: the default).
    redis.cli(&["SET", "gray:version:44", "nightly"]);
    assert_eq!(served(&gg, "44"), "stable");
    assert_eq!(
        as_uid(&gg, "44").header("x-seen-rule").as_deref(),
        Some("default")
    );

    // The paid set shields a uid even when it has an assignment.
    redis.cli(&["SADD", "gray:paid", "42"]);
    assert_eventually(
        Duration::from_millis(200),
        "uid 42 shielded once paid",
        || served(&gg, "42") == "stable",
    );
    assert_eq!(
        as_uid(&gg, "42").header("x-seen-rule").as_deref(),
        Some("shield-paid")
    );
}

#[test]
fn the_admin_api_writes_assignments_to_redis() {
    let Some(redis) = start_redis() else { return };
    let setup = Setup::new();
    let gg = setup.start(&redis.url(), "200ms");
    let admin = |method: &str, uid: &str, body: &str| {
        let raw = format!(
            "{method} /-/assignments/{uid} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        support::http_request(gg.admin, raw.as_bytes()).expect("admin request")
    };
    assert_eventually(
        Duration::from_secs(5),
        "PUT succeeds once connected",
        || admin("PUT", "77", "canary").status == 200,
    );
    assert_eq!(redis.cli(&["GET", "gray:version:77"]), "canary");
    assert_eq!(served(&gg, "77"), "canary");
    let r = admin("GET", "77", "");
    assert_eq!(r.status, 200);
    assert!(
        r.body_text().contains("\"version\": \"canary\""),
        "{}",
        r.body_text()
    );
    assert_eq!(
        admin("PUT", "77", "{\"version\": \"nightly\"}").status,
        400,
        "unknown versions are refused"
    );
    assert_eq!(admin("PUT", "77", "{\"version\": \"beta\"}").status, 200);
    assert_eq!(
        served(&gg, "77"),
        "beta",
        "the local cache was invalidated by the write"
    );
    assert_eq!(admin("DELETE", "77", "").status, 200);
    assert_eq!(redis.cli(&["EXISTS", "gray:version:77"]), "0");
    assert_eq!(served(&gg, "77"), "stable");
    assert_eq!(admin("GET", "77", "").status, 404);
}

#[test]
fn a_dead_redis_fails_open_and_a_restarted_one_is_used_again() {
    let Some(mut redis) = start_redis() else {
        return;
    };
    let setup = Setup::new();
    let gg = setup.start(&redis.url(), "20ms");
    redis.cli(&["SET", "gray:version:1", "canary"]);
    assert_eventually(Duration::from_secs(5), "uid 1 on canary", || {
        served(&gg, "1") == "canary"
    });

    // Load over many uids (most are cache misses, so they need Redis).
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::<(u16, Duration)>::new()));
    let load = {
        let (stop, results, proxy) = (Arc::clone(&stop), Arc::clone(&results), gg.proxy);
        thread::spawn(move || {
            let mut uid = 1000u32;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                uid += 1;
                let t = Instant::now();
                let r = get(
                    proxy,
                    "www.example.com",
                    "/",
                    &[("X-User-Id", uid.to_string().as_bytes())],
                );
                results.lock().unwrap().push((r.status, t.elapsed()));
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    redis.kill();
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let results = results.lock().unwrap();
    let failed = results.iter().filter(|(status, _)| *status != 200).count();
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let mut sorted: Vec<Duration> = results.iter().map(|(_, t)| *t).collect();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "{} requests while Redis died: {failed} failed, median {median:?}, slowest {slowest:?}",
        results.len()
    );
    assert!(
        results.len() > 50,
        "the load sent only {} requests",
        results.len()
    );
    assert_eq!(
        failed, 0,
        "every request answered 2xx on the fallback route"
    );
    // Lookup timeout (20 ms) plus normal latency; the margin absorbs a debug build on a
    // loaded 2-core machine, while a lookup queueing until reconnect would take seconds.
    assert!(
        slowest < Duration::from_millis(20 + 300),
        "slowest request took {slowest:?}"
    );
    assert!(lookups(&gg, "assignment", "error") + lookups(&gg, "assignment", "timeout") >= 1.0);

    // With Redis down, an uncached uid goes to the default; a cached one keeps its version.
    assert_eq!(served(&gg, "999999"), "stable");

    redis.restart();
    redis.cli(&["SET", "gray:version:5", "beta"]);
    assert_eventually(
        Duration::from_secs(10),
        "assignments used again after the restart",
        || served(&gg, "5") == "beta",
    );
}

#[test]
fn a_silent_redis_does_not_hold_requests() {
    // Accepts connections and never answers a byte.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let held = Arc::clone(&held);
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                match listener.accept() {
                    Ok((stream, _)) => held.lock().unwrap().push(stream),
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let setup = Setup::new();
    let gg = setup.start(&format!("redis://{addr}/0"), "20ms");
    let mut slowest = Duration::ZERO;
    for uid in 0..40 {
        let t = Instant::now();
        let r = as_uid(&gg, &uid.to_string());
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            (r.status, r.body_text()),
            (200, "stable".to_string()),
            "uid {uid}"
        );
    }
    eprintln!("slowest request against a silent Redis: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(20 + 300),
        "slowest request took {slowest:?}"
    );
    drop(gg);
    drop(acceptor);
}
