//! `decide` allocates nothing on the request path, whatever matcher or combinator it runs:
//! a counting global allocator (this test binary only, hence its `unsafe`) watches every
//! call after the first on the thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use graygate::facts::{Arrival, Facts, ListenerId, RequestView, Scheme};
use graygate::rules::model::Listeners;
use graygate::rules::{compile, decide, RuleSource};
use http::{HeaderMap, HeaderValue, Method};

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
