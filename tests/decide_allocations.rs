//! What the request path graygate owns allocates, counted by a global allocator that counts
//! (this test binary only, hence its `unsafe`) on the test's thread, in the steady state (every
//! piece runs once before it is counted).
//!
//! `decide` allocates nothing, whatever matcher or combinator it runs. The rest of a request
//! (`request_path_allocations`): the filter chain (`Facts::gather`), a cached `$assigned`
//! lookup, the upstream request's headers (`proxy::forward_headers`) and the per-request
//! metrics each have a budget, the allocations that remain and why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use graygate::facts::{Arrival, Facts, ListenerId, RequestView, Scheme};
use graygate::metrics::{Answered, GenerationSeries, Metrics, SeriesAt, SeriesLayout};
use graygate::proxy::{forward_headers, Forwarding};
use graygate::rules::model::Listeners;
use graygate::rules::{compile, decide, RuleSource};
use graygate::store::embedded::EmbeddedStore;
use graygate::store::{Lookups, Store};
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::RequestHeader;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RULES: &str = r#"
versions: { stable: {}, canary: {} }
default: stable
services:
  web:
    hosts: ["*"]
    groups: { stable: { peers: ["127.0.0.1:1"] } }
rules:
  - { name: re, when: { header: { X-Tester: { regex: ["^(qa|tester)-", "-qa$"] } } }, version: canary }
  - { name: text, when: { cookie: { plan: { prefix: pro-, suffix: -y, contains: o-, in: [pro-y, pro-oy] } } }, version: canary }
  - { name: app, when: { header: { X-App-Version: { version_gte: "5.2", version_lt: "6" } } }, version: canary }
  - { name: build, when: { query: { build: { gte: 1200, lt: 2000 } } }, version: canary }
  - { name: legacy, when: { cookie: { legacy: { absent: true } }, path_prefix: /legacy }, version: canary }
  - { name: combined, when: { not: { path_prefix: /admin }, any: [ { header: { X-Beta: "1" } }, { cookie: { beta: "1" } } ] }, version: canary }
  - { name: edge, when: { scheme: https, listener: [public-tls, internal] }, version: canary }
"#;

#[test]
fn decide_does_not_allocate() {
    let listeners = Listeners::new([
        ("public".into(), Scheme::Http),
        ("public-tls".into(), Scheme::Https),
        ("internal".into(), Scheme::Https),
    ]);
    let model = compile(
        &[RuleSource {
            path: "rules.yaml".into(),
            text: RULES.into(),
        }],
        &listeners,
    )
    .expect("the rules compile")
    .model;
    let on = |name: &str| listeners.arrival(name).expect("a listener");
    let (http, tls) = (on("public"), on("public-tls"));
    // (path, query, headers, arrival)
    type Request<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Arrival);
    let requests: &[Request] = &[
        ("/", "", &[("x-tester", "qa-1")], http),
        ("/", "", &[("cookie", "plan=pro-y")], http),
        ("/", "", &[("x-app-version", "5.10.3")], http),
        ("/", "", &[("x-app-version", "v5.2")], http),
        ("/", "build=1500", &[], http),
        ("/", "build=1e3", &[], http),
        ("/legacy/x", "", &[("cookie", "a=b")], http),
        ("/shop", "", &[("cookie", "beta=1")], http),
        ("/admin", "", &[("x-beta", "1")], http),
        ("/", "", &[], http),
        ("/", "", &[], tls),
        ("/", "", &[], on("internal")),
        (
            "/",
            "",
            &[],
            Arrival {
                listener: ListenerId(7),
                scheme: Scheme::Https,
            },
        ),
    ];
    for (path, query, pairs, arrival) in requests {
        let mut headers = HeaderMap::new();
        for (name, value) in *pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        let view = RequestView {
            method: &Method::GET,
            host: "www.example.com",
            path,
            query: Some(*query).filter(|q| !q.is_empty()),
            headers: &headers,
            client_ip: None,
            arrival: *arrival,
        };
        let facts = Facts::gather(&model.rules.identity, view);
        // The regex engine builds its scratch cache on a thread's first match and reuses it
        // after: the steady state of a worker thread is what is measured.
        let _ = decide(&model.rules, &facts);
        let before = ALLOCATIONS.with(Cell::get);
        let decision = decide(&model.rules, &facts);
        let after = ALLOCATIONS.with(Cell::get);
        assert!(decision.is_ok());
        assert_eq!(
            after - before,
            0,
            "decide allocated for {path}?{query} {pairs:?}"
        );
    }
}

/// The rule index's lookups (hosts in any case, suffixes, uid lists, tenant headers, path
/// prefixes, methods) and the merge of its candidate lists allocate nothing either.
#[test]
fn indexed_decide_does_not_allocate() {
    let mut rules = String::from(
        "versions: { stable: {}, canary: {} }\ndefault: stable\nidentity: { uid: [header:X-User-Id] }\nservices:\n  web:\n    hosts: [\"*\"]\n    groups: { stable: { peers: [\"127.0.0.1:1\"] } }\nrules:\n",
    );
    for t in 0..200 {
        rules.push_str(&format!(
            "  - {{ name: h{t}, when: {{ host: [t{t}.example.com, \"*.t{t}.example.net\"], uid_tail: [1] }}, version: canary }}\n  \
             - {{ name: x{t}, when: {{ header: {{ X-Tenant: t{t} }}, path_prefix: [/api, /api/v{t}] }}, version: canary }}\n  \
             - {{ name: u{t}, when: {{ uid_in: [\"{t}01\", \"{t}02\"], method: [POST] }}, version: canary }}\n"
        ));
    }
    let model = compile(
        &[RuleSource {
            path: "tenants.yaml".into(),
            text: rules,
        }],
        &Listeners::default(),
    )
    .expect("the rules compile")
    .model;
    for (method, host, path, tenant, uid) in [
        (Method::GET, "T7.Example.COM", "/", "t7", "7"),
        (Method::GET, "a.b.t7.example.net", "/api/v7/x", "t7", "701"),
        (Method::POST, "app.example.com", "/api/v3", "t3", "301"),
        (Method::GET, "unknown.example.org", "/x", "t999", "1"),
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static(tenant));
        headers.insert("x-user-id", HeaderValue::from_static(uid));
        let view = RequestView {
            method: &method,
            host,
            path,
            query: None,
            headers: &headers,
            client_ip: None,
            arrival: Arrival::default(),
        };
        let facts = Facts::gather(&model.rules.identity, view);
        let before = ALLOCATIONS.with(Cell::get);
        let decision = decide(&model.rules, &facts);
        let after = ALLOCATIONS.with(Cell::get);
        assert!(decision.is_ok());
        assert_eq!(after - before, 0, "decide allocated for {host}{path}");
    }
}

/// The rules of `bench/compare.sh`'s full chain (a): tier, `$assigned`, uid tail, uid split.
const FULL_CHAIN: &str = r#"
versions: { stable: {}, canary: {} }
default: stable
identity:
  uid: [cookie:uid, header:X-User-Id]
  tier: { sources: [cookie:tier], paid_uids: [10001, 10002], default: trial }
services:
  web:
    hosts: ["*"]
    groups: { stable: { peers: ["127.0.0.1:1"] }, canary: { peers: ["127.0.0.1:1"] } }
rules:
  - { name: shield-paid, when: { tier: paid }, version: stable }
  - { name: assigned, version: $assigned }
  - { name: tail-30pct, when: { uid_tail: [1, 2, 3] }, version: canary }
  - { name: split-10pct, split: { by: uid, weights: { canary: 10, stable: 90 } } }
"#;

/// The browser-like Cookie header of the benchmark's traffic.
const COOKIE: &str =
    "_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid=4; tier=trial; theme=dark";

/// Allocations made on this thread by `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

#[tokio::test(flavor = "current_thread")]
async fn request_path_allocations() {
    let model = compile(
        &[RuleSource {
            path: "rules.yaml".into(),
            text: FULL_CHAIN.into(),
        }],
        &Listeners::default(),
    )
    .expect("the rules compile")
    .model;
    let rules = &model.rules;
    let store = Arc::new(EmbeddedStore::default());
    // uid 4 is assigned canary, so `$assigned` decides (the second rule).
    store.set("gray:version:4", "canary").await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let lookups = Lookups::new(store, Arc::clone(&metrics));
    let versions: Vec<&str> = rules.versions.iter().map(|v| &*v.name).collect();
    let rule_slots = decide::Decision::rule_slot_names(rules);
    let series = GenerationSeries::new(
        Arc::clone(&metrics),
        &SeriesLayout {
            versions: &versions,
            services: &[("web", (0..versions.len()).collect())],
            rules: &rule_slots,
            goals: &[],
        },
    );
    let mut downstream = HeaderMap::new();
    downstream.insert("host", HeaderValue::from_static("www.example.com"));
    downstream.insert("cookie", HeaderValue::from_static(COOKIE));
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let view = RequestView {
        method: &Method::GET,
        host: "www.example.com",
        path: "/",
        query: None,
        headers: &downstream,
        client_ip: Some(peer),
        arrival: Arrival::default(),
    };

    let mut counts = Vec::new();
    for round in 0..2 {
        // The filter chain: cookies, uid, tail, tier, internal.
        let (gather, mut facts) = allocations(|| Facts::gather(&rules.identity, view));
        assert_eq!(facts.uid.as_ref().map(|u| &*u.text), Some("4"));
        // The store lookup of `$assigned` (the embedded store's answer is in memory).
        let before = ALLOCATIONS.with(Cell::get);
        let decision = lookups.decide(rules, &mut facts).await;
        let lookup = ALLOCATIONS.with(Cell::get) - before;
        assert_eq!(decision.rule_name(rules), "assigned");
        // The upstream request's headers, on Pingora's copy of the client's request.
        let mut upstream = RequestHeader::build("GET", b"/", None).unwrap();
        upstream.insert_header("Host", "www.example.com").unwrap();
        upstream.insert_header("Cookie", COOKIE).unwrap();
        let forwarding = Forwarding {
            rules,
            serving: decision.version,
            decision: &decision,
            scheme: Scheme::Http,
            close_connection: false,
            peer: Some(peer),
        };
        let (forward, result) =
            allocations(|| forward_headers(&forwarding, &downstream, &mut upstream));
        result.expect("headers built");
        let header = |name: &str| upstream.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("x-graygate-version"), Some("canary"));
        assert_eq!(header("x-graygate-rule"), Some("assigned"));
        assert_eq!(header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header("x-forwarded-proto"), Some("http"));
        // The metrics of `logging`.
        let answered = Answered {
            at: Some(SeriesAt {
                service: 0,
                served: decision.version.index(),
                decided: decision.version.index(),
                rule: decision.rule_slot(rules),
            }),
            service: "web",
            served: "canary",
            decided: "canary",
            rule: "assigned",
            status: 200,
            elapsed: Duration::from_micros(300),
            upstream_error: None,
        };
        let (record, ()) = allocations(|| series.record(&answered));
        if round == 1 {
            counts = vec![
                ("Facts::gather", gather),
                ("Lookups::decide ($assigned)", lookup),
                ("forward_headers", forward),
                ("GenerationSeries::record", record),
            ];
        }
    }
    eprintln!("allocations per request: {counts:?}");
    // The budgets. The filter chain and the metrics allocate nothing. A lookup builds its
    // key (a `String`: a stack buffer measured ~200 instructions more per lookup under
    // callgrind, docs/performance.md) and boxes the store's future (`#[async_trait]`). The upstream
    // headers (9): Pingora's `insert_header` parses every name into an `http::HeaderName`,
    // and a name outside `http`'s standard set gets a heap copy of its own (4:
    // X-Graygate-Version, X-Graygate-Rule, X-Forwarded-Proto, X-Forwarded-For; given as
    // `&'static str`, since an `http::HeaderName` of such a name is copied once more first);
    // the value map and its case-preserving twin each grow their index and entries (4); the
    // X-Forwarded-For value is one buffer (1). Before issue 15: 11.
    let budget = [0, 2, 9, 0];
    for ((piece, n), most) in counts.iter().zip(budget) {
        assert!(
            *n <= most,
            "{piece} allocates {n} times per request, budget {most}"
        );
    }
}
